import { readFileSync } from 'node:fs';
import { InvalidArgumentError, type Command } from 'commander';
import { collectInspection, type InspectLayout } from '../../inspect/collect.ts';
import { inspectionJson } from '../../inspect/export-json.ts';
import { renderInspectPage } from '../../inspect/render.ts';
import { servePage } from '../../inspect/serve-page.ts';
import { PROTECT_HELP, protectChoiceOption } from '../compression-options.ts';
import { writeAtomic } from '../../eval/write-outputs.ts';
import { collect, intOption, listOption, numberOption, openModel, modelOptions, queryTemplateOption, ratioList } from '../common.ts';
import { progressBar } from '../progress.ts';

function layoutOption(value: string): InspectLayout {
  if (value === 'user' || value === 'system') return value;
  throw new InvalidArgumentError(`--layout must be user or system, got "${value}"`);
}

export function registerInspect(program: Command): void {
  modelOptions(
    program
      .command('inspect')
      .description('show what compression kept and why: a local web page (or --html file, or --json) of scores and keep sets per method'),
  )
    .requiredOption('-c, --context <file>', 'text file holding the context')
    .option('-s, --system <text>', 'system prompt')
    .option('--method <names>', 'one or two methods, comma-separated (see `kvlab methods`); default kvzip', listOption)
    .option('-r, --ratio <r>', 'the ratio the page opens at (fraction of the context KV kept)', numberOption('--ratio', 0, 1), 0.3)
    .option('--protect <p>', `${PROTECT_HELP}; in the system layout a detected defense sentence is named \`defense\` unless --defense names one`, protectChoiceOption)
    .option('--layout <where>', 'user: the context in the user turn, the system prompt never evicted (as `kvlab compress`); system: the system prompt compressed with the context (the pitfalls study)', layoutOption, 'user')
    .option('--defense <text>', 'a sentence of the system prompt to name `defense`')
    .option('-q, --ask <question>', 'a question each method answers from its compressed cache (repeatable)', collect, [])
    .option('--answer-ratios <list>', 'ratios to answer --ask at, comma-separated (default: --ratio)', ratioList)
    .option('--query-template <t>', 'how a question becomes user text; {query} is replaced', queryTemplateOption, '{query}')
    .option('-n, --max-tokens <n>', 'maximum new tokens per answer', intOption('--max-tokens'), 32)
    .option('--port <n>', 'port of the local page on 127.0.0.1 (0: any free port)', intOption('--port'), 8130)
    .option('--html <file>', 'write the page as one self-contained HTML file instead of serving it')
    .option('--json', 'print scores and keep sets (at --ratio and each answer ratio) as JSON instead of serving the page')
    .action(async (o) => {
      const methods: string[] = o.method?.length ? o.method : ['kvzip'];
      if (methods.length > 2 && !o.json) throw new InvalidArgumentError(`--method: the page shows one or two methods side by side, got ${methods.length} (--json takes any number)`);
      if (o.port > 65535) throw new InvalidArgumentError(`--port must be at most 65535, got ${o.port}`);
      const context = readFileSync(o.context, 'utf8');
      if (!context.trim()) throw new Error(`--context ${o.context}: the file is empty; there is nothing to compress`);
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const bar = progressBar('inspect', 512);
      let stage = '';
      const ins = await collectInspection(lm, context, {
        methods,
        ratio: o.ratio,
        system: o.system,
        layout: o.layout,
        defense: o.defense,
        protection: o.protect,
        questions: o.ask,
        answerRatios: o.answerRatios,
        maxTokens: o.maxTokens,
        queryTemplate: o.queryTemplate,
        onProgress: (s, d, t) => {
          if (s !== stage) bar.stop();
          stage = s;
          bar.update(d, t);
        },
      });
      bar.stop();
      const ratios = [...new Set([o.ratio as number, ...ins.data.answerRatios])];
      const json = () => JSON.stringify(inspectionJson(ins, ratios));
      if (o.json) process.stdout.write(`${json()}\n`);
      if (o.html) {
        writeAtomic(o.html, renderInspectPage(ins.data));
        process.stderr.write(`kvlab inspect: wrote ${o.html}\n`);
      }
      if (o.json || o.html) return;
      const page = await servePage(renderInspectPage(ins.data), json(), o.port);
      process.stdout.write(`kvlab inspect: ${page.url} (loopback only; Ctrl-C to stop)\n`);
      await new Promise<void>((resolve) => {
        const stop = () => void page.close().then(resolve);
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });
}
