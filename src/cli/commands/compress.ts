import { basename } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { ContextSession } from '../../engine/context-session.ts';
import { userContextLayout } from '../../model/prompt-layout.ts';
import { conversationContext } from '../../engine/conversation-context.ts';
import { persistentFingerprint } from '../../engine/model-fingerprint.ts';
import { readRegularText } from '../../model/regular-file.ts';
import { getPress } from '../../press/registry.ts';
import { contextRecord, loadContextFile, saveContextFile } from '../../server/context-store.ts';
import { collect, intOption, openModel, modelOptions, queryTemplateOption } from '../common.ts';
import { progressBar } from '../progress.ts';
import { autoJson, autoLine, autoOptionsOf, autoRatioOptions, checkAutoOptions, PROTECT_HELP, protectChoiceOption, ratioOrAutoOption } from '../compression-options.ts';
import { resolveProtection } from '../../engine/default-protection.ts';
import { describeProtection } from '../../press/protect.ts';
import { answerOnContext } from './context.ts';

export function registerCompress(program: Command): void {
  autoRatioOptions(modelOptions(program.command('compress').description('compress a context once with a method, then answer every question from the compressed cache')))
    .option('-c, --context <file>', 'text file holding the context')
    .option('-s, --system <text>', 'system prompt')
    .option('--method <name>', 'compression method (see `kvlab methods`)', 'kvzip')
    .option('-r, --ratio <r>', 'fraction of the context KV kept, in [0, 1], or auto (the smallest candidate whose compressed cache still reconstructs the context)', ratioOrAutoOption, 0.3)
    .option('--protect <p>', PROTECT_HELP, protectChoiceOption)
    .option('-q, --ask <question>', 'a question (repeatable)', collect, [])
    .option('--query-template <t>', 'how a question becomes user text; {query} is replaced', queryTemplateOption, '{query}')
    .option('-n, --max-tokens <n>', 'maximum new tokens per answer', intOption('--max-tokens'), 64)
    .option('--json', 'print {answers, cache, timings} as JSON')
    .option('--save <file>', 'also write the compressed cache to this context file (atomically)')
    .option('--load <file>', 'answer from a context file written by --save (or a stored context) instead of compressing')
    .action(async (o) => {
      if (o.load) return answerFromFile(o);
      if (!o.context) throw new InvalidArgumentError('give --context FILE (or --load FILE)');
      checkAutoOptions(o, o.ratio);
      const press = getPress(o.method);
      const context = readRegularText(o.context, '--context file');
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const prefillBar = progressBar('prefill', 512);
      // The context sits in the user turn: the template prefix (system prompt included) is outside the span
      // and never evicted, so the default rule finds nothing inside it to whitelist; explicit names must exist.
      const layout = userContextLayout(lm, context, { system: o.system, queryTemplate: o.queryTemplate });
      const ranges = [{ name: 'user', start: 0, end: layout.context.end - layout.context.start }];
      for (const n of typeof o.protect === 'object' ? (o.protect.whitelist ?? []) : []) {
        if (n !== 'user') throw new InvalidArgumentError(`--protect whitelist:${n}: the compressed span (the context in the user turn) has no range named "${n}" (ranges: user)`);
      }
      const session = new ContextSession(lm, { ...layout, ranges }, { onPrefillProgress: (d, t) => prefillBar.update(d, t) });
      const scoreBar = progressBar('scoring', 512);
      const scoring = (d: number, t: number) => {
        prefillBar.stop();
        scoreBar.update(d, t);
      };
      const protection = resolveProtection(o.protect, ranges);
      const opts = { onProgress: scoring, protection: protection ?? ('none' as const) };
      const report = o.ratio === 'auto' ? session.compressAuto(press, { ...opts, auto: autoOptionsOf(o) }) : session.compress(press, o.ratio, opts);
      prefillBar.stop();
      scoreBar.stop();
      if (o.save) {
        const spec = { kind: 'text' as const, text: context, ...(o.system !== undefined ? { system: o.system } : {}) };
        const record = contextRecord(basename(o.save).replace(/\.kvctx$/, ''), 'local', conversationContext(lm, spec), { session, report }, describeProtection(protection));
        saveContextFile(o.save, record, session.cache, persistentFingerprint(lm));
      }
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
      const auto = report.auto ? { auto: autoJson(report.auto) } : {};
      if (o.json) process.stdout.write(`${JSON.stringify({ method: press.name, ratio: report.ratio, protect: o.protect === undefined || o.protect === 'default' ? `default: ${describeProtection(protection)}` : describeProtection(protection), answers, cache, timings, ...auto })}\n`);
      else {
        if (report.auto) process.stdout.write(autoLine(report.auto));
        process.stdout.write(
          `${press.name} at ratio ${o.ratio}: context KV ${kib(cache.context_bytes_full)} -> ${kib(cache.context_bytes_kept)} ` +
            `(${(cache.kept_ratio * 100).toFixed(1)}% kept); prefill ${timings.prefill_ms} ms, scoring ${timings.score_ms} ms\n`,
        );
      }
    });
}

/** --load: the compressed cache comes from a file; only the questions run. */
async function answerFromFile(o: Record<string, any>): Promise<void> {
  if (o.context || o.save) throw new InvalidArgumentError('--load answers from a saved context: give it without --context or --save');
  const lm = openModel(o.model, o.weights, o.kvDtype, o);
  const t0 = performance.now();
  const { record, shared } = loadContextFile(o.load, persistentFingerprint(lm));
  const t1 = performance.now();
  if (record.spec.kind === 'text' && (record.spec.system ?? undefined) !== (o.system ?? undefined)) {
    throw new InvalidArgumentError(`--system differs from the one ${o.load} was compressed with`);
  }
  const answers = await answerOnContext(lm, record, shared, o.ask, o.maxTokens, o.queryTemplate);
  const t2 = performance.now();
  if (o.json) {
    const cache = { kv_dtype: shared.cache.dtype, context_tokens: record.contextTokens, bytes_kept: record.bytes, kept_ratio: record.keptRatio, per_layer_kept: record.perLayerKept };
    process.stdout.write(`${JSON.stringify({ method: record.method, ratio: record.ratio, answers, cache, timings: { load_ms: ms(t1 - t0), answer_ms: ms(t2 - t1) } })}\n`);
  } else {
    (o.ask as string[]).forEach((q, i) => process.stdout.write(`Q: ${q}\nA: ${answers[i]}\n`));
    process.stdout.write(`${record.method} at ratio ${record.ratio}, loaded from ${o.load} in ${ms(t1 - t0)} ms (${(record.keptRatio * 100).toFixed(1)}% of the context kept)\n`);
  }
}

function ms(x: number): number {
  return Math.round(x * 10) / 10;
}

function kib(bytes: number): string {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}
