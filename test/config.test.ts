import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { CheckpointError, ConfigError } from '../src/model/checkpoint-errors.ts';
import { buildRopeTable, loadModelConfig, parseModelConfig } from '../src/model/config.ts';

const EMBEDDED = fileURLToPath(new URL('../models/kvlab-tiny-chat', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'kvlab-config-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const base = { vocab_size: 4096, hidden_size: 256, intermediate_size: 512, num_hidden_layers: 2, num_attention_heads: 8, num_key_value_heads: 2 };
const parse = (extra: Record<string, unknown>) => parseModelConfig({ ...base, ...extra }, 'test-config.json');

test('the embedded llama config parses into every field (each read from its Hugging Face key)', () => {
  const raw = JSON.parse(readFileSync(join(EMBEDDED, 'config.json'), 'utf8'));
  const cfg = loadModelConfig(EMBEDDED);
  assert.equal(raw.model_type, 'llama');
  assert.deepEqual(cfg, {
    modelType: 'llama',
    vocabSize: raw.vocab_size,
    hiddenSize: raw.hidden_size,
    intermediateSize: raw.intermediate_size,
    numLayers: raw.num_hidden_layers,
    numHeads: raw.num_attention_heads,
    numKvHeads: raw.num_key_value_heads,
    headDim: raw.head_dim,
    rmsNormEps: raw.rms_norm_eps,
    ropeTheta: raw.rope_theta,
    ropeScaling: null,
    maxPositionEmbeddings: raw.max_position_embeddings,
    tieWordEmbeddings: true,
    attentionBias: false,
    attentionOutputBias: false,
    qkNorm: false,
    bosTokenId: raw.bos_token_id,
    eosTokenIds: [raw.eos_token_id],
    slidingWindow: null,
  });
  // The shipped model is a small GQA Llama: fewer KV heads than query heads, a whole number of query heads each.
  assert.ok(cfg.numKvHeads < cfg.numHeads && cfg.numHeads % cfg.numKvHeads === 0);
  assert.ok(cfg.vocabSize === 2048 && cfg.bosTokenId === 2046 && cfg.eosTokenIds[0] === 2047, 'the shipped tokenizer\'s ids');
});

test('defaults: kv heads = heads, head_dim = hidden / heads, theta 10000, eps 1e-6, untied, no token ids', () => {
  const cfg = parseModelConfig({ ...base, model_type: 'llama', num_key_value_heads: undefined }, 'x');
  assert.equal(cfg.numKvHeads, 8);
  assert.equal(cfg.headDim, 32);
  assert.equal(cfg.ropeTheta, 10000);
  assert.equal(cfg.rmsNormEps, 1e-6);
  assert.equal(cfg.maxPositionEmbeddings, 2048);
  assert.equal(cfg.tieWordEmbeddings, false);
  assert.equal(cfg.bosTokenId, null);
  assert.deepEqual(cfg.eosTokenIds, []);
});

test('llama attention_bias puts biases on q, k, v and o', () => {
  const cfg = parse({ model_type: 'llama', attention_bias: true });
  assert.equal(cfg.attentionBias, true);
  assert.equal(cfg.attentionOutputBias, true);
  assert.equal(parse({ model_type: 'llama', attention_bias: false }).attentionBias, false);
});

test('mistral: the sliding window is applied (all layers), no biases', () => {
  const cfg = parse({ model_type: 'mistral', sliding_window: 4096, attention_bias: true, eos_token_id: 2 });
  assert.equal(cfg.slidingWindow, 4096);
  assert.equal(cfg.attentionBias, false);
  assert.equal(cfg.attentionOutputBias, false);
  assert.equal(cfg.maxPositionEmbeddings, 131072);
  assert.equal(parse({ model_type: 'mistral', sliding_window: null }).slidingWindow, null);
});

test('qwen2: q/k/v biases always, no o bias; sliding window only when used; eos may be a list', () => {
  const cfg = parse({ model_type: 'qwen2', sliding_window: 32768, use_sliding_window: false, eos_token_id: [7, 9], tie_word_embeddings: true });
  assert.equal(cfg.attentionBias, true);
  assert.equal(cfg.attentionOutputBias, false);
  assert.equal(cfg.qkNorm, false);
  assert.equal(cfg.slidingWindow, null);
  assert.deepEqual(cfg.eosTokenIds, [7, 9]);
  assert.equal(cfg.tieWordEmbeddings, true);
  assert.throws(() => parse({ model_type: 'qwen2', sliding_window: 4096, use_sliding_window: true }), /test-config\.json: use_sliding_window true is not supported for qwen2/);
});

test('quantized checkpoints are refused early, naming the config field', () => {
  assert.throws(() => parse({ model_type: 'llama', quantization_config: { quant_method: 'gptq', bits: 4 } }), /test-config\.json: quantization_config "gptq" is not supported: quantized checkpoint formats/);
  assert.throws(() => parse({ model_type: 'qwen2', quantization_config: { quant_method: 'fp8' } }), /quantization_config "fp8"/);
  assert.throws(() => parse({ model_type: 'llama', quantization: { bits: 8, group_size: 64, mode: 'affine' } }), /quantization "affine" is not supported/);
  assert.equal(parse({ model_type: 'llama', quantization_config: null }).modelType, 'llama');
});

test('transformers v5 layer_types must all be the attention kind the model runs', () => {
  assert.equal(parse({ model_type: 'qwen2', layer_types: ['full_attention', 'full_attention'] }).slidingWindow, null);
  assert.throws(() => parse({ model_type: 'qwen2', layer_types: ['full_attention', 'sliding_attention'] }), /layer_types\[1\] "sliding_attention" is not supported here \(every layer must be full_attention\)/);
  assert.equal(parse({ model_type: 'mistral', sliding_window: 16, layer_types: ['sliding_attention', 'sliding_attention'] }).slidingWindow, 16);
});

test('qwen3: q/k norms and an explicit head_dim that is not hidden / heads', () => {
  const cfg = parse({ model_type: 'qwen3', head_dim: 128 });
  assert.equal(cfg.qkNorm, true);
  assert.equal(cfg.headDim, 128);
  assert.equal(cfg.attentionBias, false);
  assert.equal(parse({ model_type: 'qwen3', attention_bias: true }).attentionOutputBias, true);
  // Hugging Face's Qwen3Config defaults head_dim to 128 rather than hidden / heads.
  assert.equal(parse({ model_type: 'qwen3' }).headDim, 128);
});

test('rope_scaling: rope_type or type key, "default" means none, other types are refused by name', () => {
  const llama3 = { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
  const expected = { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
  assert.deepEqual(parse({ model_type: 'llama', rope_scaling: { rope_type: 'llama3', ...llama3 } }).ropeScaling, expected);
  assert.deepEqual(parse({ model_type: 'llama', rope_scaling: { type: 'llama3', ...llama3 } }).ropeScaling, expected);
  assert.equal(parse({ model_type: 'llama', rope_scaling: { rope_type: 'default' } }).ropeScaling, null);
  assert.throws(() => parse({ model_type: 'llama', rope_scaling: { rope_type: 'yarn', factor: 4 } }), /test-config\.json: unsupported rope_scaling type "yarn"/);
  assert.throws(() => parse({ model_type: 'llama', rope_scaling: { type: 'linear', factor: 2 } }), /unsupported rope_scaling type "linear"/);
  assert.throws(() => parse({ model_type: 'llama', rope_scaling: { rope_type: 'llama3', factor: 8 } }), /rope_scaling\.low_freq_factor must be a positive number/);
  assert.throws(() => parse({ model_type: 'llama', rope_scaling: 'llama3' }), /rope_scaling must be an object or null/);
});

test('transformers v5 rope_parameters are read when rope_scaling is absent', () => {
  const cfg = parse({ model_type: 'llama', rope_parameters: { rope_type: 'default', rope_theta: 500000 } });
  assert.equal(cfg.ropeTheta, 500000);
  assert.equal(cfg.ropeScaling, null);
});

test('unknown model_type is named, with the supported list', () => {
  assert.throws(
    () => parse({ model_type: 'gpt2' }),
    (e: Error) => e instanceof ConfigError && e instanceof CheckpointError && /test-config\.json: unknown architecture model_type "gpt2"; supported: llama, mistral, qwen2, qwen3/.test(e.message),
  );
  assert.throws(() => parse({}), /unknown architecture model_type undefined/);
});

test('bad sizes and inconsistent heads are named', () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ hidden_size: undefined }, /hidden_size must be a positive integer, got nothing/],
    [{ hidden_size: 0 }, /hidden_size must be a positive integer, got 0/],
    [{ vocab_size: -5 }, /vocab_size must be a positive integer, got -5/],
    [{ intermediate_size: 12.5 }, /intermediate_size must be a positive integer, got 12.5/],
    [{ num_hidden_layers: '2' }, /num_hidden_layers must be a positive integer, got "2"/],
    [{ num_key_value_heads: 3 }, /num_attention_heads 8 is not a multiple of num_key_value_heads 3/],
    [{ hidden_size: 250 }, /hidden_size 250 is not a multiple of num_attention_heads 8/],
    [{ head_dim: 31 }, /head_dim 31 must be even/],
    [{ rms_norm_eps: 0 }, /rms_norm_eps must be a positive number/],
    [{ rope_theta: -1 }, /rope_theta must be a positive number/],
    [{ eos_token_id: 4096 }, /eos_token_id 4096 is not a token id below vocab_size 4096/],
    [{ bos_token_id: -1 }, /bos_token_id -1 is not a token id/],
    [{ hidden_act: 'gelu' }, /hidden_act "gelu" is not supported/],
    [{ mlp_bias: true }, /mlp_bias is not supported/],
  ];
  for (const [extra, pattern] of cases) {
    assert.throws(() => parse({ model_type: 'llama', ...extra }), pattern, JSON.stringify(extra));
  }
  assert.throws(() => parseModelConfig([1, 2], 'arr.json'), /arr\.json: expected a JSON object/);
});

