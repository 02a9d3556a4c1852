/**
 * The compute interface the model forward pass is written against. Activations are always fp32
 * (Float32Array, row-major). Weights keep their checkpoint dtype; matmul widens them on the fly.
 * Two implementations: `reference` (pure TypeScript, the oracle) and `native` (C++ addon).
 */

import type { QuantizedKvRows } from './kv-quant.ts';

export type WeightDType = 'f32' | 'bf16' | 'f16' | 'int8';

/** A 2-D linear weight in Hugging Face layout: [rows = out features, cols = in features]. */
export interface Weight {
  readonly name: string;
  readonly dtype: WeightDType;
  readonly rows: number;
  readonly cols: number;
  /** f32 -> Float32Array, bf16/f16 -> Uint16Array (raw bits), int8 -> Int8Array; row-major [rows, cols]. */
  readonly data: Float32Array | Uint16Array | Int8Array;
  /** int8 only: one scale per (row, group); groups of `groupSize` consecutive columns. */
  readonly scales?: Float32Array;
  readonly groupSize?: number;
}

/** KV cache rows: fp32 values, or a bf16 cache's bits in a Uint16Array (widened exactly wherever they are read). */
export type KvRows = Float32Array | Uint16Array;

/**
 * One KV head's cache as attention reads it: rows [0, len) of k and v ([cap, headDim]) and their absolute
 * positions. k and v are both fp32 or both bf16, and so are all the heads of one call.
 */
export interface KvHeadView {
  k: KvRows;
  v: KvRows;
  pos: Int32Array;
  len: number;
  /**
   * A quantized (int4 / int2) head: rows [0, quant.rows) packed here (tensor/kv-quant.ts), and k, v (fp32) hold rows
   * [quant.rows, len) from their start. All heads of one call are quantized alike or not at all.
   */
  quant?: QuantizedKvRows;
  /**
   * A channel-pruned head (ThinK): k holds only these key channels (ascending) of each row, k's rows are
   * keyChannels.length wide, and q.k runs over them alone (scale unchanged). v keeps headDim. Not with quant.
   */
  keyChannels?: Int32Array | null;
}

/** Per-key attention statistics over a chosen set of queries, accumulated across calls. */
export interface AttentionStats {
  /** Query rows i >= fromQuery contribute (use 0 for all queries, nq - w for a window of w). */
  fromQuery: number;
  /** Per KV head, length >= that head's len: running max of softmax probabilities over the group's query heads. */
  max?: Float32Array[];
  /** Per KV head: running sum of softmax probabilities over the group's query heads and the chosen queries. */
  sum?: Float32Array[];
  /** Optional per-query-row factor applied to probabilities before they are accumulated (length nq). */
  queryWeight?: Float32Array;
}

export interface AttentionArgs {
  /** Post-RoPE queries [nq, nHeads, headDim]. */
  q: Float32Array;
  /** Output [nq, nHeads, headDim], or null to compute statistics only. */
  out: Float32Array | null;
  nq: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /**
   * Absolute position of each query; key j of a head is visible to query i iff pos[j] <= qPos[i] (and, with a
   * window, qPos[i] - pos[j] < window).
   */
  qPos: Int32Array;
  /**
   * Sliding window (Mistral): a query sees only keys less than `window` positions behind it. The mask is on
   * positions, not cache indices, so evicted rows do not move it. Absent: full causal attention.
   */
  window?: number;
  /** One view per KV head; query head h reads KV head floor(h / (nHeads / nKvHeads)). */
  heads: KvHeadView[];
  /**
   * Optional rows read before each head's own, one view per KV head (a shared read-only context): keys of both
   * take part in one softmax, as if the head held the prefix's rows followed by its own. Same dtype as heads.
   * Not combined with stats.
   */
  prefix?: KvHeadView[];
  scale: number;
  stats?: AttentionStats;
}

/** Rotary tables: inverse frequencies for the first half of each head (HF "rotate_half" layout). */
export interface RopeTable {
  readonly headDim: number;
  /** Length headDim / 2, scaling (e.g. llama3) already applied. */
  readonly invFreq: Float32Array;
  /** Multiplier applied to cos and sin (1 unless a scaling type says otherwise). */
  readonly attentionScaling: number;
}

export interface Backend {
  readonly name: 'reference' | 'native';
  /** One line saying what runs (e.g. the active CPU paths and thread count). */
  describe(): string;
  /** out[n, w.rows] = x[n, w.cols] · wᵀ */
  matmul(out: Float32Array, x: Float32Array, n: number, w: Weight): void;
  /** Row-wise RMSNorm over rows of length dim: out = x / sqrt(mean(x²) + eps) * weight. out may alias x. */
  rmsnorm(out: Float32Array, x: Float32Array, n: number, dim: number, weight: Float32Array, eps: number): void;
  /** In place on x [n, nHeads, headDim]; row i rotated by angle positions[i] * invFreq. */
  rope(x: Float32Array, n: number, nHeads: number, positions: Int32Array, table: RopeTable): void;
  /** out[i] = silu(gate[i]) * up[i] for i < len. out may alias gate. */
  siluMul(out: Float32Array, gate: Float32Array, up: Float32Array, len: number): void;
  /** out[n, w.cols] = rows ids of an embedding table (any weight dtype). */
  embedding(out: Float32Array, table: Weight, ids: Int32Array): void;
  /** Scaled dot-product attention over ragged per-head caches with position masking, fp32 softmax. */
  attention(args: AttentionArgs): void;
  /** out[i] = a[i] + b[i] for i < len, rounded to fp32. out may alias a or b. */
  add(out: Float32Array, a: Float32Array, b: Float32Array, len: number): void;
  /** x[i, c] += bias[c] over n rows of width bias.length. */
  addRowBias(x: Float32Array, n: number, bias: Float32Array): void;
  /**
   * dst[dstOffset + i * width + c] = src[srcOffset + i * srcStride + c] for i < rows, c < width; into a bf16 dst
   * (Uint16Array) each value is rounded to the nearest bf16, ties to even.
   */
  copyRows(dst: KvRows, dstOffset: number, src: Float32Array, srcOffset: number, srcStride: number, rows: number, width: number): void;
  /**
   * A backend whose calls are recorded instead of run, and a run() that executes them in order off the JS
   * thread; absent where the backend cannot do that. Arrays named in recorded calls must not be touched
   * until run() settles.
   */
  recordStep?(): StepRecording;
}

/** Thrown while recording a step that uses a call the backend can only run synchronously: run the step with forward(). */
export class StepNotRecordableError extends Error {}

export interface StepRecording {
  readonly backend: Backend;
  run(): Promise<void>;
}
