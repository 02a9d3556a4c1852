import { Command } from 'commander';
import { OutDirTimeoutError } from '../eval/out-dir.ts';
import { registerBench } from './commands/bench.ts';
import { registerBenchBatch } from './commands/bench-batch.ts';
import { registerBenchPeer } from './commands/bench-peer.ts';
import { registerBenchServe } from './commands/bench-serve.ts';
import { registerChat } from './commands/chat.ts';
import { registerCompress } from './commands/compress.ts';
import { registerDemo } from './commands/demo.ts';
import { registerEval } from './commands/eval.ts';
import { registerGenerate } from './commands/generate.ts';
import { registerInfo } from './commands/info.ts';
import { registerInspect } from './commands/inspect.ts';
import { registerServe } from './commands/serve.ts';
import { registerContext } from './commands/context.ts';
import { registerVerifyArch } from './commands/verify-arch.ts';
import { registerWorker } from './commands/worker.ts';

const program = new Command();
program
  .name('kvlab')
  .description('KV-cache compression engine and lab for Llama-family chat models')
  .version('0.1.0')
  .showHelpAfterError();

registerGenerate(program);
registerChat(program);
registerCompress(program);
registerInspect(program);
registerDemo(program);
registerEval(program);
registerInfo(program);
registerBench(program);
registerBenchBatch(program);
registerBenchPeer(program);
registerBenchServe(program);
registerServe(program);
registerContext(program);
registerVerifyArch(program);
registerWorker(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`kvlab: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
  // A file system call that never returns would keep the process alive after the message.
  if (err instanceof OutDirTimeoutError) process.exit(1);
});
