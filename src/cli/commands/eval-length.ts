import type { Command } from 'commander';
import { DataFileError, loadQa } from '../../eval/datasets.ts';
import { fullCacheLatency, lengthPlots, runLengthStudy, summarizeLengths, type LengthUnit } from '../../eval/length-study.ts';
import { qaRowTooLong } from '../../eval/qa-eval.ts';
import { markdownTable, writeEvalOutputs } from '../../eval/write-outputs.ts';
import { getPress } from '../../press/registry.ts';
import { evalRunOutputs, evalSettings, intOption, listOption, modelOptions, numberOption, openModel, queryTemplateOption, ratioList } from '../common.ts';
import { progressBar } from '../progress.ts';

/** `kvlab eval length`: each answer's output length under compression against the full cache's. */
export function registerLength(ev: Command): void {
  modelOptions(ev.command('length').description("output-length change: every question answered on the full cache and on each method x ratio (greedy, and sampled with a shared seed when --temperature > 0); each answer's length against the full cache's, and the end-to-end latency it implies"))
    .requiredOption('-d, --data <file>', 'QA JSONL rows {id, context, questions[], answers[]}')
    .option('--method <names>', 'comma-separated methods (registered names)', listOption)
    .option('-r, --ratio <list>', 'comma-separated kept ratios (ratio 1 is the full cache, always run)', ratioList, [0.5, 0.3, 0.1])
    .option('--query-template <t>', 'how a question becomes user text; {query} is replaced', queryTemplateOption, 'Question: {query}')
    .option('--limit <n>', 'only the first n rows', intOption('--limit', 1))
    .option('-n, --max-tokens <n>', 'maximum new tokens per answer', intOption('--max-tokens', 1), 64)
    .option('--temperature <t>', 'also sample each answer at this temperature (seeded, same seed for every setting); 0 = greedy only', numberOption('--temperature', 0, 10), 0.8)
    .option('--seed <n>', 'sampling seed', intOption('--seed'), 1)
    .option('--ttft-ms <ms>', 'latency model: time to first token (default: the median of this run on the full cache)', numberOption('--ttft-ms', 0))
    .option('--tpot-ms <ms>', 'latency model: time per output token (default: the median of this run on the full cache)', numberOption('--tpot-ms', 0))
    .option('-o, --out <dir>', 'write results.json, samples.csv (one row per answer), report.md and SVG plots here')
    .option('--resume', 'continue the interrupted run whose partial.jsonl is in --out')
    .option('--json', 'print {model, latency, results} as JSON')
    .action(async (o) => {
      const methods: string[] = o.method ?? ['kvzip', 'snapkv', 'streamingllm'];
      methods.filter((m) => m !== 'full').forEach(getPress);
      let rows = loadQa(o.data);
      if (o.limit) rows = rows.slice(0, o.limit);
      const settings = evalSettings('eval length', o, { methods, ratios: o.ratio, query_template: o.queryTemplate, temperature: o.temperature, seed: o.seed });
      const partial = await evalRunOutputs<LengthUnit>(o.out, o.resume, settings);
      const lm = openModel(o.model, o.weights, o.kvDtype);
      const tooLong = qaRowTooLong(lm, rows, { queryTemplate: o.queryTemplate });
      if (tooLong) throw new DataFileError(`${o.data}: ${tooLong}`);
      const bar = progressBar('eval length', 1);
      const samples = await runLengthStudy(lm, rows, {
        methods,
        ratios: o.ratio,
        queryTemplate: o.queryTemplate,
        maxTokens: o.maxTokens,
        temperature: o.temperature,
        seed: o.seed,
        onProgress: (d, t) => bar.update(d, t),
        resumed: partial?.done,
        onUnit: (key, unit) => partial?.record(key, unit),
      });
      bar.stop();
      const measured = fullCacheLatency(samples);
      const latency = { ttftMs: o.ttftMs ?? measured.ttftMs, tpotMs: o.tpotMs ?? measured.tpotMs };
      const results = summarizeLengths(samples, latency);
      const summary = { model: lm.dir, data: o.data, max_tokens: o.maxTokens, latency_model: { ...latency, source: o.ttftMs !== undefined || o.tpotMs !== undefined ? 'options' : 'medians of this run, full cache, greedy' }, results };
      const table = markdownTable(results as unknown as Record<string, unknown>[]);
      if (o.out) {
        const plots = lengthPlots(samples, results);
        const report = [
          '# Output length under compression',
          '',
          `Model: ${lm.dir}  `,
          `Data: ${o.data} (${rows.length} contexts), max tokens ${o.maxTokens}, temperature ${o.temperature} (seed ${o.seed})  `,
          `Latency model: e2e = ${latency.ttftMs.toFixed(1)} ms + (tokens - 1) x ${latency.tpotMs.toFixed(2)} ms (${summary.latency_model.source})`,
          '',
          table,
          ...Object.keys(plots).map((f) => `![${f}](${f})`),
          '',
        ].join('\n');
        const files = writeEvalOutputs(o.out, { results: summary, samples: samples as unknown as Record<string, unknown>[], report, plots });
        partial?.finish();
        if (!o.json) process.stdout.write(`wrote ${files.join(', ')}\n`);
      }
      if (o.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else process.stdout.write(table);
    });
}
