import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KvCache, type KvDtype } from '../src/cache/kv-cache.ts';
import { DEFAULT_MODEL_DIR, loadModel } from '../src/engine/loaded-model.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';
import type { Backend, KvHeadView } from '../src/tensor/backend.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';
import { goldenPrompts } from './helpers/tiny-model.ts';

/**
 * A sequence continuing a shared context reads the context's rows in place, then its own: its logits must
 * equal those of the same sequence run on a private copy of the context (1e-4 absolute: the prefixed kernel
 * folds keys block by block, an order the single-segment kernels do not share).
 */
const TOL = 1e-4;
const backends: { label: string; make: () => Backend }[] = [{ label: 'reference', make: () => new ReferenceBackend() }];
if (nativeAvailable()) backends.push({ label: 'native', make: () => new NativeBackend({ bf16Activations: false }) });

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Random rows for one head: len rows at increasing positions from `from`, in the given dtype. */
function randomHead(d: number, len: number, from: number, dtype: KvDtype, rand: () => number): KvHeadView {
  const c = new KvCache(1, 1, d, dtype);
  const k = Float32Array.from({ length: len * d }, () => rand() * 2 - 1);
  const v = Float32Array.from({ length: len * d }, () => rand() * 2 - 1);
  // Ragged positions: skip some, as an evicted context does.
  const pos = new Int32Array(len);
  for (let i = 0, p = from; i < len; i++, p += 1 + Math.floor(rand() * 2)) pos[i] = p;
  c.appendLayer(0, k, v, pos);
  return c.head(0, 0);
}

function concat(a: KvHeadView, b: KvHeadView, d: number): KvHeadView {
  const bf16 = a.k instanceof Uint16Array;
  const mk = (n: number) => (bf16 ? new Uint16Array(n) : new Float32Array(n));
  const k = mk((a.len + b.len) * d);
  const v = mk((a.len + b.len) * d);
  k.set(a.k.subarray(0, a.len * d) as never);
  k.set(b.k.subarray(0, b.len * d) as never, a.len * d);
  v.set(a.v.subarray(0, a.len * d) as never);
  v.set(b.v.subarray(0, b.len * d) as never, a.len * d);
  const pos = new Int32Array(a.len + b.len);
  pos.set(a.pos.subarray(0, a.len));
  pos.set(b.pos.subarray(0, b.len), a.len);
  return { k, v, pos, len: a.len + b.len };
}

for (const be of backends) {
  for (const dtype of ['f32', 'bf16'] as const) {
    test(`[${be.label}, ${dtype}] attention over a prefix then a head's own rows equals attention over both as one head`, () => {
      const backend = be.make();
      const rand = seededRandom(7);
      for (const [nH, nKv, d, nq] of [[4, 2, 16, 1], [8, 2, 64, 3], [14, 2, 64, 1], [4, 4, 8, 5], [2, 1, 12, 2]] as const) {
        const prefixLen = 150;
        const prefix = Array.from({ length: nKv }, () => randomHead(d, prefixLen - Math.floor(rand() * 60), 0, dtype, rand));
        const own = Array.from({ length: nKv }, () => randomHead(d, 3 + nq + Math.floor(rand() * 70), 400, dtype, rand));
        const q = Float32Array.from({ length: nq * nH * d }, () => rand() * 2 - 1);
        // Query rows at the last own positions: the first rows cannot see the last keys (causal masking).
        const qPos = Int32Array.from({ length: nq }, (_, i) => Math.min(...own.map((h) => h.pos[h.len - nq + i]!)));
        const args = { q, nq, nHeads: nH, nKvHeads: nKv, headDim: d, qPos, scale: 1 / Math.sqrt(d) };
        const split = new Float32Array(nq * nH * d);
        backend.attention({ ...args, out: split, heads: own, prefix });
        const joined = new Float32Array(nq * nH * d);
        new ReferenceBackend().attention({ ...args, out: joined, heads: own.map((h, g) => concat(prefix[g]!, h, d)) });
        const diff = maxDiff(split, joined);
        assert.ok(diff <= 1e-5, `${nH}/${nKv} heads, d ${d}, nq ${nq}: |prefixed - joined| = ${diff}`);
      }
    });
  }

  test(`[${be.label}] sequences on one shared compressed context: logits as on a private copy, tails never seen by each other, context untouched`, async () => {
    const lm = loadModel(DEFAULT_MODEL_DIR, { backend: be.make() });
    const g = goldenPrompts();
    const contextIds = [...g[0]!.input_ids, ...g[1]!.input_ids, ...g[0]!.input_ids];
    const ctx = lm.newCache();
    lm.model.forward(contextIds, ctx, { logits: 'none' });
    // Compress: keep about 30% of each head's rows (a different subset per head).
    const rand = seededRandom(11);
    ctx.forEachHead((s, l, h) => {
      const idx = Array.from({ length: s.len }, (_, i) => i).filter(() => rand() < 0.3);
      ctx.keep(l, h, idx.length ? idx : [0]);
    });
    const before = { lengths: ctx.lengths(), bytes: ctx.bytes(), nextPos: ctx.nextPos, k0: Float32Array.from(ctx.head(0, 0).keys()) };

    const queries = [g[1]!.input_ids.slice(0, 9), g[2 % g.length]!.input_ids.slice(0, 5), g[0]!.input_ids.slice(0, 13)];
    const tails = queries.map(() => {
      const t = lm.newCache();
      t.nextPos = ctx.nextPos;
      return t;
    });
    const copies = queries.map(() => ctx.clone());
    let out = await lm.model.forwardBatchAsync(queries.map((ids, i) => ({ ids, cache: tails[i]!, context: ctx })));
    let want = queries.map((ids, i) => lm.model.forward(ids, copies[i]!)!);
    for (let step = 0; step < 3; step++) {
      queries.forEach((_, i) => {
        const d = maxDiff(out[i]!, want[i]!);
        assert.ok(d <= TOL, `step ${step} sequence ${i}: |shared - private copy| = ${d} > ${TOL}`);
        // The tail holds only the sequence's own rows.
        assert.ok(tails[i]!.lengths().flat().every((n) => n === queries[i]!.length + step), `tail ${i} holds rows of another sequence`);
      });
      const next = queries.map((_, i) => (step * 17 + i * 5 + 3) % lm.model.weights.lmHead.rows);
      out = lm.model.forwardBatch(queries.map((_, i) => ({ ids: [next[i]!], cache: tails[i]!, context: ctx })));
      want = queries.map((_, i) => lm.model.forward([next[i]!], copies[i]!)!);
    }
    assert.deepEqual(ctx.lengths(), before.lengths);
    assert.equal(ctx.bytes(), before.bytes);
    assert.equal(ctx.nextPos, before.nextPos);
    assert.deepEqual(ctx.head(0, 0).keys(), before.k0);
    assert.throws(() => lm.model.forwardBatch([{ ids: [1], cache: lm.newCache(), context: ctx }]), /inside its context/);
  });
}
