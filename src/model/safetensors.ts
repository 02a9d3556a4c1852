import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { basename, join } from 'node:path';

export class CheckpointError extends Error {}

export type SafetensorsDType = 'BF16' | 'F16' | 'F32';
const DTYPE_BYTES: Record<SafetensorsDType, number> = { BF16: 2, F16: 2, F32: 4 };
const MAX_HEADER = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  file: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute byte offset of the tensor in its file. */
  offset: number;
  byteLength: number;
}

/** Reads tensor bytes; pluggable so a native mmap can replace plain reads. */
export interface TensorByteSource {
  read(file: string, offset: number, length: number): ArrayBuffer;
  /** Optional: told every region of a file before the reads, so a mapping can be made once. */
  prepare?(file: string, regions: [number, number][]): void;
}

export const fileReadSource: TensorByteSource = {
  read(file, offset, length) {
    const buf = new ArrayBuffer(length);
    const fd = openSync(file, 'r');
    try {
      let done = 0;
      while (done < length) {
        const n = readSync(fd, new Uint8Array(buf, done, length - done), 0, length - done, offset + done);
        if (n <= 0) throw new CheckpointError(`${file}: unexpected end of file reading ${length} bytes at ${offset}`);
        done += n;
      }
    } finally {
      closeSync(fd);
    }
    return buf;
  },
};

/** Parses and validates one safetensors header: bounds, JSON, dtypes, shapes, offsets, overlaps. */
export function readSafetensorsHeader(file: string): TensorInfo[] {
  const name = basename(file);
  if (!existsSync(file)) throw new CheckpointError(`${name}: file not found (${file})`);
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size < 8) throw new CheckpointError(`${name}: truncated file (${size} bytes, no header length)`);
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = Number(lenBuf.readBigUInt64LE(0));
    if (headerLen === 0 || headerLen > MAX_HEADER) throw new CheckpointError(`${name}: bad header length ${headerLen} (must be 1..${MAX_HEADER})`);
    if (8 + headerLen > size) throw new CheckpointError(`${name}: header length ${headerLen} runs past the end of the file (${size} bytes)`);
    const headerBuf = Buffer.alloc(headerLen);
    readSync(fd, headerBuf, 0, headerLen, 8);
    let header: unknown;
    try {
      header = JSON.parse(headerBuf.toString('utf8'));
    } catch (e) {
      throw new CheckpointError(`${name}: header is not valid JSON (${(e as Error).message})`);
    }
    if (!header || typeof header !== 'object' || Array.isArray(header)) throw new CheckpointError(`${name}: header is not a JSON object`);
    const dataStart = 8 + headerLen;
    const dataSize = size - dataStart;
    const infos: TensorInfo[] = [];
    for (const [tensor, raw] of Object.entries(header as Record<string, unknown>)) {
      if (tensor === '__metadata__') continue;
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (!e || typeof e !== 'object') throw new CheckpointError(`${name}: tensor ${tensor}: entry is not an object`);
      if (typeof e.dtype !== 'string' || !(e.dtype in DTYPE_BYTES)) {
        throw new CheckpointError(`${name}: tensor ${tensor}: unsupported dtype ${JSON.stringify(e.dtype)} (supported: BF16, F16, F32)`);
      }
      const dtype = e.dtype as SafetensorsDType;
      if (!Array.isArray(e.shape) || !e.shape.every((x) => Number.isInteger(x) && x >= 0)) {
        throw new CheckpointError(`${name}: tensor ${tensor}: shape must be a list of non-negative integers`);
      }
      const off = e.data_offsets;
      if (!Array.isArray(off) || off.length !== 2 || !off.every((x) => Number.isInteger(x) && x >= 0) || off[1] < off[0]) {
        throw new CheckpointError(`${name}: tensor ${tensor}: data_offsets must be [begin, end] with 0 <= begin <= end`);
      }
      const [begin, end] = off as [number, number];
      if (end > dataSize) throw new CheckpointError(`${name}: tensor ${tensor}: offsets [${begin}, ${end}] out of range (data section is ${dataSize} bytes; truncated file?)`);
      const shape = e.shape as number[];
      const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
      if (end - begin !== expected) {
        throw new CheckpointError(`${name}: tensor ${tensor}: ${end - begin} bytes for ${dtype} shape [${shape.join(', ')}] (expected ${expected})`);
      }
      infos.push({ name: tensor, file, dtype, shape, offset: dataStart + begin, byteLength: end - begin });
    }
    const sorted = [...infos].sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < sorted.length; i++) {
      const p = sorted[i - 1]!;
      const c = sorted[i]!;
      if (c.offset < p.offset + p.byteLength) throw new CheckpointError(`${name}: tensors ${p.name} and ${c.name} overlap`);
    }
    return infos;
  } finally {
    closeSync(fd);
  }
}

/** All tensors of a checkpoint folder: model.safetensors, or the shards named by model.safetensors.index.json. */
export function readCheckpointIndex(dir: string): Map<string, TensorInfo> {
  const index = join(dir, 'model.safetensors.index.json');
  const single = join(dir, 'model.safetensors');
  const out = new Map<string, TensorInfo>();
  if (existsSync(index)) {
    let map: Record<string, string>;
    try {
      map = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map;
    } catch (e) {
      throw new CheckpointError(`model.safetensors.index.json: not valid JSON (${(e as Error).message})`);
    }
    if (!map || typeof map !== 'object') throw new CheckpointError('model.safetensors.index.json: no weight_map');
    const files = new Set(Object.values(map));
    const byFile = new Map<string, Map<string, TensorInfo>>();
    for (const f of files) byFile.set(f, new Map(readSafetensorsHeader(join(dir, f)).map((t) => [t.name, t])));
    for (const [tensor, f] of Object.entries(map)) {
      const info = byFile.get(f)!.get(tensor);
      if (!info) throw new CheckpointError(`${f}: tensor ${tensor} is listed in model.safetensors.index.json but missing from the shard`);
      out.set(tensor, info);
    }
    return out;
  }
  if (!existsSync(single)) throw new CheckpointError(`no model.safetensors or model.safetensors.index.json in ${dir}`);
  for (const t of readSafetensorsHeader(single)) out.set(t.name, t);
  return out;
}
