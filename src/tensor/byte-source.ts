/**
 * Where tensor bytes come from; pluggable so a native mmap can replace plain reads. `read` returns
 * exactly `length` bytes, as a buffer or a view at any byte offset (misaligned views get copied).
 */
export interface TensorByteSource {
  read(file: string, offset: number, length: number): ArrayBuffer | ArrayBufferView;
  /** Optional: told every region of a file before the reads, so a mapping can be made once. */
  prepare?(file: string, regions: [number, number][]): void;
}
