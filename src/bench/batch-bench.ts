import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KvCache, KvDtype } from '../cache/kv-cache.ts';
import { blockRows, formatBytes, kvRowBytes } from '../cache/kv-pool.ts';
import { loadModel, type LoadedModel } from '../engine/loaded-model.ts';
import type { ModelConfig } from '../model/config.ts';
import { writeRandomCheckpoint } from '../model/random-checkpoint.ts';
import { decodeWeightBytes } from '../model/weights.ts';
import { NativeBackend } from '../tensor/native.ts';
import { seededRandom } from '../tensor/seeded-random.ts';
import { fillCache } from './decode-timing.ts';
import { poolThroughput } from './pool-throughput.ts';
import { measureMachineLimits, median, probeBandwidth, quartiles, type MachineLimits } from './machine-limits.ts';

export interface BatchBenchOptions {
  /** Named random-weight shapes (random-checkpoint.ts), e.g. llama-3.2-1b, qwen2.5-0.5b. */
  models: string[];
  batchSizes: number[];
  /** Context rows of every sequence before compression. */
  context: number;
  /** Fractions of each head's rows kept (1 = full cache). */
  ratios: number[];
  kvDtype: KvDtype;
  /** Rounds of timed steps; each round times every batch size once, right after a bandwidth probe. */
  rounds: number;
  stepsPerRound: number;
  /** The "how many sequences fit" figure: a pool of this many bytes, contexts of fitContext rows, these ratios. */
  poolBytes: number;
  fitContext: number;
  fitRatios: number[];
  /** Rows each sequence's answer may add on top of its context in the fit figure. */
  fitAnswerTokens: number;
  /** The pool-throughput figure (pool-throughput.ts): these ratios on fitContext-row contexts in a poolBytes pool, for these models; none skips it. */
  poolThroughputRatios: number[];
  poolThroughputModels: string[];
  poolThroughputRounds: number;
  poolThroughputSteps: number;
  /** A folder that keeps the random checkpoints between runs (default: a temporary one, removed at the end). */
  checkpoints?: string;
  log: (line: string) => void;
}

const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

/**
 * Keeps about `ratio` of each head's rows, a different random subset per head (ragged, as KVzip's head-adaptive
 * eviction leaves them; decode time depends on how many rows each head holds, not on which).
 */
export function evictToRatio(cache: KvCache, ratio: number, seed = 9): void {
  if (ratio >= 1) return;
  const rand = seededRandom(seed);
  cache.forEachHead((s, l, h) => {
    const want = Math.max(1, Math.round(s.len * ratio * (0.5 + rand())));
    const keep = Math.min(s.len, want);
    const idx = Array.from({ length: s.len }, (_, i) => i);
    for (let i = idx.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [idx[i], idx[j]] = [idx[j]!, idx[i]!];
    }
    cache.keep(l, h, idx.slice(0, keep).sort((a, b) => a - b));
  });
}

/** Pool bytes one sequence takes: every head's kept context rows plus its answer's, in whole blocks. */
export function sequencePoolBytes(cfg: ModelConfig, contextRows: number, ratio: number, answerRows: number, dtype: KvDtype): number {
  const perHead = blockRows(Math.floor(contextRows * ratio) + answerRows) * kvRowBytes(cfg.headDim, dtype);
  return cfg.numLayers * cfg.numKvHeads * perHead;
}

interface Timing {
  /** ms of every timed step, per batch size. */
  steps: Map<number, number[]>;
  /** Per round: the probe's GB/s. */
  bandwidth: number[];
}

export interface BatchStepper {
  /** ms of one decode step of the first B sequences (token ids vary with i); each cache is then cut back to `base`. */
  step(B: number, i: number): number;
  release(): void;
}

/** Decode steps of up to maxB sequences at once, each on its own copy of `base`, restored after every step. */
export function batchStepper(lm: LoadedModel, base: KvCache, maxB: number): BatchStepper {
  const caches = Array.from({ length: maxB }, () => base.clone());
  const marks = caches.map((c) => c.mark());
  const vocab = lm.model.weights.embed.rows;
  return {
    step(B, i) {
      const t = performance.now();
      lm.model.forwardBatch(caches.slice(0, B).map((cache, s) => ({ ids: [(100 + 7 * s + i) % vocab], cache })));
      const ms = performance.now() - t;
      caches.slice(0, B).forEach((c, s) => c.truncate(marks[s]!));
      return ms;
    },
    release() {
      for (const c of caches) c.release();
    },
  };
}

/** Decode steps at every batch size, rounds interleaving the sizes. */
function timeBatches(lm: LoadedModel, base: KvCache, sizes: number[], rounds: number, stepsPerRound: number): Timing {
  const stepper = batchStepper(lm, base, Math.max(...sizes));
  try {
    for (const B of sizes) for (let i = 0; i < 2; i++) stepper.step(B, i);
    const out: Timing = { steps: new Map(sizes.map((B) => [B, []])), bandwidth: [] };
    for (let r = 0; r < rounds; r++) {
      out.bandwidth.push(probeBandwidth(1)[0]!);
      for (const B of sizes) for (let i = 0; i < stepsPerRound; i++) out.steps.get(B)!.push(stepper.step(B, i));
    }
    return out;
  } finally {
    stepper.release();
  }
}

/**
 * Aggregate decode throughput and per-sequence time per output token at several batch sizes, on full and
 * compressed caches of random-weight models, with the machine limits of the same run beside them; and how many
 * long-context sequences a fixed pool admits at each compression ratio.
 */
