import { perHead } from '../per-head.ts';
import type { Scorer } from '../types.ts';

export type LeverageType = 'key' | 'value' | 'kv_avg' | 'kv_product';

export interface CurOptions {
  /** Rows at absolute positions below nSink score 1 (the sequence's attention sinks). */
  nSink?: number;
  leverage?: LeverageType;
  /** Squared norms are normalized within windows of this many span rows (local leverage approximation). */
  window?: number;
}

/**
 * CUR / CurDKV (Sengupta et al. 2025, arXiv 2509.15038): approximate leverage scores of the key and value
 * rows. Per head: k2_j = ||k_j||^2 and v2_j = ||v_j||^2, each divided by its sum over a local window of
 * `window` rows (windows tile the span from its start); the score is k2 * v2 (kv_product), k2, v2 or their
 * mean, divided by its sum over the span; sinks score 1. Defaults (kvpress): nSink 4, kv_product, window 16,
 * no random projection.
 */
export function curScorer({ nSink = 4, leverage = 'kv_product', window = 16 }: CurOptions = {}): Scorer {
  if (!(Number.isInteger(window) && window >= 1)) throw new RangeError(`CUR window must be a positive integer, got ${window}`);
  return {
    summary: 'CUR: approximate leverage of key and value rows',
    options: { nSink, leverage, window },
    score: (ctx) =>
      perHead(ctx, ({ keys, values, positions }) => {
        const k2 = localShares(keys.map(squaredNorm), window);
        const v2 = localShares(values.map(squaredNorm), window);
        const s = k2.map((k, j) => combine(leverage, k, v2[j]!));
        const total = s.reduce((a, b) => a + b, 0);
        return s.map((x, j) => (positions[j]! < nSink ? 1 : x / total));
      }),
  };
}

function combine(type: LeverageType, k: number, v: number): number {
  switch (type) {
    case 'key':
      return k;
    case 'value':
      return v;
    case 'kv_avg':
      return (k + v) / 2;
    case 'kv_product':
      return k * v;
  }
}

function squaredNorm(x: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! ** 2;
  return s;
}

/** Each value divided by the sum over its window of w (windows tile from index 0). */
function localShares(x: number[], w: number): number[] {
  return x.map((v, j) => {
    const from = j - (j % w);
    let sum = 0;
    for (let t = from; t < Math.min(x.length, from + w); t++) sum += x[t]!;
    return v / sum;
  });
}
