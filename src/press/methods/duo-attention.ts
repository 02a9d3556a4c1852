import { defaultCalibrationSample, savedHeadScores, type HeadCalibration, type HeadScores } from '../head-scores.ts';
import type { Scorer, ScoringContext, ScoringModel } from '../types.ts';
import { lastPositions, windowAttention } from '../window-attention.ts';

export interface DuoAttentionOptions {
  /** Span rows at its start a streaming head keeps. */
  sink?: number;
  /** Span rows at its end a streaming head keeps. */
  recent?: number;
  /** Queries at the end of the calibration sample whose attention is measured. */
  probes?: number;
}

export const DUO_DEFAULTS = { sink: 4, recent: 64, probes: 16 } as const;

/**
 * DuoAttention-style heads (Xiao et al. 2024, arXiv 2410.10819): retrieval heads keep the whole span,
 * streaming heads keep a sink and a recent window (headsWithWindowBudget with the same sink and recent);
 * the ratio is the fraction of retrieval heads. DuoAttention learns its head gates by optimization; here a
 * head's score is measured once per model on the calibration sample (defaultCalibrationSample, saved with its
 * hash): the attention mass that the last `probes` queries of the sample, summed over the group's query heads
 * and averaged, put on the rows a streaming head would drop (after the first `sink` span rows and before
 * `recent` rows ahead of the first probe). A head that reads far back is a retrieval head. Defaults: sink 4,
 * recent 64 (DuoAttention streams 64 sinks and 256 recent tokens of 100k-token contexts; contexts here are
 * about a thousand tokens), probes 16.
 */
export function duoAttentionScorer(opts: DuoAttentionOptions = {}, load?: (ctx: ScoringContext) => HeadScores): Scorer {
  const o = { ...DUO_DEFAULTS, ...opts };
  return {
    summary: 'DuoAttention-style heads: retrieval heads by the far attention they pay on a sample (saved once per model)',
    options: o,
    score(ctx) {
      const heads = load ? load(ctx) : duoHeadScoresFor(ctx.lm, o);
      const T = ctx.span.end - ctx.span.start;
      return heads.map((layer) => layer.map((s) => new Float32Array(T).fill(s)));
    },
  };
}

function calibration(o: Required<DuoAttentionOptions>): HeadCalibration {
  return {
    kind: `duo-head-scores-s${o.sink}-r${o.recent}-p${o.probes}`,
    warning: 'DuoHeadScoresWarning',
    compute: (lm, sample) => lm.scoreText(sample, farAttentionScorer(o)).map((layer) => layer.map((s) => s[0] ?? 0)),
  };
}

export function duoHeadScoresFor(lm: ScoringModel, opts: DuoAttentionOptions = {}, sample: string = defaultCalibrationSample()): HeadScores {
  return savedHeadScores(lm, calibration({ ...DUO_DEFAULTS, ...opts }), sample);
}

/**
 * The calibration measurement as a scorer over the sample: per head, the mean over the probes of the
 * attention (summed over the group) on the span rows outside the streaming window, at every position.
 */
export function farAttentionScorer({ sink, recent, probes }: Required<DuoAttentionOptions>): Scorer {
  return {
    summary: 'attention outside the streaming window',
    needs: { queryPositions: (span) => lastPositions(span, probes) },
    score(ctx) {
      const positions = lastPositions(ctx.span, probes);
      if (positions.length === 0) throw new Error('the DuoAttention calibration sample is empty');
      const sums = windowAttention(ctx, positions, 'sum');
      const T = ctx.span.end - ctx.span.start;
      const farEnd = Math.max(0, positions[0]! - recent - ctx.span.start);
      return sums.map((layer) =>
        layer.map((s) => {
          let far = 0;
          for (let j = sink; j < farEnd; j++) far += s[j]!;
          return new Float32Array(T).fill(far / positions.length);
        }),
      );
    },
  };
}
