import type { HeadStore } from '../../cache/kv-cache.ts';
import type { LayerCapture } from '../../model/llama.ts';
import type { KvHeadView } from '../../tensor/backend.ts';
import type { Scorer, Scores, ScoringContext } from '../types.ts';

export interface KvzipOptions {
  /** Context chunk length m for reconstruction. */
  chunkSize?: number;
  /** Raw ids of the previous chunk's tail quoted in the repeat prompt of chunk t > 1. */
  tailTokens?: number;
  firstPrompt?: string;
  nextPrompt?: string;
  /** KVzip+: weight each attention by ||W_O^h v_j|| / ||h_i|| before the max (h_i: the query's hidden state). */
  normalized?: boolean;
}

export const KVZIP_FIRST_PROMPT = 'Repeat the previous context exactly.';
export const KVZIP_NEXT_PROMPT = 'Repeat the part of the previous context exactly, starting with ';
const KVZIP_CHUNK = 2000;
const KVZIP_TAIL = 8;

/**
 * KVzip scores by context reconstruction. For each chunk c_t of the span, R_t = P_t ++ post ++ c_t is run on
 * top of the cache (positions after it; ordinary causal attention), then truncated away. Per layer and KV
 * head, the G grouped queries of R_t attend over the reduced key set [prefix ++ c_t ++ R_t] (causal only in
 * R_t x R_t, fp32 softmax); a key's score is the max probability over the G heads and all R_t queries.
 */
export function kvzipScorer(opts: KvzipOptions = {}): Scorer {
  const { chunkSize = KVZIP_CHUNK, tailTokens = KVZIP_TAIL, normalized = false } = opts;
  return {
    summary: normalized ? 'KVzip+: context reconstruction, attention weighted by ||W_O v|| / ||h||' : 'KVzip: context reconstruction',
    options: { chunkSize, tailTokens, ...(opts.firstPrompt ? { firstPrompt: opts.firstPrompt } : {}), ...(opts.nextPrompt ? { nextPrompt: opts.nextPrompt } : {}) },
    score: (ctx) => kvzipScores(ctx, opts),
  };
}

export function kvzipScores(ctx: ScoringContext, opts: KvzipOptions = {}): Scores {
  const { lm, cache, span, prefix } = ctx;
  const cfg = lm.config;
  const requested = opts.chunkSize ?? KVZIP_CHUNK;
  const tail = opts.tailTokens ?? KVZIP_TAIL;
  const first = lm.encode(ctx.queryLead + (opts.firstPrompt ?? KVZIP_FIRST_PROMPT));
  const next = lm.encode(ctx.queryLead + (opts.nextPrompt ?? KVZIP_NEXT_PROMPT));
  const post = lm.encode(ctx.suffix);
  const T = span.end - span.start;
  const m = reconstructionChunk(cfg.maxPositionEmbeddings, cache.nextPos, Math.max(first.length, next.length + tail) + post.length, requested, T);
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
      lm.run(cache, R, (c) => {
        const rEnd = c.positions[c.n - 1]! - N + 1;
        const heads: KvHeadView[] = cache.layer(c.layer).map((hs) =>
          gatherRows(hs, d, [
            [prefix.start, prefix.end],
            [cs, ce],
            [hs.len - rEnd, hs.len],
          ]),
        );
        if (opts.normalized) {
          normalizedScores(ctx, c, heads, cs, ce, scores[c.layer]!);
          return;
        }
        const max = lm.attentionStats(c.q, c.positions, heads, 'max');
        const chunkOffset = prefix.end - prefix.start;
        for (let g = 0; g < cfg.numKvHeads; g++) {
          const dst = scores[c.layer]![g]!;
          const src = max[g]!;
          for (let j = 0; j < ce - cs; j++) {
            const v = src[chunkOffset + j]!;
            if (v > dst[cs - span.start + j]!) dst[cs - span.start + j] = v;
          }
        }
      });
    } finally {
      cache.truncate(mark);
    }
    done += ce - cs;
    ctx.onProgress?.(done, T);
  }
  return scores;
}

