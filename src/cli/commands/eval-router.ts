import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { FEATURE_NAMES, type FeatureName } from '../../engine/router-features.ts';
import { AUTO_RATIO_THRESHOLD } from '../../engine/reconstruction-check.ts';
import { toCsv } from '../../eval/csv.ts';
import { readRunScores, runsDataFile } from '../../eval/negatives.ts';
import { contextFeatures, routerContexts } from '../../eval/router-contexts.ts';
import { contextLabels, type LabelRule } from '../../eval/router-labels.ts';
import { routerReport, type RouterSummary } from '../../eval/router-report.ts';
import { crossValidate, predictorBeatsThreshold, trainPredictor, type RouterRow } from '../../eval/router-study.ts';
import { writeAtomic } from '../../eval/write-outputs.ts';
import { getPress } from '../../press/registry.ts';
import { intOption, listOption, modelOptions, numberOption, openModel, queryTemplateOption } from '../common.ts';
import { progressBar } from '../progress.ts';

function featureList(value: string): FeatureName[] {
  const names = value.split(',').map((s) => s.trim()).filter(Boolean);
  for (const n of names) if (!FEATURE_NAMES.includes(n as FeatureName)) throw new InvalidArgumentError(`--features: unknown feature "${n}" (known: ${FEATURE_NAMES.join(', ')})`);
  if (!names.length) throw new InvalidArgumentError('--features: name at least one feature');
  return names as FeatureName[];
}

