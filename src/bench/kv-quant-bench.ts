import type { KvCache, KvDtype } from '../cache/kv-cache.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { seededRandom } from '../tensor/seeded-random.ts';
import { fillCache } from './decode-timing.ts';
import { median, probeBandwidth, quartiles } from './machine-limits.ts';
import type { TimedBackend } from './timed-backend.ts';

/** One cache decode is timed on: a dtype, and the fraction of each head's rows kept (1: all). */
interface QuantSide {
  name: string;
  dtype: KvDtype;
  kept: number;
}

const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

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
  const marks = caches.map((c) => c.mark());
  const totals: number[][] = sides.map(() => []);
  const attention: number[][] = sides.map(() => []);
  const bandwidth: number[] = [];
  const stepOn = (i: number, token: number) => {
    timed.reset();
    const t = performance.now();
    lm.model.forward([100 + token], caches[i]!);
    const ms = performance.now() - t;
    const att = timed.ms.attention ?? 0;
    caches[i]!.truncate(marks[i]!);
    return { ms, att };
  };
  for (let i = 0; i < sides.length; i++) for (let w = 0; w < 2; w++) stepOn(i, w);
  for (let r = 0; r < rounds; r++) {
    bandwidth.push(probeBandwidth(1)[0]!);
    for (let k = 0; k < sides.length; k++) {
      const i = (k + r) % sides.length;
      const runs = Array.from({ length: steps }, (_, s) => stepOn(i, s));
      totals[i]!.push(median(runs.map((x) => x.ms)));
      attention[i]!.push(median(runs.map((x) => x.att)));
    }
  }
  const bw = median(bandwidth);
  const f32 = 0;
  const perRoundRatio = (i: number, of: number[][]) => median(of[i]!.map((x, r) => x / of[f32]![r]!));
  const entries = sides.map((s, i) => {
    const kvBytes = caches[i]!.bytes();
    const attentionMs = median(attention[i]!);
    return {
      cache: s.name,
      kv_dtype: s.dtype,
      kept_ratio: s.kept,
      kv_bytes: kvBytes,
      ms_per_token: r3(median(totals[i]!)),
      ms_per_token_quartiles: quartiles(totals[i]!).map(r3),
      attention_ms_per_token: r3(attentionMs),
      attention_ms_per_token_quartiles: quartiles(attention[i]!).map(r3),
      // Reading the cache once at the probe's bandwidth: the floor of attention time, and of decode with the weights.
      attention_bound_ms: r3((kvBytes / (bw * 1e9)) * 1000),
      attention_fraction_of_bound: r3(kvBytes / (bw * 1e9) / (attentionMs / 1000)),
      bound_tokens_per_s: r1((bw * 1e9) / (weightBytes + kvBytes)),
      tokens_per_s: r1(1000 / median(totals[i]!)),
      attention_vs_f32: r3(perRoundRatio(i, attention)),
      decode_vs_f32: r3(perRoundRatio(i, totals)),
    };
  });
  for (const e of entries) log(`kv quant: ${e.cache}: ${e.ms_per_token} ms/token, attention ${e.attention_ms_per_token} ms (${e.attention_vs_f32}x fp32's), ${e.kv_bytes} KV bytes`);
  for (const c of caches) c.release();
  return {
    context,
    rounds,
    steps_per_round: steps,
    bandwidth_gbs_median: r1(bw),
    bandwidth_gbs_rounds: bandwidth.map(r1),
    weight_bytes: weightBytes,
    caches: entries,
    target: 'int4 attention_vs_f32 <= 0.35',
  };
}
