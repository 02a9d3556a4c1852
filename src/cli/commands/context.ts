import { readFileSync } from 'node:fs';
import { autoJson, autoLine, autoOptionsOf, autoRatioOptions, checkAutoOptions, protectChoiceOption, ratioOrAutoOption } from '../compression-options.ts';
import type { ProtectionChoice } from '../../engine/default-protection.ts';
import { InvalidArgumentError, type Command } from 'commander';
import { compressContext, DEFAULT_CONTEXT_PROTECTION, effectiveProtection } from '../../engine/compress-context.ts';
import { conversationContext, continuationIds, type ContextSpec } from '../../engine/conversation-context.ts';
import type { LoadedModel } from '../../engine/loaded-model.ts';
import { persistentFingerprint } from '../../engine/model-fingerprint.ts';
import { SerialScheduler } from '../../engine/serial-scheduler.ts';
import type { SharedContext } from '../../engine/scheduler-types.ts';
import { describeProtection } from '../../press/protect.ts';
import { getPress } from '../../press/registry.ts';
import { ContextStore, type ContextRecord } from '../../server/context-store.ts';
import { parseMessages } from '../../server/validate.ts';
import { defaultStoreDir } from '../../server/defaults.ts';
import { collect, intOption, modelOptions, openModel } from '../common.ts';

/** Contexts made on the command line belong to the tenant of a server started without API keys. */
const LOCAL_TENANT = 'local';

