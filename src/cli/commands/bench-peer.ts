import type { Command } from 'commander';
import { writeAtomic } from '../../eval/write-outputs.ts';
import { listOption } from '../common.ts';

export function registerBenchPeer(program: Command): void {
  program
    .command('bench-peer')
    .description('kvlab against llama.cpp (node-llama-cpp, F16 GGUF) on the same random weights; prints JSON (npm run bench:peer installs the peer)')
    .option('--models <names>', 'qwen2.5-0.5b, llama-3.2-1b, tiny', listOption)
    .option('--peer-dir <dir>', 'folder whose node_modules holds node-llama-cpp', '.peer')
    .option('--threads <n>', 'threads for llama.cpp (kvlab uses KVLAB_THREADS or all cores)', String(2))
    .option('--prefill <n>', 'prompt length of the prefill measurement', '512')
    .option('--context <n>', 'context length of the decode measurement', '1024')
    .option('--steps <n>', 'decode steps per round', '16')
    .option('--rounds <n>', 'interleaved rounds per side', '3')
    .option('--batch <sizes>', 'batched decode against llama.cpp parallel sequences at these batch sizes, or none', listOption)
    .option('--batch-context <n>', 'context tokens of every sequence in the batched decode', '1024')
    .option('--batch-steps <n>', 'timed batched decode steps per round and batch size', '4')
    .option('--batch-only', 'only the batched decode comparison (no prefill, no single-sequence decode)')
    .option('-o, --out <file>', 'also write the JSON here')
    .action(async (o) => {
      const { runPeerBench } = await import('../../bench/peer-bench.ts');
      const count = (name: string, v: string) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1) throw new RangeError(`--${name} must be a positive integer, got "${v}"`);
        return n;
      };
      const report = await runPeerBench({
        models: o.models ?? ['llama-3.2-1b'],
        peerDir: o.peerDir,
        threads: count('threads', o.threads),
        prefillTokens: count('prefill', o.prefill),
        decodeContext: count('context', o.context),
        decodeSteps: count('steps', o.steps),
        rounds: count('rounds', o.rounds),
        batchSizes: o.batch?.[0] === 'none' ? [] : ((o.batch as string[] | undefined) ?? ['1', '2', '4', '8']).map((v) => count('batch', v)),
        batchContext: count('batch-context', o.batchContext),
        batchSteps: count('batch-steps', o.batchSteps),
        batchOnly: Boolean(o.batchOnly),
        log: (line) => process.stderr.write(`bench-peer: ${line}\n`),
      });
      const text = `${JSON.stringify(report, null, 2)}\n`;
      if (o.out) writeAtomic(o.out, text);
      process.stdout.write(text);
    });
}
