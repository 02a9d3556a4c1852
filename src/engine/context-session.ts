import { ContextTooLongError } from '../tensor/kvlab-error.ts';
import { KvCache } from '../cache/kv-cache.ts';
import { capturingPrefill, type CaptureNeeds, type PrefillCapture } from '../model/capture.ts';
import { userContextLayout, type SessionLayout, type Span, type UserContextOptions } from '../model/prompt-layout.ts';
import type { TokenSpan } from '../model/segments.ts';
import { checkRatio } from '../press/budgets.ts';
import { mergeEvictedValues } from '../press/methods/cam.ts';
import { rerotateKeys } from '../press/methods/key-rerotation.ts';
import { pruneKeyChannels } from '../press/methods/think.ts';
import { protectedSelect, type Protection } from '../press/protect.ts';
import type { Press } from '../press/registry.ts';
import type { Scorer, Scores, ScoringContext, ScoringModel } from '../press/types.ts';
import { generate, type GenerateOptions, type GenerateResult } from './generate.ts';
import { BatchScheduler } from './scheduler.ts';
import type { SequenceResult, SharedContext } from './scheduler-types.ts';
import type { LoadedModel } from './loaded-model.ts';
import { scoringModel } from './scoring-model.ts';
import { resolveProtection, type ProtectionChoice } from './default-protection.ts';
import { dropRowsAfter } from './decode-compression.ts';
import { reconstructionCheck, type ReconstructionCheck, type ReconstructionOptions } from './reconstruction-check.ts';

export type { SessionLayout } from '../model/prompt-layout.ts';

export interface ContextOptions extends UserContextOptions {
  chunkSize?: number;
  onPrefillProgress?: (done: number, total: number) => void;
}

export interface CompressionReport {
  method: string;
  ratio: number;
  contextTokens: number;
  /** K+V bytes of the context rows before and after compression. */
  contextBytesFull: number;
  contextBytesKept: number;
  /** All cached rows (template prefix included). */
  bytesFull: number;
  bytesKept: number;
  /** Fraction of context rows kept, per layer (averaged over KV heads). */
  perLayerKept: number[];
  /** Wall time of each step: the prefill with capture, the scorer, and selecting and keeping the rows. */
  timings: { prefillMs: number; scoreMs: number; keepMs: number };
  /** With `ratio: "auto"`: each candidate's reconstruction accuracy and the ratio chosen (= `ratio`). */
  auto?: ReconstructionCheck;
}

export interface ScoreOptions {
  /**
   * Also score each named range of the layout on its own keys (span-local scores, what fair eviction ranks
   * a range by); needs a layout with ranges.
   */
  spanLocal?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface CompressOptions extends ScoreOptions {
  /**
   * Whitelist and fair eviction over the layout's named ranges, inside the press's own budget. Default
   * 'default': template tokens inside the span and a detected defense sentence are kept (default-protection.ts;
   * a layout without such ranges, like openContext()'s, is compressed as the bare method does); 'none' keeps
   * nothing on purpose.
   */
  protection?: ProtectionChoice;
}

/** A compressed session, what its compression kept, and the report. */
export interface Compressed {
  session: ContextSession;
  report: CompressionReport;
  /** Span-relative rows kept per [layer][KV head], ascending. */
  keep: Int32Array[][];
}

/**
 * A compressible span of a prompt, prefilled once, compressed once, then asked any number of queries:
 * each query is appended, answered, and truncated away so the compressed cache is untouched for the next.
 * The usual layout puts a context in the user turn of the model's own chat template (KVzip, kvpress).
 */
export class ContextSession {
  readonly ids: number[];
  readonly prefix: Span;
  readonly context: Span;
  readonly suffix: string;
  readonly layout: SessionLayout;
  cache: KvCache;
  private prefilled = false;

  constructor(readonly lm: LoadedModel, layout: SessionLayout, readonly opts: ContextOptions = {}) {
    if (layout.ids.length > lm.config.maxPositionEmbeddings) {
      throw new ContextTooLongError(`context of ${layout.ids.length} tokens is longer than the model allows (${lm.config.maxPositionEmbeddings})`);
    }
    this.layout = layout;
    this.ids = layout.ids;
    this.prefix = layout.prefix;
    this.context = layout.context;
    this.suffix = layout.suffix;
    this.cache = lm.newCache();
  }

