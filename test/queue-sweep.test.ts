import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Job, Queue } from 'bullmq';
import { persistentFingerprint } from '../src/engine/model-fingerprint.ts';
import { qaJobs, type QaJobData } from '../src/queue/qa-jobs.ts';
import { queueNameFor, sweepJobId } from '../src/queue/sweep-jobs.ts';
import { QueueJobError, runSweepOnQueue } from '../src/queue/sweep-submit.ts';
import { parseRedisUrl } from '../src/queue/redis-connection.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { finished, killAll, kvlab, queueWorker, stopWorker } from './helpers/kvlab-process.ts';
import { redisServerMissing, redisForTests } from './helpers/redis-server.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const skip = redisServerMissing();
const dir = mkdtempSync(join(tmpdir(), 'kvlab-queue-'));
// A small grid: 2 rows x 2 methods = 4 units, each at 2 ratios; short answers.
const SWEEP = ['eval', 'qa', '--data', 'data/dev/qa.jsonl', '--limit', '2', '--method', 'snapkv,streamingllm', '--ratio', '1,0.5', '-n', '4'];

const db = redisForTests(skip, () => {
  killAll();
  rmSync(dir, { recursive: true, force: true });
});

const worker = (...extra: string[]) => queueWorker(db.redis.url, ...extra);

interface Outputs {
  results: { results: { method: string; ratio: number; n: number }[] };
  samples: string;
}

