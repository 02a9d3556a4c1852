import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { seededRandom } from '../src/engine/sampler.ts';
import type { KvHeadView, Weight } from '../src/tensor/backend.ts';
import { f32ToBf16Bits } from './helpers/dtype.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { quantizeInt8 } from '../src/tensor/quantize.ts';
import { ReferenceBackend, widenWeight } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';

const skip = nativeAvailable() ? false : 'native addon not built';
const rand = seededRandom(7);
const ref = new ReferenceBackend();
const vec = (n: number) => Float32Array.from({ length: n }, () => rand() * 2 - 1);

function weight(dtype: Weight['dtype'], rows: number, cols: number): Weight {
  const f = vec(rows * cols);
  if (dtype === 'f32') return { name: 'w', dtype, rows, cols, data: f };
  if (dtype === 'bf16') return { name: 'w', dtype, rows, cols, data: Uint16Array.from(f, f32ToBf16Bits) };
  if (dtype === 'f16') {
    const h = new Uint16Array(rows * cols);
    // f16 from a small exact grid: k/1024 for |k| < 1024 is representable exactly.
    for (let i = 0; i < h.length; i++) {
      const k = Math.round(f[i]! * 1023);
      h[i] = k === 0 ? 0 : (k < 0 ? 0x8000 : 0) | encodeF16(Math.abs(k) / 1024);
    }
    return { name: 'w', dtype, rows, cols, data: h };
  }
  return quantizeInt8({ name: 'w', dtype: 'f32', rows, cols, data: f });
}

function encodeF16(v: number): number {
  const e = Math.floor(Math.log2(v));
  if (e < -14) return Math.round(v / 2 ** -24);
  return ((e + 15) << 10) | Math.round((v / 2 ** e - 1) * 1024);
}

function maxRelErr(a: Float32Array, b: Float32Array): number {
  let scale = 0;
  let err = 0;
  for (let i = 0; i < a.length; i++) {
    scale = Math.max(scale, Math.abs(b[i]!));
    err = Math.max(err, Math.abs(a[i]! - b[i]!));
  }
  return err / Math.max(scale, 1e-30);
}

for (const bf16Activations of [false, true]) {
  test(`matmul parity, all dtypes, odd sizes (bf16 activations: ${bf16Activations})`, { skip }, () => {
    const nat = new NativeBackend({ bf16Activations });
    for (const dtype of ['f32', 'bf16', 'f16', 'int8'] as const)
      for (const [rows, cols] of [[37, 129], [64, 256], [33, 17]] as const)
        for (const n of [1, 3, 7, 8, 17, 100]) {
          const w = weight(dtype, rows, cols);
          const x = vec(n * cols);
          const a = new Float32Array(n * rows);
          const b = new Float32Array(n * rows);
          nat.matmul(a, x, n, w);
          ref.matmul(b, x, n, w);
          // fp32 activations: only summation order differs. bf16 activations (n >= 8 GEMM): each product
          // carries a relative error <= 2^-8, which random signs keep near 2^-8 * sqrt(K) / K of the sum scale.
          // int8 decode (n <= 4) on VNNI also quantizes activations to int8: relative error ~ 2^-8 per product.
          const quantizedActivations = dtype === 'int8' && n <= 4 && !process.env.KVLAB_ISA;
          const tol = (bf16Activations && n >= 8 && !process.env.KVLAB_ISA) || quantizedActivations ? 2e-2 : 1e-5;
          const e = maxRelErr(a, b);
          assert.ok(e <= tol, `${dtype} ${rows}x${cols} n=${n}: relative error ${e} > ${tol}`);
        }
  });
}

test('int8 quantization error stays within half a step per weight', () => {
  const w = weight('f32', 20, 300);
  const q = quantizeInt8(w);
  const back = widenWeight(q);
  const src = w.data as Float32Array;
  for (let r = 0; r < 20; r++)
    for (let c = 0; c < 300; c++) assert.ok(Math.abs(back[r * 300 + c]! - src[r * 300 + c]!) <= q.scales![r]! / 2 + 1e-7);
});

test('rmsnorm, rope, silu-mul parity', { skip }, () => {
  const nat = new NativeBackend();
  const n = 5;
  const dim = 96;
  const x = vec(n * dim);
  const w = vec(dim);
  const a = new Float32Array(n * dim);
  const b = new Float32Array(n * dim);
  nat.rmsnorm(a, x, n, dim, w, 1e-5);
  ref.rmsnorm(b, x, n, dim, w, 1e-5);
  assert.ok(maxRelErr(a, b) < 1e-6);
  const table = { headDim: 32, invFreq: Float32Array.from({ length: 16 }, (_, i) => 1 / 10000 ** ((2 * i) / 32)), attentionScaling: 1 };
  const pos = Int32Array.from([0, 1, 17, 900, 4000]);
  const q1 = vec(n * 3 * 32);
  const q2 = q1.slice();
  nat.rope(q1, n, 3, pos, table);
  ref.rope(q2, n, 3, pos, table);
  assert.ok(maxRelErr(q1, q2) < 1e-5);
  const g = vec(333);
  const u = vec(333);
  const s1 = new Float32Array(333);
  const s2 = new Float32Array(333);
  nat.siluMul(s1, g, u, 333);
  ref.siluMul(s2, g, u, 333);
  assert.ok(maxRelErr(s1, s2) < 1e-6);
});

