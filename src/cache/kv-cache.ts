import { alignedFloat32Array, alignedUint16Array } from '../tensor/aligned.ts';
import type { Backend, KvHeadView, KvRows } from '../tensor/backend.ts';
import { kvRowsToF32 } from '../tensor/dtype.ts';
import { checkQuantShape, dequantizeKeys, dequantizeValues, quantizedBytes, type KvQuantBits } from '../tensor/kv-quant.ts';
import { KvCacheLayoutError } from '../tensor/kvlab-error.ts';
import { ReferenceBackend } from '../tensor/reference.ts';
import { blockRows, KV_BLOCK_ROWS, kvRowBytes, type KvPool } from './kv-pool.ts';
import { QuantStore } from './kv-quant-store.ts';
import { keepQuantizedRows, quantizeSettledRows } from './kv-quant-rows.ts';
import { checkKeyChannels, contiguousRuns, gatherChannels, scatterChannels } from './key-channels.ts';

/** Rows an unpooled head starts with (a pooled one starts empty and takes blocks as rows arrive). */
const MIN_CAPACITY = KV_BLOCK_ROWS;

/**
 * How cache rows are stored: fp32; bf16 (half the bytes to hold and to read per decoded token; keys and values
 * rounded to nearest bf16 as they are appended, then widened exactly wherever they are read); or int4 / int2 (KIVI:
 * keys per channel over groups of G rows, values per row over groups of G channels, the most recent rows kept in
 * fp32 until a whole group older than the residual window is complete; see KvQuantOptions).
 */
export type KvDtype = 'f32' | 'bf16' | 'int4' | 'int2';
export const KV_DTYPES: readonly KvDtype[] = ['f32', 'bf16', 'int4', 'int2'];

/** KIVI's group size G and residual window R of an int4 / int2 cache. */
export interface KvQuantOptions {
  /** Rows per key group and channels per value group (default 32). */
  readonly group: number;
  /** Most recent rows of each head kept in fp32 (default 128); a group older than these is quantized once complete. */
  readonly residual: number;
}

export const DEFAULT_KV_QUANT: KvQuantOptions = { group: 32, residual: 128 };

/** Bits per element of a quantized dtype, 0 for fp32 and bf16. */
export function kvQuantBits(dtype: KvDtype): KvQuantBits | 0 {
  return dtype === 'int4' ? 4 : dtype === 'int2' ? 2 : 0;
}

export function parseKvDtype(s: string): KvDtype {
  if (!(KV_DTYPES as readonly string[]).includes(s)) throw new Error(`unknown KV cache dtype "${s}"; known: ${KV_DTYPES.join(', ')}`);
  return s as KvDtype;
}

/** Checks quantization options: a positive integer group and a non-negative integer residual window. */
export function checkKvQuantOptions(o: KvQuantOptions): KvQuantOptions {
  if (!Number.isInteger(o.group) || o.group < 1 || o.group > 4096) throw new RangeError(`KV quantization group must be an integer in 1..4096, got ${o.group}`);
  if (!Number.isInteger(o.residual) || o.residual < 0) throw new RangeError(`KV quantization residual window must be a non-negative integer, got ${o.residual}`);
  return o;
}

function rows(dtype: KvDtype, length: number): KvRows {
  return dtype === 'bf16' ? alignedUint16Array(length) : alignedFloat32Array(length);
}

/**
 * One (layer, KV head) slot: rows [0, len) of post-RoPE keys, values and their absolute positions. Storage
 * is a whole number of KV_BLOCK_ROWS-row blocks; with a pool, every block is charged to it, and blocks past
 * the rows held are given back as soon as rows are evicted or truncated away.
 *
 * A quantized head (int4 / int2) holds rows [0, quant.rows) packed in `quant` and rows [quant.rows, len) in fp32
 * in k and v (the residual, row r at element (r - quant.rows) * headDim); `pos` covers every row.
 *
 * A channel-pruned head (ThinK, pruneKeyChannels) stores only the key channels listed in `keyChannels`: k holds rows
 * of keyDim = keyChannels.length values, v keeps headDim; rows appended later are stored with the same channels.
 */
export class HeadStore implements KvHeadView {
  k: KvRows;
  v: KvRows;
  pos: Int32Array;
  len = 0;
  readonly quant: QuantStore | undefined;
  readonly quantOptions: KvQuantOptions;
  /** Kept key channels, ascending, once the head is channel-pruned; null: every channel. */
  keyChannels: Int32Array | null = null;

