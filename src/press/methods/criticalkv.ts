import { keptCount } from '../budgets.ts';
import { stage, withStages } from '../staged-scores.ts';
import { compareScores, topKIndices } from '../topk.ts';
import type { BudgetPolicy, Scorer, Scores, ScoringContext } from '../types.ts';

export interface CriticalOptions {
  /** Added to the base score before it is weighted by the projected value norm. */
  epsilon?: number;
}

/**
 * CriticalKV (Feng et al. 2025, arXiv 2502.03805), from the output-perturbation bound: a key's effect on
 * the attention output is its attention times what its value writes, ||W_O v||_1. Two stages per head:
 * the first floor(n * firstStageRatio) of the n kept rows are the base scorer's top rows; the rest are the
 * top of (s + epsilon) * mean over the GQA group of ||W_O^h v_j||_1. Defaults (the paper's and kvpress's):
 * epsilon 1e-4, firstStageRatio 0.5. The scorer attaches the base scores as stage "first".
 */
export function criticalScorer(base: Scorer, { epsilon = 1e-4 }: CriticalOptions = {}): Scorer {
  return {
    summary: `CriticalKV: ${base.summary}, reweighted by ||W_O v||_1`,
    options: { ...base.options, epsilon },
    needs: base.needs,
    score(ctx) {
      const first = base.score(ctx);
      const norms = projectedValueNorms(ctx);
      const main = first.map((layer, l) => layer.map((s, h) => Float32Array.from(s, (x, j) => (x + epsilon) * norms[l]![h]![j]!)));
      return withStages(main, { first });
    },
  };
}

/** Per [layer][kvHead] and span row: mean over the group's query heads h of ||W_O^h v_j||_1. */
export function projectedValueNorms(ctx: ScoringContext): Float64Array[][] {
  const { numHeads, numKvHeads } = ctx.lm.config;
  const G = numHeads / numKvHeads;
  const { start, end } = ctx.span;
  return ctx.cache.heads.map((stores, l) =>
    stores.map((store, g) => {
      const values = store.values(start, end);
      const out = new Float64Array(end - start);
      for (let h = g * G; h < (g + 1) * G; h++) {
        const n = ctx.lm.outputNorms(l, h, values, end - start, 1);
        for (let j = 0; j < out.length; j++) out[j] = out[j]! + n[j]! / G;
      }
      return out;
    }),
  );
}

/** First the base scorer's top floor(n * firstStageRatio) rows, then the top of the reweighted scores. */
function twoStage(first: Float32Array, main: Float32Array, n: number, firstStageRatio: number): Int32Array {
  const chosen = new Set(topKIndices(first, Math.floor(n * firstStageRatio + 1e-9)));
  const order = Array.from({ length: main.length }, (_, j) => j).filter((j) => !chosen.has(j));
  order.sort((a, b) => compareScores(main[a]!, main[b]!) || a - b);
  for (let r = 0; chosen.size < n && r < order.length; r++) chosen.add(order[r]!);
  return Int32Array.from(chosen).sort();
}

/** CriticalKV's budget: every (layer, head) keeps floor(T * ratio) rows, chosen in two stages. */
export function criticalBudget(firstStageRatio = 0.5): BudgetPolicy {
  const name = `critical(first=${firstStageRatio})`;
  return {
    name,
    select(scores: Scores, ratio) {
      const first = stage(scores, 'first', name);
      const n = keptCount(scores[0]?.[0]?.length ?? 0, ratio);
      return scores.map((layer, l) => layer.map((s, h) => twoStage(first[l]![h]!, s, n, firstStageRatio)));
    },
    expectedKept: (layers, heads, T, ratio) => ({ level: 'head', counts: new Array<number>(layers * heads).fill(keptCount(T, ratio)) }),
  };
}

/**
 * CriticalAdaKV's budget: per layer, AdaKV shares H * floor(T * ratio) rows among the heads by the base
 * scores (each head first gets its top floor(n * alpha)); each head then fills its share in CriticalKV's
 * two stages. Defaults: alpha 0.2, firstStageRatio 0.5.
 */
export function criticalAdaKvBudget(alphaSafeguard = 0.2, firstStageRatio = 0.5): BudgetPolicy {
  const name = `critical-adakv(alpha=${alphaSafeguard}, first=${firstStageRatio})`;
  return {
    name,
    select(scores: Scores, ratio) {
      const first = stage(scores, 'first', name);
      const T = scores[0]?.[0]?.length ?? 0;
      const n = keptCount(T, ratio);
      const safe = Math.floor(n * alphaSafeguard + 1e-9);
      return scores.map((layer, l) => {
        const base = first[l]!;
        const guaranteed = base.map((s) => new Set(topKIndices(s, safe)));
        const pairs: { h: number; j: number; s: number }[] = [];
        base.forEach((s, h) => {
          for (let j = 0; j < T; j++) if (!guaranteed[h]!.has(j)) pairs.push({ h, j, s: s[j]! });
        });
        pairs.sort((a, b) => compareScores(a.s, b.s) || a.j - b.j || a.h - b.h);
        const share = guaranteed.map((g) => g.size);
        for (let r = 0; r < layer.length * (n - safe) && r < pairs.length; r++) share[pairs[r]!.h]!++;
        return layer.map((s, h) => twoStage(base[h]!, s, share[h]!, firstStageRatio));
      });
    },
    expectedKept: (layers, heads, T, ratio) => ({ level: 'layer', counts: new Array<number>(layers).fill(heads * keptCount(T, ratio)) }),
  };
}
