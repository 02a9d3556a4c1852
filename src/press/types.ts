import type { KvCache } from '../cache/kv-cache.ts';
import type { CaptureNeeds, PrefillCapture } from '../model/capture.ts';
import type { ModelConfig } from '../model/config.ts';
import type { LayerCapture } from '../model/llama.ts';
import type { Span } from '../model/prompt-layout.ts';
import type { KvHeadView } from '../tensor/backend.ts';

export type { CaptureNeeds, PrefillCapture, QueryMoments } from '../model/capture.ts';
export type { Span } from '../model/prompt-layout.ts';

/**
 * Scores per [layer][kvHead], one per position of the scored span (span-relative index). Higher = keep.
 * Two-stage methods attach further score sets of the same shape by name in `stages` (CriticalKV's
 * first-stage ranking, Compactor's leverage scores), read by their budget policy; iterative ones a `rescore`.
 */
export type Scores = Float32Array[][] & {
  stages?: Record<string, Float32Array[][]>;
  /** Scores of a subset of the span's rows (span-relative, ascending) as if they were its only rows (Block). */
  rescore?: (layer: number, head: number, rows: Int32Array) => Float32Array;
};

/**
 * The model as scorers see it: its shapes, its tokenizer, attention statistics over chosen keys, and runs of
 * a prompt on top of a cache. Nothing here changes the weights or the session.
 */
export interface ScoringModel {
  readonly config: ModelConfig;
  /** Identifies the weights (and cache dtype), for results saved per model such as KVzip head scores. */
  readonly fingerprint: string;
  /** RoPE inverse frequencies of the first half of a head, scaling applied. */
  readonly ropeInvFreq: Float32Array;
  encode(text: string): number[];
  /**
   * Attention of post-RoPE queries [nq, nHeads, headDim] at positions qPos over the given KV head views (query
   * head h reads view floor(h / (nHeads / views))): per view, the sum or the max over the group's query heads
   * and the queries of each key's softmax probability, times queryWeight[i] of query row i when given.
   */
  attentionStats(
    q: Float32Array,
    qPos: Int32Array,
    heads: KvHeadView[],
    reduce: 'sum' | 'max',
    opts?: { nHeads?: number; queryWeight?: Float32Array },
  ): Float32Array[];
  /** Runs ids through the model on top of the cache, calling onLayer per layer; the new rows stay (the caller truncates). */
  run(cache: KvCache, ids: number[], onLayer: (c: LayerCapture) => void): void;
  /**
   * ||W_O^h v_j|| for query head h of a layer and value rows [n, headDim]: what head h writes into the
   * residual (the L2 norm, or the L1 norm with p = 1).
   */
  outputNorms(layer: number, head: number, values: Float32Array, n: number, p?: 1 | 2): Float64Array;
  /** Scores another text laid out as a context in the user turn, prefilled in a cache of its own. */
  scoreText(text: string, scorer: Scorer): Scores;
}

/** Everything a scorer may read; the cache is prefilled and not yet compressed (row index = position). */
export interface ScoringContext {
  lm: ScoringModel;
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
  /** What the scores favour, in a few words (the method's describe string starts with it). */
  readonly summary: string;
  /** The settings the scores depend on, printed after the summary. */
  readonly options?: Readonly<Record<string, number | string | boolean>>;
  readonly needs?: CaptureNeeds;
  score(ctx: ScoringContext): Scores;
}

/**
 * How many rows a budget policy keeps, stated at the finest level it fixes: per (layer, head) in order, per
 * (layer, head) as a multiset (which heads get which count depends on the scores), per layer, or in total.
 */
export interface KeptCounts {
  level: 'head' | 'head-multiset' | 'layer' | 'total';
  counts: number[];
}

/** Decides how many and which rows of the span each (layer, KV head) keeps. */
export interface BudgetPolicy {
  readonly name: string;
  /** Returns span-relative indices to keep per [layer][head], ascending. */
  select(scores: Scores, ratio: number): Int32Array[][];
  /** What select keeps of a span of T rows in a cache of layers x heads, whatever the scores. */
  expectedKept(layers: number, heads: number, T: number, ratio: number): KeptCounts;
}
