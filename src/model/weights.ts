import type { Weight, WeightDType } from '../tensor/backend.ts';
import { bf16ArrayToF32, f16ArrayToF32 } from '../tensor/dtype.ts';
import { join } from 'node:path';
import type { ModelConfig } from './config.ts';
import { CheckpointError, fileByteSource, readCheckpointIndex, readTensor, type TensorByteSource, type TensorInfo } from './safetensors.ts';

export interface LayerWeights {
  inputNorm: Float32Array;
  postAttnNorm: Float32Array;
  wq: Weight;
  wk: Weight;
  wv: Weight;
  wo: Weight;
  bq?: Float32Array;
  bk?: Float32Array;
  bv?: Float32Array;
  /** o_proj bias (llama/qwen3 with attention_bias). */
  bo?: Float32Array;
  qNorm?: Float32Array;
  kNorm?: Float32Array;
  gate: Weight;
  up: Weight;
  down: Weight;
}

export interface ModelWeights {
  embed: Weight;
  layers: LayerWeights[];
  finalNorm: Float32Array;
  /** The same object as `embed` when the embeddings are tied. */
  lmHead: Weight;
}

/** Bytes one decode step streams: every linear weight and the LM head (the embedding lookup reads one row). */
export function decodeWeightBytes(W: ModelWeights): number {
  const bytes = (w: Weight) => w.data.byteLength + (w.scales?.byteLength ?? 0);
  let total = bytes(W.lmHead);
  for (const l of W.layers) for (const w of [l.wq, l.wk, l.wv, l.wo, l.gate, l.up, l.down]) total += bytes(w);
  return total;
}

export interface LoadWeightsOptions {
  source?: TensorByteSource;
  onProgress?: (done: number, total: number) => void;
}

const LM_HEAD = 'lm_head.weight';
/** Buffers some exporters save that the forward pass recomputes. */
const HARMLESS = /(^|\.)rotary_emb\.inv_freq$/;
const NAMES_SHOWN = 5;

/** Every tensor a config needs, in load order, with its expected shape. */
export function expectedTensors(cfg: ModelConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const D = cfg.hiddenSize;
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  m.set('model.embed_tokens.weight', [cfg.vocabSize, D]);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    m.set(`${p}input_layernorm.weight`, [D]);
    m.set(`${p}post_attention_layernorm.weight`, [D]);
    m.set(`${p}self_attn.q_proj.weight`, [q, D]);
    m.set(`${p}self_attn.k_proj.weight`, [kv, D]);
    m.set(`${p}self_attn.v_proj.weight`, [kv, D]);
    m.set(`${p}self_attn.o_proj.weight`, [D, q]);
    if (cfg.attentionBias) {
      m.set(`${p}self_attn.q_proj.bias`, [q]);
      m.set(`${p}self_attn.k_proj.bias`, [kv]);
      m.set(`${p}self_attn.v_proj.bias`, [kv]);
    }
    if (cfg.attentionOutputBias) m.set(`${p}self_attn.o_proj.bias`, [D]);
    if (cfg.qkNorm) {
      m.set(`${p}self_attn.q_norm.weight`, [cfg.headDim]);
      m.set(`${p}self_attn.k_norm.weight`, [cfg.headDim]);
    }
    m.set(`${p}mlp.gate_proj.weight`, [cfg.intermediateSize, D]);
    m.set(`${p}mlp.up_proj.weight`, [cfg.intermediateSize, D]);
    m.set(`${p}mlp.down_proj.weight`, [D, cfg.intermediateSize]);
  }
  m.set('model.norm.weight', [D]);
  if (!cfg.tieWordEmbeddings) m.set(LM_HEAD, [cfg.vocabSize, D]);
  return m;
}

const listNames = (names: string[]) =>
  names.slice(0, NAMES_SHOWN).join(', ') + (names.length > NAMES_SHOWN ? ` (and ${names.length - NAMES_SHOWN} more)` : '');
const plural = (n: number) => (n === 1 ? '' : 's');

/** Checks a checkpoint's tensor set against a config (names, shapes) from headers alone; returns the tensors to load. */
export function planWeights(dir: string, cfg: ModelConfig): Map<string, TensorInfo> {
  const index = readCheckpointIndex(dir);
  checkLayerCount(dir, cfg, index);
  const expected = expectedTensors(cfg);
  // With tied embeddings a stored lm_head.weight is allowed but unused, as in Hugging Face.
  if (cfg.tieWordEmbeddings && index.has(LM_HEAD)) expected.set(LM_HEAD, [cfg.vocabSize, cfg.hiddenSize]);
  const missing = [...expected.keys()].filter((n) => !index.has(n));
  if (missing.length) {
    const hint = missing.includes(LM_HEAD) ? ' (tie_word_embeddings is false, so lm_head.weight is required)' : '';
    throw new CheckpointError(`missing tensor${plural(missing.length)} in ${dir}: ${listNames(missing)}${hint}`);
  }
  const unexpected = [...index.keys()].filter((n) => !expected.has(n) && !HARMLESS.test(n));
  if (unexpected.length) {
    throw new CheckpointError(`unexpected tensor${plural(unexpected.length)} in ${dir} for a ${cfg.modelType} config: ${listNames(unexpected)}`);
  }
  const plan = new Map<string, TensorInfo>();
  for (const [name, shape] of expected) {
    const t = index.get(name)!;
    if (t.shape.length !== shape.length || t.shape.some((x, i) => x !== shape[i])) {
      throw new CheckpointError(`${t.file}: tensor ${name} has shape [${t.shape.join(', ')}], config expects [${shape.join(', ')}]`);
    }
    if (!(cfg.tieWordEmbeddings && name === LM_HEAD)) plan.set(name, t);
  }
  return plan;
}

