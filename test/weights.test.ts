import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { loadModel } from '../src/engine/loaded-model.ts';
import { loadModelConfig, parseModelConfig } from '../src/model/config.ts';
import { RANDOM_SHAPES, writeRandomCheckpoint } from '../src/model/random-checkpoint.ts';
import { fileByteSource, type TensorByteSource } from '../src/model/safetensors.ts';
import { expectedTensors, loadWeights, type ModelWeights } from '../src/model/weights.ts';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../src/tensor/dtype.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';

const EMBEDDED = fileURLToPath(new URL('../models/kvlab-tiny-chat', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'kvlab-weights-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

type Entry = { dtype: string; shape: number[]; data_offsets: [number, number] };
const original = readFileSync(join(EMBEDDED, 'model.safetensors'));
const headerLen = Number(original.readBigUInt64LE(0));
const header = JSON.parse(original.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, Entry>;
const data = original.subarray(8 + headerLen);
const embeddedConfig = JSON.parse(readFileSync(join(EMBEDDED, 'config.json'), 'utf8')) as Record<string, unknown>;
// The embedded model's shape, so the expected messages follow whichever checkpoint is shipped.
const H = embeddedConfig.hidden_size as number;
const V = embeddedConfig.vocab_size as number;
const FF = embeddedConfig.intermediate_size as number;
const L = embeddedConfig.num_hidden_layers as number;
const QD = (embeddedConfig.num_attention_heads as number) * (embeddedConfig.head_dim as number);
const KV = (embeddedConfig.num_key_value_heads as number) * (embeddedConfig.head_dim as number);
const tensorBytes = (name: string) => data.subarray(header[name]!.data_offsets[0], header[name]!.data_offsets[1]);
let serial = 0;

function encode(h: unknown, body: Uint8Array = data): Buffer {
  const text = Buffer.from(JSON.stringify(h));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([len, text, body]);
}

/** Re-encodes the named tensors (or all) into a fresh, densely packed safetensors file. */
function repack(tensors: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }>): Buffer {
  const h: Record<string, Entry> = {};
  const bodies: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    h[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.length] };
    offset += t.bytes.length;
    bodies.push(t.bytes);
  }
  return encode(h, Buffer.concat(bodies));
}

const embeddedTensors = () =>
  Object.fromEntries(Object.entries(header).filter(([n]) => n !== '__metadata__').map(([n, e]) => [n, { dtype: e.dtype, shape: e.shape, bytes: tensorBytes(n) }]));

/** A checkpoint folder with the embedded config (or the given one) and the given weight file bytes. */
function folder(bytes: Uint8Array | null, config: Record<string, unknown> = embeddedConfig): string {
  const dir = join(scratch, `ckpt${serial++}`);
  mkdirSync(dir);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  if (bytes) writeFileSync(join(dir, 'model.safetensors'), bytes);
  return dir;
}

const load = (dir: string, source?: TensorByteSource) => loadWeights(dir, loadModelConfig(dir), { source });
const embedded = loadWeights(EMBEDDED, loadModelConfig(EMBEDDED));

