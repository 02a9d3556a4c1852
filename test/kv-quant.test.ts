/**
 * KIVI int4 / int2 KV caches (tensor/kv-quant.ts, cache/kv-quant-rows.ts): round-trip error per group, the residual
 * window, eviction inside key groups (re-quantization bound), marks, pool accounting, and the reference attention
 * reading packed heads.
 *
 * Bounds: an element quantized in a group spanning [min, max] is within scale / 2 = (max - min) / (2 (2^bits - 1)) of
 * its value, plus fp32 rounding (a relative slack of 1e-5 of the group's magnitude). After keep() re-quantizes a key
 * group, a kept key is within (old scale + new scale) / 2 of its original value.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { readContextFile, writeContextFile } from '../src/cache/context-file.ts';
import { KvCache, type KvDtype, type KvQuantOptions } from '../src/cache/kv-cache.ts';
import { KvPool } from '../src/cache/kv-pool.ts';
import { dequantizeKeys, dequantizeValues, quantizedBytes, quantizeKeyGroup, quantizeValueRow, type KvQuantBits, type QuantizedKvRows } from '../src/tensor/kv-quant.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';

const SLACK = 1e-5;

/** Rows of d channels with per-channel offsets and scales (keys' outlier channels) and occasional spikes. */
function rowsOf(n: number, d: number, seed: number): Float32Array {
  const rnd = seededRandom(seed);
  const offset = Float32Array.from({ length: d }, () => (rnd() - 0.5) * 8);
  const spread = Float32Array.from({ length: d }, () => 0.1 + rnd() * 3);
  return Float32Array.from({ length: n * d }, (_, i) => offset[i % d]! + (rnd() - 0.5) * spread[i % d]! * (rnd() < 0.02 ? 10 : 1));
}

function emptyRows(bits: KvQuantBits, group: number, rows: number, d: number): QuantizedKvRows {
  return {
    bits,
    group,
    rows,
    kCodes: new Uint8Array((rows * d * bits) / 8),
    vCodes: new Uint8Array((rows * d * bits) / 8),
    kScale: new Float32Array((rows / group) * d),
    kZero: new Float32Array((rows / group) * d),
    vScale: new Float32Array(rows * Math.ceil(d / group)),
    vZero: new Float32Array(rows * Math.ceil(d / group)),
  };
}

function range(x: Float32Array, idx: number[]): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const i of idx) {
    lo = Math.min(lo, x[i]!);
    hi = Math.max(hi, x[i]!);
  }
  return [lo, hi];
}

for (const bits of [4, 2] as const) {
  for (const [d, group] of [[64, 32], [24, 16], [64, 8]] as const) {
    test(`int${bits} round trip, d=${d}, G=${group}: every element within half its group's step`, () => {
      const n = group * 3;
      const x = rowsOf(n, d, 7 + bits + d + group);
      const q = emptyRows(bits, group, n, d);
      for (let g = 0; g < n / group; g++) quantizeKeyGroup(q, d, g, x, g * group * d);
      for (let r = 0; r < n; r++) quantizeValueRow(q, d, r, x, r * d);
      const k = new Float32Array(n * d);
      const v = new Float32Array(n * d);
      dequantizeKeys(q, d, 0, n, k);
      dequantizeValues(q, d, 0, n, v);
      const levels = (1 << bits) - 1;
      let worstK = 0;
      for (let g = 0; g < n / group; g++)
        for (let c = 0; c < d; c++) {
          const idx = Array.from({ length: group }, (_, r) => (g * group + r) * d + c);
          const [lo, hi] = range(x, idx);
          const bound = (hi - lo) / levels / 2 + SLACK * Math.max(1, Math.abs(lo), Math.abs(hi));
          for (const i of idx) {
            assert.ok(Math.abs(k[i]! - x[i]!) <= bound, `key ${i}: ${k[i]} vs ${x[i]} (bound ${bound})`);
            worstK = Math.max(worstK, Math.abs(k[i]! - x[i]!) / Math.max(hi - lo, 1e-30));
          }
        }
      // The bound is tight: some element sits near half a step away.
      assert.ok(worstK > 0.3 / levels, `worst key error ${worstK} of the range is suspiciously small`);
      for (let r = 0; r < n; r++)
        for (let c0 = 0; c0 < d; c0 += group) {
          const idx = Array.from({ length: Math.min(group, d - c0) }, (_, c) => r * d + c0 + c);
          const [lo, hi] = range(x, idx);
          const bound = (hi - lo) / levels / 2 + SLACK * Math.max(1, Math.abs(lo), Math.abs(hi));
          for (const i of idx) assert.ok(Math.abs(v[i]! - x[i]!) <= bound, `value ${i}: ${v[i]} vs ${x[i]} (bound ${bound})`);
        }
    });
  }
}

