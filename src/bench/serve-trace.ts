import { seededRandom } from '../tensor/seeded-random.ts';

/** How many tokens a request may generate: a fixed count or uniform over [min, max] (inclusive). */
export type OutputLengths = { kind: 'fixed'; tokens: number } | { kind: 'uniform'; min: number; max: number };

export interface TraceSpec {
  /** Mean arrivals per second (a Poisson process: exponential gaps). */
  rate: number;
  requests: number;
  seed: number;
  /** Questions available on each context (the dataset's rows, in order); a request draws a context, then one of its questions. */
  questionsPerContext: number[];
  outputTokens: OutputLengths;
}

export interface TraceRequest {
  index: number;
  /** Milliseconds after the replay starts. */
  arrivalMs: number;
  contextIndex: number;
  questionIndex: number;
  maxTokens: number;
}

/** Parses "fixed:N" or "uniform:A-B" (positive integers, A <= B). */
export function parseOutputLengths(spec: string): OutputLengths {
  const fixed = /^fixed:(\d+)$/.exec(spec.trim());
  if (fixed && Number(fixed[1]) >= 1) return { kind: 'fixed', tokens: Number(fixed[1]) };
  const uniform = /^uniform:(\d+)-(\d+)$/.exec(spec.trim());
  if (uniform && Number(uniform[1]) >= 1 && Number(uniform[1]) <= Number(uniform[2])) return { kind: 'uniform', min: Number(uniform[1]), max: Number(uniform[2]) };
  throw new RangeError(`output lengths "${spec}": expected fixed:N or uniform:A-B with 1 <= A <= B`);
}

/**
 * A seeded request trace: Poisson arrivals at `rate` per second, each request on a context and question drawn
 * uniformly, with a max-token count from the output-length distribution. The same spec gives the same trace.
 */
export function poissonTrace(spec: TraceSpec): TraceRequest[] {
  if (!(Number.isFinite(spec.rate) && spec.rate > 0)) throw new RangeError(`arrival rate must be a positive number of requests per second, got ${spec.rate}`);
  if (!(Number.isInteger(spec.requests) && spec.requests >= 1)) throw new RangeError(`request count must be a positive integer, got ${spec.requests}`);
  if (spec.questionsPerContext.length === 0 || spec.questionsPerContext.some((n) => !(Number.isInteger(n) && n >= 1))) {
    throw new RangeError('every context of a trace needs at least one question');
  }
  const rand = seededRandom(spec.seed);
  const out: TraceRequest[] = [];
  let t = 0;
  for (let i = 0; i < spec.requests; i++) {
    // Inverse CDF of the exponential gap; 1 - u lies in (0, 1], so the log is finite.
    t += (-Math.log(1 - rand()) / spec.rate) * 1000;
    const contextIndex = Math.floor(rand() * spec.questionsPerContext.length);
    const questionIndex = Math.floor(rand() * spec.questionsPerContext[contextIndex]!);
    const o = spec.outputTokens;
    const maxTokens = o.kind === 'fixed' ? o.tokens : o.min + Math.floor(rand() * (o.max - o.min + 1));
    out.push({ index: i, arrivalMs: t, contextIndex, questionIndex, maxTokens });
  }
  return out;
}