  /** Prefills the prompt, recording what the given scorers need for the context and any extra spans. */
  prefillCapture(needs: (CaptureNeeds | undefined)[], extraSpans: Span[] = []): { capture: PrefillCapture; logits: Float32Array } {
    if (this.prefilled) throw new Error('this context is already prefilled');
    this.lm.checkMappedFiles();
    const spans = [this.context, ...extraSpans];
    const result = capturingPrefill(this.lm.model, this.cache, this.ids, spans, needs.filter((n) => n !== undefined), {
      chunkSize: this.opts.chunkSize,
      onProgress: this.opts.onPrefillProgress,
    });
    this.prefilled = true;
    return result;
  }

  scoringContext(capture: PrefillCapture, over: Partial<Pick<ScoringContext, 'span' | 'keys' | 'onProgress'>> = {}): ScoringContext {
    return {
      lm: this.scoringModel(),
      cache: this.cache,
      ids: this.ids,
      span: over.span ?? this.context,
      prefix: this.prefix,
      suffix: this.suffix,
      queryLead: this.layout.queryLead,
      keys: over.keys ?? 'causal',
      capture,
      onProgress: over.onProgress,
    };
  }

  /**
   * The compression pipeline in one call, on this session's own cache: prefill (recording what the scorer
   * needs), score, select the rows the press's budget keeps at `ratio`, keep them. Fair eviction scores each
   * named range on its own keys as well.
   */
  compress(press: Press, ratio: number, opts: CompressOptions = {}): CompressionReport {
    checkRatio(ratio);
    const protection = resolveProtection(opts.protection, this.layout.ranges);
    const spanLocal = opts.spanLocal ?? Boolean(protection?.fair);
    return this.score(press, { ...opts, spanLocal }).compressInPlace(ratio, protection).report;
  }

  /**
   * `ratio: "auto"`: prefill and score once, then keep the smallest candidate ratio whose compressed cache
   * still reconstructs the context (reconstruction-check.ts); the report carries every candidate's accuracy.
   */
  compressAuto(press: Press, opts: CompressOptions & { auto?: ReconstructionOptions } = {}): CompressionReport {
    const protection = resolveProtection(opts.protection, this.layout.ranges);
    const spanLocal = opts.spanLocal ?? Boolean(protection?.fair);
    const scored = this.score(press, { ...opts, spanLocal });
    const t = performance.now();
    const auto = reconstructionCheck(scored, { ...opts.auto, protection });
    const report = scored.compressInPlace(auto.chosen, protection).report;
    report.timings.scoreMs += performance.now() - t;
    return { ...report, auto };
  }

  /**
   * Prefills and scores once; the result compresses copies of this session at any number of ratios and
   * protections (the sweeps), each starting from this one prefill.
   */
  score(press: Press, opts: ScoreOptions = {}): ScoredContext {
    const { context, scores, local, timings } = this.prefillAndScore(press.scorer, opts);
    return new ScoredContext(this, press, context, scores, local, timings);
  }

  /** The pipeline's first half: prefill with capture, then the scorer (and span-local scores when asked). */
  private prefillAndScore(scorer: Scorer, opts: ScoreOptions) {
    const ranges = this.layout.ranges;
    if (opts.spanLocal && !ranges) throw new Error('span-local scores need a layout with named ranges');
    const rangeSpans = opts.spanLocal ? ranges!.map((r) => ({ start: this.context.start + r.start, end: this.context.start + r.end })) : [];
    const t0 = performance.now();
    const { capture } = this.prefillCapture([scorer.needs], rangeSpans);
    const t1 = performance.now();
    const context = this.scoringContext(capture, { onProgress: opts.onProgress });
    const scores = scorer.score(context);
    const local = opts.spanLocal ? this.spanLocalScores(scorer, capture, ranges!) : undefined;
    return { context, scores, local, timings: { prefillMs: t1 - t0, scoreMs: performance.now() - t1 } };
  }

