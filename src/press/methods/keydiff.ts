import type { Scorer } from '../types.ts';

/** KeyDiff: keys least similar to the span's mean normalized key are kept (score = -cos(k, anchor)). */
export function keyDiffScorer(): Scorer {
  return {
    name: 'keydiff',
    score({ cache, span }) {
      const d = cache.headDim;
      const T = span.end - span.start;
      return cache.heads.map((layer) =>
        layer.map((hs) => {
          const unit = new Float64Array(T * d);
          const anchor = new Float64Array(d);
          const keys = hs.keys(span.start, span.end);
          for (let j = 0; j < T; j++) {
            const o = j * d;
            let ss = 0;
            for (let c = 0; c < d; c++) ss += keys[o + c]! ** 2;
            const inv = 1 / Math.max(Math.sqrt(ss), 1e-12);
            for (let c = 0; c < d; c++) {
              unit[j * d + c] = keys[o + c]! * inv;
              anchor[c] = anchor[c]! + unit[j * d + c]! / T;
            }
          }
          const an = Math.max(Math.hypot(...anchor), 1e-12);
          return Float32Array.from({ length: T }, (_, j) => {
            let dot = 0;
            for (let c = 0; c < d; c++) dot += unit[j * d + c]! * anchor[c]!;
            return -dot / an;
          });
        }),
      );
    },
  };
}
