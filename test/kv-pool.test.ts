import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KvCache } from '../src/cache/kv-cache.ts';
import { blockRows, KV_BLOCK_ROWS, kvRowBytes, KvPool, KvPoolExhaustedError, parseByteSize } from '../src/cache/kv-pool.ts';

const L = 2;
const H = 2;
const D = 8;

function fill(cache: KvCache, n: number): void {
  const k = new Float32Array(n * H * D).map((_, i) => i * 0.01);
  const pos = Int32Array.from({ length: n }, (_, i) => cache.nextPos + i);
  for (let l = 0; l < L; l++) cache.appendLayer(l, k, k, pos);
  cache.advance(n);
}

/** What the pool must be charged for a cache whose heads hold these row counts: whole blocks each. */
function expectedBytes(cache: KvCache): number {
  let b = 0;
  cache.forEachHead((s) => (b += blockRows(s.len) * kvRowBytes(D, cache.dtype)));
  return b;
}

test('a pooled cache is charged whole blocks for its rows and returns them at once on keep, truncate and release', () => {
  for (const dtype of ['f32', 'bf16'] as const) {
    const pool = new KvPool(1 << 20);
    const start = pool.usedBytes;
    const c = new KvCache(L, H, D, dtype, pool);
    assert.equal(pool.usedBytes, start, 'an empty cache holds nothing');
    c.reserveRows(40);
    assert.equal(pool.usedBytes, L * H * blockRows(40) * kvRowBytes(D, dtype), 'reserveRows charges exactly the blocks asked for');
    fill(c, 40);
    assert.equal(pool.usedBytes, expectedBytes(c));
    assert.equal(pool.usedBytes, c.blockBytes());
    const mark = c.mark();
    fill(c, 30);
    assert.equal(pool.usedBytes, c.blockBytes());
    c.truncate(mark);
    assert.equal(pool.usedBytes, c.blockBytes(), 'truncate keeps the storage (a step undone and redone does not reallocate)');
    c.shrinkToFit();
    assert.equal(pool.usedBytes, expectedBytes(c), "a query's growth is given back once truncated away and shrunk");
    c.keep(0, 0, [0, 5, 9]);
    c.keep(1, 1, Array.from({ length: 20 }, (_, i) => 2 * i));
    assert.equal(pool.usedBytes, expectedBytes(c), 'eviction frees blocks at once');
    assert.ok(c.head(0, 0).capacity === KV_BLOCK_ROWS);
    const copy = c.clone();
    assert.equal(pool.usedBytes, 2 * expectedBytes(c), 'a clone is charged to the same pool');
    copy.release();
    c.release();
    assert.equal(pool.usedBytes, start, `accounting returns to its start (${dtype})`);
    assert.ok(pool.peakBytes > 0);
  }
});

test('an allocation past the budget fails with a one-line error naming the shortfall, and leaves the cache usable', () => {
  const pool = new KvPool(L * H * 2 * KV_BLOCK_ROWS * kvRowBytes(D, 'f32'));
  const c = new KvCache(L, H, D, 'f32', pool);
  fill(c, 20);
  assert.throws(
    () => c.reserveRows(200),
    (e: unknown) => e instanceof KvPoolExhaustedError && /KV memory pool exhausted: .* needs .* more, .* free \(--kv-memory\)/.test((e as Error).message) && !(e as Error).message.includes('\n'),
  );
  c.release();
  assert.equal(pool.usedBytes, 0);
});

test('reservations are admission promises: they add up to the budget and are given back once', () => {
  const pool = new KvPool(1000);
  const a = pool.reserve(600);
  assert.equal(pool.canReserve(500), false);
  assert.throws(() => pool.reserve(500), /cannot reserve/);
  a();
  a();
  assert.equal(pool.reserved, 0);
  assert.equal(pool.canReserve(1000), true);
});

test('parseByteSize reads K/M/G suffixes and refuses nonsense by name', () => {
  assert.equal(parseByteSize('4G'), 4 * 2 ** 30);
  assert.equal(parseByteSize('512MiB'), 512 * 2 ** 20);
  assert.equal(parseByteSize('1000'), 1000);
  assert.throws(() => parseByteSize('lots'), /bad byte size "lots"/);
  assert.throws(() => new KvPool(0), /positive/);
});
