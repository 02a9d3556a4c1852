import { dot, norm, perHead } from '../per-head.ts';
import type { Scorer } from '../types.ts';

/** KeyDiff: keys least similar to the span's mean normalized key are kept (score = -cos(k, anchor)). */
export function keyDiffScorer(): Scorer {
  return {
    summary: 'KeyDiff: keep keys least similar to the mean key',
    score: (ctx) => perHead(ctx, ({ keys }) => keyDiffRows(keys)),
  };
}

/** -cos(k_j, anchor) for each key, anchor = mean of the keys normalized. */
export function keyDiffRows(keys: Float32Array[]): number[] {
  const T = keys.length;
  if (T === 0) return [];
  const unit = keys.map((k) => {
    const inv = 1 / Math.max(norm(k), 1e-12);
    return Float64Array.from(k, (x) => x * inv);
  });
  const anchor = new Float64Array(keys[0]!.length);
  for (const u of unit) for (let c = 0; c < u.length; c++) anchor[c] = anchor[c]! + u[c]! / T;
  const an = Math.max(Math.hypot(...anchor), 1e-12);
  return unit.map((u) => -dot(u, anchor) / an);
}
