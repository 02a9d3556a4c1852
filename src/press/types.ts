import type { KvCache } from '../cache/kv-cache.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';

/** Scores per [layer][kvHead], one per position of the scored span (span-relative index). Higher = keep. */
export type Scores = Float32Array[][];

/** A half-open range of cache rows (= sequence positions before any compression). */
export interface Span {
  start: number;
  end: number;
}

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

/** Everything a scorer may read; the cache is prefilled and not yet compressed (row index = position). */
export interface ScoringContext {
  lm: LoadedModel;
  cache: KvCache;
  /** All prefilled token ids (template prefix, then the context). */
  ids: number[];
  /** Rows whose scores are asked for. */
  span: Span;
  /** Rows of the template prefix (system turn and user header), never evicted. */
  prefix: Span;
  /** The chat template's end-of-user-turn + assistant header, as text. */
  suffix: string;
  /** What opens a query after the span: "\n\n" inside a user turn, or the template's user header after a system turn. */
  queryLead: string;
  /**
   * Which keys attention-based scorers may see: all causally visible keys (the ordinary case), or only the
   * span's own keys (span-local scoring for fair eviction).
   */
  keys: 'causal' | 'span';
  capture: PrefillCapture;
  onProgress?: (done: number, total: number) => void;
}

export interface Scorer {
  readonly name: string;
  readonly needs?: CaptureNeeds;
  score(ctx: ScoringContext): Scores;
}

/** Decides how many and which rows of the span each (layer, KV head) keeps. */
export interface BudgetPolicy {
  readonly name: string;
  /** Returns span-relative indices to keep per [layer][head], ascending. */
  select(scores: Scores, ratio: number): Int32Array[][];
}
