import { perHead } from '../per-head.ts';
import type { Scorer } from '../types.ts';

export interface LagKvOptions {
  /** Rows at the start of the span always kept (score 1). */
  nSink?: number;
  /** Partition length: each partition is scored against the one after it. */
  lagSize?: number;
}

/**
 * LagKV (Liang et al. 2025, arXiv 2504.04704): after nSink rows the span is cut into partitions of lagSize;
 * partition i is scored against partition i + 1 (its lag reference). Per channel, a row's key is scaled
 * by the reference's min and max, (x - min) / (max - min); the row's statistic is the standard deviation
 * (n - 1) of that over channels; a softmax over the partition's rows gives a key score, the same for the
 * values gives a value score, and their mean is ranked within the partition: score = rank / lagSize (0 the
 * lowest). The last partition (with the remainder) has no reference and scores 1, as do the sinks. A span
 * shorter than nSink + 2 lagSize scores by recency. Defaults (kvpress): nSink 4, lagSize 128.
 */
export function lagKvScorer({ nSink = 4, lagSize = 128 }: LagKvOptions = {}): Scorer {
  if (!(Number.isInteger(lagSize) && lagSize >= 2)) throw new RangeError(`LagKV lag size must be an integer >= 2, got ${lagSize}`);
  return {
    summary: 'LagKV: keys and values scaled by the next partition, ranked by their spread',
    options: { nSink, lagSize },
    score: (ctx) => perHead(ctx, ({ keys, values, length: T }) => lagKvHead(keys, values, T, nSink, lagSize)),
  };
}

export function lagKvHead(keys: Float32Array[], values: Float32Array[], T: number, nSink: number, lag: number): Float32Array {
  const out = new Float32Array(T).fill(1);
  if (T < nSink + 2 * lag) {
    for (let j = nSink; j < T; j++) out[j] = (j - nSink) / (T - nSink);
    return out;
  }
  const partitions = Math.floor((T - nSink) / lag);
  for (let i = 0; i + 1 < partitions; i++) {
    const from = nSink + i * lag;
    const ks = spreadSoftmax(keys, from, from + lag, lag);
    const vs = spreadSoftmax(values, from, from + lag, lag);
    const mean = ks.map((k, r) => (k + vs[r]!) / 2);
    const order = Array.from({ length: lag }, (_, r) => r).sort((a, b) => mean[a]! - mean[b]! || a - b);
    order.forEach((r, rank) => (out[from + r] = rank / lag));
  }
  return out;
}

/** Softmax over rows [from, from + lag) of the channel spread of each row scaled by rows [ref, ref + lag). */
function spreadSoftmax(rows: Float32Array[], from: number, ref: number, lag: number): Float64Array {
  const d = rows[0]!.length;
  const min = new Float64Array(d).fill(Infinity);
  const max = new Float64Array(d).fill(-Infinity);
  for (let r = ref; r < ref + lag; r++)
    for (let c = 0; c < d; c++) {
      const x = rows[r]![c]!;
      if (x < min[c]!) min[c] = x;
      if (x > max[c]!) max[c] = x;
    }
  const spread = new Float64Array(lag);
  for (let r = 0; r < lag; r++) {
    const scaled = Float64Array.from(rows[from + r]!, (x, c) => (x - min[c]!) / Math.max(max[c]! - min[c]!, 1e-12));
    const mean = scaled.reduce((a, b) => a + b, 0) / d;
    spread[r] = Math.sqrt(scaled.reduce((a, x) => a + (x - mean) ** 2, 0) / (d - 1));
  }
  const top = Math.max(...spread);
  const e = spread.map((s) => Math.exp(s - top));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}
