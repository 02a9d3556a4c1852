import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { generate } from '../src/engine/generate.ts';
import { startServer, type RunningServer } from '../src/server/serve.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel(selectBackend());
const MODEL = 'kvlab-tiny-chat';
const KEY_A = 'sk-test-a';
const KEY_B = 'sk-test-b';
const dir = mkdtempSync(join(tmpdir(), 'kvlab-serve-'));
let server: RunningServer;
let a: OpenAI;
let b: OpenAI;

before(async () => {
  server = await startServer({ load: () => lm, port: 0, storeDir: join(dir, 'store'), apiKeys: [KEY_A, KEY_B], log: () => {}, bodyLimitBytes: 256 * 1024 });
  await server.ready;
  a = new OpenAI({ apiKey: KEY_A, baseURL: `${server.url}/v1`, maxRetries: 0 });
  b = new OpenAI({ apiKey: KEY_B, baseURL: `${server.url}/v1`, maxRetries: 0 });
});
after(async () => {
  await server.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

const promptIds = (content: string) => lm.tokenizer.encode(lm.tokenizer.chat.render([{ role: 'user', content }], { addGenerationPrompt: true }));
/** The body field the openai client passes through to name a stored context. */
const onContext = (id: string) => ({ context: id }) as Record<string, unknown>;

async function metric(name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${KEY_A}` } })).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `) || (labels === '' && l.startsWith(`${name} `)));
  return line ? Number(line.split(' ').pop()) : 0;
}

test('chat completions answer as generate() does; streaming chunks add up to the same text with a final usage chunk', async () => {
  const q = 'Tell me a long story.';
  const want = await generate(lm, lm.newCache(), promptIds(q), { maxTokens: 32 });
  const r = await a.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: q }], max_tokens: 32, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0]!.message.content, want.text);
  assert.equal(r.choices[0]!.finish_reason, want.finishReason);
  assert.deepEqual(r.usage, { prompt_tokens: promptIds(q).length, completion_tokens: want.tokens.length, total_tokens: promptIds(q).length + want.tokens.length, prompt_tokens_details: { cached_tokens: 0 } });

  const s = await a.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: q }], max_tokens: 32, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish: string | null = null;
  const usages: unknown[] = [];
  let chunks = 0;
  for await (const chunk of s) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usages.push(chunk.usage);
    if (chunk.choices.length === 0) continue;
    text += chunk.choices[0]!.delta.content ?? '';
    finish = chunk.choices[0]!.finish_reason ?? finish;
  }
  assert.ok(chunks >= 3);
  assert.equal(text, want.text);
  assert.equal(finish, want.finishReason);
  assert.deepEqual(usages, [r.usage], 'exactly one usage chunk, equal to the non-streaming usage');
});

test('max_tokens ends with finish_reason length; stop strings cut the text before them', async () => {
  const q = 'Tell me a long story.';
  const want = await generate(lm, lm.newCache(), promptIds(q), { maxTokens: 64 });
  assert.ok(want.tokens.length > 6 && want.text.length > 12, 'the test needs an answer of several tokens');
  const short = await a.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: q }], max_completion_tokens: 4, temperature: 0 });
  assert.equal(short.choices[0]!.finish_reason, 'length');
  assert.equal(short.usage!.completion_tokens, 4);
  assert.equal(short.choices[0]!.message.content, lm.tokenizer.decode(want.tokens.slice(0, 4), { skipSpecialTokens: true }));
  const stop = want.text.slice(8, 12);
  const cut = await a.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: q }], max_tokens: 64, temperature: 0, stop: [stop] });
  assert.equal(cut.choices[0]!.finish_reason, 'stop');
  assert.equal(cut.choices[0]!.message.content, want.text.slice(0, want.text.indexOf(stop)));
});

test('a context created over HTTP answers concurrent requests as `kvlab compress --ask` does, and is reused by leading messages', async () => {
  const row = qaRows()[0]!;
  const questions = row.questions.slice(0, 3);
  const ctx = await a.post<{ id: string; tokens: number; kept_ratio: number; bytes: number; per_layer_kept: number[]; timings: Record<string, number> }>('/contexts', {
    body: { text: row.context, method: 'snapkv', ratio: 0.3 },
  });
  assert.match(ctx.id, /^ctx_/);
  assert.ok(ctx.kept_ratio > 0.25 && ctx.kept_ratio <= 0.3, String(ctx.kept_ratio));
  assert.equal(ctx.per_layer_kept.length, lm.config.numLayers);
  assert.ok(ctx.bytes > 0 && ctx.timings.prefill_ms! > 0);

  const file = join(dir, 'context.txt');
  writeFileSync(file, row.context);
  const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
  const args = ['compress', '--context', file, '--method', 'snapkv', '--ratio', '0.3', '--max-tokens', '16', '--json', ...questions.flatMap((q) => ['--ask', q])];
  // Asynchronously: the server under test shares this process's event loop.
  const ref = await promisify(execFile)(process.execPath, [cli, ...args], { encoding: 'utf8' });
  const want = (JSON.parse(ref.stdout) as { answers: string[] }).answers;

  const answers = await Promise.all(
    questions.map((q) => a.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: q }], max_tokens: 16, temperature: 0, ...onContext(ctx.id) })),
  );
  assert.deepEqual(answers.map((r) => r.choices[0]!.message.content), want);
  for (const r of answers) assert.equal(r.usage!.prompt_tokens_details!.cached_tokens, ctx.tokens);

  // Without the field: the conversation starts with the context's own message, so the context is reused.
  const auto = await a.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: row.context }, { role: 'user', content: questions[0]! }], max_tokens: 16, temperature: 0 });
  assert.equal(auto.choices[0]!.message.content, want[0]);
  assert.equal(auto.usage!.prompt_tokens_details!.cached_tokens, ctx.tokens);

  // Another key sees nothing: not in its list, 404 by id, and no reuse by prefix.
  const listB = await b.get<{ data: { id: string }[] }>('/contexts');
  assert.ok(!listB.data.some((c) => c.id === ctx.id));
  await assert.rejects(b.get(`/contexts/${ctx.id}`), OpenAI.NotFoundError);
  await assert.rejects(b.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], ...onContext(ctx.id) }), OpenAI.NotFoundError);
  const autoB = await b.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: row.context }, { role: 'user', content: questions[0]! }], max_tokens: 4, temperature: 0 });
  assert.equal(autoB.usage!.prompt_tokens_details!.cached_tokens, 0);

  const listA = await a.get<{ data: { id: string }[] }>('/contexts');
  assert.ok(listA.data.some((c) => c.id === ctx.id));
  await a.delete(`/contexts/${ctx.id}`);
  await assert.rejects(a.get(`/contexts/${ctx.id}`), OpenAI.NotFoundError);
});

