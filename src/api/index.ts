/**
 * kvlab's public API: what `import { ... } from 'kvlab'` gives. Everything else under src/ is internal
 * and may change without notice.
 *
 * @example
 * ```ts
 * import { getPress, openModel } from 'kvlab';
 * const lm = openModel();                         // the embedded kvlab-tiny-chat, or openModel('/path/to/hf-folder')
 * const session = lm.openContext(documentText);   // the context in the user turn of the model's chat template
 * session.compress(getPress('kvzip'), 0.3);       // prefill, score, keep 30% of the context's KV pairs
 * const { text } = await session.ask('What is the code of tean?', { maxTokens: 16 });
 * ```
 * @packageDocumentation
 */
import { basename } from 'node:path';
import { DEFAULT_MODEL_DIR, loadModel, LoadedModel } from '../engine/loaded-model.ts';
import type { KvDtype, KvQuantOptions } from '../cache/kv-cache.ts';
import type { Int8Grouping } from '../tensor/quantize.ts';
import type { Backend } from '../tensor/backend.ts';
import { NativeBackend } from '../tensor/native.ts';
import { ReferenceBackend } from '../tensor/reference.ts';
import { nativeAvailable, selectBackend } from '../tensor/select-backend.ts';
import { KvlabError } from '../tensor/kvlab-error.ts';
import { defaultStoreDir, startServer, type RunningServer } from '../server/serve.ts';
import { persistentFingerprint } from '../engine/model-fingerprint.ts';
import { conversationContext } from '../engine/conversation-context.ts';
import { compressContext, DEFAULT_CONTEXT_PROTECTION } from '../engine/compress-context.ts';
import { describeProtection } from '../press/protect.ts';
import { contextRecord, loadContextFile, saveContextFile, type ContextRecord } from '../server/context-store.ts';
import type { Press } from '../press/registry.ts';
import type { Protection } from '../press/protect.ts';
import type { SharedContext } from '../engine/scheduler-types.ts';

export interface OpenModelOptions {
  /** 'int8' quantizes every linear weight at load (about half the bytes per decoded token of bf16). */
  weights?: 'checkpoint' | 'int8';
  /** Columns per int8 scale, or 'row'. Default 128. */
  int8Group?: Int8Grouping;
  /** How KV caches store keys and values: 'f32' (default), 'bf16' (half the memory), 'int4' or 'int2' (KIVI, see kvQuant). */
  kvDtype?: KvDtype;
  /** Group size G and fp32 residual window R of int4 / int2 caches. Default { group: 32, residual: 128 }. */
  kvQuant?: KvQuantOptions;
  /** 'native' (the compiled kernels; an error if the addon did not build) or 'reference' (pure TypeScript). Default: native where it loads. */
  backend?: 'native' | 'reference';
  /** Read the weights through a file mapping instead of into memory (refuses to run once the file changes). */
  mmap?: boolean;
  onProgress?: (done: number, total: number) => void;
}

/** Loads a Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json, tokenizer_config.json). */
export function openModel(dir: string = DEFAULT_MODEL_DIR, opts: OpenModelOptions = {}): LoadedModel {
  return loadModel(dir, {
    backend: backendFor(opts.backend),
    weights: opts.weights,
    int8Group: opts.int8Group,
    kvDtype: opts.kvDtype,
    kvQuant: opts.kvQuant,
    mmap: opts.mmap ?? false,
    onProgress: opts.onProgress,
  });
}

function backendFor(choice: OpenModelOptions['backend']): Backend {
  if (choice === undefined) return selectBackend();
  if (choice === 'reference') return new ReferenceBackend();
  if (choice === 'native') {
    if (!nativeAvailable()) throw new KvlabError('native_unavailable', 'backend "native" was asked for, but the native addon did not load');
    return new NativeBackend();
  }
  throw new KvlabError('bad_option', `backend must be "native" or "reference", got ${JSON.stringify(choice)}`);
}

