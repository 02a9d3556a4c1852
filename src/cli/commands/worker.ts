import type { Command } from 'commander';
import { parseRedisUrl } from '../../queue/redis-connection.ts';
import { intOption, modelLoadSpec, modelOptions } from '../common.ts';

export function registerWorker(program: Command): void {
  modelOptions(program.command('worker').description('take sweep jobs (`kvlab eval qa|instructions|leakage --queue URL`) from the Redis queue of this model and run them, until SIGTERM'))
    .requiredOption('--queue <url>', 'the queue\'s Redis: redis://HOST:PORT/N')
    .option('--lock-ms <n>', 'job lock duration: a job whose worker died is taken back by another worker within about twice this', intOption('--lock-ms', 100), 30_000)
    .action(async (o) => {
      const address = parseRedisUrl(o.queue, '--queue');
      const model = modelLoadSpec(o);
      const log = (line: string) => process.stdout.write(`kvlab worker: ${line}\n`);
      // bullmq loads only when a worker runs.
      const { startSweepWorker } = await import('../../queue/sweep-worker.ts');
      const worker = await startSweepWorker({
        address,
        model,
        lockMs: o.lockMs,
        log,
      });
      log(`${worker.dir} (${worker.fingerprint.slice(0, 19)}...) takes jobs from queue ${worker.queueName} on ${address.url}`);
      const signalled = new Promise<void>((resolve) => {
        const stop = (signal: string) => {
          log(`${signal}: finishing the job in hand`);
          resolve();
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
      const died = await Promise.race([signalled.then(() => null), worker.failed]);
      if (died) throw new Error(`the worker's model thread died: ${died.message}`);
      await worker.close();
    });
}
