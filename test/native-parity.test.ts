/**
 * Native kernels against the reference backend, op by op, on random data with odd sizes. Tolerances are
 * rigorous per-element bounds, not guesses (S = sum over k of |x_k * w_k| for that output, u = 2^-24):
 *   - fp32 activations (every decode GEMV, the fp32 GEMMs, int8 dequantized in registers): only the summation
 *     order differs from the reference (which sums in fp64): |err| <= (K + 2) u S.
 *   - bf16 activations (prefill GEMMs on AVX512-BF16 or AMX): each activation is rounded to bf16 (relative
 *     error <= 2^-8), and so is a weight not stored as bf16: |err| <= (2^-8 [+ 2^-8 + 2^-16] + (K + 2) u) S.
 *     With random signs the typical error is ~2^-8 sqrt(K) rms|x w|, far below this worst case.
 *   - int8 with VNNI (decode default on CPUs with AVX512-VNNI, for per-row scales or groups of a multiple of
 *     64 columns: activations quantized per group, or per 128 columns, to step a = max|x_block| / 127; groups
 *     nest in the 128-column blocks the bound takes its maxima over): |err| <= sum_k (a_k / 2) |w_k| + (K + 2) u S.
 * Attention, rmsnorm, rope and silu compare to the reference's fp64 arithmetic at 1e-5 / 1e-6 relative.
 * The suite reruns itself in child processes under KVLAB_ISA=avx512f (AVX-512 CPUs only: no BF16, no VNNI),
 * KVLAB_ISA=avx2, KVLAB_ISA=scalar and KVLAB_AMX_EMULATE=1 (the AMX GEMM's tiling and tails on a scalar tile
 * model), so every dispatch level is checked here.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { KvHeadView, KvRows, Weight } from '../src/tensor/backend.ts';
import { bf16ArrayToF32 } from '../src/tensor/dtype.ts';
import { loadAddon, NativeBackend } from '../src/tensor/native.ts';
import { mapFileRegion, mmapSource } from '../src/tensor/mmap-source.ts';
import { quantizeInt8 } from '../src/tensor/quantize.ts';
import { ReferenceBackend, widenWeight } from '../src/tensor/reference.ts';
import { nativeAvailable, nativeInfo } from '../src/tensor/select-backend.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';

const skip = nativeAvailable() ? false : 'native addon not built (npm run build:native)';
const mode = process.env.KVLAB_ISA ?? (process.env.KVLAB_AMX_EMULATE === '1' ? 'amx-emulated' : 'default');

const rand = seededRandom(7);
const ref = new ReferenceBackend();
const vec = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rand() * 2 - 1) * scale);
const U = 2 ** -24;

function bf16Bits(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0]!;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** f16 bits of k / 1024 for an integer |k| < 1024 (exactly representable). */
function f16Bits(k: number): number {
  if (k === 0) return 0;
  const v = Math.abs(k) / 1024;
  const e = Math.floor(Math.log2(v));
  const bits = e < -14 ? Math.round(v / 2 ** -24) : ((e + 15) << 10) | Math.round((v / 2 ** e - 1) * 1024);
  return (k < 0 ? 0x8000 : 0) | bits;
}

type Kind = 'f32' | 'bf16' | 'f16' | 'int8/row' | 'int8/g32' | 'int8/g40' | 'int8/g64' | 'int8/g128' | 'int8/g256';

function weight(kind: Kind, rows: number, cols: number): Weight {
  const f = vec(rows * cols);
  if (kind === 'f32') return { name: 'w', dtype: 'f32', rows, cols, data: f };
  if (kind === 'bf16') return { name: 'w', dtype: 'bf16', rows, cols, data: Uint16Array.from(f, bf16Bits) };
  if (kind === 'f16') return { name: 'w', dtype: 'f16', rows, cols, data: Uint16Array.from(f, (v) => f16Bits(Math.round(v * 1023))) };
  const group = kind === 'int8/row' ? 'row' : Number(kind.slice(6));
  return quantizeInt8({ name: 'w', dtype: 'f32', rows, cols, data: f }, group);
}

/** Per output: S = sum |x_k w_k| and, for the VNNI bound, sum over k of (a_k / 2) |w_k|. */
function magnitudes(x: Float32Array, n: number, w: Weight): { S: Float64Array; Q: Float64Array } {
  const W = widenWeight(w);
  const { rows, cols } = w;
  const S = new Float64Array(n * rows);
  const Q = new Float64Array(n * rows);
  const half = new Float64Array(cols);
  for (let i = 0; i < n; i++) {
    for (let b = 0; b < cols; b += 128) {
      let a = 0;
      for (let k = b; k < Math.min(cols, b + 128); k++) a = Math.max(a, Math.abs(x[i * cols + k]!));
      for (let k = b; k < Math.min(cols, b + 128); k++) half[k] = a / 127 / 2;
    }
    for (let r = 0; r < rows; r++) {
      let s = 0;
      let q = 0;
      for (let k = 0; k < cols; k++) {
        s += Math.abs(x[i * cols + k]! * W[r * cols + k]!);
        q += half[k]! * Math.abs(W[r * cols + k]!);
      }
      S[i * rows + r] = s;
      Q[i * rows + r] = q;
    }
  }
  return { S, Q };
}

function checkMatmul(label: string, nat: NativeBackend, kind: Kind, rows: number, cols: number, n: number): string {
  const w = weight(kind, rows, cols);
  const x = vec(n * cols);
  const a = new Float32Array(n * rows);
  const b = new Float32Array(n * rows);
  nat.matmul(a, x, n, w);
  ref.matmul(b, x, n, w);
  const path = nat.matmulPath(n, w);
  const bf16Act = /bf16-gemm|amx/.test(path);
  const { S, Q } = magnitudes(x, n, w);
  const sumErr = (cols + 2) * U;
  const roundErr = bf16Act ? 2 ** -8 + (w.dtype === 'bf16' ? 0 : 2 ** -8 + 2 ** -16) : 0;
  for (let i = 0; i < a.length; i++) {
    const bound = (roundErr + sumErr) * S[i]! * 1.0001 + (/vnni/.test(path) ? Q[i]! * 1.0001 : 0) + 1e-30;
    const err = Math.abs(a[i]! - b[i]!);
    if (!(err <= bound)) assert.fail(`${label} ${kind} ${rows}x${cols} n=${n} (${path}): |err| ${err} > bound ${bound} at ${i}`);
  }
  return path;
}

const SHAPES: [number, number][] = [
  [37, 129],
  [33, 17],
  [64, 256],
  [45, 96],
  [3, 1],
];
const KINDS: Kind[] = ['f32', 'bf16', 'f16', 'int8/row', 'int8/g32', 'int8/g40', 'int8/g64', 'int8/g128'];

