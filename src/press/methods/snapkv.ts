import type { Scorer } from '../types.ts';
import { lastPositions, windowAttention } from '../window-attention.ts';

export interface SnapKvOptions {
  window?: number;
  kernel?: number;
}

/**
 * SnapKV: attention of the last `window` queries of the span, averaged over the window and the GQA group,
 * smoothed by an average pool of width `kernel` (zero padded); the window itself ranks first (kept inside
 * the budget, as kvpress does).
 */
export function snapKvScorer({ window = 64, kernel = 5 }: SnapKvOptions = {}): Scorer {
  return {
    summary: 'SnapKV: attention of the last queries of the span, pooled',
    options: { window, kernel },
    needs: { queryPositions: (span) => lastPositions(span, window) },
    score(ctx) {
      const positions = lastPositions(ctx.span, window);
      const group = ctx.lm.config.numHeads / ctx.lm.config.numKvHeads;
      const sums = windowAttention(ctx, positions, 'sum');
      const T = ctx.span.end - ctx.span.start;
      const windowStart = T - positions.length;
      return sums.map((layer) =>
        layer.map((sum) => {
          const mean = sum.map((x) => x / (positions.length * group));
          const pooled = avgPool(mean, kernel);
          // The window ranks above every pooled probability (<= 1), the most recent first.
          for (let j = windowStart; j < T; j++) pooled[j] = 2 + j / T;
          return pooled;
        }),
      );
    },
  };
}

/** 1-D average pool, stride 1, zero padding of kernel/2 on both sides, divided by the full kernel width. */
export function avgPool(x: Float32Array, kernel: number): Float32Array {
  const half = Math.floor(kernel / 2);
  const out = new Float32Array(x.length);
  for (let j = 0; j < x.length; j++) {
    let acc = 0;
    for (let t = j - half; t <= j + half; t++) if (t >= 0 && t < x.length) acc += x[t]!;
    out[j] = acc / kernel;
  }
  return out;
}
