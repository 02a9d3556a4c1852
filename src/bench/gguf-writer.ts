import { closeSync, existsSync, ftruncateSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { buildRopeTable, loadModelConfig, type ModelConfig } from '../model/config.ts';
import { fileByteSource, readTensor, type TensorInfo } from '../model/safetensors.ts';
import { planWeights } from '../model/weights.ts';
import { bf16ArrayToF32, f16ArrayToF32, f32ToF16 } from '../tensor/dtype.ts';

/**
 * Writes a Hugging Face Llama-family checkpoint as GGUF v3 with F16 (or F32) matrices and F32 norms/biases, so
 * llama.cpp can run the same weights. The vocabulary is the checkpoint's byte-level BPE (tokenizer.json)
 * padded with unused filler tokens up to vocab_size; benchmarks feed token ids directly.
 * Llama/Mistral q/k rows are permuted per head as llama.cpp's converter does (llama.cpp rotates
 * interleaved pairs where Hugging Face rotates halves), so both compute the same function.
 */

const GGUF_MAGIC = 0x46554747;
const ALIGNMENT = 32;

enum ValueType {
  INT32 = 5,
  U32 = 4,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
}

const TOKEN_NORMAL = 1;
const TOKEN_CONTROL = 3;
const TOKEN_UNUSED = 5;

enum GgmlType {
  F32 = 0,
  F16 = 1,
}

type Value =
  | number
  | string
  | boolean
  | { of: ValueType.STRING; items: string[] }
  | { of: ValueType.INT32; items: Int32Array }
  | { of: ValueType.BOOL; items: Uint8Array };
type Metadata = [key: string, type: ValueType, value: Value][];

interface GgufTensor {
  name: string;
  /** Hugging Face shape, outermost first; GGUF stores it innermost first. */
  shape: number[];
  type: GgmlType;
  data: () => Float32Array | Uint16Array;
}

const ARCH: Record<ModelConfig['modelType'], string> = { llama: 'llama', mistral: 'llama', qwen2: 'qwen2', qwen3: 'qwen3' };

/**
 * llama.cpp's llama architecture (the one its converter gives Mistral) ignores a sliding window, so a Mistral
 * checkpoint with one is written as granite_swa: a Llama layer with scale factors (all set to what Llama
 * computes), attention sinks (set inert), and a per-layer sliding window, which llama.cpp applies by position.
 */
const SLIDING_WINDOW_ARCH = 'granite_swa';
const INERT_SINK = -30000;

function ggufArchitecture(cfg: ModelConfig): string {
  return cfg.slidingWindow !== null ? SLIDING_WINDOW_ARCH : ARCH[cfg.modelType];
}

const LAYER_NAMES: [RegExp, string][] = [
  [/^input_layernorm\.weight$/, 'attn_norm.weight'],
  [/^post_attention_layernorm\.weight$/, 'ffn_norm.weight'],
  [/^self_attn\.q_proj\.(weight|bias)$/, 'attn_q.$1'],
  [/^self_attn\.k_proj\.(weight|bias)$/, 'attn_k.$1'],
  [/^self_attn\.v_proj\.(weight|bias)$/, 'attn_v.$1'],
  [/^self_attn\.o_proj\.(weight|bias)$/, 'attn_output.$1'],
  [/^self_attn\.q_norm\.weight$/, 'attn_q_norm.weight'],
  [/^self_attn\.k_norm\.weight$/, 'attn_k_norm.weight'],
  [/^mlp\.gate_proj\.weight$/, 'ffn_gate.weight'],
  [/^mlp\.up_proj\.weight$/, 'ffn_up.weight'],
  [/^mlp\.down_proj\.weight$/, 'ffn_down.weight'],
];

export function ggufTensorName(hf: string): string {
  if (hf === 'model.embed_tokens.weight') return 'token_embd.weight';
  if (hf === 'model.norm.weight') return 'output_norm.weight';
  if (hf === 'lm_head.weight') return 'output.weight';
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  if (m) {
    for (const [re, to] of LAYER_NAMES) if (re.test(m[2]!)) return `blk.${m[1]}.${m[2]!.replace(re, to)}`;
  }
  throw new Error(`no GGUF name for tensor ${hf}`);
}

/** Hugging Face half-rotation rows -> llama.cpp's interleaved pairs, per head: row 2i <- i, 2i+1 <- i + d/2. */
export function permuteRopeRows<T extends Float32Array | Uint16Array>(src: T, heads: number, cols: number): T {
  const rows = src.length / cols;
  const d = rows / heads;
  const out = new (src.constructor as new (n: number) => T)(src.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      out.set(src.subarray((h * d + i) * cols, (h * d + i + 1) * cols), (h * d + 2 * i) * cols);
      out.set(src.subarray((h * d + d / 2 + i) * cols, (h * d + d / 2 + i + 1) * cols), (h * d + 2 * i + 1) * cols);
    }
  }
  return out;
}

