import { keptCount } from './budgets.ts';
import { subsetScores } from './staged-scores.ts';
import { topKIndices } from './topk.ts';
import type { TokenSpan } from '../model/segments.ts';
import type { BudgetPolicy, Scores } from './types.ts';

/** A named range of the compressible span, span-relative, half-open. */
export type NamedRange = TokenSpan;

export interface Protection {
  /** Span names whose tokens are always kept, inside the same total budget. */
  whitelist?: string[];
  /**
   * Fair eviction: each span's budget moves from the base policy's own allocation (lambda 0) to a share
   * proportional to its length (lambda 1); within a span, tokens are ranked by span-local scores.
   */
  fair?: { lambda: number };
}

export function describeProtection(p: Protection | undefined): string {
  if (!p || (!p.whitelist?.length && !p.fair)) return 'none';
  const parts: string[] = [];
  if (p.whitelist?.length) parts.push(`whitelist:${p.whitelist.join(',')}`);
  if (p.fair) parts.push(p.fair.lambda === 1 ? 'fair' : `fair:${p.fair.lambda}`);
  return parts.join('+');
}

/** Parses `whitelist:NAME[,NAME]`, `fair[:lambda]`, `both` (whitelist:defense + fair), `none`. */
export function parseProtection(text: string, defaultWhitelist = ['defense']): Protection | undefined {
  const t = text.trim();
  if (t === '' || t === 'none') return undefined;
  if (t === 'both') return { whitelist: defaultWhitelist, fair: { lambda: 1 } };
  const out: Protection = {};
  for (const part of t.split('+')) {
    const [kind, arg] = splitOnce(part, ':');
    if (kind === 'whitelist') {
      const names = arg === undefined ? defaultWhitelist : arg.split(',').map((s) => s.trim());
      if (names.some((n) => n === '')) throw new RangeError(`whitelist needs span names (whitelist:NAME[,NAME]), got "${part}"`);
      out.whitelist = names;
    } else if (kind === 'fair') {
      const lambda = arg === undefined ? 1 : arg.trim() === '' ? NaN : Number(arg);
      if (!(lambda >= 0 && lambda <= 1)) throw new RangeError(`fair lambda must be a number in [0, 1] (fair or fair:LAMBDA), got "${part}"`);
      out.fair = { lambda };
    } else throw new Error(`unknown protection "${part}"; use whitelist:NAME[,NAME], fair[:lambda], both or none`);
  }
  return out;
}

function splitOnce(s: string, sep: string): [string, string | undefined] {
  const i = s.indexOf(sep);
  return i < 0 ? [s, undefined] : [s.slice(0, i), s.slice(i + 1)];
}

/**
 * Keep sets under protection, for any scorer and budget policy. `scores` are the scorer's ordinary
 * scores over the whole span; `localScores` (needed for fair) rank each range with span-local scoring.
 * Ranges must tile the span. The total kept per (layer, head) equals the base policy's.
 */
export function protectedSelect(
  policy: BudgetPolicy,
  scores: Scores,
  ratio: number,
  ranges: NamedRange[],
  protection: Protection | undefined,
  localScores?: Scores,
): Int32Array[][] {
  const T = scores[0]![0]!.length;
  const whitelisted = new Uint8Array(T);
  for (const r of ranges) if (protection?.whitelist?.includes(r.name)) whitelisted.fill(1, r.start, r.end);
  const base = protection?.whitelist?.length ? whitelistSelect(policy, scores, ratio, whitelisted) : policy.select(scores, ratio);
  if (!protection?.fair) return base;
  if (!localScores) throw new Error('fair eviction needs span-local scores');
  const lambda = protection.fair.lambda;
  const open = ranges.filter((r) => !protection.whitelist?.includes(r.name) && r.end > r.start);
  return base.map((layer, l) =>
    layer.map((keep, h) => {
      const inRange = (r: NamedRange) => keep.reduce((n, j) => n + (j >= r.start && j < r.end ? 1 : 0), 0);
      const fixed = [...keep].filter((j) => whitelisted[j]);
      const budget = keep.length - fixed.length;
      const lengths = open.map((r) => r.end - r.start);
      const total = lengths.reduce((a, b) => a + b, 0);
      const targets = open.map((r, i) => (1 - lambda) * inRange(r) + (lambda * budget * lengths[i]!) / Math.max(total, 1));
      const quotas = apportion(targets, budget, lengths);
      const chosen = [...fixed];
      open.forEach((r, i) => {
        const local = localScores[l]![h]!.subarray(r.start, r.end);
        for (const j of topKIndices(local, quotas[i]!)) chosen.push(r.start + j);
      });
      return Int32Array.from(chosen).sort();
    }),
  );
}

/** Whitelisted rows always kept; the rest of floor(T * ratio) goes to the policy over the other rows. */
function whitelistSelect(policy: BudgetPolicy, scores: Scores, ratio: number, whitelisted: Uint8Array): Int32Array[][] {
  const T = whitelisted.length;
  const others = [...whitelisted.keys()].filter((j) => !whitelisted[j]);
  const f = T - others.length;
  const budget = Math.max(0, keptCount(T, ratio) - f);
  const reducedRatio = others.length ? Math.min(1, budget / others.length) : 0;
  const reduced = subsetScores(scores, others);
  const picked = policy.select(reduced, reducedRatio);
  const fixed = [...whitelisted.keys()].filter((j) => whitelisted[j]);
  return picked.map((layer) => layer.map((sel) => Int32Array.from([...fixed, ...Array.from(sel, (i) => others[i]!)]).sort()));
}

/**
 * Integer quotas summing to `total` close to the real-valued targets (largest remainder), each capped at
 * its range length; what a capped range cannot take goes to the others.
 */
export function apportion(targets: number[], total: number, caps: number[]): number[] {
  const q = targets.map((t, i) => Math.min(caps[i]!, Math.floor(t)));
  let left = total - q.reduce((a, b) => a + b, 0);
  const order = targets.map((_, i) => i).sort((a, b) => targets[b]! - Math.floor(targets[b]!) - (targets[a]! - Math.floor(targets[a]!)) || a - b);
  while (left > 0) {
    let moved = false;
    for (const i of order) {
      if (left === 0) break;
      if (q[i]! < caps[i]!) {
        q[i]!++;
        left--;
        moved = true;
      }
    }
    if (!moved) break;
  }
  while (left < 0) {
    const i = q.indexOf(Math.max(...q));
    q[i]!--;
    left++;
  }
  return q;
}