  /** A pooled head starts empty (`capacity` applies to unpooled ones) and takes blocks as rows arrive. */
  constructor(
    readonly headDim: number,
    capacity = MIN_CAPACITY,
    readonly dtype: KvDtype = 'f32',
    readonly pool?: KvPool,
    quantOptions: KvQuantOptions = DEFAULT_KV_QUANT,
  ) {
    const cap = pool ? 0 : blockRows(capacity);
    this.k = rows(dtype, cap * headDim);
    this.v = rows(dtype, cap * headDim);
    this.pos = new Int32Array(cap);
    this.quantOptions = quantOptions;
    const bits = kvQuantBits(dtype);
    if (bits) {
      checkQuantShape(headDim, bits, quantOptions.group);
      this.quant = new QuantStore(headDim, bits, quantOptions.group, pool);
    }
  }

  /** Rows held packed (0 unless quantized): rows [0, quantRows) are in `quant`, the rest in k and v. */
  get quantRows(): number {
    return this.quant?.rows ?? 0;
  }

  /** Element offset in k / v of row `row` (row >= quantRows). */
  rowOffset(row: number): number {
    return (row - this.quantRows) * this.headDim;
  }

  /** Values per stored key row: headDim, or the kept channels of a channel-pruned head. */
  get keyDim(): number {
    return this.keyChannels ? this.keyChannels.length : this.headDim;
  }

  /** Element offset in k of row `row` (row >= quantRows). */
  keyRowOffset(row: number): number {
    return (row - this.quantRows) * this.keyDim;
  }

  /** Rows k and v have room for (the residual of a quantized head). */
  private get rowCapacity(): number {
    return this.v.length / this.headDim;
  }

  private get elementBytes(): number {
    return this.dtype === 'bf16' ? 2 : 4;
  }

  /** Bytes of the kept-channel list of a channel-pruned head (int32 each). */
  private get channelListBytes(): number {
    return this.keyChannels ? this.keyChannels.length * 4 : 0;
  }

  /** Bytes of storage this head holds (whole blocks: keys, values, positions; packed groups; a kept-channel list), the figure a pool is charged. */
  get allocatedBytes(): number {
    if (this.keyChannels) return this.capacity * ((this.keyDim + this.headDim) * this.elementBytes + 4) + this.channelListBytes;
    if (!this.quant) return this.capacity * kvRowBytes(this.headDim, this.dtype);
    return this.capacity * 4 + this.rowCapacity * this.headDim * 2 * 4 + this.quant.allocatedBytes;
  }

  /**
   * Bytes of the keys and values held: fp32 / bf16 rows (keys at keyDim channels plus the kept-channel list once
   * channel-pruned), or packed codes with their scales and zero points plus the fp32 residual.
   */
  get heldBytes(): number {
    if (!this.quant) return this.len * (this.keyDim + this.headDim) * this.elementBytes + this.channelListBytes;
    return this.quant.heldBytes + (this.len - this.quant.rows) * this.headDim * 2 * 4;
  }

  /**
   * Bytes of rows [from, to): their keys and values in the dtype; for a quantized head, a packed row's codes and
   * its share of the scales and zero points, and a residual row's fp32 key and value (summed over all rows: heldBytes).
   */
  rowsBytes(from: number, to: number): number {
    const d = this.headDim;
    const q = this.quant;
    if (!q) return (to - from) * (this.keyDim + d) * this.elementBytes;
    const packed = Math.max(0, Math.min(to, q.rows) - from);
    const packedShare = quantizedBytes(q.group, d, q.bits, q.group) / q.group;
    return packed * packedShare + (to - from - packed) * d * 2 * 4;
  }

  /**
   * Keys of rows [from, to) as fp32 [n, headDim]: a view into an fp32 cache, a widened copy of a bf16 one,
   * dequantized rows of a quantized one; in a channel-pruned head the pruned channels read as zeros (what
   * attention sees of them).
   */
  keys(from = 0, to = this.len): Float32Array {
    if (this.quant) return this.dequantized(from, to, 'k');
    if (this.keyChannels) return scatterChannels(this.storedKeys(from, to), this.keyChannels, this.headDim);
    return kvRowsToF32(this.k, from * this.headDim, to * this.headDim);
  }

