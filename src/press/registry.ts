import { adaKvBudget, globalBudget, pyramidBudget, uniformBudget, wholeHeadBudget } from './budgets.ts';
import { expectedAttentionScorer } from './methods/expected-attention.ts';
import { keyDiffScorer } from './methods/keydiff.ts';
import { keyNormScorer } from './methods/key-norm.ts';
import { kvzipHeadScorer } from './methods/kvzip-head.ts';
import { kvzipScorer } from './methods/kvzip.ts';
import { observedAttentionScorer } from './methods/observed-attention.ts';
import { randomScorer } from './methods/random.ts';
import { snapKvScorer } from './methods/snapkv.ts';
import { streamingLlmScorer } from './methods/streaming-llm.ts';
import { tovaScorer } from './methods/tova.ts';
import type { BudgetPolicy, Scorer } from './types.ts';
import { MethodNameError } from '../tensor/kvlab-error.ts';

/** A compression method: how positions are scored and how the budget is shared out. */
export interface Press {
  readonly name: string;
  /** One line: what the scores favour, the scorer's options and the budget policy. */
  readonly describe: string;
  readonly scorer: Scorer;
  readonly budget: BudgetPolicy;
}

/** Every method by name. A new method is one file in methods/ and one line here. */
const methods: Record<string, [Scorer, BudgetPolicy]> = {
  kvzip: [kvzipScorer(), globalBudget],
  'kvzip-uniform': [kvzipScorer(), uniformBudget],
  'kvzip+': [kvzipScorer({ normalized: true }), globalBudget],
  'kvzip-head': [kvzipHeadScorer(), wholeHeadBudget],
  streamingllm: [streamingLlmScorer(), uniformBudget],
  snapkv: [snapKvScorer(), uniformBudget],
  pyramidkv: [snapKvScorer(), pyramidBudget(20)],
  h2o: [observedAttentionScorer(), uniformBudget],
  tova: [tovaScorer(), uniformBudget],
  knorm: [keyNormScorer(), uniformBudget],
  keydiff: [keyDiffScorer(), uniformBudget],
  'expected-attention': [expectedAttentionScorer(), uniformBudget],
  random: [randomScorer(0), uniformBudget],
};

const ADAKV_ALPHA = 0.2;

export function press(name: string, scorer: Scorer, budget: BudgetPolicy): Press {
  return { name, scorer, budget, describe: describePress(scorer, budget) };
}

/** "summary (option value, ...); budget NAME", from the scorer and the policy themselves. */
export function describePress(scorer: Scorer, budget: BudgetPolicy): string {
  const options = Object.entries(scorer.options ?? {}).map(([k, v]) => `${k} ${typeof v === 'string' ? JSON.stringify(v) : v}`);
  return `${scorer.summary}${options.length ? ` (${options.join(', ')})` : ''}; budget ${budget.name}`;
}

export function methodNames(): string[] {
  return Object.keys(methods);
}

/** Every method's describe line, and the AdaKV wrapper's. */
export function describeMethods(): { name: string; describe: string }[] {
  const wrapper = { name: 'adakv:<method>', describe: `any method's scores; budget ${adaKvBudget(ADAKV_ALPHA).name}` };
  return [...methodNames().map((name) => ({ name, describe: getPress(name).describe })), wrapper];
}

/** Resolves a method name; `adakv:<method>` wraps any method's scorer in the AdaKV budget. */
export function getPress(name: string): Press {
  const ada = /^adakv:(.+)$/.exec(name);
  if (ada) return press(name, getPress(ada[1]!).scorer, adaKvBudget(ADAKV_ALPHA));
  const m = methods[name];
  if (!m) throw new MethodNameError(`unknown method "${name}"; known: ${[...methodNames(), 'adakv:<method>'].join(', ')}`);
  return press(name, ...m);
}

/**
 * Adds a method under a new name (from user code: a scorer and a budget policy, e.g. uniformBudget), to be
 * used by name everywhere a built-in one is. Names are lower-case words joined by "-", "_", "." or "+"; a
 * taken name or the `adakv:` prefix is refused.
 */
export function registerMethod(name: string, scorer: Scorer, budget: BudgetPolicy): void {
  if (!/^[a-z0-9][a-z0-9._+-]*$/.test(name)) throw new MethodNameError(`method name "${name}" must be lower-case letters, digits, ".", "_", "+" or "-"`);
  if (name in methods) throw new MethodNameError(`method "${name}" is already registered`);
  if (typeof scorer?.score !== 'function' || typeof scorer.summary !== 'string') throw new TypeError(`method "${name}": the scorer needs a summary string and a score(ctx) function`);
  if (typeof budget?.select !== 'function' || typeof budget.expectedKept !== 'function') throw new TypeError(`method "${name}": the budget needs select() and expectedKept()`);
  methods[name] = [scorer, budget];
}
