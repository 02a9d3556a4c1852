import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KvCache, type KvDtype } from '../cache/kv-cache.ts';
import { buildRopeTable, loadModelConfig, type ModelConfig } from '../model/config.ts';
import { LlamaModel } from '../model/llama.ts';
import { loadTokenizer, type KvTokenizer } from '../model/tokenizer.ts';
import { loadWeights } from '../model/weights.ts';
import { readCheckpointIndex } from '../model/safetensors.ts';
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
  /** Read tensors through an mmap (zero copy) when the native addon is present. Default true. */
  mmap?: boolean;
  /** How new KV caches store keys and values (newCache()). Default 'f32'. */
  kvDtype?: KvDtype;
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
  ) {}

  newCache(dtype: KvDtype = this.kvDtype): KvCache {
    return new KvCache(this.config.numLayers, this.config.numKvHeads, this.config.headDim, dtype);
  }

  openContext(context: string, opts?: ContextOptions): ContextSession {
    return new ContextSession(this, userContextLayout(this, context, opts), opts);
  }
}

export function loadModel(dir: string = DEFAULT_MODEL_DIR, opts: LoadOptions): LoadedModel {
  const config = loadModelConfig(dir);
  const tokenizer = loadTokenizer(dir);
  const source = opts.mmap === false ? undefined : (mmapSource() ?? undefined);
  let weights = loadWeights(dir, config, { onProgress: opts.onProgress, source });
  const group = opts.int8Group ?? DEFAULT_INT8_GROUP;
  if (opts.weights === 'int8') weights = quantizeModelWeights(weights, group);
  const model = new LlamaModel(config, weights, opts.backend, buildRopeTable(config));
  const files = [...new Set([...readCheckpointIndex(dir).values()].map((t) => t.file))].sort();
  // A bf16 cache changes results; an fp32 one leaves the fingerprints of earlier results as they were.
  const weightsLabel = (opts.weights === 'int8' ? int8Label(group) : 'checkpoint') + (opts.kvDtype === 'bf16' ? ' + kv bf16' : '');
  const fingerprint = JSON.stringify([config, weightsLabel, files.map((f) => {
    const st = statSync(f);
    return [f, st.size, st.mtimeMs];
  })]);
  return new LoadedModel(dir, config, tokenizer, model, fingerprint, opts.kvDtype);
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
