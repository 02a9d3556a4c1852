// @ts-check
/**
 * Keep-set selection from stored scores, as the engine's budget policies and protection make it
 * (src/press/budgets.ts, topk.ts, protect.ts): exact top-k, higher score first, NaN last, ties to the
 * lower position. The inspector page runs this file as it is; node tests import it and compare its keep
 * sets with the engine's. Each policy ranks the scores once (the ranking does not depend on the ratio),
 * so moving the ratio only takes a different prefix of the same rankings.
 */

/**
 * @typedef {{ kind: 'uniform' } | { kind: 'global' } | { kind: 'pyramid', beta: number }
 *   | { kind: 'adakv', alpha: number } | { kind: 'heads', sink?: number, recent?: number }} BudgetSpec
 * @typedef {{ name: string, start: number, end: number }} NamedRange
 * @typedef {{ whitelist?: string[], fair?: { lambda: number } }} Protection
 * @typedef {ArrayLike<number>[][]} ScoreGrid per [layer][kvHead], one score per span position
 * @typedef {{ budget: BudgetSpec, scores: ScoreGrid, ranges: NamedRange[], protection?: Protection,
 *   localScores?: ScoreGrid }} SelectionInput
 */

/**
 * n_kept = floor(T * ratio): the project's ratio convention (fraction of the span kept).
 * @param {number} spanLength @param {number} ratio
 */
export function keptCount(spanLength, ratio) {
  return Math.floor(spanLength * ratio + 1e-9);
}

/**
 * Negative when score a ranks before score b: higher first, NaN last.
 * @param {number} a @param {number} b
 */
export function compareScores(a, b) {
  const an = Number.isNaN(a);
  const bn = Number.isNaN(b);
  if (an || bn) return an === bn ? 0 : an ? 1 : -1;
  return a > b ? -1 : a < b ? 1 : 0;
}

/**
 * Indices of `scores` in rank order (score, then lower index): the top-k of the engine is the first k.
 * @param {ArrayLike<number>} scores
 * @returns {Int32Array}
 */
export function rankOrder(scores) {
  const order = Int32Array.from({ length: scores.length }, (_, i) => i);
  order.sort((a, b) => compareScores(scores[a], scores[b]) || a - b);
  return order;
}

/**
 * The first k of a ranking, ascending.
 * @param {Int32Array} order
 * @param {number} k
 */
function topOf(order, k) {
  const take = Math.max(0, Math.min(order.length, Math.floor(k)));
  return order.slice(0, take).sort();
}

/**
 * PyramidKV's per-layer budgets: linearly decreasing with depth, capped at T, summing to L * floor(T * ratio).
 * @param {number} layers @param {number} T @param {number} ratio @param {number} beta
 * @returns {number[]}
 */
export function pyramidLayerBudgets(layers, T, ratio, beta) {
  const avg = T * ratio;
  const min = avg / beta;
  const max = 2 * avg - min;
  const budgets = Array.from({ length: layers }, (_, l) =>
    Math.max(0, Math.min(T, Math.round(layers === 1 ? avg : max - (l * (max - min)) / (layers - 1)))),
  );
  const total = layers * keptCount(T, ratio);
  let diff = total - budgets.reduce((x, y) => x + y, 0);
  /** @param {(n: number) => boolean} ok */
  const largest = (ok) => budgets.reduce((best, n, i) => (ok(n) && (best < 0 || n > budgets[best]) ? i : best), -1);
  while (diff > 0) {
    budgets[largest((n) => n < T)]++;
    diff--;
  }
  while (diff < 0) {
    budgets[largest((n) => n > 0)]--;
    diff++;
  }
  return budgets;
}

/**
 * Selects from one score grid under one budget policy; rankings are built on first use and kept.
 * @param {ScoreGrid} scores
 * @param {BudgetSpec} budget
 * @returns {(ratio: number) => Int32Array[][]}
 */
