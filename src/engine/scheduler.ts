import { KvCache, type KvDtype } from '../cache/kv-cache.ts';
import { formatBytes, kvHeadBytes, type KvPool } from '../cache/kv-pool.ts';
import type { BatchSequence } from '../model/llama.ts';
import { checkDecodeCompression, DecodeCompressionError, DecodeCompressor, needsDecodeQueries } from './decode-compression.ts';
import { EventStream } from './event-stream.ts';
import type { LoadedModel } from './loaded-model.ts';
import { Sampler } from './sampler.ts';
import {
  KvCapacityError,
  QueueFullError,
  type FinishReason,
  type Scheduler,
  type SchedulerStats,
  type SequenceEvent,
  type SequenceHandle,
  type SequenceRequest,
  type SequenceResult,
} from './scheduler-types.ts';
import { OutputText } from './stop-strings.ts';

export interface BatchSchedulerOptions {
  /** The KV memory pool every sequence's own rows are allocated from. Default the loaded model's (lm.kvPool()). */
  pool?: KvPool;
  /** Sequences advanced together per step. Default 16. */
  maxBatch?: number;
  /** Prompt tokens prefilled per step, over all sequences still reading their prompts. Default 256. */
  prefillChunk?: number;
  /** Requests waiting for admission before submit() refuses with QueueFullError. Default 1024. */
  maxQueue?: number;
  /** Cache dtype of sequences without a shared context (with one, the context's dtype). Default the model's. */
  kvDtype?: KvDtype;
}

/** One request from submission to its end. */
interface Sequence {
  readonly req: SequenceRequest;
  readonly events: EventStream<SequenceEvent>;
  readonly resolve: (r: SequenceResult) => void;
  readonly reject: (e: unknown) => void;
  readonly dtype: KvDtype;
  /** Bytes of the worst case (prompt + maxTokens rows in every head) promised at admission. */
  readonly needBytes: number;
  readonly submittedAt: number;
  admittedAt: number;
  firstTokenAt: number;
  /** The sequence's own rows (a shared context's rows are read from the context, never copied here). */
  cache: KvCache | null;
  releaseReservation: (() => void) | null;
  /** Prompt ids not yet prefilled. */
  pending: number[];
  sampler: Sampler;
  out: OutputText;
  /** The token to feed at the next decode step. */
  next: number;
  /** Decoding-time compression, made once the prompt is in the cache. */
  compressor: DecodeCompressor | null;
  inFlight: boolean;
  cancelled: boolean;
  finished: boolean;
}

/**
 * First-come-first-served batching scheduler: admits queued requests in order while the KV pool can promise
 * each its worst case (prompt + max tokens), advances every admitted sequence one step per batched forward
 * pass (decode tokens and prompt chunks together), samples per request, streams text, and frees a sequence's
 * memory the moment it finishes or is cancelled.
 */
export class BatchScheduler implements Scheduler {
  private readonly queue: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private readonly maxBatch: number;
  private readonly prefillChunk: number;
  private readonly maxQueue: number;
  private readonly pool: KvPool;
  private readonly kvDtype: KvDtype;
  private looping = false;
  private draining = false;
  private readonly idleWaiters: (() => void)[] = [];

  constructor(readonly lm: LoadedModel, opts: BatchSchedulerOptions = {}) {
    this.pool = opts.pool ?? lm.kvPool();
    this.maxBatch = opts.maxBatch ?? 16;
    this.prefillChunk = opts.prefillChunk ?? 256;
    this.maxQueue = opts.maxQueue ?? 1024;
    this.kvDtype = opts.kvDtype ?? lm.kvDtype;
    if (!(Number.isInteger(this.maxBatch) && this.maxBatch >= 1)) throw new RangeError(`max batch must be a positive integer, got ${opts.maxBatch}`);
    if (!(Number.isInteger(this.prefillChunk) && this.prefillChunk >= 1)) throw new RangeError(`prefill chunk must be a positive integer, got ${opts.prefillChunk}`);
  }

  stats(): SchedulerStats {
    return { running: this.running.length, queued: this.queue.length, poolBytesUsed: this.pool.usedBytes, poolBytesBudget: this.pool.budgetBytes };
  }