test('a constant group quantizes exactly (scale 0)', () => {
  const d = 8;
  const x = new Float32Array(4 * d).fill(1.25);
  const q = emptyRows(4, 4, 4, d);
  quantizeKeyGroup(q, d, 0, x, 0);
  for (let r = 0; r < 4; r++) quantizeValueRow(q, d, r, x, r * d);
  const k = new Float32Array(4 * d);
  dequantizeKeys(q, d, 0, 4, k);
  assert.deepEqual([...k], [...x]);
});

/** A one-layer cache of `heads` heads filled by appends of `step` rows at a time. */
function appended(dtype: KvDtype, quant: KvQuantOptions, d: number, heads: number, n: number, step: number, seed: number, pool?: KvPool) {
  const cache = new KvCache(1, heads, d, dtype, pool, quant);
  const k = rowsOf(n * heads, d, seed);
  const v = rowsOf(n * heads, d, seed + 1);
  for (let s = 0; s < n; s += step) {
    const m = Math.min(step, n - s);
    cache.appendLayer(0, k.subarray(s * heads * d, (s + m) * heads * d), v.subarray(s * heads * d, (s + m) * heads * d), Int32Array.from({ length: m }, (_, i) => s + i));
    cache.advance(m);
  }
  // Original rows per head [n, d].
  const per = (x: Float32Array, h: number) => {
    const out = new Float32Array(n * d);
    for (let r = 0; r < n; r++) out.set(x.subarray((r * heads + h) * d, (r * heads + h + 1) * d), r * d);
    return out;
  };
  return { cache, keys: (h: number) => per(k, h), values: (h: number) => per(v, h) };
}

/** The key step (scale) of every row and channel of a quantized head, 0 for residual rows. */
function keySteps(cache: KvCache, h: number): Float32Array {
  const s = cache.head(0, h);
  const d = s.headDim;
  const q = s.quant!;
  const out = new Float32Array(s.len * d);
  for (let r = 0; r < q.rows; r++) for (let c = 0; c < d; c++) out[r * d + c] = q.kScale[Math.floor(r / q.group) * d + c]!;
  return out;
}

test('the residual window: rows are packed a whole group at a time once older than R; positions and fp32 rows stay exact', () => {
  const quant = { group: 8, residual: 20 };
  const d = 16;
  for (const step of [1, 5, 50]) {
    const { cache, keys, values } = appended('int4', quant, d, 2, 75, step, 3);
    cache.settle();
    const s = cache.head(0, 1);
    assert.equal(s.quantRows, Math.floor((75 - 20) / 8) * 8, `step ${step}`);
    assert.ok(s.len - s.quantRows >= 20 && s.len - s.quantRows < 28);
    assert.deepEqual([...s.pos.subarray(0, 75)], Array.from({ length: 75 }, (_, i) => i));
    // Residual rows read back exactly.
    assert.deepEqual([...s.keys(s.quantRows, 75)], [...keys(1).subarray(s.quantRows * d)]);
    assert.deepEqual([...s.values(s.quantRows, 75)], [...values(1).subarray(s.quantRows * d)]);
    assert.equal(cache.bytes(), 2 * (quantizedBytes(s.quantRows, d, 4, 8) + (75 - s.quantRows) * d * 2 * 4));
  }
});

