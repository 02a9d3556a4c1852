import { keptCount } from '../budgets.ts';
import { norm, perHead } from '../per-head.ts';
import { stage, withStages } from '../staged-scores.ts';
import { topKIndices } from '../topk.ts';
import type { BudgetPolicy, Scorer, Scores, ScoringContext } from '../types.ts';
import { rotateRow } from './key-rerotation.ts';

export interface CompactorOptions {
  /** Span rows at its start always kept. */
  sinkStart?: number;
  /** Span rows at its end always kept. */
  sinkEnd?: number;
  /** Rows per chunk of the non-causal attention. */
  chunkSize?: number;
  /** Ridge added to X^T X before solving (Compactor's Cholesky jitter). */
  jitter?: number;
}

/**
 * Compactor (Chari & Van Durme 2025, arXiv 2507.08143): a blend of two query-agnostic scores, each z-scored
 * over the layer (all heads and rows, as kvpress does). Leverage: the statistical leverage of each row among
 * the span's pre-RoPE keys, centered, l_j = x_j^T (X^T X + jitter I)^-1 x_j (exact, where the paper and kvpress
 * sketch X with a 48-column Gaussian). Attention: non-causal attention inside chunks of chunkSize rows (each
 * query sees every key of its chunk, softmax(q.k / sqrt(d))), summed over the chunk's queries, mean over the
 * GQA group, times ||v||, average-pooled over 3 rows. Final score = attention + blending * leverage with
 * blending = 1 - ratio (kvpress's default: the compression ratio), so it is applied by compactorBudget; the
 * first sinkStart and last sinkEnd rows are always kept. Defaults (kvpress): sinkStart 8, sinkEnd 4,
 * chunkSize 256, jitter 1e-2. Cost: the prefill records every span query (as Q-Filters), memory that grows
 * with the context.
 */
export function compactorScorer({ sinkStart = 8, sinkEnd = 4, chunkSize = 256, jitter = 1e-2 }: CompactorOptions = {}): Scorer {
  return {
    summary: 'Compactor: key leverage blended with non-causal chunked attention',
    options: { sinkStart, sinkEnd, chunkSize, jitter },
    needs: { queryPositions: (span) => Array.from({ length: span.end - span.start }, (_, i) => span.start + i) },
    score(ctx) {
      const T = ctx.span.end - ctx.span.start;
      const left = Math.min(sinkStart, T);
      const right = Math.min(sinkEnd, T - left);
      const inner = { start: left, end: T - right };
      const invFreq = ctx.lm.ropeInvFreq;
      const leverage = zScoreLayers(
        perHead(ctx, ({ keys, positions }) => {
          const pre = keys.slice(inner.start, inner.end).map((k, i) => {
            const x = k.slice();
            rotateRow(x, -positions[inner.start + i]!, invFreq);
            return x;
          });
          return padded(leverageScores(pre, jitter), T, inner.start);
        }),
        inner,
      );
      const attention = zScoreLayers(
        perHead(ctx, ({ layer, head, values }) => padded(avgPool3(chunkAttention(ctx, layer, head, inner, chunkSize).map((a, i) => a * norm(values[inner.start + i]!))), T, inner.start)),
        inner,
      );
      const main = attention.map((layer) => layer.map((s) => s.map((x, j) => (j < inner.start || j >= inner.end ? Infinity : x))));
      return withStages(main, { leverage });
    },
  };
}

/** Compactor's budget: per head, the top floor(T * ratio) of attention + (1 - ratio) * leverage. */
export function compactorBudget(): BudgetPolicy {
  const name = 'compactor(blend=1-ratio)';
  return {
    name,
    select(scores: Scores, ratio) {
      const leverage = stage(scores, 'leverage', name);
      const n = keptCount(scores[0]?.[0]?.length ?? 0, ratio);
      return scores.map((layer, l) => layer.map((s, h) => topKIndices(s.map((x, j) => x + (1 - ratio) * leverage[l]![h]![j]!), n)));
    },
    expectedKept: (layers, heads, T, ratio) => ({ level: 'head', counts: new Array<number>(layers * heads).fill(keptCount(T, ratio)) }),
  };
}

