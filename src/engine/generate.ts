import type { KvCache } from '../cache/kv-cache.ts';
import { checkLogits } from '../model/non-finite.ts';
import type { LoadedModel } from './loaded-model.ts';
import { prefill, type PrefillOptions } from '../model/prefill.ts';
import { DecodeCompressor, type DecodeCompression } from './decode-compression.ts';
import { Sampler, type SamplingOptions } from './sampler.ts';
import { firstStop, stableLength } from './stop-strings.ts';

export interface GenerateOptions {
  maxTokens?: number;
  sampling?: SamplingOptions;
  /** Token ids that end generation (not emitted). Defaults to the tokenizer's eos ids. */
  stopIds?: number[];
  /** Strings that end generation; the text is cut before them. */
  stopStrings?: string[];
  /** Streams text as it becomes final (never half a UTF-8 character, never part of a stop string). */
  onText?: (delta: string) => void;
  prefill?: Omit<PrefillOptions, 'stats' | 'onLayer'>;
  /** Decoding-time compression of the generated rows (the prompt's rows stay): see decode-compression.ts. */
  decodeCompression?: DecodeCompression;
  /** Called after each decode step has appended its row (and decoding-time compression, if any, has run). */
  onStep?: (cache: KvCache, step: number) => void;
}

export type FinishReason = 'stop' | 'length';

export interface GenerateResult {
  text: string;
  /** Generated ids, the stop token excluded. */
  tokens: number[];
  promptTokens: number;
  finishReason: FinishReason;
  timings: { prefillMs: number; decodeMs: number; ttftMs: number; decodeTokensPerSecond: number };
  /** With decodeCompression: compressions run, generated rows evicted (summed over heads), generated rows each head holds at the end. */
  decodeCompression?: { compressions: number; evictedRows: number; generatedRows: number };
}

/**
 * Prefills promptIds on top of the cache and decodes. The cache keeps everything fed to it; callers that
 * need the cache back as it was take a mark() before and truncate() after.
 */
export async function generate(lm: LoadedModel, cache: KvCache, promptIds: number[], opts: GenerateOptions = {}): Promise<GenerateResult> {
  const maxTokens = opts.maxTokens ?? 256;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new RangeError(`max tokens must be a non-negative integer, got ${maxTokens}`);
  const sampler = new Sampler(opts.sampling);
  const stopIds = new Set(opts.stopIds ?? lm.tokenizer.eosIds);
  const stops = (opts.stopStrings ?? []).filter((s) => s.length > 0);
  const vocab = lm.model.weights.lmHead.rows;
  const limit = lm.config.maxPositionEmbeddings;

  lm.checkMappedFiles();
  const t0 = performance.now();
  let logits = prefill(lm.model, cache, promptIds, opts.prefill);
  const t1 = performance.now();
  const compressor = opts.decodeCompression ? new DecodeCompressor(lm, cache, opts.decodeCompression) : null;
  const tokens: number[] = [];
  let emitted = 0;
  let text = '';
  let finishReason: FinishReason = 'length';
  let ttft = 0;
  while (tokens.length < maxTokens) {
    const id = sampler.sample(logits, 0, vocab);
    if (tokens.length === 0) ttft = performance.now() - t0;
    if (stopIds.has(id)) {
      finishReason = 'stop';
      break;
    }
    tokens.push(id);
    text = lm.tokenizer.decode(tokens, { skipSpecialTokens: true });
    const cut = firstStop(text, stops);
    if (cut >= 0) {
      text = text.slice(0, cut);
      finishReason = 'stop';
      break;
    }
    const safe = stableLength(text, stops);
    if (safe > emitted) {
      opts.onText?.(text.slice(emitted, safe));
      emitted = safe;
    }
    if (tokens.length >= maxTokens || cache.nextPos + 1 > limit) break;
    lm.checkMappedFiles();
    const mark = cache.mark();
    // A scorer that reads recent queries needs them recorded: a synchronous pass with the layer hook.
    logits = compressor?.capturesQueries ? lm.model.forward([id], cache, { onLayer: (c) => compressor.record(c) })! : (await lm.model.forwardAsync([id], cache))!;
    checkLogits(lm.model, logits, cache, mark, [id], `decode step ${tokens.length}`);
    compressor?.afterStep();
    opts.onStep?.(cache, tokens.length);
  }
  if (text.length > emitted) opts.onText?.(text.slice(emitted));
  const t2 = performance.now();
  const decodeMs = t2 - t1;
  return {
    text,
    tokens,
    promptTokens: promptIds.length,
    finishReason,
    timings: {
      prefillMs: t1 - t0,
      decodeMs,
      ttftMs: ttft,
      decodeTokensPerSecond: tokens.length > 1 ? ((tokens.length - 1) * 1000) / decodeMs : 0,
    },
    ...(compressor ? { decodeCompression: { compressions: compressor.compressions, evictedRows: compressor.evictedRows, generatedRows: compressor.generatedRows } } : {}),
  };
}
