import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { AttentionArgs, Backend, RopeTable, Weight } from './backend.ts';
import { ReferenceBackend } from './reference.ts';

export interface NativeInfo {
  features: Record<string, boolean>;
  threads: number;
  paths: Record<string, string>;
}

interface Addon {
  info(): NativeInfo;
  matmul(
    out: Float32Array,
    x: Float32Array,
    n: number,
    w: ArrayBufferView,
    type: number,
    rows: number,
    cols: number,
    scales: Float32Array | null,
    bf16Activations: boolean,
    rowSums: Int32Array | null,
  ): void;
  attention(
    q: Float32Array,
    out: Float32Array | null,
    nq: number,
    nHeads: number,
    nKv: number,
    d: number,
    qPos: Int32Array,
    heads: [Float32Array, Float32Array, Int32Array, number][],
    scale: number,
    statsFrom: number,
    max: Float32Array[] | null,
    sum: Float32Array[] | null,
    queryWeight: Float32Array | null,
  ): void;
  rmsnorm(out: Float32Array, x: Float32Array, n: number, dim: number, w: Float32Array, eps: number): void;
  rope(x: Float32Array, n: number, nHeads: number, headDim: number, pos: Int32Array, invFreq: Float32Array, scaling: number): void;
  siluMul(out: Float32Array, gate: Float32Array, up: Float32Array, len: number): void;
  mapRegions(path: string, regions: [number, number][]): ArrayBuffer[];
  streamRead(buf: Float32Array): number;
}

const ADDON_PATH = fileURLToPath(new URL('../../native/build/Release/kvlab_native.node', import.meta.url));
let addon: Addon | null = null;
let loadError: string | null = null;

/** The compiled addon, or null (with the reason in nativeLoadError()) when it is not built or cannot load. */
export function loadAddon(): Addon | null {
  if (addon || loadError) return addon;
  try {
    addon = createRequire(import.meta.url)(ADDON_PATH) as Addon;
  } catch (e) {
    loadError = (e as Error).message.split('\n')[0]!;
  }
  return addon;
}

export function nativeLoadError(): string | null {
  loadAddon();
  return loadError;
}

const TYPE_CODE: Record<Weight['dtype'], number> = { f32: 0, bf16: 1, f16: 2, int8: 3 };

export interface NativeOptions {
  /** Round activations to bf16 in prefill GEMMs (AVX512-BF16 dot products): faster, less exact. */
  bf16Activations?: boolean;
}

/** Kernels in the C++ addon; the model logic stays in TypeScript. */
export class NativeBackend implements Backend {
  readonly name = 'native' as const;
  private readonly lib: Addon;
  private readonly fallback = new ReferenceBackend();
  readonly bf16Activations: boolean;

  constructor(opts: NativeOptions = {}) {
    const lib = loadAddon();
    if (!lib) throw new Error(`the native addon is not available: ${loadError}`);
    this.lib = lib;
    this.bf16Activations = opts.bf16Activations ?? process.env.KVLAB_PREFILL_PRECISION !== 'f32';
  }

  info(): NativeInfo {
    return this.lib.info();
  }

  describe(): string {
    const i = this.lib.info();
    const prefill = this.bf16Activations ? i.paths.prefill_matmul_bf16 : i.paths.prefill_matmul_f32;
    return `native (${i.threads} threads; decode ${i.paths.decode_matmul}, prefill ${prefill}, attention ${i.paths.attention})`;
  }

  matmul(out: Float32Array, x: Float32Array, n: number, w: Weight): void {
    if (w.dtype === 'int8' && w.groupSize !== undefined && w.groupSize !== w.cols) return this.fallback.matmul(out, x, n, w);
    this.lib.matmul(out, x, n, w.data, TYPE_CODE[w.dtype], w.rows, w.cols, w.scales ?? null, this.bf16Activations, w.rowSums ?? null);
  }

  rmsnorm(out: Float32Array, x: Float32Array, n: number, dim: number, weight: Float32Array, eps: number): void {
    this.lib.rmsnorm(out, x, n, dim, weight, eps);
  }

  rope(x: Float32Array, n: number, nHeads: number, positions: Int32Array, table: RopeTable): void {
    this.lib.rope(x, n, nHeads, table.headDim, positions, table.invFreq, table.attentionScaling);
  }

  siluMul(out: Float32Array, gate: Float32Array, up: Float32Array, len: number): void {
    this.lib.siluMul(out, gate, up, len);
  }

  embedding(out: Float32Array, table: Weight, ids: Int32Array): void {
    const cols = table.cols;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id < 0 || id >= table.rows) throw new RangeError(`token id ${id} outside the vocabulary (0..${table.rows - 1})`);
      const row = out.subarray(i * cols, (i + 1) * cols);
      if (table.dtype === 'f32') row.set((table.data as Float32Array).subarray(id * cols, (id + 1) * cols));
      else if (table.dtype === 'bf16') {
        const bits = new Uint32Array(row.buffer, row.byteOffset, cols);
        const src = table.data as Uint16Array;
        for (let c = 0; c < cols; c++) bits[c] = src[id * cols + c]! << 16;
      } else this.fallback.embedding(row, table, Int32Array.of(id));
    }
  }

  attention(a: AttentionArgs): void {
    this.lib.attention(
      a.q,
      a.out,
      a.nq,
      a.nHeads,
      a.nKvHeads,
      a.headDim,
      a.qPos,
      a.heads.map((h) => [h.k, h.v, h.pos, h.len]),
      a.scale,
      a.stats?.fromQuery ?? 0,
      a.stats?.max ?? null,
      a.stats?.sum ?? null,
      a.stats?.queryWeight ?? null,
    );
  }
}
