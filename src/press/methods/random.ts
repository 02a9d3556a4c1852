import { seededRandom } from '../../tensor/seeded-random.ts';
import { perHead } from '../per-head.ts';
import type { Scorer } from '../types.ts';

/** Random: U(0, 1) per (layer, head, position), reproducible from the seed. */
export function randomScorer(seed = 0): Scorer {
  return {
    summary: 'Random scores',
    options: { seed },
    score(ctx) {
      const rand = seededRandom(seed);
      return perHead(ctx, ({ length }) => Float32Array.from({ length }, rand));
    },
  };
}
