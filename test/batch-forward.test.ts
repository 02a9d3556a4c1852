import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { KvCache, KvDtype } from '../src/cache/kv-cache.ts';
import { DEFAULT_MODEL_DIR, loadModel, type LoadedModel } from '../src/engine/loaded-model.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';
import type { BatchSequence } from '../src/model/llama.ts';
import { RANDOM_SHAPES, writeRandomCheckpoint } from '../src/model/random-checkpoint.ts';
import type { Backend } from '../src/tensor/backend.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';
import { goldenPrompts } from './helpers/tiny-model.ts';

/**
 * Tolerances: a batched step stacks every sequence's rows into one matmul, so a row that ran alone through
 * the decode GEMV (n = 1) may now go through the GEMM (more than 16 rows), which sums in another order. With fp32
 * activations (reference, native fp32 GEMM) the difference stays far below 1e-3 absolute; where the GEMM
 * rounds activations to bf16 (native default on AVX512-BF16/AMX CPUs) the golden test's bound, 0.1, applies.
 * On an AVX2-only CPU the GEMM is fp32 either way.
 */
const scratch = mkdtempSync(join(tmpdir(), 'kvlab-batch-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const backends: { label: string; make: () => Backend; tol: number }[] = [{ label: 'reference', make: () => new ReferenceBackend(), tol: 1e-3 }];
if (nativeAvailable()) {
  backends.push({ label: 'native fp32', make: () => new NativeBackend({ bf16Activations: false }), tol: 1e-3 });
  backends.push({ label: 'native bf16 prefill', make: () => new NativeBackend({ bf16Activations: true }), tol: 0.1 });
}

function qwen2Dir(): string {
  const dir = join(scratch, 'qwen2');
  writeRandomCheckpoint({ ...RANDOM_SHAPES.tiny, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2' }, dir, { seed: 5 });
  return dir;
}
const models: { label: string; load: (be: Backend) => LoadedModel }[] = [
  { label: 'embedded', load: (be) => loadModel(DEFAULT_MODEL_DIR, { backend: be }) },
  { label: 'qwen2-shaped', load: (be) => loadModel(qwen2Dir(), { backend: be }) },
];

/** Prompt ids of different lengths: golden prompts, repeated and cut. */
function prompts(lm: LoadedModel, count: number): number[][] {
  const base = goldenPrompts().map((g) => g.input_ids.filter((id) => id < lm.model.weights.embed.rows));
  return Array.from({ length: count }, (_, i) => {
    const p = base[i % base.length]!;
    const ids = [...p, ...p, ...p].slice(0, 12 + 9 * i);
    return ids;
  });
}

/** Evicts rows per head down to about `ratio` of them (ragged: a different random subset per head). */
function evict(cache: KvCache, ratio: number, seed: number): void {
  if (ratio >= 1) return;
  const rand = seededRandom(seed);
  cache.forEachHead((s, l, h) => {
    const keepN = Math.max(1, Math.floor(s.len * ratio * (0.7 + 0.6 * rand())));
    const order = Array.from({ length: s.len }, (_, i) => i).sort(() => rand() - 0.5);
    cache.keep(l, h, order.slice(0, Math.min(keepN, s.len)).sort((a, b) => a - b));
  });
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const RATIOS = [1, 0.5, 0.3, 1, 0.1];
const DTYPES: KvDtype[] = ['f32', 'f32', 'bf16', 'f32', 'bf16'];

for (const be of backends) {
  for (const m of models) {
    const lm = m.load(be.make());
    const vocab = lm.model.weights.lmHead.rows;
    /** B caches with different prompt lengths, eviction ratios and dtypes. */
    const setup = (B: number): KvCache[] =>
      prompts(lm, B).map((ids, i) => {
        const c = lm.newCache(DTYPES[i % DTYPES.length]!);
        lm.model.forward(ids, c, { logits: 'none' });
        evict(c, RATIOS[i % RATIOS.length]!, 100 + i);
        return c;
      });

    for (let B = 1; B <= 5; B++) {
      test(`[${be.label}, ${m.label}] batched decode of B=${B} (lengths, ratios, dtypes mixed) equals each sequence alone`, () => {
        const caches = setup(B);
        const alone = caches.map((c) => c.clone());
        const tokens = caches.map((_, i) => (7 + 31 * i) % vocab);
        for (let step = 0; step < 3; step++) {
          const batched = lm.model.forwardBatch(caches.map((cache, i) => ({ ids: [tokens[i]!], cache })));
          caches.forEach((c, i) => {
            const single = lm.model.forward([tokens[i]!], alone[i]!)!;
            const d = maxDiff(batched[i]!, single);
            assert.ok(d <= be.tol, `step ${step} sequence ${i}: |batched - alone| = ${d} > ${be.tol}`);
            assert.equal(c.nextPos, alone[i]!.nextPos);
            assert.deepEqual(c.lengths(), alone[i]!.lengths());
            tokens[i] = (tokens[i]! * 13 + 5) % vocab;
          });
        }
      });
    }

    if (be.label.startsWith('native')) {
      // Up to 16 rows the native decode GEMV reads the weights once for all rows and sums each row as it does
      // alone; every other op of a decode step runs per row or per sequence: the logits agree bit for bit.
      for (const B of [8, 16]) {
        test(`[${be.label}, ${m.label}] batched decode of B=${B} on the wide decode GEMV gives each sequence the bits it gets alone`, () => {
          const caches = setup(B);
          const alone = caches.map((c) => c.clone());
          const tokens = caches.map((_, i) => (11 + 37 * i) % vocab);
          for (let step = 0; step < 2; step++) {
            const batched = lm.model.forwardBatch(caches.map((cache, i) => ({ ids: [tokens[i]!], cache })));
            caches.forEach((_, i) => {
              const single = lm.model.forward([tokens[i]!], alone[i]!)!;
              assert.equal(maxDiff(batched[i]!, single), 0, `step ${step} sequence ${i}`);
              tokens[i] = (tokens[i]! * 13 + 5) % vocab;
            });
          }
        });
      }
    }

    test(`[${be.label}, ${m.label}] a prefill chunk joins a decode step; rows without logits get none`, async () => {
      const caches = setup(3);
      const alone = caches.map((c) => c.clone());
      const chunk = prompts(lm, 4)[3]!.slice(0, 11);
      const fresh = lm.newCache();
      const freshAlone = lm.newCache();
      const seqs: BatchSequence[] = [
        { ids: [3], cache: caches[0]! },
        { ids: chunk, cache: fresh },
        { ids: [9], cache: caches[1]! },
        { ids: chunk.slice(0, 4), cache: caches[2]!, logits: false },
      ];
      const out = await lm.model.forwardBatchAsync(seqs);
      const want = [
        lm.model.forward([3], alone[0]!)!,
        lm.model.forward(chunk, freshAlone)!,
        lm.model.forward([9], alone[1]!)!,
      ];
      lm.model.forward(chunk.slice(0, 4), alone[2]!, { logits: 'none' });
      for (let i = 0; i < 3; i++) {
        const d = maxDiff(out[i]!, want[i]!);
        assert.ok(d <= be.tol, `sequence ${i}: |batched - alone| = ${d} > ${be.tol}`);
      }
      assert.equal(out[3], null);
      assert.equal(caches[2]!.nextPos, alone[2]!.nextPos);
      assert.deepEqual(fresh.lengths(), freshAlone.lengths());
    });
  }
}

test('forwardBatch refuses an empty sequence and two sequences sharing a cache, naming the problem', async () => {
  const lm = loadModel(DEFAULT_MODEL_DIR, { backend: new ReferenceBackend() });
  const c = lm.newCache();
  assert.throws(() => lm.model.forwardBatch([{ ids: [], cache: c }]), /sequence 0 has no tokens/);
  await assert.rejects(lm.model.forwardBatchAsync([{ ids: [1], cache: c }, { ids: [2], cache: c }]), /share one cache/);
});
