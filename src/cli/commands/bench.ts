import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { parseKvDtype } from '../../cache/kv-cache.ts';
import { intOption, listOption } from '../common.ts';

export function registerBench(program: Command): void {
  const bench = program
    .command('bench')
    .description('measure the machine limits, then prefill/decode speed and KVzip cost; prints JSON')
    .option('--models <names>', 'tiny, qwen2.5-0.5b, llama-3.2-1b (random weights, written to a temp folder), or none', listOption)
    .option('--weights <list>', 'bf16,int8', listOption)
    .option('--kv-dtypes <list>', 'KV cache dtypes decode is measured on: f32,bf16 (also int4, int2)', listOption)
    .option('--contexts <list>', 'decode context lengths', listOption)
    .option('--kvzip-context <n>', 'context length of the KVzip measurement on qwen2.5-0.5b (0 = skip)', intOption('--kvzip-context'), 8192)
    .option('--kv-quant-context <n>', 'context of the f32 / bf16 / int4 / int2 / int4 + 0.3 kept decode comparison on llama-3.2-1b (0 = skip)', intOption('--kv-quant-context'), 8192)
    .option('--kv-quant-rounds <n>', 'alternating rounds of the kv quant comparison (fewer: a faster, noisier run)', intOption('--kv-quant-rounds', 1), 8)
    .option('--quick', 'tiny model only, short contexts, no KVzip measurement')
    .option('-o, --out <file>', 'also write the JSON here')
    .action(async (o) => {
      const { runBench } = await import('../../bench/run-bench.ts');
      const quick = Boolean(o.quick);
      const kvzipContext = quick ? 0 : (o.kvzipContext as number);
      const report = await runBench({
        models: (o.models ?? (quick ? ['tiny'] : ['tiny', 'qwen2.5-0.5b', 'llama-3.2-1b'])).filter((m: string) => m !== 'none'),
        weights: (o.weights ?? ['bf16', 'int8']) as ('bf16' | 'int8')[],
        kvDtypes: ((o.kvDtypes ?? ['f32', 'bf16']) as string[]).map(parseKvDtype),
        prefillTokens: 512,
        decodeContexts: (o.contexts ?? (quick ? ['1024'] : ['1024', '8192'])).map(Number),
        kvzip: kvzipContext > 0 ? { model: 'qwen2.5-0.5b', context: kvzipContext, ratio: 0.3 } : null,
        kvQuant: !quick && (o.kvQuantContext as number) > 0 ? { model: 'llama-3.2-1b', context: o.kvQuantContext as number, ratio: 0.3, rounds: o.kvQuantRounds as number } : null,
        log: (line) => process.stderr.write(`bench: ${line}\n`),
      });
      const text = `${JSON.stringify(report, null, 2)}\n`;
      if (o.out) writeFileSync(o.out, text);
      process.stdout.write(text);
    });
  registerBenchDecodeCompression(bench);
  registerBenchThink(bench);
}

/** `kvlab bench think`: decode from caches with ThinK-pruned key channels, fewer rows, or both, against the full cache. */
function registerBenchThink(bench: Command): void {
  bench
    .command('think')
    .description('decode ms/token and attention time on caches with pruned key channels (ThinK), fewer rows, or both, vs the full fp32 cache (alternating rounds); prints JSON')
    .option('--model <name>', 'tiny, qwen2.5-0.5b or llama-3.2-1b (random weights of that shape)', 'llama-3.2-1b')
    .option('--context <n>', 'cached rows per head before decoding', intOption('--context', 1), 4096)
    .option('--rounds <n>', 'alternating rounds', intOption('--rounds', 1), 4)
    .option('--steps <n>', 'decode steps per cache and round (median taken)', intOption('--steps', 1), 3)
    .action(async (_local, cmd: Command) => {
      const { runThinkBench } = await import('../../bench/think-bench.ts');
      const o = cmd.optsWithGlobals();
      const report = runThinkBench({ model: o.model, context: o.context, rounds: o.rounds, steps: o.steps, log: (line) => process.stderr.write(`bench think: ${line}\n`) });
      const text = `${JSON.stringify(report, null, 2)}\n`;
      if (o.out) writeFileSync(o.out, text);
      process.stdout.write(text);
    });
}

/** `kvlab bench decode-compress`: tokens/s per quarter of a long generation, with and without decoding-time compression. */
function registerBenchDecodeCompression(bench: Command): void {
  bench
    .command('decode-compress')
    .description('decode throughput per quarter of a generation 4x the budget long, decoding-time compression vs the full cache (embedded model); prints JSON')
    .option('--spec <spec>', 'METHOD:BUDGET:EVERY of the compressed runs', 'knorm:256:32')
    .option('--tokens <n>', 'generated tokens per run (default 4x the budget)', intOption('--tokens', 8))
    .option('--rounds <n>', 'alternating rounds (compressed, full)', intOption('--rounds', 1), 3)
    .action(async (_local, cmd: Command) => {
      const { runDecodeCompressionBench } = await import('../../bench/decode-compression-bench.ts');
      const o = cmd.optsWithGlobals();
      const report = await runDecodeCompressionBench({ spec: o.spec, tokens: o.tokens, rounds: o.rounds, log: (line) => process.stderr.write(`bench decode-compress: ${line}\n`) });
      const text = `${JSON.stringify(report, null, 2)}\n`;
      if (o.out) writeFileSync(o.out, text);
      process.stdout.write(text);
    });
}
