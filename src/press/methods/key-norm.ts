import { norm, perHead } from '../per-head.ts';
import type { Scorer } from '../types.ts';

/** K-norm: low-norm keys are kept (score = -||k||). */
export function keyNormScorer(): Scorer {
  return {
    summary: 'K-norm: keep low-norm keys',
    score: (ctx) => perHead(ctx, ({ keys }) => keys.map((k) => -norm(k))),
  };
}