  /** Bytes the pool must promise a request: every head's worst-case rows, in whole blocks. */
  requestBytes(req: Pick<SequenceRequest, 'context' | 'promptIds' | 'maxTokens' | 'decodeCompression'>): number {
    const cfg = this.lm.config;
    const dtype = req.context?.cache.dtype ?? this.kvDtype;
    const quant = req.context?.cache.quantOptions ?? this.lm.kvQuant;
    return cfg.numLayers * cfg.numKvHeads * kvHeadBytes(cfg.headDim, dtype, req.promptIds.length + generatedRowsBound(req), quant, this.prefillChunk);
  }

  submit(req: SequenceRequest): SequenceHandle {
    if (this.draining) throw new Error('scheduler is draining: no new sequences are admitted');
    this.validate(req);
    const needBytes = this.requestBytes(req);
    const contextBytes = req.context?.cache.pool === this.pool ? req.context.cache.blockBytes() : 0;
    if (needBytes + contextBytes > this.pool.budgetBytes) {
      throw new KvCapacityError(
        `request needs ${formatBytes(needBytes)} of KV memory (${req.promptIds.length} prompt + ${req.maxTokens} max tokens in ${this.lm.config.numLayers} layers x ${this.lm.config.numKvHeads} KV heads)` +
          `${contextBytes ? ` beside its context's ${formatBytes(contextBytes)}` : ''}, more than the whole pool (${formatBytes(this.pool.budgetBytes)}, --kv-memory)`,
      );
    }
    // maxQueue counts requests that wait: one admitted at once (a free batch slot, room in the pool) does not.
    const admitsNow = this.queue.length === 0 && this.running.length < this.maxBatch && this.pool.canReserve(needBytes + this.bytesOutsideReservations());
    if (!admitsNow && this.queue.length >= this.maxQueue) throw new QueueFullError(`scheduler queue is full (${this.maxQueue} waiting)`);

    const events = new EventStream<SequenceEvent>();
    let resolve!: (r: SequenceResult) => void;
    let reject!: (e: unknown) => void;
    const result = new Promise<SequenceResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A failure is reported through result and events; nobody has to await either.
    result.catch(() => {});
    const seq: Sequence = {
      req,
      events,
      resolve,
      reject,
      dtype: req.context?.cache.dtype ?? this.kvDtype,
      needBytes,
      submittedAt: performance.now(),
      admittedAt: 0,
      firstTokenAt: 0,
      cache: null,
      releaseReservation: null,
      pending: [...req.promptIds],
      sampler: new Sampler(req.sampling),
      out: new OutputText(this.lm.tokenizer, new Set(req.stopIds ?? this.lm.tokenizer.eosIds), req.stopStrings ?? []),
      next: -1,
      compressor: null,
      inFlight: false,
      cancelled: false,
      finished: false,
    };
    const cancel = () => this.cancel(seq);
    if (req.signal?.aborted) {
      this.finish(seq, 'cancelled');
    } else {
      req.signal?.addEventListener('abort', cancel, { once: true });
      this.queue.push(seq);
      // Admitted now if the pool has room: it joins the next step even while one is in flight.
      if (this.looping) this.admit();
      this.kick();
    }
    return { events, result, cancel };
  }