  /** Keys of rows [from, to) as stored, fp32 [n, keyDim] (the kept channels of a channel-pruned head). */
  storedKeys(from = 0, to = this.len): Float32Array {
    if (this.quant) return this.dequantized(from, to, 'k');
    return kvRowsToF32(this.k, from * this.keyDim, to * this.keyDim);
  }

  /**
   * Keeps only these key channels (ascending, distinct, in [0, headDim)) of every row, now and for rows appended
   * later: k is rebuilt at the reduced width and the blocks' bytes shrink (ThinK). Channels already pruned stay
   * pruned: the list must be a subset of the head's current one. Not for quantized heads.
   */
  pruneKeyChannels(channels: Int32Array): void {
    if (this.quant) throw new KvCacheLayoutError(`ThinK key-channel pruning works on fp32 and bf16 caches, not on a ${this.dtype} (KIVI) cache`);
    checkKeyChannels(channels, this.headDim, this.keyChannels);
    const before = this.allocatedBytes;
    const kept = gatherChannels(this.keys(0, this.len), channels, this.headDim);
    const k = rows(this.dtype, this.rowCapacity * channels.length);
    jsCopier.copyRows(k, 0, kept, 0, channels.length, this.len, channels.length);
    this.k = k;
    this.keyChannels = Int32Array.from(channels);
    const delta = this.allocatedBytes - before;
    if (delta > 0) this.pool?.allocate(delta, 'a channel-pruned KV head');
    else this.pool?.release(-delta);
  }

  /**
   * Copies n new rows' keys from src (row i at srcOffset + i * srcStride, headDim wide) into k from row `first`:
   * whole rows, or the kept channels of a channel-pruned head, one run of adjacent channels at a time.
   */
  copyKeys(first: number, src: Float32Array, srcOffset: number, srcStride: number, n: number, copier: Pick<Backend, 'copyRows'>): void {
    const dst = this.keyRowOffset(first);
    if (!this.keyChannels) return copier.copyRows(this.k, dst, src, srcOffset, srcStride, n, this.headDim);
    const kd = this.keyDim;
    const runs = contiguousRuns(this.keyChannels);
    for (let i = 0; i < n; i++) {
      for (const [at, channel, width] of runs) copier.copyRows(this.k, dst + i * kd + at, src, srcOffset + i * srcStride + channel, srcStride, 1, width);
    }
  }

  /** Values of rows [from, to) as fp32, as keys() does. */
  values(from = 0, to = this.len): Float32Array {
    if (this.quant) return this.dequantized(from, to, 'v');
    return kvRowsToF32(this.v, from * this.headDim, to * this.headDim);
  }

  private dequantized(from: number, to: number, which: 'k' | 'v'): Float32Array {
    const d = this.headDim;
    const q = this.quant!;
    const out = new Float32Array(Math.max(0, to - from) * d);
    const a = Math.min(to, q.rows);
    if (from < a) (which === 'k' ? dequantizeKeys : dequantizeValues)(q, d, from, a, out, 0);
    const b = Math.max(from, q.rows);
    if (b < to) out.set((this[which] as Float32Array).subarray((b - q.rows) * d, (to - q.rows) * d), (b - from) * d);
    return out;
  }

  get capacity(): number {
    return this.pos.length;
  }

  /** Makes room for `rows` rows in all (growing by half the capacity at least, so appends copy rarely). */
  reserve(rows: number): void {
    if (rows <= this.capacity && rows - this.quantRows <= this.rowCapacity) return;
    const grown = (need: number, cap: number) => (need <= cap ? cap : blockRows(Math.max(need, Math.ceil(cap * 1.5), KV_BLOCK_ROWS)));
    this.resize(grown(rows, this.capacity), grown(rows - this.quantRows, this.rowCapacity));
  }

  /** Room for exactly `rows` rows in all (whole blocks), no geometric growth: for callers that know the final length. */
  reserveExact(rows: number): void {
    if (rows > this.capacity || rows - this.quantRows > this.rowCapacity) {
      this.resize(Math.max(this.capacity, blockRows(rows)), Math.max(this.rowCapacity, blockRows(rows - this.quantRows)));
    }
  }

