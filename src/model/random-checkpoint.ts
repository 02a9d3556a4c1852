import { closeSync, copyFileSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { f32ToBf16 } from '../tensor/dtype.ts';
import { parseModelConfig } from './config.ts';
import { SINGLE_FILE } from './safetensors.ts';
import { expectedTensors } from './weights.ts';

const EMBEDDED_MODEL_DIR = fileURLToPath(new URL('../../models/kvlab-tiny-chat', import.meta.url));
const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json'];

/**
 * config.json of named shapes whose weights are random (benchmarks, tests). Token ids come from the
 * embedded model, whose tokenizer is copied alongside; its vocabulary is smaller than these, which is
 * fine for timing.
 */
export const RANDOM_SHAPES: Record<string, Record<string, unknown>> = {
  'qwen2.5-0.5b': {
    architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', vocab_size: 151936, hidden_size: 896, intermediate_size: 4864,
    num_hidden_layers: 24, num_attention_heads: 14, num_key_value_heads: 2, head_dim: 64, hidden_act: 'silu',
    max_position_embeddings: 32768, rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true,
  },
  'llama-3.2-1b': {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 128256, hidden_size: 2048, intermediate_size: 8192,
    num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8, head_dim: 64, hidden_act: 'silu',
    max_position_embeddings: 131072, rms_norm_eps: 1e-5, rope_theta: 500000, tie_word_embeddings: true,
    rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  },
  tiny: {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 2048, hidden_size: 64, intermediate_size: 160,
    num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, hidden_act: 'silu',
    max_position_embeddings: 2048, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: true,
  },
};

export interface RandomCheckpointOptions {
  seed?: number;
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /** Folder whose tokenizer.json and tokenizer_config.json are copied in (default: the embedded model's). */
  tokenizerDir?: string;
  /** Standard deviation of matrix and bias entries (default 0.02). */
  std?: number;
  /**
   * Standard deviation of norm weights around 1 (default 0: all ones). Non-zero makes a norm applied to the
   * wrong tensor, or not at all, change the output.
   */
  normStd?: number;
}

const STD = 0.02;
const CHUNK_ELEMENTS = 1 << 20;
const BF16_ONE = 0x3f80;

/**
 * Writes a random-weight bf16 Hugging Face checkpoint (config.json, model.safetensors, tokenizer files)
 * for a named shape or a config.json object. The weights file is streamed tensor by tensor and renamed
 * into place last, so a folder with model.safetensors is always complete.
 */
export function writeRandomCheckpoint(shape: string | Record<string, unknown>, dir: string, opts: RandomCheckpointOptions = {}): void {
  const named = typeof shape === 'string' ? RANDOM_SHAPES[shape] : shape;
  if (!named) throw new Error(`unknown shape "${shape as string}"; known: ${Object.keys(RANDOM_SHAPES).join(', ')}`);
  const json = { ...(opts.tokenizerDir ? {} : embeddedTokenIds()), ...named, torch_dtype: 'bfloat16' };
  const tokenizerDir = opts.tokenizerDir ?? EMBEDDED_MODEL_DIR;
  const cfg = parseModelConfig(json, typeof shape === 'string' ? `shape ${shape}` : 'config');
  mkdirSync(dir, { recursive: true });
  writeAtomically(join(dir, 'config.json'), (path) => writeFileSync(path, JSON.stringify(json, null, 2) + '\n'));
  for (const f of TOKENIZER_FILES) writeAtomically(join(dir, f), (path) => copyFileSync(join(tokenizerDir, f), path));

  const tensors = [...expectedTensors(cfg)].map(([name, dims]) => ({ name, count: dims.reduce((a, b) => a * b, 1), dims }));
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', note: 'random weights' } };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: 'BF16', shape: t.dims, data_offsets: [offset, offset + 2 * t.count] };
    offset += 2 * t.count;
  }
  const total = offset;
  writeAtomically(join(dir, SINGLE_FILE), (path) => {
    const fd = openSync(path, 'w');
    try {
      writeAll(fd, safetensorsPreamble(header));
      const next = normalSampler(opts.seed ?? 1);
      const std = opts.std ?? STD;
      const normStd = opts.normStd ?? 0;
      const chunk = new Uint16Array(CHUNK_ELEMENTS);
      let written = 0;
      for (const t of tensors) {
        const isNorm = t.name.endsWith('norm.weight');
        for (let at = 0; at < t.count; at += CHUNK_ELEMENTS) {
          const m = Math.min(CHUNK_ELEMENTS, t.count - at);
          if (isNorm && !normStd) chunk.fill(BF16_ONE, 0, m);
          else if (isNorm) for (let i = 0; i < m; i++) chunk[i] = f32ToBf16(1 + normStd * next());
          else for (let i = 0; i < m; i++) chunk[i] = f32ToBf16(std * next());
          writeAll(fd, new Uint8Array(chunk.buffer, 0, 2 * m));
          written += 2 * m;
          opts.onProgress?.(written, total);
        }
      }
      fsyncSync(fd); // on disk before the rename makes it visible
    } finally {
      closeSync(fd);
    }
  });
}

function embeddedTokenIds(): Record<string, unknown> {
  const c = JSON.parse(readFileSync(join(EMBEDDED_MODEL_DIR, 'config.json'), 'utf8')) as Record<string, unknown>;
  return { bos_token_id: c.bos_token_id, eos_token_id: c.eos_token_id };
}

/** Length prefix and JSON header, padded with spaces so the data section starts 8-byte aligned. */
function safetensorsPreamble(header: Record<string, unknown>): Uint8Array {
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - ((8 + Buffer.byteLength(text)) % 8)) % 8);
  const bytes = Buffer.alloc(8 + Buffer.byteLength(text));
  bytes.writeBigUInt64LE(BigInt(bytes.length - 8), 0);
  bytes.write(text, 8, 'utf8');
  return bytes;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done);
}

function writeAtomically(path: string, write: (tmp: string) => void): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    write(tmp);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** Approximately standard normal draws: the sum of four 16-bit uniforms (Irwin–Hall), from a seeded xorshift32. */
function normalSampler(seed: number): () => number {
  let s = (seed >>> 0) || 0x9e3779b9;
  const draw = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s & 0xffff) + (s >>> 16);
  };
  // Four uniforms on [0, 1) have mean 2 and variance 4/12.
  const scale = Math.sqrt(3) / 65536;
  return () => (draw() + draw() - 2 * 65535) * scale;
}
