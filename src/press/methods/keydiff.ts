import { dot, norm, perHead } from '../per-head.ts';
import type { Scorer } from '../types.ts';

/** KeyDiff: keys least similar to the span's mean normalized key are kept (score = -cos(k, anchor)). */
export function keyDiffScorer(): Scorer {
  return {
    summary: 'KeyDiff: keep keys least similar to the mean key',
    score: (ctx) =>
      perHead(ctx, ({ keys, length: T }) => {
        const unit = keys.map((k) => {
          const inv = 1 / Math.max(norm(k), 1e-12);
          return Float64Array.from(k, (x) => x * inv);
        });
        const anchor = new Float64Array(ctx.cache.headDim);
        for (const u of unit) for (let c = 0; c < u.length; c++) anchor[c] = anchor[c]! + u[c]! / T;
        const an = Math.max(Math.hypot(...anchor), 1e-12);
        return unit.map((u) => -dot(u, anchor) / an);
      }),
  };
}
