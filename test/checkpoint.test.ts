import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DEFAULT_MODEL_DIR, loadModel } from '../src/engine/loaded-model.ts';
import { buildRopeTable, parseModelConfig } from '../src/model/config.ts';
import { loadWeights } from '../src/model/weights.ts';
import { loadModelConfig } from '../src/model/config.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';

const scratch = mkdtempSync(join(tmpdir(), 'kvlab-ckpt-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
const original = readFileSync(join(DEFAULT_MODEL_DIR, 'model.safetensors'));
const headerLen = Number(original.readBigUInt64LE(0));
const header = JSON.parse(original.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
const data = original.subarray(8 + headerLen);
let n = 0;

/** A copy of the embedded model folder whose safetensors file is the given bytes (and config, if given). */
function checkpoint(bytes: Buffer, config?: Record<string, unknown>): string {
  const dir = join(scratch, `c${n++}`);
  mkdirSync(dir, { recursive: true });
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) copyFileSync(join(DEFAULT_MODEL_DIR, f), join(dir, f));
  const cfg = config ?? JSON.parse(readFileSync(join(DEFAULT_MODEL_DIR, 'config.json'), 'utf8'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
  writeFileSync(join(dir, 'model.safetensors'), bytes);
  return dir;
}

function withHeader(h: unknown, body: Buffer = data): Buffer {
  const text = Buffer.from(JSON.stringify(h));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([len, text, body]);
}

const load = (dir: string) => loadWeights(dir, loadModelConfig(dir));

test('the embedded checkpoint loads with the config’s shapes and a tied LM head', () => {
  const cfg = loadModelConfig(DEFAULT_MODEL_DIR);
  const w = loadWeights(DEFAULT_MODEL_DIR, cfg);
  assert.equal(w.layers.length, cfg.numLayers);
  assert.equal(w.embed.dtype, 'bf16');
  assert.deepEqual([w.layers[0]!.wk.rows, w.layers[0]!.wk.cols], [cfg.numKvHeads * cfg.headDim, cfg.hiddenSize]);
  assert.equal(w.lmHead, w.embed);
});

const cases: [string, () => Buffer | string, RegExp][] = [
  ['truncated file', () => original.subarray(0, original.length - 1000), /out of range|truncated/],
  ['file shorter than the header length field', () => original.subarray(0, 5), /truncated/],
  ['header length zero', () => Buffer.concat([Buffer.alloc(8), data]), /bad header length 0/],
  ['header length beyond the file', () => { const b = Buffer.from(original); b.writeBigUInt64LE(BigInt(original.length * 2), 0); return b; }, /past the end|bad header length/],
  ['header that is not JSON', () => { const b = Buffer.from(original); b.write('{{{{', 8); return b; }, /not valid JSON/],
  ['offsets out of range', () => withHeader({ ...header, 'model.norm.weight': { ...header['model.norm.weight']!, data_offsets: [data.length - 2, data.length + 510] } }), /model\.norm\.weight.*out of range/],
  ['overlapping tensors', () => {
    const a = header['model.layers.0.input_layernorm.weight']!;
    return withHeader({ ...header, 'model.layers.0.post_attention_layernorm.weight': { ...a } });
  }, /overlap/],
  ['unsupported dtype', () => withHeader({ ...header, 'model.norm.weight': { ...header['model.norm.weight']!, dtype: 'I64' } }), /model\.norm\.weight.*unsupported dtype "I64"|unsupported dtype "I64"/],
  ['byte size that does not match the dtype and shape', () => withHeader({ ...header, 'model.norm.weight': { ...header['model.norm.weight']!, dtype: 'F32' } }), /model\.norm\.weight.*bytes/],
  ['shape that does not match the config', () => {
    const e = header['model.norm.weight']!;
    return withHeader({ ...header, 'model.norm.weight': { ...e, shape: [e.shape[0]! / 2, 2] } });
  }, /model\.norm\.weight has shape \[128, 2\], config expects \[256\]/],
  ['missing tensor', () => { const h = { ...header }; delete h['model.layers.3.mlp.up_proj.weight']; return withHeader(h); }, /missing tensor.*model\.layers\.3\.mlp\.up_proj\.weight/],
  ['unexpected tensor', () => withHeader({ ...header, 'model.layers.9.extra.weight': { ...header['model.norm.weight']!, data_offsets: [data.length, data.length] , shape: [0] } }), /unexpected tensor.*model\.layers\.9\.extra\.weight/],
];

for (const [name, make, pattern] of cases) {
  test(`malformed checkpoint: ${name} gives a clear error`, () => {
    const dir = checkpoint(make() as Buffer);
    assert.throws(() => load(dir), (e: Error) => {
      assert.match(e.message, pattern);
      assert.match(e.message, /model\.safetensors|tensor|in \//);
      return true;
    });
  });
}

test('unknown model_type and bad config values are named', () => {
  const cfg = JSON.parse(readFileSync(join(DEFAULT_MODEL_DIR, 'config.json'), 'utf8'));
  assert.throws(() => parseModelConfig({ ...cfg, model_type: 'gpt2' }, 'config.json'), /unknown architecture model_type "gpt2"; supported: llama, mistral, qwen2, qwen3/);
  assert.throws(() => parseModelConfig({ ...cfg, num_key_value_heads: 3 }, 'config.json'), /not a multiple/);
  assert.throws(() => parseModelConfig({ ...cfg, hidden_size: -1 }, 'config.json'), /hidden_size must be a positive integer/);
  assert.throws(() => parseModelConfig({ ...cfg, rope_scaling: { type: 'yarn', factor: 4 } }, 'config.json'), /unsupported rope_scaling type "yarn"/);
  const dir = checkpoint(original, { ...cfg, model_type: 'falcon' });
  assert.throws(() => loadModel(dir, { backend: new ReferenceBackend() }), /unknown architecture model_type "falcon"/);
});

test('config families: qwen2 biases, qwen3 q/k norms and explicit head_dim, llama3 rope scaling', () => {
  const base = { vocab_size: 100, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 };
  assert.equal(parseModelConfig({ ...base, model_type: 'qwen2' }, 'x').attentionBias, true);
  const q3 = parseModelConfig({ ...base, model_type: 'qwen3', head_dim: 32 }, 'x');
  assert.equal(q3.qkNorm, true);
  assert.equal(q3.headDim, 32);
  assert.equal(parseModelConfig({ ...base, model_type: 'mistral' }, 'x').headDim, 16);
  const l3 = parseModelConfig(
    { ...base, model_type: 'llama', rope_theta: 500000, head_dim: 64, rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } },
    'x',
  );
  const table = buildRopeTable(l3);
  // i = 0: wavelength 2π < 8192/4, unchanged; i = 31: wavelength > 8192, divided by the factor.
  assert.equal(table.invFreq[0], 1);
  const raw31 = 1 / Math.pow(500000, Math.fround(62 / 64));
  assert.ok(Math.abs(table.invFreq[31]! - raw31 / 32) / (raw31 / 32) < 1e-6);
  // a medium frequency is interpolated between the two
  const i = 20;
  const raw = 1 / Math.pow(500000, Math.fround((2 * i) / 64));
  assert.ok(table.invFreq[i]! <= raw && table.invFreq[i]! >= raw / 32);
});

test('a sharded checkpoint loads exactly like the single file', () => {
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const halves = [names.slice(0, names.length / 2), names.slice(names.length / 2)];
  const dir = checkpoint(original);
  rmSync(join(dir, 'model.safetensors'));
  const weightMap: Record<string, string> = {};
  halves.forEach((part, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    let offset = 0;
    const h: Record<string, unknown> = {};
    const bodies: Buffer[] = [];
    for (const name of part) {
      const e = header[name]!;
      const bytes = data.subarray(e.data_offsets[0], e.data_offsets[1]);
      h[name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + bytes.length] };
      offset += bytes.length;
      bodies.push(bytes);
      weightMap[name] = file;
    }
    writeFileSync(join(dir, file), withHeader(h, Buffer.concat(bodies)));
  });
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  const a = loadWeights(DEFAULT_MODEL_DIR, loadModelConfig(DEFAULT_MODEL_DIR));
  const b = load(dir);
  assert.deepEqual(b.layers[5]!.down.data, a.layers[5]!.down.data);
  assert.deepEqual(b.embed.data, a.embed.data);
  assert.deepEqual(b.finalNorm, a.finalNorm);
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { ...weightMap, 'model.norm.weight': 'model-00009-of-00002.safetensors' } }));
  assert.throws(() => load(dir), /model-00009-of-00002\.safetensors: file not found/);
});