for (const bf16Activations of [false, true]) {
  test(`[${mode}] matmul: every dtype, odd shapes, n from 1 to 100 (bf16 activations in GEMMs: ${bf16Activations})`, { skip }, () => {
    const nat = new NativeBackend({ bf16Activations });
    for (const kind of KINDS)
      for (const [rows, cols] of SHAPES)
        for (const n of [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 33, 100]) checkMatmul(`bf16Act=${bf16Activations}`, nat, kind, rows, cols, n);
  });
}

// Prefill GEMM (n > 16) tails: odd activation rows (register tiles of 6 or 8 rows, blocks of 144), output
// columns not a multiple of the 16/32-column panels, inner dimensions across several K blocks with a tail.
const GEMM_SHAPES: [number, number][] = [
  [1, 2049],
  [5, 7],
  [31, 100],
  [33, 2049],
  [4097, 33],
  [17, 1],
];

test(`[${mode}] matmul: prefill GEMM tails, every dtype (fp32 activations)`, { skip }, () => {
  const nat = new NativeBackend({ bf16Activations: false });
  for (const kind of KINDS) {
    for (const [rows, cols] of GEMM_SHAPES) for (const n of [17, 23, 37]) checkMatmul('gemm', nat, kind, rows, cols, n);
    checkMatmul('gemm', nat, kind, 20, 300, 150);
  }
});

test(`[${mode}] matmul: int8 decode on VNNI and dequantized in registers, each within its bound`, { skip }, () => {
  const lib = loadAddon()!;
  const nat = new NativeBackend();
  const vnniCpu = nativeInfo()!.features.avx512_vnni === true;
  try {
    for (const vnni of [1, 0]) {
      lib.setTuning('int8_vnni', vnni);
      for (const kind of ['int8/row', 'int8/g32', 'int8/g40', 'int8/g64', 'int8/g128', 'int8/g256'] as const)
        for (const [rows, cols] of [...SHAPES, [20, 300], [37, 320], [70, 2048], [21, 768]] as [number, number][])
          for (const n of [1, 2, 3, 4, 5, 7, 12]) {
            const path = checkMatmul('int8', nat, kind, rows, cols, n);
            // VNNI takes per-row scales (a group as wide as the row is one) and groups of whole 64-column steps;
            // other groups are dequantized.
            const group = kind === 'int8/row' ? cols : Number(kind.slice(6));
            const expectVnni = vnni === 1 && vnniCpu && n <= 16 && (group >= cols || group % 64 === 0);
            assert.equal(/vnni/.test(path), expectVnni, `${kind} ${rows}x${cols} n=${n} took ${path}`);
          }
    }
  } finally {
    lib.setTuning('int8_vnni', 1);
  }
});

test(`[${mode}] matmul: int8 on VNNI is exact up to fp32 summation when the activations lie on their int8 grid`, { skip }, () => {
  // Every 64-column block holds a +-127 multiple of 2^-7, so its step is exactly 2^-7 and quantizing loses
  // nothing (per-row weights take 128-column activation blocks): what is left is the int32 sums and the +128
  // shift on the weights, which must undo exactly.
  const nat = new NativeBackend();
  for (const [rows, cols, group] of [[70, 2048, 128], [37, 320, 64], [20, 300, 128], [50, 300, 'row'], [9, 40, 'row']] as const)
    for (const n of [1, 3, 4, 6]) {
      const w = quantizeInt8({ name: 'w', dtype: 'f32', rows, cols, data: vec(rows * cols) }, group);
      const onGrid = (k: number) => (k % 64 === 5 ? (k % 128 === 5 ? 127 : -127) : Math.round((rand() * 2 - 1) * 127));
      const x = Float32Array.from({ length: n * cols }, (_, i) => onGrid(i % cols) / 128);
      const a = new Float32Array(n * rows);
      const b = new Float32Array(n * rows);
      nat.matmul(a, x, n, w);
      ref.matmul(b, x, n, w);
      const path = nat.matmulPath(n, w);
      const { S } = magnitudes(x, n, w);
      for (let i = 0; i < a.length; i++) {
        const bound = (cols + 2) * U * S[i]! * 1.0001 + 1e-30;
        assert.ok(Math.abs(a[i]! - b[i]!) <= bound, `${rows}x${cols} g${group} n=${n} (${path}): |err| ${Math.abs(a[i]! - b[i]!)} > ${bound} at ${i}`);
      }
    }
});

test(`[${mode}] matmul: empty inner dimension gives zeros, async matches sync`, { skip }, async () => {
  const nat = new NativeBackend();
  const out = new Float32Array(6).fill(7);
  nat.matmul(out, new Float32Array(0), 2, { name: 'e', dtype: 'f32', rows: 3, cols: 0, data: new Float32Array(0) });
  assert.deepEqual(Array.from(out), [0, 0, 0, 0, 0, 0]);
  for (const n of [1, 40]) {
    const w = weight('bf16', 70, 64);
    const x = vec(n * 64);
    const a = new Float32Array(n * 70);
    const b = new Float32Array(n * 70);
    nat.matmul(a, x, n, w);
    await nat.matmulAsync(b, x, n, w);
    assert.deepEqual(b, a);
  }
  assert.throws(() => nat.matmul(new Float32Array(2), vec(64), 1, weight('f32', 3, 64)), RangeError);
});

