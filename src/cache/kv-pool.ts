import { totalmem } from 'node:os';
import { KvlabError } from '../tensor/kvlab-error.ts';
import { quantizedBytes } from '../tensor/kv-quant.ts';
import type { KvDtype } from './kv-cache.ts';

/** Rows per block: every head's storage is a whole number of blocks, allocated and returned block by block. */
export const KV_BLOCK_ROWS = 16;

/**
 * Bytes one row takes in a head's storage: its key, its value (in the cache dtype) and its int32 position. For
 * int4 / int2, a packed row with its share of the scales and zero points of groups of `group` (rows still in the
 * fp32 residual window take the fp32 figure).
 */
export function kvRowBytes(headDim: number, dtype: KvDtype, group = 32): number {
  if (dtype === 'int4' || dtype === 'int2') return quantizedBytes(group, headDim, dtype === 'int4' ? 4 : 2, group) / group + 4;
  return headDim * 2 * (dtype === 'bf16' ? 2 : 4) + 4;
}

/**
 * The most bytes one head of `rows` rows can hold while it is filled in appends of at most `chunk` rows: whole
 * blocks of rows for fp32 and bf16; for int4 / int2 the packed groups, a residual of up to residual + group + chunk
 * fp32 rows, and the positions.
 */
export function kvHeadBytes(headDim: number, dtype: KvDtype, rows: number, quant: { group: number; residual: number }, chunk: number): number {
  if (dtype !== 'int4' && dtype !== 'int2') return blockRows(rows) * kvRowBytes(headDim, dtype);
  const packed = Math.floor(Math.max(0, rows - quant.residual) / quant.group) * quant.group;
  return blockRows(rows) * 4 + quantizedBytes(packed, headDim, dtype === 'int4' ? 4 : 2, quant.group) + blockRows(Math.min(rows, quant.residual + quant.group + chunk)) * headDim * 2 * 4;
}

/** Rows rounded up to whole blocks. */
export function blockRows(rows: number): number {
  return Math.ceil(rows / KV_BLOCK_ROWS) * KV_BLOCK_ROWS;
}

/** The default KV pool budget (--kv-memory): a quarter of the machine's RAM, leaving the rest to weights and activations. */
export function defaultKvMemoryBytes(): number {
  return Math.floor(totalmem() / 4);
}

/** An allocation the pool cannot grant: the bytes asked for exceed what is free. */
export class KvPoolExhaustedError extends KvlabError {
  constructor(message: string) {
    super('kv_pool_exhausted', message);
  }
}

/**
 * One byte budget shared by every KV cache of a loaded model. Caches charge it for the blocks their heads
 * allocate and give them back at once when rows are evicted (keep), truncated away, or the cache is released,
 * so `usedBytes` is the memory the caches really hold (spare capacity within the last block of a head included).
 * Reservations let a scheduler promise a sequence its worst-case growth before admitting it.
 */
export class KvPool {
  private used = 0;
  private reservedBytes = 0;
  private peak = 0;

  constructor(readonly budgetBytes: number) {
    if (!(Number.isFinite(budgetBytes) && budgetBytes > 0)) throw new RangeError(`KV pool budget must be a positive number of bytes, got ${budgetBytes}`);
  }

  /** Bytes allocated by caches now. */
  get usedBytes(): number {
    return this.used;
  }

  /** The most bytes allocated at once since the pool was made. */
  get peakBytes(): number {
    return this.peak;
  }

  /** Bytes promised to admitted sequences (reserve()) and not yet given back. */
  get reserved(): number {
    return this.reservedBytes;
  }

  /** Charges an allocation; throws KvPoolExhaustedError when it would pass the budget. */
  allocate(bytes: number, what = 'KV cache'): void {
    if (bytes <= 0) return;
    if (this.used + bytes > this.budgetBytes) {
      throw new KvPoolExhaustedError(
        `KV memory pool exhausted: ${what} needs ${formatBytes(bytes)} more, ${formatBytes(this.budgetBytes - this.used)} of ${formatBytes(this.budgetBytes)} free (--kv-memory)`,
      );
    }
    this.used += bytes;
    if (this.used > this.peak) this.peak = this.used;
  }

  release(bytes: number): void {
    if (bytes <= 0) return;
    if (bytes > this.used + 1e-6) throw new Error(`KvPool.release(): ${bytes} bytes released but only ${this.used} allocated`);
    this.used -= bytes;
  }

  /** Whether a reservation of `bytes` fits beside the reservations already made. */
  canReserve(bytes: number): boolean {
    return this.reservedBytes + bytes <= this.budgetBytes;
  }

  /** Promises `bytes` to one sequence (admission control); returns the function that gives them back. */
  reserve(bytes: number): () => void {
    if (!this.canReserve(bytes)) throw new KvPoolExhaustedError(`KV memory pool: cannot reserve ${formatBytes(bytes)}, ${formatBytes(this.budgetBytes - this.reservedBytes)} unreserved`);
    this.reservedBytes += bytes;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.reservedBytes -= bytes;
    };
  }
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1 << 30) return `${(bytes / (1 << 30)).toFixed(2)} GiB`;
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/** Parses a byte size: a number with an optional K/M/G/T suffix (powers of 1024), e.g. "4G", "512MiB", "1e9". */
export function parseByteSize(s: string): number {
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(s);
  if (!m) throw new Error(`bad byte size "${s}": expected a number with an optional K, M, G or T suffix (e.g. 4G)`);
  const unit = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const bytes = Math.floor(Number(m[1]) * unit);
  if (!(bytes > 0)) throw new Error(`bad byte size "${s}": must be positive`);
  return bytes;
}
