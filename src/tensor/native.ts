import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { StepNotRecordableError, type AttentionArgs, type Backend, type KvHeadView, type KvRows, type RopeTable, type StepRecording, type Weight } from './backend.ts';
import { ReferenceBackend } from './reference.ts';
import { StepList, type Kernels } from './step-list.ts';

/** Where the native backend sends what its pruned-key kernel does not take (see NativeBackend.attentionPrunedKeys). */
const prunedKeyAttention = new ReferenceBackend();

export interface NativeInfo {
  /** CPU features detected (after a KVLAB_ISA cap, if set). */
  features: Record<string, boolean>;
  /** Threads of the addon's pool (KVLAB_THREADS, else the cores this process may run on). */
  threads: number;
  /** Kernel each operation takes at decode and prefill sizes, and the AMX status. */
  paths: Record<string, string>;
  isaCap?: string;
}

/** An opaque handle on a whole-file mmap (freed once it and every region over it are collected). */
export type MappedFile = object & { readonly __mappedFile: unique symbol };

/** A quantized head as the addon takes it: residual k, v, pos, len, packed rows, key codes, value codes, key scales, key zeros, value scales, value zeros. */
export type QuantHeadArgs = [KvRows, KvRows, Int32Array, number, number, Uint8Array, Uint8Array, Float32Array, Float32Array, Float32Array, Float32Array];

/** A head as attentionPruned takes it: k ([len, channels.length], or [len, d] without channels), v, pos, len, kept channels | null. */
export type PrunedHeadArgs = [Float32Array, Float32Array, Int32Array, number, Int32Array | null];

