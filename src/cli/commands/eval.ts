import type { Command } from 'commander';
import { DataFileError, loadQa } from '../../eval/datasets.ts';
import { evalQa, qaRowTooLong, type QaUnit } from '../../eval/qa-eval.ts';
import { getPress } from '../../press/registry.ts';
import { linePlot } from '../../eval/svg-plot.ts';
import { markdownTable, writeEvalOutputs } from '../../eval/write-outputs.ts';
import { evalRunOutputs, evalSettings, intOption, listOption, openModel, queryTemplateOption, ratioList, modelOptions } from '../common.ts';
import { autoOptionsOf, autoRatioOptions, checkAutoOptions } from '../compression-options.ts';

/** Comma-separated kept ratios in [0, 1], or auto. */
function ratioOrAutoList(value: string, previous?: (number | 'auto')[]): (number | 'auto')[] {
  void previous;
  const items = value.split(',').map((s) => s.trim());
  const auto = items.filter((s) => s === 'auto').length;
  const fixed = items.filter((s) => s !== 'auto');
  return [...(fixed.length ? ratioList(fixed.join(',')) : []), ...(auto ? ['auto' as const] : [])];
}
import { registerStudies } from './eval-study.ts';
import { registerLength } from './eval-length.ts';
import { registerNegatives } from './eval-negatives.ts';
import { registerRouter } from './eval-router.ts';
import { progressBar } from '../progress.ts';
import { parseRedisUrl } from '../../queue/redis-connection.ts';

export function registerEval(program: Command): Command {
  const ev = program.command('eval').description('evaluate compression methods on a dataset');
  autoRatioOptions(modelOptions(ev.command('qa').description('multi-query document QA: each context is compressed once per method, every ratio and question reuses it'))
    )
    .requiredOption('-d, --data <file>', 'JSONL rows {id, context, questions[], answers[]}')
    .option('--method <names>', 'comma-separated methods', listOption)
    .option('-r, --ratio <list>', 'comma-separated kept ratios; auto: each context gets the smallest ratio whose compressed cache still reconstructs it', ratioOrAutoList, [1, 0.5, 0.3, 0.2, 0.1])
    .option('--query-template <t>', 'how a question becomes user text; {query} is replaced', queryTemplateOption, 'Question: {query}')
    .option('--limit <n>', 'only the first n rows', intOption('--limit', 1))
    .option('-n, --max-tokens <n>', 'maximum new tokens per answer', intOption('--max-tokens', 1), 24)
    .option('-o, --out <dir>', 'write results.json, samples.csv, report.md and plots here (rows are saved to partial.jsonl as they complete)')
    .option('--resume', 'continue the interrupted run whose partial.jsonl is in --out')
    .option('--queue <url>', 'run the (method, row) units as jobs on the BullMQ queue at redis://HOST:PORT/N, taken by `kvlab worker` processes; results are gathered here')
    .option('--json', 'print {model, results} as JSON')
    .action(async (o) => {
      const methods: string[] = o.method ?? ['kvzip', 'snapkv', 'streamingllm'];
      methods.forEach(getPress);
      checkAutoOptions(o, o.ratio.includes('auto') ? 'auto' : 1);
      const queue = o.queue ? parseRedisUrl(o.queue, '--queue') : null;
      let rows = loadQa(o.data);
      if (o.limit) rows = rows.slice(0, o.limit);
      const partial = await evalRunOutputs<QaUnit>(o.out, o.resume, evalSettings('eval qa', o, { methods, ratios: o.ratio, query_template: o.queryTemplate, ...(o.ratio.includes('auto') ? { auto: autoOptionsOf(o) } : {}) }));
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const tooLong = qaRowTooLong(lm, rows, { queryTemplate: o.queryTemplate });
      if (tooLong) throw new DataFileError(`${o.data}: ${tooLong}`);
      const bar = progressBar('eval qa', 1);
      let resumed = partial?.done;
      if (queue) {
        // The queue code (and bullmq) loads only for a sweep that uses it.
        const { runSweepOnQueue } = await import('../../queue/sweep-submit.ts');
        const { qaJobs } = await import('../../queue/qa-jobs.ts');
        const { modelTagOf } = await import('../../queue/sweep-jobs.ts');
        const model = modelTagOf(lm);
        resumed = await runSweepOnQueue<QaUnit>({
          address: queue,
          model,
          jobs: qaJobs(rows, methods, { ratios: o.ratio, queryTemplate: o.queryTemplate, maxTokens: o.maxTokens, ...(o.ratio.includes('auto') ? { auto: autoOptionsOf(o) } : {}) }, model),
          done: partial?.done,
          onUnit: (key, unit) => partial?.record(key, unit),
          onProgress: (d, t) => bar.update(d, t),
          log: (line) => process.stderr.write(`kvlab eval qa: ${line}\n`),
        });
      }
      const { results, samples } = await evalQa(lm, rows, {
        methods,
        ratios: o.ratio,
        auto: autoOptionsOf(o),
        queryTemplate: o.queryTemplate,
        maxTokens: o.maxTokens,
        onProgress: (d, t) => bar.update(d, t),
        resumed,
        onUnit: (key, unit) => partial?.record(key, unit),
      });
      bar.stop();
      const summary = { model: lm.dir, data: o.data, results };
      if (o.out) {
        const plot = linePlot({
          title: 'QA exact match vs kept ratio',
          xLabel: 'ratio kept',
          yLabel: 'accuracy',
          // An auto row is drawn at the average memory its chosen ratios keep.
          series: [...new Set(results.map((r) => r.method))].flatMap((m) => [
            { name: m, points: results.filter((r) => r.method === m && r.ratio !== 'auto').map((r) => [r.ratio as number, r.accuracy] as [number, number]) },
            ...results.filter((r) => r.method === m && r.ratio === 'auto').map((r) => ({ name: `${m} auto`, points: [[r.kept_bytes_ratio, r.accuracy] as [number, number]] })),
          ]),
          yDomain: [0, 1],
        });
        const report = `# QA under compression\n\nModel: ${lm.dir}\nData: ${o.data} (${rows.length} contexts, ${samples.length / Math.max(1, results.length)} questions per point)\n\n${markdownTable(results as unknown as Record<string, unknown>[])}\n![accuracy vs ratio](accuracy.svg)\n`;
        const files = writeEvalOutputs(o.out, { results: summary, samples: samples as unknown as Record<string, unknown>[], report, plots: { 'accuracy.svg': plot } });
        partial?.finish();
        if (!o.json) process.stdout.write(`wrote ${files.join(', ')}\n`);
      }
      if (o.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else process.stdout.write(markdownTable(results as unknown as Record<string, unknown>[]));
    });
  registerStudies(ev);
  registerLength(ev);
  registerNegatives(ev);
  registerRouter(ev);
  return ev;
}
