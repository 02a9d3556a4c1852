import { KvCacheLayoutError } from '../tensor/kvlab-error.ts';

/**
 * Throws unless `channels` is a non-empty, strictly increasing list of channels in [0, headDim) and, when the
 * head is already pruned, a subset of the channels it keeps.
 */
export function checkKeyChannels(channels: Int32Array, headDim: number, current: Int32Array | null): void {
  if (channels.length === 0) throw new KvCacheLayoutError('key-channel pruning must keep at least one channel');
  let prev = -1;
  for (const c of channels) {
    if (!Number.isInteger(c) || c <= prev || c >= headDim) {
      throw new KvCacheLayoutError(`kept key channels must be strictly increasing integers in [0, ${headDim}); got ${c} after ${prev}`);
    }
    prev = c;
  }
  if (current) {
    const held = new Set(current);
    const lost = channels.find((c) => !held.has(c));
    if (lost !== undefined) throw new KvCacheLayoutError(`key channel ${lost} was pruned before and cannot come back`);
  }
}

/** [offset in the stored row, first channel, width] of each run of adjacent kept channels. */
export function contiguousRuns(channels: Int32Array): [number, number, number][] {
  const runs: [number, number, number][] = [];
  for (let i = 0; i < channels.length; ) {
    let j = i + 1;
    while (j < channels.length && channels[j] === channels[j - 1]! + 1) j++;
    runs.push([i, channels[i]!, j - i]);
    i = j;
  }
  return runs;
}

/** Rows [n, headDim] -> their kept channels [n, channels.length]. */
export function gatherChannels(rows: Float32Array, channels: Int32Array, headDim: number): Float32Array {
  const n = rows.length / headDim;
  const kd = channels.length;
  const out = new Float32Array(n * kd);
  for (let i = 0; i < n; i++) for (let c = 0; c < kd; c++) out[i * kd + c] = rows[i * headDim + channels[c]!]!;
  return out;
}

/** Kept channels [n, channels.length] -> rows [n, headDim] with zeros in the pruned channels. */
export function scatterChannels(kept: Float32Array, channels: Int32Array, headDim: number): Float32Array {
  const kd = channels.length;
  const n = kept.length / kd;
  const out = new Float32Array(n * headDim);
  for (let i = 0; i < n; i++) for (let c = 0; c < kd; c++) out[i * headDim + channels[c]!] = kept[i * kd + c]!;
  return out;
}
