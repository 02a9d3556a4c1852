import type { BudgetPolicy, KeptCounts, Scorer, Scores } from '../types.ts';

export const CHUNKED_DEFAULT = 1024;

/** [start, end) of each chunk of a span of T rows, span-relative. */
export function chunkBounds(T: number, chunkLength: number): [number, number][] {
  const out: [number, number][] = [];
  for (let c = 0; c < T; c += chunkLength) out.push([c, Math.min(T, c + chunkLength)]);
  return out;
}

function checkChunk(chunkLength: number): void {
  if (!(Number.isInteger(chunkLength) && chunkLength >= 1)) throw new RangeError(`chunk length must be a positive integer, got ${chunkLength}`);
}

/**
 * The chunked wrapper (kvpress ChunkPress, after FINCH): the span is cut into chunks of chunkLength rows and
 * each chunk is scored on its own, as if it were the whole span and its keys the only keys (ctx.keys =
 * 'span'): attention-based scorers see only the chunk, so a long context costs one chunk's scoring memory at
 * a time and every part of it keeps its share. Pair with chunkedBudget. Default chunk: 1024 rows (kvpress).
 */
export function chunkedScorer(base: Scorer, chunkLength = CHUNKED_DEFAULT): Scorer {
  checkChunk(chunkLength);
  const basePositions = base.needs?.queryPositions;
  return {
    summary: `chunked (${chunkLength} rows): ${base.summary}`,
    options: { ...base.options, chunkLength },
    needs: {
      ...base.needs,
      ...(basePositions
        ? {
          queryPositions: (span, n) =>
            chunkBounds(span.end - span.start, chunkLength).flatMap(([a, b]) => basePositions({ start: span.start + a, end: span.start + b }, n)),
        }
        : {}),
    },
    score(ctx) {
      const T = ctx.span.end - ctx.span.start;
      const parts = chunkBounds(T, chunkLength).map(([a, b], i, all) =>
        base.score({
          ...ctx,
          span: { start: ctx.span.start + a, end: ctx.span.start + b },
          keys: 'span',
          onProgress: ctx.onProgress && ((done) => ctx.onProgress!(a + Math.min(done, b - a), T)),
        }),
      );
      return concatScores(parts);
    },
  };
}

/** Scores of consecutive chunks joined along the span, stages included. */
export function concatScores(parts: Scores[]): Scores {
  const join = (sets: Float32Array[][][]) =>
    sets[0]!.map((layer, l) =>
      layer.map((_, h) => {
        const out = new Float32Array(sets.reduce((n, s) => n + s[l]![h]!.length, 0));
        let at = 0;
        for (const s of sets) {
          out.set(s[l]![h]!, at);
          at += s[l]![h]!.length;
        }
        return out;
      }),
    );
  const out: Scores = join(parts);
  const names = Object.keys(parts[0]?.stages ?? {});
  if (names.length) out.stages = Object.fromEntries(names.map((n) => [n, join(parts.map((p) => p.stages![n]!))]));
  if (parts.every((p) => p.rescore)) {
    const starts = parts.reduce<number[]>((acc, p) => [...acc, acc.at(-1)! + p[0]![0]!.length], [0]);
    // Rows are rescored by the chunk holding the first of them, as offsets from its start; they lie in that
    // chunk unless protection removed rows first and the policy's chunks straddle the scorer's.
    out.rescore = (l, h, rows) => {
      const k = Math.max(0, starts.findIndex((s, i) => i < parts.length && rows[0]! >= s && rows[0]! < starts[i + 1]!));
      return parts[k]!.rescore!(l, h, Int32Array.from(rows, (r) => r - starts[k]!));
    };
  }
  return out;
}

/** The base policy applied to each chunk on its own, at the same ratio; kept rows are the union. */
export function chunkedBudget(base: BudgetPolicy, chunkLength = CHUNKED_DEFAULT): BudgetPolicy {
  checkChunk(chunkLength);
  return {
    name: `chunked(${chunkLength}, ${base.name})`,
    select(scores, ratio) {
      const T = scores[0]?.[0]?.length ?? 0;
      const keep: number[][][] = scores.map((layer) => layer.map(() => []));
      for (const [a, b] of chunkBounds(T, chunkLength)) {
        const part: Scores = scores.map((layer) => layer.map((s) => s.subarray(a, b)));
        if (scores.stages) part.stages = Object.fromEntries(Object.entries(scores.stages).map(([n, s]) => [n, s.map((layer) => layer.map((x) => x.subarray(a, b)))]));
        const rescore = scores.rescore;
        if (rescore) part.rescore = (l, h, rows) => rescore(l, h, Int32Array.from(rows, (r) => a + r));
        base.select(part, ratio).forEach((layer, l) => layer.forEach((k, h) => keep[l]![h]!.push(...Array.from(k, (j) => a + j))));
      }
      return keep.map((layer) => layer.map((k) => Int32Array.from(k)));
    },
    expectedKept(layers, heads, T, ratio) {
      const parts = chunkBounds(T, chunkLength).map(([a, b]) => base.expectedKept(layers, heads, b - a, ratio));
      return sumKept(parts, layers, heads);
    },
  };
}

/** Per-chunk counts summed: per head or per layer when every chunk states them so, in total otherwise. */
function sumKept(parts: KeptCounts[], layers: number, heads: number): KeptCounts {
  if (parts.length === 0) return { level: 'total', counts: [0] };
  const level = parts[0]!.level;
  if (parts.every((p) => p.level === level) && (level === 'head' || level === 'layer' || level === 'total')) {
    const n = level === 'head' ? layers * heads : level === 'layer' ? layers : 1;
    return { level, counts: Array.from({ length: n }, (_, i) => parts.reduce((s, p) => s + p.counts[i]!, 0)) };
  }
  return { level: 'total', counts: [parts.reduce((s, p) => s + p.counts.reduce((a, b) => a + b, 0), 0)] };
}
