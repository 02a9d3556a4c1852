import type { KvCache } from '../cache/kv-cache.ts';
import { prefill } from '../model/prefill.ts';
import type { LayerCapture } from '../model/llama.ts';
import type { Scorer, Scores, ScoringModel } from '../press/types.ts';
import type { KvHeadView, Weight } from '../tensor/backend.ts';
import { widenWeight } from '../tensor/reference.ts';
import type { LoadedModel } from './loaded-model.ts';

/**
 * A loaded model seen through the narrow interface scorers get. `scoreText` is the session's own pipeline
 * (prefill with capture, then score), passed in so this module needs no session.
 */
export function scoringModel(lm: LoadedModel, scoreText: (text: string, scorer: Scorer) => Scores): ScoringModel {
  const cfg = lm.config;
  const backend = lm.model.backend;
  return {
    config: cfg,
    fingerprint: lm.fingerprint,
    ropeInvFreq: lm.model.rope.invFreq,
    encode: (text) => lm.tokenizer.encode(text),
    attentionStats(q: Float32Array, qPos: Int32Array, heads: KvHeadView[], reduce: 'sum' | 'max', opts = {}) {
      const acc = heads.map((h) => new Float32Array(h.len));
      backend.attention({
        q,
        out: null,
        nq: qPos.length,
        nHeads: opts.nHeads ?? cfg.numHeads,
        nKvHeads: heads.length,
        headDim: cfg.headDim,
        qPos,
        heads,
        scale: 1 / Math.sqrt(cfg.headDim),
        stats: { fromQuery: 0, [reduce]: acc, queryWeight: opts.queryWeight },
      });
      return acc;
    },
    run(cache: KvCache, ids: number[], onLayer: (c: LayerCapture) => void) {
      prefill(lm.model, cache, ids, { onLayer });
    },
    outputNorms(layer: number, head: number, values: Float32Array, n: number, p: 1 | 2 = 2) {
      const D = cfg.hiddenSize;
      const d = cfg.headDim;
      const projected = new Float32Array(n * D);
      backend.matmul(projected, values, n, headColumns(widenWeight(lm.model.weights.layers[layer]!.wo), D, cfg.numHeads, d, head));
      return Float64Array.from({ length: n }, (_, j) => {
        let s = 0;
        if (p === 1) for (let k = 0; k < D; k++) s += Math.abs(projected[j * D + k]!);
        else for (let k = 0; k < D; k++) s += projected[j * D + k]! ** 2;
        return p === 1 ? s : Math.sqrt(s);
      });
    },
    scoreText,
  };
}

/** W_O^h: columns [h d, (h + 1) d) of o_proj ([D, nHeads d]) as an fp32 weight [D, d]. */
function headColumns(wo: Float32Array, D: number, nHeads: number, d: number, h: number): Weight {
  const data = new Float32Array(D * d);
  for (let r = 0; r < D; r++) data.set(wo.subarray(r * nHeads * d + h * d, r * nHeads * d + (h + 1) * d), r * d);
  return { name: 'o_proj.head', dtype: 'f32', rows: D, cols: d, data };
}