function storeOption(cmd: Command): Command {
  return cmd.option('--store <dir>', `folder of stored contexts (default ${defaultStoreDir()})`, (value: string) => {
    // Not a folder named "redis:": a store in Redis is reached through a `kvlab serve --store redis://...` replica.
    if (/^rediss?:\/\//.test(value)) throw new InvalidArgumentError(`--store ${value}: kvlab context works on a folder store; a Redis store is read and written through the HTTP API of \`kvlab serve --store ${value}\``);
    return value;
  });
}

function openStore(lm: LoadedModel, dir: string | undefined): ContextStore {
  const store = new ContextStore(lm, persistentFingerprint(lm), dir ?? defaultStoreDir());
  for (const s of store.scan().skipped) process.stderr.write(`kvlab context: skipped ${s.file}: ${s.reason}\n`);
  return store;
}

/** Answers each question on a stored context, one after another, as `kvlab compress --ask` does. */
export async function answerOnContext(lm: LoadedModel, record: ContextRecord, shared: SharedContext, questions: string[], maxTokens: number, template = '{query}'): Promise<string[]> {
  const scheduler = new SerialScheduler(lm);
  const answers: string[] = [];
  for (const q of questions) {
    const promptIds = continuationIds(lm, record, [{ role: 'user', content: template.replaceAll('{query}', q) }]);
    answers.push((await scheduler.submit({ context: shared, promptIds, maxTokens, sampling: { temperature: 0 } }).result).text);
  }
  return answers;
}

export function registerContext(program: Command): void {
  const cmd = program.command('context').description('stored compressed contexts (the store `kvlab serve` uses): save, load, ls, rm');

  autoRatioOptions(storeOption(modelOptions(cmd.command('save').description('compress a context and add it to the store'))))
    .option('-c, --context <file>', 'text file holding the context (placed in the user turn)')
    .option('-s, --system <text>', 'system prompt (with --context)')
    .option('--messages <file>', 'JSON file holding a message list [{role, content}] to compress instead')
    .option('--method <name>', 'compression method (see `kvlab methods`)', 'kvzip')
    .option('-r, --ratio <r>', 'fraction of the context KV kept, in [0, 1], or auto (the smallest candidate whose compressed cache still reconstructs the context)', ratioOrAutoOption, 0.3)
    .option('--protect <mode>', `default, whitelist:NAME[,NAME], fair[:lambda], both or none (default: ${describeProtection(DEFAULT_CONTEXT_PROTECTION)} and in-span template tokens)`, protectChoiceOption)
    .option('--json', 'print the stored context as JSON')
    .action(async (o) => {
      if (Boolean(o.context) === Boolean(o.messages)) throw new InvalidArgumentError('give exactly one of --context FILE or --messages FILE');
      const spec: ContextSpec = o.context
        ? { kind: 'text', text: readFileSync(o.context, 'utf8'), ...(o.system !== undefined ? { system: o.system } : {}) }
        : { kind: 'messages', messages: parseMessages(JSON.parse(readFileSync(o.messages, 'utf8')), o.messages) };
      checkAutoOptions(o, o.ratio);
      const press = getPress(o.method);
      const choice: ProtectionChoice = o.protect ?? 'default';
      const protection = choice === 'default' ? DEFAULT_CONTEXT_PROTECTION : choice === 'none' ? undefined : choice;
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const store = openStore(lm, o.store);
      const ctx = conversationContext(lm, spec);
      const built = compressContext(lm, ctx, press, o.ratio, protection, autoOptionsOf(o));
      if (built.report.auto && !o.json) process.stdout.write(autoLine(built.report.auto));
      const { record } = await store.add(LOCAL_TENANT, ctx, built, describeProtection(effectiveProtection(protection, ctx)));
      if (o.json) process.stdout.write(`${JSON.stringify({ ...summary(record, store), ...(built.report.auto ? { auto: autoJson(built.report.auto) } : {}) })}\n`);
      else process.stdout.write(`${record.id}: ${record.contextTokens} context tokens, ${(record.keptRatio * 100).toFixed(1)}% kept (${record.method}, ratio ${record.ratio}), ${store.fileBytes(record.id)} bytes on disk\n`);
    });

  storeOption(modelOptions(cmd.command('load').description('load a stored context (checksum and model verified) and answer questions on it').argument('<id>')))
    .option('-q, --ask <question>', 'a question (repeatable)', collect, [])
    .option('-n, --max-tokens <n>', 'maximum new tokens per answer', intOption('--max-tokens'), 64)
    .option('--json', 'print {id, answers} as JSON')
    .action(async (id: string, o) => {
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const store = openStore(lm, o.store);
      const record = store.listAll().find((r) => r.id === id);
      if (!record) throw new Error(`no context ${id} in ${o.store ?? defaultStoreDir()}`);
      const shared = await store.shared(record.tenant, id);
      const answers = await answerOnContext(lm, record, shared, o.ask, o.maxTokens);
      if (o.json) process.stdout.write(`${JSON.stringify({ ...summary(record, store), answers })}\n`);
      else {
        process.stdout.write(`${id}: loaded, ${shared.cache.bytes()} bytes of KV\n`);
        (o.ask as string[]).forEach((q, i) => process.stdout.write(`Q: ${q}\nA: ${answers[i]}\n`));
      }
    });

  storeOption(modelOptions(cmd.command('ls').description('list the stored contexts of this model')))
    .option('--json', 'one JSON object per line')
    .action((o) => {
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const store = openStore(lm, o.store);
      for (const r of store.listAll()) {
        const s = summary(r, store);
        process.stdout.write(o.json ? `${JSON.stringify(s)}\n` : `${s.id}  ${s.tenant}  ${s.kind}  ${s.tokens} tokens  ${s.method}@${s.ratio}  kept ${(s.kept_ratio * 100).toFixed(1)}%  ${s.file_bytes} bytes  ${s.created}\n`);
      }
    });

  storeOption(modelOptions(cmd.command('rm').description('remove stored contexts').argument('<ids...>'))).action(async (ids: string[], o) => {
    const lm = openModel(o.model, o.weights, o.kvDtype, o);
    const store = openStore(lm, o.store);
    for (const id of ids) {
      const r = store.listAll().find((x) => x.id === id);
      if (!r || !(await store.remove(r.tenant, id))) throw new Error(`no context ${id} in ${o.store ?? defaultStoreDir()}`);
      process.stdout.write(`removed ${id}\n`);
    }
  });
}

function summary(r: ContextRecord, store: ContextStore) {
  return {
    id: r.id,
    tenant: r.tenant,
    kind: r.spec.kind,
    created: r.createdAt,
    tokens: r.ids.length,
    method: r.method,
    ratio: r.ratio,
    protect: r.protect,
    kept_ratio: Math.round(r.keptRatio * 1e4) / 1e4,
    bytes: r.bytes,
    file_bytes: store.fileBytes(r.id),
  };
}