test(`[${mode}] rmsnorm, rope, silu-mul match the reference`, { skip }, () => {
  const nat = new NativeBackend();
  for (const [n, dim] of [
    [5, 96],
    [3, 37],
    [64, 1024],
  ]) {
    const x = vec(n * dim, 3);
    const w = vec(dim);
    const a = new Float32Array(n * dim);
    const b = new Float32Array(n * dim);
    nat.rmsnorm(a, x, n, dim, w, 1e-5);
    ref.rmsnorm(b, x, n, dim, w, 1e-5);
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) <= 1e-6 * Math.abs(b[i]!) + 1e-30, `rmsnorm ${n}x${dim} at ${i}: ${a[i]} vs ${b[i]}`);
    const inPlace = x.slice();
    nat.rmsnorm(inPlace, inPlace, n, dim, w, 1e-5);
    assert.deepEqual(inPlace, a, 'rmsnorm in place');
  }
  for (const [headDim, nHeads, scaling] of [
    [32, 3, 1],
    [40, 2, 1],
    [128, 5, 1.25],
  ]) {
    const half = headDim / 2;
    const table = { headDim, invFreq: Float32Array.from({ length: half }, (_, i) => 1 / 500000 ** ((2 * i) / headDim)), attentionScaling: scaling };
    const pos = Int32Array.from([0, 1, 17, 900, 4000, 131071, 7]);
    const n = pos.length;
    const q1 = vec(n * nHeads * headDim);
    const q2 = q1.slice();
    nat.rope(q1, n, nHeads, pos, table);
    ref.rope(q2, n, nHeads, pos, table);
    for (let i = 0; i < q1.length; i++) assert.ok(Math.abs(q1[i]! - q2[i]!) <= 1e-6 * (Math.abs(q2[i]!) + 1e-3), `rope d=${headDim} at ${i}: ${q1[i]} vs ${q2[i]}`);
  }
  for (const len of [333, 100003]) {
    const g = vec(len, 8);
    g.set([-200, -100, -88.5, -87, 0, 87, 88.5, 100, 200]);
    const u = vec(len);
    const s1 = new Float32Array(len);
    const s2 = new Float32Array(len);
    nat.siluMul(s1, g, u, len);
    ref.siluMul(s2, g, u, len);
    for (let i = 0; i < len; i++) assert.ok(Math.abs(s1[i]! - s2[i]!) <= 1e-6 * Math.abs(s2[i]!) + 1e-12, `silu at ${i}: ${s1[i]} vs ${s2[i]}`);
    nat.siluMul(g, g, u, len);
    assert.deepEqual(g, s1, 'siluMul in place');
  }
});

test(`[${mode}] embedding of every dtype equals the reference rows`, { skip }, () => {
  const nat = new NativeBackend();
  for (const kind of KINDS) {
    const table = weight(kind, 50, 67);
    const ids = Int32Array.from([0, 49, 3, 3, 17]);
    const a = new Float32Array(ids.length * 67);
    const b = new Float32Array(ids.length * 67);
    nat.embedding(a, table, ids);
    ref.embedding(b, table, ids);
    assert.deepEqual(a, b, kind);
  }
  assert.throws(() => nat.embedding(new Float32Array(67), weight('bf16', 50, 67), Int32Array.of(50)), RangeError);
});

function head(len: number, d: number, positions: number[]): KvHeadView {
  const cap = len + 5;
  return { k: vec(cap * d), v: vec(cap * d), pos: Int32Array.from([...positions, ...Array(cap - len).fill(0)]), len };
}

/** Two KV heads: 203 keys in order (not a whole number of 16-key blocks), 77 in reverse order at even positions. */
function orderedAndReversed(d: number): KvHeadView[] {
  return [head(203, d, Array.from({ length: 203 }, (_, i) => i)), head(77, d, Array.from({ length: 77 }, (_, i) => 2 * (76 - i)))];
}

function maxRelErr(a: Float32Array, b: Float32Array, len = a.length): number {
  let scale = 0;
  let err = 0;
  for (let i = 0; i < len; i++) {
    scale = Math.max(scale, Math.abs(b[i]!));
    err = Math.max(err, Math.abs(a[i]! - b[i]!));
  }
  return err / Math.max(scale, 1e-30);
}

test(`[${mode}] attention: GQA 4:2, 14:2, 8:1, 3:3, ragged heads, masks, stats on and off`, { skip }, () => {
  const nat = new NativeBackend();
  for (const [nHeads, nKv, d] of [
    [4, 2, 64],
    [14, 2, 64],
    [8, 1, 128],
    [3, 3, 40],
  ] as const)
    for (const nq of [1, 3, 6, 17]) {
      const heads = Array.from({ length: nKv }, (_, g) => {
        // Ragged, sparse positions as a compressed cache has them; head 1 keeps its keys out of order.
        const len = 20 + 29 * g + (nq === 1 ? 300 : 0);
        const pos = Array.from({ length: len }, (_, i) => i * 3 + g);
        if (g === 1) pos.reverse();
        return head(len, d, pos);
      });
      const maxPos = Math.max(...heads.map((h) => Math.max(...h.pos.subarray(0, h.len))));
      // Queries see a prefix of positions only (masking), the last one sees everything.
      const qPos = Int32Array.from({ length: nq }, (_, i) => (i === nq - 1 ? maxPos + 1 : 10 + i * 7));
      const q = vec(nq * nHeads * d, 2);
      const run = (be: ReferenceBackend | NativeBackend) => {
        const out = new Float32Array(nq * nHeads * d);
        const sum = heads.map((h) => new Float32Array(h.len + 3).fill(0.25));
        const max = heads.map((h) => new Float32Array(h.len + 3).fill(0.01));
        const queryWeight = Float32Array.from({ length: nq }, (_, i) => 0.5 + i);
        be.attention({ q, out, nq, nHeads, nKvHeads: nKv, headDim: d, qPos, heads, scale: 1 / Math.sqrt(d), stats: { fromQuery: nq > 1 ? 1 : 0, sum, max, queryWeight } });
        const plain = new Float32Array(nq * nHeads * d);
        be.attention({ q, out: plain, nq, nHeads, nKvHeads: nKv, headDim: d, qPos, heads, scale: 1 / Math.sqrt(d) });
        const sumOnly = heads.map((h) => new Float32Array(h.len));
        be.attention({ q, out: null, nq, nHeads, nKvHeads: nKv, headDim: d, qPos, heads, scale: 1 / Math.sqrt(d), stats: { fromQuery: 0, sum: sumOnly } });
        return { out, sum, max, plain, sumOnly };
      };
      const a = run(nat);
      const b = run(ref);
      const label = `${nHeads}:${nKv} d=${d} nq=${nq}`;
      assert.ok(maxRelErr(a.out, b.out) < 1e-5, `attention output ${label}: ${maxRelErr(a.out, b.out)}`);
      assert.deepEqual(a.plain, a.out, `statistics do not change the output (${label})`);
      a.sum.forEach((s, g) => assert.ok(maxRelErr(s, b.sum[g]!) < 1e-5, `sum stats ${label}`));
      a.max.forEach((s, g) => assert.ok(maxRelErr(s, b.max[g]!) < 1e-5, `max stats ${label}`));
      a.sumOnly.forEach((s, g) => assert.ok(maxRelErr(s, b.sumOnly[g]!) < 1e-5, `stats-only ${label}`));
      a.sum.forEach((s, g) => assert.deepEqual(Array.from(s.subarray(heads[g]!.len)), [0.25, 0.25, 0.25], 'stats past len untouched'));
    }
});

