import type { KvCache } from '../cache/kv-cache.ts';
import { checkDecodeCompression, DecodeCompressor, dropRowsAfter } from './decode-compression.ts';
import { DEFAULT_PREFILL_CHUNK } from '../model/prefill.ts';
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

export interface SerialSchedulerOptions {
  /** Sequences that may wait behind the running one; more are refused with QueueFullError. Default 64. */
  maxQueue?: number;
  /**
   * Bytes of KV rows one sequence may add (its prompt and answer; a shared context's rows are not its own).
   * Default: a whole sequence of the model's maximum length, the most one sequence at a time can hold.
   */
  kvMemoryBytes?: number;
  /** Prompt tokens per forward pass. Default DEFAULT_PREFILL_CHUNK, as prefill() uses. */
  prefillChunk?: number;
}

interface Job {
  req: SequenceRequest;
  submittedAt: number;
  channel: EventStream<SequenceEvent>;
  resolve: (r: SequenceResult) => void;
  reject: (e: unknown) => void;
  cancelled: boolean;
  /** Set while running: the cache it writes into, and that cache's bytes before it started. */
  cache?: KvCache;
  baseBytes?: number;
  cleanup: () => void;
}

/**
 * The Scheduler contract on the single-sequence engine: sequences run one at a time, first come first
 * served. A sequence on a shared context takes a mark of the context's cache, prefills and decodes on top
 * of it and truncates back when it ends, so the context is unchanged for the next; nothing is copied.
 * Prefill and decode go through forwardAsync, so the event loop stays free while a step runs. Outputs
 * equal generate()'s on the same cache (same chunking, sampler and stop rules).
 */
export class SerialScheduler implements Scheduler {
  private readonly queue: Job[] = [];
  private running: Job | null = null;
  private pumping = false;
  private draining = false;
  private readonly idleWaiters: (() => void)[] = [];
  private readonly maxQueue: number;
  private readonly budget: number;
  private readonly chunk: number;
  private readonly rowBytesAllHeads: number;

  constructor(
    readonly lm: LoadedModel,
    opts: SerialSchedulerOptions = {},
  ) {
    const cfg = lm.config;
    this.maxQueue = opts.maxQueue ?? 64;
    this.chunk = opts.prefillChunk ?? DEFAULT_PREFILL_CHUNK;
    this.rowBytesAllHeads = cfg.numLayers * cfg.numKvHeads * lm.newCache().rowBytes;
    this.budget = opts.kvMemoryBytes ?? cfg.maxPositionEmbeddings * this.rowBytesAllHeads;
    if (!(this.maxQueue >= 0) || !(this.chunk >= 1) || !(this.budget > 0)) throw new RangeError('SerialScheduler: maxQueue >= 0, prefillChunk >= 1 and kvMemoryBytes > 0 are required');
  }

  submit(req: SequenceRequest): SequenceHandle {
    if (this.draining) throw new QueueFullError('the server is shutting down and admits no new sequences', 5);
    const maxTokens = req.maxTokens;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new RangeError(`maxTokens must be a non-negative integer, got ${maxTokens}`);
    if (req.promptIds.length === 0) throw new RangeError('a sequence needs at least one prompt token');
    if (req.decodeCompression) checkDecodeCompression(req.decodeCompression);
    const start = req.context?.cache.nextPos ?? 0;
    const limit = this.lm.config.maxPositionEmbeddings;
    if (start + req.promptIds.length > limit) {
      throw new RangeError(`prompt of ${start + req.promptIds.length} tokens is longer than the model allows (${limit})`);
    }
    const dc = req.decodeCompression;
    const ownRows = Math.min(req.promptIds.length + (dc ? Math.min(maxTokens, dc.budget + dc.every) : maxTokens), limit - start);
    if (ownRows * this.rowBytesAllHeads > this.budget) {
      throw new KvCapacityError(`a sequence of ${ownRows} tokens needs ${ownRows * this.rowBytesAllHeads} bytes of KV, more than the ${this.budget}-byte budget`);
    }
    if (this.running && this.queue.length >= this.maxQueue) throw new QueueFullError(`the queue is full (${this.queue.length} sequences waiting)`, 1);

    const channel = new EventStream<SequenceEvent>();
    let resolve!: (r: SequenceResult) => void;
    let reject!: (e: unknown) => void;
    const result = new Promise<SequenceResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A caller that only reads events must not see an unhandled rejection of the result.
    result.catch(() => {});
    const job: Job = { req, submittedAt: performance.now(), channel, resolve, reject, cancelled: false, cleanup: () => {} };
    const cancel = () => this.cancel(job);
    if (req.signal) {
      if (req.signal.aborted) job.cancelled = true;
      req.signal.addEventListener('abort', cancel, { once: true });
      job.cleanup = () => req.signal!.removeEventListener('abort', cancel);
    }
    this.queue.push(job);
    void this.pump();
    return { events: channel, result, cancel };
  }