function policySelector(scores, budget) {
  const L = scores.length;
  const H = L ? scores[0].length : 0;
  const T = H ? scores[0][0].length : 0;
  /** @type {Int32Array[][] | undefined} */
  let perHead;
  const headOrders = () => (perHead ??= scores.map((layer) => layer.map((s) => rankOrder(s))));
  const perHeadTop = (/** @type {(l: number) => number} */ k) => headOrders().map((layer, l) => layer.map((o) => topOf(o, k(l))));
  switch (budget.kind) {
    case 'uniform':
      return (ratio) => perHeadTop(() => keptCount(T, ratio));
    case 'pyramid':
      return (ratio) => {
        const budgets = pyramidLayerBudgets(L, T, ratio, budget.beta);
        return perHeadTop((l) => budgets[l]);
      };
    case 'global': {
      /** @type {Int32Array | undefined} */
      let order;
      return (ratio) => {
        order ??= globalOrder(scores, L, H, T);
        const total = keptCount(L * H * T, ratio);
        /** @type {number[][][]} */
        const chosen = Array.from({ length: L }, () => Array.from({ length: H }, () => /** @type {number[]} */ ([])));
        for (let r = 0; r < total; r++) {
          const i = order[r];
          const lh = Math.floor(i / T);
          chosen[Math.floor(lh / H)][lh % H].push(i % T);
        }
        return chosen.map((layer) => layer.map((idx) => Int32Array.from(idx).sort()));
      };
    }
    case 'adakv': {
      /** @type {{ h: number, j: number }[][] | undefined} */
      let layerOrders;
      return (ratio) => {
        layerOrders ??= scores.map((layer) => layerPairOrder(layer, T));
        const perHeadKept = keptCount(T, ratio);
        const guaranteed = Math.floor(perHeadKept * budget.alpha);
        const orders = headOrders();
        return scores.map((layer, l) => {
          const kept = layer.map((_, h) => new Set(topOf(orders[l][h], guaranteed)));
          const extra = H * perHeadKept - H * guaranteed;
          let added = 0;
          for (const c of /** @type {{ h: number, j: number }[][]} */ (layerOrders)[l]) {
            if (added >= extra) break;
            if (kept[c.h].has(c.j)) continue;
            kept[c.h].add(c.j);
            added++;
          }
          return kept.map((set) => Int32Array.from(set).sort());
        });
      };
    }
    case 'heads': {
      const heads = scores.flatMap((layer, l) => layer.map((s, h) => ({ l, h, s: T > 0 ? s[0] : 0 })));
      heads.sort((a, b) => compareScores(a.s, b.s) || a.l * H + a.h - (b.l * H + b.h));
      return (ratio) => {
        const keepHead = new Set(heads.slice(0, Math.round(heads.length * ratio)).map((x) => x.l * H + x.h));
        const all = Int32Array.from({ length: T }, (_, i) => i);
        // The other heads keep their first `sink` and last `recent` rows (none without a window).
        const from = Math.max(Math.min(budget.sink ?? 0, T), T - (budget.recent ?? 0));
        const window = Int32Array.from(all.filter((j) => j < (budget.sink ?? 0) || j >= from));
        return scores.map((layer, l) => layer.map((_, h) => (keepHead.has(l * H + h) ? all.slice() : window.slice())));
      };
    }
    default:
      throw new Error(`no browser-side selection for budget policy ${JSON.stringify(budget)}`);
  }
}

/**
 * One ranking over every (layer, head, position): score, then lower position, then lower layer and head.
 * @param {ScoreGrid} scores @param {number} L @param {number} H @param {number} T
 */
function globalOrder(scores, L, H, T) {
  const flat = new Float32Array(L * H * T);
  for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) flat.set(scores[l][h], (l * H + h) * T);
  const order = Int32Array.from({ length: flat.length }, (_, i) => i);
  order.sort((a, b) => compareScores(flat[a], flat[b]) || (a % T) - (b % T) || a - b);
  return order;
}

/**
 * One layer's (head, position) pairs ranked by score, then lower position, then lower head (AdaKV's pool).
 * @param {ArrayLike<number>[]} layer @param {number} T
 */
function layerPairOrder(layer, T) {
  const pairs = [];
  for (let h = 0; h < layer.length; h++) for (let j = 0; j < T; j++) pairs.push({ h, j, s: layer[h][j] });
  pairs.sort((a, b) => compareScores(a.s, b.s) || a.j - b.j || a.h - b.h);
  return pairs.map(({ h, j }) => ({ h, j }));
}

/**
 * Integer quotas summing to `total` close to real-valued targets (largest remainder), each capped at its
 * range length; what a capped range cannot take goes to the others.
 * @param {number[]} targets @param {number} total @param {number[]} caps
 */
export function apportion(targets, total, caps) {
  const q = targets.map((t, i) => Math.min(caps[i], Math.floor(t)));
  let left = total - q.reduce((a, b) => a + b, 0);
  const order = targets
    .map((_, i) => i)
    .sort((a, b) => targets[b] - Math.floor(targets[b]) - (targets[a] - Math.floor(targets[a])) || a - b);
  while (left > 0) {
    let moved = false;
    for (const i of order) {
      if (left === 0) break;
      if (q[i] < caps[i]) {
        q[i]++;
        left--;
        moved = true;
      }
    }
    if (!moved) break;
  }
  while (left < 0) {
    const i = q.indexOf(Math.max(...q));
    q[i]--;
    left++;
  }
  return q;
}

