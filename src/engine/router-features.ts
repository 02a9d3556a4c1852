import type { Scores } from '../press/types.ts';

/**
 * The query-agnostic signals a negative-sample predictor reads for one (context, method, ratio). All are
 * cheap next to answering: the press's scores (computed anyway), the keep sets at the ratio, and the
 * reconstruction check's teacher-forced accuracy (one forward pass over the context per candidate ratio).
 */
export interface RouterFeatures {
  /** The kept ratio itself. */
  ratio: number;
  /** Reconstruction token accuracy of the context from the cache compressed at `ratio`. */
  reconstruction: number;
  /** That accuracy over the full cache's (1 when the full cache reconstructs nothing). */
  reconstruction_relative: number;
  /** Full cache's accuracy minus this ratio's (absolute points of the fraction, may be negative). */
  reconstruction_drop: number;
  /** ln of the compressible span's length in tokens. */
  log_context_tokens: number;
  /** Normalised entropy of the press's score distribution, averaged over (layer, KV head): see scoreEntropy. */
  score_entropy: number;
  /** Share of the score mass the keep sets hold, averaged over (layer, KV head): see keptMass. */
  kept_mass: number;
}

export type FeatureName = keyof RouterFeatures;

export const FEATURE_NAMES: readonly FeatureName[] = ['ratio', 'reconstruction', 'reconstruction_relative', 'reconstruction_drop', 'log_context_tokens', 'score_entropy', 'kept_mass'];

/**
 * One head's scores as a probability distribution over the span's rows. Rows with a non-finite score are
 * kept or dropped by rule (sinks, windows), not by weight, and get probability 0. Finite scores are used as
 * they are when none is negative (attention-based presses give probabilities already); otherwise they are
 * shifted by their minimum first (norm- and similarity-based presses). All-equal weights give the uniform
 * distribution over the finite rows. Returns null when no row is finite.
 */
export function scoreDistribution(scores: Float32Array): Float64Array | null {
  let min = Infinity;
  let finite = 0;
  for (const s of scores) {
    if (!Number.isFinite(s)) continue;
    finite++;
    if (s < min) min = s;
  }
  if (finite === 0) return null;
  const shift = min < 0 ? min : 0;
  const p = new Float64Array(scores.length);
  let sum = 0;
  scores.forEach((s, j) => {
    if (Number.isFinite(s)) sum += p[j] = s - shift;
  });
  if (sum > 0) for (let j = 0; j < p.length; j++) p[j] = p[j]! / sum;
  else scores.forEach((s, j) => (p[j] = Number.isFinite(s) ? 1 / finite : 0));
  return p;
}

/** Shannon entropy of p over ln(n): 1 for the uniform distribution over all n rows, 0 for a single row. */
export function normalisedEntropy(p: Float64Array): number {
  if (p.length < 2) return 0;
  let h = 0;
  for (const x of p) if (x > 0) h -= x * Math.log(x);
  return h / Math.log(p.length);
}

function perHeadMean(scores: Scores, f: (p: Float64Array, layer: number, head: number) => number): number {
  let sum = 0;
  let n = 0;
  scores.forEach((layer, l) =>
    layer.forEach((s, h) => {
      const p = scoreDistribution(s);
      if (!p) return;
      sum += f(p, l, h);
      n++;
    }),
  );
  return n ? sum / n : 0;
}

/** Mean over (layer, KV head) of the normalised entropy of the head's score distribution. */
export function scoreEntropy(scores: Scores): number {
  return perHeadMean(scores, (p) => normalisedEntropy(p));
}

/** Mean over (layer, KV head) of the probability mass of the rows the head keeps (span-relative keep sets). */
export function keptMass(scores: Scores, keep: Int32Array[][]): number {
  return perHeadMean(scores, (p, l, h) => {
    let m = 0;
    for (const j of keep[l]![h]!) m += p[j]!;
    return m;
  });
}

/** The features of one candidate ratio, given its reconstruction accuracy and the full cache's. */
export function routerFeatures(a: { ratio: number; accuracy: number; fullAccuracy: number; contextTokens: number; entropy: number; keptMass: number }): RouterFeatures {
  return {
    ratio: a.ratio,
    reconstruction: a.accuracy,
    reconstruction_relative: a.fullAccuracy > 0 ? a.accuracy / a.fullAccuracy : 1,
    reconstruction_drop: a.fullAccuracy - a.accuracy,
    log_context_tokens: Math.log(Math.max(1, a.contextTokens)),
    score_entropy: a.entropy,
    kept_mass: a.keptMass,
  };
}