  /** Each named range scored on its own keys, written at the range's place in the span. */
  private spanLocalScores(scorer: Scorer, capture: PrefillCapture, ranges: TokenSpan[]): Scores {
    const { numLayers, numKvHeads } = this.lm.config;
    const T = this.context.end - this.context.start;
    const out: Scores = Array.from({ length: numLayers }, () => Array.from({ length: numKvHeads }, () => new Float32Array(T)));
    for (const r of ranges) {
      const span = { start: this.context.start + r.start, end: this.context.start + r.end };
      const s = scorer.score(this.scoringContext(capture, { span, keys: 'span' }));
      s.forEach((layer, l) => layer.forEach((x, h) => out[l]![h]!.set(x, r.start)));
    }
    return out;
  }

  /** Keeps the given span rows of every (layer, KV head); the prefix and any rows after the span stay. */
  applyKeep(method: string, ratio: number, keep: Int32Array[][], timings: CompressionReport['timings']): CompressionReport {
    const { cache, context } = this;
    const T = context.end - context.start;
    for (let l = 0; l < cache.numLayers; l++)
      for (let h = 0; h < cache.numKvHeads; h++)
        if (cache.head(l, h).len !== this.ids.length) throw new Error('compression applies once, to an uncompressed, prefilled context');
    const bytesFull = cache.bytes();
    // Bytes of the context's rows in each head as stored (packed, or fp32 in a quantized head's residual window).
    let contextBytesFull = 0;
    cache.forEachHead((s) => (contextBytesFull += s.rowsBytes(context.start, context.end)));
    let contextBytesKept = 0;
    const perLayerKept: number[] = [];
    let keptRows = 0;
    for (let l = 0; l < cache.numLayers; l++) {
      let layerRows = 0;
      for (let h = 0; h < cache.numKvHeads; h++) {
        const sel = keep[l]![h]!;
        const len = cache.head(l, h).len;
        const rows = new Int32Array(len - T + sel.length);
        let r = 0;
        for (let i = 0; i < context.start; i++) rows[r++] = i;
        for (const j of sel) rows[r++] = context.start + j;
        for (let i = context.end; i < len; i++) rows[r++] = i;
        cache.keep(l, h, rows);
        contextBytesKept += cache.head(l, h).rowsBytes(context.start, context.start + sel.length);
        layerRows += sel.length;
      }
      keptRows += layerRows;
      perLayerKept.push(T ? layerRows / (T * cache.numKvHeads) : 1);
    }
    return {
      method,
      ratio,
      contextTokens: T,
      contextBytesFull,
      contextBytesKept,
      bytesFull,
      bytesKept: cache.bytes(),
      perLayerKept,
      timings,
    };
  }

  /** A copy of this session (same prefill state, its own cache) so several ratios can start from one prefill. */
  fork(): ContextSession {
    const copy = Object.create(ContextSession.prototype) as ContextSession;
    Object.assign(copy, this);
    copy.cache = this.cache.clone();
    return copy;
  }

  /** The model as scorers see it; scoring another text opens a session of its own on the same model. */
  scoringModel(): ScoringModel {
    return scoringModel(this.lm, (text, scorer) => new ContextSession(this.lm, userContextLayout(this.lm, text)).prefillAndScore(scorer, {}).scores);
  }

  queryIds(query: string): number[] {
    return this.layout.queryIds(query);
  }

  /**
   * Answers several queries greedily, decoded together (askEach on this one session); in the queries' order.
   */
  askMany(queries: readonly string[], gen: { maxTokens?: number; stopStrings?: string[] } = {}): Promise<SequenceResult[]> {
    return askEach(queries.map((query) => ({ session: this, query })), gen);
  }

  /** This session's prefilled cache as a context sequences continue from (read in place, never changed). */
  sharedContext(): SharedContext {
    if (!this.prefilled) this.prefillCapture([]);
    return { id: 'session', cache: this.cache, ids: this.ids, prefix: this.prefix, context: this.context, method: 'session', ratio: 1 };
  }