  drain(): Promise<void> {
    this.draining = true;
    if (this.running.length === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private validate(req: SequenceRequest): void {
    const vocab = this.lm.model.weights.embed.rows;
    if (!Array.isArray(req.promptIds) || req.promptIds.length === 0) throw new RangeError('request: promptIds must hold at least one token id');
    req.promptIds.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new RangeError(`request: promptIds[${i}] = ${id} is not a token id (0..${vocab - 1})`);
    });
    if (!Number.isInteger(req.maxTokens) || req.maxTokens < 0) throw new RangeError(`request: maxTokens must be a non-negative integer, got ${req.maxTokens}`);
    const start = req.context?.cache.nextPos ?? 0;
    const limit = this.lm.config.maxPositionEmbeddings;
    if (start + req.promptIds.length > limit) throw new RangeError(`request: ${start + req.promptIds.length} prompt tokens, more than the model allows (${limit})`);
    if (req.decodeCompression) {
      checkDecodeCompression(req.decodeCompression);
      if (needsDecodeQueries(req.decodeCompression)) {
        throw new DecodeCompressionError(
          `request: decoding-time compression with ${req.decodeCompression.press.name} reads recorded decode queries, which batched steps do not record; use a method that scores the cache (knorm, keydiff, streamingllm, random)`,
        );
      }
    }
    const c = req.context?.cache;
    if (c && (c.numLayers !== this.lm.config.numLayers || c.numKvHeads !== this.lm.config.numKvHeads || c.headDim !== this.lm.config.headDim)) {
      throw new RangeError(`request: context ${req.context!.id} has a cache of another shape than this model's`);
    }
  }