export interface ServeOptions {
  /** Checkpoint folder; default the embedded model. */
  model?: string;
  open?: OpenModelOptions;
  host?: string;
  /** 0 picks a free port. Default 8080. */
  port?: number;
  /** Folder of stored contexts; null keeps them in memory only. Default the user's cache folder (kvlab/contexts). */
  store?: string | null;
  apiKeys?: string[];
  /** Byte budget of the KV memory pool. Default a quarter of RAM. */
  kvMemoryBytes?: number;
  maxBatch?: number;
  maxQueue?: number;
  log?: (line: string) => void;
}

/**
 * Starts `kvlab serve` inside this process: the OpenAI-compatible routes, /v1/contexts, /metrics, on the
 * batching scheduler. Resolves once it listens; `ready` once the model is loaded; `shutdown()` drains and closes.
 */
export function serve(opts: ServeOptions = {}): Promise<RunningServer> {
  return startServer({
    load: () => openModel(opts.model, opts.open),
    host: opts.host,
    port: opts.port,
    storeDir: opts.store === undefined ? defaultStoreDir() : opts.store,
    apiKeys: opts.apiKeys,
    kvMemoryBytes: opts.kvMemoryBytes,
    maxBatch: opts.maxBatch,
    maxQueue: opts.maxQueue,
    log: opts.log,
  });
}

/**
 * Compresses a text context (in the user turn, optionally after a system prompt) and writes it to a context
 * file (versioned, checksummed, written atomically), which loadContext() or `kvlab compress --load` reads back
 * without compressing again. Protection defaults to keeping a detected "never reveal" sentence.
 */
export function saveContext(lm: LoadedModel, path: string, text: string, press: Press, ratio: number, opts: { system?: string; protection?: Protection } = {}): ContextRecord {
  const ctx = conversationContext(lm, { kind: 'text', text, system: opts.system });
  const protection = opts.protection ?? DEFAULT_CONTEXT_PROTECTION;
  const built = compressContext(lm, ctx, press, ratio, protection);
  const record = contextRecord(basename(path).replace(/\.kvctx$/, ''), 'local', ctx, built, describeProtection(protection));
  saveContextFile(path, record, built.session.cache, persistentFingerprint(lm));
  return record;
}

/** Reads a context file written for this model (another model's, a truncated or a corrupted file is refused by name). */
export function loadContext(lm: LoadedModel, path: string): { record: ContextRecord; shared: SharedContext } {
  return loadContextFile(path, persistentFingerprint(lm));
}

// Models, sessions and generation.
export { DEFAULT_MODEL_DIR, LoadedModel };
export { ContextSession, ScoredContext } from '../engine/context-session.ts';
export type { CompressOptions, CompressionReport, Compressed, ContextOptions, ScoreOptions } from '../engine/context-session.ts';
export { generate } from '../engine/generate.ts';
export type { FinishReason, GenerateOptions, GenerateResult } from '../engine/generate.ts';
export type { SamplingOptions } from '../engine/sampler.ts';
export type { KvDtype, KvQuantOptions } from '../cache/kv-cache.ts';
export { KvCache } from '../cache/kv-cache.ts';

// Compression methods: the registry, the pieces of a custom press, protection.
export { describeMethods, describePress, getPress, methodNames, press, registerMethod } from '../press/registry.ts';
export type { Press, PressOptions } from '../press/registry.ts';
export { HeadSpan, perHead, norm, dot } from '../press/per-head.ts';
export { adaKvBudget, globalBudget, headsWithWindowBudget, keptCount, pyramidBudget, uniformBudget, wholeHeadBudget } from '../press/budgets.ts';
export type { BudgetPolicy, KeptCounts, Scorer, Scores, ScoringContext, ScoringModel, CaptureNeeds } from '../press/types.ts';
export { parseProtection, describeProtection } from '../press/protect.ts';
export type { Protection } from '../press/protect.ts';

// The scheduler contract (batched serving).
export type { Scheduler, SequenceRequest, SequenceHandle, SequenceEvent, SequenceResult, SharedContext, SamplingParams } from '../engine/scheduler-types.ts';

export { BatchScheduler } from '../engine/scheduler.ts';
export type { BatchSchedulerOptions } from '../engine/scheduler.ts';
export { SerialScheduler } from '../engine/serial-scheduler.ts';
export { startServer, defaultStoreDir } from '../server/serve.ts';
export type { RunningServer } from '../server/serve.ts';
export type { ContextRecord } from '../server/context-store.ts';
export { ContextFileError } from '../cache/context-file.ts';

