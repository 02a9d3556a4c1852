import type { Weight } from './backend.ts';
import { f16ToF32 } from './dtype.ts';
import { groupArg, loadAddon, TYPE_CODE } from './native.ts';

/** Columns per scale: a group size, or 'row' for one scale per row. */
export type Int8Grouping = number | 'row';

export const DEFAULT_INT8_GROUP = 128;

/** How an int8 grouping is named: int8/row, int8/g128. */
export function int8Label(group: Int8Grouping): string {
  return group === 'row' ? 'int8/row' : `int8/g${group}`;
}

/**
 * Symmetric absmax int8 per (row, group of `groupSize` consecutive columns): s = max|w| / 127 (fp32; 1 for
 * an all-zero group), q = round(w / s) with the quotient in fp64 and halves rounded away from zero. Halves the
 * bytes a bf16 decode streams. The native addon and this TypeScript fallback produce identical bytes.
 * A weight that is already int8 is returned as it is.
 */
export function quantizeInt8(w: Weight, groupSize: Int8Grouping = DEFAULT_INT8_GROUP): Weight {
  return quantize(w, groupSize, true);
}

/** The TypeScript implementation alone (what runs without the addon); same bytes as the native one. */
export function quantizeInt8Portable(w: Weight, groupSize: Int8Grouping = DEFAULT_INT8_GROUP): Weight {
  return quantize(w, groupSize, false);
}

function quantize(w: Weight, groupSize: Int8Grouping, useNative: boolean): Weight {
  if (w.dtype === 'int8') return w;
  if (groupSize !== 'row' && (!Number.isInteger(groupSize) || groupSize <= 0)) throw new RangeError(`int8 group size must be a positive integer or 'row', got ${groupSize}`);
  const g = groupSize === 'row' || groupSize >= w.cols ? Math.max(w.cols, 1) : groupSize;
  const groups = Math.ceil(w.cols / g) || 1;
  if (w.data.length < w.rows * w.cols) throw new RangeError(`${w.name}: ${w.data.length} elements for a ${w.rows}x${w.cols} weight`);
  const data = new Int8Array(w.rows * w.cols);
  const scales = new Float32Array(w.rows * groups);
  const lib = useNative ? loadAddon() : null;
  if (lib) {
    lib.quantizeInt8(w.data, TYPE_CODE[w.dtype], w.rows, w.cols, null, groupArg(w), g, data, scales);
  } else {
    quantizeRowsTs(w, g, groups, data, scales);
  }
  return { name: w.name, dtype: 'int8', rows: w.rows, cols: w.cols, data, scales, groupSize: g };
}

function quantizeRowsTs(w: Weight, g: number, groups: number, data: Int8Array, scales: Float32Array): void {
  const { rows, cols } = w;
  const row = new Float32Array(cols);
  const bits = new Uint32Array(row.buffer);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    if (w.dtype === 'f32') row.set((w.data as Float32Array).subarray(o, o + cols));
    else if (w.dtype === 'bf16') for (let c = 0; c < cols; c++) bits[c] = (w.data as Uint16Array)[o + c]! << 16;
    else for (let c = 0; c < cols; c++) row[c] = f16ToF32((w.data as Uint16Array)[o + c]!);
    for (let gi = 0; gi < groups; gi++) {
      const c0 = gi * g;
      const c1 = Math.min(cols, c0 + g);
      let max = 0;
      for (let c = c0; c < c1; c++) max = Math.max(max, Math.abs(row[c]!));
      const s = max > 0 ? Math.fround(max / 127) : 1;
      scales[r * groups + gi] = s;
      for (let c = c0; c < c1; c++) {
        const y = row[c]! / s;
        const q = Math.max(-127, Math.min(127, Math.sign(y) * Math.round(Math.abs(y))));
        data[o + c] = q;
      }
    }
  }
}

/** Largest |dequantized - original| allowed per element: half a quantization step of its group. */
export function int8StepBound(q: Weight, row: number, col: number): number {
  const g = q.groupSize ?? q.cols;
  const groups = g >= q.cols ? 1 : Math.ceil(q.cols / g);
  return q.scales![row * groups + Math.floor(col / g)]! / 2;
}
