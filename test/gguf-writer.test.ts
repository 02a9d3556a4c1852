import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ggufTensorName, permuteRopeRows, writeGguf } from '../src/bench/gguf-writer.ts';
import { writeRandomCheckpoint } from '../src/model/random-checkpoint.ts';
import { loadModelConfig } from '../src/model/config.ts';
import { fileByteSource, readCheckpointIndex, readTensor } from '../src/model/safetensors.ts';
import { bf16ToF32, f16ToF32, f32ToF16 } from '../src/tensor/dtype.ts';
import { DEFAULT_MODEL_DIR } from '../src/engine/loaded-model.ts';

/** A small GGUF v3 reader, independent of the writer: metadata, tensor infos and the data section. */
function readGguf(path: string) {
  const b = readFileSync(path);
  let at = 0;
  const u32 = () => ((at += 4), b.readUInt32LE(at - 4));
  const u64 = () => ((at += 8), Number(b.readBigUInt64LE(at - 8)));
  const str = () => {
    const n = u64();
    at += n;
    return b.toString('utf8', at - n, at);
  };
  const value = (type: number): unknown => {
    switch (type) {
      case 4: return u32();
      case 5: return ((at += 4), b.readInt32LE(at - 4));
      case 6: return ((at += 4), b.readFloatLE(at - 4));
      case 7: return ((at += 1), b[at - 1] !== 0);
      case 8: return str();
      case 9: {
        const of = u32();
        const n = u64();
        return Array.from({ length: n }, () => value(of));
      }
      default: throw new Error(`value type ${type}`);
    }
  };
  assert.equal(b.toString('latin1', 0, 4), 'GGUF');
  at = 4;
  assert.equal(u32(), 3);
  const nTensors = u64();
  const nMeta = u64();
  const meta = new Map<string, unknown>();
  for (let i = 0; i < nMeta; i++) {
    const key = str();
    meta.set(key, value(u32()));
  }
  const tensors = new Map<string, { dims: number[]; type: number; offset: number }>();
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    const dims = Array.from({ length: nd }, () => u64());
    tensors.set(name, { dims, type: u32(), offset: u64() });
  }
  const align = (meta.get('general.alignment') as number | undefined) ?? 32;
  const dataStart = Math.ceil(at / align) * align;
  const elements = (name: string) => {
    const t = tensors.get(name)!;
    const count = t.dims.reduce((x, y) => x * y, 1);
    const start = dataStart + t.offset;
    return t.type === 0
      ? Float32Array.from({ length: count }, (_, i) => b.readFloatLE(start + 4 * i))
      : Float32Array.from({ length: count }, (_, i) => f16ToF32(b.readUInt16LE(start + 2 * i)));
  };
  return { meta, tensors, elements, size: b.length, dataStart };
}

test('f32ToF16 rounds to nearest even and inverts f16ToF32 on every finite half', () => {
  for (let bits = 0; bits < 0x10000; bits++) {
    const v = f16ToF32(bits);
    if (Number.isNaN(v)) assert.ok(Number.isNaN(f16ToF32(f32ToF16(v))));
    else assert.equal(f32ToF16(v), bits, `bits ${bits.toString(16)}`);
  }
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00, 'a tie rounds to the even neighbour');
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02);
  assert.equal(f32ToF16(70000), 0x7c00, 'overflow is infinity');
  assert.equal(f32ToF16(2 ** -25), 0, 'half of the smallest subnormal ties to (even) zero');
  assert.equal(f32ToF16(-(3 * 2 ** -26)), 0x8001, 'three quarters of it rounds up');
});

test('q/k rows are permuted per head to llama.cpp interleaved pairs', () => {
  const heads = 2;
  const d = 4;
  const cols = 3;
  const src = Float32Array.from({ length: heads * d * cols }, (_, i) => i);
  const out = permuteRopeRows(src, heads, cols);
  const rowOf = (a: Float32Array, r: number) => Array.from(a.subarray(r * cols, (r + 1) * cols));
  // head 0: rows 0,1 | 2,3 -> 0,2,1,3 ; head 1 likewise
  for (const [to, from] of [[0, 0], [1, 2], [2, 1], [3, 3], [4, 4], [5, 6], [6, 5], [7, 7]]) assert.deepEqual(rowOf(out, to!), rowOf(src, from!));
});

