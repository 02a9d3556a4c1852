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

/** A compression method: how positions are scored and how the budget is shared out. */
export interface Press {
  readonly name: string;
  readonly scorer: Scorer;
  readonly budget: BudgetPolicy;
}

const methods: Record<string, { describe: string; make: () => Press }> = {
  kvzip: { describe: 'KVzip, context reconstruction, one global top-k (pair)', make: () => press('kvzip', kvzipScorer(), globalBudget) },
  'kvzip-uniform': { describe: 'KVzip scores, top-k per (layer, head)', make: () => press('kvzip-uniform', kvzipScorer(), uniformBudget) },
  'kvzip+': { describe: 'KVzip+, attention weighted by ||W_O v|| / ||h|| before the max, global top-k', make: () => press('kvzip+', kvzipScorer({ normalized: true }, 'kvzip+'), globalBudget) },
  'kvzip-head': { describe: 'KVzip head-level: whole heads keep or drop the context (scores computed once per model)', make: () => press('kvzip-head', kvzipHeadScorer(), wholeHeadBudget) },
  streamingllm: { describe: 'StreamingLLM: sinks + most recent tokens', make: () => press('streamingllm', streamingLlmScorer(), uniformBudget) },
  snapkv: { describe: 'SnapKV (window 64, kernel 5)', make: () => press('snapkv', snapKvScorer(), uniformBudget) },
  pyramidkv: { describe: 'PyramidKV: SnapKV scores, linearly decreasing layer budgets (beta 20)', make: () => press('pyramidkv', snapKvScorer({}, 'pyramidkv'), pyramidBudget(20)) },
  h2o: { describe: 'H2O / observed attention, normalized by the number of queries', make: () => press('h2o', observedAttentionScorer(), uniformBudget) },
  tova: { describe: 'TOVA: last query, mean over all heads', make: () => press('tova', tovaScorer(), uniformBudget) },
  knorm: { describe: 'K-norm: keep low-norm keys', make: () => press('knorm', keyNormScorer(), uniformBudget) },
  keydiff: { describe: 'KeyDiff: keep keys least similar to the mean key', make: () => press('keydiff', keyDiffScorer(), uniformBudget) },
  'expected-attention': { describe: 'ExpectedAttention (512 future positions, 4 sinks)', make: () => press('expected-attention', expectedAttentionScorer(), uniformBudget) },
  random: { describe: 'Random scores (seed 0)', make: () => press('random', randomScorer(0), uniformBudget) },
};

function press(name: string, scorer: Scorer, budget: BudgetPolicy): Press {
  return { name, scorer, budget };
}

export function methodNames(): string[] {
  return Object.keys(methods);
}

export function describeMethods(): { name: string; describe: string }[] {
  return Object.entries(methods).map(([name, m]) => ({ name, describe: m.describe }));
}

/** Resolves a method name; `adakv:<method>` wraps any method's scorer in the AdaKV budget. */
export function getPress(name: string): Press {
  const ada = /^adakv:(.+)$/.exec(name);
  if (ada) {
    const inner = getPress(ada[1]!);
    return press(name, inner.scorer, adaKvBudget(0.2));
  }
  const m = methods[name];
  if (!m) throw new Error(`unknown method "${name}"; known: ${[...methodNames(), 'adakv:<method>'].join(', ')}`);
  return m.make();
}