test(`[${mode}] attention: decode and two-row queries over a long cache, with statistics`, { skip }, () => {
  const nat = new NativeBackend();
  const d = 64;
  const len = 5000;
  // Keys split into many chunks at decode: one head in order, one shorter and reversed, one whose keys a
  // query row sees only partly (positions past its own are masked).
  const heads = [
    head(len, d, Array.from({ length: len }, (_, i) => i)),
    head(len - 777, d, Array.from({ length: len - 777 }, (_, i) => 2 * (len - 778 - i))),
    head(len - 1, d, Array.from({ length: len - 1 }, (_, i) => 3 * i)),
  ];
  for (const nq of [1, 2]) {
    const q = vec(nq * 21 * d, 2);
    const args = { q, nq, nHeads: 21, nKvHeads: 3, headDim: d, qPos: Int32Array.from({ length: nq }, (_, i) => len + 3000 * i), heads, scale: 1 / 8 };
    const run = (be: ReferenceBackend | NativeBackend) => {
      const out = new Float32Array(nq * 21 * d);
      const sum = heads.map((h) => new Float32Array(h.len).fill(0.5));
      const max = heads.map((h) => new Float32Array(h.len));
      be.attention({ ...args, out, stats: { fromQuery: 0, sum, max, queryWeight: Float32Array.from({ length: nq }, (_, i) => 1 + i) } });
      const plain = new Float32Array(nq * 21 * d);
      be.attention({ ...args, out: plain });
      return { out, sum, max, plain };
    };
    const a = run(nat);
    const b = run(ref);
    assert.ok(maxRelErr(a.out, b.out) < 1e-5, `long decode nq=${nq}: ${maxRelErr(a.out, b.out)}`);
    assert.deepEqual(a.plain, a.out, `statistics do not change the output (nq=${nq})`);
    a.sum.forEach((s, g) => assert.ok(maxRelErr(s, b.sum[g]!) < 1e-5, `long sum stats nq=${nq} head ${g}`));
    a.max.forEach((s, g) => assert.ok(maxRelErr(s, b.max[g]!) < 1e-5, `long max stats nq=${nq} head ${g}`));
  }
});

test(`[${mode}] attention: decode of one or two query rows matches the reference for every head size, with statistics`, { skip }, () => {
  // On AVX2 without AVX-512, head sizes up to 64, 96 and 128 take the address-order kernels and the other multiples
  // of 8 the four-row ones; on AVX-512, multiples of 16 up to 128 take the decode tiles and the rest the generic
  // tiles; elsewhere the scalar path. Every head size must give the reference's outputs and statistics.
  const nat = new NativeBackend();
  for (const [nHeads, nKv, d, len] of [
    [32, 8, 64, 1037],
    [14, 2, 64, 263],
    [6, 2, 40, 75],
    [8, 1, 16, 9],
    [16, 2, 128, 301],
    [3, 1, 96, 70],
    [4, 2, 80, 130],
    [6, 3, 112, 90],
    [4, 1, 136, 50],
    [4, 2, 24, 33],
  ] as const)
    for (const nq of [1, 2]) {
      const heads = Array.from({ length: nKv }, (_, g) => head(len - 3 * g, d, Array.from({ length: len - 3 * g }, (_, i) => i)));
      const args = { q: vec(nq * nHeads * d, 2), nq, nHeads, nKvHeads: nKv, headDim: d, qPos: Int32Array.from({ length: nq }, (_, i) => len - 1 - (len >> 2) * i), heads, scale: 1 / Math.sqrt(d) };
      const run = (be: NativeBackend | ReferenceBackend) => {
        const out = new Float32Array(nq * nHeads * d);
        const sum = heads.map((h) => new Float32Array(h.len));
        be.attention({ ...args, out, stats: { fromQuery: 0, sum } });
        return { out, sum };
      };
      const a = run(nat);
      const b = run(ref);
      const label = `${nHeads}:${nKv} d=${d} len=${len} nq=${nq}`;
      assert.ok(maxRelErr(a.out, b.out) < 1e-5, `outputs ${label}: ${maxRelErr(a.out, b.out)}`);
      a.sum.forEach((x, g) => assert.ok(maxRelErr(x, b.sum[g]!) < 1e-5, `statistics ${label} head ${g}`));
    }
});
test(`[${mode}] matmul: a decode GEMV gives each activation row the bits it gets alone`, { skip }, () => {
  // A thread's rows are read as several ranges side by side (four, three on VNNI int8, two for three or four
  // activation rows, four for 5-16 rows taken two at a time per pass); each output is summed in the same order
  // whatever the number of rows and ranges, over odd row counts that leave rows past the last whole pass.
  const nat = new NativeBackend();
  for (const kind of [...KINDS, 'int8/g256'] as const)
    for (const [rows, cols] of [[37, 129], [130, 64], [1001, 40], [7, 256], [9, 512]] as const) {
      const w = weight(kind, rows, cols);
      for (const n of [2, 3, 5, 8, 11, 16]) {
        const x = vec(n * cols);
        const out = new Float32Array(n * rows);
        nat.matmul(out, x, n, w);
        for (let t = 0; t < n; t++) {
          const alone = new Float32Array(rows);
          nat.matmul(alone, x.subarray(t * cols, (t + 1) * cols), 1, w);
          assert.deepEqual(out.subarray(t * rows, (t + 1) * rows), alone, `${kind} ${rows}x${cols} n=${n} row ${t}`);
        }
      }
    }
});
test(`[${mode}] matmul: up to 16 activation rows take the decode GEMV, more the GEMM`, { skip }, () => {
  const nat = new NativeBackend({ bf16Activations: false });
  for (const kind of ['f32', 'bf16', 'f16', 'int8/row', 'int8/g64'] as const) {
    const w = weight(kind, 8, 64);
    const paths = [1, 5, 8, 16, 17].map((n) => nat.matmulPath(n, w));
    if (mode === 'scalar') assert.deepEqual(paths, Array(5).fill('scalar'), kind);
    else {
      paths.slice(0, 4).forEach((p, i) => assert.match(p, /gemv/, `${kind} n=${[1, 5, 8, 16][i]}: ${p}`));
      assert.doesNotMatch(paths[4]!, /gemv/, `${kind} n=17: ${paths[4]}`);
    }
  }
});
test(`[${mode}] attention: decode logits with heads packed per vector match the reference, from one or two key streams`, { skip }, () => {
  // AVX-512 decode packs two (tiles of 2) or four (3-8) heads' queries per vector, one head alone per head; a
  // tile whose keys fit in three quarters of the L2 takes each block's keys from both halves of the cache, a
  // longer one (the last case: 4 MB of keys) 16 consecutive keys. All must match the reference for every tile
  // size, head size, tail and mask.
  const nat = new NativeBackend();
  const cases: [number, number, number, KvHeadView[]][] = [];
  for (const G of [1, 2, 3, 4, 5, 6, 7, 8]) for (const d of [32, 64, 96, 128]) cases.push([G, 2, d, orderedAndReversed(d)]);
  cases.push([4, 1, 128, [head(8200, 128, Array.from({ length: 8200 }, (_, i) => i))]]);
  for (const [G, nKv, d, heads] of cases)
    for (const nq of [1, 2]) {
      const nHeads = G * nKv;
      const q = vec(nq * nHeads * d, 3);
      // The first query sees only part of the reversed head.
      const args = { q, nq, nHeads, nKvHeads: nKv, headDim: d, qPos: Int32Array.from({ length: nq }, (_, i) => 90 + 200 * i), heads, scale: 1 / Math.sqrt(d) };
      const expect = new Float32Array(nq * nHeads * d);
      ref.attention({ ...args, out: expect });
      const out = new Float32Array(nq * nHeads * d);
      nat.attention({ ...args, out });
      assert.ok(maxRelErr(out, expect) < 1e-5, `${nHeads}:${nKv} d=${d} len=${heads[0]!.len} nq=${nq}: ${maxRelErr(out, expect)}`);
    }
});