  /**
   * Room for `rows` more rows as appends will hold them: all in k and v for fp32 and bf16; for int4 / int2 the
   * positions, a residual window of at most residual + group rows, and the packed groups of the rest.
   */
  reserveGrowth(rows: number): void {
    const q = this.quant;
    if (!q) return this.reserveExact(this.len + rows);
    const { group: G, residual: R } = this.quantOptions;
    const total = this.len + rows;
    const held = Math.min(total - q.rows, R + G);
    if (total > this.capacity || held > this.rowCapacity) this.resize(Math.max(this.capacity, blockRows(total)), Math.max(this.rowCapacity, blockRows(held)));
    q.reserve(q.rows + Math.max(0, Math.floor((total - q.rows - R) / G) * G));
  }

  /**
   * Adds rows for these positions (capacity reserved first, positions written, len advanced) and returns the
   * index of the first: the caller fills their k and v rows (at rowOffset(index)), possibly later, into the
   * arrays as they are now.
   */
  extend(positions: Int32Array): number {
    const first = this.len;
    this.reserve(first + positions.length);
    this.pos.set(positions, first);
    this.len = first + positions.length;
    return first;
  }

  /**
   * Quantizes every complete group of rows older than the residual window (a no-op for fp32 and bf16): after it,
   * a quantized head holds fewer than residual + group rows in fp32 (all of them while it has fewer than residual).
   */
  settle(): void {
    if (!this.quant) return;
    if (quantizeSettledRows(this)) this.shrinkToFit();
  }

  /**
   * Keeps rows at the given strictly increasing indices, compacting in place; blocks no longer needed are freed at
   * once. In a quantized head, kept key groups are re-quantized from their kept rows (kvquant-rows.ts).
   */
  keep(indices: ArrayLike<number>): void {
    const d = this.headDim;
    let prev = -1;
    for (let r = 0; r < indices.length; r++) {
      const i = indices[r]!;
      if (!Number.isInteger(i) || i <= prev || i >= this.len) {
        throw new RangeError(`keep(): indices must be strictly increasing integers in [0, ${this.len}); got ${i} after ${prev}`);
      }
      prev = i;
    }
    if (this.quant) {
      keepQuantizedRows(this, indices);
      this.settle();
      this.shrinkToFit();
      return;
    }
    const kd = this.keyDim;
    for (let r = 0; r < indices.length; r++) {
      const i = indices[r]!;
      if (i !== r) {
        this.k.copyWithin(r * kd, i * kd, (i + 1) * kd);
        this.v.copyWithin(r * d, i * d, (i + 1) * d);
        this.pos[r] = this.pos[i]!;
      }
    }
    this.len = indices.length;
    this.shrinkToFit();
  }

  /**
   * Replaces the head's rows with these: positions, and keys and values as fp32 [n, headDim] (stored in the
   * head's dtype; bf16 rows read back through keys()/values() load exactly; a quantized head quantizes the rows
   * older than its residual window; a channel-pruned head keeps its channels of the keys). How persisted caches come back.
   */
  load(pos: Int32Array, keys: Float32Array, values: Float32Array): void {
    const d = this.headDim;
    const n = pos.length;
    if (keys.length !== n * d || values.length !== n * d) {
      throw new RangeError(`load(): ${n} positions need ${n * d} key and value floats, got ${keys.length} and ${values.length}`);
    }
    this.len = 0;
    if (this.quant) this.quant.rows = 0;
    this.reserveExact(n);
    this.copyKeys(0, keys, 0, d, n, jsCopier);
    jsCopier.copyRows(this.v, 0, values, 0, d, n, d);
    this.pos.set(pos);
    this.len = n;
    this.settle();
    this.shrinkToFit();
  }

  /**
   * Drops rows past `len`, keeping their storage: a step undone and redone (benchmarks, a failed async step)
   * must not reallocate the head each time. shrinkToFit() gives the blocks back. Cutting into the packed rows of
   * a quantized head moves the cut group's remaining rows back to the residual, dequantized.
   */
  truncate(len: number): void {
    if (len > this.len) throw new RangeError(`truncate(${len}) beyond the current length ${this.len}`);
    const q = this.quant;
    if (q && len < q.rows) {
      const from = Math.floor(len / q.group) * q.group;
      const keys = this.keys(from, len);
      const values = this.values(from, len);
      q.rows = from;
      this.len = len;
      this.reserveExact(len);
      (this.k as Float32Array).set(keys, 0);
      (this.v as Float32Array).set(values, 0);
      return;
    }
    this.len = len;
  }

