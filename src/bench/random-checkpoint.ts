import { closeSync, copyFileSync, mkdirSync, openSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_MODEL_DIR } from '../engine/loaded-model.ts';
import { seededRandom } from '../engine/sampler.ts';
import { expectedTensors } from '../model/weights.ts';
import { parseModelConfig } from '../model/config.ts';

/** Hugging Face config.json of the shapes benchmarks use (weights random, never committed). */
export const BENCH_SHAPES: Record<string, Record<string, unknown>> = {
  'qwen2.5-0.5b': {
    model_type: 'qwen2', vocab_size: 151936, hidden_size: 896, intermediate_size: 4864, num_hidden_layers: 24,
    num_attention_heads: 14, num_key_value_heads: 2, max_position_embeddings: 32768, rms_norm_eps: 1e-6,
    rope_theta: 1000000, tie_word_embeddings: true, eos_token_id: 2047,
  },
  'llama-3.2-1b': {
    model_type: 'llama', vocab_size: 128256, hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16,
    num_attention_heads: 32, num_key_value_heads: 8, head_dim: 64, max_position_embeddings: 131072, rms_norm_eps: 1e-5,
    rope_theta: 500000, tie_word_embeddings: true, eos_token_id: 2047,
    rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  },
};

/**
 * Writes a random-weight bf16 checkpoint of a shape into dir (tensor by tensor, never the whole file in
 * memory; renamed into place when complete), with the embedded model's tokenizer so it loads.
 */
export function writeRandomCheckpoint(shape: string, dir: string, seed = 1): void {
  const json = BENCH_SHAPES[shape];
  if (!json) throw new Error(`unknown shape "${shape}"; known: ${Object.keys(BENCH_SHAPES).join(', ')}`);
  const cfg = parseModelConfig(json, shape);
  mkdirSync(dir, { recursive: true });
  const tensors = [...expectedTensors(cfg)];
  let offset = 0;
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', note: 'random weights for benchmarks' } };
  for (const [name, shape] of tensors) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 2;
    header[name] = { dtype: 'BF16', shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let headerText = JSON.stringify(header);
  headerText += ' '.repeat((8 - (headerText.length % 8)) % 8);
  const tmp = join(dir, `model.safetensors.${process.pid}.tmp`);
  const fd = openSync(tmp, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(headerText.length));
    writeSync(fd, len);
    writeSync(fd, headerText);
    const rand = seededRandom(seed);
    for (const [name, shape] of tensors) {
      const n = shape.reduce((a, b) => a * b, 1);
      const isNorm = name.endsWith('norm.weight');
      const chunk = 1 << 22;
      for (let at = 0; at < n; at += chunk) {
        const m = Math.min(chunk, n - at);
        const out = new Uint16Array(m);
        // N(0, 0.02)-like values (sum of uniforms), norms at 1: activations stay in a realistic range.
        if (isNorm) out.fill(0x3f80);
        else for (let i = 0; i < m; i++) out[i] = bf16Bits((rand() + rand() + rand() - 1.5) * 0.04);
        writeSync(fd, new Uint8Array(out.buffer));
      }
    }
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, join(dir, 'model.safetensors'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...json, torch_dtype: 'bfloat16' }, null, 2));
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(DEFAULT_MODEL_DIR, f), join(dir, f));
}

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);
function bf16Bits(x: number): number {
  scratch[0] = x;
  const u = scratchBits[0]!;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
