import type { Weight } from './backend.ts';
import { widenWeight } from './reference.ts';

/**
 * Symmetric per-row int8: q = round(w / s), s = max|w_row| / 127. Halves the bytes a bf16 decode streams.
 * Decode on the native backend also quantizes activations to int8 (per token) for VNNI dot products.
 */
export function quantizeInt8(w: Weight): Weight {
  if (w.dtype === 'int8') return w;
  const src = widenWeight(w);
  const data = new Int8Array(w.rows * w.cols);
  const scales = new Float32Array(w.rows);
  const rowSums = new Int32Array(w.rows);
  for (let r = 0; r < w.rows; r++) {
    let max = 0;
    const o = r * w.cols;
    for (let c = 0; c < w.cols; c++) max = Math.max(max, Math.abs(src[o + c]!));
    const s = max > 0 ? max / 127 : 1;
    scales[r] = s;
    for (let c = 0; c < w.cols; c++) {
      data[o + c] = Math.round(src[o + c]! / s);
      rowSums[r] = rowSums[r]! + data[o + c]!;
    }
  }
  return { name: w.name, dtype: 'int8', rows: w.rows, cols: w.cols, data, scales, groupSize: w.cols, rowSums };
}
