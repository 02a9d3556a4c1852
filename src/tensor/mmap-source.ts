import type { TensorByteSource } from '../model/safetensors.ts';
import { loadAddon } from './native.ts';

/**
 * Tensor bytes straight from a read-only mmap of the checkpoint (zero copy): each tensor is an external
 * ArrayBuffer over the mapping, which lives as long as any of them is referenced.
 */
export function mmapSource(): TensorByteSource | null {
  const lib = loadAddon();
  if (!lib) return null;
  const mapped = new Map<string, ArrayBuffer>();
  const key = (file: string, offset: number, length: number) => `${file}\u0000${offset}\u0000${length}`;
  return {
    prepare(file, regions) {
      const bufs = lib.mapRegions(file, regions);
      regions.forEach(([o, l], i) => mapped.set(key(file, o, l), bufs[i]!));
    },
    read(file, offset, length) {
      const k = key(file, offset, length);
      let buf = mapped.get(k);
      if (!buf) buf = lib.mapRegions(file, [[offset, length]])[0]!;
      mapped.delete(k);
      return buf;
    },
  };
}
