import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { readContextFile, writeContextFile } from '../src/cache/context-file.ts';
import { KvCache } from '../src/cache/kv-cache.ts';
import { KvPool } from '../src/cache/kv-pool.ts';
import { StepNotRecordableError, type AttentionArgs, type Backend, type KvHeadView } from '../src/tensor/backend.ts';
import { KvCacheLayoutError } from '../src/tensor/kvlab-error.ts';
import { loadAddon, NativeBackend, type PrunedHeadArgs } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';

const d = 16;
const H = 2;
const channels = Int32Array.of(0, 1, 2, 5, 6, 9, 12, 15);

function filled(cache: KvCache, n: number, seed: number): { k: Float32Array; v: Float32Array } {
  const rand = seededRandom(seed);
  const k = Float32Array.from({ length: n * H * d }, () => rand() * 2 - 1);
  const v = Float32Array.from({ length: n * H * d }, () => rand() * 2 - 1);
  const pos = Int32Array.from({ length: n }, (_, i) => cache.nextPos + i);
  for (let l = 0; l < cache.numLayers; l++) cache.appendLayer(l, k, v, pos);
  cache.advance(n);
  return { k, v };
}

/** Row r of KV head h of a [n, H, d] array, with the channels outside `keep` zeroed when given. */
function row(a: Float32Array, r: number, h: number, keep?: Int32Array): number[] {
  const x = Array.from(a.subarray((r * H + h) * d, (r * H + h + 1) * d));
  return keep ? x.map((y, c) => (keep.includes(c) ? y : 0)) : x;
}

test('a channel-pruned head stores its kept channels only: reads, bytes, appends, keep, clone', () => {
  const cache = new KvCache(1, H, d, 'f32');
  const first = filled(cache, 5, 1);
  const full = cache.bytes();
  assert.equal(full, H * 5 * d * 2 * 4);
  cache.pruneKeyChannels(0, 0, channels);
  const hs = cache.head(0, 0);
  assert.equal(hs.keyDim, channels.length);
  assert.equal(hs.k.length, hs.capacity * channels.length, 'k is allocated at the reduced width');
  // Bytes: 5 rows of 8 key + 16 value floats, the channel list, and the untouched head 1.
  assert.equal(cache.bytes(), 5 * (8 + 16) * 4 + 8 * 4 + 5 * d * 2 * 4);
  for (let r = 0; r < 5; r++) {
    assert.deepEqual(Array.from(hs.keys(r, r + 1)), row(first.k, r, 0, channels), `row ${r}: pruned channels read as zeros`);
    assert.deepEqual(Array.from(hs.storedKeys(r, r + 1)), Array.from(channels, (c) => first.k[(r * H) * d + c]!));
    assert.deepEqual(Array.from(hs.values(r, r + 1)), row(first.v, r, 0));
  }
  // Rows appended after pruning keep the same channels.
  const more = filled(cache, 3, 2);
  assert.equal(hs.len, 8);
  for (let r = 0; r < 3; r++) assert.deepEqual(Array.from(hs.keys(5 + r, 6 + r)), row(more.k, r, 0, channels), `appended row ${r}`);
  assert.deepEqual(Array.from(cache.head(0, 1).keys(5, 6)), row(more.k, 0, 1), 'the unpruned head keeps every channel');
  // keep() compacts rows at the reduced width.
  cache.keep(0, 0, [1, 4, 6]);
  assert.deepEqual(Array.from(hs.keys(0, 1)), row(first.k, 1, 0, channels));
  assert.deepEqual(Array.from(hs.keys(1, 2)), row(first.k, 4, 0, channels));
  assert.deepEqual(Array.from(hs.keys(2, 3)), row(more.k, 1, 0, channels));
  assert.deepEqual(Array.from(hs.values(2, 3)), row(more.v, 1, 0));
  // A clone (also to bf16) keeps the channel set.
  const copy = cache.clone();
  assert.deepEqual(copy.head(0, 0).keyChannels, channels);
  assert.deepEqual(copy.head(0, 0).keys(), hs.keys());
  assert.equal(copy.bytes(), cache.bytes());
  const half = cache.clone('bf16');
  assert.equal(half.head(0, 0).k.length, half.head(0, 0).capacity * channels.length);
  assert.equal(half.head(0, 0).heldBytes, 3 * (8 + 16) * 2 + 8 * 4);
});

