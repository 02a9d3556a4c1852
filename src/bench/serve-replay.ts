import { KvPool } from '../cache/kv-pool.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { BatchScheduler } from '../engine/scheduler.ts';
import type { SamplingParams, SharedContext } from '../engine/scheduler-types.ts';
import type { RequestTimes, StateSample } from './serve-metrics.ts';
import type { TraceRequest } from './serve-trace.ts';

/** A context ready to serve: its (compressed) cache outside any pool, and each question's continuation ids. */
export interface PreparedContext {
  shared: SharedContext;
  queries: number[][];
  /** What a copy of the cache is charged in a pool (whole blocks). */
  pooledBytes: number;
}

export interface ReplayRecord extends RequestTimes {
  index: number;
  /** When the request was handed to the scheduler (after waiting for memory for its context). */
  submitMs: number;
  promptTokens: number;
  finishReason: string;
}

export interface ReplayResult {
  records: ReplayRecord[];
  failed: { index: number; error: string }[];
  timeline: StateSample[];
  /** The pool's own high-water mark over the replay. */
  peakPoolBytes: number;
  /** How late timers handed arrivals over, worst case (ms). */
  maxArrivalLagMs: number;
}

export interface InProcessReplayOptions {
  poolBytes: number;
  maxBatch: number;
  /** 0 decodes greedily; above it, each request samples with seed `seed * 100003 + index`. */
  temperature: number;
  seed: number;
  /** How often the batch size and pool bytes are sampled. */
  sampleMs: number;
}

/**
 * Replays a trace against the batching scheduler in this process. Each request brings its own copy of its
 * context, charged to the pool from the moment it is handed over until it ends (a server that keeps each
 * request's compressed prefill): a request waits, first come first served, until the pool can hold its
 * context beside its worst-case own rows, so a smaller compressed context lets more requests run at once.
 */
export async function replayInProcess(lm: LoadedModel, contexts: PreparedContext[], trace: TraceRequest[], o: InProcessReplayOptions): Promise<ReplayResult> {
  const pool = new KvPool(o.poolBytes);
  const scheduler = new BatchScheduler(lm, { pool, maxBatch: o.maxBatch, maxQueue: trace.length + 1 });
  const records: ReplayRecord[] = [];
  const failed: ReplayResult['failed'] = [];
  const timeline: StateSample[] = [];
  const waiting: { req: TraceRequest; arrivedMs: number }[] = [];
  let held = 0;
  let settled = 0;
  let maxLag = 0;
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  const sample = () => {
    const s = scheduler.stats();
    timeline.push({ t: now(), running: s.running, waiting: s.queued + waiting.length, poolBytes: pool.usedBytes });
  };
  let allSettled!: () => void;
  const done = new Promise<void>((resolve) => (allSettled = resolve));
  const settle = () => {
    if (++settled === trace.length) allSettled();
  };

  const pump = (): void => {
    while (waiting.length > 0) {
      const { req, arrivedMs } = waiting[0]!;
      const c = contexts[req.contextIndex]!;
      const promptIds = c.queries[req.questionIndex]!;
      const need = c.pooledBytes + scheduler.requestBytes({ context: c.shared, promptIds, maxTokens: req.maxTokens });
      if (need > pool.budgetBytes) {
        waiting.shift();
        failed.push({ index: req.index, error: `its context and worst-case rows need ${need} bytes, more than the pool's ${pool.budgetBytes}` });
        settle();
        continue;
      }
      if (held + need > pool.budgetBytes) break;
      waiting.shift();
      held += need;
      const cache = c.shared.cache.clone(c.shared.cache.dtype, pool);
      const submitMs = now();
      const sampling: SamplingParams = o.temperature > 0 ? { temperature: o.temperature, seed: o.seed * 100003 + req.index } : { temperature: 0 };
      const ended = () => {
        cache.release();
        held -= need;
        settle();
        sample();
        pump();
      };
      try {
        const handle = scheduler.submit({ context: { ...c.shared, cache }, promptIds, maxTokens: req.maxTokens, sampling });
        handle.result.then(
          (r) => {
            records.push({
              index: req.index,
              arrivalMs: Math.min(req.arrivalMs, arrivedMs),
              submitMs,
              firstTokenMs: submitMs + r.timings.ttftMs,
              endMs: submitMs + r.timings.totalMs,
              outputTokens: r.completionTokens,
              promptTokens: r.promptTokens,
              finishReason: r.finishReason,
            });
            ended();
          },
          (e: unknown) => {
            failed.push({ index: req.index, error: e instanceof Error ? e.message : String(e) });
            ended();
          },
        );
      } catch (e) {
        failed.push({ index: req.index, error: e instanceof Error ? e.message : String(e) });
        ended();
      }
    }
    sample();
  };

  const timer = setInterval(sample, o.sampleMs);
  const arrivals = trace.map((req) =>
    setTimeout(() => {
      const arrivedMs = now();
      maxLag = Math.max(maxLag, arrivedMs - req.arrivalMs);
      waiting.push({ req, arrivedMs });
      pump();
    }, Math.max(0, req.arrivalMs - now())),
  );
  try {
    await done;
    await scheduler.drain();
  } finally {
    clearInterval(timer);
    arrivals.forEach(clearTimeout);
  }
  sample();
  records.sort((a, b) => a.index - b.index);
  return { records, failed, timeline, peakPoolBytes: pool.peakBytes, maxArrivalLagMs: maxLag };
}

