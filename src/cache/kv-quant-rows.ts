/**
 * How a quantized KV head changes its packed rows: quantizing groups once they leave the residual window, and
 * eviction (keep) inside key groups.
 *
 * Eviction rule: a key group spans G rows, so keeping some of its rows changes the group. Kept rows are compacted
 * in order; the leading groups kept whole (and so still aligned) are copied as they are; from the first group
 * that loses a row on, the kept packed rows are dequantized and their keys re-quantized in new groups of G (a new
 * group's range lies within the ranges of the old groups it draws from, so each key element moves by at most
 * half its new group's scale on top of its earlier error). Values are quantized per row, so a kept row's value
 * codes, scale and zero point move with it unchanged. Kept packed rows that do not fill a last whole group go to
 * the residual dequantized (no new error), ahead of the kept residual rows; settle() then quantizes whole groups
 * again once the residual is long enough. The residual is never half-quantized.
 */
import { dequantizeKeys, packedRowBytes, quantizeKeyGroup, quantizeValueRow, valueGroups } from '../tensor/kv-quant.ts';
import type { HeadStore } from './kv-cache.ts';

/** Quantizes the head's complete groups older than its residual window; returns whether any were. */
export function quantizeSettledRows(h: HeadStore): boolean {
  const q = h.quant!;
  const { group: G, residual: R } = h.quantOptions;
  const held = h.len - q.rows;
  const n = Math.floor(Math.max(0, held - R) / G);
  if (n === 0) return false;
  const d = h.headDim;
  const q0 = q.rows;
  const k = h.k as Float32Array;
  const v = h.v as Float32Array;
  q.reserve(q0 + n * G);
  for (let g = 0; g < n; g++) {
    quantizeKeyGroup(q, d, q0 / G + g, k, g * G * d);
    for (let r = 0; r < G; r++) quantizeValueRow(q, d, q0 + g * G + r, v, (g * G + r) * d);
  }
  const moved = n * G;
  k.copyWithin(0, moved * d, held * d);
  v.copyWithin(0, moved * d, held * d);
  q.rows = q0 + moved;
  return true;
}

/** keep() of a quantized head (indices already checked): see the eviction rule above. */
export function keepQuantizedRows(h: HeadStore, indices: ArrayLike<number>): void {
  const q = h.quant!;
  const G = q.group;
  const d = h.headDim;
  const Q = q.rows;
  const rb = packedRowBytes(d, q.bits);
  const ng = valueGroups(d, G);
  const n = indices.length;
  // Leading key groups kept whole stay as they are.
  let whole = 0;
  while ((whole + 1) * G <= Math.min(n, Q) && indices[(whole + 1) * G - 1] === (whole + 1) * G - 1) whole++;
  let packedKept = whole * G;
  while (packedKept < n && indices[packedKept]! < Q) packedKept++;
  const tail = packedKept - whole * G;
  const regroup = Math.floor(tail / G) * G;
  const toResidual = tail - regroup;
  // Kept packed rows past the whole groups: their keys dequantized, their value codes moved.
  const keys = new Float32Array(tail * d);
  for (let r = 0; r < tail; r++) dequantizeKeys(q, d, indices[whole * G + r]!, indices[whole * G + r]! + 1, keys, r * d);
  const residualValues = new Float32Array(toResidual * d);
  for (let r = 0; r < toResidual; r++) {
    const i = indices[whole * G + regroup + r]!;
    residualValues.set(h.values(i, i + 1), r * d);
  }
  for (let r = 0; r < regroup; r++) {
    const src = indices[whole * G + r]!;
    const dst = whole * G + r;
    q.vCodes.copyWithin(dst * rb, src * rb, (src + 1) * rb);
    q.vScale.copyWithin(dst * ng, src * ng, (src + 1) * ng);
    q.vZero.copyWithin(dst * ng, src * ng, (src + 1) * ng);
  }
  for (let g = 0; g < regroup / G; g++) quantizeKeyGroup(q, d, whole + g, keys, g * G * d);
  // The residual: the dequantized tail of the packed rows, then the kept residual rows.
  const k = h.k as Float32Array;
  const v = h.v as Float32Array;
  const keptResidual = n - packedKept;
  const resKeys = new Float32Array((toResidual + keptResidual) * d);
  const resValues = new Float32Array((toResidual + keptResidual) * d);
  resKeys.set(keys.subarray(regroup * d, tail * d));
  resValues.set(residualValues);
  for (let r = 0; r < keptResidual; r++) {
    const i = indices[packedKept + r]! - Q;
    resKeys.set(k.subarray(i * d, (i + 1) * d), (toResidual + r) * d);
    resValues.set(v.subarray(i * d, (i + 1) * d), (toResidual + r) * d);
  }
  for (let r = 0; r < n; r++) h.pos[r] = h.pos[indices[r]!]!;
  q.rows = (whole * G) + regroup;
  h.len = n;
  h.reserveExact(n);
  (h.k as Float32Array).set(resKeys);
  (h.v as Float32Array).set(resValues);
}
