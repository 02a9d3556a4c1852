import type { AttentionArgs, Backend, KvHeadView, KvRows, RopeTable, Weight } from './backend.ts';
import { f32ToBf16, kvRowsToF32 } from './dtype.ts';
import { dequantizedHead } from './kv-quant.ts';

/** Keys of one run of rows: [len, headDim], or [len, ch.length] holding only channels ch. */
interface KeySegment {
  k: Float32Array;
  ch: Int32Array | null;
  len: number;
}

const widened = new WeakMap<Weight, Float32Array>();

/** The weight as fp32 [rows, cols], converted once and cached (the reference backend trades memory for clarity). */
export function widenWeight(w: Weight): Float32Array {
  if (w.dtype === 'f32') return w.data as Float32Array;
  let out = widened.get(w);
  if (out) return out;
  out = new Float32Array(w.rows * w.cols);
  if (w.dtype === 'bf16') {
    const bits = new Uint32Array(out.buffer);
    const src = w.data as Uint16Array;
    for (let i = 0; i < src.length; i++) bits[i] = src[i]! << 16;
  } else if (w.dtype === 'f16') {
    const src = w.data as Uint16Array;
    for (let i = 0; i < src.length; i++) out[i] = halfToFloat(src[i]!);
  } else {
    const src = w.data as Int8Array;
    const scales = w.scales!;
    const group = w.groupSize ?? w.cols;
    const groupsPerRow = Math.ceil(w.cols / group);
    for (let r = 0; r < w.rows; r++) {
      for (let c = 0; c < w.cols; c++) {
        out[r * w.cols + c] = src[r * w.cols + c]! * scales[r * groupsPerRow + Math.floor(c / group)]!;
      }
    }
  }
  widened.set(w, out);
  return out;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

export class ReferenceBackend implements Backend {
  readonly name = 'reference' as const;

  describe(): string {
    return 'reference (pure TypeScript, fp32)';
  }

  matmul(out: Float32Array, x: Float32Array, n: number, w: Weight): void {
    const W = widenWeight(w);
    const { rows, cols } = w;
    for (let i = 0; i < n; i++) {
      const xo = i * cols;
      for (let r = 0; r < rows; r++) {
        const wo = r * cols;
        let acc = 0;
        for (let c = 0; c < cols; c++) acc += x[xo + c]! * W[wo + c]!;
        out[i * rows + r] = acc;
      }
    }
  }

  rmsnorm(out: Float32Array, x: Float32Array, n: number, dim: number, weight: Float32Array, eps: number): void {
    for (let i = 0; i < n; i++) {
      const o = i * dim;
      let ss = 0;
      for (let c = 0; c < dim; c++) ss += x[o + c]! * x[o + c]!;
      const inv = 1 / Math.sqrt(Math.fround(ss / dim) + eps);
      for (let c = 0; c < dim; c++) out[o + c] = Math.fround(x[o + c]! * inv) * weight[c]!;
    }
  }

  rope(x: Float32Array, n: number, nHeads: number, positions: Int32Array, table: RopeTable): void {
    const d = table.headDim;
    const half = d / 2;
    const cos = new Float32Array(half);
    const sin = new Float32Array(half);
    for (let i = 0; i < n; i++) {
      const p = positions[i]!;
      for (let f = 0; f < half; f++) {
        const angle = Math.fround(p * table.invFreq[f]!);
        cos[f] = Math.cos(angle) * table.attentionScaling;
        sin[f] = Math.sin(angle) * table.attentionScaling;
      }
      for (let h = 0; h < nHeads; h++) {
        const o = (i * nHeads + h) * d;
        for (let f = 0; f < half; f++) {
          const a = x[o + f]!;
          const b = x[o + f + half]!;
          x[o + f] = a * cos[f]! - b * sin[f]!;
          x[o + f + half] = b * cos[f]! + a * sin[f]!;
        }
      }
    }
  }

  siluMul(out: Float32Array, gate: Float32Array, up: Float32Array, len: number): void {
    for (let i = 0; i < len; i++) {
      const g = gate[i]!;
      out[i] = (g / (1 + Math.exp(-g))) * up[i]!;
    }
  }

  embedding(out: Float32Array, table: Weight, ids: Int32Array): void {
    const cols = table.cols;
    const W = widenWeight(table);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id < 0 || id >= table.rows) throw new RangeError(`token id ${id} outside the vocabulary (0..${table.rows - 1})`);
      out.set(W.subarray(id * cols, (id + 1) * cols), i * cols);
    }
  }

  attention(a: AttentionArgs): void {
    const { q, out, nq, nHeads, nKvHeads, headDim: d, qPos, scale, stats } = a;
    const window = a.window ?? Infinity;
    const group = nHeads / nKvHeads;
    if (a.prefix && stats) throw new Error('attention: statistics over a prefixed (shared-context) call are not supported');
    // Quantized heads are read dequantized: the plain oracle the native kernels are checked against. A
    // channel-pruned head's keys are read at their stored width, against the query's kept channels.
    const keysOf = (h: KvHeadView): KeySegment => {
      const ch = h.keyChannels ?? null;
      if (h.quant) return { k: dequantizedHead(h, d).k, ch: null, len: h.len };
      return { k: kvRowsToF32(h.k, 0, h.len * (ch ? ch.length : d)), ch, len: h.len };
    };
    const valuesOf = (h: KvHeadView) => (h.quant ? dequantizedHead(h, d).v : kvRowsToF32(h.v, 0, h.len * d));
    const heads = a.heads.slice(0, nKvHeads).map((h, g) => {
      const p = a.prefix?.[g];
      if (!p) return { segments: [keysOf(h)], v: valuesOf(h), pos: h.pos, len: h.len };
      // The prefix's rows, then the head's own, as one head.
      const pos = new Int32Array(p.len + h.len);
      pos.set(p.pos.subarray(0, p.len));
      pos.set(h.pos.subarray(0, h.len), p.len);
      const v = new Float32Array((p.len + h.len) * d);
      v.set(valuesOf(p));
      v.set(valuesOf(h), p.len * d);
      return { segments: [keysOf(p), keysOf(h)], v, pos, len: p.len + h.len };
    });
    for (let h = 0; h < nHeads; h++) {
      const g = Math.floor(h / group);
      const kv = heads[g]!;
      const probs = new Float64Array(kv.len);
      for (let i = 0; i < nq; i++) {
        const qo = (i * nHeads + h) * d;
        let maxLogit = -Infinity;
        let j = 0;
        for (const { k, ch, len } of kv.segments) {
          const kd = ch ? ch.length : d;
          for (let r = 0; r < len; r++, j++) {
            if (kv.pos[j]! > qPos[i]! || qPos[i]! - kv.pos[j]! >= window) {
              probs[j] = -Infinity;
              continue;
            }
            let dot = 0;
            const ko = r * kd;
            if (ch) for (let c = 0; c < kd; c++) dot += q[qo + ch[c]!]! * k[ko + c]!;
            else for (let c = 0; c < d; c++) dot += q[qo + c]! * k[ko + c]!;
            probs[j] = dot * scale;
            if (probs[j]! > maxLogit) maxLogit = probs[j]!;
          }
        }
        let denom = 0;
        for (let j = 0; j < kv.len; j++) {
          const e = probs[j] === -Infinity ? 0 : Math.exp(probs[j]! - maxLogit);
          probs[j] = e;
          denom += e;
        }
        for (let j = 0; j < kv.len; j++) probs[j] = probs[j]! / denom;
        if (out) {
          for (let c = 0; c < d; c++) {
            let acc = 0;
            for (let j = 0; j < kv.len; j++) acc += probs[j]! * kv.v[j * d + c]!;
            out[qo + c] = acc;
          }
        }
        if (stats && i >= stats.fromQuery) {
          const sum = stats.sum?.[g];
          const max = stats.max?.[g];
          const wq = stats.queryWeight ? stats.queryWeight[i]! : 1;
          for (let j = 0; j < kv.len; j++) {
            const p = Math.fround(Math.fround(probs[j]!) * wq);
            if (sum) sum[j] = sum[j]! + p;
            if (max && p > max[j]!) max[j] = p;
          }
        }
      }
    }
  }

  add(out: Float32Array, a: Float32Array, b: Float32Array, len: number): void {
    for (let i = 0; i < len; i++) out[i] = a[i]! + b[i]!;
  }

  addRowBias(x: Float32Array, n: number, bias: Float32Array): void {
    const w = bias.length;
    for (let i = 0; i < n; i++) for (let c = 0; c < w; c++) x[i * w + c] = x[i * w + c]! + bias[c]!;
  }

  copyRows(dst: KvRows, dstOffset: number, src: Float32Array, srcOffset: number, srcStride: number, rows: number, width: number): void {
    if (dst instanceof Float32Array) {
      for (let i = 0; i < rows; i++) dst.set(src.subarray(srcOffset + i * srcStride, srcOffset + i * srcStride + width), dstOffset + i * width);
      return;
    }
    for (let i = 0; i < rows; i++) for (let c = 0; c < width; c++) dst[dstOffset + i * width + c] = f32ToBf16(src[srcOffset + i * srcStride + c]!);
  }
}
