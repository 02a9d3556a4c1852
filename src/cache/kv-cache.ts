import { alignedFloat32Array, alignedUint16Array } from '../tensor/aligned.ts';
import type { Backend, KvHeadView, KvRows } from '../tensor/backend.ts';
import { kvRowsToF32 } from '../tensor/dtype.ts';
import { ReferenceBackend } from '../tensor/reference.ts';
import { blockRows, KV_BLOCK_ROWS, kvRowBytes, type KvPool } from './kv-pool.ts';

/** Rows an unpooled head starts with (a pooled one starts empty and takes blocks as rows arrive). */
const MIN_CAPACITY = KV_BLOCK_ROWS;

/**
 * How cache rows are stored: fp32, or bf16 (half the bytes to hold and to read per decoded token; keys and
 * values rounded to nearest bf16 as they are appended, then widened exactly wherever they are read).
 */
export type KvDtype = 'f32' | 'bf16';
export const KV_DTYPES: readonly KvDtype[] = ['f32', 'bf16'];

export function parseKvDtype(s: string): KvDtype {
  if (!(KV_DTYPES as readonly string[]).includes(s)) throw new Error(`unknown KV cache dtype "${s}"; known: ${KV_DTYPES.join(', ')}`);
  return s as KvDtype;
}

function rows(dtype: KvDtype, length: number): KvRows {
  return dtype === 'bf16' ? alignedUint16Array(length) : alignedFloat32Array(length);
}

/**
 * One (layer, KV head) slot: rows [0, len) of post-RoPE keys, values and their absolute positions. Storage
 * is a whole number of KV_BLOCK_ROWS-row blocks; with a pool, every block is charged to it, and blocks past
 * the rows held are given back as soon as rows are evicted or truncated away.
 */
export class HeadStore implements KvHeadView {
  k: KvRows;
  v: KvRows;
  pos: Int32Array;
  len = 0;

  /** A pooled head starts empty (`capacity` applies to unpooled ones) and takes blocks as rows arrive. */
  constructor(readonly headDim: number, capacity = MIN_CAPACITY, readonly dtype: KvDtype = 'f32', readonly pool?: KvPool) {
    const cap = pool ? 0 : blockRows(capacity);
    this.k = rows(dtype, cap * headDim);
    this.v = rows(dtype, cap * headDim);
    this.pos = new Int32Array(cap);
  }

  /** Bytes of storage this head holds (whole blocks: keys, values, positions), the figure a pool is charged. */
  get allocatedBytes(): number {
    return this.capacity * kvRowBytes(this.headDim, this.dtype);
  }

  /** Keys of rows [from, to) as fp32: a view into an fp32 cache, a widened copy of a bf16 one. */
  keys(from = 0, to = this.len): Float32Array {
    return kvRowsToF32(this.k, from * this.headDim, to * this.headDim);
  }

  /** Values of rows [from, to) as fp32, as keys() does. */
  values(from = 0, to = this.len): Float32Array {
    return kvRowsToF32(this.v, from * this.headDim, to * this.headDim);
  }

  get capacity(): number {
    return this.pos.length;
  }

  /** Makes room for `rows` rows in all (growing by half the capacity at least, so appends copy rarely). */
  reserve(rows: number): void {
    if (rows <= this.capacity) return;
    this.resize(blockRows(Math.max(rows, Math.ceil(this.capacity * 1.5), KV_BLOCK_ROWS)));
  }

  /** Room for exactly `rows` rows in all (whole blocks), no geometric growth: for callers that know the final length. */
  reserveExact(rows: number): void {
    if (rows > this.capacity) this.resize(blockRows(rows));
  }

  /**
   * Adds rows for these positions (capacity reserved first, positions written, len advanced) and returns the
   * index of the first: the caller fills their k and v rows, possibly later, into the arrays as they are now.
   */
  extend(positions: Int32Array): number {
    const first = this.len;
    this.reserve(first + positions.length);
    this.pos.set(positions, first);
    this.len = first + positions.length;
    return first;
  }

  /** Keeps rows at the given strictly increasing indices, compacting in place; blocks no longer needed are freed at once. */
  keep(indices: ArrayLike<number>): void {
    const d = this.headDim;
    let prev = -1;
    for (let r = 0; r < indices.length; r++) {
      const i = indices[r]!;
      if (!Number.isInteger(i) || i <= prev || i >= this.len) {
        throw new RangeError(`keep(): indices must be strictly increasing integers in [0, ${this.len}); got ${i} after ${prev}`);
      }
      prev = i;
      if (i !== r) {
        this.k.copyWithin(r * d, i * d, (i + 1) * d);
        this.v.copyWithin(r * d, i * d, (i + 1) * d);
        this.pos[r] = this.pos[i]!;
      }
    }
    this.len = indices.length;
    this.shrinkToFit();
  }

