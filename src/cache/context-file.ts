import { KvlabError } from '../tensor/kvlab-error.ts';
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { bf16ArrayToF32, f32ToBf16 } from '../tensor/dtype.ts';
import { checkKvQuantOptions, KvCache, kvQuantBits, parseKvDtype, type KvDtype, type KvQuantOptions } from './kv-cache.ts';

/**
 * One compressed cache in one file:
 *
 *   "KVLABCTX" | u32 format version | u32 header bytes | header (JSON) | rows | sha256 of everything before
 *
 * The header names the model the rows belong to (a fingerprint the caller computes), the cache's shape and
 * dtype, every (layer, KV head)'s row count, and the caller's own metadata (method, ratio, token ids,
 * spans...). The rows follow per (layer, head) in order: positions (int32), keys, values (fp32 or bf16
 * bits, the cache's dtype), little-endian. Writes are atomic: a temp file in the same folder, fsync,
 * rename, fsync of the folder; a reader never sees half a file under the final name.
 */

export const CONTEXT_FILE_MAGIC = 'KVLABCTX';
export const CONTEXT_FILE_VERSION = 1;
export const CONTEXT_FILE_EXTENSION = '.kvctx';
const PREAMBLE = 16;
const CHECKSUM = 32;

export interface ContextFileHeader {
  /** Identifies the model (config, tensor shapes and dtypes, tokenizer) the rows were computed with. */
  fingerprint: string;
  dtype: KvDtype;
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  nextPos: number;
  /** Rows per (layer, KV head), layer-major. */
  lengths: number[];
  /** The caller's metadata, stored as given. */
  meta: Record<string, unknown>;
  /** Group size and residual window of an int4 / int2 cache (whose rows the file holds as fp32, re-packed on load). */
  quant?: KvQuantOptions;
  /**
   * Per (layer, KV head), layer-major, the key channels kept by ThinK pruning (null: all); the file holds such keys at
   * full width with zeros in the pruned channels, and loading prunes them again.
   */
  keyChannels?: (number[] | null)[];
}

/** A context file that cannot be used: the message names the file and the problem. */
export class ContextFileError extends KvlabError {
  constructor(
    readonly path: string,
    readonly problem: 'truncated' | 'corrupted' | 'not-a-context' | 'newer-version' | 'other-model',
    detail: string,
  ) {
    super('context_file', `${path}: ${detail}`);
  }
}

function bytesPerValue(dtype: KvDtype): number {
  return dtype === 'bf16' ? 2 : 4;
}

function bodyBytes(h: ContextFileHeader): number {
  let rows = 0;
  for (const n of h.lengths) rows += n;
  return rows * (4 + 2 * h.headDim * bytesPerValue(h.dtype));
}

/**
 * The file's bytes as chunks (preamble, header, rows per head, checksum): what writeContextFile puts on disk
 * and what a store other than a folder (Redis) keeps as one value. fp32 rows are views into the cache: use
 * the chunks before the cache changes.
 */
export function encodeContextFile(cache: KvCache, fingerprint: string, meta: Record<string, unknown>, where: string): Uint8Array[] {
  if (cache.busy) throw new Error(`cannot save a cache while an async step writes into it (${where})`);
  const header: ContextFileHeader = {
    fingerprint,
    dtype: cache.dtype,
    numLayers: cache.numLayers,
    numKvHeads: cache.numKvHeads,
    headDim: cache.headDim,
    nextPos: cache.nextPos,
    lengths: cache.lengths().flat(),
    meta,
    ...(kvQuantBits(cache.dtype) ? { quant: cache.quantOptions } : {}),
    ...(cache.keyChannelsPruned ? { keyChannels: cache.heads.flat().map((s) => (s.keyChannels ? [...s.keyChannels] : null)) } : {}),
  };
  const headerBytes = Buffer.from(JSON.stringify(header), 'utf8');
  const preamble = Buffer.alloc(PREAMBLE);
  preamble.write(CONTEXT_FILE_MAGIC, 0, 'latin1');
  preamble.writeUInt32LE(CONTEXT_FILE_VERSION, 8);
  preamble.writeUInt32LE(headerBytes.length, 12);
  const chunks: Uint8Array[] = [preamble, headerBytes];
  cache.forEachHead((s) => {
    chunks.push(asBytes(s.pos.slice(0, s.len)));
    for (const rows of [s.keys(), s.values()]) chunks.push(asBytes(cache.dtype === 'bf16' ? Uint16Array.from(rows, f32ToBf16) : rows));
  });
  const hash = createHash('sha256');
  for (const c of chunks) hash.update(c);
  chunks.push(hash.digest());
  return chunks;
}

