import type { LoadedModel } from '../engine/loaded-model.ts';
import { batchStepper } from './batch-bench.ts';
import { fillCache } from './decode-timing.ts';
import { median, probeBandwidth } from './machine-limits.ts';

/**
 * Batched decode of kvlab against llama.cpp's parallel sequences on one context (node-llama-cpp batches the
 * tokens of every sequence that asks in the same event-loop cycle into one llama_decode): B sequences, each
 * holding the same `context`-token context, each step one token per sequence; aggregate tokens/s at every B,
 * the two sides timed in alternating rounds.
 */

export interface PeerBatchOptions {
  batchSizes: number[];
  context: number;
  /** Timed steps per round and batch size (after one untimed step). */
  steps: number;
  rounds: number;
  threads: number;
  log: (line: string) => void;
}

/** The part of node-llama-cpp's API this file uses. */
export interface PeerBatchLlama {
  loadModel(o: { modelPath: string; useMmap?: boolean }): Promise<{
    createContext(o: Record<string, unknown>): Promise<{ getSequence(): PeerBatchSequence; dispose(): Promise<void> }>;
    dispose(): Promise<void>;
  }>;
}

interface PeerBatchSequence {
  readonly nextTokenIndex: number;
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  evaluate(tokens: number[], o: Record<string, unknown>): AsyncGenerator<number, void, void>;
  eraseContextTokenRanges(ranges: { start: number; end: number }[]): Promise<void>;
  /**
   * node-llama-cpp's internal copy of another sequence's cache (llama_memory_seq_cp), as its own choice
   * evaluation uses it; true when the copy holds the first `upTo` tokens.
   */
  _copyStateFromOtherSequence?(other: PeerBatchSequence, upTo: number): Promise<boolean>;
}

const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

interface LlamaBatch {
  /** ms of each of `steps` steps of the first B sequences (one more step runs first, untimed); the sequences are then cut back to the context. */
  stepsMs(B: number, steps: number): Promise<number[]>;
  dispose(): Promise<void>;
}

async function llamaBatch(llama: PeerBatchLlama, gguf: string, mmap: boolean, threads: number, maxB: number, context: number[], maxSteps: number, log: (line: string) => void): Promise<LlamaBatch> {
  const model = await llama.loadModel({ modelPath: gguf, useMmap: mmap });
  const ctx = await model.createContext({ contextSize: context.length + maxSteps + 16, sequences: maxB, batchSize: 512, threads });
  const seqs = Array.from({ length: maxB }, () => ctx.getSequence());
  const held = context.length - 1;
  log(`llama.cpp prefills one sequence of ${held} tokens and copies its cache to the other ${maxB - 1}`);
  await seqs[0]!.evaluateWithoutGeneratingNewTokens(context.slice(0, held));
  let prefilled = 0;
  for (const s of seqs.slice(1)) {
    if (await s._copyStateFromOtherSequence?.(seqs[0]!, held)) continue;
    await s.evaluateWithoutGeneratingNewTokens(context.slice(0, held));
    prefilled++;
  }
  if (prefilled > 0) log(`llama.cpp: ${prefilled} sequences could not be copied and were prefilled`);
  const short = seqs.find((s) => s.nextTokenIndex !== held);
  if (short) throw new Error(`llama.cpp sequence holds ${short.nextTokenIndex} tokens after its prefill, want ${held}`);
  return {
    async stepsMs(B, steps) {
      const active = seqs.slice(0, B);
      const gens = active.map((s) => s.evaluate([context[held]!], { temperature: 0 }));
      const times: number[] = [];
      for (let i = 0; i <= steps; i++) {
        const t = performance.now();
        const got = await Promise.all(gens.map((g) => g.next()));
        times.push(performance.now() - t);
        if (got.some((r) => r.done)) throw new Error(`llama.cpp stopped generating after ${i} steps`);
      }
      await Promise.all(gens.map((g) => g.return()));
      await Promise.all(active.map((s) => s.eraseContextTokenRanges([{ start: held, end: s.nextTokenIndex }])));
      const off = active.find((s) => s.nextTokenIndex !== held);
      if (off) throw new Error(`llama.cpp sequence not cut back to its context (${off.nextTokenIndex} tokens, want ${held})`);
      return times.slice(1);
    },
    async dispose() {
      await ctx.dispose();
      await model.dispose();
    },
  };
}

/** kvlab (random-filled caches of the same length) and llama.cpp (a prefilled context per sequence) at each batch size. */
export async function peerBatchDecode(lm: LoadedModel, llama: PeerBatchLlama, gguf: string, mmap: boolean, contextIds: number[], o: PeerBatchOptions): Promise<Record<string, unknown>> {
  const maxB = Math.max(...o.batchSizes);
  const side = await llamaBatch(llama, gguf, mmap, o.threads, maxB, contextIds.slice(0, o.context), o.steps + 1, o.log);
  const base = lm.newCache('f32');
  fillCache(base, o.context - 1);
  const kv = batchStepper(lm, base, maxB);
  const k = new Map<number, number[]>(o.batchSizes.map((B) => [B, []]));
  const l = new Map<number, number[]>(o.batchSizes.map((B) => [B, []]));
  const bandwidth: number[] = [];
  try {
    for (const B of o.batchSizes) {
      kv.step(B, 0);
      await side.stepsMs(B, 1);
    }
    for (let round = 0; round < o.rounds; round++) {
      o.log(`batched decode round ${round + 1}/${o.rounds} (B = ${o.batchSizes.join(', ')}; ${o.steps} steps each side)`);
      bandwidth.push(probeBandwidth(1)[0]!);
      for (const B of o.batchSizes) {
        for (let i = 0; i < o.steps; i++) k.get(B)!.push(kv.step(B, i));
        l.get(B)!.push(...(await side.stepsMs(B, o.steps)));
      }
    }
  } finally {
    kv.release();
    base.release();
    await side.dispose();
  }
  const perB = o.batchSizes.map((B) => {
    const km = median(k.get(B)!);
    const lm_ = median(l.get(B)!);
    return {
      batch: B,
      kvlab_step_ms: r3(km),
      llama_cpp_step_ms: r3(lm_),
      kvlab_aggregate_tokens_per_s: r1((B * 1000) / km),
      llama_cpp_aggregate_tokens_per_s: r1((B * 1000) / lm_),
      kvlab_over_llama_cpp: r3(lm_ / km),
      kvlab_step_ms_runs: k.get(B)!.map(r1),
      llama_cpp_step_ms_runs: l.get(B)!.map(r1),
    };
  });
  return {
    context: o.context,
    steps_per_round: o.steps,
    rounds: o.rounds,
    bandwidth_gbs_median_of_rounds: r1(median(bandwidth)),
    note: 'llama.cpp: parallel sequences on one context (F16 cache), one batched llama_decode per step, greedy sampling included; kvlab: forwardBatch over fp32 caches of the same length, logits only',
    batches: perB,
  };
}