// Evaluation harnesses as functions.
export { evalQa } from '../eval/qa-eval.ts';
export type { QaEvalOptions, QaResult, QaSample } from '../eval/qa-eval.ts';
export { runPromptStudy } from '../eval/prompt-study.ts';
export type { StudyItem, StudyOptions, StudyResult, StudySample } from '../eval/prompt-study.ts';
export { loadInstructions, loadLeakage, loadQa, loadRepeat } from '../eval/datasets.ts';
export type { InstructionRow, LeakageRow, QaRow, RepeatRow } from '../eval/datasets.ts';

// Decoding-time compression, ratio "auto" (the reconstruction check) and protection on by default (issue 28).
// session.ask(q, { decodeCompression }) and generate() take a DecodeCompression; session.compressAuto(press)
// chooses the ratio; compress({ protection: 'default' | 'none' | Protection }).
export { DecodeCompressionError, DecodeCompressor, parseDecodeCompression } from '../engine/decode-compression.ts';
export type { DecodeCompression } from '../engine/decode-compression.ts';
export { AUTO_RATIO_GRID, AUTO_RATIO_THRESHOLD, chooseRatio, reconstructionAccuracy, reconstructionCheck, ReconstructionOptionError } from '../engine/reconstruction-check.ts';
export type { CandidateAccuracy, ReconstructionCheck, ReconstructionOptions } from '../engine/reconstruction-check.ts';
export { choosePredictedRatio, loadPredictor, negativeProbability, parsePredictor, PredictorError } from '../engine/negative-predictor.ts';
export type { NegativePredictor } from '../engine/negative-predictor.ts';
export { FEATURE_NAMES, keptMass, routerFeatures, scoreEntropy } from '../engine/router-features.ts';
export type { RouterFeatures } from '../engine/router-features.ts';
export { DEFAULT_PROTECTION, parseProtectionChoice, resolveProtection } from '../engine/default-protection.ts';
export type { ProtectionChoice } from '../engine/default-protection.ts';
export { compressSystemPrompt, parsePromptCompression } from '../engine/system-prompt-compression.ts';
export type { PromptCompression } from '../engine/system-prompt-compression.ts';
export { detectDefense } from '../engine/conversation-context.ts';

// Errors: every one kvlab raises on purpose is a KvlabError with a stable `code`.
export { KvlabError, ContextTooLongError, MethodNameError, RatioError } from '../tensor/kvlab-error.ts';
export { CheckpointError, ConfigError } from '../model/checkpoint-errors.ts';
export { ChatTemplateError } from '../model/chat-template.ts';
export { NonFiniteError } from '../model/non-finite.ts';
export { KvPoolExhaustedError } from '../cache/kv-pool.ts';
export { KvCapacityError, QueueFullError } from '../engine/scheduler-types.ts';
export { DataFileError } from '../eval/jsonl.ts';

// Types the API's classes and functions mention, so a user can name them.
export type { Span, SessionLayout } from '../model/prompt-layout.ts';
export type { HeadStore, CacheMark } from '../cache/kv-cache.ts';
export type { KvPool } from '../cache/kv-pool.ts';
export type { ModelConfig } from '../model/config.ts';
export type { FileStamp } from '../engine/loaded-model.ts';
export type { LlamaModel, LayerCapture } from '../model/llama.ts';
export type { KvTokenizer } from '../model/tokenizer.ts';
export type { PrefillOptions } from '../model/prefill.ts';
export type { PrefillCapture } from '../model/capture.ts';
export type { Instruction, InstructionType, LeakageKind } from '../eval/datasets.ts';
export type { Int8Grouping } from '../tensor/quantize.ts';
export type { QaUnit } from '../eval/qa-eval.ts';
export type { Metrics } from '../eval/prompt-study.ts';
export type { FinishReason as SequenceFinishReason, SchedulerStats } from '../engine/scheduler-types.ts';
export type { Backend, KvHeadView } from '../tensor/backend.ts';
