import type { KvCache } from '../cache/kv-cache.ts';
import { checkLogits } from '../model/non-finite.ts';
import type { LoadedModel } from './loaded-model.ts';
import { prefill, type PrefillOptions } from '../model/prefill.ts';
import { DecodeCompressor, type DecodeCompression } from './decode-compression.ts';
import { Sampler, type SamplingOptions } from './sampler.ts';
import { OutputText } from './stop-strings.ts';

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
  const vocab = lm.model.weights.lmHead.rows;
  const limit = lm.config.maxPositionEmbeddings;

  lm.checkMappedFiles();
  const t0 = performance.now();
  let logits = prefill(lm.model, cache, promptIds, opts.prefill);
  const t1 = performance.now();
  const compressor = opts.decodeCompression ? new DecodeCompressor(lm, cache, opts.decodeCompression) : null;
  const out = new OutputText(lm.tokenizer, stopIds, opts.stopStrings ?? []);
  const tokens = out.tokens;
  let finishReason: FinishReason = 'length';
  let ttft = 0;
  while (tokens.length < maxTokens) {
    const id = sampler.sample(logits, 0, vocab);
    if (tokens.length === 0) ttft = performance.now() - t0;
    if (out.push(id)) {
      finishReason = 'stop';
      break;
    }
    const delta = out.takeStable();
    if (delta) opts.onText?.(delta);
    if (tokens.length >= maxTokens || cache.nextPos + 1 > limit) break;
    lm.checkMappedFiles();
    const mark = cache.mark();
    // A scorer that reads recent queries needs them recorded: a synchronous pass with the layer hook.
    logits = compressor?.capturesQueries ? lm.model.forward([id], cache, { onLayer: (c) => compressor.record(c) })! : (await lm.model.forwardAsync([id], cache))!;
    checkLogits(lm.model, logits, cache, mark, [id], `decode step ${tokens.length}`);
    compressor?.afterStep();
    opts.onStep?.(cache, tokens.length);
  }
  const rest = out.takeRest();
  if (rest) opts.onText?.(rest);
  const t2 = performance.now();
  const decodeMs = t2 - t1;
  return {
    text: out.text,
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
