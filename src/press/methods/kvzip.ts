import { prefill } from '../../engine/prefill.ts';
import type { KvHeadView } from '../../tensor/backend.ts';
import type { Scorer, Scores, ScoringContext } from '../types.ts';

export interface KvzipOptions {
  /** Context chunk length m for reconstruction. */
  chunkSize?: number;
  /** Raw ids of the previous chunk's tail quoted in the repeat prompt of chunk t > 1. */
  tailTokens?: number;
  firstPrompt?: string;
  nextPrompt?: string;
}

export const KVZIP_FIRST_PROMPT = '\n\nRepeat the previous context exactly.';
export const KVZIP_NEXT_PROMPT = '\n\nRepeat the part of the previous context exactly, starting with ';

/**
 * KVzip scores by context reconstruction. For each chunk c_t of the span, R_t = P_t ++ post ++ c_t is run on
 * top of the cache (positions after it; ordinary causal attention), then truncated away. Per layer and KV
 * head, the G grouped queries of R_t attend over the reduced key set [prefix ++ c_t ++ R_t] (causal only in
 * R_t x R_t, fp32 softmax); a key's score is the max probability over the G heads and all R_t queries.
 */
export function kvzipScorer(opts: KvzipOptions = {}, name = 'kvzip'): Scorer {
  return { name, score: (ctx) => kvzipScores(ctx, opts) };
}

export function kvzipScores(ctx: ScoringContext, opts: KvzipOptions = {}): Scores {
  const { lm, cache, span, prefix } = ctx;
  const cfg = lm.config;
  const m = opts.chunkSize ?? 2000;
  const tail = opts.tailTokens ?? 8;
  const tok = lm.tokenizer;
  const first = tok.encode(opts.firstPrompt ?? KVZIP_FIRST_PROMPT);
  const next = tok.encode(opts.nextPrompt ?? KVZIP_NEXT_PROMPT);
  const post = tok.encode(ctx.suffix);
  const T = span.end - span.start;
  const scores: Scores = Array.from({ length: cfg.numLayers }, () =>
    Array.from({ length: cfg.numKvHeads }, () => new Float32Array(T)),
  );
  const d = cfg.headDim;
  let done = 0;
  for (let cs = span.start; cs < span.end; cs += m) {
    const ce = Math.min(span.end, cs + m);
    const chunk = ctx.ids.slice(cs, ce);
    const lead = cs === span.start ? first : [...next, ...ctx.ids.slice(Math.max(span.start, cs - tail), cs)];
    const R = [...lead, ...post, ...chunk];
    const mark = cache.mark();
    const N = cache.nextPos;
    try {
      prefill(lm.model, cache, R, {
        onLayer: (c) => {
          const rEnd = c.positions[c.n - 1]! - N + 1;
          const heads: KvHeadView[] = cache.layer(c.layer).map((hs) =>
            gatherRows(hs, d, [
              [prefix.start, prefix.end],
              [cs, ce],
              [hs.len - rEnd, hs.len],
            ]),
          );
          const max = heads.map((h) => new Float32Array(h.len));
          lm.model.backend.attention({
            q: c.q,
            out: null,
            nq: c.n,
            nHeads: cfg.numHeads,
            nKvHeads: cfg.numKvHeads,
            headDim: d,
            qPos: c.positions,
            heads,
            scale: 1 / Math.sqrt(d),
            stats: { fromQuery: 0, max },
          });
          const chunkOffset = prefix.end - prefix.start;
          for (let g = 0; g < cfg.numKvHeads; g++) {
            const dst = scores[c.layer]![g]!;
            const src = max[g]!;
            for (let j = 0; j < ce - cs; j++) {
              const v = src[chunkOffset + j]!;
              if (v > dst[cs - span.start + j]!) dst[cs - span.start + j] = v;
            }
          }
        },
      });
    } finally {
      cache.truncate(mark);
    }
    done += ce - cs;
    ctx.onProgress?.(done, T);
  }
  return scores;
}

/** Copies the keys and positions of the given row ranges into one view (values are not read for statistics). */
function gatherRows(hs: KvHeadView, d: number, ranges: [number, number][]): KvHeadView {
  const len = ranges.reduce((s, [a, b]) => s + (b - a), 0);
  const k = new Float32Array(len * d);
  const pos = new Int32Array(len);
  let at = 0;
  for (const [a, b] of ranges) {
    k.set(hs.k.subarray(a * d, b * d), at * d);
    pos.set(hs.pos.subarray(a, b), at);
    at += b - a;
  }
  return { k, v: k, pos, len };
}
