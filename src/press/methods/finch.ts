import type { KvHeadView } from '../../tensor/backend.ts';
import type { Scorer, Scores } from '../types.ts';
import { gatherRows } from './kvzip.ts';

export interface FinchOptions {
  /** The prompt whose attention guides the selection (the question, when it is known). */
  prompt?: string;
  /** Context rows per chunk. */
  chunkSize?: number;
}

export const FINCH_DEFAULT_PROMPT = 'Answer the question about the context above.';

/**
 * FINCH (Corallo & Papotti 2024, TACL): prompt-guided compression, chunk by chunk. For each chunk c of the
 * span, P = queryLead + prompt + the template's assistant header is run on top of the cache (then truncated
 * away) and its queries attend over [prefix ++ c ++ P] only (the chunk alone, as FINCH reads the document a
 * chunk at a time with the prompt after it); a key's score is its attention summed over P's queries, averaged
 * over them and the GQA group. kvlab compresses before the question is known, so the prompt is a generic
 * instruction unless one is given; pass the question as `prompt` for FINCH proper. Defaults: chunkSize 512,
 * prompt "Answer the question about the context above."
 */
export function finchScorer({ prompt = FINCH_DEFAULT_PROMPT, chunkSize = 512 }: FinchOptions = {}): Scorer {
  if (!(Number.isInteger(chunkSize) && chunkSize >= 1)) throw new RangeError(`FINCH chunk size must be a positive integer, got ${chunkSize}`);
  return {
    summary: 'FINCH: attention of a prompt over each chunk',
    options: { prompt, chunkSize },
    score(ctx) {
      const { lm, cache, span, prefix } = ctx;
      const cfg = lm.config;
      const G = cfg.numHeads / cfg.numKvHeads;
      const P = [...lm.encode(ctx.queryLead + prompt), ...lm.encode(ctx.suffix)];
      if (cache.nextPos + P.length > cfg.maxPositionEmbeddings) {
        throw new RangeError(`finch: the ${P.length}-token prompt after ${cache.nextPos} cached tokens passes max_position_embeddings ${cfg.maxPositionEmbeddings}`);
      }
      const T = span.end - span.start;
      const scores: Scores = Array.from({ length: cfg.numLayers }, () => Array.from({ length: cfg.numKvHeads }, () => new Float32Array(T)));
      const offset = prefix.end - prefix.start;
      for (let cs = span.start; cs < span.end; cs += chunkSize) {
        const ce = Math.min(span.end, cs + chunkSize);
        const mark = cache.mark();
        const N = cache.nextPos;
        try {
          lm.run(cache, P, (c) => {
            // Rows of P appended so far (the run may come in pieces): the last rEnd rows of every head.
            const rEnd = c.positions[c.n - 1]! - N + 1;
            const heads: KvHeadView[] = cache.layer(c.layer).map((hs) =>
              gatherRows(hs, cfg.headDim, [
                [prefix.start, prefix.end],
                [cs, ce],
                [hs.len - rEnd, hs.len],
              ]),
            );
            const sums = lm.attentionStats(c.q, c.positions, heads, 'sum');
            sums.forEach((s, g) => {
              const dst = scores[c.layer]![g]!;
              for (let j = 0; j < ce - cs; j++) dst[cs - span.start + j] = dst[cs - span.start + j]! + s[offset + j]! / (P.length * G);
            });
          });
        } finally {
          cache.truncate(mark);
        }
        ctx.onProgress?.(ce - span.start, T);
      }
      return scores;
    },
  };
}