export interface Addon {
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
    group: number,
    bf16Activations: boolean,
  ): void;
  matmulAsync(
    out: Float32Array,
    x: Float32Array,
    n: number,
    w: ArrayBufferView,
    type: number,
    rows: number,
    cols: number,
    scales: Float32Array | null,
    group: number,
    bf16Activations: boolean,
    done: (err: Error | null) => void,
  ): void;
  matmulPath(n: number, type: number, rows: number, cols: number, group: number, bf16Activations: boolean): string;
  attention(
    q: Float32Array,
    out: Float32Array | null,
    nq: number,
    nHeads: number,
    nKv: number,
    d: number,
    qPos: Int32Array,
    heads: [KvRows, KvRows, Int32Array, number][],
    scale: number,
    statsFrom: number,
    max: Float32Array[] | null,
    sum: Float32Array[] | null,
    queryWeight: Float32Array | null,
    /** Sliding window in positions; 0: none. */
    window: number,
  ): void;
  /** attention() over a shared prefix's rows followed by each head's own (no statistics). */
  attentionPrefixed(
    q: Float32Array,
    out: Float32Array,
    nq: number,
    nHeads: number,
    nKv: number,
    d: number,
    qPos: Int32Array,
    heads: [KvRows, KvRows, Int32Array, number][],
    prefix: [KvRows, KvRows, Int32Array, number][],
    scale: number,
    window: number,
  ): void;
  /** attention() over KIVI-quantized heads (packed rows read as they are), optionally after a shared prefix's quantized rows. */
  attentionQuant(
    q: Float32Array,
    out: Float32Array | null,
    nq: number,
    nHeads: number,
    nKv: number,
    d: number,
    qPos: Int32Array,
    heads: QuantHeadArgs[],
    prefix: QuantHeadArgs[] | null,
    scale: number,
    statsFrom: number,
    max: Float32Array[] | null,
    sum: Float32Array[] | null,
    queryWeight: Float32Array | null,
    window: number,
    bits: number,
    group: number,
  ): void;
  /** attention() over channel-pruned fp32 keys (ThinK): each view names its kept key channels (null: all), outputs only. */
  attentionPruned(
    q: Float32Array,
    out: Float32Array,
    nq: number,
    nHeads: number,
    nKv: number,
    d: number,
    qPos: Int32Array,
    heads: PrunedHeadArgs[],
    prefix: PrunedHeadArgs[] | null,
    scale: number,
    window: number,
  ): void;
  rmsnorm(out: Float32Array, x: Float32Array, n: number, dim: number, w: Float32Array, eps: number): void;
  rope(x: Float32Array, n: number, nHeads: number, headDim: number, pos: Int32Array, invFreq: Float32Array, scaling: number): void;
  siluMul(out: Float32Array, gate: Float32Array, up: Float32Array, len: number): void;
  add(out: Float32Array, a: Float32Array, b: Float32Array, len: number): void;
  addRowBias(x: Float32Array, n: number, bias: Float32Array, width: number): void;
  copyRows(dst: KvRows, dstOffset: number, src: Float32Array, srcOffset: number, srcStride: number, rows: number, width: number): void;
  /** Runs [code, label, ...kernel arguments] ops in order as one async work (see step-list.ts). */
  runStep(ops: readonly (readonly unknown[])[], done: (err: Error | null) => void): void;
  embedding(out: Float32Array, table: ArrayBufferView, type: number, rows: number, cols: number, scales: Float32Array | null, group: number, ids: Int32Array): void;
  quantizeInt8(
    src: ArrayBufferView,
    type: number,
    rows: number,
    cols: number,
    scales: Float32Array | null,
    group: number,
    outGroup: number,
    q: Int8Array,
    outScales: Float32Array,
  ): void;
  mapFile(path: string): MappedFile;
  mapRegion(file: MappedFile, offset: number, length: number): ArrayBuffer;
  mappedSize(file: MappedFile): number;
  mapRegions(path: string, regions: [number, number][]): ArrayBuffer[];
  /** Bytes from the buffer's start to its first address that is a multiple of `alignment` (a power of two). */
  alignOffset(buffer: ArrayBuffer, alignment: number): number;
  /** Sum of buf read on every pool thread: three plain streams per thread, or four that prefetch ahead. */
  streamRead(buf: Float32Array, prefetching: boolean): number;
  /** Register-resident AVX2 FMA throughput on that many pool threads, GFLOP/s (0 without AVX2+FMA). */
  fmaPeak(threads?: number): number;
  /**
   * Run-time switches with a meaning beyond speed, so tests can compare both sides in one process: 'int8_vnni'
   * (1: int8 decode GEMV on VNNI with activations quantized per block where it applies, 0: weights dequantized in
   * registers against exact fp32 activations; KVLAB_INT8_GEMV), 'step_placement' (0/1: async steps and products
   * pin their threads to distinct CPUs; KVLAB_STEP_PLACEMENT), 'step_fail_at' (i: the next runStep fails at op i).
   * False if the key is unknown.
   */
  setTuning(key: string, value: number): boolean;
  /** One pool job whose workers sleep `ms` while the caller waits: the caller's CPU time over the wall time. */
  poolWaitProbe(ms: number): { wallMs: number; callerCpuMs: number } | null;
  /**
   * One pool job with the caller and workers spread over distinct CPUs, as async steps run, and one after: whether
   * they were placed (and whether a second placement meanwhile was: it must not be), the CPU each thread ran the
   * first on, how many CPUs each thread's affinity allowed in each job, and whether the caller's mask was restored.
   */
  poolPlacementProbe(): { placed: boolean; secondPlaced: boolean; cpus: number[]; allowedDuring: number[]; allowedAfter: number[]; callerMaskRestored: boolean };
}

/** KVLAB_NATIVE_ADDON points at another build of the addon (development builds outside the tree). */
const ADDON_PATH = process.env.KVLAB_NATIVE_ADDON ?? fileURLToPath(new URL('../../native/build/Release/kvlab_native.node', import.meta.url));
let addon: Addon | null = null;
let loadError: string | null = null;

/** The compiled addon, or null (with the reason in nativeLoadError()) when it is not built or cannot load. */
export function loadAddon(): Addon | null {
  if (addon || loadError) return addon;
  try {
    const lib = createRequire(import.meta.url)(ADDON_PATH) as Partial<Addon>;
    if (typeof lib.runStep !== 'function' || typeof lib.mapFile !== 'function' || typeof lib.attentionPrefixed !== 'function') {
      throw new Error(`${ADDON_PATH} is an older build of the addon; rebuild it with npm run build:native`);
    }
    addon = lib as Addon;
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0]!;
    loadError = (e as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' ? `not built (${ADDON_PATH} missing; npm install builds it)` : msg;
  }
  return addon;
}

export function nativeLoadError(): string | null {
  loadAddon();
  return loadError;
}

export const TYPE_CODE: Record<Weight['dtype'], number> = { f32: 0, bf16: 1, f16: 2, int8: 3 };

