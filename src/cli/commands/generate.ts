import { InvalidArgumentError, type Command } from 'commander';
import { decodeWeightBytes } from '../../model/weights.ts';
import { generate } from '../../engine/generate.ts';
import { collect, intOption, numberOption, openModel, weightsLabel, modelOptions } from '../common.ts';
import { progressBar } from '../progress.ts';
import { autoJson, autoLine, decodeCompressOption, PROTECT_HELP, promptCompressOption, protectChoiceOption } from '../compression-options.ts';
import { continuationIds } from '../../engine/conversation-context.ts';
import { compressSystemPrompt } from '../../engine/system-prompt-compression.ts';

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
    .option('--decode-compress <spec>', 'METHOD:BUDGET:EVERY: every EVERY decode steps, the generated rows keep their top BUDGET per KV head (bounded memory for long outputs)', decodeCompressOption)
    .option('--compress <spec>', 'METHOD:RATIO (RATIO a kept fraction or auto): compress the system prompt before the turn (needs --system)', promptCompressOption)
    .option('--protect <p>', `with --compress: ${PROTECT_HELP}`, protectChoiceOption)
    .action(async (o) => {
      if (o.compress && (o.raw || o.system === undefined)) throw new InvalidArgumentError('--compress compresses the system prompt: give --system (and no --raw)');
      if (o.protect !== undefined && !o.compress) throw new InvalidArgumentError('--protect applies to what --compress compresses (the system prompt); give --compress METHOD:RATIO');
      const lm = openModel(o.model, o.weights, o.kvDtype, o);
      const messages = [
        ...(o.system !== undefined ? [{ role: 'system' as const, content: o.system as string }] : []),
        { role: 'user' as const, content: o.prompt as string },
      ];
      if (o.raw && o.system !== undefined) throw new Error('--system cannot be combined with --raw (the raw prompt is fed as is)');
      const compressed = o.compress ? compressSystemPrompt(lm, o.system, o.compress, o.protect) : null;
      const text = o.raw ? (o.prompt as string) : lm.tokenizer.chat.render(messages, { addGenerationPrompt: true });
      const ids = compressed ? continuationIds(lm, compressed.ctx, messages.slice(1)) : lm.tokenizer.encode(text);
      if (compressed?.report.auto && !o.json) process.stderr.write(autoLine(compressed.report.auto));
      const bar = progressBar('prefill', 256);
      let lastCacheBytes = 0;
      const result = await generate(lm, compressed?.session.cache ?? lm.newCache(), ids, {
        maxTokens: o.maxTokens,
        sampling: { temperature: o.temperature, topP: o.topP, topK: o.topK, seed: o.seed },
        stopStrings: o.stop,
        onText: o.json ? undefined : (t) => process.stdout.write(t),
        prefill: { onProgress: (d, t) => bar.update(d, t) },
        decodeCompression: o.decodeCompress,
        onStep: (cache) => (lastCacheBytes = cache.bytes()),
      });
      bar.stop();
      if (o.json) {
        process.stdout.write(
          `${JSON.stringify({
            text: result.text,
            tokens: result.tokens,
            prompt_tokens: result.promptTokens + (compressed ? compressed.ctx.layout.ids.length : 0),
            finish_reason: result.finishReason,
            weights: { kind: weightsLabel(o.weights ?? { kind: 'checkpoint' }), decode_bytes_per_token: decodeWeightBytes(lm.model.weights) },
            kv_dtype: lm.kvDtype,
            ...(compressed
              ? {
                  compress: {
                    method: compressed.report.method,
                    ratio: compressed.report.ratio,
                    protect: compressed.protectLabel,
                    context_tokens: compressed.report.contextTokens,
                    kept_ratio: compressed.report.contextBytesFull ? compressed.report.contextBytesKept / compressed.report.contextBytesFull : 1,
                    ...(compressed.report.auto ? { auto: autoJson(compressed.report.auto) } : {}),
                  },
                }
              : {}),
            ...(result.decodeCompression
              ? { decode_compression: { method: o.decodeCompress.press.name, budget: o.decodeCompress.budget, every: o.decodeCompress.every, compressions: result.decodeCompression.compressions, generated_rows_kept: result.decodeCompression.generatedRows, cache_bytes: lastCacheBytes } }
              : {}),
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