const LAYER_TENSOR = /^model\.layers\.(\d+)\./;

/**
 * Compares num_hidden_layers with the layers the checkpoint holds before anything is sized by it, so a
 * config claiming 10^9 layers fails at once instead of building a tensor list of that length.
 */
function checkLayerCount(dir: string, cfg: ModelConfig, index: Map<string, TensorInfo>): void {
  const layers = new Set<number>();
  for (const name of index.keys()) {
    const m = LAYER_TENSOR.exec(name);
    if (m) layers.add(Number(m[1]));
  }
  if (cfg.numLayers === layers.size && (layers.size === 0 || Math.max(...layers) === layers.size - 1)) return;
  const held = layers.size === 0 ? 'no layer tensors' : `tensors of ${layers.size} layer${plural(layers.size)} (indices ${Math.min(...layers)}..${Math.max(...layers)})`;
  throw new CheckpointError(`${join(dir, 'config.json')}: num_hidden_layers is ${cfg.numLayers} but the checkpoint in ${dir} holds ${held}`);
}

/**
 * Loads every weight a config needs. The whole tensor set is validated against the config before any
 * data is read, so a bad checkpoint fails cleanly and nothing is half-loaded.
 * 2-D weights keep their checkpoint dtype; norms and biases are widened to fp32.
 */
export function loadWeights(dir: string, cfg: ModelConfig, opts: LoadWeightsOptions = {}): ModelWeights {
  const plan = planWeights(dir, cfg);
  const source = opts.source ?? fileByteSource;
  if (source.prepare) {
    const byFile = new Map<string, [number, number][]>();
    for (const t of plan.values()) byFile.set(t.file, [...(byFile.get(t.file) ?? []), [t.offset, t.byteLength]]);
    for (const [file, regions] of byFile) source.prepare(file, regions);
  }
  let done = 0;
  const read = (name: string) => {
    const t = plan.get(name)!;
    const data = readTensor(t, source);
    opts.onProgress?.(++done, plan.size);
    return { t, data };
  };
  const matrix = (name: string): Weight => {
    const { t, data } = read(name);
    return { name, dtype: WEIGHT_DTYPE[t.dtype], rows: t.shape[0]!, cols: t.shape[1]!, data };
  };
  const vector = (name: string): Float32Array => {
    const { t, data } = read(name);
    if (t.dtype === 'F32') return data as Float32Array;
    return t.dtype === 'BF16' ? bf16ArrayToF32(data as Uint16Array) : f16ArrayToF32(data as Uint16Array);
  };
  const optional = (name: string) => (plan.has(name) ? vector(name) : undefined);

  const embed = matrix('model.embed_tokens.weight');
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      inputNorm: vector(`${p}input_layernorm.weight`),
      postAttnNorm: vector(`${p}post_attention_layernorm.weight`),
      wq: matrix(`${p}self_attn.q_proj.weight`),
      wk: matrix(`${p}self_attn.k_proj.weight`),
      wv: matrix(`${p}self_attn.v_proj.weight`),
      wo: matrix(`${p}self_attn.o_proj.weight`),
      bq: optional(`${p}self_attn.q_proj.bias`),
      bk: optional(`${p}self_attn.k_proj.bias`),
      bv: optional(`${p}self_attn.v_proj.bias`),
      bo: optional(`${p}self_attn.o_proj.bias`),
      qNorm: optional(`${p}self_attn.q_norm.weight`),
      kNorm: optional(`${p}self_attn.k_norm.weight`),
      gate: matrix(`${p}mlp.gate_proj.weight`),
      up: matrix(`${p}mlp.up_proj.weight`),
      down: matrix(`${p}mlp.down_proj.weight`),
    });
  }
  const finalNorm = vector('model.norm.weight');
  const lmHead = cfg.tieWordEmbeddings ? embed : matrix(LM_HEAD);
  return { embed, layers, finalNorm, lmHead };
}

const WEIGHT_DTYPE: Record<TensorInfo['dtype'], WeightDType> = { BF16: 'bf16', F16: 'f16', F32: 'f32' };
