import { closeSync, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import { endianness } from 'node:os';
import { isAbsolute, join, normalize } from 'node:path';
import { CheckpointError } from './checkpoint-errors.ts';
import { checkRegularFile, readRegularText } from './regular-file.ts';
import { firstDuplicateKey } from './strict-json.ts';

export { CheckpointError };

/** The dtypes tensors can be loaded in; any other dtype in a header is rejected. */
export type SafetensorsDType = 'BF16' | 'F16' | 'F32';
export const DTYPE_BYTES: Record<SafetensorsDType, number> = { BF16: 2, F16: 2, F32: 4 };
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

export interface TensorInfo {
  name: string;
  /** Path of the safetensors file holding the tensor. */
  file: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute byte offset of the tensor in its file. */
  offset: number;
  byteLength: number;
}

import type { TensorByteSource } from '../tensor/byte-source.ts';

export type { TensorByteSource };

const READ_CHUNK = 1 << 30;

/** Plain positional reads into a fresh ArrayBuffer per tensor. */
export const fileByteSource: TensorByteSource = {
  read(file, offset, length) {
    const buf = new ArrayBuffer(length);
    const fd = openSync(file, 'r');
    try {
      readFully(fd, new Uint8Array(buf), offset, file);
    } finally {
      closeSync(fd);
    }
    return buf;
  },
};

function readFully(fd: number, into: Uint8Array, position: number, file: string): void {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, Math.min(READ_CHUNK, into.length - done), position + done);
    if (n <= 0) throw new CheckpointError(`${file}: unexpected end of file reading ${into.length} bytes at offset ${position}`);
    done += n;
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

const checkpointError = (msg: string) => new CheckpointError(msg);

/**
 * Parses and validates one safetensors header as the reference library does: bounds, JSON starting with
 * '{' (trailing spaces are padding), no duplicate keys, dtypes, shapes, sizes, and tensors that tile the
 * data section exactly (no gaps, overlaps or trailing bytes). A header length a few bytes off therefore
 * fails here instead of shifting every tensor.
 */
export function readSafetensorsHeader(file: string): TensorInfo[] {
  checkRegularFile(file, 'safetensors file', checkpointError);
  const fd = openSync(file, 'r');
  let headerBytes: Uint8Array;
  let size: number;
  try {
    size = fstatSync(fd).size;
    if (size < 8) throw new CheckpointError(`${file}: truncated file (${size} bytes, too short for the 8-byte header length)`);
    const lenBytes = new Uint8Array(8);
    readFully(fd, lenBytes, 0, file);
    const headerLen = Buffer.from(lenBytes.buffer).readBigUInt64LE(0);
    if (headerLen === 0n || headerLen > BigInt(MAX_HEADER_BYTES)) {
      throw new CheckpointError(`${file}: bad header length ${headerLen} (must be 1..${MAX_HEADER_BYTES} bytes)`);
    }
    if (8n + headerLen > BigInt(size)) {
      throw new CheckpointError(`${file}: header length ${headerLen} runs past the end of the file (${size} bytes); truncated or not a safetensors file`);
    }
    headerBytes = new Uint8Array(Number(headerLen));
    readFully(fd, headerBytes, 8, file);
  } finally {
    closeSync(fd);
  }
  let header: unknown;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
    header = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(`${file}: header is not valid JSON (${(e as Error).message}); a wrong header length also shows this way`);
  }
  if (!isObject(header)) throw new CheckpointError(`${file}: header is not a JSON object`);
  if (text[0] !== '{') throw new CheckpointError(`${file}: header does not start with '{' (only trailing spaces may pad it)`);
  const duplicate = firstDuplicateKey(text);
  if (duplicate) {
    throw new CheckpointError(`${file}: header has the key ${JSON.stringify(duplicate.key)} twice${duplicate.path ? ` (in ${duplicate.path})` : ''}`);
  }
  const dataStart = 8 + headerBytes.length;
  return parseEntries(header, file, dataStart, size - dataStart);
}

function parseEntries(header: Record<string, unknown>, file: string, dataStart: number, dataSize: number): TensorInfo[] {
  const infos: TensorInfo[] = [];
  const ranges: { name: string; begin: number; end: number }[] = [];
  for (const [name, entry] of Object.entries(header)) {
    const fail = (msg: string): never => {
      throw new CheckpointError(`${file}: tensor ${name}: ${msg}`);
    };
    if (name === '__metadata__') {
      if (!isObject(entry)) throw new CheckpointError(`${file}: __metadata__ is not a JSON object`);
      continue;
    }
    if (!isObject(entry)) fail('header entry is not an object');
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, dtype)) {
      fail(`unsupported dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`);
    }
    if (!Array.isArray(shape) || !shape.every(isCount)) fail(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
      fail(`data_offsets ${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`);
    }
    const dims = shape as number[];
    const [begin, end] = offsets as [number, number];
    const bytes = dims.reduce((a, b) => a * b, DTYPE_BYTES[dtype as SafetensorsDType]);
    if (end - begin !== bytes) {
      fail(`data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} shape [${dims.join(', ')}] needs ${bytes}`);
    }
    if (end > dataSize) fail(`data_offsets [${begin}, ${end}] out of range: the data section has ${dataSize} bytes (truncated file?)`);
    infos.push({ name, file, dtype: dtype as SafetensorsDType, shape: dims, offset: dataStart + begin, byteLength: bytes });
    ranges.push({ name, begin, end });
  }
  // The tensors must tile [0, dataSize) exactly, in offset order, as the reference library requires.
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let reach = 0;
  let previous: (typeof ranges)[number] | undefined;
  for (const r of ranges) {
    if (r.begin < reach) {
      throw new CheckpointError(`${file}: tensors ${previous!.name} [${previous!.begin}, ${previous!.end}] and ${r.name} [${r.begin}, ${r.end}] overlap`);
    }
    if (r.begin > reach) {
      const after = previous ? `after tensor ${previous.name}` : 'before the first tensor';
      throw new CheckpointError(`${file}: data bytes [${reach}, ${r.begin}) belong to no tensor (${after}); a wrong header length or offset shows this way`);
    }
    reach = r.end;
    previous = r;
  }
  if (reach !== dataSize) {
    throw new CheckpointError(`${file}: ${dataSize - reach} trailing bytes after the last tensor (the tensors end at ${reach} of a ${dataSize}-byte data section); a wrong header length or an extended file shows this way`);
  }
  return infos;
}