/**
 * The chunk length reconstruction can use: each R_t runs at positions after the whole cached prompt, so the
 * context end plus the repeat prompt plus the chunk must stay within max_position_embeddings. A shorter
 * chunk is used (and announced: scores depend on the chunking) when the requested one does not fit.
 */
export function reconstructionChunk(maxPositions: number, cached: number, promptTokens: number, requested: number, spanTokens: number): number {
  const room = maxPositions - cached - promptTokens;
  if (room < 1) {
    throw new RangeError(
      `kvzip cannot score this context: its reconstruction runs after the ${cached} cached tokens and needs ${promptTokens} tokens of repeat prompt ` +
        `plus at least one context token, but max_position_embeddings is ${maxPositions}; shorten the context by ${1 - room} tokens or more, or use another method`,
    );
  }
  const wanted = Math.min(requested, spanTokens);
  if (room >= wanted) return requested;
  process.emitWarning(
    `kvzip: ${cached} cached tokens leave room for reconstruction chunks of ${room} tokens within max_position_embeddings ${maxPositions} ` +
      `(not ${requested}); scoring in ${Math.ceil(spanTokens / room)} chunks of at most ${room} tokens`,
    'KvzipChunkWarning',
  );
  return room;
}

/** Copies the keys and positions of the given row ranges into one view (values are not read for statistics). */
export function gatherRows(hs: HeadStore, d: number, ranges: [number, number][]): KvHeadView {
  const len = ranges.reduce((s, [a, b]) => s + (b - a), 0);
  const k = new Float32Array(len * d);
  const pos = new Int32Array(len);
  let at = 0;
  for (const [a, b] of ranges) {
    k.set(hs.keys(a, b), at * d);
    pos.set(hs.pos.subarray(a, b), at);
    at += b - a;
  }
  return { k, v: k, pos, len };
}

/**
 * KVzip+: per query head h, max over R_t queries of p_hij / ||h_i||, times ||W_O^h v_j||; the max over the
 * group's heads is the key's score. One attention call per query head (the weights differ per head).
 */
function normalizedScores(ctx: ScoringContext, c: LayerCapture, heads: KvHeadView[], cs: number, ce: number, out: Float32Array[]): void {
  const cfg = ctx.lm.config;
  const d = cfg.headDim;
  const D = cfg.hiddenSize;
  const G = cfg.numHeads / cfg.numKvHeads;
  const span = ctx.span;
  const chunkOffset = ctx.prefix.end - ctx.prefix.start;
  const m = ce - cs;
  const queryWeight = new Float32Array(c.n);
  for (let i = 0; i < c.n; i++) {
    let ss = 0;
    for (let k = 0; k < D; k++) ss += c.hidden[i * D + k]! ** 2;
    queryWeight[i] = 1 / Math.max(Math.sqrt(ss), 1e-12);
  }
  for (let h = 0; h < cfg.numHeads; h++) {
    const g = Math.floor(h / G);
    const q = new Float32Array(c.n * d);
    for (let i = 0; i < c.n; i++) q.set(c.q.subarray((i * cfg.numHeads + h) * d, (i * cfg.numHeads + h + 1) * d), i * d);
    const [max] = ctx.lm.attentionStats(q, c.positions, [heads[g]!], 'max', { nHeads: 1, queryWeight });
    const valueNorms = ctx.lm.outputNorms(c.layer, h, ctx.cache.head(c.layer, g).values(cs, ce), m);
    const dst = out[g]!;
    for (let j = 0; j < m; j++) {
      const v = max![chunkOffset + j]! * valueNorms[j]!;
      if (v > dst[cs - span.start + j]!) dst[cs - span.start + j] = v;
    }
  }
}
