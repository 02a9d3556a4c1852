import { AUTO_RATIO_THRESHOLD } from '../engine/reconstruction-check.ts';
import { choosePredictedRatio, PREDICTOR_KIND, type NegativePredictor } from '../engine/negative-predictor.ts';
import type { FeatureName, RouterFeatures } from '../engine/router-features.ts';
import { bestCut, confusion, type Confusion } from './classification.ts';
import { groupFolds } from './grouped-folds.ts';
import { fitLogistic, logisticProbability, type LogisticFitOptions } from './logistic-fit.ts';
import { contextOfKey, type ContextLabel } from './router-labels.ts';

/** One labelled (context, method, ratio) with its query-agnostic features. */
export interface RouterRow extends ContextLabel {
  features: RouterFeatures;
}

export interface RouterStudyOptions {
  features: readonly FeatureName[];
  folds: number;
  seed: number;
  fit?: LogisticFitOptions;
  /** The plain rule's bar: negative when reconstruction relative to the full cache is below it. */
  reconstructionThreshold?: number;
}

/** A held-out row with what each rule said of it. */
export interface HeldOutRow extends RouterRow {
  fold: number;
  probability: number;
  /** Predictor: probability >= the bar learned on the training folds. */
  predictor: boolean;
  /** Plain rule: reconstruction_relative < the auto threshold. */
  threshold: boolean;
  /** The same rule with its bar learned on the training folds (F1). */
  learnedThreshold: boolean;
}

export interface RuleChoice {
  /** (context, method) pairs the rule chose a ratio for. */
  n: number;
  mean_ratio: number;
  /** Chosen settings that are negative samples (ratio 1 never is). */
  negatives: number;
}

export interface CrossValidation {
  folds: { fold: number; train_contexts: number; test_contexts: number; train_negatives: number; test_negatives: number; probability_bar: number; learned_threshold: number }[];
  heldOut: HeldOutRow[];
  predictor: Confusion;
  threshold: Confusion;
  learnedThreshold: Confusion;
  /** ratio auto on the held-out contexts: the smallest ratio each rule calls safe, and the smallest not negative. */
  choice: { predictor: RuleChoice; threshold: RuleChoice; oracle: RuleChoice };
}

const groupOf = (r: RouterRow) => contextOfKey(r.context).id;
const vector = (r: RouterRow, names: readonly FeatureName[]) => names.map((n) => r.features[n]);

/** Fits on rows and learns the probability bar (best F1 on those rows; 1 when they hold no negative). */
export function trainPredictor(rows: readonly RouterRow[], opts: Pick<RouterStudyOptions, 'features' | 'fit'>, trainedOn: Record<string, unknown> = {}): NegativePredictor {
  const names = [...opts.features];
  const model = fitLogistic(rows.map((r) => vector(r, names)), rows.map((r) => (r.negative ? 1 : 0)), opts.fit);
  const probs = rows.map((r) => logisticProbability(model, vector(r, names)));
  const { cut } = bestCut(probs, rows.map((r) => r.negative));
  return {
    kind: PREDICTOR_KIND,
    version: 1,
    features: names,
    mean: model.mean,
    scale: model.scale,
    weights: model.weights,
    bias: model.bias,
    maxProbability: Number.isFinite(cut) && cut > 0 ? Math.min(1, cut) : 1,
    trainedOn,
  };
}

function probabilityOf(p: NegativePredictor, r: RouterRow): number {
  return logisticProbability(p, vector(r, p.features));
}

/** k-fold cross-validation split by context (data row): every rule is scored on contexts it never saw. */
export function crossValidate(rows: readonly RouterRow[], opts: RouterStudyOptions): CrossValidation {
  const bar = opts.reconstructionThreshold ?? AUTO_RATIO_THRESHOLD;
  const fold = groupFolds(rows.map(groupOf), opts.folds, opts.seed);
  const heldOut: HeldOutRow[] = [];
  const folds: CrossValidation['folds'] = [];
  for (let k = 0; k < opts.folds; k++) {
    const train = rows.filter((r) => fold.get(groupOf(r)) !== k);
    const test = rows.filter((r) => fold.get(groupOf(r)) === k);
    const predictor = trainPredictor(train, opts);
    const learned = bestCut(train.map((r) => r.features.reconstruction_relative), train.map((r) => r.negative), true).cut;
    for (const r of test) {
      const probability = probabilityOf(predictor, r);
      heldOut.push({
        ...r,
        fold: k,
        probability,
        predictor: probability >= predictor.maxProbability,
        threshold: r.features.reconstruction_relative < bar - 1e-12,
        learnedThreshold: r.features.reconstruction_relative < learned,
      });
    }
    const contexts = (xs: RouterRow[]) => new Set(xs.map((r) => r.context)).size;
    folds.push({ fold: k, train_contexts: contexts(train), test_contexts: contexts(test), train_negatives: train.filter((r) => r.negative).length, test_negatives: test.filter((r) => r.negative).length, probability_bar: predictor.maxProbability, learned_threshold: learned });
  }
  const truth = heldOut.map((r) => r.negative);
  return {
    folds,
    heldOut,
    predictor: confusion(heldOut.map((r) => r.predictor), truth),
    threshold: confusion(heldOut.map((r) => r.threshold), truth),
    learnedThreshold: confusion(heldOut.map((r) => r.learnedThreshold), truth),
    choice: ruleChoices(heldOut),
  };
}

/** Per (context, method): the ratio each rule would pick among the rows' ratios (1 when none is safe). */
export function ruleChoices(rows: readonly HeldOutRow[]): CrossValidation['choice'] {
  const pairs = new Map<string, HeldOutRow[]>();
  for (const r of rows) {
    const k = JSON.stringify([r.context, r.method]);
    pairs.set(k, [...(pairs.get(k) ?? []), r]);
  }
  const tally = (pick: (xs: HeldOutRow[]) => number): RuleChoice => {
    let sum = 0;
    let negatives = 0;
    for (const xs of pairs.values()) {
      const ratio = pick(xs);
      sum += ratio;
      if (xs.find((x) => x.ratio === ratio)?.negative) negatives++;
    }
    return { n: pairs.size, mean_ratio: pairs.size ? sum / pairs.size : 1, negatives };
  };
  const smallestSafe = (xs: HeldOutRow[], safe: (x: HeldOutRow) => boolean) => choosePredictedRatio(xs.map((x) => ({ ratio: x.ratio, negativeProbability: safe(x) ? 0 : 1 })), 0.5);
  return {
    predictor: tally((xs) => smallestSafe(xs, (x) => !x.predictor)),
    threshold: tally((xs) => smallestSafe(xs, (x) => !x.threshold)),
    oracle: tally((xs) => smallestSafe(xs, (x) => !x.negative)),
  };
}

/** Whether the predictor's held-out F1 is above the plain reconstruction threshold's (the switch criterion). */
export function predictorBeatsThreshold(cv: CrossValidation): boolean {
  return cv.predictor.f1 > cv.threshold.f1 + 1e-12;
}
