import { adaKvBudget, globalBudget, headsWithWindowBudget, pyramidBudget, uniformBudget, wholeHeadBudget } from '../press/budgets.ts';
import type { BudgetPolicy } from '../press/types.ts';
import type { BudgetSpec } from './browser/select.js';

/**
 * The engine's budget policy as the page's selection knows it. A policy is recognised by its name: the
 * fixed policies by theirs, the parameterised ones (PyramidKV's beta, AdaKV's alpha) by rebuilding the policy
 * from each number in the name and finding the same name again. A policy the page cannot reproduce is refused
 * here rather than shown with a different selection.
 */
export function budgetSpec(policy: BudgetPolicy): BudgetSpec {
  const name = policy.name;
  if (name === uniformBudget.name) return { kind: 'uniform' };
  if (name === globalBudget.name) return { kind: 'global' };
  if (name === wholeHeadBudget.name) return { kind: 'heads' };
  const heads = /^heads\(sink=(\d+), recent=(\d+)\)$/.exec(name);
  if (heads && headsWithWindowBudget(Number(heads[1]), Number(heads[2])).name === name) return { kind: 'heads', sink: Number(heads[1]), recent: Number(heads[2]) };
  for (const n of (name.match(/\d+(?:\.\d+)?(?:e[+-]?\d+)?/gi) ?? []).map(Number)) {
    if (pyramidBudget(n).name === name) return { kind: 'pyramid', beta: n };
    if (adaKvBudget(n).name === name) return { kind: 'adakv', alpha: n };
  }
  throw new Error(`the inspector has no browser-side selection for budget policy "${name}"`);
}
