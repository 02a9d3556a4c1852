/**
 * How long the inspector page's selection takes when the slider moves, at a real model's size: the same
 * select.js the page runs, on seeded random scores of L layers x H KV heads x T tokens, per budget policy.
 * Prints JSON: the CPU, the first selection (which ranks the scores) and the median of later ones.
 * Usage: npx tsx scripts/inspect-selection-timing.ts [L H T]   (default 16 8 4096, Llama-3.2-1B's cache shape)
 */
import { cpus } from 'node:os';
import { createSelector, type BudgetSpec } from '../src/inspect/browser/select.js';

const [L, H, T] = (process.argv.slice(2).length ? process.argv.slice(2) : ['16', '8', '4096']).map(Number) as [number, number, number];
let seed = 1;
const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const scores = Array.from({ length: L }, () => Array.from({ length: H }, () => Float32Array.from({ length: T }, random)));
const budgets: BudgetSpec[] = [{ kind: 'uniform' }, { kind: 'global' }, { kind: 'pyramid', beta: 20 }, { kind: 'adakv', alpha: 0.2 }];
const ratios = Array.from({ length: 21 }, (_, i) => Math.round((0.05 + 0.045 * i) * 100) / 100);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const rows = budgets.map((budget) => {
  const selector = createSelector({ budget, scores, ranges: [{ name: 'user', start: 0, end: T }] });
  const t0 = performance.now();
  selector.select(0.3);
  const first = performance.now() - t0;
  const later = ratios.map((r) => {
    const t = performance.now();
    selector.select(r);
    return performance.now() - t;
  });
  return { budget: budget.kind, first_ms: Math.round(first), later_median_ms: Math.round(median(later) * 10) / 10 };
});
process.stdout.write(`${JSON.stringify({ cpu: cpus()[0]?.model, node: process.version, shape: { layers: L, kv_heads: H, tokens: T }, rows }, null, 1)}\n`);
