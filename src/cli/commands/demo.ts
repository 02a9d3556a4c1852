import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import type { ContextSession } from '../../engine/context-session.ts';
import { loadQa, type QaRow } from '../../eval/datasets.ts';
import { scoreQa } from '../../eval/dev-scoring.ts';
import { pyStrip } from '../../eval/py-text.ts';
import { getPress } from '../../press/registry.ts';
import { numberOption, openModel, modelOptions } from '../common.ts';
import { progressBar } from '../progress.ts';

const DEMO_DATA = fileURLToPath(new URL('../../../data/dev/qa.jsonl', import.meta.url));

export function registerDemo(program: Command): void {
  modelOptions(program.command('demo').description('a short showcase on the embedded model: one document, several questions, full vs KVzip-compressed cache'))
    .option('--ratio <r>', 'fraction of the context kept by KVzip', numberOption('--ratio', 0, 1), 0.3)
    .action(async (o) => {
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const row = loadQa(DEMO_DATA)[0]!;
      const questions = row.questions.slice(0, 4);
      const c = lm.config;
      const out = (s: string) => process.stdout.write(`${s}\n`);
      out(`kvlab demo: ${lm.dir}`);
      out(`model: ${c.modelType}, ${c.numLayers} layers, ${c.numHeads} heads (${c.numKvHeads} KV), hidden ${c.hiddenSize}; backend ${lm.model.backend.describe()}`);
      out(`document: ${row.context.split('\n').slice(0, 3).join(' ').slice(0, 160)}...`);

      const full = lm.openContext(row.context, { queryTemplate: 'Question: {query}' });
      const t0 = performance.now();
      full.prefillCapture([]);
      out(`context: ${full.context.end - full.context.start} tokens, prefilled in ${(performance.now() - t0).toFixed(0)} ms; KV cache ${kib(full.cache.bytes())} (${full.cache.dtype})`);
      out('\n-- full cache --');
      const fullRight = await askAll(full, row, questions, out);
      out(`${fullRight} of ${questions.length} answered exactly`);

      const ratio = o.ratio as number;
      const press = getPress('kvzip');
      const session = lm.openContext(row.context, { queryTemplate: 'Question: {query}' });
      const bar = progressBar('kvzip', 256);
      const t1 = performance.now();
      const report = session.compress(press, ratio, { onProgress: (d, t) => bar.update(d, t) });
      bar.stop();
      out(`\n-- KVzip, ${Math.round(ratio * 100)}% of the context kept (prefill + scoring ${(performance.now() - t1).toFixed(0)} ms) --`);
      out(`context KV: ${kib(report.contextBytesFull)} -> ${kib(report.contextBytesKept)}; whole cache ${kib(report.bytesFull)} -> ${kib(report.bytesKept)}`);
      out(`kept per layer: ${report.perLayerKept.map((x) => `${Math.round(x * 100)}%`).join(' ')}`);
      const kvzipRight = await askAll(session, row, questions, out);
      out(`${kvzipRight} of ${questions.length} answered exactly (full cache: ${fullRight})`);
      out('\n(How often the embedded checkpoint answers right on the whole dev sets: models/kvlab-tiny-chat/README.md.)');
    });
}

/** Asks each question, prints it with the answer and the expected one; returns how many were exact. */
async function askAll(session: ContextSession, row: QaRow, questions: string[], out: (s: string) => void): Promise<number> {
  let right = 0;
  for (const [i, q] of questions.entries()) {
    const r = await session.ask(q, { maxTokens: 24 });
    if (scoreQa(row, i, r.text)) right++;
    // Shown as it is scored (`response.strip()`): the model answers a value led by a space.
    out(`Q: ${q}\n   answer: ${JSON.stringify(pyStrip(r.text))}   expected: ${JSON.stringify(row.answers[i])}`);
  }
  return right;
}

function kib(bytes: number): string {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}
