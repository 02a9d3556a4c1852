import { cpus, loadavg } from 'node:os';
import { KvPool } from '../cache/kv-pool.ts';
import { compressContext } from '../engine/compress-context.ts';
import { ContextSession } from '../engine/context-session.ts';
import { continuationIds, conversationContext } from '../engine/conversation-context.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import type { QaRow } from '../eval/datasets.ts';
import { linePlot } from '../eval/svg-plot.ts';
import { getPress } from '../press/registry.ts';
import { cdfPoints, requestLatency, summarizeRequests, summarizeTimeline, type ServeSummary, type StateSample } from './serve-metrics.ts';
import { openaiClient, replayInProcess, replayOverHttp, type PreparedContext, type ReplayResult } from './serve-replay.ts';
import { poissonTrace, type OutputLengths, type TraceRequest } from './serve-trace.ts';

/** A method at a ratio; `full` is the uncompressed cache (ratio 1). */
export interface ServeSetting {
  method: string;
  ratio: number;
}

export const settingLabel = (s: ServeSetting) => (s.method === 'full' ? 'full' : `${s.method}@${s.ratio}`);

/**
 * The settings a methods x ratios grid stands for: `full` once (named, or implied by ratio 1), then every other
 * method at every ratio below 1 (at ratio 1 any method keeps everything: that is the full cache). Methods
 * come from the registry, so any registered one (adakv:<method> included) works.
 */
export function servingSettings(methods: string[], ratios: number[]): ServeSetting[] {
  for (const r of ratios) if (!(r > 0 && r <= 1)) throw new RangeError(`ratio ${r}: a serving setting keeps a fraction in (0, 1] of the context`);
  const compressed = methods.filter((m) => m !== 'full');
  compressed.forEach(getPress);
  const out: ServeSetting[] = [];
  if (methods.includes('full') || ratios.includes(1)) out.push({ method: 'full', ratio: 1 });
  for (const method of compressed) for (const ratio of ratios) if (ratio < 1) out.push({ method, ratio });
  if (out.length === 0) throw new RangeError('no serving settings: give methods with ratios below 1, or full');
  return out;
}

/** Each row's context compressed under the setting (outside any pool), with every question's continuation ids. */
export function prepareContexts(lm: LoadedModel, rows: QaRow[], setting: ServeSetting, queryTemplate: string): { contexts: PreparedContext[]; compressMs: number[] } {
  const compressMs: number[] = [];
  const contexts = rows.map((row) => {
    const ctx = conversationContext(lm, { kind: 'text', text: row.context });
    const t = performance.now();
    let session: ContextSession;
    if (setting.method === 'full') {
      session = new ContextSession(lm, ctx.layout);
      session.prefillCapture([]);
    } else session = compressContext(lm, ctx, getPress(setting.method), setting.ratio, undefined).session;
    compressMs.push(performance.now() - t);
    const probe = new KvPool(Number.MAX_SAFE_INTEGER);
    session.cache.clone(session.cache.dtype, probe).release();
    const shared = { id: `${row.id}:${settingLabel(setting)}`, cache: session.cache, ids: session.ids, prefix: session.prefix, context: session.context, method: setting.method, ratio: setting.ratio };
    const queries = row.questions.map((q) => continuationIds(lm, ctx, [{ role: 'user', content: queryTemplate.replaceAll('{query}', q) }]));
    return { shared, queries, pooledBytes: probe.peakBytes };
  });
  return { contexts, compressMs };
}

export interface ServeBenchOptions {
  rows: QaRow[];
  methods: string[];
  ratios: number[];
  /** Arrival rates, requests per second; every setting replays the same seeded trace at each. */
  rates: number[];
  requests: number;
  /** Each setting x rate is replayed this many times, settings interleaved within a round (the machine drifts). */
  rounds: number;
  seed: number;
  outputTokens: OutputLengths;
  queryTemplate: string;
  poolBytes: number;
  maxBatch: number;
  temperature: number;
  sampleMs: number;
  /** A running `kvlab serve` to replay against instead of the in-process scheduler. */
  url?: string;
  apiKey?: string;
  log: (line: string) => void;
}

