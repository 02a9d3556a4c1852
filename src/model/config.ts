import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RopeTable } from '../tensor/backend.ts';

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
  /** q/k/v projections carry biases (qwen2, or llama with attention_bias). */
  attentionBias: boolean;
  /** Per-head RMSNorm on queries and keys before RoPE (qwen3). */
  qkNorm: boolean;
}

export class ConfigError extends Error {}

export function loadModelConfig(dir: string): ModelConfig {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) throw new ConfigError(`config.json not found in ${dir}`);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ConfigError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  return parseModelConfig(json, path);
}

export function parseModelConfig(json: unknown, source: string): ModelConfig {
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new ConfigError(`${source}: expected a JSON object`);
  const c = json as Record<string, unknown>;
  const type = c.model_type;
  if (typeof type !== 'string' || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(type)) {
    throw new ConfigError(`${source}: unknown architecture model_type ${JSON.stringify(type)}; supported: ${SUPPORTED_MODEL_TYPES.join(', ')}`);
  }
  const int = (key: string, fallback?: number): number => {
    const v = c[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new ConfigError(`${source}: ${key} must be a positive integer, got ${JSON.stringify(c[key])}`);
    return v;
  };
  const num = (key: string, fallback: number): number => {
    const v = c[key] ?? fallback;
    if (typeof v !== 'number' || !(v > 0)) throw new ConfigError(`${source}: ${key} must be a positive number, got ${JSON.stringify(c[key])}`);
    return v;
  };
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) throw new ConfigError(`${source}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  const headDim = int('head_dim', Math.floor(hiddenSize / numHeads));
  if (headDim % 2) throw new ConfigError(`${source}: head_dim ${headDim} must be even for RoPE`);
  const modelType = type as ModelType;
  return {
    modelType,
    vocabSize: int('vocab_size'),
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    ropeScaling: parseRopeScaling(c.rope_scaling, source),
    maxPositionEmbeddings: int('max_position_embeddings', 4096),
    tieWordEmbeddings: c.tie_word_embeddings === true,
    attentionBias: modelType === 'qwen2' || c.attention_bias === true,
    qkNorm: modelType === 'qwen3',
  };
}

function parseRopeScaling(v: unknown, source: string): Llama3RopeScaling | null {
  if (v === null || v === undefined) return null;
  if (typeof v !== 'object') throw new ConfigError(`${source}: rope_scaling must be an object or null`);
  const r = v as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  if (type === 'default') return null;
  if (type !== 'llama3') throw new ConfigError(`${source}: unsupported rope_scaling type ${JSON.stringify(type)} (supported: llama3)`);
  const n = (k: string) => {
    if (typeof r[k] !== 'number') throw new ConfigError(`${source}: rope_scaling.${k} must be a number`);
    return r[k] as number;
  };
  return {
    type: 'llama3',
    factor: n('factor'),
    lowFreqFactor: n('low_freq_factor'),
    highFreqFactor: n('high_freq_factor'),
    originalMaxPositionEmbeddings: n('original_max_position_embeddings'),
  };
}

/** inv_freq_i = theta^(-2i/d) in fp32 as HF computes it, with the llama3 frequency scaling when configured. */
export function buildRopeTable(cfg: ModelConfig): RopeTable {
  const d = cfg.headDim;
  const invFreq = new Float32Array(d / 2);
  for (let i = 0; i < d / 2; i++) invFreq[i] = 1 / Math.pow(cfg.ropeTheta, Math.fround((2 * i) / d));
  const s = cfg.ropeScaling;
  if (s) {
    const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < invFreq.length; i++) {
      const f = invFreq[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowWavelen) invFreq[i] = f / s.factor;
      else if (wavelen >= highWavelen) {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        invFreq[i] = (1 - smooth) * (f / s.factor) + smooth * f;
      }
    }
  }
  return { headDim: d, invFreq, attentionScaling: 1 };
}
