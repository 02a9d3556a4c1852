import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { checkKvQuantOptions, DEFAULT_KV_QUANT, KvCache, type KvDtype, type KvQuantOptions } from '../cache/kv-cache.ts';
import { defaultKvMemoryBytes, KvPool } from '../cache/kv-pool.ts';
import { buildRopeTable, loadModelConfig, type ModelConfig } from '../model/config.ts';
import { LlamaModel } from '../model/llama.ts';
import { loadTokenizer, type KvTokenizer } from '../model/tokenizer.ts';
import { loadWeights } from '../model/weights.ts';
import { CheckpointError, readCheckpointIndex } from '../model/safetensors.ts';
import type { Backend } from '../tensor/backend.ts';
import { mmapSource } from '../tensor/mmap-source.ts';
import { DEFAULT_INT8_GROUP, int8Label, quantizeInt8, type Int8Grouping } from '../tensor/quantize.ts';
import type { ModelWeights } from '../model/weights.ts';
import { userContextLayout } from '../model/prompt-layout.ts';
import { ContextSession, type ContextOptions } from './context-session.ts';

export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../models/kvlab-tiny-chat', import.meta.url));

export interface LoadOptions {
  backend: Backend;
  /** 'int8' quantizes every linear weight at load (embedding lookups stay in the checkpoint dtype). */
  weights?: 'checkpoint' | 'int8';
  /** Columns per int8 scale, or 'row' for one scale per row. Default DEFAULT_INT8_GROUP (128). */
  int8Group?: Int8Grouping;
  /**
   * Map the checkpoint (zero copy, needs the native addon) instead of reading it into memory. Default false:
   * a mapped file that is truncated while in use kills the process with SIGBUS, and one overwritten in place
   * changes the weights under it. With mapping, checkMappedFiles() refuses to run once a file changed.
   */
  mmap?: boolean;
  /** How new KV caches store keys and values (newCache()). Default 'f32'. */
  kvDtype?: KvDtype;
  /** Group size and residual window of int4 / int2 caches (default G = 32, R = 128). */
  kvQuant?: KvQuantOptions;
  onProgress?: (done: number, total: number) => void;
}

/** A checkpoint ready to run: config, tokenizer and the forward pass on a backend. */
export class LoadedModel {
  constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly tokenizer: KvTokenizer,
    readonly model: LlamaModel,
    /** Identifies these weights (folder, sizes, modification times) for caches of per-model results. */
    readonly fingerprint: string,
    readonly kvDtype: KvDtype = 'f32',
    /** Size, inode and modification time of each mapped checkpoint file at load (empty when read into memory). */
    readonly mappedFiles: FileStamp[] = [],
    /** Group size and residual window of the int4 / int2 caches this model makes. */
    readonly kvQuant: KvQuantOptions = DEFAULT_KV_QUANT,
  ) {
    checkKvQuantOptions(kvQuant);
  }

  /**
   * Throws, naming the file, if a mapped checkpoint file changed since load (truncated, rewritten or
   * replaced). Cheap (one stat per file); the engine calls it before prefills and decode steps. A file
   * truncated during a step still faults: mapping is for checkpoints that stay as they are.
   */
  checkMappedFiles(): void {
    for (const was of this.mappedFiles) {
      const now = stampOf(was.file);
      if (!now || now.size !== was.size || now.mtimeMs !== was.mtimeMs || now.ino !== was.ino) {
        const what = !now ? 'is gone' : now.size !== was.size ? `changed size (${was.size} -> ${now.size} bytes)` : now.ino !== was.ino ? 'was replaced' : 'was modified';
        throw new CheckpointError(`${was.file} ${what} since it was mapped; the weights in use are no longer the file's (load the model again)`);
      }
    }
  }

  newCache(dtype: KvDtype = this.kvDtype): KvCache {
    return new KvCache(this.config.numLayers, this.config.numKvHeads, this.config.headDim, dtype, undefined, this.kvQuant);
  }

  private pool: KvPool | null = null;

  /**
   * The model's one KV memory pool (made at first use, of `budgetBytes` or defaultKvMemoryBytes()): the batching
   * scheduler's sequences and shared contexts allocate from it. Caches from newCache() stay outside it.
   */
  kvPool(budgetBytes?: number): KvPool {
    if (!this.pool) this.pool = new KvPool(budgetBytes ?? defaultKvMemoryBytes());
    else if (budgetBytes !== undefined && budgetBytes !== this.pool.budgetBytes) throw new Error(`kvPool(): the model's KV pool already exists with ${this.pool.budgetBytes} bytes`);
    return this.pool;
  }

  /** An empty cache charged to the model's KV pool. */
  newPooledCache(dtype: KvDtype = this.kvDtype): KvCache {
    return new KvCache(this.config.numLayers, this.config.numKvHeads, this.config.headDim, dtype, this.kvPool(), this.kvQuant);
  }

  openContext(context: string, opts?: ContextOptions): ContextSession {
    return new ContextSession(this, userContextLayout(this, context, opts), opts);
  }
}

export interface FileStamp {
  file: string;
  size: number;
  mtimeMs: number;
  ino: number;
}

function stampOf(file: string): FileStamp | null {
  try {
    const st = statSync(file);
    return { file, size: st.size, mtimeMs: st.mtimeMs, ino: st.ino };
  } catch {
    return null;
  }
}

export function loadModel(dir: string = DEFAULT_MODEL_DIR, opts: LoadOptions): LoadedModel {
  const config = loadModelConfig(dir);
  const tokenizer = loadTokenizer(dir);
  const source = opts.mmap === true ? (mmapSource() ?? undefined) : undefined;
  let weights = loadWeights(dir, config, { onProgress: opts.onProgress, source });
  const group = opts.int8Group ?? DEFAULT_INT8_GROUP;
  if (opts.weights === 'int8') weights = quantizeModelWeights(weights, group);
  const model = new LlamaModel(config, weights, opts.backend, buildRopeTable(config));
  const files = [...new Set([...readCheckpointIndex(dir).values()].map((t) => t.file))].sort();
  // A bf16 cache changes results; an fp32 one leaves the fingerprints of earlier results as they were.
  const weightsLabel = (opts.weights === 'int8' ? int8Label(group) : 'checkpoint') + (opts.kvDtype === 'bf16' ? ' + kv bf16' : opts.kvDtype === 'int4' || opts.kvDtype === 'int2' ? ` + kv ${opts.kvDtype} g${(opts.kvQuant ?? DEFAULT_KV_QUANT).group} r${(opts.kvQuant ?? DEFAULT_KV_QUANT).residual}` : '');
  const fingerprint = JSON.stringify([config, weightsLabel, files.map((f) => {
    const st = statSync(f);
    return [f, st.size, st.mtimeMs];
  })]);
  const mappedFiles = source ? files.map((f) => stampOf(f)!) : [];
  return new LoadedModel(dir, config, tokenizer, model, fingerprint, opts.kvDtype, mappedFiles, opts.kvQuant);
}

function quantizeModelWeights(w: ModelWeights, group: Int8Grouping): ModelWeights {
  return {
    embed: w.embed,
    finalNorm: w.finalNorm,
    lmHead: quantizeInt8(w.lmHead, group),
    layers: w.layers.map((l) => ({
      ...l,
      wq: quantizeInt8(l.wq, group),
      wk: quantizeInt8(l.wk, group),
      wv: quantizeInt8(l.wv, group),
      wo: quantizeInt8(l.wo, group),
      gate: quantizeInt8(l.gate, group),
      up: quantizeInt8(l.up, group),
      down: quantizeInt8(l.down, group),
    })),
  };
}
