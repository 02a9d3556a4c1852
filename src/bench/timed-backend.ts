import type { AttentionArgs, Backend, KvRows, RopeTable, StepRecording, Weight } from '../tensor/backend.ts';

/** Wraps a backend and accounts time (and matmul FLOPs) per operation, for benchmarks. */
export class TimedBackend implements Backend {
  readonly ms: Record<string, number> = {};
  matmulFlops = 0;

  constructor(readonly inner: Backend) {}

  get name() {
    return this.inner.name;
  }

  describe(): string {
    return this.inner.describe();
  }

  /** Async steps run on the inner backend, untimed per op: without this, forwardAsync() would fall back to forward(). */
  get recordStep(): (() => StepRecording) | undefined {
    const inner = this.inner;
    return inner.recordStep ? () => inner.recordStep!() : undefined;
  }

  reset(): void {
    for (const k of Object.keys(this.ms)) delete this.ms[k];
    this.matmulFlops = 0;
  }

  private time<T>(op: string, fn: () => T): T {
    const t = performance.now();
    const r = fn();
    this.ms[op] = (this.ms[op] ?? 0) + performance.now() - t;
    return r;
  }

  matmul(out: Float32Array, x: Float32Array, n: number, w: Weight): void {
    this.matmulFlops += 2 * n * w.rows * w.cols;
    this.time('matmul', () => this.inner.matmul(out, x, n, w));
  }
  rmsnorm(out: Float32Array, x: Float32Array, n: number, dim: number, weight: Float32Array, eps: number): void {
    this.time('rmsnorm', () => this.inner.rmsnorm(out, x, n, dim, weight, eps));
  }
  rope(x: Float32Array, n: number, nHeads: number, positions: Int32Array, table: RopeTable): void {
    this.time('rope', () => this.inner.rope(x, n, nHeads, positions, table));
  }
  siluMul(out: Float32Array, gate: Float32Array, up: Float32Array, len: number): void {
    this.time('silu_mul', () => this.inner.siluMul(out, gate, up, len));
  }
  embedding(out: Float32Array, table: Weight, ids: Int32Array): void {
    this.time('embedding', () => this.inner.embedding(out, table, ids));
  }
  attention(args: AttentionArgs): void {
    this.time('attention', () => this.inner.attention(args));
  }
  add(out: Float32Array, a: Float32Array, b: Float32Array, len: number): void {
    this.time('add', () => this.inner.add(out, a, b, len));
  }
  addRowBias(x: Float32Array, n: number, bias: Float32Array): void {
    this.time('add', () => this.inner.addRowBias(x, n, bias));
  }
  copyRows(dst: KvRows, dstOffset: number, src: Float32Array, srcOffset: number, srcStride: number, rows: number, width: number): void {
    this.time('cache_append', () => this.inner.copyRows(dst, dstOffset, src, srcOffset, srcStride, rows, width));
  }
}