function toF32(t: TensorInfo, raw: Float32Array | Uint16Array): Float32Array {
  if (raw instanceof Float32Array) return raw;
  return t.dtype === 'BF16' ? bf16ArrayToF32(raw) : f16ArrayToF32(raw);
}

function toF16(t: TensorInfo, raw: Float32Array | Uint16Array): Uint16Array {
  if (t.dtype === 'F16') return raw as Uint16Array;
  // A loop, not Uint16Array.from(src, fn): V8 first copies the source into a plain array, which fails for an
  // LM head of 262M weights.
  const src = toF32(t, raw);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = f32ToF16(src[i]!);
  return out;
}

/** llama3 rope scaling as llama.cpp takes it: per-frequency divisors in a rope_freqs tensor. */
function ropeFreqFactors(cfg: ModelConfig): Float32Array {
  const scaled = buildRopeTable(cfg).invFreq;
  const plain = buildRopeTable({ ...cfg, ropeScaling: null }).invFreq;
  return Float32Array.from(plain, (f, i) => f / scaled[i]!);
}

interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[] };
  added_tokens?: { id: number; content: string; special?: boolean }[];
}

/** Token strings, types and merges for a gpt2-style vocabulary of exactly cfg.vocabSize entries. */
function vocabulary(dir: string, cfg: ModelConfig): Metadata {
  const path = join(dir, 'tokenizer.json');
  const json = (existsSync(path) ? JSON.parse(readFileSync(path, 'utf8')) : {}) as TokenizerJson;
  const tokens: (string | undefined)[] = new Array(cfg.vocabSize);
  const types = new Int32Array(cfg.vocabSize).fill(TOKEN_UNUSED);
  if (json.model?.type === 'BPE') {
    for (const [piece, id] of Object.entries(json.model.vocab ?? {})) {
      if (id < cfg.vocabSize) {
        tokens[id] = piece;
        types[id] = TOKEN_NORMAL;
      }
    }
    for (const a of json.added_tokens ?? []) {
      if (a.id < cfg.vocabSize) {
        tokens[a.id] = a.content;
        types[a.id] = a.special === false ? TOKEN_NORMAL : TOKEN_CONTROL;
      }
    }
  }
  const merges = json.model?.type === 'BPE' ? (json.model.merges ?? []).map((m) => (Array.isArray(m) ? m.join(' ') : m)) : [];
  const items = Array.from(tokens, (t, i) => t ?? `[kvlab-unused-${i}]`);
  const meta: Metadata = [
    ['tokenizer.ggml.model', ValueType.STRING, 'gpt2'],
    ['tokenizer.ggml.pre', ValueType.STRING, 'gpt-2'],
    ['tokenizer.ggml.tokens', ValueType.ARRAY, { of: ValueType.STRING, items }],
    ['tokenizer.ggml.token_type', ValueType.ARRAY, { of: ValueType.INT32, items: types }],
    ['tokenizer.ggml.merges', ValueType.ARRAY, { of: ValueType.STRING, items: merges }],
    ['tokenizer.ggml.add_bos_token', ValueType.BOOL, false],
  ];
  if (cfg.bosTokenId !== null) meta.push(['tokenizer.ggml.bos_token_id', ValueType.U32, cfg.bosTokenId]);
  if (cfg.eosTokenIds.length) meta.push(['tokenizer.ggml.eos_token_id', ValueType.U32, cfg.eosTokenIds[0]!]);
  return meta;
}

function metadata(dir: string, cfg: ModelConfig, name: string): Metadata {
  const arch = ggufArchitecture(cfg);
  const u = (k: string, v: number): Metadata[number] => [`${arch}.${k}`, ValueType.U32, v];
  const window: Metadata =
    cfg.slidingWindow === null
      ? []
      : [
          u('attention.sliding_window', cfg.slidingWindow),
          [`${arch}.attention.sliding_window_pattern`, ValueType.ARRAY, { of: ValueType.BOOL, items: new Uint8Array(cfg.numLayers).fill(1) }],
          // Granite's multipliers, set to what a Llama/Mistral layer computes.
          [`${arch}.embedding_scale`, ValueType.F32, 1],
          [`${arch}.residual_scale`, ValueType.F32, 1],
          [`${arch}.attention.scale`, ValueType.F32, 1 / Math.sqrt(cfg.headDim)],
          [`${arch}.logit_scale`, ValueType.F32, 1],
        ];
  return [
    ['general.architecture', ValueType.STRING, arch],
    ['general.name', ValueType.STRING, name],
    ['general.alignment', ValueType.U32, ALIGNMENT],
    u('vocab_size', cfg.vocabSize),
    u('context_length', cfg.maxPositionEmbeddings),
    u('embedding_length', cfg.hiddenSize),
    u('block_count', cfg.numLayers),
    u('feed_forward_length', cfg.intermediateSize),
    u('attention.head_count', cfg.numHeads),
    u('attention.head_count_kv', cfg.numKvHeads),
    u('attention.key_length', cfg.headDim),
    u('attention.value_length', cfg.headDim),
    u('rope.dimension_count', cfg.headDim),
    [`${arch}.rope.freq_base`, ValueType.F32, cfg.ropeTheta],
    [`${arch}.attention.layer_norm_rms_epsilon`, ValueType.F32, cfg.rmsNormEps],
    ...window,
    ...vocabulary(dir, cfg),
  ];
}