/** Statistical leverage of each row of centered X: x_j^T (X^T X + jitter I)^-1 x_j, clamped at 0. */
export function leverageScores(rows: Float32Array[], jitter: number): Float64Array {
  const n = rows.length;
  if (n === 0) return new Float64Array(0);
  const d = rows[0]!.length;
  const mean = new Float64Array(d);
  for (const r of rows) for (let c = 0; c < d; c++) mean[c] = mean[c]! + r[c]! / n;
  const X = rows.map((r) => Float64Array.from(r, (x, c) => x - mean[c]!));
  const A = new Float64Array(d * d);
  for (const x of X) for (let a = 0; a < d; a++) for (let b = 0; b < d; b++) A[a * d + b] = A[a * d + b]! + x[a]! * x[b]!;
  for (let a = 0; a < d; a++) A[a * d + a] = A[a * d + a]! + jitter;
  const L = cholesky(A, d);
  return Float64Array.from(X, (x) => {
    const y = forwardSolve(L, x, d);
    return Math.max(0, y.reduce((s, v) => s + v * v, 0));
  });
}

/** Lower-triangular L with L L^T = A (A symmetric positive definite). */
function cholesky(A: Float64Array, d: number): Float64Array {
  const L = new Float64Array(d * d);
  for (let i = 0; i < d; i++)
    for (let j = 0; j <= i; j++) {
      let s = A[i * d + j]!;
      for (let k = 0; k < j; k++) s -= L[i * d + k]! * L[j * d + k]!;
      if (i === j) {
        if (!(s > 0)) throw new Error('compactor: the key Gram matrix is not positive definite; raise the jitter');
        L[i * d + i] = Math.sqrt(s);
      } else L[i * d + j] = s / L[j * d + j]!;
    }
  return L;
}

/** Solves L y = x; then x^T A^-1 x = ||y||^2. */
function forwardSolve(L: Float64Array, x: Float64Array, d: number): Float64Array {
  const y = new Float64Array(d);
  for (let i = 0; i < d; i++) {
    let s = x[i]!;
    for (let k = 0; k < i; k++) s -= L[i * d + k]! * y[k]!;
    y[i] = s / L[i * d + i]!;
  }
  return y;
}

/** Non-causal attention within chunks of the inner rows, summed over each chunk's queries, mean over the group. */
function chunkAttention(ctx: ScoringContext, layer: number, g: number, inner: { start: number; end: number }, chunkSize: number): Float64Array {
  const { numHeads, numKvHeads, headDim: d } = ctx.lm.config;
  const G = numHeads / numKvHeads;
  const base = ctx.span.start;
  const keys = ctx.cache.head(layer, g).keys(base + inner.start, base + inner.end);
  const out = new Float64Array(inner.end - inner.start);
  const q = ctx.capture.queries[layer]!;
  const scale = 1 / Math.sqrt(d);
  for (let c0 = 0; c0 < out.length; c0 += chunkSize) {
    const c1 = Math.min(out.length, c0 + chunkSize);
    for (let i = c0; i < c1; i++) {
      const slot = ctx.capture.queryPositions.indexOf(base + inner.start + i);
      if (slot < 0) throw new Error(`compactor: the query at position ${base + inner.start + i} was not captured during prefill`);
      for (let h = g * G; h < (g + 1) * G; h++) {
        const qr = q.subarray((slot * numHeads + h) * d, (slot * numHeads + h + 1) * d);
        const logits = new Float64Array(c1 - c0);
        let top = -Infinity;
        for (let j = c0; j < c1; j++) {
          let s = 0;
          for (let c = 0; c < d; c++) s += qr[c]! * keys[j * d + c]!;
          logits[j - c0] = s * scale;
          if (logits[j - c0]! > top) top = logits[j - c0]!;
        }
        let z = 0;
        for (let j = 0; j < logits.length; j++) z += Math.exp(logits[j]! - top);
        for (let j = c0; j < c1; j++) out[j] = out[j]! + Math.exp(logits[j - c0]! - top) / z / G;
      }
    }
  }
  return out;
}

/** Average pool of width 3, stride 1, zero padding, divided by 3. */
function avgPool3(x: Float64Array): Float64Array {
  return x.map((_, j) => ((x[j - 1] ?? 0) + x[j]! + (x[j + 1] ?? 0)) / 3);
}

function padded(x: ArrayLike<number>, T: number, at: number): Float32Array {
  const out = new Float32Array(T);
  out.set(Float32Array.from(x), at);
  return out;
}

/** z-score over each layer's inner rows of every head (mean and sample standard deviation, floored at 1e-6). */
function zScoreLayers(scores: Scores, inner: { start: number; end: number }): Scores {
  return scores.map((layer) => {
    const all = layer.flatMap((s) => Array.from(s.subarray(inner.start, inner.end)));
    const mean = all.reduce((a, b) => a + b, 0) / Math.max(all.length, 1);
    const sd = Math.max(Math.sqrt(all.reduce((a, x) => a + (x - mean) ** 2, 0) / Math.max(all.length - 1, 1)), 1e-6);
    return layer.map((s) => s.map((x, j) => (j < inner.start || j >= inner.end ? 0 : (x - mean) / sd)));
  });
}
