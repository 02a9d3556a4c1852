import { UnrecoverableError, Worker, type Job } from 'bullmq';
import { startModelThread, UnitFailedError, type ModelThread } from './model-thread.ts';
import { describeJob, describeModelTag, queueNameFor, sameModelTag, type SweepJobData } from './sweep-jobs.ts';
import type { ModelLoadSpec } from '../engine/model-load-spec.ts';
import { connectRedis, type RedisAddress } from './redis-connection.ts';

export interface SweepWorkerOptions {
  address: RedisAddress;
  /** The model the worker loads (on its thread); its fingerprint and KV storage choose the queue. */
  model: ModelLoadSpec;
  /**
   * How long a job stays locked without a renewal from its worker; a job whose worker died is taken back
   * by another worker within about twice this. Default 30 s.
   */
  lockMs?: number;
  log?: (line: string) => void;
}

export interface RunningSweepWorker {
  queueName: string;
  fingerprint: string;
  dir: string;
  /** Resolves with the reason if the model thread died: the worker has stopped taking jobs and should exit. */
  failed: Promise<Error>;
  /** Finishes the job in hand, then stops taking jobs, disconnects and ends the model thread. */
  close(): Promise<void>;
}

/**
 * Takes sweep jobs of every kind (eval qa, instructions, leakage) from the queue of this worker's model, one at a time, and returns each unit's result.
 * The units run on a worker thread, so the main thread keeps renewing the job's lock however long a
 * prefill takes; a worker that dies stops renewing, and the job goes back to the queue for another.
 */
export async function startSweepWorker(o: SweepWorkerOptions): Promise<RunningSweepWorker> {
  const log = o.log ?? (() => {});
  const client = await connectRedis(o.address, { maxRetriesPerRequest: null });
  let thread: ModelThread;
  try {
    thread = await startModelThread(o.model);
  } catch (e) {
    client.disconnect();
    throw e;
  }
  const name = queueNameFor(thread.tag);
  const lockMs = o.lockMs ?? 30_000;
  const run = async (job: Job<SweepJobData, unknown>): Promise<unknown> => {
    const d = job.data;
    if (!sameModelTag(d, thread.tag)) {
      throw new UnrecoverableError(`job ${job.id} is for model ${describeModelTag(d)}; this worker runs ${describeModelTag(thread.tag)}`);
    }
    log(`start ${job.id} ${describeJob(d)}`);
    try {
      return await thread.run(d);
    } catch (e) {
      if (e instanceof UnitFailedError && e.unrecoverable) throw new UnrecoverableError(e.message);
      throw e;
    }
  };
  const worker = new Worker<SweepJobData, unknown>(name, run, { connection: client, concurrency: 1, lockDuration: lockMs, stalledInterval: lockMs, maxStalledCount: 3 });
  worker.on('completed', (job) => log(`done ${job.id} ${describeJob(job.data)}`));
  worker.on('failed', (job, err) => log(`failed ${job?.id ?? '?'}: ${err.message}`));
  worker.on('error', (err) => log(`queue error: ${err.message}`));
  await worker.waitUntilReady();
  // A dead thread would fail every job it is handed, using up their attempts: stop taking jobs at once.
  const failed = thread.died.then(async (e) => {
    log(`the model thread died (${e.message}): taking no more jobs`);
    await worker.close(true).catch(() => {});
    await client.quit().catch(() => client.disconnect());
    return e;
  });
  return {
    queueName: name,
    fingerprint: thread.tag.fingerprint,
    dir: thread.dir,
    failed,
    close: async () => {
      await worker.close();
      await thread.close();
      await client.quit().catch(() => client.disconnect());
    },
  };
}