/**
 * All tensors of a checkpoint folder, validated per file: model.safetensors if present (as Hugging Face
 * prefers it), otherwise the shards named by model.safetensors.index.json.
 */
export function readCheckpointIndex(dir: string): Map<string, TensorInfo> {
  const single = join(dir, SINGLE_FILE);
  const index = join(dir, INDEX_FILE);
  const out = new Map<string, TensorInfo>();
  if (existsSync(single)) {
    for (const t of readSafetensorsHeader(single)) out.set(t.name, t);
    return checkOneHalfFormat(out);
  }
  if (!existsSync(index)) throw new CheckpointError(`no ${SINGLE_FILE} or ${INDEX_FILE} in ${dir}`);
  const weightMap = readWeightMap(index);
  const shards = new Map<string, Map<string, TensorInfo>>();
  for (const shard of new Set(weightMap.values())) {
    const path = join(dir, shard);
    checkRegularFile(path, `shard ${shard} (named in ${index})`, checkpointError);
    shards.set(shard, new Map(readSafetensorsHeader(path).map((t) => [t.name, t])));
  }
  for (const [tensor, shard] of weightMap) {
    if (!shards.get(shard)!.has(tensor)) {
      throw new CheckpointError(`${join(dir, shard)}: tensor ${tensor} is missing, though ${index} places it in this shard`);
    }
  }
  // Like Hugging Face, every tensor of every listed shard is loaded, listed or not.
  for (const [shard, tensors] of shards) {
    for (const [name, info] of tensors) {
      const other = out.get(name);
      if (other) throw new CheckpointError(`${index}: tensor ${name} is stored twice, in ${other.file} and ${join(dir, shard)}`);
      out.set(name, info);
    }
  }
  return checkOneHalfFormat(out);
}

/**
 * BF16 and F16 take the same bytes, so a header whose dtype lost or gained a letter ("BF16" -> "F16") still
 * tiles its data exactly and would load as silently wrong weights. No exporter mixes the two 16-bit formats in
 * one checkpoint, so a mix is refused, naming the tensors of the rarer one.
 */
function checkOneHalfFormat(tensors: Map<string, TensorInfo>): Map<string, TensorInfo> {
  const of = (dtype: SafetensorsDType) => [...tensors.values()].filter((t) => t.dtype === dtype);
  const bf16 = of('BF16');
  const f16 = of('F16');
  if (bf16.length === 0 || f16.length === 0) return tensors;
  const [rare, common] = f16.length <= bf16.length ? [f16, 'BF16'] : [bf16, 'F16'];
  const names = rare.slice(0, 3).map((t) => `${t.name} (${t.file})`).join(', ');
  throw new CheckpointError(
    `tensor ${names}${rare.length > 3 ? ` and ${rare.length - 3} more` : ''} ${rare.length === 1 ? 'is' : 'are'} ${rare[0]!.dtype} while the other 16-bit tensors are ${common}: ` +
      'a checkpoint does not mix BF16 and F16 (a corrupt header dtype shows this way)',
  );
}

function readWeightMap(index: string): Map<string, string> {
  const text = readRegularText(index, 'checkpoint index', checkpointError);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(`${index}: not valid JSON (${(e as Error).message})`);
  }
  const weightMap = isObject(json) ? json.weight_map : undefined;
  if (!isObject(weightMap)) throw new CheckpointError(`${index}: no weight_map object`);
  const out = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard === '' || isAbsolute(shard) || normalize(shard).startsWith('..')) {
      throw new CheckpointError(`${index}: tensor ${tensor} maps to ${JSON.stringify(shard)}, not a file name inside the checkpoint folder`);
    }
    out.set(tensor, shard);
  }
  return out;
}

const littleEndian = endianness() === 'LE';

/** A tensor's elements: raw bf16/f16 bits or fp32 values, over exactly its bytes. */
export function readTensor(t: TensorInfo, source: TensorByteSource): Uint16Array | Float32Array {
  if (!littleEndian) throw new CheckpointError('safetensors data is little-endian; big-endian hosts are not supported');
  const got = source.read(t.file, t.offset, t.byteLength);
  const [buffer, byteOffset, byteLength] = ArrayBuffer.isView(got) ? [got.buffer, got.byteOffset, got.byteLength] : [got, 0, got.byteLength];
  if (byteLength !== t.byteLength) throw new CheckpointError(`${t.file}: tensor ${t.name}: read ${byteLength} of ${t.byteLength} bytes`);
  const elementSize = DTYPE_BYTES[t.dtype];
  let aligned: ArrayBufferLike = buffer;
  let start = byteOffset;
  if (byteOffset % elementSize !== 0) {
    const copy = new Uint8Array(byteLength);
    copy.set(new Uint8Array(buffer, byteOffset, byteLength));
    aligned = copy.buffer;
    start = 0;
  }
  const count = byteLength / elementSize;
  return t.dtype === 'F32' ? new Float32Array(aligned, start, count) : new Uint16Array(aligned, start, count);
}