/** Columns per int8 scale as the addon takes it: 0 means one scale per row. */
export function groupArg(w: Weight): number {
  if (w.dtype !== 'int8') return 0;
  const g = w.groupSize ?? w.cols;
  return g >= w.cols ? 0 : g;
}

/** Throws unless `w` is internally consistent (sizes, scales): the addon trusts what it is given. */
export function checkWeight(w: Weight): void {
  const need = w.rows * w.cols;
  if (!Number.isInteger(w.rows) || !Number.isInteger(w.cols) || w.rows < 0 || w.cols < 0) throw new RangeError(`${w.name}: bad shape ${w.rows}x${w.cols}`);
  if (w.data.length < need) throw new RangeError(`${w.name}: ${w.data.length} elements for a ${w.rows}x${w.cols} weight`);
  const expected = { f32: Float32Array, bf16: Uint16Array, f16: Uint16Array, int8: Int8Array }[w.dtype];
  if (!(w.data instanceof expected)) throw new TypeError(`${w.name}: ${w.dtype} data must be a ${expected.name}`);
  if (w.dtype === 'int8') {
    const g = w.groupSize ?? w.cols;
    if (!Number.isInteger(g) || g <= 0) throw new RangeError(`${w.name}: bad int8 group size ${g}`);
    const groups = g >= w.cols ? 1 : Math.ceil(w.cols / g);
    if (!w.scales || w.scales.length < w.rows * groups) throw new RangeError(`${w.name}: int8 needs ${w.rows * groups} scales`);
  }
}

const checked = new WeakSet<Weight>();

export interface NativeOptions {
  /**
   * Prefill GEMMs (more than 16 rows) with activations rounded to bf16 (AMX tiles or AVX512-BF16 dot products, fp32
   * accumulation; non-bf16 weights rounded to bf16 too): faster, less exact. Default: on, unless
   * KVLAB_PREFILL_PRECISION=f32.
   */
  bf16Activations?: boolean;
}

/** Kernels in the C++ addon; the model logic stays in TypeScript. */
export class NativeBackend implements Backend {
  readonly name = 'native' as const;
  private readonly lib: Addon;
  /** Where kernel calls go: the addon itself, or a StepList recording them. */
  private readonly k: Kernels;
  readonly bf16Activations: boolean;

  constructor(opts: NativeOptions = {}, kernels?: Kernels) {
    const lib = loadAddon();
    if (!lib) throw new Error(`the native addon is not available: ${loadError}`);
    this.lib = lib;
    this.k = kernels ?? lib;
    this.bf16Activations = opts.bf16Activations ?? process.env.KVLAB_PREFILL_PRECISION !== 'f32';
  }

  /** The same checks, with every kernel call recorded; run() executes the list as one async work. */
  recordStep(): StepRecording {
    const list = new StepList(this.lib);
    return { backend: new NativeBackend({ bf16Activations: this.bf16Activations }, list), run: () => list.run() };
  }

  info(): NativeInfo {
    return this.lib.info();
  }

  describe(): string {
    const i = this.lib.info();
    const prefill = this.bf16Activations ? i.paths.prefill_matmul_bf16 : i.paths.prefill_matmul_f32;
    return `native (${i.threads} threads; decode ${i.paths.decode_matmul}, int8 ${i.paths.decode_matmul_int8}, prefill ${prefill}, attention ${i.paths.attention}; AMX ${i.paths.amx})`;
  }

  /** The kernel matmul(·, ·, n, w) takes. */
  matmulPath(n: number, w: Weight): string {
    return this.lib.matmulPath(n, TYPE_CODE[w.dtype], w.rows, w.cols, groupArg(w), this.bf16Activations);
  }

  private checkMatmul(out: Float32Array, x: Float32Array, n: number, w: Weight): void {
    if (!checked.has(w)) {
      checkWeight(w);
      checked.add(w);
    }
    if (x.length < n * w.cols) throw new RangeError(`matmul ${w.name}: x has ${x.length} values, needs ${n}x${w.cols}`);
    if (out.length < n * w.rows) throw new RangeError(`matmul ${w.name}: out has ${out.length} values, needs ${n}x${w.rows}`);
  }

  matmul(out: Float32Array, x: Float32Array, n: number, w: Weight): void {
    this.checkMatmul(out, x, n, w);
    this.k.matmul(out, x, n, w.data, TYPE_CODE[w.dtype], w.rows, w.cols, w.scales ?? null, groupArg(w), this.bf16Activations);
  }