test('pruning again keeps a subset; bad channel lists and quantized caches are refused by name', () => {
  const cache = new KvCache(1, H, d, 'f32');
  const first = filled(cache, 4, 3);
  cache.pruneKeyChannels(0, 1, channels);
  cache.pruneKeyChannels(0, 1, Int32Array.of(1, 9, 15));
  assert.deepEqual(Array.from(cache.head(0, 1).keys(2, 3)), row(first.k, 2, 1, Int32Array.of(1, 9, 15)));
  assert.throws(() => cache.pruneKeyChannels(0, 1, Int32Array.of(1, 2)), (e: unknown) => e instanceof KvCacheLayoutError && /channel 2 was pruned before/.test(e.message));
  assert.throws(() => cache.pruneKeyChannels(0, 0, Int32Array.of(3, 3)), /strictly increasing/);
  assert.throws(() => cache.pruneKeyChannels(0, 0, Int32Array.of(16)), /\[0, 16\)/);
  assert.throws(() => cache.pruneKeyChannels(0, 0, new Int32Array(0)), /at least one channel/);
  const quant = new KvCache(1, H, 32, 'int4', undefined, { group: 8, residual: 8 });
  assert.throws(() => quant.pruneKeyChannels(0, 0, Int32Array.of(0, 1)), (e: unknown) => e instanceof KvCacheLayoutError && e.code === 'kv_layout' && /int4/.test(e.message));
});

test('a pooled head is charged the reduced width, and gives the difference back at once', () => {
  const pool = new KvPool(1 << 20);
  const cache = new KvCache(1, H, d, 'f32', pool);
  filled(cache, 20, 4);
  const before = pool.usedBytes;
  assert.equal(before, cache.blockBytes());
  cache.pruneKeyChannels(0, 0, channels);
  assert.equal(pool.usedBytes, cache.blockBytes());
  assert.ok(pool.usedBytes < before);
  filled(cache, 30, 5);
  assert.equal(pool.usedBytes, cache.blockBytes());
  cache.release();
  assert.equal(pool.usedBytes, 0);
  assert.equal(cache.keyChannelsPruned, false, 'a released cache stores every channel again');
  const again = filled(cache, 3, 6);
  assert.deepEqual(Array.from(cache.head(0, 0).keys(2, 3)), row(again.k, 2, 0));
  assert.equal(pool.usedBytes, cache.blockBytes());
});

