import type { Command } from 'commander';
import { readRegularText } from '../../model/regular-file.ts';
import { getPress } from '../../press/registry.ts';
import { collect, intOption, numberOption, openModel, modelOptions, queryTemplateOption } from '../common.ts';
import { progressBar } from '../progress.ts';

export function registerCompress(program: Command): void {
  modelOptions(program.command('compress').description('compress a context once with a method, then answer every question from the compressed cache'))
    .requiredOption('-c, --context <file>', 'text file holding the context')
    .option('-s, --system <text>', 'system prompt')
    .option('--method <name>', 'compression method (see `kvlab methods`)', 'kvzip')
    .option('-r, --ratio <r>', 'fraction of the context KV kept, in [0, 1]', numberOption('--ratio', 0, 1), 0.3)
    .option('-q, --ask <question>', 'a question (repeatable)', collect, [])
    .option('--query-template <t>', 'how a question becomes user text; {query} is replaced', queryTemplateOption, '{query}')
    .option('-n, --max-tokens <n>', 'maximum new tokens per answer', intOption('--max-tokens'), 64)
    .option('--json', 'print {answers, cache, timings} as JSON')
    .action(async (o) => {
      const press = getPress(o.method);
      const context = readRegularText(o.context, '--context file');
      const lm = openModel(o.model, o.weights, o.kvDtype);
      const prefillBar = progressBar('prefill', 512);
      const session = lm.openContext(context, {
        system: o.system,
        queryTemplate: o.queryTemplate,
        onPrefillProgress: (d, t) => prefillBar.update(d, t),
      });
      const scoreBar = progressBar('scoring', 512);
      const scoring = (d: number, t: number) => {
        prefillBar.stop();
        scoreBar.update(d, t);
      };
      const report = session.compress(press, o.ratio, { onProgress: scoring });
      prefillBar.stop();
      scoreBar.stop();
      const t2 = performance.now();
      const answers: string[] = [];
      for (const q of o.ask as string[]) {
        const r = await session.ask(q, { maxTokens: o.maxTokens });
        answers.push(r.text);
        if (!o.json) process.stdout.write(`Q: ${q}\nA: ${r.text}\n`);
      }
      const t3 = performance.now();
      const cache = {
        kv_dtype: session.cache.dtype,
        context_tokens: report.contextTokens,
        bytes_full: report.bytesFull,
        bytes_kept: report.bytesKept,
        context_bytes_full: report.contextBytesFull,
        context_bytes_kept: report.contextBytesKept,
        kept_ratio: report.contextBytesFull ? report.contextBytesKept / report.contextBytesFull : 1,
        total_kept_ratio: report.bytesKept / report.bytesFull,
        per_layer_kept: report.perLayerKept.map((x) => Math.round(x * 1e4) / 1e4),
      };
      const timings = { prefill_ms: ms(report.timings.prefillMs), score_ms: ms(report.timings.scoreMs + report.timings.keepMs), answer_ms: ms(t3 - t2) };
      if (o.json) process.stdout.write(`${JSON.stringify({ method: press.name, ratio: o.ratio, answers, cache, timings })}\n`);
      else
        process.stdout.write(
          `${press.name} at ratio ${o.ratio}: context KV ${kib(cache.context_bytes_full)} -> ${kib(cache.context_bytes_kept)} ` +
            `(${(cache.kept_ratio * 100).toFixed(1)}% kept); prefill ${timings.prefill_ms} ms, scoring ${timings.score_ms} ms\n`,
        );
    });
}

function ms(x: number): number {
  return Math.round(x * 10) / 10;
}

function kib(bytes: number): string {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}
