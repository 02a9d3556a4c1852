/**
 * KIVI quantization of KV cache rows (Liu et al. 2024), asymmetric, 4 or 2 bits:
 *   - keys per channel, in groups of G consecutive rows: one scale and zero point per (group, channel);
 *   - values per row, in groups of G consecutive channels: one scale and zero point per (row, channel group).
 * x ~ zero + scale * code, code = round((x - min) / scale) in [0, 2^bits - 1], zero = min, scale = (max - min) /
 * (2^bits - 1) over the group, so every element is within scale / 2 of its value (plus fp32 rounding).
 * Codes are packed little end first: with 4 bits, channel 2i in the low nibble of byte i; with 2 bits, channel 4i + s
 * in bits 2s..2s+1. Scales and zero points are fp32.
 */

export type KvQuantBits = 4 | 2;

/**
 * The quantized rows [0, rows) of one KV head, as attention reads them. `rows` is a multiple of `group`.
 * kScale/kZero: [rows / group, d]; vScale/vZero: [rows, ceil(d / group)]; codes: [rows, d * bits / 8] bytes.
 */
export interface QuantizedKvRows {
  readonly bits: KvQuantBits;
  readonly group: number;
  rows: number;
  kCodes: Uint8Array;
  vCodes: Uint8Array;
  kScale: Float32Array;
  kZero: Float32Array;
  vScale: Float32Array;
  vZero: Float32Array;
}

/** Bytes of one row's packed codes (keys or values alone). */
export function packedRowBytes(d: number, bits: KvQuantBits): number {
  return (d * bits) / 8;
}

/** Channel groups of a value row. */
export function valueGroups(d: number, group: number): number {
  return Math.ceil(d / group);
}

/** Throws unless rows of d channels pack into whole bytes and the group is a positive integer. */
export function checkQuantShape(d: number, bits: KvQuantBits, group: number): void {
  if (!Number.isInteger(group) || group < 1) throw new RangeError(`KV quantization group must be a positive integer, got ${group}`);
  if ((d * bits) % 8 !== 0) throw new RangeError(`KV quantization: a head of ${d} channels does not pack into whole bytes at ${bits} bits`);
}

function levels(bits: KvQuantBits): number {
  return (1 << bits) - 1;
}

function putCode(codes: Uint8Array, rowByte: number, c: number, bits: KvQuantBits, code: number): void {
  const perByte = 8 / bits;
  const at = rowByte + Math.floor(c / perByte);
  const shift = (c % perByte) * bits;
  codes[at] = (codes[at]! & ~(levels(bits) << shift)) | (code << shift);
}

export function getCode(codes: Uint8Array, rowByte: number, c: number, bits: KvQuantBits): number {
  const perByte = 8 / bits;
  return (codes[rowByte + Math.floor(c / perByte)]! >> ((c % perByte) * bits)) & levels(bits);
}

/** Scale and zero point of values spanning [min, max]; a constant group gets scale 0 (every code 0). */
function scaleOf(min: number, max: number, bits: KvQuantBits): number {
  return Math.fround((max - min) / levels(bits));
}

function codeOf(x: number, zero: number, scale: number, bits: KvQuantBits): number {
  if (!(scale > 0)) return 0;
  const c = Math.round((x - zero) / scale);
  return c < 0 ? 0 : c > levels(bits) ? levels(bits) : c;
}

/**
 * Quantizes `group` key rows src[srcOff + r * d + c] (r < group) per channel into key group `gi` of q: codes of rows
 * gi * group .. + group, and kScale/kZero [gi, d].
 */