export interface HttpReplayOptions {
  url: string;
  apiKey?: string;
  /** The model id the server serves (GET /v1/models). */
  model: string;
  /** Per request: the context id on the server and the user message. */
  requests: { contextId: string; message: string }[];
  temperature: number;
  seed: number;
}

/**
 * Replays a trace against a running `kvlab serve` through the official openai client (streaming): TTFT is
 * the first chunk with text, the end is the stream's end, tokens are the usage chunk's completion tokens.
 * The server's pool and batch are its own; the timeline stays empty.
 */
export async function replayOverHttp(trace: TraceRequest[], o: HttpReplayOptions): Promise<ReplayResult> {
  const client = await openaiClient(o.url, o.apiKey);
  const records: ReplayRecord[] = [];
  const failed: ReplayResult['failed'] = [];
  let maxLag = 0;
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  const one = async (req: TraceRequest): Promise<void> => {
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, req.arrivalMs - now())));
    const arrivedMs = now();
    maxLag = Math.max(maxLag, arrivedMs - req.arrivalMs);
    const r = o.requests[req.index]!;
    let first = 0;
    let tokens = 0;
    let finish: string | null = null;
    try {
      const stream = await client.chat.completions.create({
        model: o.model,
        messages: [{ role: 'user', content: r.message }],
        max_tokens: req.maxTokens,
        temperature: o.temperature,
        seed: o.seed * 100003 + req.index,
        stream: true,
        stream_options: { include_usage: true },
        ...({ context: r.contextId } as Record<string, unknown>),
      });
      for await (const chunk of stream) {
        if (!first && chunk.choices[0]?.delta.content) first = now();
        finish = chunk.choices[0]?.finish_reason ?? finish;
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
      }
      const end = now();
      records.push({ index: req.index, arrivalMs: Math.min(req.arrivalMs, arrivedMs), submitMs: arrivedMs, firstTokenMs: first || end, endMs: end, outputTokens: tokens, promptTokens: 0, finishReason: finish ?? 'unknown' });
    } catch (e) {
      failed.push({ index: req.index, error: e instanceof Error ? e.message : String(e) });
    }
  };
  await Promise.all(trace.map(one));
  records.sort((a, b) => a.index - b.index);
  return { records, failed, timeline: [], peakPoolBytes: NaN, maxArrivalLagMs: maxLag };
}

/** The openai client on a kvlab serve URL (a development dependency: its absence is said in one line). */
export async function openaiClient(url: string, apiKey?: string) {
  let OpenAI: typeof import('openai').default;
  try {
    OpenAI = (await import('openai')).default;
  } catch {
    throw new Error('bench serve --url needs the "openai" package (npm install openai)');
  }
  return new OpenAI({ apiKey: apiKey ?? 'none', baseURL: `${url.replace(/\/+$/, '')}/v1`, maxRetries: 0, timeout: 600_000 });
}
