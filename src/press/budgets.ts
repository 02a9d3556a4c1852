import { RatioError } from '../tensor/kvlab-error.ts';
import { compareScores, topKIndices } from './topk.ts';
import type { BudgetPolicy, KeptCounts, Scores } from './types.ts';

/** n_kept = floor(T * ratio), the project's one ratio convention (fraction of the span KEPT). */
export function keptCount(spanLength: number, ratio: number): number {
  return Math.floor(spanLength * ratio + 1e-9);
}

export function checkRatio(ratio: number): void {
  if (!(ratio >= 0 && ratio <= 1)) throw new RatioError(`ratio must be in [0, 1] (fraction of the context kept), got ${ratio}`);
}

function spanLength(scores: Scores): number {
  return scores[0]?.[0]?.length ?? 0;
}

/** Rows kept per [layer][head], counted at a policy's level (to compare with its expectedKept). */
export function keptAtLevel(kept: number[][], level: KeptCounts['level']): number[] {
  switch (level) {
    case 'head':
      return kept.flat();
    case 'head-multiset':
      return kept.flat().sort((a, b) => a - b);
    case 'layer':
      return kept.map((layer) => layer.reduce((a, b) => a + b, 0));
    case 'total':
      return [kept.flat().reduce((a, b) => a + b, 0)];
  }
}

/** Every (layer, head) keeps its own top floor(T * ratio). */
export const uniformBudget: BudgetPolicy = {
  name: 'uniform',
  select(scores, ratio) {
    const k = keptCount(spanLength(scores), ratio);
    return scores.map((layer) => layer.map((s) => topKIndices(s, k)));
  },
  expectedKept: (layers, heads, T, ratio) => ({ level: 'head', counts: new Array<number>(layers * heads).fill(keptCount(T, ratio)) }),
};

/** One top-k over all layers, heads and positions (KVzip "pair"): heads and layers get unequal budgets. */
export const globalBudget: BudgetPolicy = {
  name: 'global',
  select(scores, ratio) {
    const L = scores.length;
    const H = scores[0]!.length;
    const T = spanLength(scores);
    const total = keptCount(L * H * T, ratio);
    const flat = new Float32Array(L * H * T);
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) flat.set(scores[l]![h]!, (l * H + h) * T);
    // Tie rule: lower position wins, then lower layer, then lower head.
    const order = Int32Array.from({ length: flat.length }, (_, i) => i);
    const pos = (i: number) => i % T;
    order.sort((a, b) => compareScores(flat[a]!, flat[b]!) || pos(a) - pos(b) || a - b);
    const chosen: number[][][] = Array.from({ length: L }, () => Array.from({ length: H }, () => [] as number[]));
    for (let r = 0; r < total; r++) {
      const i = order[r]!;
      const lh = Math.floor(i / T);
      chosen[Math.floor(lh / H)]![lh % H]!.push(i % T);
    }
    return chosen.map((layer) => layer.map((idx) => Int32Array.from(idx).sort()));
  },
  expectedKept: (layers, heads, T, ratio) => ({ level: 'total', counts: [keptCount(layers * heads * T, ratio)] }),
};

/** PyramidKV: per-layer budgets decreasing linearly with depth (beta sets the top/bottom ratio), uniform per head. */
export function pyramidBudget(beta = 20): BudgetPolicy {
  return {
    name: `pyramid(beta=${beta})`,
    select(scores, ratio) {
      const budgets = pyramidLayerBudgets(scores.length, spanLength(scores), ratio, beta);
      return scores.map((layer, l) => layer.map((s) => topKIndices(s, budgets[l]!)));
    },
    expectedKept: (layers, heads, T, ratio) => ({
      level: 'head',
      counts: pyramidLayerBudgets(layers, T, ratio, beta).flatMap((n) => new Array<number>(heads).fill(n)),
    }),
  };
}

/**
 * n_l = round(max - l (max - min) / (L - 1)), min = avg / beta, max = 2 avg - min, avg = T * ratio.
 * A layer cannot keep more than T rows: what the top layers cannot use moves down to the deeper layers,
 * so the total stays L * floor(T * ratio) (and ratio 1 keeps everything).
 */
export function pyramidLayerBudgets(layers: number, T: number, ratio: number, beta: number): number[] {
  const avg = T * ratio;
  const min = avg / beta;
  const max = 2 * avg - min;
  const budgets = Array.from({ length: layers }, (_, l) =>
    Math.max(0, Math.min(T, Math.round(layers === 1 ? avg : max - (l * (max - min)) / (layers - 1)))),
  );
  const total = layers * keptCount(T, ratio);
  let diff = total - budgets.reduce((x, y) => x + y, 0);
  const largest = (ok: (n: number) => boolean) =>
    budgets.reduce((best, n, i) => (ok(n) && (best < 0 || n > budgets[best]!) ? i : best), -1);
  while (diff > 0) {
    budgets[largest((n) => n < T)]!++;
    diff--;
  }
  while (diff < 0) {
    budgets[largest((n) => n > 0)]!--;
    diff++;
  }
  return budgets;
}

