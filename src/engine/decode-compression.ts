import { KvCache, type CacheMark } from '../cache/kv-cache.ts';
import type { LayerCapture } from '../model/llama.ts';
import { getPress, type Press } from '../press/registry.ts';
import { topKIndices } from '../press/topk.ts';
import type { PrefillCapture, ScoringContext, ScoringModel } from '../press/types.ts';
import { KvlabError } from '../tensor/kvlab-error.ts';
import type { LoadedModel } from './loaded-model.ts';
import { scoringModel } from './scoring-model.ts';

/**
 * Decoding-time compression (kvpress's DecodingPress): every `every` decode steps, the rows generated so far
 * are scored by the press's scorer and each (layer, KV head) keeps its top `budget` of them, so a long output
 * runs in bounded memory: the prompt's rows stay as they are, the generated part holds at most
 * budget + every - 1 rows between steps (exactly `budget` right after each compression).
 */
export interface DecodeCompression {
  press: Press;
  /** Generated rows each (layer, KV head) keeps. */
  budget: number;
  /** Decode steps between compressions. */
  every: number;
}

/** A decoding-time compression that cannot run (bad spec, or a scorer that needs what decoding cannot give). */
export class DecodeCompressionError extends KvlabError {
  constructor(message: string) {
    super('decode_compression', message);
  }
}

/** `METHOD:BUDGET:EVERY`, e.g. `knorm:256:16` (the method may itself hold a colon: `adakv:knorm:256:16`). */
export function parseDecodeCompression(spec: string): DecodeCompression {
  const parts = spec.trim().split(':');
  if (parts.length < 3) throw new DecodeCompressionError(`decode compression must be METHOD:BUDGET:EVERY (e.g. knorm:256:16), got "${spec}"`);
  const every = Number(parts.pop());
  const budget = Number(parts.pop());
  const method = parts.join(':');
  let press: Press;
  try {
    press = getPress(method);
  } catch (e) {
    throw new DecodeCompressionError(`decode compression "${spec}": ${(e as Error).message}`);
  }
  const dc = { press, budget, every };
  checkDecodeCompression(dc);
  return dc;
}

/** Refuses a budget or interval that is not a positive integer, and scorers that need what decoding cannot record. */
export function checkDecodeCompression(dc: DecodeCompression): void {
  if (!Number.isSafeInteger(dc.budget) || dc.budget < 1) throw new DecodeCompressionError(`decode compression budget must be an integer >= 1 (generated rows kept per head), got ${dc.budget}`);
  if (!Number.isSafeInteger(dc.every) || dc.every < 1) throw new DecodeCompressionError(`decode compression interval must be an integer >= 1 (decode steps), got ${dc.every}`);
  const needs = dc.press.scorer.needs;
  if (needs?.observedAttention || needs?.queryMoments) {
    throw new DecodeCompressionError(
      `method ${dc.press.name} needs ${needs.observedAttention ? 'the attention every prefill query gave' : 'query statistics of the whole prefill'}, which decoding does not record; ` +
        'use a method that reads the cache (knorm, keydiff, streamingllm, random) or recent queries (snapkv, tova, pyramidkv)',
    );
  }
}

/** Whether the scorer reads captured queries (then each decode step must record them: a synchronous forward). */
export function needsDecodeQueries(dc: DecodeCompression): boolean {
  return Boolean(dc.press.scorer.needs?.queryPositions);
}

/**
 * Applies a DecodeCompression to one cache during decoding. Made after the prompt is in the cache: the rows
 * each head holds then are the prompt part, never touched. The scorer sees the generated part as its own
 * span in a scoring view (rows in position order, positions renumbered 0..G-1 so causal masks between
 * generated rows hold); scorers that read queries get those the decode steps recorded (record()), and
 * attention is then over the generated rows only.
 */
export class DecodeCompressor {
  /** Rows of the prompt part, per layer * numKvHeads + head. */
  private readonly base: Int32Array;
  private sinceLast = 0;
  compressions = 0;
  /** Generated rows evicted so far, summed over (layer, KV head). */
  evictedRows = 0;
  private readonly model: ScoringModel;
  /** Per layer * numKvHeads + head: the recorded query rows ([group, headDim] post- and pre-RoPE) of its generated rows. */
  private readonly queries: { post: Float32Array[]; pre: Float32Array[] }[] | null;

  constructor(
    readonly lm: LoadedModel,
    readonly cache: KvCache,
    readonly spec: DecodeCompression,
    /** Rows of the prompt part in every head, when the cache already holds generated rows; default: all it holds now. */
    promptRows?: number,
  ) {
    checkDecodeCompression(spec);
    this.base = Int32Array.from(cache.heads.flat(), (s) => promptRows ?? s.len);
    this.queries = needsDecodeQueries(spec) ? Array.from(this.base, () => ({ post: [] as Float32Array[], pre: [] as Float32Array[] })) : null;
    const refuse = (what: string) => () => {
      throw new DecodeCompressionError(`method ${spec.press.name} ${what}, which decoding-time compression cannot do; use a method that scores the cache`);
    };
    this.model = { ...scoringModel(lm, refuse('scores another text')), run: refuse('runs the model on the context') };
  }