test('the embedded model loads with the config’s shapes, bf16 matrices, fp32 vectors and a tied LM head', () => {
  const cfg = loadModelConfig(EMBEDDED);
  const w = embedded;
  const D = cfg.hiddenSize;
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  const dims = (x: { rows: number; cols: number }) => [x.rows, x.cols];
  assert.deepEqual(dims(w.embed), [cfg.vocabSize, D]);
  assert.equal(w.embed.dtype, 'bf16');
  assert.ok(w.embed.data instanceof Uint16Array);
  assert.equal(w.lmHead, w.embed);
  assert.equal(w.layers.length, cfg.numLayers);
  for (const [l, layer] of w.layers.entries()) {
    assert.deepEqual(
      [layer.wq, layer.wk, layer.wv, layer.wo, layer.gate, layer.up, layer.down].map(dims),
      [[q, D], [kv, D], [kv, D], [D, q], [cfg.intermediateSize, D], [cfg.intermediateSize, D], [D, cfg.intermediateSize]],
    );
    assert.equal(layer.wq.name, `model.layers.${l}.self_attn.q_proj.weight`);
    assert.equal(layer.wq.data.length, q * D);
    assert.ok(layer.inputNorm instanceof Float32Array && layer.inputNorm.length === D);
    assert.equal(layer.bq ?? layer.bk ?? layer.bv ?? layer.bo ?? layer.qNorm ?? layer.kNorm, undefined);
  }
  assert.equal(w.finalNorm.length, D);
  // Raw bits are kept for matrices and widened exactly for vectors.
  const raw = (name: string) => new Uint16Array(Uint8Array.from(tensorBytes(name)).buffer);
  assert.deepEqual(w.layers[3]!.up.data, raw('model.layers.3.mlp.up_proj.weight'));
  assert.deepEqual(w.layers[2]!.postAttnNorm, Float32Array.from(raw('model.layers.2.post_attention_layernorm.weight'), bf16ToF32));
  assert.deepEqual(w.finalNorm, Float32Array.from(raw('model.norm.weight'), bf16ToF32));
});

test('progress counts every tensor read', () => {
  const seen: [number, number][] = [];
  loadWeights(EMBEDDED, loadModelConfig(EMBEDDED), { onProgress: (d, t) => seen.push([d, t]) });
  const total = expectedTensors(loadModelConfig(EMBEDDED)).size;
  assert.equal(seen.length, total);
  assert.deepEqual(seen.at(-1), [total, total]);
});

test('bf16 and f16 conversions are exact; f32 -> bf16 rounds to nearest even', () => {
  const view = new DataView(new ArrayBuffer(4));
  for (let b = 0; b < 0x10000; b++) {
    view.setUint32(0, b << 16);
    const expected = view.getFloat32(0);
    const got = bf16ToF32(b);
    if (Number.isNaN(expected)) assert.ok(Number.isNaN(got));
    else {
      assert.ok(Object.is(got, expected), `bf16 ${b.toString(16)}`);
      assert.equal(f32ToBf16(got), b, `round trip ${b.toString(16)}`);
    }
    const h = f16ToF32(b);
    if (!Number.isNaN(h)) assert.ok(Object.is(Math.fround(h), h), `f16 ${b.toString(16)} representable in fp32`);
  }
  assert.equal(f16ToF32(0x3c00), 1);
  assert.equal(f16ToF32(0x3555), 0.333251953125);
  assert.equal(f16ToF32(0x0001), 2 ** -24);
  assert.equal(f16ToF32(0x03ff), 1023 * 2 ** -24);
  assert.equal(f16ToF32(0x7bff), 65504);
  assert.equal(f16ToF32(0xc000), -2);
  assert.ok(Object.is(f16ToF32(0x8000), -0));
  assert.equal(f16ToF32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16ToF32(0x7e00)));
  assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80, 'tie to even (down)');
  assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82, 'tie to even (up)');
  assert.equal(f32ToBf16(1 + 2 ** -8 + 2 ** -20), 0x3f81, 'above the tie rounds up');
  assert.equal(f32ToBf16(-(1 + 2 ** -8 + 2 ** -20)), 0xbf81);
  assert.equal(f32ToBf16(3.4028234663852886e38), 0x7f80, 'largest fp32 rounds to infinity');
  assert.equal(f32ToBf16(0.1), 0x3dcd);
  const nan = f32ToBf16(NaN);
  assert.ok(Number.isNaN(bf16ToF32(nan)));
  view.setUint32(0, 0x7fffffff);
  assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(view.getFloat32(0)))), 'a NaN never rounds into infinity');
});

const withEntry = (name: string, entry: Partial<Entry>) => encode({ ...header, [name]: { ...header[name]!, ...entry } });
const without = (name: string) => {
  const tensors = embeddedTensors();
  delete tensors[name];
  return repack(tensors);
};
const norm = header['model.norm.weight']!;

