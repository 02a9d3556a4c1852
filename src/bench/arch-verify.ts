import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadModel, type LoadedModel } from '../engine/loaded-model.ts';
import type { KvDtype } from '../cache/kv-cache.ts';
import type { Backend } from '../tensor/backend.ts';
import { ARCH_FAMILIES, archFamily, familyConfig, familyPrompts, writeFamilyCheckpoint, type ArchFamily } from './arch-families.ts';
import { writeGguf } from './gguf-writer.ts';

/**
 * `verify:arch`: every architecture kvlab runs, checked against llama.cpp (through node-llama-cpp) on the same
 * random weights. Per family and precision: at every position of each prompt, kvlab's and llama.cpp's top-10
 * token ids and their logits must agree within the precision's tolerance, and greedy continuations of 32
 * tokens must be identical.
 */

export interface Precision {
  name: string;
  /** What each side runs. */
  describe: string;
  gguf: 'f32' | 'f16';
  peerKv: 'F32' | 'F16';
  kvlabKv: KvDtype;
  /** Largest |logit difference| allowed on kvlab's top-10 ids; also the gap below which two ids may swap ranks. */
  tolerance: number;
  /**
   * Whether greedy continuations may part where kvlab's logits for the two choices are within `tolerance` (a
   * near tie that rounding decides). false: they must be identical token for token.
   */
  nearTiesMayPart: boolean;
}

/**
 * f32: both sides hold the bf16 checkpoint's values exactly (llama.cpp as F32 tensors) and keep fp32 caches, so
 * they differ only in summation order. f16: llama.cpp's defaults (F16 weights and cache: subnormal weights
 * lose bits, cached keys and values round to 11 significant bits) against kvlab's bf16 cache (8 bits).
 */
export const PRECISIONS: Precision[] = [
  { name: 'f32', describe: 'llama.cpp F32 weights + F32 KV cache; kvlab bf16 weights widened exactly + fp32 KV cache', gguf: 'f32', peerKv: 'F32', kvlabKv: 'f32', tolerance: 2e-3, nearTiesMayPart: false },
  { name: 'f16', describe: 'llama.cpp F16 weights + F16 KV cache; kvlab bf16 weights + bf16 KV cache', gguf: 'f16', peerKv: 'F16', kvlabKv: 'bf16', tolerance: 5e-2, nearTiesMayPart: true },
];

export const TOP_K = 10;
export const CONTINUATION = 32;

export interface ArchVerifyOptions {
  peerDir: string;
  families?: string[];
  precisions?: string[];
  threads: number;
  backend: () => Backend;
  log: (line: string) => void;
}

interface PeerModule {
  getLlama(o: Record<string, unknown>): Promise<PeerLlama>;
}
interface PeerLlama {
  systemInfo: string;
  llamaCppRelease: { repo: string; release: string };
  loadModel(o: { modelPath: string }): Promise<PeerModel>;
  dispose(): Promise<void>;
}
interface PeerModel {
  fileInsights: { swaSize?: number };
  createContext(o: Record<string, unknown>): Promise<{ getSequence(): PeerSequence; dispose(): Promise<void> }>;
  dispose(): Promise<void>;
}
interface PeerSequence {
  clearHistory(): Promise<void>;
  evaluate(tokens: number[], o: Record<string, unknown>): AsyncGenerator<number>;
  controlledEvaluate(input: [number, Record<string, unknown>][]): Promise<({ next: { logits?: Map<number, number> } } | undefined)[]>;
}

async function importPeer(peerDir: string): Promise<{ mod: PeerModule; version: string }> {
  const pkgDir = join(peerDir, 'node_modules', 'node-llama-cpp');
  let mod: PeerModule;
  try {
    mod = (await import(pathToFileURL(resolve(pkgDir, 'dist', 'index.js')).href)) as PeerModule;
  } catch (e) {
    throw new Error(`node-llama-cpp is not installed in ${peerDir} (npm run verify:arch installs it): ${(e as Error).message}`);
  }
  return { mod, version: (JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { version: string }).version };
}

/** Ids of the k largest values of row, largest first; ties go to the lower id. */
export function topK(row: Float32Array, k: number): number[] {
  const ids: number[] = [];
  for (let i = 0; i < row.length; i++) {
    if (ids.length === k && !(row[i]! > row[ids[k - 1]!]!)) continue;
    let at = ids.length === k ? k - 1 : ids.length;
    if (ids.length < k) ids.push(i);
    while (at > 0 && row[i]! > row[ids[at - 1]!]!) {
      ids[at] = ids[at - 1]!;
      at--;
    }
    ids[at] = i;
  }
  return ids;
}

export interface PositionComparison {
  /** Largest |kvlab - peer| logit over kvlab's top-k ids. */
  maxDiff: number;
  /** Why the two top-k lists disagree beyond the tolerance, or null. */
  mismatch: string | null;
}