  get capturesQueries(): boolean {
    return this.queries !== null;
  }

  /** Generated rows per head (the same in every head: each compression keeps `budget` in each). */
  get generatedRows(): number {
    return this.cache.head(0, 0).len - this.base[0]!;
  }

  /** Records a decode step's queries (the forward pass's onLayer), for scorers that read them. */
  record(c: LayerCapture): void {
    if (!this.queries) return;
    const cfg = this.lm.config;
    const group = cfg.numHeads / cfg.numKvHeads;
    const w = group * cfg.headDim;
    for (let i = 0; i < c.n; i++)
      for (let g = 0; g < cfg.numKvHeads; g++) {
        const at = (i * cfg.numHeads + g * group) * cfg.headDim;
        const store = this.queries[c.layer * cfg.numKvHeads + g]!;
        store.post.push(c.q.slice(at, at + w));
        store.pre.push(c.qPreRope.slice(at, at + w));
      }
  }

  /** Call after each decode step has appended its row; compresses when due. Returns whether it did. */
  afterStep(): boolean {
    this.sinceLast++;
    if (this.sinceLast < this.spec.every || this.generatedRows <= this.spec.budget) return false;
    this.compress();
    this.sinceLast = 0;
    return true;
  }

  /** Scores the generated part and keeps `budget` rows of it in every (layer, KV head). */
  compress(): void {
    const { cache, spec } = this;
    const G = this.generatedRows;
    if (G <= spec.budget) return;
    const H = cache.numKvHeads;
    const view = new KvCache(cache.numLayers, H, cache.headDim, 'f32');
    const rowPos = Int32Array.from({ length: G }, (_, j) => j);
    cache.forEachHead((s, l, h) => {
      const b = this.base[l * H + h]!;
      if (s.len - b !== G) throw new Error(`decode compression: head (${l}, ${h}) holds ${s.len - b} generated rows, the others ${G}`);
      view.head(l, h).load(rowPos, s.keys(b, s.len), s.values(b, s.len));
    });
    view.nextPos = G;
    const span = { start: 0, end: G };
    const ctx: ScoringContext = {
      lm: this.model,
      cache: view,
      ids: [],
      span,
      prefix: { start: 0, end: 0 },
      suffix: '',
      queryLead: '',
      keys: 'causal',
      capture: this.capture(span),
    };
    const scores = spec.press.scorer.score(ctx);
    cache.forEachHead((s, l, h) => {
      const b = this.base[l * H + h]!;
      const sel = topKIndices(scores[l]![h]!, spec.budget);
      const rows = new Int32Array(b + sel.length);
      for (let i = 0; i < b; i++) rows[i] = i;
      sel.forEach((j, r) => (rows[b + r] = b + j));
      cache.keep(l, h, rows);
      const q = this.queries?.[l * H + h];
      if (q) {
        q.post = Array.from(sel, (j) => q.post[j]!);
        q.pre = Array.from(sel, (j) => q.pre[j]!);
      }
    });
    this.evictedRows += (G - spec.budget) * cache.numLayers * H;
    this.compressions++;
  }

  /** The recorded queries at the rows the scorer asks for, laid out as a prefill capture of the scoring view. */
  private capture(span: { start: number; end: number }): PrefillCapture {
    const cfg = this.lm.config;
    const L = cfg.numLayers;
    const wanted = this.queries ? [...new Set(this.spec.press.scorer.needs!.queryPositions!(span, span.end))].filter((p) => p >= 0 && p < span.end).sort((a, b) => a - b) : [];
    const row = cfg.numHeads * cfg.headDim;
    const group = cfg.numHeads / cfg.numKvHeads;
    const queries = Array.from({ length: L }, () => new Float32Array(wanted.length * row));
    const queriesPreRope = Array.from({ length: L }, () => new Float32Array(wanted.length * row));
    if (this.queries)
      for (let l = 0; l < L; l++)
        for (let g = 0; g < cfg.numKvHeads; g++) {
          const store = this.queries[l * cfg.numKvHeads + g]!;
          if (store.post.length !== span.end) throw new Error(`decode compression: ${store.post.length} recorded queries for ${span.end} generated rows (was every decode step recorded?)`);
          wanted.forEach((p, i) => {
            queries[l]!.set(store.post[p]!, i * row + g * group * cfg.headDim);
            queriesPreRope[l]!.set(store.pre[p]!, i * row + g * group * cfg.headDim);
          });
        }
    return { queryPositions: Int32Array.from(wanted), queries, queriesPreRope };
  }
}

/**
 * Returns a cache to a mark taken before a decode-compressed generation: decoding-time compression compacts
 * only rows past the mark (the generated part), so keeping each head's rows below the mark restores it,
 * where truncate() refuses any compaction after its mark.
 */
export function dropRowsAfter(cache: KvCache, mark: CacheMark): void {
  cache.forEachHead((s, l, h) => {
    const n = mark.lengths[l * cache.numKvHeads + h]!;
    if (s.len > n) cache.keep(l, h, Int32Array.from({ length: n }, (_, i) => i));
  });
  cache.nextPos = mark.nextPos;
}
