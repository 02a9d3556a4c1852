// Load time of a random checkpoint read into memory (the default) against mapped (KVLAB_MMAP=1), in
// alternating rounds, and the first 32-token prefill after each load; prints JSON with the medians.
// Usage: KVLAB_THREADS=1 npx tsx scripts/load-weights-bench.ts [qwen2.5-0.5b|llama-3.2-1b|tiny]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../src/engine/loaded-model.ts';
import { prefill } from '../src/model/prefill.ts';
import { writeRandomCheckpoint } from '../src/model/random-checkpoint.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
const shape = process.argv[2] ?? 'qwen2.5-0.5b';
const dir = mkdtempSync(join(tmpdir(), 'kvlab-loadbench-'));
try {
  writeRandomCheckpoint(shape, dir, { seed: 1 });
  const be = selectBackend();
  const t: Record<string, number[]> = { read: [], mapped: [] };
  const first: Record<string, number[]> = { read: [], mapped: [] };
  for (let round = 0; round < 4; round++) {
    for (const kind of round % 2 ? ['mapped', 'read'] : ['read', 'mapped']) {
      const t0 = performance.now();
      const lm = loadModel(dir, { backend: be, mmap: kind === 'mapped' });
      const t1 = performance.now();
      prefill(lm.model, lm.newCache(), Array.from({ length: 32 }, (_, i) => 100 + i));
      const t2 = performance.now();
      t[kind]!.push(t1 - t0);
      first[kind]!.push(t2 - t1);
    }
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(JSON.stringify({ shape, cpu: cpus()[0]!.model, threads: process.env.KVLAB_THREADS ?? 'all', load_ms: { read: t.read, mapped: t.mapped }, first_prefill32_ms: first, median_load_ms: { read: med(t.read), mapped: med(t.mapped) }, median_load_plus_first_prefill_ms: { read: med(t.read.map((x, i) => x + first.read[i]!)), mapped: med(t.mapped.map((x, i) => x + first.mapped[i]!)) } }, null, 1));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
