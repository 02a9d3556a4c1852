import type { KvHeadView } from '../tensor/backend.ts';
import type { ScoringContext } from './types.ts';

/**
 * Attention that captured queries at `positions` give to the keys of ctx.span, summed over those queries
 * and the query heads of each KV group, per [layer][kvHead] (span-relative). With ctx.keys = 'span' the
 * softmax runs over the span's own keys only (span-local voting).
 */
export function windowAttention(ctx: ScoringContext, positions: number[], reduce: 'sum' | 'max' = 'sum'): Float32Array[][] {
  const { cache, capture, span } = ctx;
  const cfg = ctx.lm.config;
  const rowSize = cfg.numHeads * cfg.headDim;
  const slots = positions.map((p) => {
    const i = capture.queryPositions.indexOf(p);
    if (i < 0) throw new Error(`query at position ${p} was not captured during prefill`);
    return i;
  });
  const qPos = Int32Array.from(positions);
  const out: Float32Array[][] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const q = new Float32Array(slots.length * rowSize);
    slots.forEach((s, i) => q.set(capture.queries[l]!.subarray(s * rowSize, (s + 1) * rowSize), i * rowSize));
    const heads: KvHeadView[] =
      ctx.keys === 'span'
        ? cache.layer(l).map((hs) => ({
            // A quantized head's span rows come dequantized (its packed rows are not laid out by position).
            k: hs.quant || hs.keyChannels ? hs.keys(span.start, span.end) : hs.k.subarray(span.start * cfg.headDim, span.end * cfg.headDim),
            v: hs.quant ? hs.values(span.start, span.end) : hs.v.subarray(span.start * cfg.headDim, span.end * cfg.headDim),
            pos: hs.pos.subarray(span.start, span.end),
            len: span.end - span.start,
          }))
        : cache.layer(l);
    const acc = ctx.lm.attentionStats(q, qPos, heads, reduce);
    out.push(acc.map((a) => (ctx.keys === 'span' ? a : a.slice(span.start, span.end))));
  }
  return out;
}

/** The last w positions of the span (fewer if the span is shorter). */
export function lastPositions(span: { start: number; end: number }, w: number): number[] {
  const from = Math.max(span.start, span.end - w);
  return Array.from({ length: span.end - from }, (_, i) => from + i);
}