/** `kvlab eval router`: a query-agnostic predictor of negative samples, cross-validated by context. */
export function registerRouter(ev: Command): void {
  modelOptions(ev.command('router').description('learn to predict, per context and method x ratio, whether compression makes a negative sample, from query-agnostic signals (reconstruction accuracy, context length, score entropy, kept score mass); k-fold by context against the plain reconstruction threshold; saves the predictor `--ratio auto --auto-predictor` reads'))
    .requiredOption('--runs <dirs...>', '--out folders of finished eval runs (qa, instructions or leakage on the dev sets) holding ratio 1: the labels')
    .option('--data <file>', 'the data file the runs evaluated (default: the one their results.json names)')
    .option('--metric <column>', 'the samples.csv column scored (QA: correct; instructions: follow_rate or exact; leakage: leak with --invert)', 'correct')
    .option('--invert', 'the metric is lower-is-better (score = 100 - value)')
    .option('--threshold <points>', 'score drop (0..100 points) below the full cache that makes a sample negative', numberOption('--threshold', 0), 10)
    .option('--label <rule>', "a context (all its questions) is negative at a setting when any of its samples is (any) or more than half are (most)", 'any')
    .option('--method <names>', 'only these methods of the runs (comma-separated)', listOption)
    .option('--limit <n>', 'only the first n contexts (sorted by id)', intOption('--limit', 1))
    .option('--features <list>', `features the predictor reads, comma-separated (default all: ${FEATURE_NAMES.join(',')})`, featureList)
    .option('--folds <k>', 'cross-validation folds, split by data row', intOption('--folds', 2), 4)
    .option('--seed <n>', 'seed of the fold split', intOption('--seed'), 1)
    .option('--auto-threshold <t>', 'the plain rule compared against: negative when reconstruction relative to the full cache is below this', numberOption('--auto-threshold', 0, 1), AUTO_RATIO_THRESHOLD)
    .option('--query-template <t>', 'QA runs: how a question became user text (as given to eval qa)', queryTemplateOption, 'Question: {query}')
    .requiredOption('-o, --out <dir>', 'write router.json, predictor.json (trained on every context), rows.csv (held-out predictions) and report.md here')
    .option('--json', 'print router.json')
    .action((o) => {
      if (!(o.threshold > 0)) throw new InvalidArgumentError('--threshold must be above 0 points');
      if (o.label !== 'any' && o.label !== 'most') throw new InvalidArgumentError(`--label must be any or most, got "${o.label}"`);
      const features: FeatureName[] = o.features ?? [...FEATURE_NAMES];
      const runs = (o.runs as string[]).map((dir) => readRunScores(dir, { metric: o.metric, invert: Boolean(o.invert) }));
      const data = runsDataFile(runs, o.data);
      let labels = contextLabels(runs.flatMap((r) => r.scores), o.threshold, o.label as LabelRule);
      if (o.method) {
        const missing = (o.method as string[]).filter((m) => !labels.some((l) => l.method === m));
        if (missing.length) throw new InvalidArgumentError(`--method: the runs have no unprotected setting of ${missing.join(', ')}`);
        labels = labels.filter((l) => (o.method as string[]).includes(l.method));
      }
      const contexts = [...new Set(labels.map((l) => l.context))].sort();
      const kept = new Set(o.limit ? contexts.slice(0, o.limit) : contexts);
      labels = labels.filter((l) => kept.has(l.context));
      const methods = [...new Set(labels.map((l) => l.method))].sort();
      methods.forEach(getPress);
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const layouts = routerContexts(lm, data, [...kept], { queryTemplate: o.queryTemplate });
      const bar = progressBar('eval router', 1);
      const rows: RouterRow[] = [];
      const units = [...kept].flatMap((c) => methods.map((m) => [c, m] as const));
      units.forEach(([context, method], i) => {
        const here = labels.filter((l) => l.context === context && l.method === method);
        if (here.length) {
          const feats = contextFeatures(lm, layouts.get(context)!, getPress(method), here.map((l) => l.ratio));
          for (const l of here) rows.push({ ...l, features: feats.find((f) => f.ratio === l.ratio)! });
        }
        bar.update(i + 1, units.length);
      });
      bar.stop();
      const cv = crossValidate(rows, { features, folds: o.folds, seed: o.seed, reconstructionThreshold: o.autoThreshold });
      const trainedOn = { runs: runs.map((r) => r.dir), data, model: lm.dir, metric: o.metric, inverted: Boolean(o.invert), threshold_points: o.threshold, label_rule: o.label, methods, contexts: kept.size, settings: rows.length, negatives: rows.filter((r) => r.negative).length };
      const predictor = trainPredictor(rows, { features }, trainedOn);
      const summary: RouterSummary = {
        ...trainedOn,
        features,
        folds: o.folds,
        seed: o.seed,
        reconstruction_threshold: o.autoThreshold,
        held_out: { predictor: cv.predictor, threshold: cv.threshold, learned_threshold: cv.learnedThreshold },
        predictor_beats_threshold: predictorBeatsThreshold(cv),
        auto_choice: cv.choice,
        per_fold: cv.folds,
        label_counts: labelCounts(rows),
      };
      mkdirSync(o.out, { recursive: true });
      const csv = toCsv(cv.heldOut.map((r) => ({ context: r.context, method: r.method, ratio: r.ratio, samples: r.samples, negative_samples: r.negatives, negative: r.negative, fold: r.fold, probability: round(r.probability), predictor: r.predictor, threshold: r.threshold, learned_threshold: r.learnedThreshold, ...Object.fromEntries(Object.entries(r.features).map(([k, v]) => [k, round(v)])) })));
      writeAtomic(join(o.out, 'router.json'), `${JSON.stringify(summary, null, 2)}\n`);
      writeAtomic(join(o.out, 'predictor.json'), `${JSON.stringify(predictor, null, 2)}\n`);
      writeAtomic(join(o.out, 'rows.csv'), csv);
      writeAtomic(join(o.out, 'report.md'), routerReport(summary));
      if (o.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else {
        process.stdout.write(routerReport(summary));
        process.stdout.write(`wrote ${['router.json', 'predictor.json', 'rows.csv', 'report.md'].map((f) => join(o.out, f)).join(', ')}\n`);
      }
    });
}

const round = (x: number) => Math.round(x * 1e4) / 1e4;

function labelCounts(rows: RouterRow[]): { method: string; ratio: number; contexts: number; negative: number }[] {
  const keys = [...new Set(rows.map((r) => JSON.stringify([r.method, r.ratio])))];
  return keys
    .map((k) => {
      const [method, ratio] = JSON.parse(k) as [string, number];
      const at = rows.filter((r) => r.method === method && r.ratio === ratio);
      return { method, ratio, contexts: at.length, negative: at.filter((r) => r.negative).length };
    })
    .sort((a, b) => a.method.localeCompare(b.method) || b.ratio - a.ratio);
}
