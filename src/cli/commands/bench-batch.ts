import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { parseKvDtype } from '../../cache/kv-cache.ts';
import { parseByteSize } from '../../cache/kv-pool.ts';
import { intOption, listOption } from '../common.ts';

/** `kvlab bench batch`: batched decode throughput and pool fit, registered under the bench command. */
export function registerBenchBatch(program: Command): void {
  const bench = program.commands.find((c) => c.name() === 'bench');
  if (!bench) throw new Error('registerBenchBatch(): register the bench command first');
  bench
    .command('batch')
    .description('batched decode: aggregate tokens/s and per-sequence TPOT at several batch sizes, full vs compressed caches, and how many long contexts fit a KV pool; prints JSON')
    .option('--models <names>', 'random-weight shapes', listOption)
    .option('--batch <list>', 'batch sizes', listOption)
    .option('--context <n>', 'context rows per sequence', intOption('--context', 1), 1024)
    .option('--ratios <list>', 'fractions of rows kept (1 = full cache)', listOption)
    .option('--kv-dtype <dtype>', 'KV cache dtype (f32, bf16)', 'f32')
    .option('--rounds <n>', 'rounds of timed steps (each after a bandwidth probe)', intOption('--rounds', 1), 6)
    .option('--steps <n>', 'timed steps per batch size per round', intOption('--steps', 1), 3)
    .option('--kv-memory <bytes>', 'KV pool of the fit figure (e.g. 4G)', '4G')
    .option('--fit-context <n>', 'context rows per sequence in the fit figure', intOption('--fit-context', 1), 8192)
    .option('--fit-ratios <list>', 'ratios of the fit figure', listOption)
    .option('--pool-throughput <list>', 'ratios of the best-aggregate-within-the-pool figure (fit-context rows, --kv-memory pool), or none', listOption)
    .option('--pool-throughput-models <names>', 'models the pool-throughput figure runs on', listOption)
    .option('--pool-throughput-rounds <n>', 'rounds of the pool-throughput figure', intOption('--pool-throughput-rounds', 1), 3)
    .option('--pool-throughput-steps <n>', 'timed steps per round of the pool-throughput figure', intOption('--pool-throughput-steps', 1), 2)
    .option('--checkpoints <dir>', 'keep the random checkpoints in this folder between runs')
    .option('-o, --out <file>', 'also write the JSON here')
    .action(async (_local, cmd: Command) => {
      const { runBatchBench } = await import('../../bench/batch-bench.ts');
      // The bench command's own options (--models, -o) are parsed by it; read them merged with this command's.
      const o = cmd.optsWithGlobals();
      const num = (xs: string[], what: string) =>
        xs.map((s) => {
          const x = Number(s);
          if (!(x > 0)) throw new Error(`--${what}: "${s}" is not a positive number`);
          return x;
        });
      const report = await runBatchBench({
        models: o.models ?? ['llama-3.2-1b', 'qwen2.5-0.5b'],
        batchSizes: num(o.batch ?? ['1', '2', '4', '8', '16'], 'batch'),
        context: o.context as number,
        ratios: num(o.ratios ?? ['1', '0.3'], 'ratios'),
        kvDtype: parseKvDtype(o.kvDtype as string),
        rounds: o.rounds as number,
        stepsPerRound: o.steps as number,
        poolBytes: parseByteSize(o.kvMemory as string),
        fitContext: o.fitContext as number,
        fitRatios: num(o.fitRatios ?? ['1', '0.3', '0.1'], 'fit-ratios'),
        fitAnswerTokens: 256,
        poolThroughputRatios: o.poolThroughput?.[0] === 'none' ? [] : num(o.poolThroughput ?? ['1', '0.3'], 'pool-throughput'),
        poolThroughputModels: o.poolThroughputModels ?? ['llama-3.2-1b'],
        poolThroughputRounds: o.poolThroughputRounds as number,
        poolThroughputSteps: o.poolThroughputSteps as number,
        checkpoints: o.checkpoints as string | undefined,
        log: (line) => process.stderr.write(`bench batch: ${line}\n`),
      });
      const text = `${JSON.stringify(report, null, 2)}\n`;
      if (o.out) writeFileSync(o.out, text);
      process.stdout.write(text);
    });
}
