import type { Weight } from '../tensor/backend.ts';
import { widenWeight } from '../tensor/reference.ts';
import type { ModelConfig } from './config.ts';
import { CheckpointError, fileReadSource, readCheckpointIndex, type TensorByteSource, type TensorInfo } from './safetensors.ts';
import { basename } from 'node:path';

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
  lmHead: Weight;
}

export interface LoadWeightsOptions {
  source?: TensorByteSource;
  onProgress?: (done: number, total: number) => void;
}

const IGNORED = /rotary_emb\.inv_freq$/;

/** The tensors a config needs, with their expected shapes. */
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
    if (cfg.qkNorm) {
      m.set(`${p}self_attn.q_norm.weight`, [cfg.headDim]);
      m.set(`${p}self_attn.k_norm.weight`, [cfg.headDim]);
    }
    m.set(`${p}mlp.gate_proj.weight`, [cfg.intermediateSize, D]);
    m.set(`${p}mlp.up_proj.weight`, [cfg.intermediateSize, D]);
    m.set(`${p}mlp.down_proj.weight`, [D, cfg.intermediateSize]);
  }
  m.set('model.norm.weight', [D]);
  if (!cfg.tieWordEmbeddings) m.set('lm_head.weight', [cfg.vocabSize, D]);
  return m;
}

/**
 * Loads every weight a config needs. The whole tensor set (names, shapes, dtypes) is validated against
 * the config before any data is read, so a bad checkpoint fails cleanly and nothing is half-loaded.
 */
export function loadWeights(dir: string, cfg: ModelConfig, opts: LoadWeightsOptions = {}): ModelWeights {
  const index = readCheckpointIndex(dir);
  const expected = expectedTensors(cfg);
  const tiedHeadPresent = cfg.tieWordEmbeddings && index.has('lm_head.weight');
  const missing = [...expected.keys()].filter((n) => !index.has(n));
  if (missing.length) {
    throw new CheckpointError(`missing tensor${missing.length > 1 ? 's' : ''} in ${dir}: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` (+${missing.length - 5} more)` : ''}`);
  }
  const unexpected = [...index.keys()].filter((n) => !expected.has(n) && !IGNORED.test(n) && !(tiedHeadPresent && n === 'lm_head.weight'));
  if (unexpected.length) {
    throw new CheckpointError(`unexpected tensor${unexpected.length > 1 ? 's' : ''} in ${dir} for model_type ${cfg.modelType}: ${unexpected.slice(0, 5).join(', ')}`);
  }
  for (const [name, shape] of expected) {
    const t = index.get(name)!;
    if (t.shape.length !== shape.length || t.shape.some((x, i) => x !== shape[i])) {
      throw new CheckpointError(`${basename(t.file)}: tensor ${name} has shape [${t.shape.join(', ')}], config expects [${shape.join(', ')}]`);
    }
  }
  const source = opts.source ?? fileReadSource;
  if (source.prepare) {
    const byFile = new Map<string, [number, number][]>();
    for (const name of expected.keys()) {
      const t = index.get(name)!;
      byFile.set(t.file, [...(byFile.get(t.file) ?? []), [t.offset, t.byteLength]]);
    }
    for (const [file, regions] of byFile) source.prepare(file, regions);
  }
  const total = expected.size;
  let done = 0;
  const tick = () => opts.onProgress?.(++done, total);
  const matrix = (name: string): Weight => {
    const w = toWeight(index.get(name)!, source);
    tick();
    return w;
  };
  const vector = (name: string): Float32Array => {
    const w = toWeight(index.get(name)!, source);
    tick();
    return w.dtype === 'f32' ? (w.data as Float32Array) : widenWeight(w);
  };
  const optional = (name: string) => (expected.has(name) ? vector(name) : undefined);
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
      qNorm: optional(`${p}self_attn.q_norm.weight`),
      kNorm: optional(`${p}self_attn.k_norm.weight`),
      gate: matrix(`${p}mlp.gate_proj.weight`),
      up: matrix(`${p}mlp.up_proj.weight`),
      down: matrix(`${p}mlp.down_proj.weight`),
    });
  }
  const finalNorm = vector('model.norm.weight');
  const lmHead = cfg.tieWordEmbeddings ? embed : matrix('lm_head.weight');
  return { embed, layers, finalNorm, lmHead };
}

function toWeight(t: TensorInfo, source: TensorByteSource): Weight {
  const buf = source.read(t.file, t.offset, t.byteLength);
  if (buf.byteLength !== t.byteLength) throw new CheckpointError(`${basename(t.file)}: tensor ${t.name}: read ${buf.byteLength} of ${t.byteLength} bytes`);
  const rows = t.shape.length === 2 ? t.shape[0]! : 1;
  const cols = t.shape.length === 2 ? t.shape[1]! : t.shape.reduce((a, b) => a * b, 1);
  const data = t.dtype === 'F32' ? new Float32Array(buf) : new Uint16Array(buf);
  return { name: t.name, dtype: t.dtype === 'F32' ? 'f32' : t.dtype === 'BF16' ? 'bf16' : 'f16', rows, cols, data };
}
