import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KvCache, parseKvDtype, type KvDtype } from '../src/cache/kv-cache.ts';
import { bf16ToF32, f32ToBf16 } from '../src/tensor/dtype.ts';
import type { KvRows } from '../src/tensor/backend.ts';
import { loadAddon } from '../src/tensor/native.ts';

function filled(layers: number, heads: number, d: number, n: number): KvCache {
  const c = new KvCache(layers, heads, d);
  const k = Float32Array.from({ length: n * heads * d }, (_, i) => i);
  const v = Float32Array.from({ length: n * heads * d }, (_, i) => -i);
  const pos = Int32Array.from({ length: n }, (_, i) => i);
  for (let l = 0; l < layers; l++) c.appendLayer(l, k, v, pos);
  c.advance(n);
  return c;
}

test('append lays rows out per (layer, head) with positions', () => {
  const c = filled(2, 2, 4, 5);
  const h1 = c.head(1, 1);
  assert.equal(h1.len, 5);
  assert.deepEqual([...h1.k.subarray(0, 4)], [4, 5, 6, 7]);
  assert.deepEqual([...h1.k.subarray(4, 8)], [12, 13, 14, 15]);
  assert.deepEqual([...h1.pos.subarray(0, 5)], [0, 1, 2, 3, 4]);
  assert.equal(c.bytes(), 2 * 2 * 5 * 4 * 2 * 4);
});

test('keep compacts rows, keeps absolute positions and frees memory', () => {
  const c = filled(1, 2, 4, 200);
  const before = c.allocatedBytes();
  c.keep(0, 0, [3, 50, 199]);
  const h = c.head(0, 0);
  assert.equal(h.len, 3);
  assert.deepEqual([...h.pos.subarray(0, 3)], [3, 50, 199]);
  assert.deepEqual([...h.k.subarray(4, 8)], [50 * 8, 50 * 8 + 1, 50 * 8 + 2, 50 * 8 + 3]);
  assert.equal(c.head(0, 1).len, 200, 'other heads untouched');
  assert.equal(c.bytes(), (3 + 200) * 4 * 2 * 4);
  assert.ok(c.allocatedBytes() < before, 'allocation shrinks');
  assert.equal(c.nextPos, 200, 'new tokens continue at the original length');
});

test('keep rejects unsorted or out-of-range indices', () => {
  const c = filled(1, 1, 2, 10);
  assert.throws(() => c.keep(0, 0, [3, 2]), /strictly increasing/);
  assert.throws(() => c.keep(0, 0, [10]), /strictly increasing/);
});

test('mark/truncate restores the cache bitwise after appending', () => {
  const c = filled(2, 2, 4, 20);
  c.keep(0, 1, [0, 5, 7]);
  const snapshot = c.clone();
  const mark = c.mark();
  const n = 6;
  const k = new Float32Array(n * 2 * 4).fill(9);
  for (let l = 0; l < 2; l++) c.appendLayer(l, k, k, Int32Array.from({ length: n }, (_, i) => 20 + i));
  c.advance(n);
  assert.equal(c.head(0, 1).len, 9);
  c.truncate(mark);
  assert.equal(c.nextPos, 20);
  c.forEachHead((s, l, h) => {
    const t = snapshot.head(l, h);
    assert.equal(s.len, t.len);
    assert.deepEqual(s.k.subarray(0, s.len * 4), t.k.subarray(0, t.len * 4));
    assert.deepEqual(s.v.subarray(0, s.len * 4), t.v.subarray(0, t.len * 4));
    assert.deepEqual(s.pos.subarray(0, s.len), t.pos.subarray(0, t.len));
  });
});

test('a mark taken before a compaction cannot be restored', () => {
  const c = filled(1, 1, 2, 10);
  const mark = c.mark();
  c.keep(0, 0, [1, 2]);
  assert.throws(() => c.truncate(mark), /compacted/);
});