/**
 * AdaKV: per layer, each head first keeps its top floor(n_kept * alpha); the rest of the layer's budget
 * (H * n_kept) goes to the best remaining (head, position) pairs of that layer.
 */
export function adaKvBudget(alphaSafeguard = 0.2): BudgetPolicy {
  return {
    name: `adakv(alpha=${alphaSafeguard})`,
    select(scores, ratio) {
      const T = spanLength(scores);
      const perHead = keptCount(T, ratio);
      const guaranteed = Math.floor(perHead * alphaSafeguard);
      return scores.map((layer) => {
        const H = layer.length;
        const kept = layer.map((s) => new Set(topKIndices(s, guaranteed)));
        const candidates: { h: number; j: number; s: number }[] = [];
        layer.forEach((s, h) => {
          for (let j = 0; j < T; j++) if (!kept[h]!.has(j)) candidates.push({ h, j, s: s[j]! });
        });
        candidates.sort((a, b) => compareScores(a.s, b.s) || a.j - b.j || a.h - b.h);
        const extra = H * perHead - H * guaranteed;
        for (let r = 0; r < extra && r < candidates.length; r++) kept[candidates[r]!.h]!.add(candidates[r]!.j);
        return kept.map((set) => Int32Array.from(set).sort());
      });
    },
    expectedKept: (layers, heads, T, ratio) => ({ level: 'layer', counts: new Array<number>(layers).fill(heads * keptCount(T, ratio)) }),
  };
}

/**
 * Whole-head budget (KVzip head-level): rank heads by their score (every position of a head carries it)
 * and keep the span of the top round(L * H * ratio) heads entirely, nothing of the others.
 */
export const wholeHeadBudget: BudgetPolicy = {
  name: 'heads',
  select(scores, ratio) {
    const H = scores[0]!.length;
    const T = spanLength(scores);
    const heads = scores.flatMap((layer, l) => layer.map((s, h) => ({ l, h, s: T > 0 ? s[0]! : 0 })));
    heads.sort((a, b) => compareScores(a.s, b.s) || a.l * H + a.h - (b.l * H + b.h));
    const nHeads = Math.round(heads.length * ratio);
    const all = Int32Array.from({ length: T }, (_, i) => i);
    const keepHead = new Set(heads.slice(0, nHeads).map((x) => x.l * H + x.h));
    return scores.map((layer, l) => layer.map((_, h) => (keepHead.has(l * H + h) ? all.slice() : new Int32Array(0))));
  },
  expectedKept(layers, heads, T, ratio) {
    const whole = Math.round(layers * heads * ratio);
    return { level: 'head-multiset', counts: Array.from({ length: layers * heads }, (_, i) => (i < layers * heads - whole ? 0 : T)) };
  },
};

/**
 * Head budget with a streaming window (KVzip head-level, DuoAttention): the top round(L * H * ratio) heads
 * by score (every position of a head carries it) keep the whole span; every other head keeps its first
 * `sink` and last `recent` span rows. Ratio 1 keeps everything; at ratio 0 every head keeps only the window.
 */
export function headsWithWindowBudget(sink: number, recent: number): BudgetPolicy {
  if (!(Number.isInteger(sink) && sink >= 0 && Number.isInteger(recent) && recent >= 0)) {
    throw new RangeError(`a head budget's sink and recent window must be integers >= 0, got ${sink} and ${recent}`);
  }
  return {
    name: `heads(sink=${sink}, recent=${recent})`,
    select(scores, ratio) {
      const whole = wholeHeadBudget.select(scores, ratio);
      const T = spanLength(scores);
      const window = streamingRows(T, sink, recent);
      return whole.map((layer) => layer.map((keep) => (keep.length === T ? keep : window.slice())));
    },
    expectedKept(layers, heads, T, ratio) {
      const whole = Math.round(layers * heads * ratio);
      const w = streamingRows(T, sink, recent).length;
      return { level: 'head-multiset', counts: Array.from({ length: layers * heads }, (_, i) => (i < layers * heads - whole ? w : T)) };
    },
  };
}

/** Span rows [0, sink) and [T - recent, T), ascending, each once. */
export function streamingRows(T: number, sink: number, recent: number): Int32Array {
  const from = Math.max(Math.min(sink, T), T - recent);
  return Int32Array.from([...Array.from({ length: Math.min(sink, T) }, (_, i) => i), ...Array.from({ length: T - from }, (_, i) => from + i)]);
}