for (const dtype of ['int4', 'int2'] as const) {
  test(`${dtype} keep(): whole leading groups unchanged, re-quantized keys within (old + new step) / 2, values moved exactly, then more appends stay within bounds`, () => {
    const quant = { group: 8, residual: 16 };
    const d = 16;
    const n = 120;
    const { cache, keys } = appended(dtype, quant, d, 1, n, 7, 11);
    cache.settle();
    const s = cache.head(0, 0);
    const Q = s.quantRows;
    assert.equal(Q, 104);
    const before = { k: s.keys(), v: s.values(), steps: keySteps(cache, 0) };
    const rnd = seededRandom(5);
    // Rows 0..23 kept whole (3 groups), then a random half, then every residual row but one.
    const kept = [...Array.from({ length: 24 }, (_, i) => i), ...Array.from({ length: Q - 24 }, (_, i) => 24 + i).filter(() => rnd() < 0.5), ...Array.from({ length: n - Q - 1 }, (_, i) => Q + 1 + i)];
    cache.keep(0, 0, kept);
    assert.equal(s.len, kept.length);
    assert.deepEqual([...s.pos.subarray(0, s.len)], kept);
    const after = { k: s.keys(), v: s.values(), steps: keySteps(cache, 0) };
    const orig = keys(0);
    kept.forEach((i, r) => {
      for (let c = 0; c < d; c++) {
        const a = after.k[r * d + c]!;
        if (i < 24) assert.equal(a, before.k[i * d + c], `key of row ${i} in a whole group changed`);
        const bound = (before.steps[i * d + c]! + after.steps[r * d + c]!) / 2 + SLACK * Math.max(1, Math.abs(orig[i * d + c]!));
        assert.ok(Math.abs(a - orig[i * d + c]!) <= bound, `${dtype} key of row ${i} channel ${c}: ${a} vs ${orig[i * d + c]} (bound ${bound})`);
        assert.equal(after.v[r * d + c], before.v[i * d + c], `value of row ${i} moved inexactly`);
      }
    });
    // The residual is whole rows: what is packed is a multiple of the group, at most len - R rows.
    assert.equal(s.quantRows % 8, 0);
    assert.ok(s.len - s.quantRows >= Math.min(16, s.len));
    // More decoding: new rows append and settle; every row stays within its bound.
    const more = rowsOf(60, d, 99);
    for (let t = 0; t < 60; t++) {
      cache.appendLayer(0, more.subarray(t * d, (t + 1) * d), more.subarray(t * d, (t + 1) * d), Int32Array.of(n + t));
      cache.advance(1);
    }
    cache.settle();
    const final = { k: s.keys(), steps: keySteps(cache, 0) };
    for (let t = 0; t < 60; t++) {
      const r = kept.length + t;
      for (let c = 0; c < d; c++) {
        const bound = final.steps[r * d + c]! / 2 + SLACK * Math.max(1, Math.abs(more[t * d + c]!));
        assert.ok(Math.abs(final.k[r * d + c]! - more[t * d + c]!) <= bound, `appended row ${t} channel ${c}`);
      }
    }
    // Rows that were kept before the appends either stayed where they were or were packed into a group bounded as above.
    kept.forEach((i, r) => {
      for (let c = 0; c < d; c++) {
        const bound = before.steps[i * d + c]! / 2 + after.steps[r * d + c]! / 2 + final.steps[r * d + c]! / 2 + SLACK * Math.max(1, Math.abs(orig[i * d + c]!));
        assert.ok(Math.abs(final.k[r * d + c]! - orig[i * d + c]!) <= bound, `kept row ${i} after more appends`);
      }
    });
  });
}

test('keep() of every row changes nothing; keep() of none frees everything', () => {
  const { cache } = appended('int2', { group: 8, residual: 8 }, 8, 1, 70, 3, 2);
  cache.settle();
  const s = cache.head(0, 0);
  const k = s.keys();
  const v = s.values();
  cache.keep(0, 0, Array.from({ length: 70 }, (_, i) => i));
  assert.deepEqual([...s.keys()], [...k]);
  assert.deepEqual([...s.values()], [...v]);
  cache.keep(0, 0, []);
  assert.equal(s.len, 0);
  assert.equal(s.quantRows, 0);
  assert.equal(cache.bytes(), 0);
});

test('truncate(mark) undoes the quantization done since the mark, exactly', () => {
  const { cache } = appended('int4', { group: 8, residual: 16 }, 16, 2, 40, 40, 4);
  cache.settle();
  const mark = cache.mark();
  const snap = cache.heads[0]!.map((s) => ({ k: s.keys(), v: s.values(), q: s.quantRows }));
  const extra = rowsOf(50 * 2, 16, 8);
  for (let t = 0; t < 50; t++) {
    cache.appendLayer(0, extra.subarray(t * 32, (t + 1) * 32), extra.subarray(t * 32, (t + 1) * 32), Int32Array.of(40 + t));
    cache.advance(1);
  }
  assert.ok(cache.head(0, 0).quantRows > snap[0]!.q, 'the appends packed rows that were fp32 at the mark');
  cache.truncate(mark);
  cache.heads[0]!.forEach((s, h) => {
    assert.equal(s.len, 40);
    assert.equal(s.quantRows, snap[h]!.q);
    assert.deepEqual([...s.keys()], [...snap[h]!.k]);
    assert.deepEqual([...s.values()], [...snap[h]!.v]);
  });
  // Cutting into packed rows without a mark: the cut group's rows come back dequantized.
  const s = cache.head(0, 0);
  const k = s.keys(0, 13);
  s.truncate(13);
  assert.equal(s.quantRows, 8);
  assert.deepEqual([...s.keys()], [...k]);
});