export function quantizeKeyGroup(q: QuantizedKvRows, d: number, gi: number, src: Float32Array, srcOff: number): void {
  const { bits, group } = q;
  const rb = packedRowBytes(d, bits);
  for (let c = 0; c < d; c++) {
    let min = Infinity;
    let max = -Infinity;
    for (let r = 0; r < group; r++) {
      const x = src[srcOff + r * d + c]!;
      if (x < min) min = x;
      if (x > max) max = x;
    }
    if (!(min <= max)) min = max = NaN;
    const scale = scaleOf(min, max, bits);
    q.kScale[gi * d + c] = scale;
    q.kZero[gi * d + c] = min;
    for (let r = 0; r < group; r++) putCode(q.kCodes, (gi * group + r) * rb, c, bits, codeOf(src[srcOff + r * d + c]!, min, scale, bits));
  }
}

/** Quantizes one value row src[srcOff .. + d] per channel group into row `row` of q. */
export function quantizeValueRow(q: QuantizedKvRows, d: number, row: number, src: Float32Array, srcOff: number): void {
  const { bits, group } = q;
  const rb = packedRowBytes(d, bits);
  const ng = valueGroups(d, group);
  for (let g = 0; g < ng; g++) {
    const c0 = g * group;
    const c1 = Math.min(d, c0 + group);
    let min = Infinity;
    let max = -Infinity;
    for (let c = c0; c < c1; c++) {
      const x = src[srcOff + c]!;
      if (x < min) min = x;
      if (x > max) max = x;
    }
    if (!(min <= max)) min = max = NaN;
    const scale = scaleOf(min, max, bits);
    q.vScale[row * ng + g] = scale;
    q.vZero[row * ng + g] = min;
    for (let c = c0; c < c1; c++) putCode(q.vCodes, row * rb, c, bits, codeOf(src[srcOff + c]!, min, scale, bits));
  }
}

/** Dequantized keys of quantized rows [from, to) into out[outOff ..] ([to - from, d]). */
export function dequantizeKeys(q: QuantizedKvRows, d: number, from: number, to: number, out: Float32Array, outOff = 0): void {
  const rb = packedRowBytes(d, q.bits);
  for (let r = from; r < to; r++) {
    const m = Math.floor(r / q.group) * d;
    for (let c = 0; c < d; c++) out[outOff + (r - from) * d + c] = q.kZero[m + c]! + q.kScale[m + c]! * getCode(q.kCodes, r * rb, c, q.bits);
  }
}

/** Dequantized values of quantized rows [from, to) into out[outOff ..] ([to - from, d]). */
export function dequantizeValues(q: QuantizedKvRows, d: number, from: number, to: number, out: Float32Array, outOff = 0): void {
  const rb = packedRowBytes(d, q.bits);
  const ng = valueGroups(d, q.group);
  for (let r = from; r < to; r++) {
    for (let c = 0; c < d; c++) {
      const m = r * ng + Math.floor(c / q.group);
      out[outOff + (r - from) * d + c] = q.vZero[m]! + q.vScale[m]! * getCode(q.vCodes, r * rb, c, q.bits);
    }
  }
}

/** Bytes held by `rows` quantized rows (a multiple of the group): codes, scales and zero points of keys and values. */
export function quantizedBytes(rows: number, d: number, bits: KvQuantBits, group: number): number {
  return rows * 2 * packedRowBytes(d, bits) + (rows / group) * d * 2 * 4 + rows * valueGroups(d, group) * 2 * 4;
}

/** Keys and values of a head view's rows [0, len) as fp32: packed rows dequantized, then the fp32 residual. */
export function dequantizedHead(h: { k: Float32Array | Uint16Array; v: Float32Array | Uint16Array; len: number; quant?: QuantizedKvRows }, d: number): { k: Float32Array; v: Float32Array } {
  const q = h.quant!;
  const k = new Float32Array(h.len * d);
  const v = new Float32Array(h.len * d);
  dequantizeKeys(q, d, 0, q.rows, k, 0);
  dequantizeValues(q, d, 0, q.rows, v, 0);
  k.set((h.k as Float32Array).subarray(0, (h.len - q.rows) * d), q.rows * d);
  v.set((h.v as Float32Array).subarray(0, (h.len - q.rows) * d), q.rows * d);
  return { k, v };
}
