import type { Scorer } from '../types.ts';

/**
 * H2O / observed attention: s_j = sum_i A_ij / (T - j) over every prefill query i (the number of queries
 * that can see key j), averaged over the GQA group.
 */
export function observedAttentionScorer(): Scorer {
  return {
    name: 'h2o',
    needs: { observedAttention: true },
    score({ lm, span, ids, capture }) {
      const sums = capture.observedSum;
      if (!sums) throw new Error('h2o needs observed attention recorded during prefill');
      const group = lm.config.numHeads / lm.config.numKvHeads;
      const T = ids.length;
      return sums.map((layer) =>
        layer.map((sum) => Float32Array.from({ length: span.end - span.start }, (_, j) => sum[span.start + j]! / group / (T - (span.start + j)))),
      );
    },
  };
}
