import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { loadModelConfig, parseModelConfig, type ModelConfig } from '../src/model/config.ts';
import { expectedTensors } from '../src/model/weights.ts';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * The config.json files of real checkpoints, as their publishers ship them (models/hub-configs), parse
 * into the shapes those models have: per-field values, the tensor shapes the loader will demand, and the
 * parameter count each model card publishes (an independent figure the shapes must add up to).
 */

const FIXTURES = fileURLToPath(new URL('../models/hub-configs/', import.meta.url));
const load = (name: string): ModelConfig => parseModelConfig(JSON.parse(readFileSync(`${FIXTURES}${name}.json`, 'utf8')), `${name}/config.json`);

function parameterCount(cfg: ModelConfig): number {
  let n = 0;
  for (const dims of expectedTensors(cfg).values()) n += dims.reduce((a, b) => a * b, 1);
  return n;
}

test('Llama-3.2-1B-Instruct: llama3 rope scaling, tied embeddings, GQA 32/8 heads of 64', () => {
  const cfg = load('Llama-3.2-1B-Instruct');
  assert.equal(cfg.modelType, 'llama');
  assert.deepEqual([cfg.vocabSize, cfg.hiddenSize, cfg.intermediateSize, cfg.numLayers, cfg.numHeads, cfg.numKvHeads, cfg.headDim], [128256, 2048, 8192, 16, 32, 8, 64]);
  assert.deepEqual(cfg.ropeScaling, { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  assert.equal(cfg.ropeTheta, 500000);
  assert.equal(cfg.tieWordEmbeddings, true);
  assert.deepEqual(cfg.eosTokenIds, [128001, 128008, 128009]);
  assert.equal(cfg.bosTokenId, 128000);
  const t = expectedTensors(cfg);
  assert.deepEqual(t.get('model.layers.0.self_attn.k_proj.weight'), [512, 2048]);
  assert.equal(t.has('lm_head.weight'), false);
  assert.equal(parameterCount(cfg), 1_235_814_400);
});

test('Qwen2.5-0.5B-Instruct: q/k/v biases, window declared but unused, tied', () => {
  const cfg = load('Qwen2.5-0.5B-Instruct');
  assert.equal(cfg.modelType, 'qwen2');
  assert.deepEqual([cfg.vocabSize, cfg.hiddenSize, cfg.intermediateSize, cfg.numLayers, cfg.numHeads, cfg.numKvHeads, cfg.headDim], [151936, 896, 4864, 24, 14, 2, 64]);
  assert.equal(cfg.slidingWindow, null, 'use_sliding_window is false');
  assert.equal(cfg.attentionBias, true);
  assert.equal(cfg.attentionOutputBias, false);
  const t = expectedTensors(cfg);
  assert.deepEqual(t.get('model.layers.23.self_attn.k_proj.bias'), [128]);
  assert.equal(t.has('model.layers.0.self_attn.o_proj.bias'), false);
  assert.equal(parameterCount(cfg), 494_032_768);
});

test('Qwen3-0.6B: q/k norms, head_dim 128 over a hidden size of 1024 with 16 heads', () => {
  const cfg = load('Qwen3-0.6B');
  assert.equal(cfg.modelType, 'qwen3');
  assert.deepEqual([cfg.vocabSize, cfg.hiddenSize, cfg.intermediateSize, cfg.numLayers, cfg.numHeads, cfg.numKvHeads, cfg.headDim], [151936, 1024, 3072, 28, 16, 8, 128]);
  assert.equal(cfg.qkNorm, true);
  assert.equal(cfg.attentionBias, false);
  assert.equal(cfg.maxPositionEmbeddings, 40960);
  const t = expectedTensors(cfg);
  assert.deepEqual(t.get('model.layers.0.self_attn.q_proj.weight'), [2048, 1024]);
  assert.deepEqual(t.get('model.layers.0.self_attn.o_proj.weight'), [1024, 2048]);
  assert.deepEqual(t.get('model.layers.0.self_attn.q_norm.weight'), [128]);
  assert.equal(parameterCount(cfg), 596_049_920);
});

test('Mistral-7B-Instruct-v0.3: untied, 32768 vocabulary, no window (v0.3 ships sliding_window null)', () => {
  const cfg = load('Mistral-7B-Instruct-v0.3');
  assert.equal(cfg.modelType, 'mistral');
  assert.deepEqual([cfg.vocabSize, cfg.hiddenSize, cfg.intermediateSize, cfg.numLayers, cfg.numHeads, cfg.numKvHeads, cfg.headDim], [32768, 4096, 14336, 32, 32, 8, 128]);
  assert.equal(cfg.tieWordEmbeddings, false);
  assert.equal(cfg.slidingWindow, null);
  assert.equal(cfg.ropeTheta, 1e6);
  assert.deepEqual(expectedTensors(cfg).get('lm_head.weight'), [32768, 4096]);
  assert.equal(parameterCount(cfg), 7_248_023_552);
  // Mistral 7B v0.1 shipped sliding_window 4096: the same config with it set applies it.
  const v01 = parseModelConfig({ ...JSON.parse(readFileSync(`${FIXTURES}Mistral-7B-Instruct-v0.3.json`, 'utf8')), sliding_window: 4096 }, 'v0.1');
  assert.equal(v01.slidingWindow, 4096);
});

test('SmolLM2-135M-Instruct: a llama with 9 heads over 3 KV heads, tied, no rope scaling', () => {
  const cfg = load('SmolLM2-135M-Instruct');
  assert.equal(cfg.modelType, 'llama');
  assert.deepEqual([cfg.vocabSize, cfg.hiddenSize, cfg.intermediateSize, cfg.numLayers, cfg.numHeads, cfg.numKvHeads, cfg.headDim], [49152, 576, 1536, 30, 9, 3, 64]);
  assert.equal(cfg.ropeScaling, null);
  assert.equal(cfg.ropeTheta, 100000);
  assert.deepEqual([cfg.bosTokenId, cfg.eosTokenIds], [1, [2]]);
  assert.equal(parameterCount(cfg), 134_515_008);
});

test('a fixture folder loads through loadModelConfig like a checkpoint folder would', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-hub-'));
  try {
    copyFileSync(`${FIXTURES}Qwen3-0.6B.json`, join(dir, 'config.json'));
    assert.deepEqual(loadModelConfig(dir), load('Qwen3-0.6B'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