test('pool accounting: a quantized cache is charged what its heads hold, all of it returned on release', () => {
  const pool = new KvPool(1 << 26);
  const { cache } = appended('int4', { group: 32, residual: 128 }, 64, 2, 2000, 250, 6, pool);
  cache.settle();
  assert.equal(pool.usedBytes, cache.blockBytes());
  // 1856 packed rows (32 + 32 code bytes, 2 x 2 value and 2 x 64 / 32 key fp32 scales and zeros each) + 144 fp32 rows.
  assert.equal(cache.bytes(), 2 * (1856 * (64 + 16 + 16) + 144 * 512));
  cache.keep(0, 0, Array.from({ length: 300 }, (_, i) => i * 2));
  assert.equal(pool.usedBytes, cache.blockBytes());
  const clone = cache.clone();
  assert.deepEqual([...clone.head(0, 0).keys()], [...cache.head(0, 0).keys()]);
  assert.equal(pool.usedBytes, cache.blockBytes() + clone.blockBytes());
  clone.release();
  cache.release();
  assert.equal(pool.usedBytes, 0);
});

test('the reference attention reads a packed head as the fp32 head of its dequantized rows', () => {
  const d = 16;
  const { cache } = appended('int2', { group: 8, residual: 8 }, d, 2, 45, 45, 12);
  cache.settle();
  const wide = cache.clone('f32');
  const be = new ReferenceBackend();
  const nq = 3;
  const q = rowsOf(nq * 4, d, 21);
  const qPos = Int32Array.of(20, 43, 44);
  const run = (c: KvCache) => {
    const out = new Float32Array(nq * 4 * d);
    const max = [new Float32Array(45), new Float32Array(45)];
    be.attention({ q, out, nq, nHeads: 4, nKvHeads: 2, headDim: d, qPos, heads: c.layer(0), scale: 0.25, stats: { fromQuery: 0, max } });
    return { out, max };
  };
  const a = run(cache);
  const b = run(wide);
  assert.deepEqual([...a.out], [...b.out]);
  assert.deepEqual(a.max.map((m) => [...m]), b.max.map((m) => [...m]));
  assert.ok(cache.head(0, 0).quantRows > 0);
});

test('truncate(mark) restores positions and the residual when the residual storage shrank since the mark', () => {
  // The mark holds 100 fp32 rows (nothing packed yet); appends then pack most of them and shrink the residual.
  const { cache } = appended('int4', { group: 8, residual: 8 }, 8, 1, 100, 100, 14);
  const s = cache.head(0, 0);
  assert.equal(s.quantRows, 0);
  const mark = cache.mark();
  const k = s.keys();
  for (let t = 0; t < 3; t++) {
    cache.appendLayer(0, new Float32Array(8).fill(t), new Float32Array(8).fill(-t), Int32Array.of(100 + t));
    cache.advance(1);
  }
  assert.ok(s.quantRows >= 88);
  cache.truncate(mark);
  assert.equal(s.quantRows, 0);
  assert.deepEqual([...s.pos.subarray(0, 100)], Array.from({ length: 100 }, (_, i) => i));
  assert.deepEqual([...s.keys()], [...k]);
  // The same through HeadStore.truncate into packed rows.
  for (let t = 0; t < 3; t++) {
    cache.appendLayer(0, new Float32Array(8).fill(t), new Float32Array(8).fill(-t), Int32Array.of(100 + t));
    cache.advance(1);
  }
  const packed = s.keys(0, 61);
  s.truncate(61);
  assert.deepEqual([...s.pos.subarray(0, 61)], Array.from({ length: 61 }, (_, i) => i));
  assert.deepEqual([...s.keys()], [...packed]);
});

test('a context file keeps an int2 cache: its rows, packing and G, R come back (re-packed from the saved values)', () => {
  const { cache } = appended('int2', { group: 8, residual: 12 }, 16, 2, 90, 90, 17);
  cache.settle();
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-kivi-'));
  const path = join(dir, 'c.kvctx');
  writeContextFile(path, cache, 'fp', {});
  const { cache: back } = readContextFile(path, 'fp');
  assert.equal(back.dtype, 'int2');
  assert.deepEqual(back.quantOptions, { group: 8, residual: 12 });
  cache.forEachHead((s, l, h) => {
    const b = back.head(l, h);
    assert.equal(b.quantRows, s.quantRows);
    assert.deepEqual([...b.pos.subarray(0, b.len)], [...s.pos.subarray(0, s.len)]);
    assert.deepEqual([...b.values()], [...s.values()]);
    // Keys re-quantized from their dequantized values: the same group ranges, so the same values up to fp32 rounding.
    const a = s.keys();
    b.keys().forEach((x, i) => assert.ok(Math.abs(x - a[i]!) <= 1e-5 * Math.max(1, Math.abs(a[i]!)), `key ${i}: ${x} vs ${a[i]}`));
  });
});
