/**
 * Kernel throughput at Llama-1B shapes, against the machine's streaming bandwidth measured in the same run:
 * decode GEMV in GB/s of weight bytes (weights cycled through a working set far larger than the L3, so every
 * call streams from DRAM), prefill GEMM in GFLOP/s, and decode attention over a DRAM-sized cache.
 *
 *   npx tsx src/bench/kernels.ts [--quick] [--json]
 */
import type { Weight, WeightDType } from '../tensor/backend.ts';
import { HeadStore } from '../cache/kv-cache.ts';
import { NativeBackend } from '../tensor/native.ts';
import { median, probeBandwidth } from './machine-limits.ts';

export interface GemvResult {
  dtype: string;
  rows: number;
  cols: number;
  /** Milliseconds per call (median). */
  ms: number;
  /** Weight (+ scale) bytes streamed per second. */
  GBs: number;
  /** Streaming-read bandwidth probed between the timing rounds (median). */
  streamGBs: number;
  fractionOfBandwidth: number;
  path: string;
  /** Rows x cols weights per second relative to bf16 at the same shape (tokens/s ratio of a decode). */
  speedupVsBf16?: number;
}

export interface GemmResult {
  dtype: string;
  precision: 'bf16' | 'f32';
  n: number;
  rows: number;
  cols: number;
  ms: number;
  gflops: number;
  path: string;
}

export interface AttentionResult {
  shape: string;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  context: number;
  /** fp32 keys and values read per token (all layers). */
  kvBytes: number;
  /** The attention path the addon takes on this CPU. */
  path: string;
  /** Median milliseconds per token (one decode query through every layer). */
  ms: number;
  GBs: number;
  /** Streaming-read bandwidth probed between the rounds (median). */
  streamGBs: number;
  fractionOfBandwidth: number;
}

export interface DecodeMatmulsResult {
  shape: string;
  dtype: string;
  layers: number;
  /** Weight (+ scale) bytes of one token's matmuls: every layer's projections and the LM head. */
  bytes: number;
  /** Median milliseconds per token. */
  ms: number;
  GBs: number;
  /** Streaming-read bandwidth probed between the rounds (median). */
  streamGBs: number;
  fractionOfBandwidth: number;
}

export interface KernelBench {
  threads: number;
  bandwidthGBs: number;
  gemv: GemvResult[];
  gemm: GemmResult[];
  attention: AttentionResult[];
  decodeMatmuls: DecodeMatmulsResult[];
}

/** Deterministic fill, fast enough for half a gigabyte. */
function fillWeight(dtype: WeightDType, rows: number, cols: number, seed: number, groupSize?: number): Weight {
  const len = rows * cols;
  let s = seed >>> 0 || 1;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  if (dtype === 'f32') {
    const data = new Float32Array(len);
    for (let i = 0; i < len; i++) data[i] = (next() >>> 8) / 2 ** 24 - 0.5;
    return { name: 'bench', dtype, rows, cols, data };
  }
  if (dtype === 'bf16' || dtype === 'f16') {
    // Normal numbers of magnitude ~2^-4..2^-1 with random signs, in both formats.
    const data = new Uint16Array(len);
    const base = dtype === 'bf16' ? 0x3d80 : 0x2c00;
    const span = dtype === 'bf16' ? 0x200 : 0xc00;
    for (let i = 0; i < len; i++) {
      const r = next();
      data[i] = (base + ((r >>> 8) % span)) | (r & 0x8000);
    }
    return { name: 'bench', dtype, rows, cols, data };
  }
  const data = new Int8Array(len);
  for (let i = 0; i < len; i++) data[i] = (next() >>> 24) % 255 - 127;
  const g = groupSize ?? cols;
  const groups = Math.ceil(cols / g);
  const scales = new Float32Array(rows * groups).fill(1 / 512);
  return { name: 'bench', dtype: 'int8', rows, cols, data, scales, groupSize: g };
}

function weightBytes(w: Weight): number {
  return w.data.byteLength + (w.scales?.byteLength ?? 0);
}

