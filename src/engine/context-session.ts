import { KvCache } from '../cache/kv-cache.ts';
import { capturingPrefill, type CaptureNeeds, type PrefillCapture } from '../model/capture.ts';
import { userContextLayout, type SessionLayout, type Span, type UserContextOptions } from '../model/prompt-layout.ts';
import { checkRatio } from '../press/budgets.ts';
import type { Press } from '../press/registry.ts';
import type { Scores, ScoringContext, ScoringModel } from '../press/types.ts';
import { generate, type GenerateOptions, type GenerateResult } from './generate.ts';
import type { LoadedModel } from './loaded-model.ts';
import { scoringModel } from './scoring-model.ts';

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
      throw new RangeError(`context of ${layout.ids.length} tokens is longer than the model allows (${lm.config.maxPositionEmbeddings})`);
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

  /** Prefill (if not yet), score and compress in one call. */
  compress(press: Press, ratio: number, onScoreProgress?: (done: number, total: number) => void): CompressionReport {
    checkRatio(ratio);
    const { capture } = this.prefillCapture([press.scorer.needs]);
    const scores = press.scorer.score(this.scoringContext(capture, { onProgress: onScoreProgress }));
    return this.applyScores(press, scores, ratio);
  }

  /** Applies a budget policy's keep sets to the context rows of every (layer, KV head). */
  applyScores(press: Press, scores: Scores, ratio: number): CompressionReport {
    checkRatio(ratio);
    return this.applyKeep(press.name, ratio, press.budget.select(scores, ratio));
  }

  applyKeep(method: string, ratio: number, keep: Int32Array[][]): CompressionReport {
    const { cache, context } = this;
    const T = context.end - context.start;
    for (let l = 0; l < cache.numLayers; l++)
      for (let h = 0; h < cache.numKvHeads; h++)
        if (cache.head(l, h).len !== this.ids.length) throw new Error('compression applies once, to an uncompressed, prefilled context');
    const bytesFull = cache.bytes();
    const rowBytes = cache.rowBytes;
    const contextBytesFull = T * rowBytes * cache.numLayers * cache.numKvHeads;
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
      contextBytesKept: keptRows * rowBytes,
      bytesFull,
      bytesKept: cache.bytes(),
      perLayerKept,
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
    return scoringModel(this.lm, (text, scorer) => {
      const other = new ContextSession(this.lm, userContextLayout(this.lm, text));
      return scorer.score(other.scoringContext(other.prefillCapture([scorer.needs]).capture));
    });
  }

  queryIds(query: string): number[] {
    return this.layout.queryIds(query);
  }

  /** Answers one query; the cache is returned exactly as it was, whatever happens. */
  async ask(query: string, gen: GenerateOptions = {}): Promise<GenerateResult> {
    if (!this.prefilled) this.prefillCapture([]);
    const mark = this.cache.mark();
    try {
      return await generate(this.lm, this.cache, this.queryIds(query), gen);
    } finally {
      this.cache.truncate(mark);
    }
  }
}
