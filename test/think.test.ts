import assert from 'node:assert/strict';
import { test } from 'node:test';
import { channelScores, keptChannels, THINK_DEFAULTS } from '../src/press/methods/think.ts';
import { getPress } from '../src/press/registry.ts';
import { lastPositions } from '../src/press/window-attention.ts';
import { runThinkBench } from '../src/bench/think-bench.ts';
import { DEFAULT_MODEL_DIR, loadModel } from '../src/engine/loaded-model.ts';
import { loadAddon } from '../src/tensor/native.ts';
import { KvCacheLayoutError, RatioError } from '../src/tensor/kvlab-error.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel(selectBackend());
const cfg = lm.config;
const d = cfg.headDim;
const G = cfg.numHeads / cfg.numKvHeads;
const row = qaRows()[0]!;
const context = row.context.split('\n').slice(0, 5).join('\n');
const question = row.questions[0]!;

/** ||Q[:, c] K[:, c]^T||_F summed element by element over the rank-one matrix (the paper's channel score). */
function bruteScore(q: number[][], k: number[][], c: number): number {
  let s = 0;
  for (const qi of q) for (const kj of k) s += (qi[c]! * kj[c]!) ** 2;
  return Math.sqrt(s);
}

test('ThinK channel scores equal the Frobenius norm of each channel\'s Q K^T term; the top channels are kept, ties to the lower', () => {
  const rand = seededRandom(11);
  const nHeads = 4;
  const group = 2;
  const w = 5;
  const n = 7;
  const dd = 8;
  const queries = Float32Array.from({ length: w * nHeads * dd }, () => rand() * 2 - 1);
  const keys = Float32Array.from({ length: n * dd }, () => rand() * 2 - 1);
  for (let kvHead = 0; kvHead < nHeads / group; kvHead++) {
    const scores = channelScores(queries, nHeads, kvHead, group, keys, dd);
    // Q_w stacks the window rows of every query head of the group.
    const q: number[][] = [];
    for (let i = 0; i < w; i++) for (let h = kvHead * group; h < (kvHead + 1) * group; h++) q.push(Array.from(queries.subarray((i * nHeads + h) * dd, (i * nHeads + h + 1) * dd)));
    const k = Array.from({ length: n }, (_, j) => Array.from(keys.subarray(j * dd, (j + 1) * dd)));
    for (let c = 0; c < dd; c++) assert.ok(Math.abs(scores[c]! - bruteScore(q, k, c)) <= 1e-9 * Math.max(1, scores[c]!), `head ${kvHead} channel ${c}`);
  }
  // Hand-worked on 8 channels: ratio 0.5 prunes 4, keeping 9, 7, 5, 5 (channels 0, 3, 1, 6), ascending.
  assert.deepEqual(Array.from(keptChannels(Float64Array.of(9, 5, 1, 7, 2, 0, 5, 3), 0.5)), [0, 1, 3, 6]);
  // Ratio 0.625 prunes 5: channels 1 and 6 tie at 5 for the last place, the lower one wins.
  assert.deepEqual(Array.from(keptChannels(Float64Array.of(9, 5, 1, 7, 2, 0, 5, 3), 0.625)), [0, 1, 3]);
  assert.deepEqual(Array.from(keptChannels(Float64Array.of(9, 5, 1, 7, 2, 0, 5, 3), 0.3)), [0, 1, 3, 4, 6, 7], 'floor(8 * 0.3) = 2 pruned');
  assert.deepEqual(Array.from(keptChannels(Float64Array.of(1, 2, 3), 0)), [0, 1, 2]);
});