/** Writes the cache and metadata to `path` atomically; returns the file's size in bytes. */
export function writeContextFile(path: string, cache: KvCache, fingerprint: string, meta: Record<string, unknown>): number {
  const chunks = encodeContextFile(cache, fingerprint, meta, path);
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const fd = openSync(tmp, 'wx', 0o600);
  let size = 0;
  try {
    for (const b of chunks) {
      let off = 0;
      while (off < b.length) off += writeSync(fd, b, off, b.length - off);
      size += b.length;
    }
    fsyncSync(fd);
    closeSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  renameSync(tmp, path);
  syncFolder(dirname(path));
  return size;
}

/** Reads and checks the preamble and header only (no checksum): what a listing needs, cheaply. */
export function readContextHeader(path: string): ContextFileHeader {
  const fd = openSync(path, 'r');
  try {
    return readHeader(path, fd, statSync(path).size).header;
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads a context file whole, verifies its checksum and that it belongs to the model with this
 * fingerprint, and rebuilds the cache. Any problem is a ContextFileError naming the file.
 */
export function readContextFile(path: string, fingerprint: string): { header: ContextFileHeader; cache: KvCache } {
  const fd = openSync(path, 'r');
  let file: Buffer;
  try {
    const size = statSync(path).size;
    readHeader(path, fd, size);
    file = Buffer.allocUnsafe(size);
    let off = 0;
    while (off < size) {
      const n = readSync(fd, file, off, size - off, off);
      if (n === 0) throw new ContextFileError(path, 'truncated', `file ended at byte ${off} of ${size} while reading`);
      off += n;
    }
  } finally {
    closeSync(fd);
  }
  return decodeContextFile(file, path, fingerprint);
}

/**
 * A context file's bytes, from wherever they were kept (`where` names it in errors): the same checks as
 * readContextFile (layout, checksum, model fingerprint) and the rebuilt cache.
 */
export function decodeContextFile(file: Buffer, where: string, fingerprint: string): { header: ContextFileHeader; cache: KvCache } {
  const { header, bodyAt } = parseHeader(where, file.subarray(0, PREAMBLE), (at, n) => file.subarray(at, at + n), file.length);
  const digest = createHash('sha256').update(file.subarray(0, file.length - CHECKSUM)).digest();
  if (!digest.equals(file.subarray(file.length - CHECKSUM))) {
    throw new ContextFileError(where, 'corrupted', 'checksum mismatch: the file is corrupted (a byte changed since it was written)');
  }
  if (header.fingerprint !== fingerprint) {
    throw new ContextFileError(where, 'other-model', 'the context was saved by another model (its fingerprint differs from the loaded model\'s)');
  }
  const cache = new KvCache(header.numLayers, header.numKvHeads, header.headDim, header.dtype, undefined, header.quant);
  const d = header.headDim;
  const vb = bytesPerValue(header.dtype);
  let at = bodyAt;
  const take = (bytes: number) => {
    const copy = new Uint8Array(bytes);
    copy.set(file.subarray(at, at + bytes));
    at += bytes;
    return copy.buffer;
  };
  const widen = (buf: ArrayBuffer) => (header.dtype === 'bf16' ? bf16ArrayToF32(new Uint16Array(buf)) : new Float32Array(buf));
  cache.forEachHead((_, l, h) => {
    const n = header.lengths[l * header.numKvHeads + h]!;
    const pos = new Int32Array(take(n * 4));
    const keys = widen(take(n * d * vb));
    const values = widen(take(n * d * vb));
    const channels = header.keyChannels?.[l * header.numKvHeads + h];
    if (channels) cache.head(l, h).pruneKeyChannels(Int32Array.from(channels));
    cache.loadHead(l, h, pos, keys, values);
  });
  cache.nextPos = header.nextPos;
  return { header, cache };
}

function readHeader(path: string, fd: number, size: number): { header: ContextFileHeader; bodyAt: number } {
  const pre = Buffer.alloc(Math.min(PREAMBLE, size));
  readSync(fd, pre, 0, pre.length, 0);
  return parseHeader(path, pre, (at, n) => {
    const raw = Buffer.alloc(n);
    readSync(fd, raw, 0, n, at);
    return raw;
  }, size);
}

/** Checks the preamble and header of a file of `size` bytes; `read(at, n)` returns its bytes at an offset. */
function parseHeader(path: string, pre: Buffer, read: (at: number, n: number) => Buffer, size: number): { header: ContextFileHeader; bodyAt: number } {
  if (size < PREAMBLE) throw new ContextFileError(path, 'truncated', `file is truncated (${size} bytes, shorter than the ${PREAMBLE}-byte preamble)`);
  if (pre.toString('latin1', 0, 8) !== CONTEXT_FILE_MAGIC) throw new ContextFileError(path, 'not-a-context', 'not a kvlab context file (bad magic bytes)');
  const version = pre.readUInt32LE(8);
  if (version > CONTEXT_FILE_VERSION) {
    throw new ContextFileError(path, 'newer-version', `format version ${version} is newer than this kvlab reads (up to ${CONTEXT_FILE_VERSION}); upgrade kvlab`);
  }
  if (version < 1) throw new ContextFileError(path, 'corrupted', `format version ${version} is not valid`);
  const headerLength = pre.readUInt32LE(12);
  if (PREAMBLE + headerLength + CHECKSUM > size) {
    throw new ContextFileError(path, 'truncated', `file is truncated (${size} bytes; its header alone needs ${PREAMBLE + headerLength + CHECKSUM})`);
  }
  const raw = read(PREAMBLE, headerLength);
  let header: ContextFileHeader;
  try {
    header = checkHeader(JSON.parse(raw.toString('utf8')));
  } catch (e) {
    throw new ContextFileError(path, 'corrupted', `header is corrupted (${(e as Error).message})`);
  }
  const expected = PREAMBLE + headerLength + bodyBytes(header) + CHECKSUM;
  if (size < expected) throw new ContextFileError(path, 'truncated', `file is truncated (${size} of ${expected} bytes)`);
  if (size > expected) throw new ContextFileError(path, 'corrupted', `file has ${size - expected} unexpected trailing bytes (${size}, expected ${expected})`);
  return { header, bodyAt: PREAMBLE + headerLength };
}

function checkHeader(h: unknown): ContextFileHeader {
  if (!h || typeof h !== 'object') throw new Error('not an object');
  const o = h as Record<string, unknown>;
  const int = (k: string, min: number) => {
    if (!Number.isInteger(o[k]) || (o[k] as number) < min) throw new Error(`field ${k} must be an integer >= ${min}`);
    return o[k] as number;
  };
  if (typeof o.fingerprint !== 'string') throw new Error('field fingerprint must be a string');
  const dtype = parseKvDtype(String(o.dtype));
  const numLayers = int('numLayers', 1);
  const numKvHeads = int('numKvHeads', 1);
  const headDim = int('headDim', 1);
  const nextPos = int('nextPos', 0);
  const lengths = o.lengths;
  if (!Array.isArray(lengths) || lengths.length !== numLayers * numKvHeads || !lengths.every((n) => Number.isInteger(n) && n >= 0 && n <= nextPos)) {
    throw new Error(`field lengths must hold ${numLayers * numKvHeads} row counts in [0, nextPos]`);
  }
  if (!o.meta || typeof o.meta !== 'object' || Array.isArray(o.meta)) throw new Error('field meta must be an object');
  let quant: KvQuantOptions | undefined;
  if (o.quant !== undefined) {
    const q = o.quant as Record<string, unknown>;
    quant = checkKvQuantOptions({ group: Number(q?.group), residual: Number(q?.residual) });
  }
  const keyChannels = o.keyChannels;
  if (keyChannels !== undefined) {
    const valid = (c: unknown) => c === null || (Array.isArray(c) && c.length > 0 && c.every((x, i) => Number.isInteger(x) && x >= 0 && x < headDim && (i === 0 || x > c[i - 1])));
    if (!Array.isArray(keyChannels) || keyChannels.length !== numLayers * numKvHeads || !keyChannels.every(valid)) {
      throw new Error(`field keyChannels must hold ${numLayers * numKvHeads} lists of increasing channels in [0, ${headDim}) or nulls`);
    }
  }
  return {
    fingerprint: o.fingerprint,
    dtype,
    numLayers,
    numKvHeads,
    headDim,
    nextPos,
    lengths: lengths as number[],
    meta: o.meta as Record<string, unknown>,
    ...(quant ? { quant } : {}),
    ...(keyChannels ? { keyChannels: keyChannels as (number[] | null)[] } : {}),
  };
}

function asBytes(a: Int32Array | Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Makes a rename durable: the folder entry itself is flushed (ignored where folders cannot be opened for sync). */
function syncFolder(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // Some platforms refuse fsync on a directory; the rename is still atomic there.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
