/**
 * Mistral's sliding window: a query at position p sees the keys at positions p - W < pos <= p. Checked by hand
 * on the attention kernel (values that spell out which keys were averaged), then on the mistral-window random
 * checkpoint: prefill and decode agree, the window changes exactly the positions it should, and eviction
 * leaves it on positions, not cache indices.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { archFamily, familyPrompts, MISTRAL_TEST_WINDOW, writeFamilyCheckpoint } from '../src/bench/arch-families.ts';
import { loadModel, type LoadedModel } from '../src/engine/loaded-model.ts';
import type { Backend, KvHeadView } from '../src/tensor/backend.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';

const backends: [string, () => Backend][] = [['reference', () => new ReferenceBackend()]];
if (nativeAvailable()) backends.push(['native', () => new NativeBackend()]);

/**
 * One KV head whose keys are all zero (so every visible key gets the same weight) and whose value at row j is
 * its position: the output is the mean position of the keys the query saw.
 */
function meanVisiblePosition(be: Backend, positions: number[], qPos: number[], window?: number): number[] {
  const d = 4;
  const head: KvHeadView = {
    k: new Float32Array(positions.length * d),
    v: Float32Array.from({ length: positions.length * d }, (_, i) => positions[Math.floor(i / d)]!),
    pos: Int32Array.from(positions),
    len: positions.length,
  };
  const out = new Float32Array(qPos.length * d);
  be.attention({ q: new Float32Array(qPos.length * d).fill(1), out, nq: qPos.length, nHeads: 1, nKvHeads: 1, headDim: d, qPos: Int32Array.from(qPos), heads: [head], scale: 0.5, window });
  return qPos.map((_, i) => out[i * d]!);
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const close = (a: number[], b: number[]) => a.every((x, i) => Math.abs(x - b[i]!) < 1e-5);

for (const [name, make] of backends) {
  test(`${name}: the window masks keys by position, in prefill and decode`, () => {
    const be = make();
    const all = [0, 1, 2, 3, 4, 5, 6, 7];
    // Prefill: each query sees itself and the 2 positions before it (window 3).
    assert.ok(close(meanVisiblePosition(be, all, all, 3), [0, 0.5, 1, 2, 3, 4, 5, 6]));
    // Without a window every query sees all earlier keys.
    assert.ok(close(meanVisiblePosition(be, all, all), all.map((p) => p / 2)));
    // Decode: one query at position 7.
    assert.ok(close(meanVisiblePosition(be, all, [7], 3), [6]));
    // A window as long as the context masks nothing.
    assert.ok(close(meanVisiblePosition(be, all, [7], 8), [3.5]));
  });

  test(`${name}: after eviction the window still counts positions, not the rows left`, () => {
    const be = make();
    // Positions 4 and 5 evicted: the query at 7 with window 4 sees 6 and 7 only (positions 4..7), not the last four rows.
    const kept = [0, 1, 2, 3, 6, 7];
    assert.ok(close(meanVisiblePosition(be, kept, [7], 4), [mean([6, 7])]));
    // A new token continues at position 10 (8 and 9 never cached): window 4 reaches back to position 7 only.
    assert.ok(close(meanVisiblePosition(be, [...kept, 10], [10], 4), [mean([7, 10])]));
    // Ragged and out of order rows (a compressed cache keeps any subset): the mask still reads each row's position.
    assert.ok(close(meanVisiblePosition(be, [9, 2, 7, 8, 3], [9], 3), [mean([9, 7, 8])]));
  });
}

const scratch = mkdtempSync(join(tmpdir(), 'kvlab-window-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
const family = archFamily('mistral-window');
const dir = join(scratch, family.name);
writeFamilyCheckpoint(family, dir);
const prompt = familyPrompts(family, dir)[1]!;

function load(make: () => Backend, window: number | null = MISTRAL_TEST_WINDOW): LoadedModel {
  const lm = loadModel(dir, { backend: make() });
  (lm.config as { slidingWindow: number | null }).slidingWindow = window;
  return lm;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('mistral-window checkpoint: the config carries the window and the prompt is longer than it', () => {
  const lm = loadModel(dir, { backend: new ReferenceBackend() });
  assert.equal(lm.config.modelType, 'mistral');
  assert.equal(lm.config.slidingWindow, MISTRAL_TEST_WINDOW);
  assert.ok(prompt.length > 2 * MISTRAL_TEST_WINDOW, `prompt of ${prompt.length} tokens`);
});

test('reference: the window changes logits only from position W on, and decode matches prefill', () => {
  const windowed = load(() => new ReferenceBackend());
  const full = load(() => new ReferenceBackend(), null);
  const V = windowed.config.vocabSize;
  const n = MISTRAL_TEST_WINDOW + 6;
  const ids = prompt.slice(0, n);
  const a = windowed.model.forward(ids, windowed.newCache(), { logits: 'all' })!;
  const b = full.model.forward(ids, full.newCache(), { logits: 'all' })!;
  for (let i = 0; i < n; i++) {
    const d = maxAbsDiff(a.subarray(i * V, (i + 1) * V), b.subarray(i * V, (i + 1) * V));
    if (i < MISTRAL_TEST_WINDOW) assert.equal(d, 0, `position ${i} is inside the window and must not change`);
    else assert.ok(d > 1e-3, `position ${i} sees a key the window drops, so its logits must change (diff ${d})`);
  }
  // Token by token through the same cache: each decode step masks like the prefill did.
  const cache = windowed.newCache();
  windowed.model.forward(ids.slice(0, 4), cache, { logits: 'none' });
  for (let i = 4; i < n; i++) {
    const step = windowed.model.forward([ids[i]!], cache, { logits: 'last' })!;
    assert.ok(maxAbsDiff(step, a.subarray(i * V, (i + 1) * V)) < 1e-4, `decode at position ${i} matches prefill`);
  }
});

test('reference: evicting what the window already hides changes nothing; evicting inside it does', () => {
  const lm = load(() => new ReferenceBackend());
  const W = MISTRAL_TEST_WINDOW;
  const ctx = prompt.slice(0, 2 * W);
  const next = prompt.slice(2 * W, 2 * W + 4);
  const run = (evict: (pos: Int32Array, len: number) => number[]) => {
    const cache = lm.newCache();
    lm.model.forward(ctx, cache, { logits: 'none' });
    for (let l = 0; l < lm.config.numLayers; l++) {
      for (let h = 0; h < lm.config.numKvHeads; h++) {
        const s = cache.head(l, h);
        cache.keep(l, h, evict(s.pos, s.len));
      }
    }
    return lm.model.forward(next, cache, { logits: 'all' })!;
  };
  const keepAll = run((_, len) => Array.from({ length: len }, (_, j) => j));
  // The next tokens sit at positions >= 2W, whose windows start after position W: rows before it are dead.
  const dropHidden = run((pos, len) => Array.from({ length: len }, (_, j) => j).filter((j) => pos[j]! > W));
  assert.equal(maxAbsDiff(keepAll, dropHidden), 0);
  // Dropping rows inside the window does change the output (the window does not slide back to refill itself).
  const dropVisible = run((pos, len) => Array.from({ length: len }, (_, j) => j).filter((j) => pos[j]! < 2 * W - 3));
  assert.ok(maxAbsDiff(keepAll, dropVisible) > 1e-3);
});

test('native against reference on the windowed checkpoint: prefill, decode, a bf16 cache, an async step, after eviction', { skip: nativeAvailable() ? false : 'native addon not built (npm run build:native)' }, async () => {
  const ref = load(() => new ReferenceBackend());
  const nat = load(() => new NativeBackend());
  const V = ref.config.vocabSize;
  const ids = prompt.slice(0, prompt.length - 5);
  for (const dtype of ['f32', 'bf16'] as const) {
    const a = ref.model.forward(ids, ref.newCache(dtype), { logits: 'all' })!;
    const b = nat.model.forward(ids, nat.newCache(dtype), { logits: 'all' })!;
    assert.ok(maxAbsDiff(a, b) < 2e-3, `prefill ${dtype}: ${maxAbsDiff(a, b)}`);
  }
  // Decode through an evicted cache (every third row dropped), synchronously and as an async step.
  const run = async (lm: LoadedModel, async: boolean) => {
    const cache = lm.newCache();
    lm.model.forward(ids, cache, { logits: 'none' });
    for (let l = 0; l < lm.config.numLayers; l++)
      for (let h = 0; h < lm.config.numKvHeads; h++) cache.keep(l, h, Array.from({ length: cache.head(l, h).len }, (_, j) => j).filter((j) => j % 3 !== 1));
    const rows: Float32Array[] = [];
    for (const t of prompt.slice(ids.length)) rows.push((async ? await lm.model.forwardAsync([t], cache) : lm.model.forward([t], cache))!.slice());
    return rows;
  };
  const want = await run(ref, false);
  for (const async of [false, true]) {
    const got = await run(nat, async);
    got.forEach((r, i) => assert.ok(maxAbsDiff(r, want[i]!) < 2e-3, `decode step ${i}${async ? ' (async)' : ''}: ${maxAbsDiff(r, want[i]!)}`));
  }
  assert.equal(want.length, 5);
  assert.equal(want[0]!.length, V);
});