test('think:snapkv keeps, per head, the channels brute force ranks first from the window queries and the kept keys', () => {
  const press = getPress('think0.5:snapkv');
  const session = lm.openContext(context, { queryTemplate: 'Question: {query}' });
  const scored = session.score(press);
  const full = session.cache.clone();
  const { session: s, keep, report } = scored.compressed(0.5);
  const P = session.context.start;
  const window = lastPositions(session.context, THINK_DEFAULTS.window);
  const capture = scored.context.capture;
  const rowSize = cfg.numHeads * d;
  s.cache.forEachHead((hs, l, h) => {
    // Window queries of the group's heads, and the rows the head kept (prefix, then SnapKV's selection), full width.
    const q: number[][] = [];
    for (const p of window) {
      const slot = capture.queryPositions.indexOf(p);
      for (let g = h * G; g < (h + 1) * G; g++) q.push(Array.from(capture.queries[l]!.subarray(slot * rowSize + g * d, slot * rowSize + (g + 1) * d)));
    }
    const rows = [...Array.from({ length: P }, (_, i) => i), ...Array.from(keep[l]![h]!, (j) => P + j)];
    const k = rows.map((r) => Array.from(full.head(l, h).keys(r, r + 1)));
    const brute = Array.from({ length: d }, (_, c) => bruteScore(q, k, c));
    const order = brute.map((x, c) => [x, c] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    const want = order.slice(0, d / 2).map(([, c]) => c).sort((a, b) => a - b);
    assert.deepEqual(Array.from(hs.keyChannels!), want, `layer ${l} head ${h}`);
    // Stored keys are exactly the kept rows' kept channels.
    rows.forEach((r, i) => assert.deepEqual(Array.from(hs.storedKeys(i, i + 1)), want.map((c) => full.head(l, h).keys(r, r + 1)[c]!)));
  });
  // Bytes: each row holds d / 2 key and d value floats, plus each head's channel list.
  let rowsHeld = 0;
  s.cache.forEachHead((hs) => (rowsHeld += hs.len));
  const heads = cfg.numLayers * cfg.numKvHeads;
  assert.equal(report.bytesKept, rowsHeld * (d / 2 + d) * 4 + heads * (d / 2) * 4);
  assert.equal(s.cache.bytes(), report.bytesKept);
});

test('decoding after ThinK: new rows keep the head\'s channels; logits stay close to the full cache\'s at a small pruned ratio; ratio 0 is the full cache', async () => {
  const full = lm.openContext(context, { queryTemplate: 'Question: {query}' });
  full.prefillCapture([]);
  const ids = full.queryIds(question);
  const fullLogits = lm.model.forward(ids, full.cache)!;
  // Ratio 0 (think0, every row kept): bit for bit the full cache.
  const zero = lm.openContext(context, { queryTemplate: 'Question: {query}' });
  zero.compress(getPress('think0'), 1);
  assert.equal(zero.cache.keyChannelsPruned, false);
  assert.deepEqual(lm.model.forward(ids, zero.cache), fullLogits);

  const small = lm.openContext(context, { queryTemplate: 'Question: {query}' });
  const report = small.compress(getPress('think0.125'), 1);
  const N = small.ids.length;
  const heads = cfg.numLayers * cfg.numKvHeads;
  const kd = d - d / 8;
  assert.equal(report.bytesFull, heads * N * 2 * d * 4);
  assert.equal(report.bytesKept, heads * (N * (kd + d) * 4 + kd * 4), 'keys at 56 of 64 channels, plus the channel lists');
  assert.ok(report.bytesKept < report.bytesFull);
  const channels = small.cache.heads.map((layer) => layer.map((hs) => Int32Array.from(hs.keyChannels!)));
  const logits = lm.model.forward(ids, small.cache)!;
  // Close, not equal: an eighth of the key channels (the least important ones) no longer take part in q.k.
  let maxDiff = 0;
  let spread = 0;
  for (let i = 0; i < logits.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(logits[i]! - fullLogits[i]!));
    spread = Math.max(spread, Math.abs(fullLogits[i]!));
  }
  assert.ok(maxDiff > 0, 'pruning changed something');
  // Measured on the shipped checkpoint (step 13,500): an eighth pruned moves the largest logit change to 0.14 of the
  // logits' range (step 10,000: under 0.1); half pruned moves it 1.23 times the range. The greedy token stays.
  assert.ok(maxDiff < 0.2 * spread, `max logit change ${maxDiff} against logits up to ${spread}`);
  const argmax = (x: ArrayLike<number>) => Array.prototype.indexOf.call(x, Math.max(...Array.from(x)));
  assert.equal(argmax(logits.subarray(logits.length - cfg.vocabSize)), argmax(fullLogits.subarray(fullLogits.length - cfg.vocabSize)));
  // The query's rows were stored with each head's channel set; in layer 0 a new key depends only on its token and
  // position, so it equals the full cache's new key at the kept channels.
  small.cache.forEachHead((hs, l, h) => {
    assert.deepEqual(hs.keyChannels, channels[l]![h]!);
    assert.equal(hs.len, N + ids.length);
    assert.equal(hs.k.length >= hs.len * hs.keyDim, true);
  });
  for (let h = 0; h < cfg.numKvHeads; h++) {
    const ch = channels[0]![h]!;
    for (let r = N; r < N + ids.length; r++) {
      const want = Array.from(ch, (c) => full.cache.head(0, h).keys(r, r + 1)[c]!);
      assert.deepEqual(Array.from(small.cache.head(0, h).storedKeys(r, r + 1)), want, `layer 0 head ${h} row ${r}`);
    }
  }
  // An async step on a pruned cache (the addon's pruned-key kernel inside the recorded step) gives forward()'s logits.
  const a = small.cache.clone();
  const b = small.cache.clone();
  assert.deepEqual(await lm.model.forwardAsync([10], a), lm.model.forward([10], b));
});

