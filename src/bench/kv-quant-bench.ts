import type { KvCache, KvDtype } from '../cache/kv-cache.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { seededRandom } from '../tensor/seeded-random.ts';
import { fillCache } from './decode-timing.ts';
import { cacheFigures, timeCacheRounds } from './cache-rounds.ts';
import { median } from './machine-limits.ts';
import type { TimedBackend } from './timed-backend.ts';

/** One cache decode is timed on: a dtype, and the fraction of each head's rows kept (1: all). */
interface QuantSide {
  name: string;
  dtype: KvDtype;
  kept: number;
}

const r1 = (x: number) => Math.round(x * 10) / 10;

/** Keeps a seeded random `ratio` of every head's rows (decode cost depends on how many rows a head holds, not which). */
function keepFraction(cache: KvCache, ratio: number): void {
  const rand = seededRandom(13);
  cache.forEachHead((s, l, h) => {
    const n = s.len;
    const keep = Math.floor(n * ratio);
    const order = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    cache.keep(l, h, Int32Array.from(order.slice(0, keep)).sort());
  });
}

/**
 * Decode at one context on fp32, bf16, int4 and int2 caches and on an int4 cache holding `ratio` of its rows, in
 * alternating rounds (each round: one bandwidth probe, then `steps` tokens on every cache, the order rotating), so
 * every ratio compares times taken within seconds of each other on a shared machine. Attention time is what the
 * cache dtype changes; its bound is the bytes the cache holds (packed codes, scales, zero points and the fp32
 * residual for int4 / int2) over the probe's bandwidth. The int4 + kept side stands for KVzip at that ratio: its
 * decode cost is set by the rows kept per head (KVzip's own keep sets are timed in the kvzip section).
 */
export function benchKvQuant(lm: LoadedModel, timed: TimedBackend, weightBytes: number, context: number, ratio: number, log: (s: string) => void, rounds = 8, steps = 3): Record<string, unknown> {
  const sides: QuantSide[] = [
    { name: 'f32', dtype: 'f32', kept: 1 },
    { name: 'bf16', dtype: 'bf16', kept: 1 },
    { name: 'int4', dtype: 'int4', kept: 1 },
    { name: 'int2', dtype: 'int2', kept: 1 },
    { name: `int4 + ${ratio} kept`, dtype: 'int4', kept: ratio },
  ];
  const caches = sides.map((s) => {
    log(`kv quant: filling a ${s.name} cache of ${context} rows`);
    const cache = lm.newCache(s.dtype);
    fillCache(cache, context);
    if (s.kept < 1) keepFraction(cache, s.kept);
    return cache;
  });
  const t = timeCacheRounds(lm, timed, caches, rounds, steps, (line) => log(`kv quant: ${line}`));
  const bw = median(t.bandwidth);
  const entries = sides.map((s, i) => {
    const { attention_vs_base, decode_vs_base, ...f } = cacheFigures(t, caches, i);
    return {
      cache: s.name,
      kv_dtype: s.dtype,
      kept_ratio: s.kept,
      ...f,
      bound_tokens_per_s: r1((bw * 1e9) / (weightBytes + f.kv_bytes)),
      tokens_per_s: r1(1000 / f.ms_per_token),
      attention_vs_f32: attention_vs_base,
      decode_vs_f32: decode_vs_base,
    };
  });
  for (const e of entries) log(`kv quant: ${e.cache}: ${e.ms_per_token} ms/token, attention ${e.attention_ms_per_token} ms (${e.attention_vs_f32}x fp32's), ${e.kv_bytes} KV bytes`);
  for (const c of caches) c.release();
  return {
    context,
    rounds,
    steps_per_round: steps,
    bandwidth_gbs_median: r1(bw),
    bandwidth_gbs_rounds: t.bandwidth.map(r1),
    weight_bytes: weightBytes,
    caches: entries,
    target: 'int4 attention_vs_f32 <= 0.35',
  };
}
