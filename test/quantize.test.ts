import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Weight } from '../src/tensor/backend.ts';
import { int8StepBound, quantizeInt8, quantizeInt8Portable } from '../src/tensor/quantize.ts';
import { widenWeight } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';

const rand = seededRandom(11);

function source(dtype: 'f32' | 'bf16' | 'f16', rows: number, cols: number): Weight {
  const f = Float32Array.from({ length: rows * cols }, () => (rand() * 2 - 1) * 0.05);
  // An outlier per row and an all-zero group in row 1, the cases absmax scaling must get right.
  for (let r = 0; r < rows; r++) f[r * cols + ((r * 7) % cols)] = 0.9;
  if (rows > 1 && cols >= 64) f.fill(0, cols, cols + 32);
  if (dtype === 'f32') return { name: 'w', dtype, rows, cols, data: f };
  const bits = new Uint32Array(f.buffer);
  if (dtype === 'bf16') return { name: 'w', dtype, rows, cols, data: Uint16Array.from(bits, (u) => u >>> 16) };
  // f16 from values that are exact in both formats: k / 1024, |k| < 1024.
  const h = Uint16Array.from(f, (v) => {
    const k = Math.round(v * 1023);
    if (k === 0) return 0;
    const a = Math.abs(k) / 1024;
    const e = Math.floor(Math.log2(a));
    return (k < 0 ? 0x8000 : 0) | (e < -14 ? Math.round(a / 2 ** -24) : ((e + 15) << 10) | Math.round((a / 2 ** e - 1) * 1024));
  });
  return { name: 'w', dtype, rows, cols, data: h };
}

const GROUPINGS = [128, 32, 40, 'row'] as const;

test('int8 error stays within half a step of its group, for every source dtype and grouping', () => {
  for (const dtype of ['f32', 'bf16', 'f16'] as const)
    for (const [rows, cols] of [
      [6, 300],
      [3, 128],
      [5, 17],
    ])
      for (const group of GROUPINGS)
        for (const quantize of [quantizeInt8, quantizeInt8Portable]) {
          const w = source(dtype, rows, cols);
          const q = quantize(w, group);
          assert.equal(q.dtype, 'int8');
          const expectGroup = group === 'row' || group >= cols ? cols : group;
          assert.equal(q.groupSize, expectGroup);
          assert.equal(q.scales!.length, rows * Math.ceil(cols / expectGroup));
          const src = widenWeight(w);
          const back = widenWeight(q);
          const data = q.data as Int8Array;
          for (let r = 0; r < rows; r++) {
            for (let c = 0; c < cols; c++) {
              const i = r * cols + c;
              // Half a step, plus the rounding of q * s to fp32 when the weight is dequantized.
              assert.ok(Math.abs(back[i]! - src[i]!) <= int8StepBound(q, r, c) + Math.abs(back[i]!) * 2 ** -24, `${quantize.name} ${dtype} g=${group} (${r},${c}): ${back[i]} vs ${src[i]}, q=${data[i]} bound ${int8StepBound(q, r, c)} groups ${q.scales!.length}`);
              assert.ok(data[i]! >= -127 && data[i]! <= 127);
            }
          }
        }
});

test('absmax: the largest magnitude of each group maps to +-127; an all-zero group gets scale 1 and zeros', () => {
  const w = source('f32', 4, 256);
  const q = quantizeInt8(w, 32);
  const data = q.data as Int8Array;
  const groups = 256 / 32;
  for (let r = 0; r < 4; r++)
    for (let g = 0; g < groups; g++) {
      const slice = data.subarray(r * 256 + g * 32, r * 256 + g * 32 + 32);
      const peak = Math.max(...Array.from(slice, Math.abs));
      if (r === 1 && g === 0) {
        assert.equal(q.scales![r * groups + g], 1);
        assert.equal(peak, 0);
      } else assert.equal(peak, 127);
    }
});

test('smaller groups quantize rows with outliers more accurately', () => {
  const w = source('f32', 8, 1024);
  const err = (q: Weight) => {
    const a = widenWeight(w);
    const b = widenWeight(q);
    let e = 0;
    for (let i = 0; i < a.length; i++) e += (a[i]! - b[i]!) ** 2;
    return e;
  };
  assert.ok(err(quantizeInt8(w, 32)) < err(quantizeInt8(w, 128)));
  assert.ok(err(quantizeInt8(w, 128)) < err(quantizeInt8(w, 'row')));
});

test('native and TypeScript quantization produce identical bytes', { skip: nativeAvailable() ? false : 'native addon not built' }, () => {
  for (const dtype of ['f32', 'bf16', 'f16'] as const)
    for (const group of GROUPINGS) {
      const w = source(dtype, 9, 333);
      const a = quantizeInt8(w, group);
      const b = quantizeInt8Portable(w, group);
      assert.deepEqual(a.data, b.data, `${dtype} g=${group} data`);
      assert.deepEqual(a.scales, b.scales, `${dtype} g=${group} scales`);
    }
});

test('an int8 weight is returned as it is; a bad group size is refused', () => {
  const q = quantizeInt8(source('f32', 2, 64));
  assert.equal(quantizeInt8(q), q);
  assert.throws(() => quantizeInt8(source('f32', 2, 64), 0), RangeError);
  assert.throws(() => quantizeInt8(source('f32', 2, 64), 2.5), RangeError);
});