test(`[${mode}] attention: a sliding window masks by position on every path (ordered, reversed, bf16, statistics, shared prefix)`, { skip }, () => {
  // A windowed call runs row by row over each row's window: in place where a head's positions ascend, gathered
  // where they do not (the reversed head), so both must match the reference, statistics included.
  const nat = new NativeBackend();
  for (const bf16 of [false, true])
    for (const d of [32, 40, 64])
      for (const [nq, window] of [[1, 1], [1, 17], [2, 40], [9, 5], [33, 64], [3, 1000]] as const) {
        const nKv = 2;
        const nHeads = 4;
        const views = orderedAndReversed(d).map(bf16Head);
        const heads = views.map((h) => (bf16 ? h.bits : h.wide));
        const wide = views.map((h) => h.wide);
        const qPos = Int32Array.from({ length: nq }, (_, i) => 150 - 3 * (nq - 1) + 3 * i);
        const args = { q: vec(nq * nHeads * d, 3), nq, nHeads, nKvHeads: nKv, headDim: d, qPos, scale: 1 / Math.sqrt(d), window };
        const queryWeight = Float32Array.from({ length: nq }, (_, i) => 0.5 + i);
        const run = (be: ReferenceBackend | NativeBackend, hs: KvHeadView[]) => {
          const out = new Float32Array(nq * nHeads * d);
          const sum = hs.map((h) => new Float32Array(h.len));
          const max = hs.map((h) => new Float32Array(h.len));
          be.attention({ ...args, heads: hs, out, stats: { fromQuery: nq >> 1, sum, max, queryWeight } });
          return { out, sum, max };
        };
        const label = `${bf16 ? 'bf16' : 'f32'} d=${d} nq=${nq} window=${window}`;
        const got = run(nat, heads);
        const expect = run(ref, wide);
        assert.ok(maxRelErr(got.out, expect.out) < 1e-5, `${label}: ${maxRelErr(got.out, expect.out)}`);
        got.sum.forEach((x, g) => assert.ok(maxRelErr(x, expect.sum[g]!) < 1e-5, `sum stats ${label}`));
        got.max.forEach((x, g) => assert.ok(maxRelErr(x, expect.max[g]!) < 1e-5, `max stats ${label}`));
        // The window hides keys whenever it is shorter than a query's reach: the output must differ from full attention.
        if (window < 100) {
          const full = new Float32Array(nq * nHeads * d);
          ref.attention({ ...args, window: undefined, heads: wide, out: full });
          assert.ok(maxRelErr(full, expect.out) > 1e-3, `the window changes the output (${label})`);
        }
        // Over a shared prefix: the prefix's rows (positions 0..59) then each head's own (60..).
        const prefix = [head(60, d, Array.from({ length: 60 }, (_, i) => i)), head(60, d, Array.from({ length: 60 }, (_, i) => i))];
        const own = [head(100, d, Array.from({ length: 100 }, (_, i) => 60 + i)), head(100, d, Array.from({ length: 100 }, (_, i) => 60 + i))];
        const pArgs = { ...args, qPos: Int32Array.from({ length: nq }, (_, i) => 159 - (nq - 1 - i)) };
        const pOut = new Float32Array(nq * nHeads * d);
        nat.attention({ ...pArgs, heads: own, prefix, out: pOut });
        const pExpect = new Float32Array(nq * nHeads * d);
        ref.attention({ ...pArgs, heads: own, prefix, out: pExpect });
        assert.ok(maxRelErr(pOut, pExpect) < 1e-5, `shared prefix ${label}: ${maxRelErr(pOut, pExpect)}`);
      }
  assert.throws(() => nat.attention({ q: vec(32), out: new Float32Array(32), nq: 1, nHeads: 1, nKvHeads: 1, headDim: 32, qPos: Int32Array.of(3), heads: [head(4, 32, [0, 1, 2, 3])], scale: 1, window: 0 }), /window must be a positive integer, got 0/);
});

/** The head's rows rounded to bf16: the bits (for a bf16 cache) and the same values widened back to fp32. */
function bf16Head(h: KvHeadView): { bits: KvHeadView; wide: KvHeadView } {
  const bits = (a: KvRows) => Uint16Array.from(a as Float32Array, bf16Bits);
  const k = bits(h.k);
  const v = bits(h.v);
  return { bits: { ...h, k, v }, wide: { ...h, k: bf16ArrayToF32(k), v: bf16ArrayToF32(v) } };
}