test('loadModelConfig names a missing or malformed config.json', () => {
  const empty = join(scratch, 'empty');
  mkdirSync(empty);
  assert.throws(() => loadModelConfig(empty), /config\.json not found: .*empty\/config\.json/);
  const broken = join(scratch, 'broken');
  mkdirSync(broken);
  writeFileSync(join(broken, 'config.json'), '{"model_type": "llama",');
  assert.throws(() => loadModelConfig(broken), /broken\/config\.json is not valid JSON/);
  writeFileSync(join(broken, 'config.json'), JSON.stringify({ ...base, model_type: 'falcon' }));
  assert.throws(() => loadModelConfig(broken), /broken\/config\.json: unknown architecture model_type "falcon"/);
});

test('rope table without scaling: inv_freq_i = theta^(-2i/d), rounded to fp32', () => {
  const t = buildRopeTable(parse({ model_type: 'llama', head_dim: 64 }));
  assert.equal(t.headDim, 64);
  assert.equal(t.invFreq.length, 32);
  assert.equal(t.attentionScaling, 1);
  assert.equal(t.invFreq[0], 1);
  // 10000^(-1/32) = 0.74989420933...
  assert.equal(t.invFreq[1], Math.fround(0.7498942093324559));
  for (let i = 1; i < 32; i++) assert.ok(t.invFreq[i]! < t.invFreq[i - 1]!);
});

