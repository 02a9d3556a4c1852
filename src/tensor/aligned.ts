import { loadAddon } from './native.ts';

/** A 512-bit load from an address that is not a multiple of 64 touches two cache lines. */
const ALIGNMENT = 64;

/**
 * A zeroed Float32Array that starts on a 64-byte boundary when the native addon is loaded (its kernels stream
 * the array), else a plain one. Node's allocator places large buffers 16 bytes past a page boundary.
 */
export function alignedFloat32Array(length: number): Float32Array {
  const lib = loadAddon();
  if (!lib) return new Float32Array(length);
  const buffer = new ArrayBuffer(length * 4 + ALIGNMENT);
  return new Float32Array(buffer, lib.alignOffset(buffer, ALIGNMENT), length);
}
