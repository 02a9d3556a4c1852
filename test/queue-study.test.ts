import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { finished, killAll, kvlab, queueWorker, stopWorker } from './helpers/kvlab-process.ts';
import { redisServerMissing, redisForTests } from './helpers/redis-server.ts';

const skip = redisServerMissing();
const dir = mkdtempSync(join(tmpdir(), 'kvlab-queue-study-'));
const GRID = ['--limit', '2', '--method', 'snapkv,streamingllm', '--ratio', '1,0.5', '-n', '4'];
// Leakage with the order variants and two protections; instructions with the defense sentence added.
const STUDIES: Record<string, string[]> = {
  leakage: ['eval', 'leakage', '--data', 'data/dev/leakage.jsonl', '--order', '--protect', 'none', '--protect', 'whitelist:defense', ...GRID],
  instructions: ['eval', 'instructions', '--data', 'data/dev/instructions.jsonl', '--add-defense', ...GRID],
  // SystemCheck rows: the job carries the RaccoonBench defense template and attack text, not their files.
  'sys-leakage': ['eval', 'leakage', '--data', 'data/external/sys_ifeval/sys_ifeval.jsonl', '--defense', 'flipped', ...GRID],
};

const db = redisForTests(skip, () => {
  killAll();
  rmSync(dir, { recursive: true, force: true });
});

interface StudyOutputs {
  results: { results: { method: string; ratio: number; protect: string; variant: string; n: number }[] };
  samples: string[];
}

