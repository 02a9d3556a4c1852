import type { Confusion } from './classification.ts';
import type { CrossValidation } from './router-study.ts';
import { markdownTable } from './write-outputs.ts';

/** What `kvlab eval router` writes to router.json. */
export interface RouterSummary {
  runs: string[];
  data: string;
  model: string;
  metric: string;
  threshold_points: number;
  label_rule: string;
  methods: string[];
  contexts: number;
  settings: number;
  negatives: number;
  features: string[];
  folds: number;
  seed: number;
  reconstruction_threshold: number;
  held_out: { predictor: Confusion; threshold: Confusion; learned_threshold: Confusion };
  predictor_beats_threshold: boolean;
  auto_choice: CrossValidation['choice'];
  per_fold: CrossValidation['folds'];
  label_counts: { method: string; ratio: number; contexts: number; negative: number }[];
}

const show = (x: number | null) => (x === null ? 'undefined' : x.toFixed(3));

export function routerReport(s: RouterSummary): string {
  const rule = (name: string, c: Confusion) => ({ rule: name, tp: c.tp, fp: c.fp, fn: c.fn, tn: c.tn, precision: show(c.precision), recall: show(c.recall), f1: c.f1 });
  const choice = Object.entries(s.auto_choice).map(([name, c]) => ({ rule: name, pairs: c.n, mean_ratio_chosen: c.mean_ratio, negative_at_chosen: c.negatives }));
  return [
    '# Negative-sample router (query-agnostic)',
    '',
    `Model: ${s.model}  `,
    `Runs: ${s.runs.join(', ')} (data ${s.data}, metric ${s.metric})  `,
    `Label: a (context, method, ratio) is negative when ${s.label_rule === 'any' ? 'any' : 'more than half'} of its samples score >= ${s.threshold_points} points below the full cache.  `,
    `${s.contexts} contexts, ${s.settings} (context, method, ratio) settings, ${s.negatives} negative; methods ${s.methods.join(', ')}.  `,
    `Features: ${s.features.join(', ')}. Logistic regression, ${s.folds}-fold cross-validation split by data row (seed ${s.seed}); the probability bar is learned on the training folds (best F1).`,
    '',
    '## Labels',
    '',
    markdownTable(s.label_counts),
    '## Held-out precision and recall',
    '',
    `Rules: the predictor; the plain reconstruction threshold (negative when reconstruction relative to the full cache < ${s.reconstruction_threshold}); the same threshold learned on the training folds.`,
    '',
    markdownTable([rule('predictor', s.held_out.predictor), rule('threshold', s.held_out.threshold), rule('learned threshold', s.held_out.learned_threshold)]),
    `Predictor beats the plain threshold on held-out F1: ${s.predictor_beats_threshold ? 'yes' : 'no'}.`,
    '',
    '## ratio auto on held-out contexts',
    '',
    'Per (context, method), the smallest ratio of the grid each rule calls safe (1 when none is), and how many of those choices are negative samples; oracle = the smallest ratio that is not negative.',
    '',
    markdownTable(choice),
  ].join('\n');
}
