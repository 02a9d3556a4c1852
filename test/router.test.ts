import assert from 'node:assert/strict';
import { test } from 'node:test';
import { choosePredictedRatio, negativeProbability, parsePredictor, PredictorError, type NegativePredictor } from '../src/engine/negative-predictor.ts';
import { keptMass, normalisedEntropy, routerFeatures, scoreDistribution, scoreEntropy, type RouterFeatures } from '../src/engine/router-features.ts';
import { bestCut, confusion } from '../src/eval/classification.ts';
import { groupFolds } from '../src/eval/grouped-folds.ts';
import { fitLogistic, logisticProbability, sigmoid } from '../src/eval/logistic-fit.ts';
import type { SampleScore } from '../src/eval/negatives.ts';
import { contextLabels, contextOfKey } from '../src/eval/router-labels.ts';
import { crossValidate, ruleChoices, type HeldOutRow, type RouterRow } from '../src/eval/router-study.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';
import type { Scores } from '../src/press/types.ts';

const close = (a: number, b: number, tol = 1e-9) => assert.ok(Math.abs(a - b) <= tol, `${a} vs ${b}`);
const heads = (...rows: number[][]) => [rows.map((r) => Float32Array.from(r))] as Scores;

test('score distribution, entropy and kept mass on hand-worked heads', () => {
  // Uniform over 4 rows: entropy 1; one row holds everything: 0.
  close(normalisedEntropy(scoreDistribution(Float32Array.from([1, 1, 1, 1]))!), 1);
  close(normalisedEntropy(scoreDistribution(Float32Array.from([3, 0, 0, 0]))!), 0);
  // [2, 1, 1, 0] -> p = [1/2, 1/4, 1/4, 0]: H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2, over ln 4 = 0.75.
  const p = scoreDistribution(Float32Array.from([2, 1, 1, 0]))!;
  assert.deepEqual([...p], [0.5, 0.25, 0.25, 0]);
  close(normalisedEntropy(p), 0.75);
  // A negative score shifts the head by its minimum; a non-finite row (a sink kept by rule) gets nothing.
  const shifted = scoreDistribution(Float32Array.from([-1, 0, 1, Infinity]))!;
  [0, 1 / 3, 2 / 3, 0].forEach((x, j) => close(shifted[j]!, x));
  // All-equal zero weights: uniform over the finite rows; no finite row: none.
  assert.deepEqual([...scoreDistribution(Float32Array.from([0, 0, -Infinity, 0]))!], [1 / 3, 1 / 3, 0, 1 / 3]);
  assert.equal(scoreDistribution(Float32Array.from([Infinity, Infinity])), null);
  // Mean over heads: (0.75 + 1) / 2; kept mass of rows {0, 1} and {3}: (0.75 + 0.25) / 2.
  const scores = heads([2, 1, 1, 0], [5, 5, 5, 5]);
  close(scoreEntropy(scores), 0.875);
  close(keptMass(scores, [[Int32Array.from([0, 1]), Int32Array.from([3])]]), 0.5);
  // The keep set of everything holds all the mass.
  close(keptMass(scores, [[Int32Array.from([0, 1, 2, 3]), Int32Array.from([0, 1, 2, 3])]]), 1);
});

test('routerFeatures: relative accuracy, drop, log length; a full cache that reconstructs nothing counts as relative 1', () => {
  const f = routerFeatures({ ratio: 0.3, accuracy: 0.3, fullAccuracy: 0.6, contextTokens: 100, entropy: 0.8, keptMass: 0.7 });
  assert.deepEqual(f, { ratio: 0.3, reconstruction: 0.3, reconstruction_relative: 0.5, reconstruction_drop: 0.3, log_context_tokens: Math.log(100), score_entropy: 0.8, kept_mass: 0.7 });
  assert.equal(routerFeatures({ ratio: 0.1, accuracy: 0, fullAccuracy: 0, contextTokens: 1, entropy: 0, keptMass: 0 }).reconstruction_relative, 1);
});

