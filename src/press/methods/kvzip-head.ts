import { calibrationPath, defaultCalibrationSample, savedHeadScores, type HeadCalibration, type HeadScores } from '../head-scores.ts';
import type { Scorer, ScoringContext, ScoringModel } from '../types.ts';
import { kvzipScorer } from './kvzip.ts';

export type { HeadScores } from '../head-scores.ts';

/**
 * KVzip head-level: every position of a head carries that head's score, so a head budget keeps whole heads
 * (the top round(L * H * ratio)); the other heads keep a sink and a recent window (headsWithWindowBudget),
 * as KVzip's head-level mode and DuoAttention's streaming heads do. Head scores are computed once per model
 * (the max KVzip pair score a head gives any position of the calibration sample, defaultCalibrationSample)
 * and saved with the sample's hash.
 */
export function kvzipHeadScorer(load: (ctx: ScoringContext) => HeadScores = (ctx) => headScoresFor(ctx.lm)): Scorer {
  return {
    summary: 'KVzip head-level: one score per head, its max KVzip score on a sample text (saved once per model)',
    score(ctx) {
      const heads = load(ctx);
      const T = ctx.span.end - ctx.span.start;
      return heads.map((layer) => layer.map((s) => new Float32Array(T).fill(s)));
    },
  };
}

const kvzipHeads: HeadCalibration = { kind: 'kvzip-head-scores', warning: 'KvzipHeadScoresWarning', compute: computeHeadScores };

/** Where KVzip head scores of a model are saved. */
export function headScoresPath(lm: Pick<ScoringModel, 'fingerprint'>): string {
  return calibrationPath(lm, kvzipHeads.kind);
}

/** The model's KVzip head scores on the sample: from the saved file when it fits, computed and saved otherwise. */
export function headScoresFor(lm: ScoringModel, sample: string = defaultCalibrationSample()): HeadScores {
  return savedHeadScores(lm, kvzipHeads, sample);
}

export function computeHeadScores(lm: ScoringModel, sample: string): HeadScores {
  const pair = lm.scoreText(sample, kvzipScorer());
  return pair.map((layer) => layer.map((s) => s.reduce((m, x) => Math.max(m, x), 0)));
}
