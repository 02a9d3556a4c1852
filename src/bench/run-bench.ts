import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KvCache, KvDtype } from '../cache/kv-cache.ts';
import { ContextSession } from '../engine/context-session.ts';
import { DEFAULT_MODEL_DIR, loadModel, type LoadedModel } from '../engine/loaded-model.ts';
import { prefill } from '../model/prefill.ts';
import { seededRandom } from '../tensor/seeded-random.ts';
import { getPress } from '../press/registry.ts';
import { NativeBackend } from '../tensor/native.ts';
import { measureMachineLimits, median, probeBandwidth, quartiles, type MachineLimits } from './machine-limits.ts';
import { writeRandomCheckpoint } from '../model/random-checkpoint.ts';
import { TimedBackend } from './timed-backend.ts';
import { measureAsyncDecode, type AsyncDecodeResult } from './async-decode.ts';
import { alternatingDecodeRatio, fillCache, pairedDecode, timeDecode, type AlternatingRatio } from './decode-timing.ts';
import { decodeWeightBytes } from '../model/weights.ts';
import { benchKvQuant } from './kv-quant-bench.ts';

export interface BenchOptions {
  models: string[];
  weights: ('bf16' | 'int8')[];
  /** Cache dtypes decode is measured on. */
  kvDtypes: KvDtype[];
  prefillTokens: number;
  decodeContexts: number[];
  kvzip: { model: string; context: number; ratio: number } | null;
  /** Decode on f32, bf16, int4, int2 and int4 + `ratio` kept caches of one model at one context (kv-quant-bench.ts). */
  kvQuant?: { model: string; context: number; ratio: number; rounds?: number } | null;
  log: (line: string) => void;
}

/**
 * Benchmarks read the weights into memory rather than mapping the checkpoint. On the VM this was measured on,
 * pages of a file written minutes earlier, read through a mapping, slowed decode of llama-3.2-1b from 40 to
 * 300-1300 ms per token for several minutes (the same bytes in anonymous memory: 40-45 ms), and the random
 * checkpoints are written just before they are timed. The kernels are the same either way.
 */
export const BENCH_MMAP = false;

const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

/** The embedded model, or a random-weight checkpoint of a real shape written into scratch once. */
export function modelDir(name: string, scratch: string, log: (s: string) => void): string {
  if (name === 'tiny') return DEFAULT_MODEL_DIR;
  const dir = join(scratch, name);
  if (!existsSync(join(dir, 'model.safetensors'))) {
    log(`writing random-weight ${name} checkpoint to ${dir}`);
    writeRandomCheckpoint(name, dir);
  }
  return dir;
}

function asyncStepReport(a: AsyncDecodeResult): Record<string, number> {
  return {
    sync_ms_per_token: r3(a.syncMsPerToken),
    async_ms_per_token: r3(a.asyncMsPerToken),
    sync_mean_ms_per_token: r3(a.syncMeanMsPerToken),
    async_mean_ms_per_token: r3(a.asyncMeanMsPerToken),
    event_loop_max_delay_ms_sync: r1(a.syncEventLoopMaxDelayMs),
    event_loop_max_delay_ms_async: r1(a.asyncEventLoopMaxDelayMs),
  };
}

/**
 * Rounds of decode steps per figure. Twelve, not six: on a shared VM a single round's fraction of the bound can
 * be far off (quartiles 0.55 and 1.26 over 20 rounds of the 1B at 8K while the host was saturated), and the
 * median of six moved between runs (0.70-0.93 for one 1B figure over four runs).
 */
const DECODE_ROUNDS = 12;