test(`[${mode}] attention: a bf16 cache gives the bits of its values widened to fp32, on every path`, { skip }, (t) => {
  // AVX-512 tiles read bf16 rows directly: decode keys either widened per block of 16 or, on AVX512-BF16,
  // multiplied as they are by the query split into two bf16 parts; values widened per row in registers;
  // many-row keys widened while packed. AVX2 decode widens keys and values in registers, 8 at a time. Every
  // other path (AVX2 prefill, scalar, d not a multiple of 16 on AVX-512) widens the cache first. All but the
  // split-query logits sum in the fp32 path's order, so they give the bits of the widened cache (except one-head
  // decode tiles: bf16 takes two heads per vector, one of them zero; fp32 one head with a 16:1 reduction). The split query holds q to 2^-18 relative, so its logits
  // are within 2^-18 scale sum|q k| (~3e-5 here) of exact, and the outputs within 5e-5 of the reference (measured 3.4e-6).
  const nat = new NativeBackend();
  const hasDot = nativeInfo()!.features.avx512_bf16 === true;
  let worst = 0;
  for (const G of [1, 2, 4, 7])
    for (const d of [16, 32, 40, 64, 128])
      for (const nq of [1, 2, 5]) {
        const splitQuery = hasDot && nq <= 2 && d % 16 === 0;
        const nKv = 2;
        const nHeads = G * nKv;
        const views = orderedAndReversed(d).map(bf16Head);
        const args = { q: vec(nq * nHeads * d, 3), nq, nHeads, nKvHeads: nKv, headDim: d, qPos: Int32Array.from({ length: nq }, (_, i) => 90 + 200 * i), scale: 1 / Math.sqrt(d) };
        const run = (be: ReferenceBackend | NativeBackend, heads: KvHeadView[]) => {
          const out = new Float32Array(nq * nHeads * d);
          const sum = heads.map((h) => new Float32Array(h.len));
          const max = heads.map((h) => new Float32Array(h.len));
          be.attention({ ...args, heads, out, stats: { fromQuery: 0, sum, max } });
          const plain = new Float32Array(nq * nHeads * d);
          be.attention({ ...args, heads, out: plain });
          return { out, sum, max, plain };
        };
        const label = `${nHeads}:${nKv} d=${d} nq=${nq}`;
        const tol = splitQuery ? 5e-5 : 1e-5;
        const bf = run(nat, views.map((h) => h.bits));
        const wide = run(nat, views.map((h) => h.wide));
        const expect = run(ref, views.map((h) => h.wide));
        const refBits = run(ref, views.map((h) => h.bits));
        assert.deepEqual(refBits.out, expect.out, `reference: bf16 rows are the widened values (${label})`);
        if (splitQuery) worst = Math.max(worst, maxRelErr(bf.out, expect.out));
        assert.ok(maxRelErr(bf.out, expect.out) < tol, `against the reference ${label}: ${maxRelErr(bf.out, expect.out)}`);
        assert.ok(maxRelErr(wide.out, expect.out) < 1e-5, `fp32 cache against the reference ${label}: ${maxRelErr(wide.out, expect.out)}`);
        assert.deepEqual(bf.plain, bf.out, `statistics do not change the output (${label})`);
        bf.sum.forEach((x, g) => assert.ok(maxRelErr(x, expect.sum[g]!) < tol, `sum stats ${label}`));
        bf.max.forEach((x, g) => assert.ok(maxRelErr(x, expect.max[g]!) < tol, `max stats ${label}`));
        if (G > 1 && !splitQuery) {
          assert.deepEqual(bf.out, wide.out, `same bits as the widened cache (${label})`);
          bf.sum.forEach((x, g) => assert.deepEqual(x, wide.sum[g], `same statistics as the widened cache (${label})`));
        }
      }
  if (hasDot) t.diagnostic(`bf16 split-query decode: max relative error against the reference ${worst.toExponential(2)}`);
  const mixed = orderedAndReversed(32);
  mixed[1] = bf16Head(mixed[1]!).bits;
  assert.throws(
    () => nat.attention({ q: vec(4 * 32), out: new Float32Array(4 * 32), nq: 1, nHeads: 4, nKvHeads: 2, headDim: 32, qPos: Int32Array.of(500), heads: mixed, scale: 1 }),
    /KV head 1 mixes fp32 and bf16/,
  );
});

test(`[${mode}] copyRows into a bf16 cache rounds to nearest even as the reference does`, { skip }, () => {
  const nat = new NativeBackend();
  const special = [0, -0, 1, -1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, 3.0e38, -3.4e38, 1e-40, -1e-45, Infinity, -Infinity, NaN];
  const width = 19;
  const rows = 7;
  const stride = 23;
  const src = Float32Array.from({ length: rows * stride }, (_, i) => (i < special.length ? special[i]! : (rand() * 2 - 1) * 10 ** Math.floor(rand() * 8 - 4)));
  const a = new Uint16Array(3 + rows * width).fill(0xabcd);
  const b = new Uint16Array(3 + rows * width).fill(0xabcd);
  nat.copyRows(a, 3, src, 2, stride, rows, width);
  ref.copyRows(b, 3, src, 2, stride, rows, width);
  assert.deepEqual(a, b);
  assert.deepEqual([...a.subarray(0, 3)], [0xabcd, 0xabcd, 0xabcd], 'nothing written before dstOffset');
  const one = new Uint16Array(4);
  nat.copyRows(one, 0, Float32Array.of(1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, NaN), 0, 4, 1, 4);
  assert.deepEqual([...one], [0x3f80, 0x3f82, 0x3f81, 0x7fc0], 'ties to even, above a tie up, NaN quiet');
});