const malformed: [string, () => { bytes: Uint8Array; config?: Record<string, unknown> }, RegExp][] = [
  ['truncated file', () => ({ bytes: original.subarray(0, original.length - 1000) }), new RegExp(`model\\.safetensors: tensor model\\.\\S+: data_offsets \\[\\d+, \\d+\\] out of range: the data section has ${data.length - 1000} bytes \\(truncated file\\?\\)`)],
  ['too short for the length prefix', () => ({ bytes: original.subarray(0, 7) }), /model\.safetensors: truncated file \(7 bytes/],
  ['header length zero', () => ({ bytes: Buffer.concat([Buffer.alloc(8), data]) }), /model\.safetensors: bad header length 0 /],
  ['header length too big', () => {
    const b = Buffer.from(original);
    b.writeBigUInt64LE(1n << 40n, 0);
    return { bytes: b };
  }, /model\.safetensors: bad header length 1099511627776 /],
  ['header length past the end', () => {
    const b = Buffer.from(original);
    b.writeBigUInt64LE(BigInt(original.length), 0);
    return { bytes: b };
  }, /model\.safetensors: header length \d+ runs past the end of the file/],
  ['header not JSON', () => {
    const b = Buffer.from(original);
    b.write('{{{{', 8);
    return { bytes: b };
  }, /model\.safetensors: header is not valid JSON/],
  ['offsets out of range', () => ({ bytes: withEntry('model.norm.weight', { data_offsets: [data.length - 2, data.length - 2 + 2 * H] }) }), /tensor model\.norm\.weight: data_offsets .* out of range/],
  ['overlapping tensors', () => ({ bytes: withEntry('model.layers.0.post_attention_layernorm.weight', { data_offsets: header['model.layers.0.input_layernorm.weight']!.data_offsets }) }), /model\.safetensors: tensors model\.layers\.0\.input_layernorm\.weight .* and model\.layers\.0\.post_attention_layernorm\.weight .* overlap/],
  ['I64 dtype', () => ({ bytes: withEntry('model.norm.weight', { dtype: 'I64' }) }), /tensor model\.norm\.weight: unsupported dtype "I64"/],
  ['BF16 tensor of the wrong byte size', () => ({ bytes: withEntry('model.norm.weight', { shape: [norm.shape[0]! + 1] }) }), new RegExp(`tensor model\\.norm\\.weight: data_offsets .* hold ${2 * H} bytes but BF16 shape \\[${H + 1}\\] needs ${2 * H + 2}`)],
  ['shape that does not match the config', () => ({ bytes: withEntry('model.layers.1.self_attn.k_proj.weight', { shape: [H, KV] }) }), new RegExp(`model\\.safetensors: tensor model\\.layers\\.1\\.self_attn\\.k_proj\\.weight has shape \\[${H}, ${KV}\\], config expects \\[${KV}, ${H}\\]`)],
  ['config that does not match the checkpoint', () => ({ bytes: original, config: { ...embeddedConfig, intermediate_size: 2 * FF } }), new RegExp(`tensor model\\.layers\\.0\\.mlp\\.gate_proj\\.weight has shape \\[${FF}, ${H}\\], config expects \\[${2 * FF}, ${H}\\]`)],
  ['missing tensor', () => ({ bytes: without('model.layers.3.mlp.up_proj.weight') }), /missing tensor in .*: model\.layers\.3\.mlp\.up_proj\.weight$/],
  ['missing layers', () => ({ bytes: original, config: { ...embeddedConfig, num_hidden_layers: L + 2 } }), new RegExp(`config\\.json: num_hidden_layers is ${L + 2} but the checkpoint in .* holds tensors of ${L} layers \\(indices 0\\.\\.${L - 1}\\)`)],
  ['extra layers', () => ({ bytes: original, config: { ...embeddedConfig, num_hidden_layers: L - 1 } }), new RegExp(`config\\.json: num_hidden_layers is ${L - 1} but .* holds tensors of ${L} layers`)],
  ['a layer missing in the middle', () => ({ bytes: repack(Object.fromEntries(Object.entries(embeddedTensors()).filter(([n]) => !n.startsWith('model.layers.2.')))) }), new RegExp(`num_hidden_layers is ${L} but .* holds tensors of ${L - 1} layers \\(indices 0\\.\\.${L - 1}\\)`)],
  ['num_hidden_layers = 10^9 (checked against the tensors before anything is sized by it)', () => ({ bytes: original, config: { ...embeddedConfig, num_hidden_layers: 1e9 } }), new RegExp(`config\\.json: num_hidden_layers is 1000000000 but .* holds tensors of ${L} layers`)],
  ['missing untied lm_head', () => ({ bytes: original, config: { ...embeddedConfig, tie_word_embeddings: false } }), /missing tensor in .*: lm_head\.weight \(tie_word_embeddings is false/],
  ['unexpected tensor', () => ({ bytes: withEntry('model.layers.0.mlp.gate_proj.bias', { ...norm, shape: [0], data_offsets: [0, 0] }) }), /unexpected tensor in .* for a llama config: model\.layers\.0\.mlp\.gate_proj\.bias/],
  ['biases a plain llama does not have', () => ({ bytes: original, config: { ...embeddedConfig, model_type: 'qwen2' } }), /missing tensors in .*: model\.layers\.0\.self_attn\.q_proj\.bias/],
  ['unknown model_type', () => ({ bytes: original, config: { ...embeddedConfig, model_type: 'falcon' } }), /config\.json: unknown architecture model_type "falcon"; supported: llama, mistral, qwen2, qwen3/],
];

for (const [name, make, pattern] of malformed) {
  test(`malformed checkpoint: ${name}`, () => {
    const { bytes, config } = make();
    const dir = folder(bytes, config);
    assert.throws(() => load(dir), (e: Error) => {
      assert.equal(e.name === 'CheckpointError' || e.name === 'ConfigError', true, `${e.name}: ${e.message}`);
      assert.ok(e.message.includes(dir), `names the folder or file: ${e.message}`);
      assert.match(e.message, pattern);
      return true;
    });
  });
}

test('nothing is read before the whole tensor set is validated', () => {
  let reads = 0;
  let prepares = 0;
  const counting: TensorByteSource = {
    prepare: () => void prepares++,
    read: (file, offset, length) => (reads++, fileByteSource.read(file, offset, length)),
  };
  for (const bytes of [without('model.norm.weight'), withEntry('model.norm.weight', { shape: [128, 2] })]) {
    assert.throws(() => load(folder(bytes), counting), /model\.norm\.weight/);
  }
  assert.equal(reads + prepares, 0);
  load(folder(original), counting);
  assert.equal(reads, expectedTensors(loadModelConfig(EMBEDDED)).size);
  assert.equal(prepares, 1);
});

test('rotary inv_freq buffers are ignored; a stored lm_head is ignored when tied and used when not', () => {
  const tensors = embeddedTensors();
  const invFreq = { dtype: 'F32', shape: [32], bytes: new Uint8Array(128) };
  const lmHead = { ...tensors['model.embed_tokens.weight']!, bytes: Uint8Array.from(tensors['model.embed_tokens.weight']!.bytes).reverse() };
  const bytes = repack({ ...tensors, 'model.layers.0.self_attn.rotary_emb.inv_freq': invFreq, 'lm_head.weight': lmHead });
  const tied = load(folder(bytes));
  assert.equal(tied.lmHead, tied.embed);
  assert.deepEqual(tied.embed.data, embedded.embed.data);
  const untied = load(folder(bytes, { ...embeddedConfig, tie_word_embeddings: false }));
  assert.notEqual(untied.lmHead, untied.embed);
  assert.equal(untied.lmHead.name, 'lm_head.weight');
  assert.deepEqual(new Uint8Array(untied.lmHead.data.buffer, untied.lmHead.data.byteOffset, untied.lmHead.data.byteLength), lmHead.bytes);
  const badHead = repack({ ...tensors, 'lm_head.weight': { dtype: 'BF16', shape: [H, V], bytes: lmHead.bytes } });
  assert.throws(() => load(folder(badHead)), new RegExp(`tensor lm_head\\.weight has shape \\[${H}, ${V}\\], config expects \\[${V}, ${H}\\]`));
});

test('f32 and f16 tensors load: matrices keep their dtype, vectors become exact fp32', () => {
  // An F16 checkpoint (every BF16 tensor converted: BF16 and F16 are not mixed in one checkpoint) with some F32 tensors.
  const asF16 = (bytes: Uint8Array) => {
    const bf = new Uint16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    return new Uint8Array(Uint16Array.from(bf, (b) => f32ToF16(bf16ToF32(b))).buffer);
  };
  const tensors = Object.fromEntries(Object.entries(embeddedTensors()).map(([n, t]) => [n, t.dtype === 'BF16' ? { ...t, dtype: 'F16', bytes: asF16(t.bytes) } : t]));
  const q = 'model.layers.0.self_attn.q_proj.weight';
  const k = 'model.layers.0.self_attn.k_proj.weight';
  const qF32 = Float32Array.from(embedded.layers[0]!.wq.data as Uint16Array, bf16ToF32);
  const kF16 = new Uint16Array(KV * H).fill(0x3555);
  const normF16 = new Uint16Array(H).fill(0x3c00);
  normF16[7] = 0x3555;
  const normF32 = Float32Array.from({ length: H }, (_, i) => i / 3);
  const bytes = repack({
    ...tensors,
    [q]: { dtype: 'F32', shape: [QD, H], bytes: new Uint8Array(qF32.buffer) },
    [k]: { dtype: 'F16', shape: [KV, H], bytes: new Uint8Array(kF16.buffer) },
    'model.layers.0.input_layernorm.weight': { dtype: 'F16', shape: [H], bytes: new Uint8Array(normF16.buffer) },
    'model.norm.weight': { dtype: 'F32', shape: [H], bytes: new Uint8Array(normF32.buffer) },
  });
  const w = load(folder(bytes));
  assert.equal(w.layers[0]!.wq.dtype, 'f32');
  assert.deepEqual(w.layers[0]!.wq.data, qF32);
  assert.equal(w.layers[0]!.wk.dtype, 'f16');
  assert.deepEqual(w.layers[0]!.wk.data, kF16);
  assert.equal(w.layers[0]!.inputNorm[0], 1);
  assert.equal(w.layers[0]!.inputNorm[7], 0.333251953125);
  assert.deepEqual(w.finalNorm, normF32);
  assert.equal(w.layers[1]!.wq.dtype, 'f16');
});

function sameWeights(a: ModelWeights, b: ModelWeights) {
  assert.deepEqual(a.embed, b.embed);
  assert.deepEqual(a.finalNorm, b.finalNorm);
  assert.equal(a.layers.length, b.layers.length);
  a.layers.forEach((layer, i) => assert.deepEqual(layer, b.layers[i]));
  assert.equal(b.lmHead === b.embed, a.lmHead === a.embed);
}

test('a sharded checkpoint loads exactly like the single file', () => {
  const dir = folder(null);
  const names = Object.keys(embeddedTensors()).reverse();
  const tensors = embeddedTensors();
  const parts = [names.slice(0, 23), names.slice(23)];
  const weightMap: Record<string, string> = {};
  parts.forEach((part, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    writeFileSync(join(dir, file), repack(Object.fromEntries(part.map((n) => [n, tensors[n]!]))));
    for (const n of part) weightMap[n] = file;
  });
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: data.length }, weight_map: weightMap }));
  sameWeights(load(dir), embedded);
  delete weightMap['model.layers.4.mlp.down_proj.weight'];
  weightMap['model.layers.4.mlp.down_proj.weight'] = 'model-00003-of-00002.safetensors';
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
  assert.throws(() => load(dir), /shard model-00003-of-00002\.safetensors .*not found/);
});