test('fitLogistic separates a separable toy problem and finds the stationary point of a noisy one', () => {
  const rand = seededRandom(3);
  // Separable: label = x0 > 0; x1 is noise.
  const x = Array.from({ length: 200 }, () => [rand() * 2 - 1, rand() * 2 - 1]).filter(([a]) => Math.abs(a!) > 0.05);
  const y = x.map(([a]) => (a! > 0 ? 1 : 0));
  const m = fitLogistic(x, y);
  const pred = x.map((r) => logisticProbability(m, r) >= 0.5 ? 1 : 0);
  assert.deepEqual(pred, y);
  assert.ok(m.weights[0]! > 5 * Math.abs(m.weights[1]!), `weights ${m.weights}`);
  // Overlapping classes: at the optimum the gradient of mean log-loss + l2/2 |w|^2 vanishes (computed here by brute force).
  const xn = Array.from({ length: 300 }, () => [rand() * 4 - 2, rand()]);
  const yn = xn.map(([a]) => (rand() < sigmoid(1.5 * a! - 0.5) ? 1 : 0));
  const l2 = 1e-2;
  const fit = fitLogistic(xn, yn, { l2, iterations: 6000 });
  const z = xn.map((r) => r.map((v, j) => (v - fit.mean[j]!) / fit.scale[j]!));
  const err = z.map((r, i) => sigmoid(fit.bias + r[0]! * fit.weights[0]! + r[1]! * fit.weights[1]!) - yn[i]!);
  const n = xn.length;
  close(err.reduce((a, e) => a + e, 0) / n, 0, 1e-6);
  for (let j = 0; j < 2; j++) close(err.reduce((a, e, i) => a + e * z[i]![j]!, 0) / n + l2 * fit.weights[j]!, 0, 1e-6);
  assert.throws(() => fitLogistic([[1]], [2]), /0 or 1/);
  assert.throws(() => fitLogistic([], []), /no samples/);
});

test('confusion and bestCut on a hand-counted fixture', () => {
  const truth = [true, true, true, false, false, false, false, false];
  const pred = [true, true, false, true, false, false, false, false];
  // tp 2, fp 1, fn 1, tn 4: precision 2/3, recall 2/3.
  const c = confusion(pred, truth);
  assert.deepEqual([c.tp, c.fp, c.fn, c.tn], [2, 1, 1, 4]);
  close(c.precision!, 2 / 3);
  close(c.recall!, 2 / 3);
  close(c.f1, 2 / 3);
  // Nothing predicted: precision undefined, F1 0; nothing positive: recall undefined.
  const none = confusion(pred.map(() => false), truth);
  assert.equal(none.precision, null);
  assert.equal(none.f1, 0);
  assert.equal(confusion(pred, truth.map(() => false)).recall, null);
  // Scores 0.9 0.8 0.3 | 0.7 0.2 ...: cut 0.8 gives tp 2 fp 0 fn 1 (F1 0.8); cut 0.3 gives tp 3 fp 1 fn 0
  // (P 3/4, R 1, F1 6/7), the best; cut 0.2 adds a second false positive (F1 0.75).
  const score = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.1, 0.05];
  assert.deepEqual(bestCut(score, truth), { cut: 0.3, f1: 6 / 7 });
  // Below: positive when score < cut; on the negated scores the same split is cut -0.2.
  assert.deepEqual(bestCut(score.map((s) => -s), truth, true), { cut: -0.2, f1: 6 / 7 });
  assert.deepEqual(bestCut(score, truth.map(() => false)), { cut: Infinity, f1: 0 });
});