test('llama3 rope scaling matches a hand computation (Llama 3.2 parameters)', () => {
  const cfg = parse({
    model_type: 'llama',
    head_dim: 64,
    rope_theta: 500000,
    rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  });
  const scaled = buildRopeTable(cfg).invFreq;
  const plain = buildRopeTable({ ...cfg, ropeScaling: null }).invFreq;
  // Wavelength 2π / inv_freq against 8192 / 4 = 2048 and 8192 / 1 = 8192:
  //  i = 14: 500000^(-28/64) = 0.0032114460, wavelength 1956.5 < 2048 -> kept
  //  i = 16: 500000^(-1/2) = 0.0014142136, wavelength 4442.9 -> smooth = (8192 / 4442.88 - 1) / 3 = 0.2812826,
  //          inv = (1 - smooth) * inv / 32 + smooth * inv = 0.00042955680
  //  i = 18: 500000^(-36/64) = 0.00062277242, wavelength 10089 > 8192 -> inv / 32 = 1.9461638e-5
  const close = (actual: number, expected: number) => assert.ok(Math.abs(actual - expected) <= 1e-6 * expected, `${actual} vs ${expected}`);
  close(scaled[14]!, 0.003211445994752591);
  close(scaled[15]!, 0.001290547928209264);
  close(scaled[16]!, 0.00042955679655936815);
  close(scaled[17]!, 9.70828780262767e-5);
  close(scaled[18]!, 1.9461638184831125e-5);
  for (let i = 0; i < 15; i++) assert.equal(scaled[i], plain[i], `high frequency ${i} unchanged`);
  for (let i = 18; i < 32; i++) assert.equal(scaled[i], Math.fround(plain[i]! / 32), `low frequency ${i} divided by the factor`);
  for (let i = 15; i < 18; i++) assert.ok(scaled[i]! < plain[i]! && scaled[i]! > plain[i]! / 32, `medium frequency ${i} interpolated`);
});