test('a bf16 cache after ThinK: reduced bf16 keys, and async steps fall back to a synchronous pass with the same logits', async () => {
  const half = loadModel(DEFAULT_MODEL_DIR, { backend: selectBackend(), kvDtype: 'bf16' });
  const s = half.openContext(context, { queryTemplate: 'Question: {query}' });
  const report = s.compress(getPress('think:snapkv'), 0.5);
  let rows = 0;
  s.cache.forEachHead((hs) => {
    assert.equal(hs.keyDim, d / 2);
    assert.ok(hs.k instanceof Uint16Array);
    rows += hs.len;
  });
  assert.equal(report.bytesKept, rows * (d / 2 + d) * 2 + cfg.numLayers * cfg.numKvHeads * (d / 2) * 4);
  const a = s.cache.clone();
  const b = s.cache.clone();
  const ids = s.queryIds(question);
  assert.deepEqual(await half.model.forwardAsync(ids, a), half.model.forward(ids, b));
  a.forEachHead((hs, l, h) => assert.deepEqual(hs.k.subarray(0, hs.len * hs.keyDim), b.head(l, h).k.subarray(0, hs.len * hs.keyDim)));
});

test('think alone keeps every row: a ratio below 1 is refused by name; bad key-channel ratios too', () => {
  const session = lm.openContext(context);
  assert.throws(() => session.compress(getPress('think'), 0.5), (e: unknown) => e instanceof RatioError && /think:<method>/.test(e.message));
  assert.throws(() => getPress('think1:snapkv'), RatioError);
  assert.throws(() => getPress('think1'), RatioError);
  assert.match(getPress('think0.25:snapkv').describe, /ThinK prunes 0.25 of each head's key channels/);
  const quantized = loadModel(DEFAULT_MODEL_DIR, { backend: selectBackend(), kvDtype: 'int4', kvQuant: { group: 8, residual: 16 } });
  assert.throws(() => quantized.openContext(context).compress(getPress('think:snapkv'), 0.5), (e: unknown) => e instanceof KvCacheLayoutError && /int4/.test(e.message));
});

test('bench think: every cache holds the bytes its rows and key channels say (tiny model, one short round)', { skip: !loadAddon() && 'the native addon is not built' }, () => {
  const report = runThinkBench({ model: 'tiny', context: 64, rounds: 1, steps: 1, log: () => {} }) as { caches: { cache: string; kv_bytes: number; kv_bytes_vs_full: number; ms_per_token: number }[] };
  const heads = cfg.numLayers * cfg.numKvHeads;
  // Key channels kept: three quarters and half of the head (exact for a head width divisible by 4).
  assert.equal(d % 4, 0);
  const [k75, k50] = [(3 * d) / 4, d / 2];
  const want: Record<string, number> = {
    full: heads * 64 * 2 * d * 4,
    'think 0.25': heads * (64 * (k75 + d) * 4 + k75 * 4),
    'think 0.5': heads * (64 * (k50 + d) * 4 + k50 * 4),
    'rows 0.5': heads * 32 * 2 * d * 4,
    'rows 0.5 + think 0.5': heads * (32 * (k50 + d) * 4 + k50 * 4),
  };
  assert.deepEqual(Object.fromEntries(report.caches.map((c) => [c.cache, c.kv_bytes])), want);
  for (const c of report.caches) assert.ok(c.ms_per_token > 0);
});
