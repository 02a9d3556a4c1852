import { packedRowBytes, quantizedBytes, valueGroups, type KvQuantBits, type QuantizedKvRows } from '../tensor/kv-quant.ts';
import type { KvPool } from './kv-pool.ts';

/**
 * The packed rows of one quantized KV head (tensor/kv-quant.ts has the layout), held in whole key groups. Storage
 * grows and shrinks by groups, each change charged to (or returned to) the pool before the arrays change.
 */
export class QuantStore implements QuantizedKvRows {
  rows = 0;
  kCodes = new Uint8Array(0);
  vCodes = new Uint8Array(0);
  kScale = new Float32Array(0);
  kZero = new Float32Array(0);
  vScale = new Float32Array(0);
  vZero = new Float32Array(0);
  private capRows = 0;

  constructor(
    readonly headDim: number,
    readonly bits: KvQuantBits,
    readonly group: number,
    readonly pool?: KvPool,
  ) {}

  /** Rows the arrays have room for (a multiple of the group). */
  get capacity(): number {
    return this.capRows;
  }

  /** Bytes of the arrays (what the pool is charged for). */
  get allocatedBytes(): number {
    return quantizedBytes(this.capRows, this.headDim, this.bits, this.group);
  }

  /** Bytes of the rows held: codes, scales and zero points. */
  get heldBytes(): number {
    return quantizedBytes(this.rows, this.headDim, this.bits, this.group);
  }

  /** Room for `rows` rows (rounded up to whole groups), growing by half at least. */
  reserve(rows: number): void {
    if (rows <= this.capRows) return;
    this.resize(Math.max(rows, Math.ceil(this.capRows * 1.5)));
  }

  /** Frees the groups past the rows held. */
  shrinkToFit(): void {
    if (this.capRows > this.rows) this.resize(this.rows);
  }

  /** Copies another store's rows (same shape) into this one. */
  copyFrom(src: QuantStore): void {
    this.rows = 0;
    this.reserve(src.rows);
    this.rows = src.rows;
    const d = this.headDim;
    const rb = packedRowBytes(d, this.bits);
    const ng = valueGroups(d, this.group);
    this.kCodes.set(src.kCodes.subarray(0, src.rows * rb));
    this.vCodes.set(src.vCodes.subarray(0, src.rows * rb));
    this.kScale.set(src.kScale.subarray(0, (src.rows / this.group) * d));
    this.kZero.set(src.kZero.subarray(0, (src.rows / this.group) * d));
    this.vScale.set(src.vScale.subarray(0, src.rows * ng));
    this.vZero.set(src.vZero.subarray(0, src.rows * ng));
  }

  private resize(rows: number): void {
    const G = this.group;
    const cap = Math.ceil(rows / G) * G;
    const d = this.headDim;
    const delta = quantizedBytes(cap, d, this.bits, G) - this.allocatedBytes;
    if (delta > 0) this.pool?.allocate(delta, `the packed rows of a KV head (${cap} rows)`);
    else this.pool?.release(-delta);
    const rb = packedRowBytes(d, this.bits);
    const ng = valueGroups(d, G);
    const keep = Math.min(this.rows, cap);
    const grow = <T extends Uint8Array | Float32Array>(old: T, make: (n: number) => T, per: number, perRows: number): T => {
      const a = make((cap / perRows) * per);
      a.set(old.subarray(0, (keep / perRows) * per));
      return a;
    };
    this.kCodes = grow(this.kCodes, (n) => new Uint8Array(n), rb, 1);
    this.vCodes = grow(this.vCodes, (n) => new Uint8Array(n), rb, 1);
    this.kScale = grow(this.kScale, (n) => new Float32Array(n), d, G);
    this.kZero = grow(this.kZero, (n) => new Float32Array(n), d, G);
    this.vScale = grow(this.vScale, (n) => new Float32Array(n), ng, 1);
    this.vZero = grow(this.vZero, (n) => new Float32Array(n), ng, 1);
    this.capRows = cap;
    this.rows = keep;
  }
}