test('groupFolds: every group in one fold, folds balanced, seeded', () => {
  const groups = Array.from({ length: 10 }, (_, i) => `g${i}`);
  const a = groupFolds([...groups, ...groups], 3, 7);
  assert.equal(a.size, 10);
  const sizes = [0, 1, 2].map((k) => [...a.values()].filter((f) => f === k).length).sort();
  assert.deepEqual(sizes, [3, 3, 4]);
  assert.deepEqual([...groupFolds(groups, 3, 7)], [...a]);
  const other = groupFolds(groups, 3, 8);
  assert.notDeepEqual(groups.map((g) => other.get(g)), groups.map((g) => a.get(g)));
  assert.throws(() => groupFolds(['a', 'b'], 3, 1), /3 folds need at least 3 contexts/);
  assert.throws(() => groupFolds(groups, 1, 1), /folds must be an integer >= 2/);
});

function sample(id: string, qi: number, variant: string, method: string, ratio: number, score: number): SampleScore {
  return { key: JSON.stringify([id, qi, variant, '']), id, question_index: qi, method, ratio, score };
}

test('contextLabels: a context of many questions is negative by the any / most rule', () => {
  const scores = [
    // c1: 3 questions, 2 right on the full cache; at 0.5 one of them is lost.
    ...[100, 100, 0].map((s, q) => sample('c1', q, '', 'm', 1, s)),
    ...[0, 100, 0].map((s, q) => sample('c1', q, '', 'm', 0.5, s)),
    // c2: 2 questions; at 0.5 both are lost; a protected setting is ignored.
    ...[100, 100].map((s, q) => sample('c2', q, '', 'm', 1, s)),
    ...[0, 0].map((s, q) => sample('c2', q, '', 'm', 0.5, s)),
    { ...sample('c2', 0, '', 'm+whitelist:defense', 0.5, 0) },
  ];
  const any = contextLabels(scores, 10, 'any');
  assert.deepEqual(any.map((l) => [contextOfKey(l.context).id, l.method, l.ratio, l.samples, l.negatives, l.negative]), [
    ['c1', 'm', 0.5, 3, 1, true],
    ['c2', 'm', 0.5, 2, 2, true],
  ]);
  assert.deepEqual(contextLabels(scores, 10, 'most').map((l) => l.negative), [false, true]);
  assert.throws(() => contextLabels(scores.filter((s) => s.ratio === 1), 10, 'any'), /no unprotected setting below ratio 1/);
});

function row(id: string, variant: string, method: string, ratio: number, negative: boolean, rel: number): RouterRow {
  const features: RouterFeatures = { ratio, reconstruction: rel / 2, reconstruction_relative: rel, reconstruction_drop: 0.5 - rel / 2, log_context_tokens: 5, score_entropy: 0.5, kept_mass: ratio };
  return { context: JSON.stringify([id, variant]), method, ratio, samples: 1, negatives: negative ? 1 : 0, negative, features };
}

test('crossValidate: held-out rows never share a data row with their training folds; every row held out once', () => {
  const rows: RouterRow[] = [];
  for (let i = 0; i < 12; i++)
    for (const variant of ['original', 'with-defense'])
      for (const ratio of [0.1, 0.3, 0.5]) rows.push(row(`r${i}`, variant, 'm', ratio, ratio === 0.1 && i % 2 === 0, 1 - ratio / 2));
  const cv = crossValidate(rows, { features: ['ratio', 'reconstruction_relative'], folds: 4, seed: 5 });
  assert.equal(cv.heldOut.length, rows.length);
  assert.equal(new Set(cv.heldOut.map((r) => JSON.stringify([r.context, r.ratio]))).size, rows.length);
  const fold = groupFolds(rows.map((r) => contextOfKey(r.context).id), 4, 5);
  for (const r of cv.heldOut) assert.equal(r.fold, fold.get(contextOfKey(r.context).id));
  // Both variants of a row land in the same fold; each fold's contexts are disjoint from the others'.
  const byFold = [0, 1, 2, 3].map((k) => new Set(cv.heldOut.filter((r) => r.fold === k).map((r) => contextOfKey(r.context).id)));
  for (let a = 0; a < 4; a++) for (let b = a + 1; b < 4; b++) assert.equal([...byFold[a]!].filter((x) => byFold[b]!.has(x)).length, 0);
  assert.equal(cv.folds.reduce((s, f) => s + f.test_contexts, 0), 24);
  // The fold counts agree with the confusion totals.
  const c = cv.predictor;
  assert.equal(c.tp + c.fp + c.fn + c.tn, rows.length);
  assert.equal(c.tp + c.fn, rows.filter((r) => r.negative).length);
});

