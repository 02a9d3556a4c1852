import type { Command } from 'commander';
import { decodeWeightBytes } from '../../model/weights.ts';
import { generate } from '../../engine/generate.ts';
import { collect, intOption, numberOption, openModel, weightsLabel, modelOptions } from '../common.ts';
import { progressBar } from '../progress.ts';

export function registerGenerate(program: Command): void {
  modelOptions(program.command('generate').description('generate a reply to a prompt (chat template applied unless --raw)'))
    .requiredOption('-p, --prompt <text>', 'the user message (or the whole prompt with --raw)')
    .option('-s, --system <text>', 'system prompt')
    .option('--raw', 'feed the prompt as is, without the chat template')
    .option('-n, --max-tokens <n>', 'maximum new tokens', intOption('--max-tokens'), 256)
    .option('-t, --temperature <t>', 'sampling temperature (0 = greedy)', numberOption('--temperature', 0), 0)
    .option('--top-p <p>', 'nucleus sampling mass', numberOption('--top-p', 0, 1), 1)
    .option('--top-k <k>', 'sample among the k most likely tokens (0 = all)', intOption('--top-k'), 0)
    .option('--seed <s>', 'random seed for sampling', intOption('--seed'), 0)
    .option('--stop <text>', 'stop string (repeatable)', collect, [])
    .option('--json', 'print one JSON object {text, tokens, prompt_tokens, finish_reason, weights, timings}')
    .action(async (o) => {
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const messages = [
        ...(o.system !== undefined ? [{ role: 'system' as const, content: o.system as string }] : []),
        { role: 'user' as const, content: o.prompt as string },
      ];
      if (o.raw && o.system !== undefined) throw new Error('--system cannot be combined with --raw (the raw prompt is fed as is)');
      const text = o.raw ? (o.prompt as string) : lm.tokenizer.chat.render(messages, { addGenerationPrompt: true });
      const ids = lm.tokenizer.encode(text);
      const bar = progressBar('prefill', 256);
      const result = await generate(lm, lm.newCache(), ids, {
        maxTokens: o.maxTokens,
        sampling: { temperature: o.temperature, topP: o.topP, topK: o.topK, seed: o.seed },
        stopStrings: o.stop,
        onText: o.json ? undefined : (t) => process.stdout.write(t),
        prefill: { onProgress: (d, t) => bar.update(d, t) },
      });
      bar.stop();
      if (o.json) {
        process.stdout.write(
          `${JSON.stringify({
            text: result.text,
            tokens: result.tokens,
            prompt_tokens: result.promptTokens,
            finish_reason: result.finishReason,
            weights: { kind: weightsLabel(o.weights ?? { kind: 'checkpoint' }), decode_bytes_per_token: decodeWeightBytes(lm.model.weights) },
            kv_dtype: lm.kvDtype,
            timings: {
              prefill_ms: round(result.timings.prefillMs),
              decode_ms: round(result.timings.decodeMs),
              ttft_ms: round(result.timings.ttftMs),
              decode_tokens_per_s: round(result.timings.decodeTokensPerSecond),
            },
          })}\n`,
        );
      } else process.stdout.write('\n');
    });
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}