export interface ServeEntry {
  method: string;
  ratio: number;
  rate: number;
  summary: ServeSummary;
  failed: number;
  /** The distinct messages of failed requests (at most five). */
  errors: string[];
  /** Mean pool bytes of one request's context copy, and mean compression time per context. */
  context_bytes: number | null;
  compress_ms: number | null;
  batch: { max: number; time_mean: number } | null;
  max_waiting: number | null;
  peak_pool_bytes: number | null;
  max_arrival_lag_ms: number;
  /** Sampled (t ms, batch size, waiting, pool bytes), at most 200 points. */
  timeline: [number, number, number, number][];
  /** Requests per second of each round (the summary holds their median). */
  rounds_requests_per_second: number[];
  /** Per request of every round: TTFT and e2e ms, output tokens (for the CDFs). */
  per_request: { round: number; index: number; ttft_ms: number; e2e_ms: number; output_tokens: number; finish: string }[];
}

const r2 = (x: number) => Math.round(x * 100) / 100;

function thin(samples: StateSample[], max: number): [number, number, number, number][] {
  const step = Math.max(1, Math.ceil(samples.length / max));
  return samples.filter((_, i) => i % step === 0 || i === samples.length - 1).map((s) => [r2(s.t), s.running, s.waiting, s.poolBytes]);
}

const median = (xs: number[]) => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
};

/**
 * One setting at one rate over its rounds: throughput is the median over rounds (each round's own duration),
 * latency percentiles pool every round's requests, batch and pool figures are the worst round's (max) and the
 * median round's (time-weighted mean batch); the timeline is the first round's.
 */
export function entryOf(setting: ServeSetting, rate: number, rounds: ReplayResult[], prepared: { contexts: PreparedContext[]; compressMs: number[] } | null): ServeEntry {
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const perRound = rounds.map((r) => summarizeRequests(r.records));
  const pooled = summarizeRequests(rounds.flatMap((r) => r.records));
  const timelines = rounds.map((r) => summarizeTimeline(r.timeline));
  const hasTimeline = rounds.some((r) => r.timeline.length > 0);
  const peaks = rounds.map((r) => r.peakPoolBytes).filter(Number.isFinite);
  return {
    method: setting.method,
    ratio: setting.ratio,
    rate,
    summary: {
      ...pooled,
      durationMs: median(perRound.map((s) => s.durationMs)),
      requestsPerSecond: median(perRound.map((s) => s.requestsPerSecond)),
      outputTokensPerSecond: median(perRound.map((s) => s.outputTokensPerSecond)),
    },
    rounds_requests_per_second: perRound.map((s) => r2(s.requestsPerSecond)),
    failed: rounds.reduce((a, r) => a + r.failed.length, 0),
    errors: [...new Set(rounds.flatMap((r) => r.failed.map((f) => f.error)))].slice(0, 5),
    context_bytes: prepared ? Math.round(mean(prepared.contexts.map((c) => c.pooledBytes))) : null,
    compress_ms: prepared ? r2(mean(prepared.compressMs)) : null,
    batch: hasTimeline ? { max: Math.max(...timelines.map((t) => t.maxBatch)), time_mean: r2(median(timelines.map((t) => t.meanBatch))) } : null,
    max_waiting: hasTimeline ? Math.max(...timelines.map((t) => t.maxWaiting)) : null,
    peak_pool_bytes: peaks.length ? Math.max(...peaks) : null,
    max_arrival_lag_ms: r2(Math.max(...rounds.map((r) => r.maxArrivalLagMs))),
    timeline: thin(rounds[0]!.timeline, 200),
    per_request: rounds.flatMap((res, round) =>
      res.records.map((r) => {
        const l = requestLatency(r);
        return { round, index: r.index, ttft_ms: r2(l.ttftMs), e2e_ms: r2(l.e2eMs), output_tokens: r.outputTokens, finish: r.finishReason };
      }),
    ),
  };
}

/**
 * `kvlab bench serve`: every setting (method x ratio) replays the same seeded Poisson trace at every rate
 * against the batching scheduler (or a running server) and reports throughput, TTFT/TPOT/e2e percentiles,
 * batch size and pool bytes.
 */
