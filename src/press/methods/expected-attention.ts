import { norm, perHead } from '../per-head.ts';
import type { Scorer } from '../types.ts';

export interface ExpectedAttentionOptions {
  nFuture?: number;
  nSink?: number;
  useCovariance?: boolean;
  useValueNorm?: boolean;
}

/**
 * ExpectedAttention: the attention future queries are expected to pay each key. Pre-RoPE query mean mu and
 * covariance Sigma (per query head, sinks excluded) are rotated by the RoPE rotation averaged over the next
 * nFuture positions; z_j = k_j.mu'/sqrt(d) + k_j' Sigma' k_j / (2d); softmax over keys, GQA mean, times ||v_j||.
 */
export function expectedAttentionScorer(opts: ExpectedAttentionOptions = {}): Scorer {
  const nFuture = opts.nFuture ?? 512;
  const nSink = opts.nSink ?? 4;
  const useCov = opts.useCovariance ?? true;
  const useVnorm = opts.useValueNorm ?? true;
  return {
    summary: 'ExpectedAttention: attention future queries are expected to pay, from query statistics',
    options: { nFuture, nSink, useCovariance: useCov, useValueNorm: useVnorm },
    needs: { queryMoments: { skipFirst: nSink } },
    score(ctx) {
      const { lm, span, ids, capture } = ctx;
      const m = capture.queryMoments;
      if (!m) throw new Error('expected-attention needs query moments recorded during prefill');
      const { numHeads, numKvHeads, headDim: d } = lm.config;
      const group = numHeads / numKvHeads;
      const R = averagedRotation(lm.ropeInvFreq, d, ids.length, nFuture);
      const keyFrom = ctx.keys === 'span' ? span.start : Math.min(nSink, span.start);
      return perHead(ctx, ({ layer: l, head: g, store, values }) => {
        const nKeys = span.end - keyFrom;
        const keys = store.keys(keyFrom, span.end);
        const avg = new Float64Array(span.end - span.start);
        for (let h = g * group; h < (g + 1) * group; h++) {
          const mu = matVec(R, m.mean[l]!.subarray(h * d, (h + 1) * d), d);
          const sigma = useCov ? rotateCov(R, m.cov[l]!.subarray(h * d * d, (h + 1) * d * d), d) : null;
          const z = new Float64Array(nKeys);
          let zmax = -Infinity;
          for (let j = 0; j < nKeys; j++) {
            const k = keys.subarray(j * d, (j + 1) * d);
            let s = 0;
            for (let a = 0; a < d; a++) s += k[a]! * mu[a]!;
            s /= Math.sqrt(d);
            if (sigma) {
              let quad = 0;
              for (let a = 0; a < d; a++) {
                let row = 0;
                for (let b = 0; b < d; b++) row += sigma[a * d + b]! * k[b]!;
                quad += k[a]! * row;
              }
              s += quad / d / 2;
            }
            z[j] = s;
            if (s > zmax) zmax = s;
          }
          let denom = 0;
          for (let j = 0; j < nKeys; j++) denom += Math.exp(z[j]! - zmax);
          for (let j = span.start; j < span.end; j++) avg[j - span.start] += Math.exp(z[j - keyFrom]! - zmax) / denom / group;
        }
        return useVnorm ? Array.from(avg, (p, j) => p * norm(values[j]!)) : avg;
      });
    },
  };
}

/** Mean over positions p in [from, from + n) of the RoPE rotation cos(p w) I + sin(p w) P (rotate_half layout). */
function averagedRotation(invFreq: Float32Array, d: number, from: number, n: number): Float64Array {
  const half = d / 2;
  const R = new Float64Array(d * d);
  for (let f = 0; f < half; f++) {
    let c = 0;
    let s = 0;
    for (let p = from; p < from + n; p++) {
      const angle = Math.fround(p * invFreq[f]!);
      c += Math.cos(angle) / n;
      s += Math.sin(angle) / n;
    }
    // rotated[f] = x[f] cos - x[f + half] sin; rotated[f + half] = x[f + half] cos + x[f] sin
    R[f * d + f] = c;
    R[f * d + f + half] = -s;
    R[(f + half) * d + f + half] = c;
    R[(f + half) * d + f] = s;
  }
  return R;
}

function matVec(R: Float64Array, x: Float64Array, d: number): Float64Array {
  const out = new Float64Array(d);
  for (let a = 0; a < d; a++) {
    let s = 0;
    for (let b = 0; b < d; b++) s += R[a * d + b]! * x[b]!;
    out[a] = s;
  }
  return out;
}

/** R Sigma R^T */
function rotateCov(R: Float64Array, S: Float64Array, d: number): Float64Array {
  const tmp = new Float64Array(d * d);
  for (let a = 0; a < d; a++)
    for (let b = 0; b < d; b++) {
      let s = 0;
      for (let c = 0; c < d; c++) s += R[a * d + c]! * S[c * d + b]!;
      tmp[a * d + b] = s;
    }
  const out = new Float64Array(d * d);
  for (let a = 0; a < d; a++)
    for (let b = 0; b < d; b++) {
      let s = 0;
      for (let c = 0; c < d; c++) s += tmp[a * d + c]! * R[b * d + c]!;
      out[a * d + b] = s;
    }
  return out;
}