test('tensor names follow llama.cpp', () => {
  assert.equal(ggufTensorName('model.embed_tokens.weight'), 'token_embd.weight');
  assert.equal(ggufTensorName('model.layers.3.self_attn.k_proj.bias'), 'blk.3.attn_k.bias');
  assert.equal(ggufTensorName('model.layers.0.mlp.down_proj.weight'), 'blk.0.ffn_down.weight');
  assert.throws(() => ggufTensorName('model.layers.0.mlp.fc1.weight'), /no GGUF name/);
});

test('the embedded model written as GGUF holds its config, vocabulary and every weight (F16, permuted q/k)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-gguf-'));
  try {
    const out = join(dir, 'tiny.gguf');
    const size = writeGguf(DEFAULT_MODEL_DIR, out, { name: 'tiny' });
    const g = readGguf(out);
    const cfg = loadModelConfig(DEFAULT_MODEL_DIR);
    assert.equal(g.size, size);
    assert.equal(g.meta.get('general.architecture'), 'llama');
    assert.equal(g.meta.get('llama.block_count'), cfg.numLayers);
    assert.equal(g.meta.get('llama.attention.head_count_kv'), cfg.numKvHeads);
    assert.equal(g.meta.get('llama.vocab_size'), cfg.vocabSize);
    assert.equal((g.meta.get('tokenizer.ggml.tokens') as string[]).length, cfg.vocabSize);
    assert.equal(g.meta.get('tokenizer.ggml.eos_token_id'), cfg.eosTokenIds[0]);
    const tokenizer = JSON.parse(readFileSync(join(DEFAULT_MODEL_DIR, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> } };
    const tokens = g.meta.get('tokenizer.ggml.tokens') as string[];
    for (const [piece, id] of Object.entries(tokenizer.model.vocab).slice(0, 300)) assert.equal(tokens[id], piece);
    assert.equal(g.tensors.size, 2 + 9 * cfg.numLayers, 'embedding, final norm and nine tensors per layer (tied head)');
    assert.ok(!g.tensors.has('output.weight'));

    const index = readCheckpointIndex(DEFAULT_MODEL_DIR);
    const hf = (name: string) => {
      const t = index.get(name)!;
      return Float32Array.from(readTensor(t, fileByteSource) as Uint16Array, (bits) => bf16ToF32(bits));
    };
    const emb = g.tensors.get('token_embd.weight')!;
    assert.deepEqual(emb.dims, [cfg.hiddenSize, cfg.vocabSize], 'GGUF dims are innermost first');
    assert.equal(emb.type, 1);
    const close = (a: Float32Array, b: Float32Array, what: string) => {
      assert.equal(a.length, b.length);
      for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) <= Math.abs(b[i]!) * 2 ** -10 + 2 ** -24, `${what}[${i}]: ${a[i]} vs ${b[i]}`);
    };
    close(g.elements('blk.1.ffn_down.weight'), hf('model.layers.1.mlp.down_proj.weight'), 'ffn_down');
    close(g.elements('blk.0.attn_norm.weight'), hf('model.layers.0.input_layernorm.weight'), 'attn_norm');
    const k = hf('model.layers.2.self_attn.k_proj.weight');
    close(g.elements('blk.2.attn_k.weight'), permuteRopeRows(k, cfg.numKvHeads, cfg.hiddenSize), 'attn_k');
    for (const t of g.tensors.values()) assert.equal((g.dataStart + t.offset) % 32, 0, 'tensor data is 32-byte aligned');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a qwen2-shaped checkpoint keeps its q/k/v biases unpermuted, and llama3 rope scaling becomes rope_freqs', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-gguf-'));
  try {
    const qwen = join(dir, 'qwen');
    writeRandomCheckpoint({
      architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', vocab_size: 2048, hidden_size: 32, intermediate_size: 48,
      num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 8, max_position_embeddings: 256,
      rms_norm_eps: 1e-6, rope_theta: 10000, tie_word_embeddings: false,
    }, qwen);
    writeGguf(qwen, join(dir, 'q.gguf'));
    const g = readGguf(join(dir, 'q.gguf'));
    assert.equal(g.meta.get('general.architecture'), 'qwen2');
    assert.ok(g.tensors.has('blk.0.attn_q.bias') && g.tensors.has('output.weight'));
    const index = readCheckpointIndex(qwen);
    const bias = Float32Array.from(readTensor(index.get('model.layers.0.self_attn.k_proj.bias')!, fileByteSource) as Uint16Array, (x) => bf16ToF32(x));
    assert.deepEqual(g.elements('blk.0.attn_k.bias'), bias);

    const llama = join(dir, 'llama');
    writeRandomCheckpoint({
      architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 2048, hidden_size: 32, intermediate_size: 48,
      num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 8, max_position_embeddings: 256,
      rms_norm_eps: 1e-5, rope_theta: 500000, tie_word_embeddings: true,
      rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
    }, llama);
    writeGguf(llama, join(dir, 'l.gguf'));
    const factors = readGguf(join(dir, 'l.gguf')).elements('rope_freqs.weight');
    assert.equal(factors.length, 4);
    assert.ok(Math.abs(factors[0]! - 1) < 1e-6, 'the highest frequency is not scaled');
    assert.ok(Math.abs(factors[3]! - 32) < 1e-3, 'the lowest frequency is divided by the factor');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a mistral with a sliding window is written as llama.cpp granite_swa with neutral scales and inert sinks; F32 matrices hold the bf16 values exactly', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-gguf-'));
  try {
    const mistral = join(dir, 'mistral');
    writeRandomCheckpoint({
      architectures: ['MistralForCausalLM'], model_type: 'mistral', vocab_size: 2048, hidden_size: 32, intermediate_size: 48,
      num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 256,
      rms_norm_eps: 1e-5, rope_theta: 1e6, tie_word_embeddings: false, sliding_window: 12,
    }, mistral);
    writeGguf(mistral, join(dir, 'm.gguf'), { matrices: 'f32' });
    const g = readGguf(join(dir, 'm.gguf'));
    assert.equal(g.meta.get('general.architecture'), 'granite_swa');
    assert.equal(g.meta.get('granite_swa.attention.sliding_window'), 12);
    assert.deepEqual(g.meta.get('granite_swa.attention.sliding_window_pattern'), [true, true]);
    for (const k of ['embedding_scale', 'residual_scale', 'logit_scale']) assert.equal(g.meta.get(`granite_swa.${k}`), 1);
    assert.ok(Math.abs((g.meta.get('granite_swa.attention.scale') as number) - 1 / Math.sqrt(8)) < 1e-7);
    assert.deepEqual([...g.elements('blk.1.attn_sinks.weight')], [-30000, -30000, -30000, -30000]);
    const index = readCheckpointIndex(mistral);
    const widen = (name: string) => Float32Array.from(readTensor(index.get(name)!, fileByteSource) as Uint16Array, (x) => bf16ToF32(x));
    assert.equal(g.tensors.get('output.weight')!.type, 0, 'F32');
    assert.deepEqual(g.elements('output.weight'), widen('lm_head.weight'));
    // q rows still permuted to llama.cpp's interleaved pairs (granite rotates like llama).
    assert.deepEqual(g.elements('blk.0.attn_q.weight'), permuteRopeRows(widen('model.layers.0.self_attn.q_proj.weight'), 4, 32));

    // Without a window a mistral stays llama.cpp's llama architecture, with no window keys.
    const plain = join(dir, 'plain');
    writeRandomCheckpoint({ ...JSON.parse(readFileSync(join(mistral, 'config.json'), 'utf8')), sliding_window: null }, plain);
    writeGguf(plain, join(dir, 'p.gguf'));
    const p = readGguf(join(dir, 'p.gguf'));
    assert.equal(p.meta.get('general.architecture'), 'llama');
    assert.equal(p.meta.has('llama.attention.sliding_window'), false);
    assert.equal(p.tensors.has('blk.0.attn_sinks.weight'), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
