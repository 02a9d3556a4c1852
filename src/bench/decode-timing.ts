import type { KvCache, KvDtype } from '../cache/kv-cache.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { seededRandom } from '../tensor/seeded-random.ts';
import { alternate } from './alternate.ts';
import { median } from './machine-limits.ts';

/** Fills the cache with `context` synthetic rows (random keys/values): decode cost depends on sizes only. */
export function fillCache(cache: KvCache, context: number): void {
  const rand = seededRandom(5);
  const chunk = 1024;
  for (let s = 0; s < context; s += chunk) {
    const n = Math.min(chunk, context - s);
    const k = Float32Array.from({ length: n * cache.numKvHeads * cache.headDim }, () => rand() - 0.5);
    const pos = Int32Array.from({ length: n }, (_, i) => cache.nextPos + i);
    for (let l = 0; l < cache.numLayers; l++) cache.appendLayer(l, k, k, pos);
    cache.advance(n);
  }
  // An int4 / int2 cache packs all but its residual window, as after a prefill.
  cache.settle();
}

export const DECODE_WARMUP = 3;

/** Median ms of `steps` single-token forward passes after DECODE_WARMUP more (the cache is restored after each). */
export function timeDecode(lm: LoadedModel, cache: KvCache, steps = 12): number {
  return median(pairedDecode(lm, cache, 1, steps).steps);
}

export interface PairedDecode {
  /** Every timed step, ms. */
  steps: number[];
  /** Per round: the probe's GB/s (NaN without a probe) and the median ms of the steps right after it. */
  rounds: { bandwidthGBs: number; ms: number }[];
  /** Steps run in all, warm-up included (to average per-op totals over). */
  stepsRun: number;
}

/**
 * Single-token decode steps (after DECODE_WARMUP untimed ones; the cache is restored after each) in rounds,
 * each right after one streaming-probe pass when a probe is given, so every step time has a bandwidth measured
 * within about a tenth of a second of it: on a shared machine the bandwidth available moves on that scale, and
 * a bound from probes taken before and after a whole run can sit far from what the steps saw.
 */
export function pairedDecode(lm: LoadedModel, cache: KvCache, rounds: number, stepsPerRound: number, probe?: () => number): PairedDecode {
  const mark = cache.mark();
  const step = (i: number) => {
    const t = performance.now();
    lm.model.forward([100 + (i % 50)], cache);
    const ms = performance.now() - t;
    cache.truncate(mark);
    return ms;
  };
  for (let i = 0; i < DECODE_WARMUP; i++) step(i);
  const steps: number[] = [];
  const out: PairedDecode['rounds'] = [];
  for (let r = 0; r < rounds; r++) {
    const bandwidthGBs = probe?.() ?? NaN;
    const times = Array.from({ length: stepsPerRound }, (_, i) => step(r * stepsPerRound + i));
    steps.push(...times);
    out.push({ bandwidthGBs, ms: median(times) });
  }
  return { steps, rounds: out, stepsRun: DECODE_WARMUP + rounds * stepsPerRound };
}

export interface AlternatingRatio {
  context: number;
  rounds: number;
  /** Median ms per token of each model (a round's figure is the median of its steps). */
  ms_per_token: { a: number; b: number };
  /** Median over rounds of (a's ms / b's ms) within the round: b's tokens/s over a's. */
  ratio: number;
}

/** A model and the dtype of the cache it decodes from. */
export interface DecodeSide {
  lm: LoadedModel;
  kvDtype: KvDtype;
}

/**
 * Decode speed of two loaded models (say bf16 and int8 weights of one checkpoint), or of one model on two
 * cache dtypes, at the same context, compared on a shared machine: `steps` tokens of each per round,
 * alternating (see alternate()).
 */
export function alternatingDecodeRatio(a: DecodeSide, b: DecodeSide, context: number, rounds = 8, steps = 3): AlternatingRatio {
  const side = ({ lm, kvDtype }: DecodeSide) => {
    const cache = lm.newCache(kvDtype);
    fillCache(cache, context);
    const mark = cache.mark();
    return () => {
      const times: number[] = [];
      for (let i = 0; i < steps; i++) {
        const t = performance.now();
        lm.model.forward([100 + i], cache);
        times.push(performance.now() - t);
        cache.truncate(mark);
      }
      return median(times);
    };
  };
  const { times, ratio } = alternate(rounds, [side(b), side(a)]);
  return { context, rounds, ms_per_token: { a: median(times[1]!), b: median(times[0]!) }, ratio };
}