  /** Frees every block past the last one holding rows (an unpooled head keeps one block at least). */
  shrinkToFit(): void {
    const min = this.pool ? 0 : MIN_CAPACITY;
    const need = blockRows(Math.max(this.len, min));
    const needRows = blockRows(Math.max(this.len - this.quantRows, min));
    if (need < this.capacity || needRows < this.rowCapacity) this.resize(Math.min(need, this.capacity), Math.min(needRows, this.rowCapacity));
    this.quant?.shrinkToFit();
  }

  /** Drops every row and frees all storage; a channel-pruned head stores every channel again. */
  release(): void {
    this.len = 0;
    if (this.quant) this.quant.rows = 0;
    this.shrinkToFit();
    if (this.keyChannels) {
      const before = this.allocatedBytes;
      this.keyChannels = null;
      this.k = rows(this.dtype, this.rowCapacity * this.headDim);
      const delta = this.allocatedBytes - before;
      if (delta > 0) this.pool?.allocate(delta, 'a released KV head');
      else this.pool?.release(-delta);
    }
  }

  /** Positions for `capacity` rows, k and v for `rowCapacity` rows (the same unless quantized). */
  private resize(capacity: number, rowCapacity = capacity): void {
    const d = this.headDim;
    const kd = this.keyDim;
    const before = this.allocatedBytes - (this.quant?.allocatedBytes ?? 0) - this.channelListBytes;
    const after = this.quant ? capacity * 4 + rowCapacity * d * 2 * 4 : capacity * ((kd + d) * this.elementBytes + 4);
    const delta = after - before;
    if (delta > 0) this.pool?.allocate(delta, `a KV head of ${capacity} rows`);
    else this.pool?.release(-delta);
    const held = this.len - this.quantRows;
    const k = rows(this.dtype, rowCapacity * kd);
    const v = rows(this.dtype, rowCapacity * d);
    const pos = new Int32Array(capacity);
    k.set(this.k.subarray(0, held * kd));
    v.set(this.v.subarray(0, held * d));
    pos.set(this.pos.subarray(0, this.len));
    this.k = k;
    this.v = v;
    this.pos = pos;
  }
}

/** Copies rows in plain JavaScript when no backend is given. */
const jsCopier: Pick<Backend, 'copyRows'> = new ReferenceBackend();

/** What truncate() restores: every head's length and the next position. */
export interface CacheMark {
  readonly lengths: Int32Array;
  readonly nextPos: number;
  readonly epoch: number;
  /**
   * A quantized cache's packed row counts and fp32 residual rows per head at the mark, so that truncate() undoes
   * quantization done since (the residual comes back exactly as it was).
   */
  readonly residual?: { readonly quantRows: Int32Array; readonly keys: Float32Array[]; readonly values: Float32Array[] };
}

/**
 * Ragged KV cache: every (layer, KV head) has its own length, so per-head eviction frees real memory.
 * New tokens always continue at nextPos, the uncompressed sequence length.
 */
export class KvCache {
  readonly heads: HeadStore[][];
  nextPos = 0;
  /** Bumped by keep(): a mark taken before a compaction can no longer be restored. */
  private epoch = 0;
  private busyWith: string | null = null;

  constructor(
    readonly numLayers: number,
    readonly numKvHeads: number,
    readonly headDim: number,
    readonly dtype: KvDtype = 'f32',
    /** Where the heads' blocks are charged; without one the cache is unbounded. */
    readonly pool?: KvPool,
    /** Group size and residual window of an int4 / int2 cache (ignored by fp32 and bf16). */
    readonly quantOptions: KvQuantOptions = DEFAULT_KV_QUANT,
  ) {
    checkKvQuantOptions(quantOptions);
    this.heads = Array.from({ length: numLayers }, () => Array.from({ length: numKvHeads }, () => new HeadStore(headDim, undefined, dtype, pool, quantOptions)));
  }

  layer(l: number): HeadStore[] {
    return this.heads[l]!;
  }

  head(l: number, h: number): HeadStore {
    return this.heads[l]![h]!;
  }

