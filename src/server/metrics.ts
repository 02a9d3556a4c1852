import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Scheduler } from '../engine/scheduler-types.ts';
import type { ContextWorker } from './context-worker.ts';

/** Buckets (seconds) from a few milliseconds to a minute: TTFT on a long prompt reaches seconds. */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** The server's Prometheus metrics, in a registry of its own (no global state): requests, tokens, queue, pool, latencies. */
export class ServerMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'route' | 'status'>;
  readonly sequences: Counter<'finish_reason'>;
  readonly promptTokens: Counter;
  readonly cachedTokens: Counter;
  readonly completionTokens: Counter;
  readonly ttft: Histogram;
  readonly tpot: Histogram;
  readonly contextWork: Histogram<'kind'>;

  constructor(scheduler: () => Scheduler | null, contextBytes: () => number, contextWorker: () => ContextWorker | null = () => null) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'kvlab_' });
    this.requests = new Counter({ name: 'kvlab_requests_total', help: 'HTTP requests answered, by route and status', labelNames: ['route', 'status'], registers });
    this.sequences = new Counter({ name: 'kvlab_sequences_total', help: 'Sequences ended, by finish reason (cancelled: the client went away)', labelNames: ['finish_reason'], registers });
    this.promptTokens = new Counter({ name: 'kvlab_prompt_tokens_total', help: 'Prompt tokens of completed chat requests (stored-context tokens included)', registers });
    this.cachedTokens = new Counter({ name: 'kvlab_cached_tokens_total', help: 'Prompt tokens served from stored contexts instead of prefilled', registers });
    this.completionTokens = new Counter({ name: 'kvlab_completion_tokens_total', help: 'Generated tokens', registers });
    this.ttft = new Histogram({ name: 'kvlab_time_to_first_token_seconds', help: 'Submit to first token', buckets: LATENCY_BUCKETS, registers });
    this.tpot = new Histogram({ name: 'kvlab_time_per_output_token_seconds', help: 'Mean time per output token after the first, per request', buckets: LATENCY_BUCKETS, registers });
    this.contextWork = new Histogram({
      name: 'kvlab_context_work_seconds',
      help: 'Context worker requests (compress: POST /v1/contexts; inspect: a stored context re-scored), failed ones included',
      labelNames: ['kind'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    new Gauge({
      name: 'kvlab_context_thread_restarts',
      help: 'Context threads started again after one stopped',
      registers,
      collect(this: Gauge) {
        this.set(contextWorker()?.restarts ?? 0);
      },
    });
    const stat = (pick: (s: ReturnType<Scheduler['stats']>) => number) =>
      function (this: Gauge) {
        const s = scheduler();
        this.set(s ? pick(s.stats()) : 0);
      };
    new Gauge({ name: 'kvlab_queue_depth', help: 'Sequences waiting for admission', registers, collect: stat((s) => s.queued) });
    new Gauge({ name: 'kvlab_running_sequences', help: 'Sequences generating now', registers, collect: stat((s) => s.running) });
    new Gauge({ name: 'kvlab_pool_bytes_used', help: 'KV bytes held by running sequences', registers, collect: stat((s) => s.poolBytesUsed) });
    new Gauge({ name: 'kvlab_pool_bytes_budget', help: 'KV bytes the scheduler may hold for sequences', registers, collect: stat((s) => s.poolBytesBudget) });
    new Gauge({
      name: 'kvlab_context_bytes',
      help: 'KV bytes of stored contexts loaded in memory',
      registers,
      collect(this: Gauge) {
        this.set(contextBytes());
      },
    });
  }

  /** The worker with each compress / inspect request timed into kvlab_context_work_seconds. */
  timed(worker: ContextWorker): ContextWorker {
    const time = <T>(kind: 'compress' | 'inspect', work: () => Promise<T>): Promise<T> => {
      const end = this.contextWork.startTimer({ kind });
      return work().finally(() => end());
    };
    return {
      get where() {
        return worker.where;
      },
      get thread() {
        return worker.thread;
      },
      get restarts() {
        return worker.restarts;
      },
      compress: (ctx, r) => time('compress', () => worker.compress(ctx, r)),
      inspect: (r) => time('inspect', () => worker.inspect(r)),
      close: () => worker.close(),
    };
  }
}
