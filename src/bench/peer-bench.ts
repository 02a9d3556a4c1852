import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DEFAULT_MODEL_DIR, loadModel } from '../engine/loaded-model.ts';
import { prefill } from '../model/prefill.ts';
import { seededRandom } from '../tensor/seeded-random.ts';
import { writeRandomCheckpoint } from '../model/random-checkpoint.ts';
import { NativeBackend } from '../tensor/native.ts';
import { fillCache, timeDecode } from './decode-timing.ts';
import { decodeWeightBytes } from '../model/weights.ts';
import { writeGguf } from './gguf-writer.ts';
import { median, probeBandwidth } from './machine-limits.ts';
import { BENCH_MMAP } from './run-bench.ts';
import { peerBatchDecode, type PeerBatchLlama } from './peer-batch.ts';

/**
 * kvlab against llama.cpp (through node-llama-cpp) on the same random weights: kvlab reads the bf16
 * safetensors, llama.cpp the same values written as F16 GGUF. Both run on the CPU with the same thread
 * count; their timings are interleaved round by round so drift on a shared machine hits both alike.
 */

export interface PeerBenchOptions {
  models: string[];
  /** Where node-llama-cpp is installed (a folder holding node_modules/node-llama-cpp). */
  peerDir: string;
  threads: number;
  prefillTokens: number;
  decodeContext: number;
  decodeSteps: number;
  rounds: number;
  /** Batched decode against llama.cpp's parallel sequences (peer-batch.ts) at these batch sizes; empty skips it. */
  batchSizes: number[];
  batchContext: number;
  batchSteps: number;
  /** Only the batched comparison (no prefill or single-sequence decode). */
  batchOnly: boolean;
  log: (line: string) => void;
}

interface LlamaSide {
  prefillMs(ids: number[]): Promise<number>;
  /** Prefills a decode context once; decodeMs then generates from its end, each call continuing. */
  startDecode(context: number[]): Promise<void>;
  decodeMs(steps: number): Promise<number[]>;
  /** Greedy ids after a prompt (at most `max`). */
  greedy(prompt: number[], max: number): Promise<number[]>;
  describe: Record<string, unknown>;
  dispose(): Promise<void>;
}

interface NodeLlamaCpp {
  getLlama(o: Record<string, unknown>): Promise<{
    systemInfo: string;
    llamaCppRelease: { repo: string; release: string };
    loadModel(o: { modelPath: string; useMmap?: boolean }): Promise<{
      createContext(o: Record<string, unknown>): Promise<{
        getSequence(): LlamaSequence;
        dispose(): Promise<void>;
      }>;
      dispose(): Promise<void>;
    }>;
    dispose(): Promise<void>;
  }>;
}

interface LlamaSequence {
  clearHistory(): Promise<void>;
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  evaluate(tokens: number[], o: Record<string, unknown>): AsyncGenerator<number>;
}

const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

async function importPeer(peerDir: string): Promise<NodeLlamaCpp & { version: string }> {
  const pkgDir = join(peerDir, 'node_modules', 'node-llama-cpp');
  let mod: NodeLlamaCpp;
  try {
    mod = (await import(pathToFileURL(resolve(pkgDir, 'dist', 'index.js')).href)) as NodeLlamaCpp;
  } catch (e) {
    throw new Error(`node-llama-cpp is not installed in ${peerDir} (npm run bench:peer installs it): ${(e as Error).message}`);
  }
  const version = (JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { version: string }).version;
  return { getLlama: mod.getLlama, version };
}

async function llamaSide(peer: NodeLlamaCpp & { version: string }, gguf: string, threads: number, contextSize: number, batchSize: number): Promise<LlamaSide> {
  const llama = await peer.getLlama({ gpu: false, build: 'never', maxThreads: threads, logLevel: 'error' });
  const model = await llama.loadModel({ modelPath: gguf, useMmap: BENCH_MMAP });
  const ctx = await model.createContext({ contextSize, batchSize, threads });
  const seq = ctx.getSequence();
  let next = 0;
  return {
    describe: { package: `node-llama-cpp@${peer.version}`, llama_cpp: llama.llamaCppRelease, cpu: llama.systemInfo.trim(), weights: 'F16', threads, mmap: BENCH_MMAP },
    async prefillMs(ids) {
      await seq.clearHistory();
      const t = performance.now();
      await seq.evaluateWithoutGeneratingNewTokens(ids);
      return performance.now() - t;
    },
    async startDecode(context) {
      await seq.clearHistory();
      await seq.evaluateWithoutGeneratingNewTokens(context.slice(0, -1));
      next = context.at(-1)!;
    },
    async decodeMs(steps) {
      const times: number[] = [];
      let t = performance.now();
      for await (const token of seq.evaluate([next], { temperature: 0 })) {
        const now = performance.now();
        times.push(now - t);
        t = now;
        next = token;
        if (times.length > steps) break;
      }
      // The first token also pays for evaluating `next` after a pause: only the steady steps count.
      return times.slice(1);
    },
    async greedy(prompt, max) {
      await seq.clearHistory();
      const out: number[] = [];
      for await (const token of seq.evaluate(prompt, { temperature: 0 })) {
        out.push(token);
        if (out.length >= max) break;
      }
      return out;
    },
    async dispose() {
      await ctx.dispose();
      await model.dispose();
      await llama.dispose();
    },
  };
}