  /**
   * Appends n rows to every head of a layer from k, v laid out [n, numKvHeads, headDim]. The rows are
   * copied by `copier` (a backend, whose copy may be recorded and run later: each head's storage is
   * reserved before the copy is issued, so it targets the arrays the head keeps). A quantized cache first
   * quantizes the layer's rows that have left the residual window (rows appended by earlier, completed steps).
   */
  appendLayer(l: number, k: Float32Array, v: Float32Array, positions: Int32Array, copier: Pick<Backend, 'copyRows'> = jsCopier): void {
    this.assertIdle('appendLayer');
    const d = this.headDim;
    const H = this.numKvHeads;
    const n = positions.length;
    const heads = this.heads[l]!;
    for (let h = 0; h < H; h++) {
      const s = heads[h]!;
      s.settle();
      const first = s.extend(positions);
      s.copyKeys(first, k, h * d, H * d, n, copier);
      copier.copyRows(s.v, s.rowOffset(first), v, h * d, H * d, n, d);
    }
  }

  /** Quantizes, in every head, the complete groups older than the residual window (no-op unless int4 / int2). */
  settle(): void {
    this.assertIdle('settle');
    if (kvQuantBits(this.dtype)) this.forEachHead((s) => s.settle());
  }

  /** Advances the next position after a forward pass has appended n tokens to every layer. */
  advance(n: number): void {
    this.assertIdle('advance');
    this.nextPos += n;
  }

  /** Set while an async step that writes into this cache is running; every change in between is refused. */
  get busy(): boolean {
    return this.busyWith !== null;
  }

  setBusy(what: string | null): void {
    this.busyWith = what;
  }

  private assertIdle(op: string): void {
    if (this.busyWith) throw new Error(`KvCache.${op}(): the cache is in use by ${this.busyWith}; await it first`);
  }

  mark(): CacheMark {
    const lengths = new Int32Array(this.numLayers * this.numKvHeads);
    this.forEachHead((s, l, h) => (lengths[l * this.numKvHeads + h] = s.len));
    if (!kvQuantBits(this.dtype)) return { lengths, nextPos: this.nextPos, epoch: this.epoch };
    const quantRows = new Int32Array(lengths.length);
    const keys: Float32Array[] = [];
    const values: Float32Array[] = [];
    this.forEachHead((s, l, h) => {
      quantRows[l * this.numKvHeads + h] = s.quantRows;
      keys.push((s.k as Float32Array).slice(0, s.rowOffset(s.len)));
      values.push((s.v as Float32Array).slice(0, s.rowOffset(s.len)));
    });
    return { lengths, nextPos: this.nextPos, epoch: this.epoch, residual: { quantRows, keys, values } };
  }

  truncate(mark: CacheMark): void {
    this.assertIdle('truncate');
    if (mark.epoch !== this.epoch) throw new Error('truncate(): the cache was compacted after this mark was taken');
    this.forEachHead((s, l, h) => {
      const i = l * this.numKvHeads + h;
      const r = mark.residual;
      if (r && s.quant && s.quantRows > r.quantRows[i]!) {
        // Positions of rows below the mark's length never change; the residual comes back from the mark.
        s.quant.rows = r.quantRows[i]!;
        s.len = mark.lengths[i]!;
        s.reserveExact(s.len);
        (s.k as Float32Array).set(r.keys[i]!);
        (s.v as Float32Array).set(r.values[i]!);
      } else s.truncate(mark.lengths[i]!);
    });
    this.nextPos = mark.nextPos;
  }

  /**
   * Gives every head room for `rows` more rows (exactly, in whole blocks), so appends up to that many never
   * reallocate; with a pool this charges the growth now, or throws KvPoolExhaustedError.
   */
  reserveRows(rows: number): void {
    this.assertIdle('reserveRows');
    this.forEachHead((s) => s.reserveGrowth(rows));
  }

  /** Frees every head's blocks past the rows it holds (e.g. a query's rows truncated away), at once. */
  shrinkToFit(): void {
    this.assertIdle('shrinkToFit');
    this.forEachHead((s) => s.shrinkToFit());
  }

  /** Drops every row and returns all storage (to the pool, if any) at once; the cache can be filled again. */
  release(): void {
    this.assertIdle('release');
    this.forEachHead((s) => s.release());
    this.nextPos = 0;
    this.epoch++;
  }

  keep(l: number, h: number, indices: ArrayLike<number>): void {
    this.assertIdle('keep');
    this.heads[l]![h]!.keep(indices);
    this.epoch++;
  }