  /**
   * The same product computed off the JS thread (napi async work driving the pool), so a long call such as
   * the LM head does not block the event loop. The arrays must not be touched until the promise settles.
   */
  matmulAsync(out: Float32Array, x: Float32Array, n: number, w: Weight): Promise<void> {
    this.checkMatmul(out, x, n, w);
    return new Promise((resolve, reject) =>
      this.lib.matmulAsync(out, x, n, w.data, TYPE_CODE[w.dtype], w.rows, w.cols, w.scales ?? null, groupArg(w), this.bf16Activations, (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  }

  rmsnorm(out: Float32Array, x: Float32Array, n: number, dim: number, weight: Float32Array, eps: number): void {
    if (x.length < n * dim || out.length < n * dim || weight.length < dim) throw new RangeError('rmsnorm: arrays shorter than n x dim');
    this.k.rmsnorm(out, x, n, dim, weight, eps);
  }

  rope(x: Float32Array, n: number, nHeads: number, positions: Int32Array, table: RopeTable): void {
    if (x.length < n * nHeads * table.headDim || positions.length < n || table.invFreq.length < table.headDim / 2) throw new RangeError('rope: arrays shorter than the shape');
    this.k.rope(x, n, nHeads, table.headDim, positions, table.invFreq, table.attentionScaling);
  }

  siluMul(out: Float32Array, gate: Float32Array, up: Float32Array, len: number): void {
    if (out.length < len || gate.length < len || up.length < len) throw new RangeError('siluMul: arrays shorter than len');
    this.k.siluMul(out, gate, up, len);
  }

  embedding(out: Float32Array, table: Weight, ids: Int32Array): void {
    if (!checked.has(table)) {
      checkWeight(table);
      checked.add(table);
    }
    for (const id of ids) if (id < 0 || id >= table.rows) throw new RangeError(`token id ${id} outside the vocabulary (0..${table.rows - 1})`);
    if (out.length < ids.length * table.cols) throw new RangeError('embedding: out shorter than ids x cols');
    this.k.embedding(out, table.data, TYPE_CODE[table.dtype], table.rows, table.cols, table.scales ?? null, groupArg(table), ids);
  }

  attention(a: AttentionArgs): void {
    const { nq, nHeads, nKvHeads, headDim: d } = a;
    if (nHeads % nKvHeads !== 0 || a.heads.length < nKvHeads) throw new RangeError(`attention: ${nHeads} query heads over ${nKvHeads} KV heads`);
    if (a.heads.slice(0, nKvHeads).some((h) => h.keyChannels) || a.prefix?.some((h) => h.keyChannels)) return this.attentionPrunedKeys(a);
    if (a.heads.slice(0, nKvHeads).some((h) => h.quant) || a.prefix?.some((h) => h.quant)) return this.attentionQuant(a);
    if (a.q.length < nq * nHeads * d || (a.out && a.out.length < nq * nHeads * d) || a.qPos.length < nq) throw new RangeError('attention: q/out/qPos shorter than the shape');
    const bf16 = a.heads[0]!.k instanceof Uint16Array;
    if (a.prefix && a.prefix.length < nKvHeads) throw new RangeError(`attention: ${a.prefix.length} prefix views for ${nKvHeads} KV heads`);
    for (let x = 0; x < nKvHeads * (a.prefix ? 2 : 1); x++) {
      const g = x % nKvHeads;
      const h = x < nKvHeads ? a.heads[g]! : a.prefix![g]!;
      const name = x < nKvHeads ? `KV head ${g}` : `the prefix of KV head ${g}`;
      if (h.k instanceof Uint16Array !== bf16 || h.v instanceof Uint16Array !== bf16) throw new TypeError(`attention: ${name} mixes fp32 and bf16 rows (every head's k and v must be one dtype)`);
      if (h.k.length < h.len * d || h.v.length < h.len * d || h.pos.length < h.len) throw new RangeError(`attention: ${name} shorter than its len ${h.len}`);
      if (x < nKvHeads && ((a.stats?.sum && a.stats.sum[g]!.length < h.len) || (a.stats?.max && a.stats.max[g]!.length < h.len))) throw new RangeError(`attention: stats of KV head ${g} shorter than its len`);
    }
    if (a.stats?.queryWeight && a.stats.queryWeight.length < nq) throw new RangeError('attention: queryWeight shorter than nq');
    if (a.window !== undefined && !(Number.isSafeInteger(a.window) && a.window > 0)) throw new RangeError(`attention: window must be a positive integer, got ${a.window}`);
    const window = a.window ?? 0;
    const views = (hs: KvHeadView[]) => hs.slice(0, nKvHeads).map((h): [KvRows, KvRows, Int32Array, number] => [h.k, h.v, h.pos, h.len]);
    if (a.prefix) {
      if (a.stats || !a.out) throw new Error('attention: a shared-prefix call computes outputs only, no statistics');
      if (nHeads / nKvHeads > 16) throw new RangeError(`attention: a shared-prefix call takes at most 16 query heads per KV head, got ${nHeads / nKvHeads}`);
      this.k.attentionPrefixed(a.q, a.out, nq, nHeads, nKvHeads, d, a.qPos, views(a.heads), views(a.prefix), a.scale, window);
      return;
    }
    this.k.attention(
      a.q,
      a.out,
      nq,
      nHeads,
      nKvHeads,
      d,
      a.qPos,
      a.heads.slice(0, nKvHeads).map((h) => [h.k, h.v, h.pos, h.len]),
      a.scale,
      a.stats?.fromQuery ?? 0,
      a.stats?.max ?? null,
      a.stats?.sum ?? null,
      a.stats?.queryWeight ?? null,
      window,
    );
  }

  /**
   * Attention over channel-pruned (ThinK) keys: fp32 rows go to the addon's kernel for them (attention_pruned.cc,
   * which reads kd channels per key, in sync calls and async steps). bf16 rows and calls asking for statistics run on
   * the reference backend's attention (TypeScript), synchronously only: a recorded async step refuses them.
   */
  private attentionPrunedKeys(a: AttentionArgs): void {
    const { nq, nHeads, nKvHeads, headDim: d } = a;
    const sources = [...a.heads.slice(0, nKvHeads), ...(a.prefix?.slice(0, nKvHeads) ?? [])];
    const kernel = typeof this.lib.attentionPruned === 'function';
    if (!kernel || a.stats || !a.out || sources.some((h) => !(h.k instanceof Float32Array) || !(h.v instanceof Float32Array))) {
      if (this.k !== this.lib) throw new StepNotRecordableError('attention over channel-pruned (ThinK) keys with statistics, bf16 rows or an addon built without its kernel runs on the TypeScript path, which a recorded async step cannot call');
      prunedKeyAttention.attention(a);
      return;
    }
    if (a.q.length < nq * nHeads * d || a.out.length < nq * nHeads * d || a.qPos.length < nq) throw new RangeError('attention: q/out/qPos shorter than the shape');
    if (a.prefix && a.prefix.length < nKvHeads) throw new RangeError(`attention: ${a.prefix.length} prefix views for ${nKvHeads} KV heads`);
    if (a.window !== undefined && !(Number.isSafeInteger(a.window) && a.window > 0)) throw new RangeError(`attention: window must be a positive integer, got ${a.window}`);
    const views = (hs: KvHeadView[], what: string): PrunedHeadArgs[] =>
      hs.slice(0, nKvHeads).map((h, g) => {
        const ch = h.keyChannels ?? null;
        const kd = ch ? ch.length : d;
        if (ch && (ch.length === 0 || ch.length > d || ch.some((c, i) => c < 0 || c >= d || (i > 0 && c <= ch[i - 1]!)))) throw new RangeError(`attention: ${what} ${g}: kept key channels must be increasing channels in [0, ${d})`);
        if (h.k.length < h.len * kd || h.v.length < h.len * d || h.pos.length < h.len) throw new RangeError(`attention: ${what} ${g} shorter than its len ${h.len}`);
        return [h.k as Float32Array, h.v as Float32Array, h.pos, h.len, ch];
      });
    this.k.attentionPruned(a.q, a.out, nq, nHeads, nKvHeads, d, a.qPos, views(a.heads, 'KV head'), a.prefix ? views(a.prefix, 'the prefix of KV head') : null, a.scale, a.window ?? 0);
  }

  /** Attention over quantized heads: the packed rows are read by the addon as they are (attention_quant.cc). */
  private attentionQuant(a: AttentionArgs): void {
    const { nq, nHeads, nKvHeads, headDim: d } = a;
    if (a.q.length < nq * nHeads * d || (a.out && a.out.length < nq * nHeads * d) || a.qPos.length < nq) throw new RangeError('attention: q/out/qPos shorter than the shape');
    const first = a.heads[0]!.quant;
    const views = (hs: KvHeadView[], what: string): QuantHeadArgs[] =>
      hs.slice(0, nKvHeads).map((h, g) => {
        const qr = h.quant;
        if (!qr || !first || qr.bits !== first.bits || qr.group !== first.group) throw new TypeError(`attention: ${what} ${g} is not quantized like KV head 0 (every head of a call, and its prefix, must share one int4 / int2 layout)`);
        const rb = (d * qr.bits) / 8;
        const ng = Math.ceil(d / qr.group);
        const res = h.len - qr.rows;
        if (!(h.k instanceof Float32Array) || !(h.v instanceof Float32Array) || res < 0 || h.k.length < res * d || h.v.length < res * d || h.pos.length < h.len) throw new RangeError(`attention: ${what} ${g}: residual rows shorter than len ${h.len} - ${qr.rows} packed`);
        if (qr.rows % qr.group !== 0 || qr.kCodes.length < qr.rows * rb || qr.vCodes.length < qr.rows * rb || qr.kScale.length < (qr.rows / qr.group) * d || qr.kZero.length < (qr.rows / qr.group) * d || qr.vScale.length < qr.rows * ng || qr.vZero.length < qr.rows * ng) {
          throw new RangeError(`attention: ${what} ${g}: packed arrays shorter than ${qr.rows} rows`);
        }
        return [h.k, h.v, h.pos, h.len, qr.rows, qr.kCodes, qr.vCodes, qr.kScale, qr.kZero, qr.vScale, qr.vZero];
      });
    const heads = views(a.heads, 'KV head');
    if (a.prefix && a.prefix.length < nKvHeads) throw new RangeError(`attention: ${a.prefix.length} prefix views for ${nKvHeads} KV heads`);
    const prefix = a.prefix ? views(a.prefix, 'the prefix of KV head') : null;
    if (prefix && a.stats) throw new Error('attention: a shared-prefix call computes outputs only, no statistics');
    for (let g = 0; g < nKvHeads; g++) {
      const len = a.heads[g]!.len;
      if ((a.stats?.sum && a.stats.sum[g]!.length < len) || (a.stats?.max && a.stats.max[g]!.length < len)) throw new RangeError(`attention: stats of KV head ${g} shorter than its len`);
    }
    if (a.stats?.queryWeight && a.stats.queryWeight.length < nq) throw new RangeError('attention: queryWeight shorter than nq');
    if (a.window !== undefined && !(Number.isSafeInteger(a.window) && a.window > 0)) throw new RangeError(`attention: window must be a positive integer, got ${a.window}`);
    this.k.attentionQuant(
      a.q,
      a.out,
      nq,
      nHeads,
      nKvHeads,
      d,
      a.qPos,
      heads,
      prefix,
      a.scale,
      a.stats?.fromQuery ?? 0,
      a.stats?.max ?? null,
      a.stats?.sum ?? null,
      a.stats?.queryWeight ?? null,
      a.window ?? 0,
      first!.bits,
      first!.group,
    );
  }

  add(out: Float32Array, a: Float32Array, b: Float32Array, len: number): void {
    if (out.length < len || a.length < len || b.length < len) throw new RangeError('add: arrays shorter than len');
    this.k.add(out, a, b, len);
  }

  addRowBias(x: Float32Array, n: number, bias: Float32Array): void {
    if (x.length < n * bias.length) throw new RangeError('addRowBias: x shorter than n x bias.length');
    this.k.addRowBias(x, n, bias, bias.length);
  }

  copyRows(dst: KvRows, dstOffset: number, src: Float32Array, srcOffset: number, srcStride: number, rows: number, width: number): void {
    if (rows <= 0) return;
    if (dstOffset < 0 || srcOffset < 0 || dstOffset + rows * width > dst.length || srcOffset + (rows - 1) * srcStride + width > src.length) {
      throw new RangeError(`copyRows: ${rows} rows of ${width} outside dst (${dst.length}) or src (${src.length})`);
    }
    this.k.copyRows(dst, dstOffset, src, srcOffset, srcStride, rows, width);
  }
}