function head(len: number, d: number, positions?: number[]): KvHeadView {
  return { k: vec(len * d + 7 * d), v: vec(len * d + 7 * d), pos: Int32Array.from(positions ?? Array.from({ length: len }, (_, i) => i)), len };
}

test('attention parity: GQA, ragged heads, position masks, stats on and off', { skip }, () => {
  const nat = new NativeBackend();
  for (const [nHeads, nKv, d] of [[4, 2, 64], [14, 2, 64], [3, 3, 40]] as const)
    for (const nq of [1, 6]) {
      const heads = Array.from({ length: nKv }, (_, g) => {
        const len = 20 + 13 * g;
        // Sparse, increasing positions as a compressed cache has them; queries sit at 100..
        return head(len, d, Array.from({ length: len }, (_, i) => i * 3 + g));
      });
      const qPos = Int32Array.from({ length: nq }, (_, i) => (nq === 1 ? 200 : 30 + i * 9));
      const q = vec(nq * nHeads * d);
      const run = (be: ReferenceBackend | NativeBackend) => {
        const out = new Float32Array(nq * nHeads * d);
        const sum = heads.map((h) => new Float32Array(h.len));
        const max = heads.map((h) => new Float32Array(h.len));
        be.attention({ q, out, nq, nHeads, nKvHeads: nKv, headDim: d, qPos, heads, scale: 1 / Math.sqrt(d), stats: { fromQuery: nq > 1 ? 2 : 0, sum, max, queryWeight: Float32Array.from({ length: nq }, (_, i) => 0.5 + i) } });
        const plain = new Float32Array(nq * nHeads * d);
        be.attention({ q, out: plain, nq, nHeads, nKvHeads: nKv, headDim: d, qPos, heads, scale: 1 / Math.sqrt(d) });
        return { out, sum, max, plain };
      };
      const a = run(nat);
      const b = run(ref);
      assert.ok(maxRelErr(a.out, b.out) < 1e-5, 'attention output');
      assert.deepEqual(a.plain, a.out, 'statistics do not change the output');
      a.sum.forEach((s, g) => assert.ok(maxRelErr(s, b.sum[g]!) < 1e-5, 'sum stats'));
      a.max.forEach((s, g) => assert.ok(maxRelErr(s, b.max[g]!) < 1e-5, 'max stats'));
    }
});

test('one thread and two threads give identical results', { skip }, () => {
  const script = `
    import { NativeBackend } from './src/tensor/native.ts';
    import { seededRandom } from './src/engine/sampler.ts';
    const r = seededRandom(3);
    const be = new NativeBackend();
    const w = { name: 'w', dtype: 'f32', rows: 301, cols: 200, data: Float32Array.from({ length: 60200 }, r) };
    const x = Float32Array.from({ length: 40 * 200 }, r);
    const out = new Float32Array(40 * 301);
    be.matmul(out, x, 40, w);
    let h = 0; for (const v of out) h = (h * 31 + Math.round(v * 1e4)) % 1000000007;
    console.log(be.describe(), h);`;
  const run = (threads: string) =>
    execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, KVLAB_THREADS: threads } }).trim();
  const one = run('1');
  const two = run('2');
  assert.match(one, /1 threads/);
  assert.match(two, /2 threads/);
  assert.equal(one.split(' ').pop(), two.split(' ').pop());
});

// The same parity suite under each fallback ISA (KVLAB_ISA caps the dispatch), in child processes.
if (!process.env.KVLAB_ISA) {
  for (const isa of ['avx2', 'scalar']) {
    test(`parity suite under KVLAB_ISA=${isa}`, { skip }, () => {
      const info = execFileSync(process.execPath, [new URL('../bin/kvlab.js', import.meta.url).pathname, 'info', '--json'], { encoding: 'utf8', env: { ...process.env, KVLAB_ISA: isa, KVLAB_BACKEND: 'native' } });
      assert.match(JSON.parse(info).native.paths.decode_matmul, new RegExp(isa));
      execFileSync(process.execPath, ['--import', 'tsx', '--test', new URL(import.meta.url).pathname], { encoding: 'utf8', env: { ...process.env, KVLAB_ISA: isa } });
    });
  }
}
