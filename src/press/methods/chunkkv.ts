import type { Scorer } from '../types.ts';

/**
 * ChunkKV (Liu et al. 2025, arXiv 2502.00299): semantic chunks are kept or dropped whole. The span is cut
 * into chunks of chunkLength rows (the last may be shorter); a chunk's score is the mean over its rows of
 * the base scores summed over the layer's KV heads, and every row of the chunk carries it, so each head of a
 * layer keeps the same chunks. With a uniform budget the best chunks are kept whole; floor(T * ratio) rarely
 * ends on a chunk border, so the next best chunk is kept from its start (kvpress keeps whole chunks only and
 * so misses the budget by up to a chunk). Defaults: chunkLength 20 (kvpress; the paper uses 10), SnapKV base.
 */
export function chunkKvScorer(base: Scorer, chunkLength = 20): Scorer {
  if (!(Number.isInteger(chunkLength) && chunkLength >= 1)) throw new RangeError(`ChunkKV chunk length must be a positive integer, got ${chunkLength}`);
  return {
    summary: `ChunkKV: whole chunks by ${base.summary}`,
    options: { ...base.options, chunkLength },
    needs: base.needs,
    score(ctx) {
      return base.score(ctx).map((layer) => {
        const chunked = chunkScores(layer, chunkLength);
        return layer.map(() => chunked.slice());
      });
    },
  };
}

/** Per row: the mean over its chunk of the scores summed over heads. */
export function chunkScores(heads: Float32Array[], chunkLength: number): Float32Array {
  const T = heads[0]?.length ?? 0;
  const out = new Float32Array(T);
  for (let c = 0; c < T; c += chunkLength) {
    const end = Math.min(T, c + chunkLength);
    let sum = 0;
    for (const s of heads) for (let j = c; j < end; j++) sum += s[j]!;
    out.fill(sum / (end - c), c, end);
  }
  return out;
}
