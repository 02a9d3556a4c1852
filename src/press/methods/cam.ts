import type { KvCache } from '../../cache/kv-cache.ts';
import { seededRandom } from '../../tensor/seeded-random.ts';
import type { Span } from '../types.ts';
import type { Scorer } from '../types.ts';

export interface CamOptions {
  /** Kept rows after an evicted row that share its value. */
  mergeBudget?: number;
  /** Seed of the Bernoulli merge draws. */
  seed?: number;
}

export const CAM_DEFAULTS = { mergeBudget: 32, seed: 0 } as const;

/**
 * CaM (Zhang et al. 2024, ICML, "CaM: Cache Merging for Memory-efficient LLMs Inference"; kvpress CAMPress):
 * evicted values are merged into kept ones instead of being dropped. Per (layer, KV head), each evicted row i
 * (in position order) picks its window: the next mergeBudget kept rows after it (fewer at the end, none when
 * no kept row follows). With A the attention each row received during the prefill (summed over queries and
 * the GQA group), the merge happens with probability clamp(A_i / mean(A over the window), 0, 1), drawn from a
 * seeded generator; a merged row adds v_i / |window| to every value of its window. Keys are not touched.
 * Runs before the rows are dropped (the `cam:` wrapper); the scorer must record observed attention, which
 * camScorer adds to any scorer's needs. Defaults (kvpress): mergeBudget 32; seed 0.
 */
export function mergeEvictedValues(cache: KvCache, span: Span, keep: Int32Array[][], observed: Float32Array[][], opts: CamOptions = {}): void {
  const { mergeBudget, seed } = { ...CAM_DEFAULTS, ...opts };
  const rand = seededRandom(seed);
  const d = cache.headDim;
  cache.forEachHead((hs, l, h) => {
    const kept = keep[l]![h]!;
    const A = observed[l]![h]!;
    const T = span.end - span.start;
    const isKept = new Uint8Array(T);
    for (const j of kept) isKept[j] = 1;
    const values = hs.values(0, hs.len).slice();
    let merged = false;
    let next = 0;
    for (let i = 0; i < T; i++) {
      if (isKept[i]) continue;
      while (next < kept.length && kept[next]! <= i) next++;
      const window = kept.subarray(next, next + mergeBudget);
      if (window.length === 0) continue;
      let mean = 0;
      for (const j of window) mean += A[span.start + j]! / window.length;
      const ratio = A[span.start + i]! / mean;
      const p = Number.isNaN(ratio) ? 0 : Math.min(1, Math.max(0, ratio));
      if (!(rand() < p)) continue;
      const src = (span.start + i) * d;
      for (const j of window) {
        const dst = (span.start + j) * d;
        for (let c = 0; c < d; c++) values[dst + c] = values[dst + c]! + values[src + c]! / window.length;
      }
      merged = true;
    }
    if (merged) cache.loadHead(l, h, Int32Array.from(hs.pos.subarray(0, hs.len)), hs.keys(0, hs.len).slice(), values);
  });
}

/** Any scorer, with the prefill also recording the attention every key receives (what CaM's merge reads). */
export function camScorer(base: Scorer): Scorer {
  return { ...base, summary: `CaM: ${base.summary}`, needs: { ...base.needs, observedAttention: true } };
}