/** Decode steps at one context on one cache dtype, each round right after a probe pass, against the bound. */
async function decodeEntry(lm: LoadedModel, timed: TimedBackend, wBytes: number, ctx: number, kvDtype: KvDtype, withAsync: boolean): Promise<Record<string, unknown>> {
  const cache = lm.newCache(kvDtype);
  fillCache(cache, ctx);
  // The machine is shared: each round of steps runs right after a probe pass, and the fraction of the bound is
  // the median over rounds of the round's tokens/s over the round's bound; its quartiles show the spread.
  timed.reset();
  const paired = pairedDecode(lm, cache, DECODE_ROUNDS, 3, () => probeBandwidth(1)[0]!);
  const ms = median(paired.steps);
  const perToken = (op: string) => (timed.ms[op] ?? 0) / paired.stepsRun;
  const localBandwidth = median(paired.rounds.map((r) => r.bandwidthGBs));
  const kvBytes = cache.bytes();
  const bytes = wBytes + kvBytes;
  const roundFractions = paired.rounds.map((r) => bytes / (r.bandwidthGBs * 1e9) / (r.ms / 1000));
  return {
    context: ctx,
    kv_dtype: kvDtype,
    tokens_per_s: r1(1000 / ms),
    ms_per_token: r3(ms),
    bytes_per_token: bytes,
    bandwidth_gbs_around: r1(localBandwidth),
    bandwidth_gbs_rounds: paired.rounds.map((r) => r1(r.bandwidthGBs)),
    kv_bytes: kvBytes,
    bound_tokens_per_s: r1((localBandwidth * 1e9) / bytes),
    fraction_of_bound: r3(median(roundFractions)),
    fraction_of_bound_quartiles: quartiles(roundFractions).map(r3),
    ms_per_token_rounds: paired.rounds.map((r) => r3(r.ms)),
    fraction_of_bound_rounds: roundFractions.map(r3),
    // Mean over all timed steps (the figures above are medians): where a token's time goes, and how fast the
    // weight matrices alone streamed against the probe.
    time_by_op_ms_per_token: Object.fromEntries(Object.keys(timed.ms).map((op) => [op, Number(perToken(op).toPrecision(4))])),
    matmul_gbs: r1(wBytes / perToken('matmul') / 1e6),
    matmul_fraction_of_bandwidth: r3(wBytes / perToken('matmul') / 1e6 / localBandwidth),
    // forward() against forwardAsync() (once per model): the async step's cost and the event loop.
    ...(withAsync ? { async_step: asyncStepReport(await measureAsyncDecode(lm.model, cache, 8)) } : {}),
  };
}

