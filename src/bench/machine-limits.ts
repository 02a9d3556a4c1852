import { readFileSync } from 'node:fs';
import type { Weight } from '../tensor/backend.ts';
import { loadAddon, NativeBackend } from '../tensor/native.ts';

export interface MachineLimits {
  cpu: string;
  threads: number;
  features: Record<string, boolean>;
  /** Streaming read of a 1 GiB buffer on every pool thread, GB/s (median of runs). */
  bandwidthGBs: number;
  bandwidthRuns: number[];
  /** GEMM 512 x 2048 x 2048 with bf16 weights, GFLOP/s (median). */
  gemmBf16ActivationsGflops: number;
  gemmF32ActivationsGflops: number;
  /** The kernels those two GEMMs ran on (e.g. amx-bf16-gemm, avx512bf16-gemm, avx512-f32-gemm). */
  gemmBf16Path: string;
  gemmF32Path: string;
  /**
   * Register-resident AVX2 FMA throughput, GFLOP/s, on one thread and on all: the compute ceiling of any
   * fp32 GEMM here (0 without AVX2+FMA). When all threads give no more than one, the cores are SMT siblings
   * or capped, and extra threads cannot add compute.
   */
  fmaPeakGflops: number;
  fmaPeakOneThreadGflops: number;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The first and third quartiles (linear interpolation between order statistics). */
export function quartiles(xs: number[]): [number, number] {
  const s = [...xs].sort((a, b) => a - b);
  const at = (f: number) => {
    const i = f * (s.length - 1);
    const lo = Math.floor(i);
    return s[lo]! + (s[Math.min(lo + 1, s.length - 1)]! - s[lo]!) * (i - lo);
  };
  return [at(0.25), at(0.75)];
}

let probeBuffer: Float32Array | null = null;

/**
 * Streaming-read bandwidth (GB/s) of each of `runs` passes over a 1 GiB buffer on all pool threads: per pass the
 * faster of two read loops (three plain streams per thread; four streams prefetching ahead), one right after
 * the other. The buffer holds varied values on every page: on the VM this was measured on, pages that were
 * nearly all zeros read slower than pages of real data (int8 weights 1 byte in 4096 set: 40 GB/s; random: 58).
 */
export function probeBandwidth(runs: number): number[] {
  const lib = loadAddon();
  if (!lib) throw new Error('benchmarks need the native addon (npm install builds it)');
  if (!probeBuffer) {
    probeBuffer = new Float32Array((1 << 30) / 4);
    for (let i = 0; i < probeBuffer.length; i++) probeBuffer[i] = (i % 1021) * 0.001;
    lib.streamRead(probeBuffer, false);
  }
  const buf = probeBuffer;
  const pass = (prefetching: boolean) => {
    const t = performance.now();
    lib.streamRead(buf, prefetching);
    return buf.byteLength / ((performance.now() - t) / 1000) / 1e9;
  };
  const out: number[] = [];
  for (let r = 0; r < runs; r++) out.push(Math.max(pass(false), pass(true)));
  return out;
}

/** Measures the limits benchmark figures are reported against, in the same run. */
export function measureMachineLimits(): MachineLimits {
  const lib = loadAddon();
  if (!lib) throw new Error('benchmarks need the native addon (npm install builds it)');
  const info = lib.info();
  const bandwidthRuns = probeBandwidth(7);
  const M = 512;
  const K = 2048;
  const N = 2048;
  const w: Weight = { name: 'probe', dtype: 'bf16', rows: N, cols: K, data: new Uint16Array(N * K).map((_, i) => 0x3c00 + (i % 127)) };
  const x = new Float32Array(M * K).map((_, i) => ((i % 17) - 8) / 16);
  const out = new Float32Array(M * N);
  const gemm = (bf16: boolean) => {
    const be = new NativeBackend({ bf16Activations: bf16 });
    be.matmul(out, x, M, w);
    const runs: number[] = [];
    for (let r = 0; r < 5; r++) {
      const t = performance.now();
      be.matmul(out, x, M, w);
      runs.push((2 * M * K * N) / ((performance.now() - t) / 1000) / 1e9);
    }
    return median(runs);
  };
  let cpu = 'unknown';
  try {
    cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpu;
  } catch {
    // not Linux
  }
  return {
    cpu,
    threads: info.threads,
    features: info.features,
    bandwidthGBs: median(bandwidthRuns),
    bandwidthRuns: bandwidthRuns.map((x) => Math.round(x * 10) / 10),
    gemmBf16ActivationsGflops: gemm(true),
    gemmF32ActivationsGflops: gemm(false),
    gemmBf16Path: new NativeBackend({ bf16Activations: true }).matmulPath(M, w),
    gemmF32Path: new NativeBackend({ bf16Activations: false }).matmulPath(M, w),
    fmaPeakGflops: lib.fmaPeak(info.threads),
    fmaPeakOneThreadGflops: lib.fmaPeak(1),
  };
}