test(`[${mode}] attention: many-row calls give the same bits whatever earlier calls left in the kept buffers`, { skip }, () => {
  // Each thread keeps its packed-key buffers across calls; a longer call leaves stale keys past a shorter call's
  // end, which must not change its results (with and without statistics, which schedule the tiles per KV head).
  const nat = new NativeBackend();
  for (const d of [64, 40]) {
    const long = [head(300, d, Array.from({ length: 300 }, (_, i) => i)), head(290, d, Array.from({ length: 290 }, (_, i) => i))];
    const short = orderedAndReversed(d);
    const nq = 9;
    const qLong = vec(nq * 8 * d, 2);
    const qShort = vec(nq * 8 * d, 2);
    const qPos = Int32Array.from({ length: nq }, (_, i) => 150 + 20 * i);
    const call = (heads: KvHeadView[], q: Float32Array) => {
      const args = { q, nq, nHeads: 8, nKvHeads: 2, headDim: d, qPos, heads, scale: 1 / Math.sqrt(d) };
      const out = new Float32Array(nq * 8 * d);
      nat.attention({ ...args, out });
      const withStats = new Float32Array(nq * 8 * d);
      const sum = heads.map((h) => new Float32Array(h.len));
      nat.attention({ ...args, out: withStats, stats: { fromQuery: 0, sum } });
      return { out, withStats, sum };
    };
    const first = call(short, qShort);
    call(long, qLong);
    const after = call(short, qShort);
    const expect = new Float32Array(nq * 8 * d);
    ref.attention({ q: qShort, out: expect, nq, nHeads: 8, nKvHeads: 2, headDim: d, qPos, heads: short, scale: 1 / Math.sqrt(d) });
    assert.ok(maxRelErr(first.out, expect) < 1e-5, `d=${d}: ${maxRelErr(first.out, expect)}`);
    assert.deepEqual(after, first, `d=${d}: after a longer call`);
  }
});
test(`[${mode}] attention: many-row calls match the reference, query rows grouped into tiles, with weighted statistics`, { skip }, () => {
  // AVX-512 groups up to 3-8 consecutive query rows per tile (d a multiple of 16) so packed keys and values are
  // read once per group; rows see different prefixes (keys only later rows see weigh 0 for the earlier ones),
  // and statistics take rows from the third on, weighted per query row.
  const nat = new NativeBackend();
  for (const G of [1, 2, 3, 4, 5, 7, 8])
    for (const d of [32, 64, 128])
      for (const nq of [3, 10, 17]) {
        const nKv = 2;
        const nHeads = G * nKv;
        const heads = orderedAndReversed(d);
        const q = vec(nq * nHeads * d, 2);
        // Rows see different prefixes: the first only part of head 0, the last all of it.
        const qPos = Int32Array.from({ length: nq }, (_, i) => 40 + 11 * i);
        const args = { q, nq, nHeads, nKvHeads: nKv, headDim: d, qPos, heads, scale: 1 / Math.sqrt(d) };
        const run = (be: NativeBackend | ReferenceBackend) => {
          const out = new Float32Array(nq * nHeads * d);
          be.attention({ ...args, out });
          const withStats = new Float32Array(nq * nHeads * d);
          const sum = heads.map((h) => new Float32Array(h.len));
          const max = heads.map((h) => new Float32Array(h.len));
          be.attention({ ...args, out: withStats, stats: { fromQuery: 2, sum, max, queryWeight: Float32Array.from({ length: nq }, (_, i) => 1 + i / 4) } });
          return { out, withStats, sum, max };
        };
        const a = run(nat);
        const b = run(ref);
        const label = `${nHeads}:${nKv} d=${d} nq=${nq}`;
        assert.ok(maxRelErr(a.out, b.out) < 1e-5, `${label}: ${maxRelErr(a.out, b.out)}`);
        assert.deepEqual(a.withStats, a.out, `statistics do not change the output (${label})`);
        a.sum.forEach((x, g) => assert.ok(maxRelErr(x, b.sum[g]!) < 1e-5, `sum stats ${label} head ${g}`));
        a.max.forEach((x, g) => assert.ok(maxRelErr(x, b.max[g]!) < 1e-5, `max stats ${label} head ${g}`));
      }
});
test(`[${mode}] attention: P.V matches the reference when a tile's heads take several register batches`, { skip }, () => {
  // AVX-512 P.V loads each value row once for a batch of heads; with more heads than one batch holds (7 per KV
  // head, 4 at d 128) the values are taken in blocks of 32 KiB that every batch meets in turn. Lengths run from
  // under one block to several blocks and a part (a block holds 32768 / (4 d) keys).
  const nat = new NativeBackend();
  for (const [nHeads, nKv, d] of [[8, 2, 64], [14, 2, 64], [8, 1, 128], [6, 3, 32], [10, 2, 96], [4, 2, 40]] as const)
    for (const nq of [1, 2, 5]) {
      const lens = [37, 87, 300 + 41 * nKv];
      const heads = Array.from({ length: nKv }, (_, g) => head(lens[g % 3]!, d, Array.from({ length: lens[g % 3]! }, (_, i) => i)));
      const args = { q: vec(nq * nHeads * d, 2), nq, nHeads, nKvHeads: nKv, headDim: d, qPos: Int32Array.from({ length: nq }, (_, i) => 400 + 20 * i), heads, scale: 1 / Math.sqrt(d) };
      const out = new Float32Array(nq * nHeads * d);
      nat.attention({ ...args, out });
      const expect = new Float32Array(nq * nHeads * d);
      ref.attention({ ...args, out: expect });
      assert.ok(maxRelErr(out, expect) < 1e-5, `${nHeads}:${nKv} d=${d} nq=${nq}: ${maxRelErr(out, expect)}`);
    }
});
test(`[${mode}] the bandwidth probe reads every element of its buffer, both read loops`, { skip }, () => {
  // streamRead returns the sum of what it read: a probe that skipped data would report bandwidth it never used.
  const lib = loadAddon()!;
  for (const n of [1_000_003, 48, 7]) {
    const buf = Float32Array.from({ length: n }, (_, i) => ((i * 7919) % 1000) / 1000);
    let expect = 0;
    for (const v of buf) expect += v;
    for (const prefetching of [false, true]) {
      const got = lib.streamRead(buf, prefetching);
      assert.ok(Math.abs(got - expect) <= 1e-5 * expect + 1e-6, `n=${n}, prefetching ${prefetching}: ${got} vs ${expect}`);
    }
  }
});

