import { Job, Queue } from 'bullmq';
import { KvlabError } from '../tensor/kvlab-error.ts';
import { checkJobResult, describeJob, queueNameFor, sameModelTag, sweepJobId, type ModelTag, type SweepJobData } from './sweep-jobs.ts';
import { connectRedis, type RedisAddress } from './redis-connection.ts';

/** A job of a sweep failed on every attempt (or was refused by a worker): the sweep cannot complete. */
export class QueueJobError extends KvlabError {
  constructor(message: string) {
    super('queue_job_failed', message);
  }
}

export interface SweepSubmission<U> {
  address: RedisAddress;
  /** The submitter's model and KV storage (modelTagOf): they choose the queue; every job must carry them. */
  model: ModelTag;
  /** Every unit of the sweep as a job (qaJobs, studyJobs); U is the result type of that kind. */
  jobs: SweepJobData[];
  /** Units an earlier run already gathered (its partial.jsonl): not submitted again. */
  done?: Map<string, U>;
  /** Called as each unit's result arrives (to save it). */
  onUnit?: (key: string, unit: U) => void;
  onProgress?: (done: number, total: number) => void;
  log?: (line: string) => void;
  /** Attempts per job before the sweep fails; a worker killed mid-job does not use one up. Default 3. */
  attempts?: number;
  pollMs?: number;
  /** How long without progress and without a worker before saying so. Default 10 s. */
  idleNoticeMs?: number;
}

/**
 * Runs a sweep on the queue: one job per unit (a context or item under a method), added under ids derived
 * from their content (so a resubmission adds nothing twice), then gathered as workers complete them.
 * Returns every unit, the ones of `done` included; the jobs are removed once gathered. Jobs that failed in
 * an earlier run are retried.
 */
export async function runSweepOnQueue<U>(s: SweepSubmission<U>): Promise<Map<string, U>> {
  const log = s.log ?? (() => {});
  const attempts = s.attempts ?? 3;
  const units = new Map<string, U>(s.done ?? []);
  const jobs = new Map<string, SweepJobData>();
  // Jobs of units done before: an earlier submitter may have saved the unit and died before removing its job.
  const gatheredBefore: string[] = [];
  for (const data of s.jobs) {
    if (!sameModelTag(data, s.model)) throw new Error(`job ${data.unit} is for another model than the sweep's`);
    if (!units.has(data.unit)) jobs.set(sweepJobId(data), data);
    else gatheredBefore.push(sweepJobId(data));
  }
  const total = units.size + jobs.size;
  s.onProgress?.(units.size, total);
  if (!jobs.size && !gatheredBefore.length) return units;

  const client = await connectRedis(s.address);
  const name = queueNameFor(s.model);
  const queue = new Queue<SweepJobData, unknown>(name, { connection: client });
  queue.on('error', () => {});
  const add = (id: string, data: SweepJobData) => queue.add(data.kind, data, { jobId: id, attempts, backoff: { type: 'exponential', delay: 1000 }, removeOnComplete: false, removeOnFail: false });
  try {
    for (const id of gatheredBefore) {
      const state = await queue.getJobState(id);
      if (state === 'completed' || state === 'failed') await (await Job.fromId(queue, id))?.remove().catch(() => {});
    }
    if (!jobs.size) return units;
    let added = 0;
    for (const [id, data] of jobs) {
      const existing = await Job.fromId<SweepJobData, unknown>(queue, id);
      if (!existing) {
        await add(id, data);
        added++;
      } else if (await existing.isFailed()) await existing.retry('failed');
    }
    log(`gathering ${jobs.size} job(s) from queue ${name} on ${s.address.url} (${added} added now${units.size ? `, ${units.size} unit(s) done before` : ''})`);

    let lastProgress = Date.now();
    let noticed = false;
    while (jobs.size) {
      for (const [id, data] of jobs) {
        // One round trip per pending job; the job itself is read only once it has ended.
        const state = await queue.getJobState(id);
        if (state === 'unknown') {
          // Removed behind our back (by hand, or by another submitter of the same units): submit it again.
          await add(id, data);
          continue;
        }
        if (state !== 'completed' && state !== 'failed') continue;
        const job = await Job.fromId<SweepJobData, unknown>(queue, id);
        if (!job) continue;
        if (state === 'failed') {
          throw new QueueJobError(`job ${id} (${describeJob(data)}) failed after ${job.attemptsMade} attempt(s): ${job.failedReason}`);
        }
        const unit = checkJobResult(job.returnvalue, data) as U;
        units.set(data.unit, unit);
        jobs.delete(id);
        s.onUnit?.(data.unit, unit);
        s.onProgress?.(units.size, total);
        lastProgress = Date.now();
        await job.remove().catch(() => {});
      }
      if (!jobs.size) break;
      if (!noticed && Date.now() - lastProgress > (s.idleNoticeMs ?? 10_000) && (await queue.getWorkersCount()) === 0) {
        noticed = true;
        log(`no worker takes jobs from queue ${name} yet: start one with \`kvlab worker --queue ${s.address.url}\` (same model, --kv-dtype, --kv-group and --kv-residual)`);
      }
      await new Promise((r) => setTimeout(r, s.pollMs ?? 200));
    }
    return units;
  } finally {
    await queue.close().catch(() => {});
    await client.quit().catch(() => client.disconnect());
  }
}
