import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadAddon } from '../src/tensor/native.ts';

const lib = loadAddon();
const probe = lib?.poolWaitProbe(0);
const skip = !lib ? 'native addon not built (npm run build:native)' : probe === null ? 'the pool has one thread' : false;

test('a caller waiting on a slow worker parks instead of spinning (shared machines)', { skip }, () => {
  const runs = [0, 1, 2].map(() => lib!.poolWaitProbe(60)!);
  for (const r of runs) assert.ok(r.wallMs >= 59, `the job lasted ${r.wallMs} ms`);
  // A busy-waiting caller burns about the whole wait; a parked one only its short spin.
  const best = Math.min(...runs.map((r) => r.callerCpuMs / r.wallMs));
  assert.ok(best < 0.25, `the caller used ${(best * 100).toFixed(0)}% of a CPU while waiting`);
});

test('an async step spreads its threads over distinct CPUs and gives the caller its affinity back', { skip }, () => {
  const threads = lib!.info().threads;
  const probe = lib!.poolPlacementProbe();
  assert.equal(probe.callerMaskRestored, true);
  assert.equal(probe.cpus.length, threads);
  // Placement needs a CPU per thread; with more threads than CPUs (KVLAB_THREADS) it stands aside.
  assert.equal(probe.placed, threads <= availableParallelism());
  assert.equal(probe.secondPlaced, false, 'a second placement while one lives pins nothing');
  const cpus = availableParallelism();
  if (probe.placed) {
    assert.deepEqual(probe.allowedDuring, probe.cpus.map(() => 1), 'each thread pinned to one CPU during the job');
    assert.equal(new Set(probe.cpus).size, threads, `threads ran on CPUs ${probe.cpus.join(', ')}`);
  }
  assert.deepEqual(probe.allowedAfter.slice(1), probe.cpus.slice(1).map(() => cpus), 'workers unpinned afterwards');
  assert.equal(lib!.setTuning('step_placement', 0), true);
  try {
    const off = lib!.poolPlacementProbe();
    assert.equal(off.placed, false);
    assert.equal(off.callerMaskRestored, true);
  } finally {
    lib!.setTuning('step_placement', 1);
  }
});

test('KVLAB_STEP_PLACEMENT=0 turns the pinning off', { skip }, () => {
  const script = "import { loadAddon } from './src/tensor/native.ts'; process.stdout.write(JSON.stringify(loadAddon().poolPlacementProbe()));";
  const run = (env: Record<string, string>) =>
    JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: fileURLToPath(new URL('..', import.meta.url)), env: { ...process.env, ...env }, encoding: 'utf8' }));
  assert.equal(run({ KVLAB_STEP_PLACEMENT: '0' }).placed, false);
  assert.equal(run({ KVLAB_STEP_PLACEMENT: '1' }).placed, lib!.info().threads <= availableParallelism());
});
