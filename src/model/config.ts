import { join } from 'node:path';
import type { RopeTable } from '../tensor/backend.ts';
import { ConfigError } from './checkpoint-errors.ts';
import { readRegularText } from './regular-file.ts';

export { ConfigError };

export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral', 'qwen2', 'qwen3'] as const;
export type ModelType = (typeof SUPPORTED_MODEL_TYPES)[number];

export interface Llama3RopeScaling {
  type: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface ModelConfig {
  modelType: ModelType;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: Llama3RopeScaling | null;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry biases (always for qwen2; llama and qwen3 when attention_bias is set). */
  attentionBias: boolean;
  /** o_proj carries a bias (llama and qwen3 when attention_bias is set; never qwen2 or mistral). */
  attentionOutputBias: boolean;
  /** Per-head RMSNorm on queries and keys before RoPE (qwen3). */
  qkNorm: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  /**
   * Mistral's sliding window, applied in every layer: a query at position p attends to the keys at positions
   * p - slidingWindow < pos <= p (positions, not cache indices, so eviction leaves it unchanged). null: full attention.
   */
  slidingWindow: number | null;
}

/** Hugging Face's defaults for keys a config.json may leave out (each *Config class's constructor defaults). */
const DEFAULT_MAX_POSITIONS: Record<ModelType, number> = { llama: 2048, mistral: 4096 * 32, qwen2: 32768, qwen3: 32768 };
const QWEN3_DEFAULT_HEAD_DIM = 128;

export function loadModelConfig(dir: string): ModelConfig {
  const path = join(dir, 'config.json');
  const text = readRegularText(path, 'config.json', (msg) => new ConfigError(msg));
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  return parseModelConfig(json, path);
}

/** Validates a Hugging Face config.json object; `source` names it in errors. */
export function parseModelConfig(json: unknown, source: string): ModelConfig {
  if (!isObject(json)) throw new ConfigError(`${source}: expected a JSON object`);
  const c = json;
  const fail = (msg: string): never => {
    throw new ConfigError(`${source}: ${msg}`);
  };
  const type = c.model_type;
  if (typeof type !== 'string' || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(type)) {
    fail(`unknown architecture model_type ${JSON.stringify(type)}; supported: ${SUPPORTED_MODEL_TYPES.join(', ')}`);
  }
  const modelType = type as ModelType;
  const present = (key: string) => c[key] !== undefined && c[key] !== null;
  const int = (key: string, fallback?: number): number => {
    const v = present(key) ? c[key] : fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      fail(`${key} must be a positive integer, got ${present(key) ? JSON.stringify(c[key]) : 'nothing'}`);
    }
    return v as number;
  };
  const positive = (key: string, fallback: number): number => {
    const v = present(key) ? c[key] : fallback;
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) fail(`${key} must be a positive number, got ${JSON.stringify(c[key])}`);
    return v as number;
  };

  if (present('hidden_act') && c.hidden_act !== 'silu') fail(`hidden_act ${JSON.stringify(c.hidden_act)} is not supported (only silu)`);
  if (c.mlp_bias === true) fail('mlp_bias is not supported');
  rejectQuantized(c, fail);

  const vocabSize = int('vocab_size');
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) fail(`num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  if (!present('head_dim') && modelType !== 'qwen3' && hiddenSize % numHeads !== 0) {
    fail(`hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads} and no head_dim is given`);
  }
  const headDim = int('head_dim', modelType === 'qwen3' ? QWEN3_DEFAULT_HEAD_DIM : hiddenSize / numHeads);
  if (headDim % 2) fail(`head_dim ${headDim} must be even for RoPE`);

  const rope = isObject(c.rope_parameters) && !present('rope_scaling') ? c.rope_parameters : undefined;
  const ropeTheta = rope && rope.rope_theta !== undefined ? positiveIn(rope, 'rope_theta', 'rope_parameters', fail) : positive('rope_theta', 10000);
  const ropeScaling = parseRopeScaling(rope ?? c.rope_scaling, rope ? 'rope_parameters' : 'rope_scaling', fail);

  const biasFlag = c.attention_bias === true;
  const tokenId = (key: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= vocabSize) fail(`${key} ${JSON.stringify(v)} is not a token id below vocab_size ${vocabSize}`);
    return v as number;
  };
  const eos = c.eos_token_id;
  const eosTokenIds = eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos.map((v) => tokenId('eos_token_id', v)) : [tokenId('eos_token_id', eos)];
  // Qwen2/Qwen3 apply their window only to layers from max_window_layers on, a layout this engine does not run.
  if (modelType !== 'mistral' && c.use_sliding_window === true) {
    fail(`use_sliding_window true is not supported for ${modelType} (per-layer windows from max_window_layers); only mistral's all-layer window is`);
  }
  const slidingWindow = modelType === 'mistral' && present('sliding_window') ? int('sliding_window') : null;
  checkLayerTypes(c.layer_types, slidingWindow !== null, fail);

  return {
    modelType,
    vocabSize,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: positive('rms_norm_eps', 1e-6),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: int('max_position_embeddings', DEFAULT_MAX_POSITIONS[modelType]),
    tieWordEmbeddings: c.tie_word_embeddings === true,
    attentionBias: modelType === 'qwen2' || (biasFlag && modelType !== 'mistral'),
    attentionOutputBias: biasFlag && (modelType === 'llama' || modelType === 'qwen3'),
    qkNorm: modelType === 'qwen3',
    bosTokenId: present('bos_token_id') ? tokenId('bos_token_id', c.bos_token_id) : null,
    eosTokenIds,
    slidingWindow,
  };
}