test('with the native addon, every head keeps its keys and values on 64-byte boundaries', (t) => {
  const lib = loadAddon();
  if (!lib) return t.skip('native addon not built');
  const aligned = (a: KvRows) => (lib.alignOffset(a.buffer as ArrayBuffer, 64) - a.byteOffset) % 64 === 0;
  const c = filled(2, 3, 8, 40);
  c.keep(1, 2, [0, 7, 39]);
  const more = filled(1, 3, 8, 1000);
  const h = c.head(0, 0);
  h.reserve(5000);
  const bf = c.clone('bf16');
  bf.head(0, 1).reserve(3000);
  for (const s of [...c.heads.flat(), ...more.heads.flat(), ...c.clone().heads.flat(), ...bf.heads.flat()]) {
    assert.ok(aligned(s.k) && aligned(s.v), `capacity ${s.capacity}, byteOffset ${s.k.byteOffset}/${s.v.byteOffset}`);
  }
  assert.equal(c.head(1, 2).k[8], 7 * 3 * 8 + 2 * 8, 'rows survive the move to a new aligned buffer');
  assert.throws(() => lib.alignOffset(new ArrayBuffer(64), 48), /power of two/);
});

test('a bf16 cache holds half the bytes, rounds rows to nearest even and reads them back widened', () => {
  const [layers, heads, d, n] = [2, 3, 8, 50];
  const k = Float32Array.from({ length: n * heads * d }, (_, i) => Math.sin(i) * 3 + 1 / (i + 1));
  const v = Float32Array.from({ length: n * heads * d }, (_, i) => Math.cos(i * 0.7) * 1e-3);
  const pos = Int32Array.from({ length: n }, (_, i) => i);
  const make = (dtype: KvDtype) => {
    const c = new KvCache(layers, heads, d, dtype);
    for (let l = 0; l < layers; l++) c.appendLayer(l, k, v, pos);
    c.advance(n);
    return c;
  };
  const f = make('f32');
  const b = make('bf16');
  assert.ok(b.head(0, 0).k instanceof Uint16Array);
  assert.equal(b.bytes() * 2, f.bytes());
  assert.equal(b.rowBytes, d * 2 * 2);
  assert.ok(b.allocatedBytes() < 0.6 * f.allocatedBytes(), `${b.allocatedBytes()} vs ${f.allocatedBytes()}`);
  const rounded = (x: number) => bf16ToF32(f32ToBf16(x));
  const h = b.head(1, 2);
  assert.deepEqual([...h.keys(3, 5)], [...f.head(1, 2).keys(3, 5)].map(rounded));
  assert.deepEqual([...h.values(0, 2)], [...f.head(1, 2).values(0, 2)].map(rounded));
  assert.deepEqual(h.k, f.clone('bf16').head(1, 2).k, 'an fp32 cache cloned to bf16 holds the bits appended directly');
  const wide = b.clone('f32');
  assert.ok(wide.head(1, 2).k instanceof Float32Array);
  assert.deepEqual(wide.head(1, 2).keys(), h.keys(), 'cloned to fp32: widened exactly');
  assert.equal(wide.nextPos, n);
  b.keep(1, 2, [0, 7, 49]);
  assert.deepEqual([...b.head(1, 2).keys(1, 2)], [...f.head(1, 2).keys(7, 8)].map(rounded), 'keep compacts bf16 rows');
  assert.deepEqual([...b.head(1, 2).pos.subarray(0, 3)], [0, 7, 49]);
  assert.equal(b.clone().dtype, 'bf16');
  assert.throws(() => parseKvDtype('fp8'), /unknown KV cache dtype "fp8"; known: f32, bf16/);
});

test('loadHead puts back exactly the rows keys()/values() read, in either dtype', () => {
  for (const dtype of ['f32', 'bf16'] as KvDtype[]) {
    const src = filled(1, 2, 4, 40).clone(dtype);
    src.keep(0, 1, [0, 3, 7, 39]);
    const dst = new KvCache(1, 2, 4, dtype);
    src.forEachHead((s, l, h) => dst.loadHead(l, h, s.pos.slice(0, s.len), s.keys(), s.values()));
    dst.nextPos = src.nextPos;
    assert.deepEqual(dst.lengths(), [[40, 4]]);
    src.forEachHead((s, l, h) => {
      const t = dst.head(l, h);
      assert.deepEqual([...t.keys()], [...s.keys()]);
      assert.deepEqual([...t.values()], [...s.values()]);
      assert.deepEqual([...t.pos.subarray(0, t.len)], [...s.pos.subarray(0, s.len)]);
    });
    const mark = dst.mark();
    dst.loadHead(0, 0, new Int32Array([5]), new Float32Array(4), new Float32Array(4));
    assert.throws(() => dst.truncate(mark), /compacted/);
    assert.throws(() => dst.loadHead(0, 0, new Int32Array([1, 2]), new Float32Array(4), new Float32Array(8)), /2 positions need 8/);
  }
});