/**
 * Times one GEMV (n = 1) per call over copies whose total exceeds `workingSet` bytes, so each call reads DRAM.
 * The machine may be shared: the streaming probe runs between rounds and the fraction uses the probes of
 * the same rounds.
 */
function timeGemv(be: NativeBackend, make: (seed: number) => Weight, workingSet: number, rounds: number): { ms: number; w: Weight; streamGBs: number } {
  const first = make(1);
  const copies = Math.max(2, Math.ceil(workingSet / weightBytes(first)));
  const ws = [first];
  for (let i = 1; i < copies; i++) ws.push(make(i + 1));
  const x = Float32Array.from({ length: first.cols }, (_, i) => Math.sin(i) * 0.5);
  const out = new Float32Array(first.rows);
  for (const w of ws) be.matmul(out, x, 1, w);
  const times: number[] = [];
  const probes: number[] = [];
  for (let r = 0; r < rounds; r++) {
    probes.push(...probeBandwidth(1));
    for (let c = 0; c < copies; c++) {
      const t = performance.now();
      be.matmul(out, x, 1, ws[c]!);
      times.push(performance.now() - t);
    }
  }
  return { ms: median(times), w: first, streamGBs: median(probes) };
}

function timeGemm(be: NativeBackend, w: Weight, n: number, runs: number): number {
  const x = Float32Array.from({ length: n * w.cols }, (_, i) => Math.sin(i * 0.37) * 0.5);
  const out = new Float32Array(n * w.rows);
  be.matmul(out, x, n, w);
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t = performance.now();
    be.matmul(out, x, n, w);
    times.push(performance.now() - t);
  }
  return median(times);
}

/** `pass` (ms, reading `bytes`) over `rounds` rounds after a warm-up pass, the streaming probe before each round. */
function timeAgainstProbe(bytes: number, rounds: number, pass: () => number) {
  const probes: number[] = [];
  const times: number[] = [];
  pass();
  for (let r = 0; r < rounds; r++) {
    probes.push(...probeBandwidth(1));
    times.push(pass());
  }
  const ms = median(times);
  const GBs = bytes / ms / 1e6;
  const streamGBs = median(probes);
  return { ms: round(ms, 2), GBs: round(GBs, 1), streamGBs: round(streamGBs, 1), fraction: round(GBs / streamGBs, 3) };
}

/** Decode attention from DRAM: one query through every layer of a cache far larger than the L3. */
export function benchDecodeAttention(
  be: NativeBackend,
  shape: { name: string; layers: number; heads: number; kvHeads: number; headDim: number },
  context: number,
  rounds: number,
): AttentionResult {
  const { layers, heads, kvHeads, headDim: d } = shape;
  const positions = Int32Array.from({ length: context }, (_, i) => i);
  const cache = Array.from({ length: layers }, (_, l) =>
    Array.from({ length: kvHeads }, (_, g) => {
      const h = new HeadStore(d, context);
      h.extend(positions);
      for (let i = 0; i < context * d; i++) {
        h.k[i] = Math.sin(i * 0.37 + g) * 0.5;
        h.v[i] = Math.cos(i * 0.11 + l);
      }
      return h;
    }),
  );
  const q = Float32Array.from({ length: heads * d }, (_, i) => Math.sin(i));
  const out = new Float32Array(heads * d);
  const qPos = Int32Array.of(context);
  const pass = () => {
    const t = performance.now();
    for (const layer of cache) be.attention({ q, out, nq: 1, nHeads: heads, nKvHeads: kvHeads, headDim: d, qPos, heads: layer, scale: 1 / Math.sqrt(d) });
    return performance.now() - t;
  };
  const kvBytes = layers * kvHeads * context * d * 4 * 2;
  const c = timeAgainstProbe(kvBytes, rounds, pass);
  return {
    shape: shape.name,
    layers,
    heads,
    kvHeads,
    headDim: d,
    context,
    kvBytes,
    path: be.info().paths.attention,
    ms: c.ms,
    GBs: c.GBs,
    streamGBs: c.streamGBs,
    fractionOfBandwidth: c.fraction,
  };
}

