import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KvCache } from '../cache/kv-cache.ts';
import { loadModel } from '../engine/loaded-model.ts';
import { NativeBackend } from '../tensor/native.ts';
import { seededRandom } from '../tensor/seeded-random.ts';
import { fillCache } from './decode-timing.ts';
import { cacheFigures, timeCacheRounds } from './cache-rounds.ts';
import { median } from './machine-limits.ts';
import { BENCH_MMAP, modelDir } from './run-bench.ts';
import { TimedBackend } from './timed-backend.ts';

export interface ThinkBenchOptions {
  /** tiny, qwen2.5-0.5b or llama-3.2-1b (random weights of that shape). */
  model: string;
  context: number;
  rounds: number;
  steps: number;
  log: (line: string) => void;
}

/** One cache decode is timed on: the fraction of each head's rows kept and of its key channels pruned. */
interface ThinkSide {
  name: string;
  keptRows: number;
  prunedChannels: number;
}

const SIDES: ThinkSide[] = [
  { name: 'full', keptRows: 1, prunedChannels: 0 },
  { name: 'think 0.25', keptRows: 1, prunedChannels: 0.25 },
  { name: 'think 0.5', keptRows: 1, prunedChannels: 0.5 },
  { name: 'rows 0.5', keptRows: 0.5, prunedChannels: 0 },
  { name: 'rows 0.5 + think 0.5', keptRows: 0.5, prunedChannels: 0.5 },
];

const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

/** A seeded random `keptRows` of every head's rows, then a seeded random channel set of the rest (decode cost depends on how many, not which). */
function shape(cache: KvCache, side: ThinkSide): void {
  const rand = seededRandom(17);
  const d = cache.headDim;
  const pick = (n: number, k: number) => {
    const order = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    return Int32Array.from(order.slice(0, k)).sort();
  };
  cache.forEachHead((s, l, h) => {
    if (side.keptRows < 1) cache.keep(l, h, pick(s.len, Math.floor(s.len * side.keptRows)));
    const pruned = Math.floor(d * side.prunedChannels);
    if (pruned > 0) cache.pruneKeyChannels(l, h, pick(d, d - pruned));
  });
}

/**
 * Decode on one model at one context from a full fp32 cache and from caches whose heads keep fewer key channels
 * (ThinK), fewer rows (any token eviction), or both, in alternating rounds: each round one bandwidth probe, then
 * `steps` tokens on every cache, the order rotating, so ratios compare times taken seconds apart on a shared machine.
 * The attention bound is the bytes each cache holds read once at the probe's bandwidth.
 */
export function runThinkBench(o: ThinkBenchOptions): Record<string, unknown> {
  const scratch = mkdtempSync(join(tmpdir(), 'kvlab-think-bench-'));
  try {
    const timed = new TimedBackend(new NativeBackend());
    const lm = loadModel(modelDir(o.model, scratch, o.log), { backend: timed, mmap: BENCH_MMAP });
    const caches = SIDES.map((side) => {
      o.log(`filling the "${side.name}" cache (${o.context} rows)`);
      const cache = lm.newCache('f32');
      fillCache(cache, o.context);
      shape(cache, side);
      return cache;
    });
    const t = timeCacheRounds(lm, timed, caches, o.rounds, o.steps, o.log);
    const bw = median(t.bandwidth);
    const entries = SIDES.map((side, i) => {
      const { attention_vs_base, decode_vs_base, ...f } = cacheFigures(t, caches, i);
      return {
        cache: side.name,
        kept_rows: side.keptRows,
        pruned_key_channels: side.prunedChannels,
        ...f,
        kv_bytes_vs_full: r3(f.kv_bytes / caches[0]!.bytes()),
        attention_vs_full: attention_vs_base,
        decode_vs_full: decode_vs_base,
      };
    });
    for (const e of entries) o.log(`${e.cache}: ${e.ms_per_token} ms/token, attention ${e.attention_ms_per_token} ms (${e.attention_vs_full}x full), ${e.kv_bytes} KV bytes (${e.kv_bytes_vs_full}x)`);
    for (const c of caches) c.release();
    return {
      date: new Date().toISOString(),
      machine: { cpu: cpus()[0]?.model ?? 'unknown', vcpus: cpus().length, load_average_1m: r1(loadavg()[0]!), backend: timed.describe() },
      model: o.model,
      context: o.context,
      rounds: o.rounds,
      steps_per_round: o.steps,
      bandwidth_gbs_median: r1(bw),
      bandwidth_gbs_rounds: t.bandwidth.map(r1),
      caches: entries,
    };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
