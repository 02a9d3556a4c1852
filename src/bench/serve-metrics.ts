/**
 * Serving metrics from recorded timestamps, as pure functions: what a request saw (TTFT, TPOT, end-to-end)
 * and what a run achieved (throughput, latency percentiles, batch size and pool bytes over time).
 */

/** One completed request's timestamps (ms, one clock) and output size. */
export interface RequestTimes {
  /** When the request arrived (its trace time), not when it was handed to the scheduler. */
  arrivalMs: number;
  /** When its first output token was sampled (the end time when it produced none). */
  firstTokenMs: number;
  endMs: number;
  outputTokens: number;
}

export interface RequestLatency {
  ttftMs: number;
  /** Mean time per output token after the first; null with fewer than two tokens. */
  tpotMs: number | null;
  e2eMs: number;
}

export function requestLatency(r: RequestTimes): RequestLatency {
  if (!(r.arrivalMs <= r.firstTokenMs && r.firstTokenMs <= r.endMs)) {
    throw new RangeError(`request timestamps out of order: arrival ${r.arrivalMs}, first token ${r.firstTokenMs}, end ${r.endMs}`);
  }
  return {
    ttftMs: r.firstTokenMs - r.arrivalMs,
    tpotMs: r.outputTokens > 1 ? (r.endMs - r.firstTokenMs) / (r.outputTokens - 1) : null,
    e2eMs: r.endMs - r.arrivalMs,
  };
}

/** The p-th percentile (0..100) with linear interpolation between order statistics (numpy's default). */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile must be in [0, 100], got ${p}`);
  const xs = [...values].sort((a, b) => a - b);
  const at = (p / 100) * (xs.length - 1);
  const lo = Math.floor(at);
  const hi = Math.ceil(at);
  return xs[lo]! + (xs[hi]! - xs[lo]!) * (at - lo);
}

export interface Distribution {
  n: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
}

export function distribution(values: number[]): Distribution {
  const n = values.length;
  return { n, mean: n ? values.reduce((a, b) => a + b, 0) / n : NaN, p50: percentile(values, 50), p90: percentile(values, 90), p99: percentile(values, 99) };
}

export interface ServeSummary {
  completed: number;
  /** First arrival to last end. */
  durationMs: number;
  requestsPerSecond: number;
  outputTokensPerSecond: number;
  ttftMs: Distribution;
  tpotMs: Distribution;
  e2eMs: Distribution;
}

export function summarizeRequests(records: RequestTimes[]): ServeSummary {
  const lat = records.map(requestLatency);
  const start = Math.min(...records.map((r) => r.arrivalMs));
  const end = Math.max(...records.map((r) => r.endMs));
  const durationMs = records.length ? end - start : 0;
  const tokens = records.reduce((a, r) => a + r.outputTokens, 0);
  return {
    completed: records.length,
    durationMs,
    requestsPerSecond: durationMs > 0 ? (records.length * 1000) / durationMs : NaN,
    outputTokensPerSecond: durationMs > 0 ? (tokens * 1000) / durationMs : NaN,
    ttftMs: distribution(lat.map((l) => l.ttftMs)),
    tpotMs: distribution(lat.flatMap((l) => (l.tpotMs === null ? [] : [l.tpotMs]))),
    e2eMs: distribution(lat.map((l) => l.e2eMs)),
  };
}

/** A sample of the server's state: ms since the start, sequences in the batch, requests waiting, pool bytes in use. */
export interface StateSample {
  t: number;
  running: number;
  waiting: number;
  poolBytes: number;
}

/**
 * Batch size over time: its maximum and its time-weighted mean (each sample holds until the next one), and
 * the most pool bytes any sample saw.
 */
export function summarizeTimeline(samples: StateSample[]): { maxBatch: number; meanBatch: number; maxWaiting: number; peakPoolBytes: number } {
  if (samples.length === 0) return { maxBatch: 0, meanBatch: 0, maxWaiting: 0, peakPoolBytes: 0 };
  let area = 0;
  for (let i = 0; i + 1 < samples.length; i++) area += samples[i]!.running * (samples[i + 1]!.t - samples[i]!.t);
  const span = samples[samples.length - 1]!.t - samples[0]!.t;
  return {
    maxBatch: Math.max(...samples.map((s) => s.running)),
    meanBatch: span > 0 ? area / span : samples[0]!.running,
    maxWaiting: Math.max(...samples.map((s) => s.waiting)),
    peakPoolBytes: Math.max(...samples.map((s) => s.poolBytes)),
  };
}

/** The empirical CDF as plot points: (value, fraction of values <= it), one per sorted value. */
export function cdfPoints(values: number[]): [number, number][] {
  const xs = [...values].sort((a, b) => a - b);
  return xs.map((x, i) => [x, (i + 1) / xs.length]);
}
