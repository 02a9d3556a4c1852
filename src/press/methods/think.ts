import type { KvCache } from '../../cache/kv-cache.ts';
import { RatioError } from '../../tensor/kvlab-error.ts';
import type { PrefillCapture } from '../../model/capture.ts';
import type { Span } from '../../model/prompt-layout.ts';
import type { BudgetPolicy, Scorer } from '../types.ts';
import { lastPositions } from '../window-attention.ts';

/**
 * ThinK (Xu et al. 2024, "ThinK: Thinner Key Cache by Query-Driven Pruning", arXiv 2407.21018): prunes key
 * channels, not tokens. Per layer and KV head, channel c scores
 *   score_c = ||Q_w[:, c]||_2 * ||K[:, c]||_2
 * (the Frobenius norm of the rank-one term Q_w[:, c] K[:, c]^T the channel adds to Q K^T), where Q_w stacks the
 * post-RoPE queries of every query head of the group at the last `window` positions of the span (the observation
 * window) and K the head's keys as they are after token eviction (template prefix included). The head keeps its
 * top d - floor(d * keyChannelRatio) channels (ties: the lower channel); its keys keep only those, values are
 * untouched. The ranking is kvpress ThinKPress's (mean of q^2 over window and group times mean of k^2).
 *
 * kvlab stores the kept channels only (HeadStore.pruneKeyChannels): bytes held and read shrink, attention computes
 * q.k over the kept channels (q gathered, scale still 1/sqrt(headDim)). A head's channel set is fixed once pruned:
 * rows appended later (a query, decoded tokens) are stored with the same channels.
 *
 * Composition: `think[R]:<method>` runs the method's token eviction at the requested ratio, then prunes a fraction
 * R of each head's key channels (default 0.5) of the rows kept; `think[R]` alone keeps every row (ratio 1 only) and
 * prunes channels. Defaults: keyChannelRatio 0.5 (kvpress's default is 0, i.e. off; the paper evaluates 0.4 and
 * 0.5), window 32 (kvpress, SnapKV as in KVzip's paper). fp32 and bf16 caches; int4 / int2 caches are refused.
 */
export interface ThinkOptions {
  /** Fraction of each head's key channels pruned, in [0, 1). */
  readonly keyChannelRatio: number;
  /** Observation window: the last `window` positions of the span whose queries vote. */
  readonly window: number;
}

export const THINK_DEFAULTS: ThinkOptions = { keyChannelRatio: 0.5, window: 32 };

export function checkKeyChannelRatio(r: number): number {
  if (!(r >= 0 && r < 1)) throw new RatioError(`ThinK key_channel_ratio must be in [0, 1) (fraction of key channels pruned), got ${r}`);
  return r;
}

/**
 * score_c for one KV head: queries [w, nHeads, d] (the window), the group's query heads [group * kvHead, group *
 * (kvHead + 1)), keys [n, d].
 */
export function channelScores(queries: Float32Array, nHeads: number, kvHead: number, group: number, keys: Float32Array, d: number): Float64Array {
  const w = queries.length / (nHeads * d);
  const q2 = new Float64Array(d);
  for (let i = 0; i < w; i++)
    for (let h = kvHead * group; h < (kvHead + 1) * group; h++) {
      const o = (i * nHeads + h) * d;
      for (let c = 0; c < d; c++) q2[c] = q2[c]! + queries[o + c]! * queries[o + c]!;
    }
  const k2 = new Float64Array(d);
  for (let j = 0; j < keys.length / d; j++) for (let c = 0; c < d; c++) k2[c] = k2[c]! + keys[j * d + c]! * keys[j * d + c]!;
  return q2.map((x, c) => Math.sqrt(x) * Math.sqrt(k2[c]!));
}

/** The d - floor(d * keyChannelRatio) best channels, ascending (ties: the lower channel wins). */
export function keptChannels(scores: Float64Array, keyChannelRatio: number): Int32Array {
  const d = scores.length;
  const keep = d - Math.floor(d * keyChannelRatio + 1e-9);
  const order = Array.from({ length: d }, (_, c) => c).sort((a, b) => scores[b]! - scores[a]! || a - b);
  return Int32Array.from(order.slice(0, keep).sort((a, b) => a - b));
}

/**
 * Prunes every head's key channels by ThinK's rule, with the queries the prefill captured at the span's last
 * `window` positions. A ratio of 0 changes nothing.
 */
export function pruneKeyChannels(cache: KvCache, capture: PrefillCapture, span: Span, nHeads: number, opts: ThinkOptions): void {
  checkKeyChannelRatio(opts.keyChannelRatio);
  if (Math.floor(cache.headDim * opts.keyChannelRatio + 1e-9) === 0) return;
  const d = cache.headDim;
  const group = nHeads / cache.numKvHeads;
  const rowSize = nHeads * d;
  const slots = lastPositions(span, opts.window).map((p) => {
    const i = capture.queryPositions.indexOf(p);
    if (i < 0) throw new Error(`ThinK: the query at position ${p} was not captured during prefill`);
    return i;
  });
  for (let l = 0; l < cache.numLayers; l++) {
    const q = new Float32Array(slots.length * rowSize);
    slots.forEach((s, i) => q.set(capture.queries[l]!.subarray(s * rowSize, (s + 1) * rowSize), i * rowSize));
    cache.layer(l).forEach((hs, h) => {
      const kept = keptChannels(channelScores(q, nHeads, h, group, hs.keys(), d), opts.keyChannelRatio);
      cache.pruneKeyChannels(l, h, kept);
    });
  }
}

/** The inner scorer, also capturing the queries of ThinK's observation window. */
export function thinkScorer(inner: Scorer, window: number): Scorer {
  const innerPositions = inner.needs?.queryPositions;
  return {
    ...inner,
    needs: {
      ...inner.needs,
      queryPositions: (span, T) => [...new Set([...(innerPositions?.(span, T) ?? []), ...lastPositions(span, window)])],
    },
  };
}

/** What `think` alone scores: nothing to choose, every row ties. */
export const noEvictionScorer: Scorer = {
  summary: 'no token eviction',
  score: (ctx) => ctx.cache.heads.map((layer) => layer.map(() => new Float32Array(ctx.span.end - ctx.span.start))),
};

/** `think` alone: every row is kept; a ratio below 1 is refused (compose `think:<method>` to evict tokens too). */
export const everyRowBudget: BudgetPolicy = {
  name: 'every row',
  select(scores, ratio) {
    checkNoEviction(ratio);
    return scores.map((layer) => layer.map((s) => Int32Array.from(s, (_, i) => i)));
  },
  expectedKept(layers, heads, T, ratio) {
    checkNoEviction(ratio);
    return { level: 'head', counts: new Array<number>(layers * heads).fill(T) };
  },
};

function checkNoEviction(ratio: number): void {
  if (ratio !== 1) throw new RatioError(`think alone prunes key channels and keeps every row: its ratio must be 1, got ${ratio}; use think:<method> (e.g. think:snapkv) to evict tokens as well`);
}