test('a context file keeps the channel set: the loaded cache holds the same reduced keys', () => {
  const cache = new KvCache(2, H, d, 'f32');
  filled(cache, 6, 6);
  cache.pruneKeyChannels(1, 0, channels);
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-think-'));
  try {
    writeContextFile(join(dir, 'c.kvctx'), cache, 'fp', {});
    const { cache: back } = readContextFile(join(dir, 'c.kvctx'), 'fp');
    assert.deepEqual(back.head(1, 0).keyChannels, channels);
    assert.equal(back.head(0, 0).keyChannels, null);
    assert.equal(back.bytes(), cache.bytes());
    back.forEachHead((hs, l, h) => {
      assert.deepEqual(hs.k.subarray(0, hs.len * hs.keyDim), cache.head(l, h).k.subarray(0, hs.len * hs.keyDim));
      assert.deepEqual(hs.values(), cache.head(l, h).values());
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Attention of 3 queries over one layer: its heads as given, with a shared prefix when asked. */
function attend(backend: ReferenceBackend | NativeBackend, heads: KvHeadView[], q: Float32Array, qPos: Int32Array, prefix?: KvHeadView[]): Float32Array {
  const nHeads = 4;
  const out = new Float32Array(qPos.length * nHeads * d);
  const args: AttentionArgs = { q, out, nq: qPos.length, nHeads, nKvHeads: H, headDim: d, qPos, heads, prefix, scale: 1 / Math.sqrt(d) };
  backend.attention(args);
  return out;
}

/** The same head with full-width keys whose pruned channels are zero: what q.k over the kept channels must equal. */
function zeroedView(hs: { keys(): Float32Array; values(): Float32Array; pos: Int32Array; len: number }): KvHeadView {
  return { k: hs.keys(), v: hs.values(), pos: hs.pos, len: hs.len };
}

test('attention over pruned keys equals attention over full-width keys with the pruned channels zeroed (reference and native)', () => {
  const cache = new KvCache(1, H, d, 'f32');
  filled(cache, 9, 7);
  cache.pruneKeyChannels(0, 0, channels);
  cache.pruneKeyChannels(0, 1, Int32Array.of(3, 4, 7, 8, 10, 11));
  const rand = seededRandom(8);
  const q = Float32Array.from({ length: 3 * 4 * d }, () => rand() * 2 - 1);
  const qPos = Int32Array.of(4, 7, 8);
  const ref = new ReferenceBackend();
  const oracle = attend(ref, cache.layer(0).map(zeroedView), q, qPos);
  const pruned = attend(ref, cache.layer(0), q, qPos);
  pruned.forEach((x, i) => assert.ok(Math.abs(x - oracle[i]!) <= 1e-6, `out[${i}] ${x} vs ${oracle[i]}`));
  // A shared prefix holding pruned rows, continued by a head of full-width rows.
  const own = new KvCache(1, H, d, 'f32');
  own.nextPos = cache.nextPos;
  filled(own, 2, 9);
  const qp = Int32Array.of(9, 10, 10);
  const oracleP = attend(ref, own.layer(0), q, qp, cache.layer(0).map(zeroedView));
  const prunedP = attend(ref, own.layer(0), q, qp, cache.layer(0));
  prunedP.forEach((x, i) => assert.ok(Math.abs(x - oracleP[i]!) <= 1e-6, `prefixed out[${i}]`));
});

// Head 1 keeps 8 channels (SIMD widths fit: the AVX2 pieces on this CPU) or 6 (they do not: the scalar pieces).
for (const second of [Int32Array.of(3, 4, 7, 8, 10, 11, 13, 14), Int32Array.of(3, 4, 7, 8, 10, 11)])
test(`native attention over pruned keys (${second.length} channels in head 1; sync and recorded step, with a shared prefix) equals the reference; what it cannot run is refused while recording`, { skip: !loadAddon() && 'the native addon is not built' }, async () => {
  const cache = new KvCache(1, H, d, 'f32');
  filled(cache, 37, 10);
  cache.pruneKeyChannels(0, 0, channels);
  cache.pruneKeyChannels(0, 1, second);
  const rand = seededRandom(12);
  const q = Float32Array.from({ length: 3 * 4 * d }, () => rand() * 2 - 1);
  const qPos = Int32Array.of(4, 30, 36);
  const ref = new ReferenceBackend();
  const native = new NativeBackend();
  const close = (got: Float32Array, want: Float32Array, what: string) => got.forEach((x, i) => assert.ok(Math.abs(x - want[i]!) <= 1e-5, `${what}: out[${i}] ${x} vs ${want[i]}`));
  const want = attend(ref, cache.layer(0), q, qPos);
  close(attend(native, cache.layer(0), q, qPos), want, 'sync');
  // The addon's kernel itself, called directly (not the TypeScript path).
  const direct = new Float32Array(want.length);
  const views = cache.layer(0).map((hs): PrunedHeadArgs => [hs.k as Float32Array, hs.v as Float32Array, hs.pos, hs.len, hs.keyChannels]);
  loadAddon()!.attentionPruned(q, direct, 3, 4, H, d, qPos, views, null, 1 / Math.sqrt(d), 0);
  close(direct, want, 'addon kernel');
  const own = new KvCache(1, H, d, 'f32');
  own.nextPos = cache.nextPos;
  filled(own, 2, 13);
  const qp = Int32Array.of(37, 38, 38);
  close(attend(native, own.layer(0), q, qp, cache.layer(0)), attend(ref, own.layer(0), q, qp, cache.layer(0)), 'shared prefix');
  const recording = native.recordStep();
  const out = attend(recording.backend as NativeBackend, cache.layer(0), q, qPos);
  await recording.run();
  close(out, want, 'recorded step');
  // Statistics over pruned keys run on the TypeScript path: synchronously, never inside a recorded step.
  const stats = { fromQuery: 0, sum: [new Float32Array(37), new Float32Array(37)] };
  const args = (backend: Backend): void => backend.attention({ q, out: null, nq: 3, nHeads: 4, nKvHeads: H, headDim: d, qPos, heads: cache.layer(0), scale: 1 / Math.sqrt(d), stats });
  args(native);
  assert.ok(stats.sum[0]!.some((x) => x > 0));
  assert.throws(() => args(native.recordStep().backend), StepNotRecordableError);
});