function tensors(dir: string, cfg: ModelConfig, matrixType: GgmlType): GgufTensor[] {
  const permute = ARCH[cfg.modelType] === 'llama';
  const out: GgufTensor[] = [];
  for (const [hf, info] of planWeights(dir, cfg)) {
    const matrix = info.shape.length === 2;
    const heads = /q_proj\.(weight|bias)$/.test(hf) ? cfg.numHeads : /k_proj\.(weight|bias)$/.test(hf) ? cfg.numKvHeads : 0;
    out.push({
      name: ggufTensorName(hf),
      shape: info.shape,
      type: matrix ? matrixType : GgmlType.F32,
      data: () => {
        const raw = readTensor(info, fileByteSource);
        const converted = matrix && matrixType === GgmlType.F16 ? toF16(info, raw) : toF32(info, raw);
        return permute && heads ? permuteRopeRows(converted, heads, matrix ? info.shape[1]! : 1) : converted;
      },
    });
  }
  if (ggufArchitecture(cfg) === SLIDING_WINDOW_ARCH) {
    // Its attention sinks, at a logit so low that exp() of it is 0 beside any real key: no effect.
    const sinks = new Float32Array(cfg.numHeads).fill(INERT_SINK);
    for (let l = 0; l < cfg.numLayers; l++) out.push({ name: `blk.${l}.attn_sinks.weight`, shape: [cfg.numHeads], type: GgmlType.F32, data: () => sinks });
  }
  if (cfg.ropeScaling) {
    const factors = ropeFreqFactors(cfg);
    out.push({ name: 'rope_freqs.weight', shape: [factors.length], type: GgmlType.F32, data: () => factors });
  }
  return out;
}

class ByteWriter {
  private chunks: Buffer[] = [];
  length = 0;
  private push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  u64(v: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  string(s: string): void {
    const bytes = Buffer.from(s, 'utf8');
    this.u64(bytes.length);
    this.push(bytes);
  }
  value(type: ValueType, v: Value): void {
    if (type === ValueType.STRING) this.string(v as string);
    else if (type === ValueType.F32) this.f32(v as number);
    else if (type === ValueType.BOOL) this.push(Buffer.from([v ? 1 : 0]));
    else if (type === ValueType.U32) this.u32(v as number);
    else if (type === ValueType.ARRAY) {
      const a = v as Exclude<Value, number | string | boolean>;
      this.u32(a.of);
      this.u64(a.items.length);
      if (a.of === ValueType.STRING) for (const s of a.items) this.string(s);
      else this.push(Buffer.from(a.items.buffer, a.items.byteOffset, a.items.byteLength));
    } else throw new Error(`unsupported GGUF value type ${type}`);
  }
  pad(to: number): void {
    const n = (to - (this.length % to)) % to;
    if (n) this.push(Buffer.alloc(n));
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

const alignUp = (n: number) => Math.ceil(n / ALIGNMENT) * ALIGNMENT;

export interface GgufWriteOptions {
  name?: string;
  /** Type of the 2-D weights: F16 (default) or F32, which holds bf16 checkpoint values exactly. */
  matrices?: 'f16' | 'f32';
  onTensor?: (name: string, i: number, total: number) => void;
}

/** Writes dir's checkpoint to `out` (renamed into place when complete). Returns the file's size in bytes. */
export function writeGguf(dir: string, out: string, opts: GgufWriteOptions = {}): number {
  const cfg = loadModelConfig(dir);
  const list = tensors(dir, cfg, opts.matrices === 'f32' ? GgmlType.F32 : GgmlType.F16);
  const head = new ByteWriter();
  head.u32(GGUF_MAGIC);
  head.u32(3);
  head.u64(list.length);
  const meta = metadata(dir, cfg, opts.name ?? dir);
  head.u64(meta.length);
  for (const [key, type, value] of meta) {
    head.string(key);
    head.u32(type);
    head.value(type, value);
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of list) {
    head.string(t.name);
    head.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) head.u64(d);
    head.u32(t.type);
    head.u64(offset);
    offsets.push(offset);
    offset = alignUp(offset + t.shape.reduce((a, b) => a * b, 1) * (t.type === GgmlType.F16 ? 2 : 4));
  }
  head.pad(ALIGNMENT);
  const dataStart = head.length;

  const end = dataStart + offset;
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    const fd = openSync(tmp, 'w');
    try {
      writeAll(fd, head.bytes(), 0);
      list.forEach((t, i) => {
        opts.onTensor?.(t.name, i, list.length);
        const data = t.data();
        writeAll(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), dataStart + offsets[i]!);
      });
      ftruncateSync(fd, end);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, out);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  return end;
}

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}