  stats(): SchedulerStats {
    const r = this.running;
    return {
      running: r ? 1 : 0,
      queued: this.queue.length,
      poolBytesUsed: r?.cache ? r.cache.bytes() - r.baseBytes! : 0,
      poolBytesBudget: this.budget,
    };
  }

  drain(): Promise<void> {
    this.draining = true;
    if (!this.running && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private cancel(job: Job): void {
    if (job.cancelled) return;
    job.cancelled = true;
    const at = this.queue.indexOf(job);
    if (at >= 0) {
      this.queue.splice(at, 1);
      this.finish(job, this.result(job, '', [], 'cancelled', 0, 0, 0));
      this.notifyIdle();
    }
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length) {
        const job = this.queue.shift()!;
        this.running = job;
        try {
          await this.run(job);
        } catch (e) {
          job.cleanup();
          job.channel.fail(e);
          job.reject(e);
        } finally {
          this.running = null;
        }
      }
    } finally {
      this.pumping = false;
      this.notifyIdle();
    }
  }

  private notifyIdle(): void {
    if (this.running || this.queue.length) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private async run(job: Job): Promise<void> {
    const { req } = job;
    const startedAt = performance.now();
    if (job.cancelled) return this.finish(job, this.result(job, '', [], 'cancelled', startedAt, 0, 0));
    const lm = this.lm;
    const cache = req.context ? req.context.cache : lm.newCache();
    const mark = req.context ? cache.mark() : null;
    job.cache = cache;
    job.baseBytes = cache.bytes();
    try {
      const sampler = new Sampler({ temperature: req.sampling?.temperature, topP: req.sampling?.topP, seed: req.sampling?.seed });
      const stopIds = new Set(req.stopIds ?? lm.tokenizer.eosIds);
      const vocab = lm.model.weights.lmHead.rows;
      const limit = lm.config.maxPositionEmbeddings;

      let logits: Float32Array | null = null;
      const ids = req.promptIds;
      for (let s = 0; s < ids.length; s += this.chunk) {
        if (job.cancelled) return this.finish(job, this.result(job, '', [], 'cancelled', startedAt, 0, 0));
        const part = ids.slice(s, Math.min(ids.length, s + this.chunk));
        logits = await lm.model.forwardAsync(part, cache, { logits: s + part.length >= ids.length ? 'last' : 'none' });
      }
      const compressor = req.decodeCompression ? new DecodeCompressor(lm, cache, req.decodeCompression) : null;
      const out = new OutputText(lm.tokenizer, stopIds, req.stopStrings ?? []);
      const tokens = out.tokens;
      let reason: FinishReason = 'length';
      let firstAt = 0;
      while (tokens.length < req.maxTokens) {
        if (job.cancelled) {
          reason = 'cancelled';
          break;
        }
        const id = sampler.sample(logits!, 0, vocab);
        if (tokens.length === 0) firstAt = performance.now();
        if (out.push(id)) {
          reason = 'stop';
          break;
        }
        const delta = out.takeStable();
        if (delta) job.channel.push({ type: 'text', delta });
        if (tokens.length >= req.maxTokens || cache.nextPos + 1 > limit) break;
        // As generate(): a scorer that reads recent queries needs each step's recorded (a synchronous pass).
        logits = compressor?.capturesQueries ? lm.model.forward([id], cache, { onLayer: (c) => compressor.record(c) }) : await lm.model.forwardAsync([id], cache);
        compressor?.afterStep();
      }
      // A cancelled sequence reports only what it had streamed.
      const rest = reason === 'cancelled' ? '' : out.takeRest();
      if (rest) job.channel.push({ type: 'text', delta: rest });
      this.finish(job, this.result(job, out.text.slice(0, out.emitted), tokens, reason, startedAt, firstAt, performance.now()));
    } finally {
      job.cache = undefined;
      if (mark && req.decodeCompression) dropRowsAfter(cache, mark);
      else if (mark) cache.truncate(mark);
    }
  }

  private result(job: Job, text: string, tokens: number[], finishReason: FinishReason, startedAt: number, firstAt: number, endAt: number): SequenceResult {
    const ctxTokens = job.req.context?.ids.length ?? 0;
    const end = endAt || performance.now();
    const n = tokens.length;
    return {
      text,
      tokens,
      finishReason,
      promptTokens: ctxTokens + job.req.promptIds.length,
      cachedTokens: ctxTokens,
      completionTokens: n,
      timings: {
        queuedMs: (startedAt || end) - job.submittedAt,
        ttftMs: firstAt ? firstAt - job.submittedAt : 0,
        tpotMs: n > 1 && firstAt ? (end - firstAt) / (n - 1) : 0,
        totalMs: end - job.submittedAt,
      },
    };
  }

  private finish(job: Job, result: SequenceResult): void {
    job.cleanup();
    job.channel.push({ type: 'done', result });
    job.channel.end();
    job.resolve(result);
  }
}
