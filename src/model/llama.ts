import { ContextTooLongError } from '../tensor/kvlab-error.ts';
import { StepNotRecordableError, type AttentionStats, type Backend, type RopeTable } from '../tensor/backend.ts';
import type { KvCache } from '../cache/kv-cache.ts';
import type { ModelConfig } from './config.ts';
import type { LayerWeights, ModelWeights } from './weights.ts';

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

/** One sequence of a batched step: its new tokens and the cache they continue. */
export interface BatchSequence {
  ids: ArrayLike<number>;
  /** The sequence's own rows; new rows are appended here. */
  cache: KvCache;
  /**
   * A read-only shared context the sequence continues: attention reads its rows before the cache's own, and
   * never changes or copies them. The cache then starts at the context's next position.
   */
  context?: KvCache;
  /** Whether the step returns logits for the sequence's last row (default true; a prefill chunk that does not end its prompt needs none). */
  logits?: boolean;
}

/**
 * The Llama-family forward pass (Llama 2/3, Mistral with its sliding window, Qwen2 with q/k/v biases, Qwen3
 * with q/k norms; attention_bias checkpoints also carry an o_proj bias).
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
    return this.pass(this.backend, ids, cache, opts);
  }

  /**
   * forward() with the kernels run off the JS thread: the same pass is recorded against the backend's
   * recording twin and executed by the addon as one async work, so the event loop keeps running meanwhile.
   * The returned logits (and the cache rows) are valid once the promise resolves; until then the cache
   * refuses changes. On failure the cache is restored to where it was. Backends that cannot record (the
   * reference one) run forward() after yielding to the event loop once.
   */
  async forwardAsync(ids: ArrayLike<number>, cache: KvCache, opts: ForwardOptions = {}): Promise<Float32Array | null> {
    if (opts.onLayer) throw new Error('forwardAsync(): onLayer captures read activations during the pass and cannot be used with an async step; use forward()');
    if (cache.busy) throw new Error('forwardAsync(): the cache is in use by another async step; await it first');
    const recording = this.backend.recordStep?.();
    if (!recording) {
      await new Promise((resolve) => setImmediate(resolve));
      return this.forward(ids, cache, opts);
    }
    const mark = cache.mark();
    try {
      const logits = this.pass(recording.backend, ids, cache, opts);
      cache.setBusy('forwardAsync()');
      try {
        await recording.run();
      } finally {
        cache.setBusy(null);
      }
      return logits;
    } catch (e) {
      cache.truncate(mark);
      // A call only the JS thread can run (e.g. attention over bf16 channel-pruned keys): the same step, synchronously.
      if (e instanceof StepNotRecordableError) return this.forward(ids, cache, opts);
      throw e;
    }
  }

  /**
   * One step for several sequences at once: their rows are stacked so every linear layer runs once over all of
   * them (the weights stream once per step), while RoPE, the cache append and attention run per sequence on its
   * own positions and its own ragged cache. Each sequence may feed any number of rows (a decode token or a
   * prefill chunk). Returns the logits of each sequence's last row ([vocab]), or null where not asked for.
   */
  forwardBatch(seqs: readonly BatchSequence[]): (Float32Array | null)[] {
    return this.batchPass(this.backend, seqs);
  }

  /** forwardBatch() run off the JS thread as one async work, as forwardAsync() does for one sequence. */
  async forwardBatchAsync(seqs: readonly BatchSequence[]): Promise<(Float32Array | null)[]> {
    for (const s of seqs) if (s.cache.busy) throw new Error('forwardBatchAsync(): a cache is in use by another async step; await it first');
    if (new Set(seqs.map((s) => s.cache)).size !== seqs.length) throw new Error('forwardBatchAsync(): two sequences of a batch share one cache');
    const recording = this.backend.recordStep?.();
    if (!recording) {
      await new Promise((resolve) => setImmediate(resolve));
      return this.forwardBatch(seqs);
    }
    const marks = seqs.map((s) => s.cache.mark());
    try {
      const logits = this.batchPass(recording.backend, seqs);
      for (const s of seqs) s.cache.setBusy('forwardBatchAsync()');
      try {
        await recording.run();
      } finally {
        for (const s of seqs) s.cache.setBusy(null);
      }
      return logits;
    } catch (e) {
      seqs.forEach((s, i) => s.cache.truncate(marks[i]!));
      if (e instanceof StepNotRecordableError) return this.forwardBatch(seqs);
      throw e;
    }
  }

  /** The batched pass, every operation on activations issued through `be`. */
  private batchPass(be: Backend, seqs: readonly BatchSequence[]): (Float32Array | null)[] {
    const cfg = this.config;
    const W = this.weights;
    if (seqs.length === 0) throw new RangeError('forwardBatch() needs at least one sequence');
    const D = cfg.hiddenSize;
    const nH = cfg.numHeads;
    const nKv = cfg.numKvHeads;
    const hd = cfg.headDim;
    // Row offsets of each sequence in the stacked activations, and every row's absolute position.
    const offsets = new Int32Array(seqs.length + 1);
    seqs.forEach((s, i) => {
      if (s.ids.length === 0) throw new RangeError(`forwardBatch(): sequence ${i} has no tokens`);
      if (s.context && s.cache.nextPos < s.context.nextPos) {
        throw new RangeError(`forwardBatch(): sequence ${i} starts at position ${s.cache.nextPos}, inside its context (${s.context.nextPos} positions)`);
      }
      if (s.cache.nextPos + s.ids.length > cfg.maxPositionEmbeddings) {
        throw new ContextTooLongError(
          `forwardBatch(): sequence ${i} reaches ${s.cache.nextPos + s.ids.length} tokens, longer than the model allows (max_position_embeddings ${cfg.maxPositionEmbeddings})`,
        );
      }
      offsets[i + 1] = offsets[i]! + s.ids.length;
    });
    const n = offsets[seqs.length]!;
    const ids = new Int32Array(n);
    const positions = new Int32Array(n);
    seqs.forEach((s, i) => {
      for (let r = 0; r < s.ids.length; r++) {
        ids[offsets[i]! + r] = s.ids[r]!;
        positions[offsets[i]! + r] = s.cache.nextPos + r;
      }
    });
    const rowsOf = (a: Float32Array, i: number, width: number) => a.subarray(offsets[i]! * width, offsets[i + 1]! * width);

    const b = layerBuffers(cfg, n);
    const { x, q, k, v, attn } = b;
    be.embedding(x, W.embed, ids);
    const scale = 1 / Math.sqrt(hd);

    for (let l = 0; l < cfg.numLayers; l++) {
      const L = W.layers[l]!;
      this.queriesKeysValues(be, L, b, n, positions);
      seqs.forEach((s, i) => {
        const pos = positions.subarray(offsets[i]!, offsets[i + 1]!);
        s.cache.appendLayer(l, rowsOf(k, i, nKv * hd), rowsOf(v, i, nKv * hd), pos, be);
        be.attention({
          q: rowsOf(q, i, nH * hd),
          out: rowsOf(attn, i, nH * hd),
          nq: pos.length,
          nHeads: nH,
          nKvHeads: nKv,
          headDim: hd,
          qPos: pos,
          heads: s.cache.layer(l),
          prefix: s.context?.layer(l),
          scale,
          window: cfg.slidingWindow ?? undefined,
        });
      });
      this.outputAndMlp(be, L, b, n);
    }
    seqs.forEach((s) => s.cache.advance(s.ids.length));

    // The LM head runs once over the last rows of the sequences that want logits.
    const wanted = seqs.map((s, i) => (s.logits === false ? -1 : i)).filter((i) => i >= 0);
    const out: (Float32Array | null)[] = seqs.map(() => null);
    if (wanted.length === 0) return out;
    const last = new Float32Array(wanted.length * D);
    // Through the backend: in a recorded step x holds its values only once the step runs.
    wanted.forEach((i, r) => be.copyRows(last, r * D, x, (offsets[i + 1]! - 1) * D, D, 1, D));
    const normed = new Float32Array(wanted.length * D);
    be.rmsnorm(normed, last, wanted.length, D, W.finalNorm, cfg.rmsNormEps);
    const vocab = W.lmHead.rows;
    const logits = new Float32Array(wanted.length * vocab);
    be.matmul(logits, normed, wanted.length, W.lmHead);
    wanted.forEach((i, r) => (out[i] = logits.subarray(r * vocab, (r + 1) * vocab)));
    return out;
  }

  /**
   * A layer's queries, keys and values of the rows in b.x: input norm, projections (and biases), q / k norms
   * where the model has them, RoPE at `positions`. `qPre` receives the queries before RoPE.
   */
  private queriesKeysValues(be: Backend, L: LayerWeights, b: LayerBuffers, n: number, positions: Int32Array, qPre: Float32Array | null = null): void {
    const cfg = this.config;
    const { x, xn, q, k, v } = b;
    be.rmsnorm(xn, x, n, cfg.hiddenSize, L.inputNorm, cfg.rmsNormEps);
    be.matmul(q, xn, n, L.wq);
    be.matmul(k, xn, n, L.wk);
    be.matmul(v, xn, n, L.wv);
    if (L.bq) be.addRowBias(q, n, L.bq);
    if (L.bk) be.addRowBias(k, n, L.bk);
    if (L.bv) be.addRowBias(v, n, L.bv);
    if (L.qNorm) be.rmsnorm(q, q, n * cfg.numHeads, cfg.headDim, L.qNorm, cfg.rmsNormEps);
    if (L.kNorm) be.rmsnorm(k, k, n * cfg.numKvHeads, cfg.headDim, L.kNorm, cfg.rmsNormEps);
    if (qPre) qPre.set(q);
    be.rope(q, n, cfg.numHeads, positions, this.rope);
    be.rope(k, n, cfg.numKvHeads, positions, this.rope);
  }

  /** The rest of a layer once b.attn holds attention's output: o_proj into the residual stream, then the SwiGLU MLP. */
  private outputAndMlp(be: Backend, L: LayerWeights, b: LayerBuffers, n: number): void {
    const cfg = this.config;
    const D = cfg.hiddenSize;
    const { x, xn, attn, proj, gate, up } = b;
    be.matmul(proj, attn, n, L.wo);
    if (L.bo) be.addRowBias(proj, n, L.bo);
    be.add(x, x, proj, n * D);
    be.rmsnorm(xn, x, n, D, L.postAttnNorm, cfg.rmsNormEps);
    be.matmul(gate, xn, n, L.gate);
    be.matmul(up, xn, n, L.up);
    be.siluMul(gate, gate, up, n * cfg.intermediateSize);
    be.matmul(proj, gate, n, L.down);
    be.add(x, x, proj, n * D);
  }

  /** The forward pass, every operation on activations issued through `be`. */
  private pass(be: Backend, ids: ArrayLike<number>, cache: KvCache, opts: ForwardOptions): Float32Array | null {
    const cfg = this.config;
    const W = this.weights;
    const n = ids.length;
    if (n === 0) throw new RangeError('forward() needs at least one token');
    const start = cache.nextPos;
    if (start + n > cfg.maxPositionEmbeddings) {
      throw new ContextTooLongError(
        `sequence of ${start + n} tokens is longer than the model allows (max_position_embeddings ${cfg.maxPositionEmbeddings})`,
      );
    }
    const D = cfg.hiddenSize;
    const nH = cfg.numHeads;
    const nKv = cfg.numKvHeads;
    const hd = cfg.headDim;
    const positions = new Int32Array(n);
    for (let i = 0; i < n; i++) positions[i] = start + i;

    const b = layerBuffers(cfg, n);
    const { x, q, k, v, attn } = b;
    be.embedding(x, W.embed, Int32Array.from(ids));
    const qPre = opts.onLayer ? new Float32Array(n * nH * hd) : null;
    const hiddenIn = opts.onLayer ? new Float32Array(n * D) : null;
    const scale = 1 / Math.sqrt(hd);

    for (let l = 0; l < cfg.numLayers; l++) {
      const L = W.layers[l]!;
      if (hiddenIn) hiddenIn.set(x);
      this.queriesKeysValues(be, L, b, n, positions, qPre);
      cache.appendLayer(l, k, v, positions, be);
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
        window: cfg.slidingWindow ?? undefined,
        stats: opts.stats?.(l),
      });
      opts.onLayer?.({ layer: l, n, positions, hidden: hiddenIn!, qPreRope: qPre!, q, k, v });
      this.outputAndMlp(be, L, b, n);
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

/** The activations of n rows through the layers: the residual stream x and every intermediate, reused by each layer. */
interface LayerBuffers {
  x: Float32Array;
  xn: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  attn: Float32Array;
  proj: Float32Array;
  gate: Float32Array;
  up: Float32Array;
}

function layerBuffers(cfg: ModelConfig, n: number): LayerBuffers {
  const D = cfg.hiddenSize;
  const qw = cfg.numHeads * cfg.headDim;
  const kvw = cfg.numKvHeads * cfg.headDim;
  return {
    x: new Float32Array(n * D),
    xn: new Float32Array(n * D),
    q: new Float32Array(n * qw),
    k: new Float32Array(n * kvw),
    v: new Float32Array(n * kvw),
    attn: new Float32Array(n * qw),
    proj: new Float32Array(n * D),
    gate: new Float32Array(n * cfg.intermediateSize),
    up: new Float32Array(n * cfg.intermediateSize),
  };
}
