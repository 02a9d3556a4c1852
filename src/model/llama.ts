import type { AttentionStats, Backend, RopeTable } from '../tensor/backend.ts';
import type { KvCache } from '../cache/kv-cache.ts';
import type { ModelConfig } from './config.ts';
import type { ModelWeights } from './weights.ts';

/** What a layer exposes to compression scorers during a forward pass (views valid only during the call). */
export interface LayerCapture {
  layer: number;
  n: number;
  positions: Int32Array;
  /** Residual stream entering the layer [n, hidden]. */
  hidden: Float32Array;
  /** Queries before RoPE [n, nHeads, headDim] (after q_norm where the model has one). */
  qPreRope: Float32Array;
  /** Queries after RoPE [n, nHeads, headDim]. */
  q: Float32Array;
  /** New keys after RoPE and values [n, nKvHeads, headDim] (already appended to the cache). */
  k: Float32Array;
  v: Float32Array;
}

export interface ForwardOptions {
  /** Which rows get logits: the last one (default), all of them, or none. */
  logits?: 'last' | 'all' | 'none';
  /** Called per layer after the new keys and values are cached and attention has run. */
  onLayer?: (capture: LayerCapture) => void;
  /** Per-layer attention statistics to accumulate during this pass. */
  stats?: (layer: number) => AttentionStats | undefined;
}

/**
 * The Llama-family forward pass (Llama 2/3, Mistral, Qwen2 with q/k/v biases, Qwen3 with q/k norms;
 * attention_bias checkpoints also carry an o_proj bias).
 * Appends the new tokens to the cache at positions cache.nextPos.. and returns logits [rows, vocab].
 */
export class LlamaModel {
  readonly rope: RopeTable;

  constructor(
    readonly config: ModelConfig,
    readonly weights: ModelWeights,
    readonly backend: Backend,
    rope: RopeTable,
  ) {
    this.rope = rope;
  }

  forward(ids: ArrayLike<number>, cache: KvCache, opts: ForwardOptions = {}): Float32Array | null {
    const cfg = this.config;
    const be = this.backend;
    const W = this.weights;
    const n = ids.length;
    if (n === 0) throw new RangeError('forward() needs at least one token');
    const start = cache.nextPos;
    if (start + n > cfg.maxPositionEmbeddings) {
      throw new RangeError(
        `sequence of ${start + n} tokens is longer than the model allows (max_position_embeddings ${cfg.maxPositionEmbeddings})`,
      );
    }
    const D = cfg.hiddenSize;
    const nH = cfg.numHeads;
    const nKv = cfg.numKvHeads;
    const hd = cfg.headDim;
    const positions = new Int32Array(n);
    for (let i = 0; i < n; i++) positions[i] = start + i;

    const x = new Float32Array(n * D);
    be.embedding(x, W.embed, Int32Array.from(ids));
    const xn = new Float32Array(n * D);
    const q = new Float32Array(n * nH * hd);
    const qPre = opts.onLayer ? new Float32Array(n * nH * hd) : null;
    const k = new Float32Array(n * nKv * hd);
    const v = new Float32Array(n * nKv * hd);
    const attn = new Float32Array(n * nH * hd);
    const proj = new Float32Array(n * D);
    const gate = new Float32Array(n * cfg.intermediateSize);
    const up = new Float32Array(n * cfg.intermediateSize);
    const hiddenIn = opts.onLayer ? new Float32Array(n * D) : null;
    const scale = 1 / Math.sqrt(hd);

    for (let l = 0; l < cfg.numLayers; l++) {
      const L = W.layers[l]!;
      if (hiddenIn) hiddenIn.set(x);
      be.rmsnorm(xn, x, n, D, L.inputNorm, cfg.rmsNormEps);
      be.matmul(q, xn, n, L.wq);
      be.matmul(k, xn, n, L.wk);
      be.matmul(v, xn, n, L.wv);
      if (L.bq) addRowBias(q, n, L.bq);
      if (L.bk) addRowBias(k, n, L.bk);
      if (L.bv) addRowBias(v, n, L.bv);
      if (L.qNorm) be.rmsnorm(q, q, n * nH, hd, L.qNorm, cfg.rmsNormEps);
      if (L.kNorm) be.rmsnorm(k, k, n * nKv, hd, L.kNorm, cfg.rmsNormEps);
      if (qPre) qPre.set(q);
      be.rope(q, n, nH, positions, this.rope);
      be.rope(k, n, nKv, positions, this.rope);
      cache.appendLayer(l, k, v, positions);
      be.attention({
        q,
        out: attn,
        nq: n,
        nHeads: nH,
        nKvHeads: nKv,
        headDim: hd,
        qPos: positions,
        heads: cache.layer(l),
        scale,
        stats: opts.stats?.(l),
      });
      opts.onLayer?.({ layer: l, n, positions, hidden: hiddenIn!, qPreRope: qPre!, q, k, v });
      be.matmul(proj, attn, n, L.wo);
      if (L.bo) addRowBias(proj, n, L.bo);
      addInPlace(x, proj);

      be.rmsnorm(xn, x, n, D, L.postAttnNorm, cfg.rmsNormEps);
      be.matmul(gate, xn, n, L.gate);
      be.matmul(up, xn, n, L.up);
      be.siluMul(gate, gate, up, n * cfg.intermediateSize);
      be.matmul(proj, gate, n, L.down);
      addInPlace(x, proj);
    }
    cache.advance(n);

    const mode = opts.logits ?? 'last';
    if (mode === 'none') return null;
    const rows = mode === 'all' ? n : 1;
    const src = mode === 'all' ? x : x.subarray((n - 1) * D, n * D);
    const normed = new Float32Array(rows * D);
    be.rmsnorm(normed, src, rows, D, W.finalNorm, cfg.rmsNormEps);
    const logits = new Float32Array(rows * W.lmHead.rows);
    be.matmul(logits, normed, rows, W.lmHead);
    return logits;
  }
}

function addRowBias(x: Float32Array, n: number, bias: Float32Array): void {
  const w = bias.length;
  for (let i = 0; i < n; i++) for (let c = 0; c < w; c++) x[i * w + c] = x[i * w + c]! + bias[c]!;
}

function addInPlace(x: Float32Array, y: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] = x[i]! + y[i]!;
}
