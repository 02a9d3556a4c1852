import type { Scorer } from '../types.ts';
import { lastPositions, windowAttention } from '../window-attention.ts';

/** TOVA: attention of the last query averaged over ALL query heads; one ranking shared by every KV head. */
export function tovaScorer(): Scorer {
  return {
    summary: 'TOVA: attention of the last query, mean over all heads',
    needs: { queryPositions: (span) => lastPositions(span, 1) },
    score(ctx) {
      const sums = windowAttention(ctx, lastPositions(ctx.span, 1), 'sum');
      const nHeads = ctx.lm.config.numHeads;
      return sums.map((layer) => {
        const shared = new Float32Array(layer[0]!.length);
        for (const s of layer) for (let j = 0; j < s.length; j++) shared[j] = shared[j]! + s[j]! / nHeads;
        return layer.map(() => shared.slice());
      });
    },
  };
}
