import type { KvCache } from '../cache/kv-cache.ts';
import type { AttentionStats } from '../tensor/backend.ts';
import type { LlamaModel } from './llama.ts';
import { prefill, type PrefillOptions } from './prefill.ts';
import type { Span } from './prompt-layout.ts';

/** What a scorer wants recorded while the context is prefilled. */
export interface CaptureNeeds {
  /** Post- and pre-RoPE queries of these absolute positions, per layer. */
  queryPositions?: (span: Span, sequenceLength: number) => number[];
  /** Online sum of attention probabilities over every prefill query, per (layer, KV head, key). */
  observedAttention?: boolean;
  /** Running mean and covariance of pre-RoPE queries per query head, over positions >= skipFirst. */
  queryMoments?: { skipFirst: number };
}

/** Per layer: mean [nHeads, d] and covariance [nHeads, d, d] of pre-RoPE queries over `count` positions. */
export interface QueryMoments {
  count: number;
  mean: Float64Array[];
  cov: Float64Array[];
}

/** What the prefill recorded for the scorers. */
export interface PrefillCapture {
  /** Captured query positions, ascending. */
  queryPositions: Int32Array;
  /** Per layer: post-RoPE queries [nPositions, nHeads, headDim]. */
  queries: Float32Array[];
  /** Per layer: pre-RoPE queries [nPositions, nHeads, headDim]. */
  queriesPreRope: Float32Array[];
  /** Per layer, per KV head: sum over prefill queries of attention probabilities (index = cache row). */
  observedSum?: Float32Array[][];
  queryMoments?: QueryMoments;
}

/**
 * Prefills ids into an empty cache while recording what the scorers need: queries at chosen positions
 * (pre- and post-RoPE) for each span a scorer may be asked about and, if asked, the observed attention
 * every key receives.
 */
export function capturingPrefill(
  model: LlamaModel,
  cache: KvCache,
  ids: number[],
  spans: Span[],
  needs: CaptureNeeds[],
  opts: Pick<PrefillOptions, 'chunkSize' | 'onProgress'> = {},
): { logits: Float32Array; capture: PrefillCapture } {
  const cfg = model.config;
  const T = ids.length;
  const wanted = new Set<number>();
  for (const need of needs)
    for (const span of spans) for (const p of need.queryPositions?.(span, T) ?? []) if (p >= 0 && p < T) wanted.add(p);
  const queryPositions = Int32Array.from([...wanted].sort((a, b) => a - b));
  const slot = new Map<number, number>();
  queryPositions.forEach((p, i) => slot.set(p, i));
  const rowSize = cfg.numHeads * cfg.headDim;
  const queries = Array.from({ length: cfg.numLayers }, () => new Float32Array(queryPositions.length * rowSize));
  const queriesPreRope = Array.from({ length: cfg.numLayers }, () => new Float32Array(queryPositions.length * rowSize));
  const observed = needs.some((n) => n.observedAttention);
  const observedSum = observed
    ? Array.from({ length: cfg.numLayers }, () => Array.from({ length: cfg.numKvHeads }, () => new Float32Array(T)))
    : undefined;
  const momentsNeed = needs.find((n) => n.queryMoments)?.queryMoments;
  const moments = momentsNeed ? new MomentAccumulator(cfg.numLayers, cfg.numHeads, cfg.headDim, momentsNeed.skipFirst) : undefined;
  const stats: AttentionStats[] | undefined = observedSum?.map((sum) => ({ fromQuery: 0, sum }));

  const logits = prefill(model, cache, ids, {
    ...opts,
    stats: stats ? (l) => stats[l] : undefined,
    onLayer:
      queryPositions.length || moments
        ? (c) => {
          moments?.add(c.layer, c.qPreRope, c.positions);
          for (let i = 0; i < c.n; i++) {
            const s = slot.get(c.positions[i]!);
            if (s === undefined) continue;
            queries[c.layer]!.set(c.q.subarray(i * rowSize, (i + 1) * rowSize), s * rowSize);
            queriesPreRope[c.layer]!.set(c.qPreRope.subarray(i * rowSize, (i + 1) * rowSize), s * rowSize);
          }
        }
      : undefined,
  });
  return { logits, capture: { queryPositions, queries, queriesPreRope, observedSum, queryMoments: moments?.result() } };
}

class MomentAccumulator {
  private count = 0;
  private readonly sum: Float64Array[];
  private readonly outer: Float64Array[];

  constructor(readonly layers: number, readonly heads: number, readonly d: number, readonly skipFirst: number) {
    this.sum = Array.from({ length: layers }, () => new Float64Array(heads * d));
    this.outer = Array.from({ length: layers }, () => new Float64Array(heads * d * d));
  }

  add(layer: number, q: Float32Array, positions: Int32Array): void {
    const { heads, d } = this;
    const sum = this.sum[layer]!;
    const outer = this.outer[layer]!;
    for (let i = 0; i < positions.length; i++) {
      if (positions[i]! < this.skipFirst) continue;
      if (layer === 0) this.count++;
      for (let h = 0; h < heads; h++) {
        const o = (i * heads + h) * d;
        const co = h * d * d;
        for (let a = 0; a < d; a++) {
          const qa = q[o + a]!;
          sum[h * d + a] = sum[h * d + a]! + qa;
          for (let b = 0; b < d; b++) outer[co + a * d + b] = outer[co + a * d + b]! + qa * q[o + b]!;
        }
      }
    }
  }

  result(): QueryMoments {
    const { heads, d, count } = this;
    const n = Math.max(count, 1);
    const mean = this.sum.map((s) => s.map((x) => x / n));
    const cov = this.outer.map((outer, l) => {
      const m = mean[l]!;
      const c = new Float64Array(outer.length);
      for (let h = 0; h < heads; h++)
        for (let a = 0; a < d; a++)
          for (let b = 0; b < d; b++) c[h * d * d + a * d + b] = outer[h * d * d + a * d + b]! / n - m[h * d + a]! * m[h * d + b]!;
      return c;
    });
    return { count, mean, cov };
  }
}
