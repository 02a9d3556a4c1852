import { perHead } from '../per-head.ts';
import type { Scorer } from '../types.ts';

/**
 * H2O / observed attention: s_j = sum_i A_ij / (T - j) over every prefill query i (the number of queries
 * that can see key j), averaged over the GQA group.
 */
export function observedAttentionScorer(): Scorer {
  return {
    summary: 'H2O / observed attention, normalized by the number of queries',
    needs: { observedAttention: true },
    score(ctx) {
      const sums = ctx.capture.observedSum;
      if (!sums) throw new Error('h2o needs observed attention recorded during prefill');
      const group = ctx.lm.config.numHeads / ctx.lm.config.numKvHeads;
      const T = ctx.ids.length;
      return perHead(ctx, ({ layer, head, positions }) => Array.from(positions, (p) => sums[layer]![head]![p]! / group / (T - p)));
    },
  };
}