test('ruleChoices: the smallest ratio each rule calls safe, 1 when none is, and the negatives it picks', () => {
  const mk = (context: string, ratio: number, negative: boolean, predictor: boolean, threshold: boolean): HeldOutRow => ({
    ...row(context, '', 'm', ratio, negative, 1),
    fold: 0,
    probability: 0,
    predictor,
    threshold,
    learnedThreshold: false,
  });
  const rows = [
    // a: 0.1 negative; predictor flags it (chooses 0.3), threshold does not (chooses 0.1: a negative).
    mk('a', 0.1, true, true, false),
    mk('a', 0.3, false, false, false),
    // b: every ratio flagged by the threshold: it falls back to 1.
    mk('b', 0.1, false, false, true),
    mk('b', 0.3, false, false, true),
  ];
  const c = ruleChoices(rows);
  assert.deepEqual(c.predictor, { n: 2, mean_ratio: 0.2, negatives: 0 });
  assert.deepEqual(c.threshold, { n: 2, mean_ratio: 0.55, negatives: 1 });
  assert.deepEqual(c.oracle, { n: 2, mean_ratio: 0.2, negatives: 0 });
});

const ratioOnly: NegativePredictor = { kind: 'kvlab-negative-predictor', version: 1, features: ['ratio'], mean: [0], scale: [1], weights: [-10], bias: 4, maxProbability: 0.5 };

test('predictor: probability, choice of the smallest safe ratio, and named errors for a bad file', () => {
  const f = (ratio: number) => routerFeatures({ ratio, accuracy: 0.5, fullAccuracy: 0.5, contextTokens: 10, entropy: 0.5, keptMass: 0.5 });
  // p = sigmoid(4 - 10 r): 0.1 -> sigmoid(3), 0.3 -> sigmoid(1), 0.5 -> sigmoid(-1).
  close(negativeProbability(ratioOnly, f(0.1)), sigmoid(3));
  close(negativeProbability(ratioOnly, f(0.5)), sigmoid(-1));
  const cands = [0.1, 0.3, 0.5, 0.7, 1].map((r) => ({ ratio: r, negativeProbability: negativeProbability(ratioOnly, f(r)) }));
  assert.equal(choosePredictedRatio(cands, 0.5), 0.5);
  assert.equal(choosePredictedRatio(cands, 0.8), 0.3);
  assert.equal(choosePredictedRatio(cands.map((c) => ({ ...c, negativeProbability: 1 })), 0.5), 1);
  assert.deepEqual(parsePredictor(JSON.parse(JSON.stringify(ratioOnly)), 'p.json'), ratioOnly);
  for (const [bad, message] of [
    [{ ...ratioOnly, kind: 'x' }, /p.json: kind must be "kvlab-negative-predictor"/],
    [{ ...ratioOnly, features: ['colour'] }, /unknown feature "colour"/],
    [{ ...ratioOnly, scale: [0] }, /scale must be an array of 1 finite numbers above 0/],
    [{ ...ratioOnly, weights: [1, 2] }, /weights must be an array of 1/],
    [{ ...ratioOnly, maxProbability: 0 }, /maxProbability must be a number in \(0, 1\]/],
  ] as const) {
    assert.throws(() => parsePredictor(bad, 'p.json'), (e: unknown) => e instanceof PredictorError && e.code === 'predictor' && message.test(e.message));
  }
});