  /**
   * Replaces the head's rows with these: positions, and keys and values as fp32 [n, headDim] (stored in the
   * head's dtype; bf16 rows read back through keys()/values() load exactly). How persisted caches come back.
   */
  load(pos: Int32Array, keys: Float32Array, values: Float32Array): void {
    const d = this.headDim;
    const n = pos.length;
    if (keys.length !== n * d || values.length !== n * d) {
      throw new RangeError(`load(): ${n} positions need ${n * d} key and value floats, got ${keys.length} and ${values.length}`);
    }
    this.len = 0;
    this.reserveExact(n);
    jsCopier.copyRows(this.k, 0, keys, 0, d, n, d);
    jsCopier.copyRows(this.v, 0, values, 0, d, n, d);
    this.pos.set(pos);
    this.len = n;
    this.shrinkToFit();
  }

  /**
   * Drops rows past `len`, keeping their storage: a step undone and redone (benchmarks, a failed async step)
   * must not reallocate the head each time. shrinkToFit() gives the blocks back.
   */
  truncate(len: number): void {
    if (len > this.len) throw new RangeError(`truncate(${len}) beyond the current length ${this.len}`);
    this.len = len;
  }

  /** Frees every block past the last one holding rows (an unpooled head keeps one block at least). */
  shrinkToFit(): void {
    const need = blockRows(Math.max(this.len, this.pool ? 0 : MIN_CAPACITY));
    if (need < this.capacity) this.resize(need);
  }

  /** Drops every row and frees all storage. */
  release(): void {
    this.len = 0;
    this.shrinkToFit();
  }

  private resize(capacity: number): void {
    const d = this.headDim;
    const delta = (capacity - this.capacity) * kvRowBytes(d, this.dtype);
    if (delta > 0) this.pool?.allocate(delta, `a KV head of ${capacity} rows`);
    else this.pool?.release(-delta);
    const k = rows(this.dtype, capacity * d);
    const v = rows(this.dtype, capacity * d);
    const pos = new Int32Array(capacity);
    k.set(this.k.subarray(0, this.len * d));
    v.set(this.v.subarray(0, this.len * d));
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
  ) {
    this.heads = Array.from({ length: numLayers }, () => Array.from({ length: numKvHeads }, () => new HeadStore(headDim, undefined, dtype, pool)));
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
   * reserved before the copy is issued, so it targets the arrays the head keeps).
   */
  appendLayer(l: number, k: Float32Array, v: Float32Array, positions: Int32Array, copier: Pick<Backend, 'copyRows'> = jsCopier): void {
    this.assertIdle('appendLayer');
    const d = this.headDim;
    const H = this.numKvHeads;
    const n = positions.length;
    const heads = this.heads[l]!;
    for (let h = 0; h < H; h++) {
      const s = heads[h]!;
      const first = s.extend(positions);
      copier.copyRows(s.k, first * d, k, h * d, H * d, n, d);
      copier.copyRows(s.v, first * d, v, h * d, H * d, n, d);
    }
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
    return { lengths, nextPos: this.nextPos, epoch: this.epoch };
  }

  truncate(mark: CacheMark): void {
    this.assertIdle('truncate');
    if (mark.epoch !== this.epoch) throw new Error('truncate(): the cache was compacted after this mark was taken');
    this.forEachHead((s, l, h) => s.truncate(mark.lengths[l * this.numKvHeads + h]!));
    this.nextPos = mark.nextPos;
  }

  /**
   * Gives every head room for `rows` more rows (exactly, in whole blocks), so appends up to that many never
   * reallocate; with a pool this charges the growth now, or throws KvPoolExhaustedError.
   */
  reserveRows(rows: number): void {
    this.assertIdle('reserveRows');
    this.forEachHead((s) => s.reserveExact(s.len + rows));
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

  /** Replaces one head's rows (HeadStore.load); a mark taken before can no longer be restored. */
  loadHead(l: number, h: number, pos: Int32Array, keys: Float32Array, values: Float32Array): void {
    this.assertIdle('loadHead');
    this.heads[l]![h]!.load(pos, keys, values);
    this.epoch++;
  }

  /** Bytes of one row's key and value in the cache's dtype. */
  get rowBytes(): number {
    return this.headDim * 2 * (this.dtype === 'bf16' ? 2 : 4);
  }

  /** Bytes of the K and V rows held, the figure compression must shrink. */
  bytes(): number {
    let rows = 0;
    this.forEachHead((s) => (rows += s.len));
    return rows * this.rowBytes;
  }

  /** Bytes actually allocated for K, V and positions, spare capacity included. */
  allocatedBytes(): number {
    let total = 0;
    this.forEachHead((s) => (total += s.k.buffer.byteLength + s.v.buffer.byteLength + s.pos.byteLength));
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
    const copy = new KvCache(this.numLayers, this.numKvHeads, this.headDim, dtype, pool ?? undefined);
    copy.nextPos = this.nextPos;
    const d = this.headDim;
    this.forEachHead((s, l, h) => {
      const t = copy.head(l, h);
      t.reserveExact(s.len);
      if (dtype === this.dtype) {
        t.k.set(s.k.subarray(0, s.len * d));
        t.v.set(s.v.subarray(0, s.len * d));
      } else {
        jsCopier.copyRows(t.k, 0, s.keys(), 0, d, s.len, d);
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
