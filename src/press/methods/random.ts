import { seededRandom } from '../../tensor/seeded-random.ts';
import type { Scorer } from '../types.ts';

/** Random: U(0, 1) per (layer, head, position), reproducible from the seed. */
export function randomScorer(seed = 0): Scorer {
  return {
    name: 'random',
    score({ lm, span }) {
      const rand = seededRandom(seed);
      const T = span.end - span.start;
      return Array.from({ length: lm.config.numLayers }, () =>
        Array.from({ length: lm.config.numKvHeads }, () => Float32Array.from({ length: T }, rand)),
      );
    },
  };
}