/**
 * One decode token's matmuls in model order (q, k, v, o, gate, up, down per layer, then the LM head), each a
 * distinct weight so the sequence streams from DRAM as in a forward pass, the probe between rounds.
 */
export function benchDecodeMatmuls(
  be: NativeBackend,
  shape: { name: string; layers: number; hidden: number; intermediate: number; kvDim: number; vocab: number },
  dtype: 'bf16' | 'int8/g128',
  rounds: number,
): DecodeMatmulsResult {
  const { layers, hidden: H, intermediate: I, kvDim, vocab } = shape;
  const make = (rows: number, cols: number, seed: number) => (dtype === 'bf16' ? fillWeight('bf16', rows, cols, seed) : fillWeight('int8', rows, cols, seed, 128));
  const ws: Weight[] = [];
  for (let l = 0; l < layers; l++)
    for (const [r, c] of [[H, H], [kvDim, H], [kvDim, H], [H, H], [I, H], [I, H], [H, I]] as const) ws.push(make(r, c, ws.length + 1));
  ws.push(make(vocab, H, ws.length + 1));
  const bytes = ws.reduce((a, w) => a + weightBytes(w), 0);
  const x = Float32Array.from({ length: I }, (_, i) => Math.sin(i) * 0.5);
  const out = new Float32Array(Math.max(vocab, I));
  const pass = () => {
    const t = performance.now();
    for (const w of ws) be.matmul(out, x, 1, w);
    return performance.now() - t;
  };
  const c = timeAgainstProbe(bytes, rounds, pass);
  return { shape: shape.name, dtype, layers, bytes, ms: c.ms, GBs: c.GBs, streamGBs: c.streamGBs, fractionOfBandwidth: c.fraction };
}

export const LLAMA_1B_MATMULS = { name: 'llama-3.2-1b', layers: 16, hidden: 2048, intermediate: 8192, kvDim: 512, vocab: 128256 };

export const ATTENTION_SHAPES = [
  { name: 'llama-3.2-1b', layers: 16, heads: 32, kvHeads: 8, headDim: 64 },
  { name: 'qwen2.5-0.5b', layers: 24, heads: 14, kvHeads: 2, headDim: 64 },
  { name: 'llama-3-8b heads (16 layers)', layers: 16, heads: 32, kvHeads: 8, headDim: 128 },
];

