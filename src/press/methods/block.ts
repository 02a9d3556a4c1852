import { keptCount } from '../budgets.ts';
import { perHead } from '../per-head.ts';
import { topKIndices } from '../topk.ts';
import type { BudgetPolicy, Scorer, Scores } from '../types.ts';
import { keyDiffRows } from './keydiff.ts';

export const BLOCK_SIZE = 128;

/**
 * KeyDiff scores that Block can recompute on any subset of rows (the anchor is the subset's own mean key).
 * Scores over the whole span are KeyDiff's; `rescore` gives KeyDiff over the rows asked for.
 */
export function blockKeyDiffScorer(): Scorer {
  return {
    summary: 'Block: KeyDiff recomputed over the kept rows and each new block',
    score(ctx) {
      const full: Scores = perHead(ctx, ({ keys }) => keyDiffRows(keys));
      const { start } = ctx.span;
      full.rescore = (l, h, rows) => {
        const hs = ctx.cache.head(l, h);
        return Float32Array.from(keyDiffRows(Array.from(rows, (r) => hs.keys(start + r, start + r + 1))));
      };
      return full;
    },
  };
}

/**
 * Block (KeyDiff, Park et al. 2025, arXiv 2504.15364; kvpress BlockPress): block-wise prompt processing with a
 * bounded cache. Per head, the first n = floor(T * ratio) rows are kept; then each following block of
 * blockSize rows joins them, the union is rescored as if it were the whole cache, and its top n stay. Needs
 * scores with `rescore` (blockKeyDiffScorer). Default block size: 128 (kvpress).
 */
export function blockBudget(blockSize = BLOCK_SIZE): BudgetPolicy {
  if (!(Number.isInteger(blockSize) && blockSize >= 1)) throw new RangeError(`block size must be a positive integer, got ${blockSize}`);
  return {
    name: `block(${blockSize})`,
    select(scores, ratio) {
      const rescore = scores.rescore;
      if (!rescore) throw new Error(`budget block(${blockSize}) needs scores that can be recomputed on a subset of rows (a Block scorer)`);
      const T = scores[0]?.[0]?.length ?? 0;
      const n = keptCount(T, ratio);
      return scores.map((layer, l) =>
        layer.map((_, h) => {
          let kept = Int32Array.from({ length: n }, (_, i) => i);
          for (let i = n; i < T; i += blockSize) {
            const rows = Int32Array.from([...kept, ...Array.from({ length: Math.min(T, i + blockSize) - i }, (_, j) => i + j)]);
            const s = rescore(l, h, rows);
            kept = Int32Array.from(topKIndices(s, n), (r) => rows[r]!).sort();
          }
          return kept;
        }),
      );
    },
    expectedKept: (layers, heads, T, ratio) => ({ level: 'head', counts: new Array<number>(layers * heads).fill(keptCount(T, ratio)) }),
  };
}