  /** Answers one query; the cache is returned exactly as it was, whatever happens. */
  async ask(query: string, gen: GenerateOptions = {}): Promise<GenerateResult> {
    if (!this.prefilled) this.prefillCapture([]);
    const mark = this.cache.mark();
    try {
      return await generate(this.lm, this.cache, this.queryIds(query), gen);
    } finally {
      // The query's and answer's rows go, and so do the blocks they grew the heads by. Decoding-time
      // compression compacted rows after the mark only, so dropping every row past it restores the cache.
      if (gen.decodeCompression) dropRowsAfter(this.cache, mark);
      else this.cache.truncate(mark);
      this.cache.shrinkToFit();
    }
  }
}

/**
 * Answers one query on each session (sessions of one model), greedily, all decoded together: each is a sequence of
 * the batching scheduler continuing its session's cache, read in place and left as it was. Batched decode rows are
 * summed as they are alone, so each answer is the one session.ask() gives; in the order given. (With an int4 / int2
 * cache the query and answer rows stay in the sequence's own fp32 tail, while ask() appends them to the session's
 * residual window and may quantize a group of it once the window overflows, so long answers can differ slightly.)
 */
export async function askEach(asks: readonly { session: ContextSession; query: string }[], gen: { maxTokens?: number; stopStrings?: string[] } = {}): Promise<SequenceResult[]> {
  if (!asks.length) return [];
  const lm = asks[0]!.session.lm;
  if (asks.some((a) => a.session.lm !== lm)) throw new Error('askEach(): every session must be of the same loaded model');
  // The model's KV pool, which the sessions' caches are charged to as well; 16 sequences per step.
  const scheduler = new BatchScheduler(lm);
  const handles = asks.map(({ session, query }) =>
    scheduler.submit({ context: session.sharedContext(), promptIds: session.queryIds(query), maxTokens: gen.maxTokens ?? 256, stopStrings: gen.stopStrings }),
  );
  try {
    return await Promise.all(handles.map((h) => h.result));
  } finally {
    for (const h of handles) h.cancel();
    await scheduler.drain();
  }
}

/**
 * A prefilled session scored once by a press. `compressed` makes a compressed copy per call, so every ratio
 * and protection starts from the same prefill and scores; `compressInPlace` compresses the session itself.
 */
export class ScoredContext {
  constructor(
    readonly session: ContextSession,
    readonly press: Press,
    /** What the scorer read (the session's cache, uncompressed until compressInPlace). */
    readonly context: ScoringContext,
    readonly scores: Scores,
    /** Per named range, scores over the range's own keys (ScoreOptions.spanLocal). */
    readonly localScores: Scores | undefined,
    readonly timings: { prefillMs: number; scoreMs: number },
  ) {}

  /** Span-relative rows the press's budget keeps at ratio, per [layer][KV head], under an optional protection. */
  keep(ratio: number, protection?: Protection): Int32Array[][] {
    checkRatio(ratio);
    if (!protection) return this.press.budget.select(this.scores, ratio);
    const ranges = this.session.layout.ranges;
    if (!ranges) throw new Error('protection needs a layout with named ranges');
    return protectedSelect(this.press.budget, this.scores, ratio, ranges, protection, this.localScores);
  }

  compressed(ratio: number, protection?: Protection): Compressed {
    return this.apply(this.session.fork(), ratio, protection);
  }

  compressInPlace(ratio: number, protection?: Protection): Compressed {
    return this.apply(this.session, ratio, protection);
  }

  private apply(session: ContextSession, ratio: number, protection: Protection | undefined): Compressed {
    const t = performance.now();
    const keep = this.keep(ratio, protection);
    if (this.press.merge) {
      const observed = this.context.capture.observedSum;
      if (!observed) throw new Error(`${this.press.name}: merging evicted values needs the attention recorded during prefill (a cam: scorer)`);
      mergeEvictedValues(session.cache, session.context, keep, observed, this.press.merge);
    }
    const report = session.applyKeep(this.press.name, ratio, keep, { ...this.timings, keepMs: 0 });
    if (this.press.rerotate) rerotateKeys(session.cache, session.lm.model.rope.invFreq, session.context.start);
    if (this.press.keyChannels) pruneKeyChannels(session.cache, this.context.capture, this.context.span, session.lm.config.numHeads, this.press.keyChannels);
    if (this.press.rerotate || this.press.keyChannels) {
      // Reloading the rotated rows re-packs a quantized cache's groups, and pruned key channels shrink every
      // row: the bytes held are counted again (a pruned head's channel list is in bytesKept).
      report.bytesKept = session.cache.bytes();
      const start = session.context.start;
      let contextBytesKept = 0;
      session.cache.forEachHead((hs, l, h) => (contextBytesKept += hs.rowsBytes(start, start + keep[l]![h]!.length)));
      report.contextBytesKept = contextBytesKept;
    }
    report.timings.keepMs = performance.now() - t;
    return { session, report, keep };
  }
}
