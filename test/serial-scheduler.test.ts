import assert from 'node:assert/strict';
import { test } from 'node:test';
import { generate } from '../src/engine/generate.ts';
import { KvCapacityError, QueueFullError, type SequenceHandle, type SharedContext } from '../src/engine/scheduler-types.ts';
import { SerialScheduler } from '../src/engine/serial-scheduler.ts';
import { getPress } from '../src/press/registry.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel(selectBackend());
const chat = (content: string) => lm.tokenizer.encode(lm.tokenizer.chat.render([{ role: 'user', content }], { addGenerationPrompt: true }));

async function streamed(h: SequenceHandle): Promise<string> {
  let text = '';
  for await (const e of h.events) if (e.type === 'text') text += e.delta;
  return text;
}

test('a sequence gives what generate() gives on the same prompt, streamed deltas adding up to the text', async () => {
  const s = new SerialScheduler(lm);
  const prompt = chat('Say the word gumo.');
  const want = await generate(lm, lm.newCache(), prompt, { maxTokens: 16 });
  const h = s.submit({ promptIds: prompt, maxTokens: 16 });
  const [text, r] = await Promise.all([streamed(h), h.result]);
  assert.deepEqual(r.tokens, want.tokens);
  assert.equal(r.text, want.text);
  assert.equal(text, r.text);
  assert.equal(r.finishReason, want.finishReason);
  assert.equal(r.promptTokens, prompt.length);
  assert.equal(r.cachedTokens, 0);
  assert.equal(r.completionTokens, r.tokens.length);
  if (want.text.length >= 3) {
    const stop = want.text.slice(1, 3);
    const cut = await s.submit({ promptIds: prompt, maxTokens: 16, stopStrings: [stop] }).result;
    assert.equal(cut.text, want.text.slice(0, want.text.indexOf(stop)));
    assert.equal(cut.finishReason, 'stop');
  }
});

test('sequences on one shared compressed context answer as ContextSession.ask does, and leave it unchanged', async () => {
  const row = qaRows()[0]!;
  const session = lm.openContext(row.context);
  session.compress(getPress('snapkv'), 0.5);
  const before = session.cache.lengths();
  const nextPos = session.cache.nextPos;
  const shared: SharedContext = { id: 'ctx_t', cache: session.cache, ids: session.ids, prefix: session.prefix, context: session.context, method: 'snapkv', ratio: 0.5 };
  const s = new SerialScheduler(lm);
  const questions = row.questions.slice(0, 3);
  const handles = questions.map((q) => s.submit({ context: shared, promptIds: session.queryIds(q), maxTokens: 12 }));
  assert.equal(s.stats().queued + s.stats().running, 3);
  const results = await Promise.all(handles.map((h) => h.result));
  for (const [i, q] of questions.entries()) {
    const want = await session.ask(q, { maxTokens: 12 });
    assert.equal(results[i]!.text, want.text, q);
    assert.equal(results[i]!.cachedTokens, session.ids.length);
    assert.equal(results[i]!.promptTokens, session.ids.length + session.queryIds(q).length);
  }
  assert.deepEqual(session.cache.lengths(), before);
  assert.equal(session.cache.nextPos, nextPos);
  assert.deepEqual(s.stats(), { running: 0, queued: 0, poolBytesUsed: 0, poolBytesBudget: s.stats().poolBytesBudget });
});

test('cancelling a running or queued sequence ends it as cancelled and frees its rows; aborted signals cancel too', async () => {
  const s = new SerialScheduler(lm);
  const prompt = chat('Tell me a long story.');
  const running = s.submit({ promptIds: prompt, maxTokens: 200, stopIds: [] });
  const ac = new AbortController();
  const queued = s.submit({ promptIds: prompt, maxTokens: 200, signal: ac.signal });
  ac.abort();
  const q = await queued.result;
  assert.equal(q.finishReason, 'cancelled');
  assert.equal(q.completionTokens, 0);
  let deltas = 0;
  for await (const e of running.events) {
    if (e.type === 'text' && ++deltas === 3) running.cancel();
    if (e.type === 'done') {
      assert.equal(e.result.finishReason, 'cancelled');
      assert.ok(e.result.completionTokens < 200);
    }
  }
  assert.equal((await running.result).finishReason, 'cancelled');
  assert.equal(s.stats().poolBytesUsed, 0);
});

test('a full queue, a sequence larger than the budget and a draining scheduler are refused', async () => {
  const prompt = chat('Hi');
  const small = new SerialScheduler(lm, { maxQueue: 1, kvMemoryBytes: 40 * lm.config.numLayers * lm.config.numKvHeads * lm.newCache().rowBytes });
  assert.throws(() => small.submit({ promptIds: prompt, maxTokens: 100 }), KvCapacityError);
  const a = small.submit({ promptIds: prompt, maxTokens: 4 });
  const b = small.submit({ promptIds: prompt, maxTokens: 4 });
  assert.throws(() => small.submit({ promptIds: prompt, maxTokens: 4 }), (e: unknown) => e instanceof QueueFullError && e.retryAfterSeconds >= 1);
  const drained = small.drain();
  assert.throws(() => small.submit({ promptIds: prompt, maxTokens: 4 }), QueueFullError);
  await drained;
  for (const h of [a, b]) assert.notEqual((await h.result).finishReason, 'cancelled');
  assert.throws(() => new SerialScheduler(lm).submit({ promptIds: Array(lm.config.maxPositionEmbeddings + 1).fill(1), maxTokens: 1 }), /longer than the model allows/);
});
