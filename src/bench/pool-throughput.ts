import type { KvCache, KvDtype } from '../cache/kv-cache.ts';
import { blockRows, formatBytes, KvPool, kvRowBytes } from '../cache/kv-pool.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { fillCache } from './decode-timing.ts';
import { median, probeBandwidth } from './machine-limits.ts';

/**
 * The best aggregate decode throughput a fixed KV pool allows at each compression ratio: as many sequences as
 * the pool admits (each promised its kept context plus `answerRows` more rows per head and given those blocks
 * at once, as the scheduler admits them), each on its own copy of a `context`-row cache held in the pool, all
 * decoding together; the figure is admitted sequences x 1000 / the median step ms at that batch.
 */

export interface PoolThroughputOptions {
  poolBytes: number;
  context: number;
  ratios: number[];
  answerRows: number;
  kvDtype: KvDtype;
  rounds: number;
  steps: number;
  /** Keeps about `ratio` of each head's rows (ragged across heads). */
  evict: (cache: KvCache, ratio: number) => void;
  log: (line: string) => void;
}

const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

/** Bytes the pool promises one sequence: its heads' kept rows and `answerRows` more each, in whole blocks. */
function promisedBytes(cache: KvCache, answerRows: number): number {
  const row = kvRowBytes(cache.headDim, cache.dtype);
  let total = 0;
  cache.forEachHead((s) => {
    total += blockRows(s.len + answerRows) * row;
  });
  return total;
}

function measureRatio(lm: LoadedModel, o: PoolThroughputOptions, ratio: number): Record<string, unknown> {
  const base = lm.newCache(o.kvDtype);
  fillCache(base, o.context);
  o.evict(base, ratio);
  const pool = new KvPool(o.poolBytes);
  const promise = promisedBytes(base, o.answerRows);
  const caches: KvCache[] = [];
  const returns: (() => void)[] = [];
  try {
    while (pool.canReserve(promise)) {
      returns.push(pool.reserve(promise));
      const c = base.clone(o.kvDtype, pool);
      caches.push(c);
      c.reserveRows(o.answerRows);
    }
  } finally {
    base.release();
  }
  try {
    const B = caches.length;
    if (B === 0) return { kept_ratio: ratio, sequences: 0, note: `one sequence needs ${formatBytes(promise)}, more than the pool` };
    o.log(`${o.context}-row contexts at ${ratio} kept: ${B} sequences in ${formatBytes(o.poolBytes)} (${formatBytes(pool.usedBytes)} allocated)`);
    const marks = caches.map((c) => c.mark());
    const vocab = lm.model.weights.embed.rows;
    const step = (i: number) => {
      const t = performance.now();
      lm.model.forwardBatch(caches.map((cache, s) => ({ ids: [(100 + 7 * s + i) % vocab], cache })));
      const ms = performance.now() - t;
      caches.forEach((c, s) => c.truncate(marks[s]!));
      return ms;
    };
    step(0);
    const steps: number[] = [];
    const bandwidth: number[] = [];
    for (let r = 0; r < o.rounds; r++) {
      bandwidth.push(probeBandwidth(1)[0]!);
      for (let i = 0; i < o.steps; i++) steps.push(step(i + 1));
      o.log(`  round ${r + 1}/${o.rounds}: ${steps.slice(-o.steps).map(Math.round).join(', ')} ms per step`);
    }
    const ms = median(steps);
    return {
      kept_ratio: ratio,
      sequences: B,
      bytes_promised_per_sequence: promise,
      pool_allocated_bytes: pool.usedBytes,
      step_ms: r3(ms),
      step_ms_runs: steps.map(r1),
      bandwidth_gbs_median_of_rounds: r1(median(bandwidth)),
      aggregate_tokens_per_second: r3((B * 1000) / ms),
    };
  } finally {
    for (const c of caches) c.release();
    for (const give of returns) give();
  }
}

/** One entry per ratio, measured one after the other (each holds the whole pool), and each ratio's aggregate over the first's. */
export function poolThroughput(lm: LoadedModel, o: PoolThroughputOptions): Record<string, unknown> {
  const entries = o.ratios.map((ratio) => measureRatio(lm, o, ratio));
  // From the unrounded step times.
  const rate = (e: Record<string, unknown>) => (typeof e.step_ms === 'number' ? (e.sequences as number) / e.step_ms : NaN);
  const first = entries[0] ? rate(entries[0]) : NaN;
  return {
    pool_bytes: o.poolBytes,
    context_rows: o.context,
    answer_rows: o.answerRows,
    kv_dtype: o.kvDtype,
    note: 'sequences admitted as the scheduler admits them (kept rows + answer rows per head, whole blocks); each on its own copy of the cache in the pool; the ratios are measured one after the other, not interleaved',
    ratios: entries.map((e) => ({ ...e, aggregate_vs_first: first > 0 && rate(e) > 0 ? r3(rate(e) / first) : null })),
  };
}
