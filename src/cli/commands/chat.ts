import { createInterface } from 'node:readline/promises';
import type { Command } from 'commander';
import { generate } from '../../engine/generate.ts';
import type { ChatMessage } from '../../model/chat-template.ts';
import { intOption, numberOption, openModel, modelOptions } from '../common.ts';

export function registerChat(program: Command): void {
  modelOptions(program.command('chat').description('interactive multi-turn chat in the terminal (/reset clears, /exit or Ctrl-D quits)'))
    .option('-s, --system <text>', 'system prompt')
    .option('-n, --max-tokens <n>', 'maximum new tokens per reply', intOption('--max-tokens'), 256)
    .option('-t, --temperature <t>', 'sampling temperature (0 = greedy)', numberOption('--temperature', 0), 0)
    .option('--seed <s>', 'random seed', intOption('--seed'), 0)
    .action(async (o) => {
      const lm = openModel(o.model, o.weights, o.kvDtype);
      const start = (): ChatMessage[] => (o.system !== undefined ? [{ role: 'system', content: o.system }] : []);
      let messages = start();
      let cache = lm.newCache();
      let fed: number[] = [];
      const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY });
      process.stdout.write(`kvlab chat (${lm.dir}); /reset clears, /exit quits\n`);
      process.stdout.write('> ');
      for await (const line of rl) {
        if (line.trim() === '/exit') break;
        if (line.trim() === '/reset') {
          messages = start();
          cache = lm.newCache();
          fed = [];
          process.stdout.write('> ');
          continue;
        }
        if (!line.trim()) {
          process.stdout.write('> ');
          continue;
        }
        messages.push({ role: 'user', content: line });
        const ids = lm.tokenizer.encode(lm.tokenizer.chat.render(messages, { addGenerationPrompt: true }));
        // Reuse the cache when the new prompt extends what it holds; otherwise start over.
        const reuse = fed.length > 0 && fed.length < ids.length && fed.every((id, i) => ids[i] === id);
        if (!reuse) {
          cache = lm.newCache();
          fed = [];
        }
        const result = await generate(lm, cache, ids.slice(fed.length), {
          maxTokens: o.maxTokens,
          sampling: { temperature: o.temperature, seed: o.seed },
          onText: (t) => process.stdout.write(t),
        });
        process.stdout.write('\n');
        fed = [...ids, ...result.tokens].slice(0, cache.nextPos);
        messages.push({ role: 'assistant', content: result.text });
        process.stdout.write('> ');
      }
      rl.close();
    });
}