export async function runBench(opts: BenchOptions): Promise<Record<string, unknown>> {
  const log = opts.log;
  log('measuring machine limits (1 GiB streaming read, 512x2048x2048 GEMM)');
  const limits: MachineLimits = measureMachineLimits();
  log(`bandwidth ${r1(limits.bandwidthGBs)} GB/s; GEMM bf16-activations ${r1(limits.gemmBf16ActivationsGflops)} GFLOP/s, fp32 ${r1(limits.gemmF32ActivationsGflops)} GFLOP/s; AVX2 FMA peak ${r1(limits.fmaPeakGflops)} GFLOP/s (${r1(limits.fmaPeakOneThreadGflops)} on one thread)`);
  const scratch = mkdtempSync(join(tmpdir(), 'kvlab-bench-'));
  const models: Record<string, unknown>[] = [];
  let kvzip: Record<string, unknown> | null = null;
  let kvQuant: Record<string, unknown> | null = null;
  const alternating = new Map<string, (AlternatingRatio & { kvDtype: KvDtype })[]>();
  const kvAlternating = new Map<string, AlternatingRatio[]>();
  try {
    for (const name of opts.models) {
      const dir = modelDir(name, scratch, log);
      const loaded = new Map<string, LoadedModel>();
      for (const weights of opts.weights) {
        const timed = new TimedBackend(new NativeBackend());
        const lm = loadModel(dir, { backend: timed, weights: weights === 'int8' ? 'int8' : 'checkpoint', mmap: BENCH_MMAP });
        loaded.set(weights, lm);
        const wBytes = decodeWeightBytes(lm.model.weights);
        const rand = seededRandom(9);
        const ids = Array.from({ length: opts.prefillTokens }, () => Math.floor(rand() * Math.min(2000, lm.config.vocabSize)));
        prefill(lm.model, lm.newCache(), ids.slice(0, 32));
        const runs: { ms: number; matmulMs: number; flops: number; ops: Record<string, number> }[] = [];
        for (let r = 0; r < 3; r++) {
          timed.reset();
          const t = performance.now();
          prefill(lm.model, lm.newCache(), ids);
          runs.push({ ms: performance.now() - t, matmulMs: timed.ms.matmul ?? 0, flops: timed.matmulFlops, ops: { ...timed.ms } });
        }
        runs.sort((a, b) => a.ms - b.ms);
        const mid = runs[1]!;
        const matmulGflops = mid.flops / (mid.matmulMs / 1000) / 1e9;
        const peak = (timed.inner as NativeBackend).bf16Activations ? limits.gemmBf16ActivationsGflops : limits.gemmF32ActivationsGflops;
        // On AVX2-only CPUs the hardware ceiling is the FMA peak, measured separately from any GEMM kernel.
        const avx2Prefill = /^avx2/.test((timed.inner as NativeBackend).matmulPath(opts.prefillTokens, lm.model.weights.layers[0]!.gate));
        const decode: Record<string, unknown>[] = [];
        for (const ctx of opts.decodeContexts)
          for (const kvDtype of opts.kvDtypes) {
            if (ctx + 16 > lm.config.maxPositionEmbeddings) {
              decode.push({ context: ctx, kv_dtype: kvDtype, skipped: `model allows ${lm.config.maxPositionEmbeddings} positions` });
              continue;
            }
            const withAsync = ctx === opts.decodeContexts[0] && kvDtype === opts.kvDtypes[0];
            decode.push(await decodeEntry(lm, timed, wBytes, ctx, kvDtype, withAsync));
          }
        const entry = {
          model: name,
          weights,
          layers: lm.config.numLayers,
          decode_weight_bytes: wBytes,
          prefill: {
            tokens: opts.prefillTokens,
            tokens_per_s: r1(opts.prefillTokens / (mid.ms / 1000)),
            matmul_gflops: r1(matmulGflops),
            matmul_share_of_time: r3(mid.matmulMs / mid.ms),
            path: (timed.inner as NativeBackend).matmulPath(opts.prefillTokens, lm.model.weights.layers[0]!.gate),
            gemm_peak_gflops: r1(peak),
            fraction_of_peak: r3(matmulGflops / peak),
            ...(avx2Prefill ? { fma_peak_gflops: r1(limits.fmaPeakGflops), fraction_of_fma_peak: r3(matmulGflops / limits.fmaPeakGflops) } : {}),
            time_by_op_ms: Object.fromEntries(Object.entries(mid.ops).map(([k, v]) => [k, r1(v)])),
          },
          decode,
        };
        log(`${name} ${weights}: prefill ${entry.prefill.tokens_per_s} tok/s (matmuls ${entry.prefill.matmul_gflops} GFLOP/s); decode ${decode.map((d) => `${d.context} (${d.kv_dtype} cache): ${d.tokens_per_s ?? '-'} tok/s (${d.fraction_of_bound ?? '-'} of bound, quartiles ${(d.fraction_of_bound_quartiles as number[] | undefined)?.join('-') ?? '-'})`).join(', ')}`);
        models.push(entry);
      }
      const bf16 = loaded.get('bf16');
      const int8 = loaded.get('int8');
      if (bf16 && int8) {
        const runs: (AlternatingRatio & { kvDtype: KvDtype })[] = [];
        for (const ctx of opts.decodeContexts)
          for (const kvDtype of opts.kvDtypes) {
            if (ctx + 16 > bf16.config.maxPositionEmbeddings) continue;
            const a = alternatingDecodeRatio({ lm: bf16, kvDtype }, { lm: int8, kvDtype }, ctx);
            log(`${name}: decode at ${ctx} (${kvDtype} cache), bf16 ${r1(a.ms_per_token.a)} vs int8 ${r1(a.ms_per_token.b)} ms/token: int8 ${r3(a.ratio)}x`);
            runs.push({ ...a, kvDtype });
          }
        alternating.set(name, runs);
      }
      const first = loaded.get(opts.weights[0]!);
      if (first && opts.kvDtypes.includes('f32') && opts.kvDtypes.includes('bf16')) {
        const runs: AlternatingRatio[] = [];
        for (const ctx of opts.decodeContexts) {
          if (ctx + 16 > first.config.maxPositionEmbeddings) continue;
          const a = alternatingDecodeRatio({ lm: first, kvDtype: 'f32' }, { lm: first, kvDtype: 'bf16' }, ctx);
          log(`${name} ${opts.weights[0]}: decode at ${ctx}, f32 cache ${r1(a.ms_per_token.a)} vs bf16 cache ${r1(a.ms_per_token.b)} ms/token: bf16 ${r3(a.ratio)}x`);
          runs.push(a);
        }
        kvAlternating.set(name, runs);
      }
    }
    if (opts.kvzip) kvzip = await benchKvzip(opts.kvzip, scratch, log);
    if (opts.kvQuant) {
      const timed = new TimedBackend(new NativeBackend());
      const lm = loadModel(modelDir(opts.kvQuant.model, scratch, log), { backend: timed, mmap: BENCH_MMAP });
      kvQuant = { model: opts.kvQuant.model, ...benchKvQuant(lm, timed, decodeWeightBytes(lm.model.weights), opts.kvQuant.context, opts.kvQuant.ratio, log, opts.kvQuant.rounds) };
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const int8vsBf16 = opts.models.map((m) => {
    const b = models.find((x) => x.model === m && x.weights === 'bf16') as { decode: { context: number; kv_dtype: KvDtype; tokens_per_s?: number }[] } | undefined;
    const q = models.find((x) => x.model === m && x.weights === 'int8') as typeof b;
    if (!b || !q) return null;
    return {
      model: m,
      // From the separate runs above, minutes apart on a possibly shared machine.
      decode_speedup: b.decode.map((d, i) => ({ context: d.context, kv_dtype: d.kv_dtype, ratio: d.tokens_per_s && q.decode[i]?.tokens_per_s ? r3(q.decode[i]!.tokens_per_s! / d.tokens_per_s) : null })),
      // The two models loaded side by side, timed in alternating rounds: the controlled ratio.
      decode_speedup_alternating: (alternating.get(m) ?? []).map((a) => ({
        context: a.context,
        kv_dtype: a.kvDtype,
        ratio: r3(a.ratio),
        bf16_ms_per_token: r3(a.ms_per_token.a),
        int8_ms_per_token: r3(a.ms_per_token.b),
        rounds: a.rounds,
      })),
    };
  });
  return {
    date: new Date().toISOString(),
    weights_mapped: BENCH_MMAP,
    machine: { ...limits, bandwidthGBs: r1(limits.bandwidthGBs), gemmBf16ActivationsGflops: r1(limits.gemmBf16ActivationsGflops), gemmF32ActivationsGflops: r1(limits.gemmF32ActivationsGflops), fmaPeakGflops: r1(limits.fmaPeakGflops), fmaPeakOneThreadGflops: r1(limits.fmaPeakOneThreadGflops) },
    models,
    int8_vs_bf16: int8vsBf16.filter(Boolean),
    // One model (the first weights listed) decoding from an fp32 and a bf16 cache, in alternating rounds.
    kv_bf16_vs_f32: opts.models
      .filter((m) => kvAlternating.has(m))
      .map((m) => ({
        model: m,
        weights: opts.weights[0],
        decode_speedup_alternating: kvAlternating.get(m)!.map((a) => ({ context: a.context, ratio: r3(a.ratio), f32_ms_per_token: r3(a.ms_per_token.a), bf16_ms_per_token: r3(a.ms_per_token.b), rounds: a.rounds })),
      })),
    kvzip,
    kv_quant: kvQuant,
  };
}

/** KVzip at a long context: scoring time against prefill time, and decode per token on the compressed cache vs the full one. */
async function benchKvzip(k: { model: string; context: number; ratio: number }, scratch: string, log: (s: string) => void): Promise<Record<string, unknown>> {
  const dir = modelDir(k.model, scratch, log);
  const timed = new TimedBackend(new NativeBackend());
  const lm = loadModel(dir, { backend: timed, mmap: BENCH_MMAP });
  const rand = seededRandom(11);
  const ids = Array.from({ length: k.context }, () => Math.floor(rand() * Math.min(2000, lm.config.vocabSize)));
  const layout = {
    ids,
    prefix: { start: 0, end: 0 },
    context: { start: 0, end: ids.length },
    suffix: '\n',
    queryLead: '\n\n',
    queryIds: () => [10],
  };
  const session = new ContextSession(lm, layout);
  const press = getPress('kvzip');
  log(`kvzip: prefilling and scoring ${k.context} tokens of ${k.model}`);
  const scored = session.score(press);
  const { prefillMs, scoreMs } = scored.timings;
  // Decode time per token, and the attention share of it: what the compressed cache actually changes.
  const decodeSplit = (cache: KvCache) => {
    timed.reset();
    const ms = timeDecode(lm, cache);
    return { ms, attentionMs: (timed.ms.attention ?? 0) / 15 };
  };
  const fullRun = decodeSplit(session.cache);
  const { session: kept, report } = scored.compressed(k.ratio);
  const keptRun = decodeSplit(kept.cache);
  // KVzip's keep sets on an int4 cache (the kept rows quantized as an int4 cache holds them).
  const keptInt4 = kept.cache.clone('int4');
  const keptInt4Run = decodeSplit(keptInt4);
  const fullMs = fullRun.ms;
  const keptMs = keptRun.ms;
  log(`kvzip: prefill ${r1(prefillMs)} ms, scoring ${r1(scoreMs)} ms (${r3(scoreMs / prefillMs)}x prefill); decode ${r3(fullMs)} -> ${r3(keptMs)} ms/token`);
  return {
    model: k.model,
    context: k.context,
    ratio: k.ratio,
    prefill_ms: r1(prefillMs),
    score_ms: r1(scoreMs),
    score_over_prefill: r3(scoreMs / prefillMs),
    decode_ms_per_token_full: r3(fullMs),
    decode_ms_per_token_kvzip: r3(keptMs),
    decode_speedup: r3(fullMs / keptMs),
    attention_ms_per_token_full: r3(fullRun.attentionMs),
    attention_ms_per_token_kvzip: r3(keptRun.attentionMs),
    attention_speedup: r3(fullRun.attentionMs / keptRun.attentionMs),
    kv_bytes_full: report.bytesFull,
    kv_bytes_kept: report.bytesKept,
    decode_ms_per_token_kvzip_int4: r3(keptInt4Run.ms),
    attention_ms_per_token_kvzip_int4: r3(keptInt4Run.attentionMs),
    kv_bytes_kept_int4: keptInt4.bytes(),
  };
}