function outputsOf(out: string): StudyOutputs {
  return { results: JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')), samples: readFileSync(join(out, 'samples.csv'), 'utf8').split('\n') };
}

test('instructions and leakage studies (dev and sys_ifeval rows) run through the queue by 2 workers write the results.json and samples of the local runs', { skip: skip ?? false }, async () => {
  const workers = [queueWorker(db.redis.url), queueWorker(db.redis.url)];
  await Promise.all(workers.map((w) => w.waitFor(/takes jobs from queue/)));
  const runs = Object.entries(STUDIES).flatMap(([name, args]) => [
    kvlab([...args, '--queue', db.redis.url, '--out', join(dir, `${name}-queued`)]),
    kvlab([...args, '--out', join(dir, `${name}-local`)]),
  ]);
  await Promise.all(runs.map(finished));
  await Promise.all(workers.map(stopWorker));

  let units = 0;
  for (const name of Object.keys(STUDIES)) {
    const local = outputsOf(join(dir, `${name}-local`));
    const queued = outputsOf(join(dir, `${name}-queued`));
    // The grid is what was asked: 2 methods x 2 ratios x the protections, every group holding each item once.
    const protections = name === 'leakage' ? 2 : 1;
    assert.equal(local.results.results.length % (2 * 2 * protections), 0);
    const n = local.results.results.filter((r) => r.method === 'snapkv' && r.ratio === 1 && r.protect === 'none').reduce((a, r) => a + r.n, 0);
    assert.ok(n >= 2, `${name}: ${n} items`);
    assert.equal(local.samples.filter(Boolean).length - 1, n * 2 * 2 * protections, `${name}: one sample per item, method, ratio and protection`);
    units += n * 2;
    assert.deepEqual(queued.results, local.results, `${name}: results.json`);
    assert.equal(queued.samples.length, local.samples.length);
    for (const [i, line] of local.samples.entries()) assert.equal(queued.samples[i], line, `${name}: samples.csv line ${i}`);
  }
  if (STUDIES.leakage!.includes('--order')) {
    const variants = new Set(outputsOf(join(dir, 'leakage-local')).results.results.map((r) => r.variant));
    assert.deepEqual([...variants].sort(), ['defense-first', 'defense-last', 'original'], 'the order variants are part of the run');
  }
  // Each unit ran once, both workers took part, and the jobs of both studies went to the same workers.
  const starts = workers.flatMap((w) => [...w.out().matchAll(/start (study-[0-9a-f]+)/g)].map((m) => m[1]));
  assert.equal(starts.length, units);
  assert.equal(new Set(starts).size, units);
  for (const w of workers) assert.match(w.out(), /done study-/);
  const all = workers.map((w) => w.out()).join('\n');
  assert.match(all, /done study-\S+ \S+ on item "dev-leak-/);
  assert.match(all, /done study-\S+ \S+ on item "dev-ins-/);
  assert.match(all, /done study-\S+ \S+ on item "\d+" \(flipped\)/);
  assert.deepEqual(await db.direct.keys('bull:*:study-*'), []);
});

test('a queued leakage study resumes after its submitting process dies (--resume) with the local run\'s results', { skip: skip ?? false }, async () => {
  const localOut = join(dir, 'leakage-local');
  assert.ok(existsSync(join(localOut, 'results.json')), 'the first test ran the local reference');
  const out = join(dir, 'leakage-resumed');
  const w = queueWorker(db.redis.url);
  await w.waitFor(/takes jobs from queue/);
  const first = kvlab([...STUDIES.leakage!, '--queue', db.redis.url, '--out', out]);
  const partial = join(out, 'partial.jsonl');
  // Killed once it has saved at least one unit; the worker goes on with the jobs already queued.
  for (;;) {
    if (existsSync(partial) && readFileSync(partial, 'utf8').split('\n').filter(Boolean).length >= 2) break;
    if (first.proc.exitCode !== null) assert.fail(`the submitter ended before it was killed: ${first.out()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  first.proc.kill('SIGKILL');
  await first.exit;
  const savedBefore = readFileSync(partial, 'utf8').split('\n').filter(Boolean).length - 1;
  const second = kvlab([...STUDIES.leakage!, '--queue', db.redis.url, '--out', out, '--resume']);
  await finished(second);
  await stopWorker(w);
  assert.match(second.out(), new RegExp(`, ${savedBefore} unit\\(s\\) done before\\)`));
  const local = outputsOf(localOut);
  const resumed = outputsOf(out);
  assert.deepEqual(resumed.results, local.results);
  assert.deepEqual(resumed.samples, local.samples);
  // No unit ran twice: the worker started each job once.
  const starts = [...w.out().matchAll(/start (study-[0-9a-f]+)/g)].map((m) => m[1]);
  assert.equal(new Set(starts).size, starts.length);
  assert.equal(starts.length, local.results.results.filter((r) => r.ratio === 1 && r.protect === 'none').reduce((a, r) => a + r.n, 0));
  assert.deepEqual(await db.direct.keys('bull:*:study-*'), []);
});

test('a study job whose item cannot be rebuilt by the worker fails the sweep with its reason', { skip: skip ?? false }, async () => {
  const { persistentFingerprint } = await import('../src/engine/model-fingerprint.ts');
  const { selectBackend } = await import('../src/tensor/select-backend.ts');
  const { tinyModel } = await import('./helpers/tiny-model.ts');
  const { leakageItems } = await import('../src/eval/study-items.ts');
  const { loadLeakage } = await import('../src/eval/datasets.ts');
  const { studyJobs } = await import('../src/queue/study-jobs.ts');
  const { QueueJobError, runSweepOnQueue } = await import('../src/queue/sweep-submit.ts');
  const { parseRedisUrl } = await import('../src/queue/redis-connection.ts');
  const model = { fingerprint: persistentFingerprint(tinyModel(selectBackend())), kvDtype: 'f32' as const };
  const [item] = leakageItems(loadLeakage('data/dev/leakage.jsonl').slice(0, 1));
  const [job] = studyJobs([item!], ['snapkv'], { ratios: [1], protections: [undefined], maxTokens: 2 }, model);
  // The job claims another item than its source builds.
  job!.item.id = 'not-this-item';
  const w = queueWorker(db.redis.url);
  await w.waitFor(/takes jobs from queue/);
  try {
    const err = await runSweepOnQueue({ address: parseRedisUrl(db.redis.url, 'url'), model, jobs: [job!], attempts: 1 }).catch((e: unknown) => e);
    assert.ok(err instanceof QueueJobError, String(err));
    assert.match(err.message, /\(snapkv on item "not-this-item" \(original\)\) failed after 1 attempt\(s\): .*rebuilds item "dev-leak-0000" \(original\), not "not-this-item"/);
    assert.doesNotMatch(w.out(), /done study-/);
  } finally {
    await stopWorker(w);
  }
});