export async function runBatchBench(o: BatchBenchOptions): Promise<Record<string, unknown>> {
  o.log('measuring machine limits (1 GiB streaming read, 512x2048x2048 GEMM)');
  const limits: MachineLimits = measureMachineLimits();
  o.log(`${limits.cpu}, ${limits.threads} threads; bandwidth ${r1(limits.bandwidthGBs)} GB/s`);
  const scratch = o.checkpoints ?? mkdtempSync(join(tmpdir(), 'kvlab-batch-bench-'));
  const models: Record<string, unknown>[] = [];
  try {
    for (const name of o.models) {
      const dir = join(scratch, name);
      if (!existsSync(join(dir, 'model.safetensors'))) {
        o.log(`writing random-weight ${name} checkpoint to ${dir}`);
        writeRandomCheckpoint(name, dir);
      }
      const backend = new NativeBackend();
      const lm = loadModel(dir, { backend, mmap: false, kvDtype: o.kvDtype });
      const wBytes = decodeWeightBytes(lm.model.weights);
      const entries: Record<string, unknown>[] = [];
      for (const ratio of o.ratios) {
        const base = lm.newCache(o.kvDtype);
        fillCache(base, o.context);
        evictToRatio(base, ratio);
        o.log(`${name}: ${o.context}-row contexts at ${ratio} kept (${formatBytes(base.bytes())} each), B = ${o.batchSizes.join(', ')}`);
        const t = timeBatches(lm, base, o.batchSizes, o.rounds, o.stepsPerRound);
        const bw = median(t.bandwidth);
        const perB = o.batchSizes.map((B) => {
          const steps = t.steps.get(B)!;
          const ms = median(steps);
          const [q1, q3] = quartiles(steps);
          // Bound: one step streams the weights once and every sequence's cache rows once.
          const boundMs = ((wBytes + B * base.bytes()) / (bw * 1e9)) * 1000;
          return {
            batch: B,
            step_ms: r3(ms),
            step_ms_quartiles: [r3(q1), r3(q3)],
            tpot_ms: r3(ms),
            aggregate_tokens_per_second: r3((B * 1000) / ms),
            bound_ms: r3(boundMs),
            fraction_of_bound: r3(boundMs / ms),
          };
        });
        const one = perB.find((p) => p.batch === 1);
        entries.push({
          kept_ratio: ratio,
          kv_bytes_per_sequence: base.bytes(),
          bandwidth_gbs_median_of_rounds: r1(bw),
          // From the step times, not the rounded tokens/s (a 1B step on a loaded host gives ~1 token/s).
          batches: perB.map((p) => ({ ...p, aggregate_vs_b1: one ? r3((p.batch * one.step_ms) / p.step_ms) : null })),
        });
        base.release();
      }
      const fit = o.fitRatios.map((ratio) => {
        const per = sequencePoolBytes(lm.config, o.fitContext, ratio, o.fitAnswerTokens, o.kvDtype);
        return { kept_ratio: ratio, bytes_per_sequence: per, sequences_fitting: Math.floor(o.poolBytes / per) };
      });
      const full = fit.find((f) => f.kept_ratio === 1);
      const throughput =
        o.poolThroughputRatios.length > 0 && o.poolThroughputModels.includes(name)
          ? poolThroughput(lm, {
              poolBytes: o.poolBytes,
              context: o.fitContext,
              ratios: o.poolThroughputRatios,
              answerRows: o.fitAnswerTokens,
              kvDtype: o.kvDtype,
              rounds: o.poolThroughputRounds,
              steps: o.poolThroughputSteps,
              evict: (c, r) => evictToRatio(c, r),
              log: (line) => o.log(`${name}: ${line}`),
            })
          : null;
      models.push({
        model: name,
        config: { layers: lm.config.numLayers, kv_heads: lm.config.numKvHeads, head_dim: lm.config.headDim, hidden: lm.config.hiddenSize },
        weights_bytes_per_step: wBytes,
        kv_dtype: o.kvDtype,
        decode: entries,
        pool_fit: {
          pool_bytes: o.poolBytes,
          context_rows: o.fitContext,
          answer_rows: o.fitAnswerTokens,
          note: "from the pool's block accounting (whole 16-row blocks of keys, values and positions per head)",
          ratios: fit.map((f) => ({ ...f, vs_full: full ? r3(f.sequences_fitting / Math.max(1, full.sequences_fitting)) : null })),
        },
        ...(throughput ? { pool_throughput: throughput } : {}),
      });
    }
  } finally {
    if (!o.checkpoints) rmSync(scratch, { recursive: true, force: true });
  }
  return {
    machine: { ...limits, bandwidthGBs: r1(limits.bandwidthGBs), gemmBf16ActivationsGflops: r1(limits.gemmBf16ActivationsGflops), gemmF32ActivationsGflops: r1(limits.gemmF32ActivationsGflops), fmaPeakGflops: r1(limits.fmaPeakGflops), fmaPeakOneThreadGflops: r1(limits.fmaPeakOneThreadGflops) },
    options: { batch_sizes: o.batchSizes, context: o.context, ratios: o.ratios, rounds: o.rounds, steps_per_round: o.stepsPerRound, kv_dtype: o.kvDtype },
    note: 'random weights; compressed caches keep a random ragged subset of each head at the ratio (decode time depends on rows held); step_ms is the median over rounds, each round right after a bandwidth probe',
    models,
  };
}