test('bad requests are OpenAI error objects raised as the right client error classes', async () => {
  const bad = await a.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], temperature: 7 }).catch((e: unknown) => e);
  assert.ok(bad instanceof OpenAI.BadRequestError);
  assert.equal(bad.param, 'temperature');
  assert.match(bad.message, /temperature must be a number in \[0, 2\]/);
  await assert.rejects(a.chat.completions.create({ model: MODEL, messages: [] }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'messages');
  await assert.rejects(a.chat.completions.create({ model: 'gpt-x', messages: [{ role: 'user', content: 'hi' }] }), OpenAI.NotFoundError);
  const wrongKey = new OpenAI({ apiKey: 'sk-wrong', baseURL: `${server.url}/v1`, maxRetries: 0 });
  await assert.rejects(wrongKey.models.list(), OpenAI.AuthenticationError);
  const long = 'word '.repeat(lm.config.maxPositionEmbeddings);
  await assert.rejects(a.post('/contexts', { body: { text: long.slice(0, 200_000) } }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.code === 'context_length_exceeded');
  await assert.rejects(a.post('/contexts', { body: { text: 'x'.repeat(300 * 1024) } }), (e: unknown) => e instanceof OpenAI.APIError && e.status === 413);
  await assert.rejects(a.post('/contexts', { body: { text: 'doc', method: 'nope' } }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'method');
  const models = await a.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
  const health = await fetch(`${server.url}/health`);
  assert.equal(health.status, 200);
  const raw = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${KEY_A}` }, body: '{not json' });
  assert.equal(raw.status, 400);
  assert.deepEqual(Object.keys(((await raw.json()) as { error: object }).error).sort(), ['code', 'message', 'param', 'type']);
});

test('/health answers 503 while the model loads, then 200; other routes say the model is loading', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const slow = await startServer({ load: async () => (await gate, lm), port: 0, storeDir: null, log: () => {} });
  try {
    assert.equal((await fetch(`${slow.url}/health`)).status, 503);
    const early = await new OpenAI({ apiKey: 'none', baseURL: `${slow.url}/v1`, maxRetries: 0 }).models.list().catch((e: unknown) => e);
    assert.ok(early instanceof OpenAI.InternalServerError && early.status === 503 && early.code === 'model_loading', String(early));
    release();
    await slow.ready;
    assert.equal((await fetch(`${slow.url}/health`)).status, 200);
  } finally {
    await slow.shutdown();
  }
});

test('a full queue is 429 with Retry-After; a client that disconnects cancels its sequence', async () => {
  const tight = await startServer({ load: () => lm, port: 0, storeDir: null, maxQueue: 0, maxBatch: 1, log: () => {} });
  await tight.ready;
  try {
    const client = new OpenAI({ apiKey: 'none', baseURL: `${tight.url}/v1`, maxRetries: 0 });
    const longPrompt = qaRows().slice(0, 2).map((r) => r.context).join('\n');
    const ac = new AbortController();
    const first = client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: longPrompt }], max_tokens: 200, stream: true }, { signal: ac.signal });
    const stats = () => tight.state.scheduler!.stats();
    while (stats().running === 0) await new Promise((r) => setTimeout(r, 5));
    const refused = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    assert.ok(refused instanceof OpenAI.RateLimitError, String(refused));
    assert.equal(refused.headers.get('retry-after'), '1');
    ac.abort();
    await first.then(
      async (s) => {
        for await (const _ of s);
      },
      () => {},
    ).catch(() => {});
    while (stats().running + stats().queued > 0) await new Promise((r) => setTimeout(r, 5));
    assert.equal(stats().poolBytesUsed, 0);
    const text = await (await fetch(`${tight.url}/metrics`)).text();
    assert.match(text, /kvlab_sequences_total\{finish_reason="cancelled"\} 1/);
    assert.match(text, /kvlab_requests_total\{route="\/v1\/chat\/completions",status="429"\} 1/);
    for (const name of ['kvlab_queue_depth', 'kvlab_pool_bytes_used', 'kvlab_pool_bytes_budget', 'kvlab_time_to_first_token_seconds_bucket', 'kvlab_time_per_output_token_seconds_bucket', 'kvlab_prompt_tokens_total']) {
      assert.match(text, new RegExp(`^${name}`, 'm'), name);
    }
  } finally {
    await tight.shutdown();
  }
  assert.ok((await metric('kvlab_prompt_tokens_total')) > 0);
});