test(`[${mode}] mmap regions return the bytes fs.readSync reads`, { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-mmap-'));
  try {
    const file = join(dir, 'blob.bin');
    const bytes = Uint8Array.from({ length: 100_003 }, () => Math.floor(rand() * 256));
    writeFileSync(file, bytes);
    const src = mmapSource()!;
    const fd = openSync(file, 'r');
    try {
      for (const [offset, length] of [
        [0, 100_003],
        [1, 4095],
        [8, 40_000],
        [99_999, 4],
        [100_003, 0],
        [12_345, 1],
      ]) {
        const expected = new Uint8Array(length);
        readSync(fd, expected, 0, length, offset);
        const got = src.read(file, offset, length);
        assert.ok(got instanceof ArrayBuffer);
        assert.deepEqual(new Uint8Array(got), expected, `region ${offset}+${length}`);
        assert.deepEqual(new Uint8Array(mapFileRegion(file, offset, length)), expected);
      }
    } finally {
      closeSync(fd);
    }
    assert.throws(() => src.read(file, 100_000, 4), RangeError);
    assert.throws(() => mapFileRegion(join(dir, 'missing.bin'), 0, 1), /cannot open/);
    // Private mapping: a write into a view stays in this process and never reaches the file.
    const view = new Uint8Array(mapFileRegion(file, 0, 16));
    view[0] = view[0]! ^ 0xff;
    assert.equal(readFileSync(file)[0], bytes[0]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test(`[${mode}] info reports features, paths and threads`, { skip }, () => {
  const info = nativeInfo()!;
  assert.ok(info.threads >= 1);
  for (const key of ['decode_matmul', 'decode_matmul_int8', 'prefill_matmul_bf16', 'prefill_matmul_f32', 'attention', 'attention_bf16_cache', 'amx']) assert.equal(typeof info.paths[key], 'string', key);
  if (mode === 'avx2' || mode === 'scalar') assert.match(info.paths.decode_matmul!, new RegExp(mode));
  if (mode === 'amx-emulated' && info.features.avx512_bf16) assert.match(info.paths.prefill_matmul_bf16!, /amx.*emulated/);
});

const FINGERPRINT = `
  import { NativeBackend } from './src/tensor/native.ts';
  import { quantizeInt8 } from './src/tensor/quantize.ts';
  let s = 3;
  const r = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5);
  const be = new NativeBackend();
  const f = Float32Array.from({ length: 301 * 256 }, r);
  const bf = { name: 'w', dtype: 'bf16', rows: 301, cols: 256, data: Uint16Array.from(f, (v) => new Uint32Array(new Float32Array([v]).buffer)[0] >>> 16) };
  const i8 = quantizeInt8({ name: 'w', dtype: 'f32', rows: 301, cols: 256, data: f });
  const outs = [];
  for (const w of [bf, i8]) for (const n of [1, 3, 40]) {
    const x = Float32Array.from({ length: n * 256 }, r);
    const out = new Float32Array(n * 301);
    be.matmul(out, x, n, w);
    outs.push(out);
  }
  const heads = [0, 1].map((g) => ({ k: Float32Array.from({ length: 90 * 64 }, r), v: Float32Array.from({ length: 90 * 64 }, r), pos: Int32Array.from({ length: 90 }, (_, i) => i), len: 90 - g * 7 }));
  for (const nq of [1, 12]) {
    const out = new Float32Array(nq * 4 * 64);
    const sum = heads.map((h) => new Float32Array(h.len));
    be.attention({ q: Float32Array.from({ length: nq * 4 * 64 }, r), out, nq, nHeads: 4, nKvHeads: 2, headDim: 64, qPos: Int32Array.from({ length: nq }, (_, i) => 80 + i), heads, scale: 0.125, stats: { fromQuery: 0, sum } });
    outs.push(out, ...sum);
  }
  // Long enough to split into chunks at decode and into several units of query rows.
  const long = [0, 1].map((g) => ({ k: Float32Array.from({ length: 1500 * 64 }, r), v: Float32Array.from({ length: 1500 * 64 }, r), pos: Int32Array.from({ length: 1500 }, (_, i) => i), len: 1500 - g * 300 }));
  for (const nq of [1, 40]) {
    const out = new Float32Array(nq * 14 * 64);
    const max = long.map((h) => new Float32Array(h.len));
    be.attention({ q: Float32Array.from({ length: nq * 14 * 64 }, r), out, nq, nHeads: 14, nKvHeads: 2, headDim: 64, qPos: Int32Array.from({ length: nq }, (_, i) => 1460 + i), heads: long, scale: 0.125, stats: { fromQuery: 0, max } });
    outs.push(out, ...max);
    const plain = new Float32Array(nq * 14 * 64);
    be.attention({ q: Float32Array.from({ length: nq * 14 * 64 }, r), out: plain, nq, nHeads: 14, nKvHeads: 2, headDim: 64, qPos: Int32Array.from({ length: nq }, (_, i) => 1460 + i), heads: long, scale: 0.125 });
    outs.push(plain);
  }
  const mqa = new Float32Array(8 * 64);
  be.attention({ q: Float32Array.from({ length: 8 * 64 }, r), out: mqa, nq: 1, nHeads: 8, nKvHeads: 1, headDim: 64, qPos: Int32Array.of(100), heads: [heads[0]], scale: 0.125 });
  outs.push(mqa);
  const norm = new Float32Array(40 * 256);
  be.rmsnorm(norm, outs[2].subarray(0, 40 * 256), 40, 256, f.subarray(0, 256), 1e-6);
  outs.push(norm, i8.scales);
  let h = 0;
  for (const o of outs) for (const v of new Uint32Array(o.buffer, o.byteOffset, o.length)) h = (Math.imul(h, 31) + v) >>> 0;
  console.log(be.info().threads, h);`;

test(`[${mode}] one thread and two threads give bit-identical results`, { skip }, () => {
  const run = (threads: string) =>
    execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', FINGERPRINT], { encoding: 'utf8', cwd: new URL('..', import.meta.url).pathname, env: { ...process.env, KVLAB_THREADS: threads } })
      .trim()
      .split(' ');
  const [t1, h1] = run('1');
  const [t2, h2] = run('2');
  assert.equal(t1, '1');
  assert.equal(t2, '2');
  assert.equal(h1, h2);
});

test('KVLAB_BACKEND=native without the addon is a clear error; the default falls back with one line', () => {
  const script = `
    import { selectBackend } from './src/tensor/select-backend.ts';
    try { selectBackend(); console.log('no error'); } catch (e) { console.log(e.message); }`;
  const cwd = new URL('..', import.meta.url).pathname;
  const env = { ...process.env, KVLAB_NATIVE_ADDON: '/nonexistent/kvlab_native.node' };
  const explicit = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', cwd, env: { ...env, KVLAB_BACKEND: 'native' } });
  assert.match(explicit, /KVLAB_BACKEND=native, but the native addon is unavailable/);
  const fallback = `
    import { selectBackend } from './src/tensor/select-backend.ts';
    console.log(selectBackend().name, selectBackend().name);`;
  const res = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', fallback], { encoding: 'utf8', cwd, env: { ...env, KVLAB_BACKEND: '' } });
  assert.equal(res.stdout.trim(), 'reference reference');
  const lines = res.stderr.trim().split('\n');
  assert.equal(lines.length, 1, res.stderr);
  assert.match(lines[0]!, /native addon unavailable .*using the reference backend/);
});

// The same suite under each fallback level, in child processes (KVLAB_ISA caps the dispatch).
if (mode === 'default') {
  // On AVX-512 CPUs also without BF16 and VNNI: decode keys of a bf16 cache widened per block, int8 dequantized.
  const avx512 = nativeInfo()?.features.avx512 === true;
  for (const [label, extra] of [
    ...(avx512 ? ([['KVLAB_ISA=avx512f', { KVLAB_ISA: 'avx512f' }]] as const) : []),
    ['KVLAB_ISA=avx2', { KVLAB_ISA: 'avx2' }],
    ['KVLAB_ISA=scalar', { KVLAB_ISA: 'scalar' }],
    ['KVLAB_AMX_EMULATE=1', { KVLAB_AMX_EMULATE: '1' }],
  ] as const) {
    test(`parity suite under ${label}`, { skip }, () => {
      // A fresh test runner, not a subtest reporter of this one.
      const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
      delete env.NODE_TEST_CONTEXT;
      const out = execFileSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=tap', new URL(import.meta.url).pathname], { encoding: 'utf8', env, stdio: 'pipe' });
      assert.match(out, /# fail 0/);
      assert.doesNotMatch(out, /# pass 0\b/);
    });
  }
}
