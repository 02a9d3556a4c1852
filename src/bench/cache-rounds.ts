import type { KvCache } from '../cache/kv-cache.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { median, probeBandwidth, quartiles } from './machine-limits.ts';
import type { TimedBackend } from './timed-backend.ts';

const r3 = (x: number) => Math.round(x * 1000) / 1000;

/** Per cache: the median decode and attention ms of each round's steps; and the probe's bandwidth per round. */
export interface CacheRounds {
  totals: number[][];
  attention: number[][];
  bandwidth: number[];
}

/**
 * Decode on several caches in alternating rounds (each round: one bandwidth probe, then `steps` tokens on every
 * cache, the order rotating), each step undone after it is timed, so every ratio between caches compares times
 * taken within seconds of each other on a shared machine. Two warm-up steps per cache first.
 */
export function timeCacheRounds(lm: LoadedModel, timed: TimedBackend, caches: KvCache[], rounds: number, steps: number, log: (s: string) => void): CacheRounds {
  const marks = caches.map((c) => c.mark());
  const totals: number[][] = caches.map(() => []);
  const attention: number[][] = caches.map(() => []);
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
  for (let i = 0; i < caches.length; i++) for (let w = 0; w < 2; w++) stepOn(i, w);
  for (let r = 0; r < rounds; r++) {
    bandwidth.push(probeBandwidth(1)[0]!);
    for (let k = 0; k < caches.length; k++) {
      const i = (k + r) % caches.length;
      const runs = Array.from({ length: steps }, (_, s) => stepOn(i, s));
      totals[i]!.push(median(runs.map((x) => x.ms)));
      attention[i]!.push(median(runs.map((x) => x.att)));
    }
    log(`round ${r + 1} of ${rounds} done`);
  }
  return { totals, attention, bandwidth };
}

/**
 * Cache i's figures from the rounds: decode and attention ms per token (medians, quartiles), the attention bound
 * (the bytes the cache holds read once at the probe's median bandwidth) and, against cache `base`, the medians of
 * the per-round ratios.
 */
export function cacheFigures(t: CacheRounds, caches: KvCache[], i: number, base = 0) {
  const bw = median(t.bandwidth);
  const kvBytes = caches[i]!.bytes();
  const attentionMs = median(t.attention[i]!);
  const vsBase = (of: number[][]) => r3(median(of[i]!.map((x, r) => x / of[base]![r]!)));
  return {
    kv_bytes: kvBytes,
    ms_per_token: r3(median(t.totals[i]!)),
    ms_per_token_quartiles: quartiles(t.totals[i]!).map(r3),
    attention_ms_per_token: r3(attentionMs),
    attention_ms_per_token_quartiles: quartiles(t.attention[i]!).map(r3),
    attention_bound_ms: r3((kvBytes / (bw * 1e9)) * 1000),
    attention_fraction_of_bound: r3(kvBytes / (bw * 1e9) / (attentionMs / 1000)),
    attention_vs_base: vsBase(t.attention),
    decode_vs_base: vsBase(t.totals),
  };
}