export async function runServeBench(lm: LoadedModel | null, o: ServeBenchOptions): Promise<{ report: Record<string, unknown>; entries: ServeEntry[] }> {
  const settings = servingSettings(o.methods, o.ratios);
  const traces = new Map<number, TraceRequest[]>(
    o.rates.map((rate) => [rate, poissonTrace({ rate, requests: o.requests, seed: o.seed, questionsPerContext: o.rows.map((r) => r.questions.length), outputTokens: o.outputTokens })]),
  );
  const loadBefore = loadavg();
  const entries: ServeEntry[] = [];
  if (!o.url && !lm) throw new Error('bench serve: an in-process replay needs a loaded model');
  if (lm && !o.url) {
    // One untimed request first: the first forward pass pays for compiling and allocating.
    const warm = prepareContexts(lm, o.rows.slice(0, 1), { method: 'full', ratio: 1 }, o.queryTemplate);
    await replayInProcess(lm, warm.contexts, [{ index: 0, arrivalMs: 0, contextIndex: 0, questionIndex: 0, maxTokens: 4 }], { poolBytes: o.poolBytes, maxBatch: o.maxBatch, temperature: 0, seed: 0, sampleMs: o.sampleMs });
    warm.contexts.forEach((c) => c.shared.cache.release());
  }
  if (o.url) {
    const client = await openaiClient(o.url, o.apiKey);
    const model = await client.models.list().then(
      (list) => list.data[0]?.id,
      (e: unknown) => {
        throw new Error(`bench serve: cannot list the models of ${o.url}: ${e instanceof Error ? e.message : String(e)}`);
      },
    );
    if (!model) throw new Error(`${o.url}/v1/models lists no model`);
    for (const setting of settings) {
      const ids: string[] = [];
      for (const row of o.rows) {
        const body = { text: row.context, method: setting.method === 'full' ? 'kvzip' : setting.method, ratio: setting.ratio, protect: 'none' };
        ids.push((await client.post<{ id: string }>('/contexts', { body })).id);
      }
      for (const rate of o.rates) {
        const trace = traces.get(rate)!;
        const rounds: ReplayResult[] = [];
        const requests = trace.map((t) => ({ contextId: ids[t.contextIndex]!, message: o.queryTemplate.replaceAll('{query}', o.rows[t.contextIndex]!.questions[t.questionIndex]!) }));
        for (let round = 0; round < o.rounds; round++) {
          o.log(`${settingLabel(setting)} at ${rate} req/s, round ${round + 1}/${o.rounds}: ${trace.length} requests against ${o.url}`);
          rounds.push(await replayOverHttp(trace, { url: o.url, apiKey: o.apiKey, model, requests, temperature: o.temperature, seed: o.seed }));
        }
        entries.push(entryOf(setting, rate, rounds, null));
      }
      for (const id of ids) await client.delete(`/contexts/${id}`);
    }
  } else {
    const prepared = settings.map((setting) => {
      o.log(`${settingLabel(setting)}: compressing ${o.rows.length} contexts`);
      return prepareContexts(lm!, o.rows, setting, o.queryTemplate);
    });
    const results = settings.map(() => o.rates.map((): ReplayResult[] => []));
    for (let round = 0; round < o.rounds; round++) {
      // Each round starts at another setting, so a slow spell of the machine does not always fall on the same one.
      for (let k = 0; k < settings.length; k++) {
        const si = (k + round) % settings.length;
        for (const [ri, rate] of o.rates.entries()) {
          const res = await replayInProcess(lm!, prepared[si]!.contexts, traces.get(rate)!, { poolBytes: o.poolBytes, maxBatch: o.maxBatch, temperature: o.temperature, seed: o.seed, sampleMs: o.sampleMs });
          const s = summarizeRequests(res.records);
          o.log(`round ${round + 1}/${o.rounds}, ${settingLabel(settings[si]!)} at ${rate} req/s: ${r2(s.requestsPerSecond)} req/s, e2e p50 ${r2(s.e2eMs.p50)} ms, ${res.failed.length} failed`);
          results[si]![ri]!.push(res);
        }
      }
    }
    settings.forEach((setting, si) => o.rates.forEach((rate, ri) => entries.push(entryOf(setting, rate, results[si]![ri]!, prepared[si]!))));
    prepared.forEach((p) => p.contexts.forEach((c) => c.shared.cache.release()));
  }
  const report = {
    machine: { cpu: cpus()[0]?.model ?? 'unknown', threads: cpus().length, kvlab_threads: process.env.KVLAB_THREADS ?? null, load_average_before: loadBefore.map(r2), load_average_after: loadavg().map(r2) },
    options: {
      target: o.url ?? 'in-process BatchScheduler',
      model: lm?.dir ?? null,
      contexts: o.rows.map((r) => r.id),
      methods: o.methods,
      ratios: o.ratios,
      rates: o.rates,
      requests: o.requests,
      rounds: o.rounds,
      seed: o.seed,
      output_tokens: o.outputTokens,
      pool_bytes: o.url ? null : o.poolBytes,
      max_batch: o.url ? null : o.maxBatch,
      temperature: o.temperature,
    },
    note: o.url
      ? 'client-side timestamps; each context compressed once on the server and shared by its requests'
      : 'each request holds its own pooled copy of its compressed context from hand-over to end; a request waits (FCFS) until the pool holds its context and worst-case rows; TTFT and e2e count from the trace arrival time',
    entries,
  };
  return { report, entries };
}

