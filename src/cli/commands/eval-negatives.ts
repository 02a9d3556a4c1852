import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { featureCounts, findNegatives, negativeRows, readRunScores, runsDataFile, sampleOfKey } from '../../eval/negatives.ts';
import { barPlot } from '../../eval/svg-plot.ts';
import { markdownTable, writeAtomic } from '../../eval/write-outputs.ts';
import { numberOption } from '../common.ts';

/** `kvlab eval negatives`: samples whose score drops under compression, from the per-sample scores of eval runs. */
export function registerNegatives(ev: Command): void {
  ev.command('negatives')
    .description('negative samples: per method x ratio, the samples whose score falls >= --threshold points below the full cache (ratio 1) in the given eval runs; their intersection across methods, the features they share, and a data file of them that eval takes again')
    .requiredOption('--runs <dirs...>', '--out folders of finished eval runs (samples.csv, results.json); together they must hold ratio 1')
    .option('--threshold <points>', 'score drop (0..100 points) that makes a sample negative', numberOption('--threshold', 0), 10)
    .option('--metric <column>', 'the samples.csv column scored (QA: correct; instructions: follow_rate or exact; leakage: leak with --invert)', 'correct')
    .option('--invert', 'the metric is lower-is-better (score = 100 - value)')
    .option('--data <file>', 'the data file the runs evaluated (default: the one their results.json names)')
    .option('--select <which>', 'samples saved: union (negative under any setting) or intersection (negative under every method at some ratio)', 'union')
    .requiredOption('-o, --out <dir>', 'write negatives.json, negatives.jsonl (the data file of the chosen samples), report.md and counts.svg here')
    .action((o) => {
      if (!(o.threshold > 0)) throw new InvalidArgumentError('--threshold must be above 0 points');
      if (o.select !== 'union' && o.select !== 'intersection') throw new InvalidArgumentError(`--select must be union or intersection, got "${o.select}"`);
      const runs = (o.runs as string[]).map((dir) => readRunScores(dir, { metric: o.metric, invert: Boolean(o.invert) }));
      const data = runsDataFile(runs, o.data);
      const scores = runs.flatMap((r) => r.scores);
      const analysis = findNegatives(scores, o.threshold);
      const chosen = o.select === 'union' ? analysis.union : [...new Set(analysis.intersection.flatMap((i) => i.negatives))].sort();
      const rows = negativeRows(data, chosen);
      const scored = [...new Set(scores.filter((s) => s.ratio === 1).map((s) => s.key))];
      const features = featureCounts(data, scored, analysis.union);
      mkdirSync(o.out, { recursive: true });
      const table = analysis.settings.map((s) => ({ method: s.method, ratio: s.ratio, n: s.n, negatives: s.negatives.length, share: s.n ? s.negatives.length / s.n : 0, mean_drop_points: s.mean_drop }));
      const inter = analysis.intersection.map((i) => ({ ratio: i.ratio, methods: i.methods.join(' '), negatives_under_all: i.negatives.length }));
      const summary = {
        runs: runs.map((r) => r.dir),
        data,
        metric: o.metric,
        inverted: Boolean(o.invert),
        threshold_points: o.threshold,
        samples_with_full_score: scored.length,
        settings: table,
        intersection: analysis.intersection.map((i) => ({ ratio: i.ratio, methods: i.methods, samples: i.negatives.map(sampleOfKey) })),
        union: analysis.union.length,
        saved: { select: o.select, samples: chosen.length, rows: rows.length },
        features,
      };
      const methods = [...new Set(analysis.settings.map((s) => s.method))];
      const ratios = [...new Set(analysis.settings.map((s) => s.ratio))].sort((a, b) => b - a);
      const svg = barPlot({
        title: `Negative samples (score drop >= ${o.threshold} points vs the full cache)`,
        yLabel: 'negative samples',
        groups: methods,
        series: ratios.map((r) => `ratio ${r}`),
        values: methods.map((m) => ratios.map((r) => analysis.settings.find((s) => s.method === m && s.ratio === r)?.negatives.length ?? NaN)),
      });
      const report = [
        '# Negative samples',
        '',
        `Runs: ${runs.map((r) => r.dir).join(', ')}  `,
        `Data: ${data}; metric ${o.metric}${o.invert ? ' (inverted)' : ''}; a sample is negative when its score falls >= ${o.threshold} points below the full cache's.`,
        '',
        markdownTable(table),
        '![negative samples](counts.svg)',
        '',
        '## Negative under every method at a ratio',
        '',
        markdownTable(inter),
        `Negative under at least one setting: ${analysis.union.length} of ${scored.length} samples. Saved (${o.select}): ${chosen.length} samples in ${rows.length} rows, negatives.jsonl.`,
        '',
        '## What the negative samples share',
        '',
        features.length ? markdownTable(features.map((f) => ({ ...f, share_negative: f.samples ? f.negatives / f.samples : 0 })) as unknown as Record<string, unknown>[]) : '(features are described for QA and instruction rows only)\n',
      ].join('\n');
      writeAtomic(join(o.out, 'negatives.json'), `${JSON.stringify(summary, null, 2)}\n`);
      writeAtomic(join(o.out, 'negatives.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : ''));
      writeAtomic(join(o.out, 'report.md'), report);
      writeAtomic(join(o.out, 'counts.svg'), svg);
      process.stdout.write(markdownTable(table));
      process.stdout.write(markdownTable(inter));
      process.stdout.write(`wrote ${['negatives.json', 'negatives.jsonl', 'report.md', 'counts.svg'].map((f) => join(o.out, f)).join(', ')}\n`);
    });
}
