import assert from 'node:assert/strict';
import { test } from 'node:test';
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