export function benchKernels(opts: { quick?: boolean; log?: (s: string) => void } = {}): KernelBench {
  const log = opts.log ?? (() => {});
  const quick = opts.quick ?? false;
  const be = new NativeBackend({ bf16Activations: true });
  const beF32 = new NativeBackend({ bf16Activations: false });
  const info = be.info();
  const bandwidthGBs = median(probeBandwidth(quick ? 3 : 7));
  log(`streaming read (1 GiB, ${info.threads} threads): ${bandwidthGBs.toFixed(1)} GB/s at the start; each GEMV is compared with probes taken between its own rounds`);
  const workingSet = quick ? 256 << 20 : 512 << 20;
  const shapes: [number, number][] = [
    [8192, 2048],
    [2048, 8192],
    [128256, 2048],
  ];
  const gemv: GemvResult[] = [];
  for (const [rows, cols] of shapes) {
    let bf16Ms = 0;
    const kinds: [string, (seed: number) => Weight][] = [
      ['bf16', (s) => fillWeight('bf16', rows, cols, s)],
      ['f16', (s) => fillWeight('f16', rows, cols, s)],
      ['int8/row', (s) => fillWeight('int8', rows, cols, s)],
      ['int8/g128', (s) => fillWeight('int8', rows, cols, s, 128)],
    ];
    if (!quick && rows * cols <= 8192 * 2048) kinds.push(['f32', (s) => fillWeight('f32', rows, cols, s)]);
    for (const [label, make] of kinds) {
      const { ms, w, streamGBs } = timeGemv(be, make, workingSet, quick ? 3 : 6);
      const GBs = weightBytes(w) / (ms / 1000) / 1e9;
      if (label === 'bf16') bf16Ms = ms;
      const r: GemvResult = { dtype: label, rows, cols, ms: round(ms, 3), GBs: round(GBs, 1), streamGBs: round(streamGBs, 1), fractionOfBandwidth: round(GBs / streamGBs, 2), path: be.matmulPath(1, w) };
      if (label !== 'bf16') r.speedupVsBf16 = round(bf16Ms / ms, 2);
      gemv.push(r);
      log(
        `gemv ${label.padEnd(9)} ${rows}x${cols}: ${ms.toFixed(2)} ms, ${GBs.toFixed(1)} GB/s = ${Math.round((100 * GBs) / streamGBs)}% of ${streamGBs.toFixed(1)} GB/s streaming` +
          `${r.speedupVsBf16 ? `, ${r.speedupVsBf16}x bf16 tokens/s` : ''} (${r.path})`,
      );
    }
  }
  const gemm: GemmResult[] = [];
  const n = 512;
  for (const [rows, cols] of [
    [2048, 2048],
    [8192, 2048],
    [2048, 8192],
  ] as [number, number][]) {
    for (const dtype of ['bf16', 'int8'] as const) {
      const w = fillWeight(dtype, rows, cols, 9, dtype === 'int8' ? 128 : undefined);
      for (const [precision, b] of [
        ['bf16', be],
        ['f32', beF32],
      ] as const) {
        if (dtype === 'int8' && precision === 'f32' && quick) continue;
        const ms = timeGemm(b, w, n, quick ? 3 : 5);
        const gflops = (2 * n * rows * cols) / (ms / 1000) / 1e9;
        const path = b.matmulPath(n, w);
        gemm.push({ dtype, precision, n, rows, cols, ms: round(ms, 2), gflops: round(gflops, 1), path });
        log(`gemm ${dtype} ${precision}-activations ${n}x${rows}x${cols} (${path}): ${ms.toFixed(1)} ms, ${gflops.toFixed(1)} GFLOP/s`);
      }
    }
  }
  const attention: AttentionResult[] = [];
  for (const shape of quick ? ATTENTION_SHAPES.slice(0, 1) : ATTENTION_SHAPES) {
    const r = benchDecodeAttention(be, shape, quick ? 2048 : shape.headDim > 64 ? 4096 : 8192, quick ? 3 : 9);
    attention.push(r);
    log(
      `decode attention ${r.shape} (${r.heads}:${r.kvHeads} heads, d ${r.headDim}, ${r.context} keys, ${(r.kvBytes / 1e6).toFixed(0)} MB): ` +
        `${r.ms} ms = ${Math.round(100 * r.fractionOfBandwidth)}% of ${r.streamGBs} GB/s streaming (${r.path})`,
    );
  }
  const decodeMatmuls: DecodeMatmulsResult[] = [];
  for (const dtype of ['bf16', 'int8/g128'] as const) {
    const shape = quick ? { ...LLAMA_1B_MATMULS, layers: 4, vocab: 32768 } : LLAMA_1B_MATMULS;
    const r = benchDecodeMatmuls(be, shape, dtype, quick ? 3 : 7);
    decodeMatmuls.push(r);
    log(
      `decode matmuls ${r.shape} ${r.dtype} (${r.layers} layers + LM head, ${(r.bytes / 1e6).toFixed(0)} MB): ${r.ms} ms = ` +
        `${Math.round(100 * r.fractionOfBandwidth)}% of ${r.streamGBs} GB/s streaming`,
    );
  }
  return { threads: info.threads, bandwidthGBs: round(bandwidthGBs, 1), gemv, gemm, attention, decodeMatmuls };
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const json = process.argv.includes('--json');
  const result = benchKernels({ quick: process.argv.includes('--quick'), log: json ? undefined : (s) => console.log(s) });
  if (json) console.log(JSON.stringify(result, null, 2));
}
