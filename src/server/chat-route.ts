import { randomBytes, randomInt } from 'node:crypto';
import type { Context } from 'hono';
import { stream } from 'hono/streaming';
import { continuationIds } from '../engine/conversation-context.ts';
import { DecodeCompressionError, parseDecodeCompression, type DecodeCompression } from '../engine/decode-compression.ts';
import { KvCapacityError, QueueFullError, type SequenceHandle, type SequenceResult, type SharedContext } from '../engine/scheduler-types.ts';
import { ApiError, badRequest } from './api-error.ts';
import { readJson, type AppEnv, type AppOptions, type ReadyState } from './app.ts';
import { ContextUnavailableError, type ContextRecord } from './context-store.ts';
import { parseChatRequest, type ChatRequest } from './validate.ts';

/**
 * POST /v1/chat/completions. The prompt is the whole conversation, unless it continues a stored context:
 * one named by the `context` field, or the caller's context whose messages lead the request's. Then only
 * the rest is prefilled, on top of the compressed rows, and usage counts the context's tokens as cached.
 */
export async function chatCompletion(c: Context<AppEnv>, s: ReadyState, opts: AppOptions): Promise<Response> {
  const req = parseChatRequest(await readJson(c));
  if (req.model !== s.modelId) throw new ApiError(404, `The model '${req.model}' does not exist; this server serves '${s.modelId}'`, 'model', 'model_not_found');
  const { shared, promptIds } = await prompt(c.get('tenant'), req, s);
  const limit = s.lm.config.maxPositionEmbeddings;
  const total = (shared?.cache.nextPos ?? 0) + promptIds.length;
  if (total >= limit) {
    throw badRequest(`This model's maximum context length is ${limit} tokens. However, your messages resulted in ${total} tokens.`, 'messages', 'context_length_exceeded');
  }
  const maxTokens = Math.min(req.maxTokens ?? opts.defaultMaxTokens, limit - total);
  let decodeCompression: DecodeCompression | undefined;
  try {
    decodeCompression = req.decodeCompress === null ? undefined : parseDecodeCompression(req.decodeCompress);
  } catch (e) {
    throw badRequest((e as Error).message, 'decode_compress', 'invalid_value');
  }
  const abort = new AbortController();
  const clientGone = c.req.raw.signal;
  const onGone = () => abort.abort();
  clientGone.addEventListener('abort', onGone, { once: true });
  let handle: SequenceHandle;
  try {
    handle = s.scheduler.submit({
      context: shared,
      promptIds,
      maxTokens,
      sampling: { temperature: req.temperature, topP: req.topP, seed: req.seed ?? randomInt(2 ** 31) },
      stopStrings: req.stop,
      signal: abort.signal,
      ...(decodeCompression ? { decodeCompression } : {}),
    });
  } catch (e) {
    clientGone.removeEventListener('abort', onGone);
    if (e instanceof QueueFullError) throw new ApiError(429, `${e.message}; retry after ${e.retryAfterSeconds} s`, null, 'queue_full', { 'Retry-After': String(e.retryAfterSeconds) });
    if (e instanceof KvCapacityError) throw badRequest(e.message, 'max_tokens', 'kv_capacity');
    if (e instanceof DecodeCompressionError) throw badRequest(e.message, 'decode_compress', 'unsupported_value');
    if (e instanceof RangeError) throw badRequest(e.message, 'messages', 'invalid_value');
    throw e;
  }
  handle.result.then(
    (r) => {
      clientGone.removeEventListener('abort', onGone);
      record(opts, r);
    },
    () => clientGone.removeEventListener('abort', onGone),
  );
  const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
  const created = Math.floor(Date.now() / 1000);
  if (!req.stream) {
    const r = await handle.result;
    return c.json({
      id,
      object: 'chat.completion',
      created,
      model: s.modelId,
      choices: [{ index: 0, message: { role: 'assistant', content: r.text, refusal: null }, logprobs: null, finish_reason: finishReason(r) }],
      usage: usage(r),
    });
  }

  c.header('Content-Type', 'text/event-stream');
  c.header('Cache-Control', 'no-cache');
  c.header('X-Accel-Buffering', 'no');
  return stream(
    c,
    async (out) => {
      out.onAbort(() => abort.abort());
      const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
        out.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: s.modelId, choices, ...(req.includeUsage ? { usage: null } : {}), ...extra })}\n\n`);
      await chunk([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
      for await (const e of handle.events) {
        if (out.aborted) break;
        if (e.type === 'text') await chunk([{ index: 0, delta: { content: e.delta }, logprobs: null, finish_reason: null }]);
        else {
          if (e.result.finishReason === 'cancelled') break;
          await chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: finishReason(e.result) }]);
          if (req.includeUsage) await chunk([], { usage: usage(e.result) });
        }
      }
      if (!out.aborted) await out.write('data: [DONE]\n\n');
    },
    async (err, out) => {
      abort.abort();
      const body = err instanceof ApiError ? err.toJSON() : new ApiError(500, `generation failed: ${err.message}`, null, 'internal_error').toJSON();
      await out.write(`data: ${JSON.stringify(body)}\n\n`);
    },
  );
}

/** The stored context this request continues (if any) and the token ids to prefill on top of it. */
async function prompt(tenant: string, req: ChatRequest, s: ReadyState): Promise<{ shared?: SharedContext; promptIds: number[] }> {
  let record: ContextRecord | undefined;
  let rest = req.messages;
  if (req.context !== null) {
    record = s.store.get(tenant, req.context);
    if (!record) throw new ApiError(404, `no context '${req.context}'`, 'context', 'context_not_found');
    if (leads(record, req.messages)) rest = req.messages.slice(record.messages.length);
  } else {
    record = s.store.match(tenant, req.messages);
    if (record) rest = req.messages.slice(record.messages.length);
  }
  if (!record) return { promptIds: s.lm.tokenizer.encode(s.lm.tokenizer.chat.render(req.messages, { addGenerationPrompt: true })) };
  if (rest.some((m) => m.role === 'system')) throw badRequest(`a request on context ${record.id} cannot add a system message; the context fixed it`, 'messages', 'invalid_value');
  let shared: SharedContext;
  try {
    shared = await s.store.shared(tenant, record.id);
  } catch (e) {
    if (e instanceof ContextUnavailableError) throw new ApiError(500, e.message, 'context', 'context_unavailable');
    throw e;
  }
  try {
    return { shared, promptIds: continuationIds(s.lm, record, rest) };
  } catch (e) {
    throw badRequest((e as Error).message, 'messages', 'invalid_value');
  }
}

function leads(record: ContextRecord, messages: ChatRequest['messages']): boolean {
  return record.messages.length <= messages.length && record.messages.every((m, i) => m.role === messages[i]!.role && m.content === messages[i]!.content);
}

function finishReason(r: SequenceResult): 'stop' | 'length' {
  return r.finishReason === 'length' ? 'length' : 'stop';
}

function usage(r: SequenceResult) {
  return {
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
    total_tokens: r.promptTokens + r.completionTokens,
    prompt_tokens_details: { cached_tokens: r.cachedTokens },
  };
}

function record(opts: AppOptions, r: SequenceResult): void {
  const m = opts.metrics;
  m.sequences.inc({ finish_reason: r.finishReason });
  m.promptTokens.inc(r.promptTokens);
  m.cachedTokens.inc(r.cachedTokens);
  m.completionTokens.inc(r.completionTokens);
  if (r.completionTokens > 0) m.ttft.observe(r.timings.ttftMs / 1000);
  if (r.completionTokens > 1) m.tpot.observe(r.timings.tpotMs / 1000);
}