/**
 * Compares one position: every id of kvlab's top-k must have a peer logit within `tol`; a pair of them may be
 * ranked differently only if kvlab's logits are within `tol` of each other; an id in only one top-k must sit
 * within `tol` of kvlab's k-th logit.
 */
export function comparePosition(kv: Float32Array, kvTop: number[], peer: Map<number, number>, k: number, tol: number): PositionComparison {
  let maxDiff = 0;
  for (const id of kvTop) {
    const p = peer.get(id);
    if (p === undefined) return { maxDiff: Infinity, mismatch: `llama.cpp returned no logit for id ${id}` };
    maxDiff = Math.max(maxDiff, Math.abs(kv[id]! - p));
  }
  if (maxDiff > tol) return { maxDiff, mismatch: `logit difference ${maxDiff.toExponential(2)} over tolerance ${tol}` };
  for (let a = 0; a < kvTop.length; a++) {
    for (let b = a + 1; b < kvTop.length; b++) {
      const x = kvTop[a]!;
      const y = kvTop[b]!;
      if (kv[x]! - kv[y]! > tol && !(peer.get(x)! > peer.get(y)!)) return { maxDiff, mismatch: `ids ${x} and ${y} ranked in opposite orders` };
    }
  }
  const peerTop = [...peer.entries()].sort((p, q) => q[1] - p[1] || p[0] - q[0]).slice(0, k).map(([id]) => id);
  const kth = kv[kvTop[k - 1]!]!;
  for (const id of peerTop) {
    if (!kvTop.includes(id) && kv[id]! < kth - tol) return { maxDiff, mismatch: `llama.cpp's top-${k} holds id ${id}, which kvlab ranks well below its ${k}th` };
  }
  return { maxDiff, mismatch: null };
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/** Greedy ids after prompt, with the logits each was chosen from. */
function kvlabGreedy(lm: LoadedModel, kvDtype: KvDtype, prompt: number[], steps: number): { ids: number[]; logits: Float32Array[] } {
  const cache = lm.newCache(kvDtype);
  let logits = lm.model.forward(prompt, cache, { logits: 'last' })!;
  const ids: number[] = [];
  const rows: Float32Array[] = [];
  for (let s = 0; s < steps; s++) {
    const next = argmax(logits);
    ids.push(next);
    rows.push(logits);
    if (s + 1 < steps) logits = lm.model.forward([next], cache, { logits: 'last' })!;
  }
  return { ids, logits: rows };
}

export interface FamilyResult {
  family: string;
  covers: string;
  precision: string;
  tolerance: number;
  positions: number;
  max_logit_diff: number;
  top10_mismatches: { prompt: number; position: number; why: string }[];
  greedy_identical: string;
  /** Where a continuation parted: the step, both choices and kvlab's logit gap between them. */
  greedy_first_difference: { prompt: number; step: number; kvlab: number; llama_cpp: number; kvlab_gap: number; near_tie: boolean }[];
  llama_cpp_sliding_window: number | null;
  passed: boolean;
}

async function verifyFamily(peer: PeerModule, f: ArchFamily, precisions: Precision[], scratch: string, opts: ArchVerifyOptions): Promise<FamilyResult[]> {
  const dir = join(scratch, f.name);
  writeFamilyCheckpoint(f, dir);
  const prompts = familyPrompts(f, dir);
  const lm = loadModel(dir, { backend: opts.backend() });
  const vocab = lm.config.vocabSize;
  const longest = Math.max(...prompts.map((p) => p.length)) + CONTINUATION + 8;
  const results: FamilyResult[] = [];
  for (const prec of precisions) {
    const gguf = join(scratch, `${f.name}-${prec.name}.gguf`);
    writeGguf(dir, gguf, { name: `${f.name} (random weights)`, matrices: prec.gguf });
    const llama = await peer.getLlama({ gpu: false, build: 'never', maxThreads: opts.threads, logLevel: 'error' });
    const model = await llama.loadModel({ modelPath: gguf });
    const ctx = await model.createContext({
      contextSize: longest,
      batchSize: longest,
      threads: opts.threads,
      flashAttention: false,
      swaFullCache: true,
      experimentalKvCacheKeyType: prec.peerKv,
      experimentalKvCacheValueType: prec.peerKv,
    });
    const seq = ctx.getSequence();
    const mismatches: FamilyResult['top10_mismatches'] = [];
    const greedyDiffs: FamilyResult['greedy_first_difference'] = [];
    let maxDiff = 0;
    let positions = 0;
    let greedyOk = 0;
    try {
      for (const [pi, prompt] of prompts.entries()) {
        const logits = lm.model.forward(prompt, lm.newCache(prec.kvlabKv), { logits: 'all' })!;
        const rows = prompt.map((_, i) => logits.subarray(i * vocab, (i + 1) * vocab));
        const tops = rows.map((r) => topK(r, TOP_K));
        await seq.clearHistory();
        const peerOut = await seq.controlledEvaluate(
          prompt.map((t, i) => [t, { generateNext: { logits: { filter: { tokens: tops[i]!, includeTop: TOP_K } }, options: { temperature: 0 } } }]),
        );
        for (let i = 0; i < prompt.length; i++) {
          const peerLogits = peerOut[i]?.next.logits;
          if (!peerLogits) throw new Error(`${f.name}: llama.cpp returned no logits at position ${i} of prompt ${pi}`);
          const c = comparePosition(rows[i]!, tops[i]!, peerLogits, TOP_K, prec.tolerance);
          positions++;
          if (Number.isFinite(c.maxDiff)) maxDiff = Math.max(maxDiff, c.maxDiff);
          if (c.mismatch) mismatches.push({ prompt: pi, position: i, why: c.mismatch });
        }
        const mine = kvlabGreedy(lm, prec.kvlabKv, prompt, CONTINUATION);
        await seq.clearHistory();
        const theirs: number[] = [];
        for await (const t of seq.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
          theirs.push(t);
          if (theirs.length >= CONTINUATION) break;
        }
        const step = mine.ids.findIndex((t, s) => t !== theirs[s]);
        if (step < 0 && theirs.length === CONTINUATION) greedyOk++;
        else {
          const at = step < 0 ? theirs.length : step;
          const row = mine.logits[at]!;
          const other = theirs[at] ?? -1;
          const gap = other >= 0 ? row[mine.ids[at]!]! - row[other]! : Infinity;
          greedyDiffs.push({ prompt: pi, step: at, kvlab: mine.ids[at]!, llama_cpp: other, kvlab_gap: Number(gap.toPrecision(3)), near_tie: gap <= prec.tolerance });
        }
      }
    } finally {
      await ctx.dispose();
      await model.dispose();
      await llama.dispose();
      rmSync(gguf, { force: true });
    }
    const swa = model.fileInsights.swaSize ?? null;
    const result: FamilyResult = {
      family: f.name,
      covers: f.covers,
      precision: prec.name,
      tolerance: prec.tolerance,
      positions,
      max_logit_diff: Number(maxDiff.toPrecision(3)),
      top10_mismatches: mismatches.slice(0, 10),
      greedy_identical: `${greedyOk}/${prompts.length}`,
      greedy_first_difference: greedyDiffs,
      llama_cpp_sliding_window: swa,
      passed:
        mismatches.length === 0 &&
        greedyDiffs.every((d) => prec.nearTiesMayPart && d.near_tie) &&
        (swa ?? null) === (lm.config.slidingWindow ?? null),
    };
    opts.log(`${f.name} ${prec.name}: max |logit diff| ${result.max_logit_diff} over ${positions} positions (tolerance ${prec.tolerance}), top-${TOP_K} mismatches ${mismatches.length}, greedy ${result.greedy_identical} identical${greedyDiffs.length ? ` (${greedyDiffs.map((d) => `prompt ${d.prompt} parts at step ${d.step}, kvlab gap ${d.kvlab_gap}`).join('; ')})` : ''}${result.passed ? '' : ' FAILED'}`);
    results.push(result);
  }
  return results;
}

export async function runArchVerify(opts: ArchVerifyOptions): Promise<{ passed: boolean; report: Record<string, unknown> }> {
  const { mod, version } = await importPeer(opts.peerDir);
  const families = (opts.families ?? ARCH_FAMILIES.map((f) => f.name)).map(archFamily);
  const precisions = (opts.precisions ?? PRECISIONS.map((p) => p.name)).map((n) => {
    const p = PRECISIONS.find((x) => x.name === n);
    if (!p) throw new Error(`unknown precision "${n}"; known: ${PRECISIONS.map((x) => x.name).join(', ')}`);
    return p;
  });
  const scratch = mkdtempSync(join(tmpdir(), 'kvlab-arch-'));
  const results: FamilyResult[] = [];
  let peerInfo: Record<string, unknown> = {};
  try {
    const llama = await mod.getLlama({ gpu: false, build: 'never', maxThreads: opts.threads, logLevel: 'error' });
    peerInfo = { package: `node-llama-cpp@${version}`, llama_cpp: llama.llamaCppRelease, cpu: llama.systemInfo.trim(), threads: opts.threads };
    await llama.dispose();
    for (const f of families) {
      opts.log(`${f.name}: ${f.covers}`);
      results.push(...(await verifyFamily(mod, f, precisions, scratch, opts)));
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const passed = results.every((r) => r.passed);
  return {
    passed,
    report: {
      date: new Date().toISOString(),
      passed,
      kvlab_backend: opts.backend().describe(),
      peer: peerInfo,
      precisions: Object.fromEntries(precisions.map((p) => [p.name, { runs: p.describe, tolerance: p.tolerance }])),
      families: Object.fromEntries(families.map((f) => [f.name, { covers: f.covers, config: familyConfig(f) }])),
      results,
    },
  };
}