function outputsOf(out: string): Outputs {
  return { results: JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')), samples: readFileSync(join(out, 'samples.csv'), 'utf8') };
}

/** Every (method, ratio) holds each question of the 2 rows exactly once: nothing lost, nothing counted twice. */
function assertComplete(o: Outputs): void {
  const questions = qaRows().slice(0, 2).reduce((n, r) => n + r.questions.length, 0);
  assert.equal(o.results.results.length, 4);
  for (const r of o.results.results) assert.equal(r.n, questions, `${r.method}@${r.ratio}`);
}

/** The queued run's outputs are the local run's, sample for sample. */
function assertSameAsLocal(out: string): void {
  const o = outputsOf(out);
  assertComplete(o);
  assert.deepEqual(o.results, local.results);
  assert.equal(o.samples, local.samples);
}

let local: Outputs;

test('a sweep run through the queue by 2 workers writes the results.json and samples of the local run', { skip: skip ?? false }, async () => {
  const localOut = join(dir, 'local');
  const queuedOut = join(dir, 'queued');
  const workers = [worker(), worker()];
  await Promise.all(workers.map((w) => w.waitFor(/takes jobs from queue/)));
  const queued = kvlab([...SWEEP, '--queue', db.redis.url, '--out', queuedOut]);
  const ref = kvlab([...SWEEP, '--out', localOut]);
  await Promise.all([finished(queued), finished(ref)]);
  await Promise.all(workers.map(stopWorker));
  local = outputsOf(localOut);
  assertComplete(local);
  assertSameAsLocal(queuedOut);
  // Both workers took part (4 units, each worker takes one at a time).
  for (const w of workers) assert.match(w.out(), /done qa-/);
  assert.ok(!existsSync(join(queuedOut, 'partial.jsonl')));
  // Gathered jobs are removed from Redis.
  assert.deepEqual(await db.direct.keys('bull:*:qa-*'), []);
});

test('a worker killed (SIGKILL) mid-job: another worker redoes the job and the sweep completes, nothing lost or duplicated', { skip: skip ?? false }, async () => {
  assert.ok(local, 'the first test ran the local reference');
  const out = join(dir, 'killed');
  const doomed = worker();
  await doomed.waitFor(/takes jobs from queue/);
  const sweep = kvlab([...SWEEP, '--queue', db.redis.url, '--out', out]);
  const job = (await doomed.waitFor(/start (qa-[0-9a-f]+)/))[1]!;
  doomed.proc.kill('SIGKILL');
  await doomed.exit;
  assert.doesNotMatch(doomed.out(), new RegExp(`done ${job}`));
  const survivor = worker();
  await finished(sweep);
  await stopWorker(survivor);
  // The killed worker's job was taken back (its lock lapsed) and run by the survivor.
  assert.match(survivor.out(), new RegExp(`start ${job}`));
  assert.match(survivor.out(), new RegExp(`done ${job}`));
  assertSameAsLocal(out);
});

test('a sweep resumes after its submitting process dies (--resume): units gathered before come from partial.jsonl, the rest from the queue', { skip: skip ?? false }, async () => {
  assert.ok(local, 'the first test ran the local reference');
  const out = join(dir, 'resumed');
  const w = worker();
  await w.waitFor(/takes jobs from queue/);
  const first = kvlab([...SWEEP, '--queue', db.redis.url, '--out', out]);
  // Killed once it has saved at least one unit; the worker goes on with the jobs already queued.
  for (;;) {
    const partial = join(out, 'partial.jsonl');
    if (existsSync(partial) && readFileSync(partial, 'utf8').split('\n').filter(Boolean).length >= 2) break;
    if (first.proc.exitCode !== null) assert.fail(`the submitter ended before it was killed: ${first.out()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  first.proc.kill('SIGKILL');
  await first.exit;
  const savedBefore = readFileSync(join(out, 'partial.jsonl'), 'utf8').split('\n').filter(Boolean).length - 1;
  assert.ok(savedBefore >= 1 && savedBefore < 4, `units saved before the kill: ${savedBefore}`);
  // Without --resume the interrupted run is not overwritten.
  const refused = kvlab([...SWEEP, '--queue', db.redis.url, '--out', out]);
  assert.equal(await refused.exit, 1);
  assert.match(refused.out(), /pass --resume/);
  const second = kvlab([...SWEEP, '--queue', db.redis.url, '--out', out, '--resume']);
  await finished(second);
  await stopWorker(w);
  // Jobs the worker had not finished were still queued: found there, not added again.
  assert.match(second.out(), new RegExp(`gathering ${4 - savedBefore} job\\(s\\) from queue .*, ${savedBefore} unit\\(s\\) done before\\)`));
  assertSameAsLocal(out);
  // No unit ran twice: the worker started each of the 4 jobs once.
  assert.equal([...w.out().matchAll(/start (qa-[0-9a-f]+)/g)].length, 4);
  assert.deepEqual(await db.direct.keys('bull:*:qa-*'), []);
});

test('--queue with a malformed URL or an unreachable Redis fails with a message naming it', { skip: skip ?? false }, async () => {
  const bad = kvlab([...SWEEP, '--queue', 'http://127.0.0.1:6379']);
  assert.equal(await bad.exit, 1);
  assert.match(bad.out(), /--queue must start with redis:\/\//);
  const down = kvlab(['worker', '--queue', `redis://127.0.0.1:${db.redis.port + 1}/0`]);
  assert.equal(await down.exit, 1);
  assert.match(down.out(), /cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+\/0/);
});

test('a job no worker can run fails the sweep with its reason; a job for another model is refused by the worker', { skip: skip ?? false }, async () => {
  const fingerprint = persistentFingerprint(tinyModel(selectBackend()));
  const w = worker();
  await w.waitFor(/takes jobs from queue/);
  const settings = { ratios: [1], queryTemplate: 'Question: {query}', maxTokens: 2 };
  const row = qaRows()[0]!;
  try {
    // A method the worker's registry does not have (registered only in the submitting process, say).
    const model = { fingerprint, kvDtype: 'f32' as const };
    const err = await runSweepOnQueue({ address: parseRedisUrl(db.redis.url, 'url'), model, jobs: qaJobs([row], ['no-such-method'], settings, model) }).catch((e: unknown) => e);
    assert.ok(err instanceof QueueJobError, String(err));
    assert.match(err.message, /\(no-such-method on row "dev-qa-0000"\) failed after \d attempt\(s\): .*no-such-method/);

    // A job whose data names another model, put on this model's queue by hand: refused, not run.
    const queue = new Queue<QaJobData>(queueNameFor(model), { connection: { host: '127.0.0.1', port: db.redis.port } });
    try {
      const data: QaJobData = { kind: 'qa', unit: 'forged', method: 'snapkv', row, ...settings, fingerprint: 'sha256:another-model', kvDtype: 'f32' };
      const id = sweepJobId(data);
      await queue.add('qa', data, { jobId: id, attempts: 3 });
      for (let i = 0; i < 600 && (await queue.getJobState(id)) !== 'failed'; i++) await new Promise((r) => setTimeout(r, 50));
      const job = await Job.fromId(queue, id);
      assert.ok(job && (await job.isFailed()), 'the forged job failed');
      assert.match(job.failedReason, /is for model sha256:another-model with a f32 KV cache; this worker runs sha256:[0-9a-f]{64} with a f32 KV cache/);
      assert.equal(job.attemptsMade, 1, 'refused at once, not retried');
      await job.remove();
    } finally {
      await queue.close();
    }
    assert.doesNotMatch(w.out(), /done qa-/);
  } finally {
    await stopWorker(w);
  }
});

test('an int4 worker takes jobs from the queue of its --kv-group / --kv-residual only, and refuses a job made with others', { skip: skip ?? false }, async () => {
  const fingerprint = persistentFingerprint(tinyModel(selectBackend()));
  const w = worker('--kv-dtype', 'int4', '--kv-group', '16', '--kv-residual', '64');
  const name = (await w.waitFor(/takes jobs from queue (\S+)/))[1]!;
  const mine = { fingerprint, kvDtype: 'int4' as const, kvQuant: { group: 16, residual: 64 } };
  const other = { ...mine, kvQuant: { group: 32, residual: 64 } };
  assert.equal(name, queueNameFor(mine));
  assert.notEqual(queueNameFor(other), name);
  assert.notEqual(queueNameFor({ fingerprint, kvDtype: 'int4' }), name);
  const queue = new Queue<QaJobData>(name, { connection: { host: '127.0.0.1', port: db.redis.port } });
  try {
    const [data] = qaJobs([qaRows()[0]!], ['snapkv'], { ratios: [1], queryTemplate: 'Question: {query}', maxTokens: 2 }, other);
    const id = sweepJobId(data!);
    await queue.add('qa', data!, { jobId: id, attempts: 3 });
    for (let i = 0; i < 600 && (await queue.getJobState(id)) !== 'failed'; i++) await new Promise((r) => setTimeout(r, 50));
    const job = await Job.fromId(queue, id);
    assert.ok(job && (await job.isFailed()), 'the job made with group 32 failed');
    assert.match(job.failedReason, /with a int4 KV cache \(group 32, residual 64\); this worker runs sha256:[0-9a-f]{64} with a int4 KV cache \(group 16, residual 64\)/);
    await job.remove();
  } finally {
    await queue.close();
    await stopWorker(w);
  }
});

test('a unit saved before its submitter died, whose job was still in Redis, has that job removed on --resume and is not run again', { skip: skip ?? false }, async () => {
  const fingerprint = persistentFingerprint(tinyModel(selectBackend()));
  const model = { fingerprint, kvDtype: 'f32' as const };
  const [data] = qaJobs([qaRows()[0]!], ['snapkv'], { ratios: [1], queryTemplate: 'Question: {query}', maxTokens: 2 }, model);
  const id = sweepJobId(data!);
  const queue = new Queue<QaJobData>(queueNameFor(model), { connection: { host: '127.0.0.1', port: db.redis.port } });
  try {
    // The state a SIGKILL leaves between writing partial.jsonl and removing the job: completed, still stored.
    const job = await queue.add('qa', data!, { jobId: id });
    await db.direct.hset(`bull:${queueNameFor(model)}:${id}`, 'finishedOn', String(Date.now()), 'returnvalue', '"saved"');
    await db.direct.lrem(`bull:${queueNameFor(model)}:wait`, 0, id);
    await db.direct.zadd(`bull:${queueNameFor(model)}:completed`, Date.now(), id);
    assert.equal(await queue.getJobState(job.id!), 'completed');
    const done = new Map([[data!.unit, { saved: true }]]);
    const units = await runSweepOnQueue({ address: parseRedisUrl(db.redis.url, 'url'), model, jobs: [data!], done });
    assert.deepEqual([...units.entries()], [[data!.unit, { saved: true }]]);
    assert.equal(await queue.getJobState(id), 'unknown');
    assert.deepEqual(await db.direct.keys(`bull:*:${id}*`), []);
  } finally {
    await queue.close();
  }
});
