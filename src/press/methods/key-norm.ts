import type { Scorer } from '../types.ts';

/** K-norm: low-norm keys are kept (score = -||k||). */
export function keyNormScorer(): Scorer {
  return {
    name: 'knorm',
    score({ cache, span }) {
      const d = cache.headDim;
      return cache.heads.map((layer) =>
        layer.map((hs) => {
          const keys = hs.keys(span.start, span.end);
          return Float32Array.from({ length: span.end - span.start }, (_, j) => {
            let ss = 0;
            for (let c = 0; c < d; c++) ss += keys[j * d + c]! ** 2;
            return -Math.sqrt(ss);
          });
        }),
      );
    },
  };
}
