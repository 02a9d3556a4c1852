import type { KvCache } from '../cache/kv-cache.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { seededRandom } from '../engine/sampler.ts';
import type { Weight } from '../tensor/backend.ts';
import { alternate } from './alternate.ts';
import { median } from './machine-limits.ts';

function weightBytes(w: Weight): number {
  return w.data.byteLength + (w.scales?.byteLength ?? 0);
}

/** Bytes one decode step streams: every linear weight and the LM head (the embedding lookup reads one row). */
export function decodeWeightBytes(lm: LoadedModel): number {
  const W = lm.model.weights;
  let total = weightBytes(W.lmHead);
  for (const l of W.layers) for (const w of [l.wq, l.wk, l.wv, l.wo, l.gate, l.up, l.down]) total += weightBytes(w);
  return total;
}

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
}

export const DECODE_WARMUP = 3;

/** Median ms of `steps` single-token forward passes after DECODE_WARMUP more (the cache is restored after each). */
export function timeDecode(lm: LoadedModel, cache: KvCache, steps = 12): number {
  const mark = cache.mark();
  const times: number[] = [];
  for (let i = 0; i < steps + DECODE_WARMUP; i++) {
    const t = performance.now();
    lm.model.forward([100 + i], cache);
    if (i >= DECODE_WARMUP) times.push(performance.now() - t);
    cache.truncate(mark);
  }
  return median(times);
}

export interface PairedDecode {
  /** Every timed step, ms. */
  steps: number[];
  /** Per round: the probe's GB/s and the median ms of the steps right after it. */
  rounds: { bandwidthGBs: number; ms: number }[];
  /** Steps run in all, warm-up included (to average per-op totals over). */
  stepsRun: number;
}

/**
 * Decode steps in rounds, each right after one streaming-probe pass, so every step time has a bandwidth
 * measured within about a tenth of a second of it: on a shared machine the bandwidth available moves on that
 * scale, and a bound from probes taken before and after a whole run can sit far from what the steps saw.
 */
export function pairedDecode(lm: LoadedModel, cache: KvCache, rounds: number, stepsPerRound: number, probe: () => number): PairedDecode {
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
    const bandwidthGBs = probe();
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

/**
 * Decode speed of two loaded models (say bf16 and int8 weights of one checkpoint) at the same context,
 * compared on a shared machine: `steps` tokens of each per round, alternating (see alternate()).
 */
export function alternatingDecodeRatio(a: LoadedModel, b: LoadedModel, context: number, rounds = 8, steps = 3): AlternatingRatio {
  const side = (lm: LoadedModel) => {
    const cache = lm.newCache();
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
