import type { HeadStore } from '../cache/kv-cache.ts';
import type { Scores, ScoringContext } from './types.ts';

/** One (layer, KV head) of the scored span, as a per-head formula reads it. */
export class HeadSpan {
  private keyRows?: Float32Array[];
  private valueRows?: Float32Array[];

  constructor(
    readonly ctx: ScoringContext,
    readonly layer: number,
    readonly head: number,
    /** The head's whole cache (rows = positions; the span is rows [ctx.span.start, ctx.span.end)). */
    readonly store: HeadStore,
    /** Absolute position of each span row. */
    readonly positions: Int32Array,
  ) {}

  /** Span length T. */
  get length(): number {
    return this.positions.length;
  }

  /** The span's keys (post-RoPE), one fp32 row of headDim per position. */
  get keys(): Float32Array[] {
    return (this.keyRows ??= splitRows(this.store.keys(this.ctx.span.start, this.ctx.span.end), this.store.headDim));
  }

  /** The span's values, one fp32 row of headDim per position. */
  get values(): Float32Array[] {
    return (this.valueRows ??= splitRows(this.store.values(this.ctx.span.start, this.ctx.span.end), this.store.headDim));
  }
}

/**
 * Scores from a formula applied to each (layer, KV head) in turn, layer by layer: the formula returns one
 * score per span position (higher = keep). Methods whose score is one formula per head are written with it.
 */
export function perHead(ctx: ScoringContext, formula: (head: HeadSpan) => ArrayLike<number>): Scores {
  const { span } = ctx;
  const positions = Int32Array.from({ length: span.end - span.start }, (_, j) => span.start + j);
  return ctx.cache.heads.map((stores, layer) =>
    stores.map((store, head) => {
      const s = formula(new HeadSpan(ctx, layer, head, store, positions));
      if (s.length !== positions.length) {
        throw new Error(`a per-head score gave ${s.length} scores for a span of ${positions.length} (layer ${layer}, head ${head})`);
      }
      return s instanceof Float32Array ? s : Float32Array.from(s);
    }),
  );
}

function splitRows(rows: Float32Array, d: number): Float32Array[] {
  return Array.from({ length: rows.length / d }, (_, j) => rows.subarray(j * d, (j + 1) * d));
}

/** Euclidean norm, accumulated in double precision. */
export function norm(x: ArrayLike<number>): number {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i]! ** 2;
  return Math.sqrt(ss);
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}
