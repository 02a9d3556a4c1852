import { loadAddon } from './native.ts';

/** A 512-bit load from an address that is not a multiple of 64 touches two cache lines. */
const ALIGNMENT = 64;

/**
 * A zeroed typed array that starts on a 64-byte boundary when the native addon is loaded (its kernels stream
 * the array), else a plain one. Node's allocator places large buffers 16 bytes past a page boundary.
 */
function aligned<T>(length: number, bytesPer: number, make: (buffer: ArrayBuffer, offset: number, length: number) => T): T {
  const lib = loadAddon();
  const buffer = new ArrayBuffer(length * bytesPer + (lib ? ALIGNMENT : 0));
  return make(buffer, lib ? lib.alignOffset(buffer, ALIGNMENT) : 0, length);
}

export function alignedFloat32Array(length: number): Float32Array {
  return aligned(length, 4, (b, o, n) => new Float32Array(b, o, n));
}

export function alignedUint16Array(length: number): Uint16Array {
  return aligned(length, 2, (b, o, n) => new Uint16Array(b, o, n));
}
