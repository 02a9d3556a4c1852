import type { KvCache } from '../cache/kv-cache.ts';
import type { Span } from '../press/types.ts';
import { KvlabError } from '../tensor/kvlab-error.ts';
import type { DecodeCompression } from './decode-compression.ts';

/**
 * The contract between the batching scheduler (engine side) and what drives it (the HTTP server, the
 * serving benchmark, the library API). Implementations may add fields; they must not remove or change these.
 */

export interface SamplingParams {
  /** 0 (the default) decodes greedily. */
  temperature?: number;
  topP?: number;
  seed?: number;
}

/**
 * A compressed context that any number of sequences attend to at once. Its cache is read-only from the
 * moment it is shared: sequences add their own tails (query + answer) and never change or copy its rows.
 */
export interface SharedContext {
  readonly id: string;
  readonly cache: KvCache;
  /** The token ids the cache was built from (template prefix + context), before compression. */
  readonly ids: readonly number[];
  /** Template rows before the compressible span, and the span itself, in `ids`. */
  readonly prefix: Span;
  readonly context: Span;
  readonly method: string;
  readonly ratio: number;
}

export interface SequenceRequest {
  /** A shared context to continue from; without one, promptIds is the whole prompt. */
  context?: SharedContext;
  /** Tokens appended after the context (a query and the assistant header), or the whole prompt. */
  promptIds: number[];
  maxTokens: number;
  sampling?: SamplingParams;
  /** Strings that end generation; the text is cut before them. */
  stopStrings?: string[];
  /** Token ids that end generation (not emitted). Default: the tokenizer's eos ids. */
  stopIds?: number[];
  /** Aborting cancels the sequence: it leaves the batch and its memory returns to the pool at once. */
  signal?: AbortSignal;
  /**
   * Decoding-time compression of the sequence's generated rows (decode-compression.ts); the memory promised
   * at admission is then the prompt plus budget + every rows, not prompt + maxTokens. Schedulers that cannot
   * run it refuse the request with DecodeCompressionError.
   */
  decodeCompression?: DecodeCompression;
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface SequenceResult {
  text: string;
  /** Generated ids, the stop token excluded. */
  tokens: number[];
  finishReason: FinishReason;
  /** Tokens of the whole prompt (context rows before compression + promptIds). */
  promptTokens: number;
  /** Prompt tokens served from the shared context instead of being prefilled for this request. */
  cachedTokens: number;
  completionTokens: number;
  /** Milliseconds: waiting for admission, submit to first token, mean time per output token after the first, submit to end. */
  timings: { queuedMs: number; ttftMs: number; tpotMs: number; totalMs: number };
}

export type SequenceEvent =
  /** Text that became final (never half a UTF-8 character, never part of a stop string). */
  | { type: 'text'; delta: string }
  | { type: 'done'; result: SequenceResult };

export interface SequenceHandle {
  /** Streams text deltas, then one 'done' event. */
  readonly events: AsyncIterable<SequenceEvent>;
  readonly result: Promise<SequenceResult>;
  cancel(): void;
}

export interface SchedulerStats {
  running: number;
  queued: number;
  poolBytesUsed: number;
  poolBytesBudget: number;
}

export interface Scheduler {
  /**
   * Queues a sequence (FCFS) and returns at once. Throws KvCapacityError when it can never fit the pool,
   * QueueFullError when the queue is full.
   */
  submit(req: SequenceRequest): SequenceHandle;
  stats(): SchedulerStats;
  /** Stops admitting new sequences; resolves when every running and queued one has ended. */
  drain(): Promise<void>;
}

/** A request that can never fit the KV memory pool, whatever else ends. */
export class KvCapacityError extends KvlabError {
  constructor(message: string) {
    super('kv_capacity', message);
  }
}

/** The scheduler's queue is full; the caller may retry later. */
export class QueueFullError extends KvlabError {
  constructor(message: string, readonly retryAfterSeconds = 1) {
    super('queue_full', message);
  }
}
