import type { TensorByteSource } from './byte-source.ts';
import { loadAddon, type MappedFile } from './native.ts';

/**
 * Tensor bytes straight from a private mmap of the checkpoint (zero copy): each tensor is its own external
 * ArrayBuffer over one mapping per file (so no single buffer has to exceed Node's 4 GiB Buffer limit), and the
 * mapping lives as long as any of those buffers is referenced. Pages are read from the page cache on first
 * touch; a write into a view copies that page privately and never reaches the file.
 * Returns null when the native addon is not available (callers fall back to plain reads).
 */
export function mmapSource(): TensorByteSource | null {
  const lib = loadAddon();
  if (!lib) return null;
  const files = new Map<string, MappedFile>();
  const mapped = (file: string): MappedFile => {
    let m = files.get(file);
    if (!m) {
      m = lib.mapFile(file);
      files.set(file, m);
    }
    return m;
  };
  return {
    prepare(file) {
      mapped(file);
    },
    read(file, offset, length) {
      return lib.mapRegion(mapped(file), offset, length);
    },
  };
}

/** Bytes [offset, offset + length) of a file as a zero-copy ArrayBuffer over a private mmap (needs the addon). */
export function mapFileRegion(path: string, offset: number, length: number): ArrayBuffer {
  const lib = loadAddon();
  if (!lib) throw new Error('mapFileRegion needs the native addon (npm install builds it)');
  return lib.mapRegion(lib.mapFile(path), offset, length);
}
