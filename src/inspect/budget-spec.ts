import type { BudgetPolicy } from '../press/types.ts';
import type { BudgetSpec } from './browser/select.js';

/**
 * The engine's budget policy as the page's selection knows it. Policies are told apart by their names
 * (uniform, global, heads, pyramid(beta=B), adakv(alpha=A)); a policy the page cannot reproduce is refused
 * here rather than shown with a different selection.
 */
export function budgetSpec(policy: BudgetPolicy): BudgetSpec {
  const name = policy.name;
  if (name === 'uniform' || name === 'global' || name === 'heads') return { kind: name };
  const pyramid = /^pyramid\(beta=([0-9.eE+-]+)\)$/.exec(name);
  if (pyramid) return { kind: 'pyramid', beta: Number(pyramid[1]) };
  const ada = /^adakv\(alpha=([0-9.eE+-]+)\)$/.exec(name);
  if (ada) return { kind: 'adakv', alpha: Number(ada[1]) };
  throw new Error(`the inspector has no browser-side selection for budget policy "${name}"`);
}
