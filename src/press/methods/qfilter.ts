import { perHead } from '../per-head.ts';
import type { Scorer, ScoringContext } from '../types.ts';

/**
 * Q-Filters (Godey et al. 2025, arXiv 2503.02812), with the filters taken from the model's own queries
 * instead of a calibration set: per KV head, u = the principal right singular vector of the matrix of the
 * span's post-RoPE queries of the group's query heads, oriented so the mean of q.u is positive. Queries
 * lean towards u, so q.k is predicted by k.u: score = k_j . u (kvpress stores the filter negated and scores
 * -(filter . k), the same ranking). No options: the filter comes from the span itself. Cost: the prefill
 * records every span query (layers x T x heads x headDim floats, twice), memory that grows with the context.
 */
export function qFilterScorer(): Scorer {
  return {
    summary: "Q-Filters: keys projected on the principal direction of the context's own queries",
    needs: { queryPositions: (span) => Array.from({ length: span.end - span.start }, (_, i) => span.start + i) },
    score(ctx) {
      return perHead(ctx, ({ layer, head, keys }) => {
        const u = queryFilter(groupQueries(ctx, layer, head), ctx.cache.headDim);
        return keys.map((k) => k.reduce((s, x, c) => s + x * u[c]!, 0));
      });
    },
  };
}

/** Post-RoPE queries of the span's rows for the query heads of KV head g: [rows * G, d]. */
export function groupQueries(ctx: ScoringContext, layer: number, g: number): Float32Array {
  const { numHeads, numKvHeads, headDim: d } = ctx.lm.config;
  const G = numHeads / numKvHeads;
  const { span, capture } = ctx;
  const rows: number[] = [];
  for (let p = span.start; p < span.end; p++) {
    const slot = capture.queryPositions.indexOf(p);
    if (slot < 0) throw new Error(`qfilter: the query at position ${p} was not captured during prefill`);
    rows.push(slot);
  }
  const q = capture.queries[layer]!;
  const out = new Float32Array(rows.length * G * d);
  rows.forEach((slot, i) => {
    for (let h = 0; h < G; h++) {
      const src = (slot * numHeads + g * G + h) * d;
      out.set(q.subarray(src, src + d), (i * G + h) * d);
    }
  });
  return out;
}

/** The unit top eigenvector of Q^T Q (Jacobi rotations), signed so that mean(Q u) > 0. */
export function queryFilter(q: Float32Array, d: number): Float64Array {
  const n = q.length / d;
  const A = new Float64Array(d * d);
  for (let i = 0; i < n; i++)
    for (let a = 0; a < d; a++) {
      const x = q[i * d + a]!;
      for (let b = a; b < d; b++) A[a * d + b] = A[a * d + b]! + x * q[i * d + b]!;
    }
  for (let a = 0; a < d; a++) for (let b = 0; b < a; b++) A[a * d + b] = A[b * d + a]!;
  const { values, vectors } = symmetricEigen(A, d);
  let top = 0;
  for (let i = 1; i < d; i++) if (values[i]! > values[top]!) top = i;
  const u = Float64Array.from({ length: d }, (_, a) => vectors[a * d + top]!);
  let mean = 0;
  for (let i = 0; i < n; i++) for (let a = 0; a < d; a++) mean += q[i * d + a]! * u[a]!;
  return mean < 0 ? u.map((x) => -x) : u;
}

/** Cyclic Jacobi eigen-decomposition of a symmetric d x d matrix: eigenvalues and eigenvectors (columns). */
export function symmetricEigen(input: Float64Array, d: number): { values: Float64Array; vectors: Float64Array } {
  const A = Float64Array.from(input);
  const V = new Float64Array(d * d);
  for (let i = 0; i < d; i++) V[i * d + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    let diag = 0;
    for (let a = 0; a < d; a++) {
      diag += A[a * d + a]! ** 2;
      for (let b = a + 1; b < d; b++) off += A[a * d + b]! ** 2;
    }
    if (off <= 1e-24 * Math.max(diag, 1e-300)) break;
    for (let p = 0; p < d; p++)
      for (let r = p + 1; r < d; r++) {
        const apr = A[p * d + r]!;
        if (apr === 0) continue;
        const theta = (A[r * d + r]! - A[p * d + p]!) / (2 * apr);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < d; k++) {
          const akp = A[k * d + p]!;
          const akr = A[k * d + r]!;
          A[k * d + p] = c * akp - s * akr;
          A[k * d + r] = s * akp + c * akr;
        }
        for (let k = 0; k < d; k++) {
          const apk = A[p * d + k]!;
          const ark = A[r * d + k]!;
          A[p * d + k] = c * apk - s * ark;
          A[r * d + k] = s * apk + c * ark;
        }
        for (let k = 0; k < d; k++) {
          const vkp = V[k * d + p]!;
          const vkr = V[k * d + r]!;
          V[k * d + p] = c * vkp - s * vkr;
          V[k * d + r] = s * vkp + c * vkr;
        }
      }
  }
  return { values: Float64Array.from({ length: d }, (_, i) => A[i * d + i]!), vectors: V };
}