/** throughput.svg (requests/s vs ratio, a line per method and rate; full at ratio 1 of every method) and e2e/TTFT CDFs per rate. */
export function servePlots(entries: ServeEntry[]): Record<string, string> {
  const plots: Record<string, string> = {};
  const rates = [...new Set(entries.map((e) => e.rate))];
  const methods = [...new Set(entries.map((e) => e.method))].filter((m) => m !== 'full');
  for (const [file, metric, label] of [
    ['throughput.svg', 'requestsPerSecond', 'requests / s'],
    ['token-throughput.svg', 'outputTokensPerSecond', 'output tokens / s'],
  ] as const) {
    plots[file] = linePlot({
      title: `Serving throughput vs kept ratio (${label})`,
      xLabel: 'ratio kept',
      yLabel: label,
      xDomain: [0, 1],
      series: (methods.length ? methods : ['full']).flatMap((m) =>
        rates.map((rate, ri) => ({
          name: `${m} @ ${rate}/s`,
          group: m,
          dash: ri,
          points: entries.filter((e) => e.rate === rate && (e.method === m || e.method === 'full')).map((e) => [e.ratio, e.summary[metric]] as [number, number]),
        })),
      ),
    });
  }
  if (entries.some((e) => e.batch)) {
    plots['batch.svg'] = linePlot({
      title: 'Largest batch vs kept ratio (the pool holds each request\'s context)',
      xLabel: 'ratio kept',
      yLabel: 'sequences in a step (max over the run)',
      xDomain: [0, 1],
      series: (methods.length ? methods : ['full']).flatMap((m) =>
        rates.map((rate, ri) => ({
          name: `${m} @ ${rate}/s`,
          group: m,
          dash: ri,
          points: entries.filter((e) => e.rate === rate && e.batch && (e.method === m || e.method === 'full')).map((e) => [e.ratio, e.batch!.max] as [number, number]),
        })),
      ),
    });
  }
  rates.forEach((rate) => {
    for (const [kind, key] of [
      ['e2e', 'e2e_ms'],
      ['ttft', 'ttft_ms'],
    ] as const) {
      plots[`${kind}-cdf-${rate}.svg`] = linePlot({
        title: `${kind === 'e2e' ? 'End-to-end latency' : 'Time to first token'} CDF at ${rate} req/s`,
        xLabel: 'ms',
        yLabel: 'fraction of requests',
        yDomain: [0, 1],
        series: entries.filter((e) => e.rate === rate).map((e) => ({ name: settingLabel(e), group: e.method, dash: Math.max(0, [0.5, 0.3, 0.1].indexOf(e.ratio)), points: cdfPoints(e.per_request.map((r) => r[key])) })),
      });
    }
  });
  return plots;
}