test('a random tiny checkpoint round-trips: config, N(0, 0.02) weights, unit norms, seeded, written atomically', () => {
  const dir = join(scratch, 'random-tiny');
  let last = [0, 0];
  writeRandomCheckpoint('tiny', dir, { onProgress: (d, t) => (last = [d, t]) });
  assert.deepEqual(readdirSync(dir).sort(), ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
  assert.equal(last[0], last[1]);
  const cfg = loadModelConfig(dir);
  assert.deepEqual(cfg, parseModelConfig({ ...RANDOM_SHAPES.tiny, bos_token_id: 2046, eos_token_id: 2047 }, 'tiny'));
  const w = loadWeights(dir, cfg);
  assert.equal(w.lmHead, w.embed);
  assert.equal(w.embed.dtype, 'bf16');
  assert.ok(w.layers.every((l) => l.inputNorm.every((x) => x === 1) && l.postAttnNorm.every((x) => x === 1)));
  const values = Float32Array.from(w.layers[1]!.gate.data as Uint16Array, bf16ToF32);
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const std = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
  assert.ok(Math.abs(mean) < 0.001, `mean ${mean}`);
  assert.ok(Math.abs(std - 0.02) < 0.001, `std ${std}`);
  assert.ok(Math.max(...values.map(Math.abs)) < 0.02 * 2 * Math.sqrt(3) + 1e-3, 'bounded like a sum of four uniforms');
  const again = join(scratch, 'random-tiny-again');
  writeRandomCheckpoint('tiny', again);
  assert.deepEqual(readFileSync(join(again, 'model.safetensors')), readFileSync(join(dir, 'model.safetensors')));
  const reseeded = join(scratch, 'random-tiny-seed2');
  writeRandomCheckpoint('tiny', reseeded, { seed: 2 });
  assert.notDeepEqual(readFileSync(join(reseeded, 'model.safetensors')), readFileSync(join(dir, 'model.safetensors')));
  assert.throws(() => writeRandomCheckpoint('gpt-5', join(scratch, 'x')), /unknown shape "gpt-5"; known: qwen2\.5-0\.5b, llama-3\.2-1b, tiny/);
  assert.equal(existsSync(join(scratch, 'x', 'model.safetensors')), false);
});

test('random qwen2 and qwen3 checkpoints load with their biases and q/k norms', () => {
  const small = { vocab_size: 2048, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 };
  const q2 = join(scratch, 'random-qwen2');
  writeRandomCheckpoint({ ...small, model_type: 'qwen2', tie_word_embeddings: false }, q2);
  const w2 = load(q2);
  assert.equal(w2.layers[0]!.bq!.length, 64);
  assert.equal(w2.layers[0]!.bk!.length, 32);
  assert.equal(w2.layers[1]!.bv!.length, 32);
  assert.equal(w2.layers[0]!.bo, undefined);
  assert.notEqual(w2.lmHead, w2.embed);
  const q3 = join(scratch, 'random-qwen3');
  writeRandomCheckpoint({ ...small, model_type: 'qwen3', head_dim: 32, tie_word_embeddings: true }, q3);
  const w3 = load(q3);
  assert.deepEqual([w3.layers[0]!.wq.rows, w3.layers[0]!.wq.cols], [128, 64]);
  assert.deepEqual(w3.layers[1]!.kNorm, new Float32Array(32).fill(1));
  assert.equal(w3.layers[1]!.qNorm!.length, 32);
  assert.equal(w3.layers[0]!.bq, undefined);
});

test('the random tiny checkpoint runs end to end through loadModel', () => {
  const dir = join(scratch, 'random-tiny-run');
  writeRandomCheckpoint('tiny', dir);
  const lm = loadModel(dir, { backend: new ReferenceBackend(), mmap: false });
  const logits = lm.model.forward([1, 2, 3], lm.newCache())!;
  assert.equal(logits.length, 2048);
  assert.ok(logits.every(Number.isFinite));
});