interface GoldenPrompt {
  name: string;
  input_ids: number[];
  greedy_ids: number[];
}

/**
 * The peer computes the same function from the written GGUF: llama.cpp must reproduce the embedded model's
 * golden greedy continuations (from an independent reference implementation) token for token.
 */
async function checkGolden(peer: NodeLlamaCpp & { version: string }, scratch: string, threads: number): Promise<Record<string, unknown>> {
  const gguf = join(scratch, 'tiny-chat.gguf');
  writeGguf(DEFAULT_MODEL_DIR, gguf, { name: 'kvlab-tiny-chat' });
  const golden = JSON.parse(readFileSync(join(DEFAULT_MODEL_DIR, 'golden.json'), 'utf8')) as { prompts: GoldenPrompt[] };
  const longest = Math.max(...golden.prompts.map((p) => p.input_ids.length + p.greedy_ids.length));
  const llama = await llamaSide(peer, gguf, threads, longest + 8, 512);
  const results: Record<string, unknown>[] = [];
  try {
    for (const p of golden.prompts) {
      const got = await llama.greedy(p.input_ids, p.greedy_ids.length);
      results.push({ prompt: p.name, match: got.every((t, i) => t === p.greedy_ids[i]) && got.length === p.greedy_ids.length });
    }
  } finally {
    await llama.dispose();
  }
  const matched = results.filter((r) => r.match).length;
  return { greedy_continuations_matched: `${matched}/${results.length}`, prompts: results };
}