/**
 * A selector for one method's stored scores: `select(ratio)` returns span-relative rows kept per
 * [layer][kvHead], ascending, equal to the engine's protectedSelect (or the policy's own select).
 * @param {SelectionInput} input
 * @returns {{ select(ratio: number): Int32Array[][] }}
 */
export function createSelector(input) {
  const { scores, budget, ranges, protection } = input;
  const T = scores[0]?.[0]?.length ?? 0;
  const whitelist = protection?.whitelist ?? [];
  const whitelisted = new Uint8Array(T);
  for (const r of ranges) if (whitelist.includes(r.name)) whitelisted.fill(1, r.start, r.end);
  const base = whitelist.length ? whitelistSelector(scores, budget, whitelisted) : policySelector(scores, budget);
  const fair = protection?.fair;
  if (!fair) return { select: (ratio) => base(ratio) };
  const local = input.localScores;
  if (!local) throw new Error('fair eviction needs span-local scores');
  const open = ranges.filter((r) => !whitelist.includes(r.name) && r.end > r.start);
  const lengths = open.map((r) => r.end - r.start);
  const totalLength = lengths.reduce((a, b) => a + b, 0);
  // Per (layer, head), per open range: the range's rows ranked by its span-local scores.
  const localOrders = local.map((layer) =>
    layer.map((s) => open.map((r) => rankOrder(Array.prototype.slice.call(s, r.start, r.end)))),
  );
  return {
    select(ratio) {
      return base(ratio).map((layer, l) =>
        layer.map((keep, h) => {
          const inRange = (/** @type {NamedRange} */ r) => keep.reduce((n, j) => n + (j >= r.start && j < r.end ? 1 : 0), 0);
          const fixed = [...keep].filter((j) => whitelisted[j]);
          const budgetLeft = keep.length - fixed.length;
          const targets = open.map((r, i) => (1 - fair.lambda) * inRange(r) + (fair.lambda * budgetLeft * lengths[i]) / Math.max(totalLength, 1));
          const quotas = apportion(targets, budgetLeft, lengths);
          const chosen = [...fixed];
          open.forEach((r, i) => {
            for (const j of topOf(localOrders[l][h][i], quotas[i])) chosen.push(r.start + j);
          });
          return Int32Array.from(chosen).sort();
        }),
      );
    },
  };
}

/**
 * Whitelisted rows always kept; the rest of floor(T * ratio) goes to the policy over the other rows.
 * @param {ScoreGrid} scores @param {BudgetSpec} budget @param {Uint8Array} whitelisted
 * @returns {(ratio: number) => Int32Array[][]}
 */
function whitelistSelector(scores, budget, whitelisted) {
  const T = whitelisted.length;
  /** @type {number[]} */
  const others = [];
  /** @type {number[]} */
  const fixed = [];
  for (let j = 0; j < T; j++) (whitelisted[j] ? fixed : others).push(j);
  const reduced = scores.map((layer) => layer.map((s) => Float32Array.from(others, (j) => s[j])));
  const inner = policySelector(reduced, budget);
  return (ratio) => {
    const room = Math.max(0, keptCount(T, ratio) - fixed.length);
    const reducedRatio = others.length ? Math.min(1, room / others.length) : 0;
    return inner(reducedRatio).map((layer) => layer.map((sel) => Int32Array.from([...fixed, ...Array.from(sel, (i) => others[i])]).sort()));
  };
}

/**
 * How many (layer, head) pairs keep each span row.
 * @param {Int32Array[][]} keep @param {number} T
 */
export function keptCounts(keep, T) {
  const counts = new Int32Array(T);
  for (const layer of keep) for (const rows of layer) for (const j of rows) counts[j]++;
  return counts;
}

/**
 * Mean kept fraction (over rows and (layer, head) pairs) per range name.
 * @param {Int32Array[][]} keep @param {NamedRange[]} ranges
 * @returns {Record<string, number>}
 */
export function spanKeepRates(keep, ranges) {
  const T = ranges.reduce((m, r) => Math.max(m, r.end), 0);
  const pairs = keep.length * (keep[0]?.length ?? 0);
  const counts = keptCounts(keep, T);
  /** @type {Record<string, [number, number]>} */
  const sums = {};
  for (const r of ranges) {
    const acc = (sums[r.name] ??= [0, 0]);
    for (let j = r.start; j < r.end; j++) acc[0] += counts[j];
    acc[1] += (r.end - r.start) * pairs;
  }
  return Object.fromEntries(Object.entries(sums).map(([k, [s, n]]) => [k, n ? s / n : 0]));
}
