import { createInterface } from 'node:readline/promises';
import { InvalidArgumentError, type Command } from 'commander';
import { generate } from '../../engine/generate.ts';
import type { ChatMessage } from '../../model/chat-template.ts';
import { intOption, numberOption, openModel, modelOptions } from '../common.ts';
import { autoLine, decodeCompressOption, PROTECT_HELP, promptCompressOption, protectChoiceOption } from '../compression-options.ts';
import { continuationIds } from '../../engine/conversation-context.ts';
import { compressSystemPrompt } from '../../engine/system-prompt-compression.ts';
import type { KvCache } from '../../cache/kv-cache.ts';

/**
 * The conversation trimmed to fit `limit` positions with room for a reply: the oldest user/assistant
 * messages are dropped (the system prompt and the new message stay). `count` gives a conversation's prompt
 * length in tokens. Not ok when the system prompt and the new message alone do not fit.
 */
export function fitConversation(
  messages: ChatMessage[],
  count: (m: ChatMessage[]) => number,
  limit: number,
): { ok: true; messages: ChatMessage[]; dropped: number } | { ok: false; tokens: number } {
  const system = messages[0]?.role === 'system' ? [messages[0]] : [];
  const turns = messages.slice(system.length);
  for (let dropped = 0; dropped < turns.length; dropped++) {
    const kept = turns.slice(dropped);
    // A conversation resumes on a user message, so an assistant reply is never left first.
    if (kept[0]!.role !== 'user') continue;
    const candidate = [...system, ...kept];
    if (count(candidate) < limit) return { ok: true, messages: candidate, dropped };
  }
  return { ok: false, tokens: count([...system, turns.at(-1)!]) };
}

export function registerChat(program: Command): void {
  modelOptions(program.command('chat').description('interactive multi-turn chat in the terminal (/reset clears, /exit or Ctrl-D quits)'))
    .option('-s, --system <text>', 'system prompt')
    .option('-n, --max-tokens <n>', 'maximum new tokens per reply', intOption('--max-tokens'), 256)
    .option('-t, --temperature <t>', 'sampling temperature (0 = greedy)', numberOption('--temperature', 0), 0)
    .option('--seed <s>', 'random seed', intOption('--seed'), 0)
    .option('--decode-compress <spec>', 'METHOD:BUDGET:EVERY: every EVERY decode steps, each reply\'s generated rows keep their top BUDGET per KV head', decodeCompressOption)
    .option('--compress <spec>', 'METHOD:RATIO (RATIO a kept fraction or auto): compress the system prompt once; every turn continues the compressed cache (needs --system)', promptCompressOption)
    .option('--protect <p>', `with --compress: ${PROTECT_HELP}`, protectChoiceOption)
    .action(async (o) => {
      if (o.compress && o.system === undefined) throw new InvalidArgumentError('--compress compresses the system prompt: give --system');
      if (o.protect !== undefined && !o.compress) throw new InvalidArgumentError('--protect applies to what --compress compresses (the system prompt); give --compress METHOD:RATIO');
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const start = (): ChatMessage[] => (o.system !== undefined ? [{ role: 'system', content: o.system }] : []);
      // With --compress the system prompt is compressed once; each (re)start of the cache copies it.
      const compressed = o.compress ? compressSystemPrompt(lm, o.system, o.compress, o.protect) : null;
      if (compressed) {
        const r = compressed.report;
        if (r.auto) process.stdout.write(autoLine(r.auto));
        process.stdout.write(`(system prompt compressed with ${r.method} at ratio ${r.ratio}, protect ${compressed.protectLabel}: ${r.contextBytesKept} of ${r.contextBytesFull} bytes kept)\n`);
      }
      const base: number[] = compressed ? compressed.ctx.layout.ids : [];
      const freshCache = (): KvCache => compressed?.session.cache.clone() ?? lm.newCache();
      const promptIds = (m: ChatMessage[]): number[] =>
        compressed ? [...base, ...continuationIds(lm, compressed.ctx, m.slice(1))] : lm.tokenizer.encode(lm.tokenizer.chat.render(m, { addGenerationPrompt: true }));
      let messages = start();
      let cache = freshCache();
      let fed: number[] = [...base];
      const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY });
      process.stdout.write(`kvlab chat (${lm.dir}); /reset clears, /exit quits\n`);
      process.stdout.write('> ');
      for await (const line of rl) {
        if (line.trim() === '/exit') break;
        if (line.trim() === '/reset') {
          messages = start();
          cache = freshCache();
          fed = [...base];
          process.stdout.write('> ');
          continue;
        }
        if (!line.trim()) {
          process.stdout.write('> ');
          continue;
        }
        messages.push({ role: 'user', content: line });
        const fitted = fitConversation(messages, (m) => lm.tokenizer.encode(lm.tokenizer.chat.render(m, { addGenerationPrompt: true })).length, lm.config.maxPositionEmbeddings);
        if (!fitted.ok) {
          messages.pop();
          process.stdout.write(`(this message does not fit the model's ${lm.config.maxPositionEmbeddings} positions even on its own: ${fitted.tokens} tokens; not sent)\n> `);
          continue;
        }
        if (fitted.dropped) {
          messages = fitted.messages;
          process.stdout.write(`(the conversation outgrew the model's ${lm.config.maxPositionEmbeddings} positions: dropped the ${fitted.dropped} oldest message${fitted.dropped === 1 ? '' : 's'})\n`);
        }
        const ids = promptIds(messages);
        // Reuse the cache when the new prompt extends what it holds; otherwise start over (from the compressed system prompt, if any).
        const reuse = fed.length > 0 && fed.length < ids.length && fed.every((id, i) => ids[i] === id);
        if (!reuse) {
          cache = freshCache();
          fed = [...base];
        }
        let result;
        try {
          result = await generate(lm, cache, ids.slice(fed.length), {
            maxTokens: o.maxTokens,
            sampling: { temperature: o.temperature, seed: o.seed },
            onText: (t) => process.stdout.write(t),
            decodeCompression: o.decodeCompress,
          });
        } catch (e) {
          // The turn fails, the session goes on: the message is taken back and the cache rebuilt next turn.
          messages.pop();
          cache = freshCache();
          fed = [...base];
          process.stdout.write(`\n(this turn failed: ${(e as Error).message})\n> `);
          continue;
        }
        process.stdout.write('\n');
        fed = [...ids, ...result.tokens].slice(0, cache.nextPos);
        messages.push({ role: 'assistant', content: result.text });
        process.stdout.write('> ');
      }
      rl.close();
    });
}