  private cancel(seq: Sequence): void {
    if (seq.finished || seq.cancelled) return;
    seq.cancelled = true;
    const q = this.queue.indexOf(seq);
    if (q >= 0) this.queue.splice(q, 1);
    // A sequence in a step's flight is freed as soon as that step ends (its cache is in use until then).
    if (!seq.inFlight) this.finish(seq, 'cancelled');
  }

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      while (this.running.length > 0 || this.queue.length > 0) {
        this.admit();
        if (this.running.length === 0) continue;
        await this.step();
      }
    } finally {
      this.looping = false;
      if (this.running.length === 0 && this.queue.length === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Admits queued sequences in order while the pool can promise each its worst case; never skips the head. */
  private admit(): void {
    while (this.queue.length > 0 && this.running.length < this.maxBatch) {
      const seq = this.queue[0]!;
      if (!this.pool.canReserve(seq.needBytes + this.bytesOutsideReservations())) {
        if (this.running.length > 0) return;
        // Nothing running will free memory: what holds the pool now (shared contexts) keeps this one out.
        this.queue.shift();
        this.fail(
          seq,
          new KvCapacityError(`request needs ${formatBytes(seq.needBytes)} of KV memory; with nothing else running only ${formatBytes(this.pool.budgetBytes - this.pool.usedBytes)} of the pool is free (--kv-memory)`),
        );
        continue;
      }
      this.queue.shift();
      seq.releaseReservation = this.pool.reserve(seq.needBytes);
      seq.admittedAt = performance.now();
      const cfg = this.lm.config;
      const cache = new KvCache(cfg.numLayers, cfg.numKvHeads, cfg.headDim, seq.dtype, this.pool, seq.req.context?.cache.quantOptions ?? this.lm.kvQuant);
      cache.nextPos = seq.req.context?.cache.nextPos ?? 0;
      seq.cache = cache;
      if (seq.req.maxTokens === 0) {
        this.finish(seq, 'length');
        continue;
      }
      try {
        cache.reserveRows(seq.req.promptIds.length + generatedRowsBound(seq.req));
      } catch (e) {
        this.fail(seq, e);
        continue;
      }
      this.running.push(seq);
    }
  }

  /** Pool bytes held by what is not a running sequence's reservation (shared contexts in this pool). */
  private bytesOutsideReservations(): number {
    let held = 0;
    for (const s of this.running) held += s.cache?.blockBytes() ?? 0;
    return Math.max(0, this.pool.usedBytes - held);
  }

  /** One batched forward pass: a decode token of every sequence past its prompt, prompt chunks for the rest. */
  private async step(): Promise<void> {
    const batch: { seq: Sequence; input: BatchSequence; decode?: boolean }[] = [];
    let prefillLeft = this.prefillChunk;
    for (const seq of this.running) {
      if (seq.pending.length > 0) {
        if (prefillLeft <= 0) continue;
        const ids = seq.pending.splice(0, prefillLeft);
        prefillLeft -= ids.length;
        batch.push({ seq, input: { ids, cache: seq.cache!, context: seq.req.context?.cache, logits: seq.pending.length === 0 } });
      } else batch.push({ seq, input: { ids: [seq.next], cache: seq.cache!, context: seq.req.context?.cache }, decode: true });
    }
    for (const b of batch) b.seq.inFlight = true;
    let logits: (Float32Array | null)[];
    try {
      logits = await this.lm.model.forwardBatchAsync(batch.map((b) => b.input));
    } catch (e) {
      for (const b of batch) {
        b.seq.inFlight = false;
        this.fail(b.seq, e);
      }
      return;
    } finally {
      for (const b of batch) b.seq.inFlight = false;
    }
    batch.forEach((b, i) => {
      if (b.seq.cancelled) this.finish(b.seq, 'cancelled');
      else {
        if (b.decode && !this.compressDecoded(b.seq)) return;
        if (logits[i]) this.onLogits(b.seq, logits[i]!);
      }
    });
  }

  /**
   * Decoding-time compression after a decode step (the prompt part is fixed when the prompt is done): the
   * evicted rows' blocks go back to the pool, and the head is given exactly the rows the next steps may add,
   * so growth stays within the admission promise. False when it failed (the sequence is failed).
   */
  private compressDecoded(seq: Sequence): boolean {
    const dc = seq.req.decodeCompression;
    if (!dc || !seq.cache) return true;
    try {
      seq.compressor ??= new DecodeCompressor(this.lm, seq.cache, dc, seq.req.promptIds.length);
      if (seq.compressor.afterStep()) seq.cache.reserveRows(Math.min(dc.every, seq.req.maxTokens - seq.out.tokens.length));
      return true;
    } catch (e) {
      this.fail(seq, e);
      return false;
    }
  }

  private onLogits(seq: Sequence, logits: Float32Array): void {
    const id = seq.sampler.sample(logits, 0, this.lm.model.weights.lmHead.rows);
    if (seq.out.tokens.length === 0) seq.firstTokenAt = performance.now();
    if (seq.out.push(id)) return this.finish(seq, 'stop');
    const delta = seq.out.takeStable();
    if (delta) seq.events.push({ type: 'text', delta });
    if (seq.out.tokens.length >= seq.req.maxTokens || seq.cache!.nextPos + 1 > this.lm.config.maxPositionEmbeddings) return this.finish(seq, 'length');
    seq.next = id;
  }

  /** Returns the sequence's memory to the pool and takes it out of the batch. */
  private release(seq: Sequence): void {
    seq.finished = true;
    const r = this.running.indexOf(seq);
    if (r >= 0) this.running.splice(r, 1);
    seq.cache?.release();
    seq.cache = null;
    seq.releaseReservation?.();
    seq.releaseReservation = null;
    this.kick();
  }

  private finish(seq: Sequence, reason: FinishReason): void {
    if (seq.finished) return;
    this.release(seq);
    const rest = seq.out.takeRest();
    if (rest) seq.events.push({ type: 'text', delta: rest });
    const end = performance.now();
    const firstAt = seq.firstTokenAt || end;
    const n = seq.out.tokens.length;
    const contextTokens = seq.req.context?.ids.length ?? 0;
    const result: SequenceResult = {
      text: seq.out.text,
      tokens: seq.out.tokens,
      finishReason: reason,
      promptTokens: contextTokens + seq.req.promptIds.length,
      cachedTokens: contextTokens,
      completionTokens: n,
      timings: {
        queuedMs: (seq.admittedAt || end) - seq.submittedAt,
        ttftMs: firstAt - seq.submittedAt,
        tpotMs: n > 1 ? (end - firstAt) / (n - 1) : 0,
        totalMs: end - seq.submittedAt,
      },
    };
    seq.events.push({ type: 'done', result });
    seq.events.end();
    seq.resolve(result);
  }

  private fail(seq: Sequence, error: unknown): void {
    if (seq.finished) return;
    this.release(seq);
    seq.events.fail(error);
    seq.reject(error);
  }
}

/** Generated rows a sequence can hold at once: maxTokens, or budget + every under decoding-time compression. */
function generatedRowsBound(req: Pick<SequenceRequest, 'maxTokens' | 'decodeCompression'>): number {
  const dc = req.decodeCompression;
  return dc ? Math.min(req.maxTokens, dc.budget + dc.every) : req.maxTokens;
}