  /** Keeps only these key channels of one head (HeadStore.pruneKeyChannels); a mark taken before can no longer be restored. */
  pruneKeyChannels(l: number, h: number, channels: Int32Array): void {
    this.assertIdle('pruneKeyChannels');
    this.heads[l]![h]!.pruneKeyChannels(channels);
    this.epoch++;
  }

  /** Replaces one head's rows (HeadStore.load); a mark taken before can no longer be restored. */
  loadHead(l: number, h: number, pos: Int32Array, keys: Float32Array, values: Float32Array): void {
    this.assertIdle('loadHead');
    this.heads[l]![h]!.load(pos, keys, values);
    this.epoch++;
  }

  /**
   * Bytes of one row's key and value in the cache's dtype; for int4 / int2, a packed row with its share of the
   * scales and zero points (rows still in the fp32 residual take fp32 bytes: bytes() counts them as they are).
   */
  get rowBytes(): number {
    return kvRowBytes(this.headDim, this.dtype, this.quantOptions.group) - 4;
  }

  /** Bytes of the K and V rows held, the figure compression must shrink (packed codes, scales, zero points and the fp32 residual of a quantized cache). */
  bytes(): number {
    let total = 0;
    this.forEachHead((s) => (total += s.heldBytes));
    return total;
  }

  /** Whether any head stores pruned key channels (ThinK): attention then reads keyDim channels per key. */
  get keyChannelsPruned(): boolean {
    return this.heads.some((layer) => layer.some((s) => s.keyChannels !== null));
  }

  /** Bytes actually allocated for K, V and positions (and packed rows, kept-channel lists), spare capacity included. */
  allocatedBytes(): number {
    let total = 0;
    this.forEachHead((s) => {
      total += s.k.buffer.byteLength + s.v.buffer.byteLength + s.pos.byteLength + (s.keyChannels?.byteLength ?? 0);
      const q = s.quant;
      if (q) for (const a of [q.kCodes, q.vCodes, q.kScale, q.kZero, q.vScale, q.vZero]) total += a.byteLength;
    });
    return total;
  }

  /** Bytes of the blocks the heads hold (what a pool is charged for this cache). */
  blockBytes(): number {
    let total = 0;
    this.forEachHead((s) => (total += s.allocatedBytes));
    return total;
  }

  /**
   * A copy, in another dtype if asked (to bf16: rounded to nearest even; to fp32: widened exactly), charged to
   * `pool` (default this cache's; null: unpooled).
   */
  clone(dtype: KvDtype = this.dtype, pool: KvPool | null = this.pool ?? null): KvCache {
    const copy = new KvCache(this.numLayers, this.numKvHeads, this.headDim, dtype, pool ?? undefined, this.quantOptions);
    copy.nextPos = this.nextPos;
    const d = this.headDim;
    this.forEachHead((s, l, h) => {
      const t = copy.head(l, h);
      if (t.quant && s.quant && dtype === this.dtype) {
        t.quant.copyFrom(s.quant);
        t.reserveExact(s.len);
        const held = s.rowOffset(s.len);
        (t.k as Float32Array).set((s.k as Float32Array).subarray(0, held));
        (t.v as Float32Array).set((s.v as Float32Array).subarray(0, held));
        t.pos.set(s.pos.subarray(0, s.len));
        t.len = s.len;
        return;
      }
      if (t.quant) {
        t.load(s.pos.slice(0, s.len), s.keys(), s.values());
        return;
      }
      if (s.keyChannels) t.pruneKeyChannels(s.keyChannels);
      t.reserveExact(s.len);
      if (dtype === this.dtype) {
        t.k.set(s.k.subarray(0, s.len * s.keyDim));
        t.v.set(s.v.subarray(0, s.len * d));
      } else {
        t.copyKeys(0, s.keys(), 0, d, s.len, jsCopier);
        jsCopier.copyRows(t.v, 0, s.values(), 0, d, s.len, d);
      }
      t.pos.set(s.pos.subarray(0, s.len));
      t.len = s.len;
    });
    return copy;
  }

  lengths(): number[][] {
    return this.heads.map((layer) => layer.map((s) => s.len));
  }

  forEachHead(fn: (store: HeadStore, layer: number, head: number) => void): void {
    for (let l = 0; l < this.numLayers; l++) for (let h = 0; h < this.numKvHeads; h++) fn(this.heads[l]![h]!, l, h);
  }
}