/** Quantized checkpoints (GPTQ, AWQ, bitsandbytes, FP8, MLX) declare it in config.json; kvlab reads bf16/f16/f32 weights only. */
function rejectQuantized(c: Record<string, unknown>, fail: (msg: string) => never): void {
  for (const key of ['quantization_config', 'quantization']) {
    const q = c[key];
    if (q === undefined || q === null) continue;
    const method = isObject(q) ? (q.quant_method ?? q.mode ?? q.bits) : q;
    fail(`${key} ${JSON.stringify(method ?? q)} is not supported: quantized checkpoint formats cannot be loaded (use the bf16/f16/f32 checkpoint; --weights int8 quantizes at load)`);
  }
}

/** transformers v5 lists each layer's attention kind; every layer must be what the forward pass runs. */
function checkLayerTypes(v: unknown, sliding: boolean, fail: (msg: string) => never): void {
  if (v === undefined || v === null) return;
  if (!Array.isArray(v)) fail(`layer_types must be a list, got ${JSON.stringify(v)}`);
  const want = sliding ? 'sliding_attention' : 'full_attention';
  (v as unknown[]).forEach((t, i) => {
    if (t !== want) fail(`layer_types[${i}] ${JSON.stringify(t)} is not supported here (every layer must be ${want})`);
  });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function positiveIn(r: Record<string, unknown>, key: string, where: string, fail: (msg: string) => never): number {
  const v = r[key];
  if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) fail(`${where}.${key} must be a positive number, got ${JSON.stringify(v)}`);
  return v as number;
}

function parseRopeScaling(v: unknown, where: string, fail: (msg: string) => never): Llama3RopeScaling | null {
  if (v === null || v === undefined) return null;
  if (!isObject(v)) fail(`${where} must be an object or null`);
  const r = v as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  if (type === 'default') return null;
  if (type !== 'llama3') fail(`unsupported ${where} type ${JSON.stringify(type)} (supported: default, llama3)`);
  const n = (key: string) => positiveIn(r, key, where, fail);
  const s: Llama3RopeScaling = {
    type: 'llama3',
    factor: n('factor'),
    lowFreqFactor: n('low_freq_factor'),
    highFreqFactor: n('high_freq_factor'),
    originalMaxPositionEmbeddings: n('original_max_position_embeddings'),
  };
  if (s.highFreqFactor <= s.lowFreqFactor) fail(`${where}: high_freq_factor ${s.highFreqFactor} must exceed low_freq_factor ${s.lowFreqFactor}`);
  return s;
}

/**
 * RoPE inverse frequencies as Hugging Face computes them. HF works on fp32 tensors, so each tensor
 * operation is rounded to fp32 here (Math.fround) in the same order, with Python-float scalars
 * converted to fp32 as PyTorch does; `c / tensor` in PyTorch is `tensor.reciprocal() * c`. Only pow
 * may differ from PyTorch's vectorized powf, by at most an ulp.
 */
export function buildRopeTable(cfg: ModelConfig): RopeTable {
  const r = Math.fround;
  const d = cfg.headDim;
  const theta = r(cfg.ropeTheta);
  const invFreq = new Float32Array(d / 2);
  for (let i = 0; i < d / 2; i++) invFreq[i] = r(1 / r(Math.pow(theta, r((2 * i) / d))));
  const s = cfg.ropeScaling;
  if (s) {
    const lowFreqWavelen = r(s.originalMaxPositionEmbeddings / s.lowFreqFactor);
    const highFreqWavelen = r(s.originalMaxPositionEmbeddings / s.highFreqFactor);
    const twoPi = r(2 * Math.PI);
    const factor = r(s.factor);
    for (let i = 0; i < invFreq.length; i++) {
      const f = invFreq[i]!;
      const wavelen = r(r(1 / f) * twoPi);
      if (wavelen > lowFreqWavelen) {
        invFreq[i] = r(f / factor);
      } else if (!(wavelen < highFreqWavelen)) {
        const ratio = r(r(1 / wavelen) * r(s.originalMaxPositionEmbeddings));
        const smooth = r(r(ratio - r(s.lowFreqFactor)) / r(s.highFreqFactor - s.lowFreqFactor));
        invFreq[i] = r(r(r(r(1 - smooth) * f) / factor) + r(smooth * f));
      }
    }
  }
  return { headDim: d, invFreq, attentionScaling: 1 };
}