export async function runPeerBench(opts: PeerBenchOptions): Promise<Record<string, unknown>> {
  const log = opts.log;
  const peer = await importPeer(opts.peerDir);
  const scratch = mkdtempSync(join(tmpdir(), 'kvlab-peer-'));
  const results: Record<string, unknown>[] = [];
  let peerInfo: Record<string, unknown> = {};
  let golden: Record<string, unknown> = {};
  try {
    log('checking that llama.cpp reproduces the golden greedy continuations from kvlab-tiny-chat written as GGUF');
    golden = await checkGolden(peer, scratch, opts.threads);
    log(`golden: ${golden.greedy_continuations_matched as string} continuations identical`);
    for (const name of opts.models) {
      const dir = join(scratch, name);
      log(`${name}: writing random bf16 weights`);
      writeRandomCheckpoint(name, dir);
      const gguf = join(scratch, `${name}-f16.gguf`);
      log(`${name}: writing the same weights as F16 GGUF`);
      writeGguf(dir, gguf, { name: `${name} (random weights)` });

      const lm = loadModel(dir, { backend: new NativeBackend(), mmap: BENCH_MMAP });
      const rand = seededRandom(3);
      const ids = Array.from({ length: Math.max(opts.prefillTokens, opts.decodeContext) }, () => Math.floor(rand() * Math.min(2000, lm.config.vocabSize)));
      let batch: Record<string, unknown> | null = null;
      if (opts.batchSizes.length > 0) {
        const contextIds = Array.from({ length: opts.batchContext }, (_, i) => ids[i % ids.length]!);
        const instance = await peer.getLlama({ gpu: false, build: 'never', maxThreads: opts.threads, logLevel: 'error' });
        peerInfo = { package: `node-llama-cpp@${peer.version}`, llama_cpp: instance.llamaCppRelease, cpu: instance.systemInfo.trim(), weights: 'F16', threads: opts.threads, mmap: BENCH_MMAP };
        try {
          batch = await peerBatchDecode(lm, instance as unknown as PeerBatchLlama, gguf, BENCH_MMAP, contextIds, {
            batchSizes: opts.batchSizes,
            context: opts.batchContext,
            steps: opts.batchSteps,
            rounds: opts.rounds,
            threads: opts.threads,
            log: (line) => log(`${name}: ${line}`),
          });
        } finally {
          await instance.dispose();
        }
      }
      if (opts.batchOnly) {
        results.push({ model: name, batched_decode: batch });
        rmSync(gguf, { force: true });
        continue;
      }
      const llama = await llamaSide(peer, gguf, opts.threads, opts.decodeContext + opts.decodeSteps + 16, opts.prefillTokens);
      peerInfo = llama.describe;
      // llama.cpp keeps its cache in F16; kvlab decodes from its fp32 cache and, as a second figure, a bf16 one.
      const kvCache = lm.newCache('f32');
      fillCache(kvCache, opts.decodeContext);
      const kvCacheBf16 = lm.newCache('bf16');
      fillCache(kvCacheBf16, opts.decodeContext);
      const prefillIds = ids.slice(0, opts.prefillTokens);
      prefill(lm.model, lm.newCache(), prefillIds.slice(0, 32));
      await llama.prefillMs(prefillIds.slice(0, 32));

      const k = { prefill: [] as number[], decode: [] as number[] };
      const kBf16: number[] = [];
      const l = { prefill: [] as number[], decode: [] as number[] };
      const bandwidth: number[] = [];
      for (let round = 0; round < opts.rounds; round++) {
        log(`${name}: prefill round ${round + 1}/${opts.rounds} (${opts.prefillTokens} tokens)`);
        const t = performance.now();
        prefill(lm.model, lm.newCache(), prefillIds);
        k.prefill.push(performance.now() - t);
        l.prefill.push(await llama.prefillMs(prefillIds));
      }
      log(`${name}: llama.cpp prefills the ${opts.decodeContext}-token decode context`);
      await llama.startDecode(ids.slice(0, opts.decodeContext));
      for (let round = 0; round < opts.rounds; round++) {
        log(`${name}: decode round ${round + 1}/${opts.rounds} (${opts.decodeSteps} steps at ${opts.decodeContext})`);
        bandwidth.push(...probeBandwidth(2));
        k.decode.push(timeDecode(lm, kvCache, opts.decodeSteps));
        l.decode.push(median(await llama.decodeMs(opts.decodeSteps)));
        kBf16.push(timeDecode(lm, kvCacheBf16, opts.decodeSteps));
      }
      await llama.dispose();
      const bw = median(bandwidth);
      const bytes = decodeWeightBytes(lm.model.weights) + kvCache.bytes();
      const bytesBf16 = decodeWeightBytes(lm.model.weights) + kvCacheBf16.bytes();
      const side = (s: { prefill: number[]; decode: number[] }) => ({
        prefill_tokens_per_s: r1(opts.prefillTokens / (median(s.prefill) / 1000)),
        decode_tokens_per_s: r1(1000 / median(s.decode)),
        decode_fraction_of_bound: r3(1000 / median(s.decode) / ((bw * 1e9) / bytes)),
        prefill_ms_runs: s.prefill.map(Math.round),
        decode_ms_per_token_runs: s.decode.map(r1),
      });
      const entry = {
        model: name,
        decode_context: opts.decodeContext,
        bandwidth_gbs: r1(bw),
        kvlab_decode_bytes_per_token: bytes,
        kvlab: side(k),
        llama_cpp: side(l),
        kvlab_over_llama_cpp: {
          prefill: r3(median(l.prefill) / median(k.prefill)),
          decode: r3(median(l.decode) / median(k.decode)),
        },
        kvlab_bf16_cache: {
          decode_bytes_per_token: bytesBf16,
          decode_tokens_per_s: r1(1000 / median(kBf16)),
          decode_fraction_of_bound: r3(1000 / median(kBf16) / ((bw * 1e9) / bytesBf16)),
          decode_ms_per_token_runs: kBf16.map(r1),
          decode_over_llama_cpp: r3(median(l.decode) / median(kBf16)),
        },
        ...(batch ? { batched_decode: batch } : {}),
      };
      log(`${name}: prefill ${entry.kvlab.prefill_tokens_per_s} vs ${entry.llama_cpp.prefill_tokens_per_s} tok/s (${entry.kvlab_over_llama_cpp.prefill}x); decode ${entry.kvlab.decode_tokens_per_s} vs ${entry.llama_cpp.decode_tokens_per_s} tok/s (${entry.kvlab_over_llama_cpp.decode}x); on a bf16 cache ${entry.kvlab_bf16_cache.decode_tokens_per_s} tok/s (${entry.kvlab_bf16_cache.decode_over_llama_cpp}x)`);
      results.push(entry);
      rmSync(gguf, { force: true });
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return { date: new Date().toISOString(), kvlab_backend: new NativeBackend().describe(), kvlab_weights_mapped: BENCH_MMAP, peer: peerInfo, same_function_check: golden, models: results };
}
