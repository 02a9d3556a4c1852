import type { Scorer, ScoringContext } from '../types.ts';
import { lastPositions } from '../window-attention.ts';

export interface SimLayerKvOptions {
  /** Sink rows: absolute positions below nInitial. */
  nInitial?: number;
  /** Recent rows: the last nRecent positions of the prefilled sequence. */
  nRecent?: number;
  /** Queries (the last of the span) whose attention measures a layer's laziness. */
  nLast?: number;
}

/**
 * SimLayerKV (Zhang et al. 2024, arXiv 2410.13846): a layer is lazy when the last nLast queries of the span,
 * averaged over them and every query head, put most of their attention on the sinks (absolute positions <
 * nInitial) and the recent rows (the last nRecent positions); a lazy layer keeps only those rows, the others
 * keep everything. The paper picks lazy layers by a threshold; here the ratio decides (one global top-k,
 * the global budget): every layer's sink and recent rows rank first (sinks, then the most recent), then the
 * whole remaining span of the least lazy layer, then the next one's, so at any ratio the laziest layers are
 * the ones cut to sink + recent. Scores: sink 3, recent 2 + p / N, other rows 1 - laziness (in [0, 1]).
 * Defaults (paper and kvpress): nInitial 4, nRecent 1024, nLast 1.
 */
export function simLayerKvScorer({ nInitial = 4, nRecent = 1024, nLast = 1 }: SimLayerKvOptions = {}): Scorer {
  return {
    summary: 'SimLayerKV: lazy layers keep only the sinks and the recent window',
    options: { nInitial, nRecent, nLast },
    needs: { queryPositions: (span) => lastPositions(span, nLast) },
    score(ctx) {
      const laziness = layerLaziness(ctx, nInitial, nRecent, nLast);
      const N = ctx.ids.length;
      const { start, end } = ctx.span;
      return laziness.map((lazy) => {
        const s = Float32Array.from({ length: end - start }, (_, j) => {
          const p = start + j;
          return p < nInitial ? 3 : p >= N - nRecent ? 2 + p / N : 1 - lazy;
        });
        return Array.from({ length: ctx.lm.config.numKvHeads }, () => s.slice());
      });
    },
  };
}

/** Per layer: the attention mass the last nLast queries put on sink and recent rows, mean over queries and heads. */
export function layerLaziness(ctx: ScoringContext, nInitial: number, nRecent: number, nLast: number): number[] {
  const cfg = ctx.lm.config;
  const positions = lastPositions(ctx.span, nLast);
  const rowSize = cfg.numHeads * cfg.headDim;
  const N = ctx.ids.length;
  return Array.from({ length: cfg.numLayers }, (_, l) => {
    const q = new Float32Array(positions.length * rowSize);
    positions.forEach((p, i) => {
      const slot = ctx.capture.queryPositions.indexOf(p);
      if (slot < 0) throw new Error(`simlayerkv: the query at position ${p} was not captured during prefill`);
      q.set(ctx.capture.queries[l]!.subarray(slot * rowSize, (slot + 1) * rowSize), i * rowSize);
    });
    const heads = ctx.cache.layer(l);
    const sums = ctx.lm.attentionStats(q, Int32Array.from(positions), heads, 'sum');
    let mass = 0;
    sums.forEach((s, g) => {
      const pos = heads[g]!.pos;
      for (let r = 0; r < s.length; r++) if (pos[r]! < nInitial || pos[r]! >= N - nRecent) mass += s[r]!;
    });
    return mass / (positions.length * cfg.numHeads);
  });
}
