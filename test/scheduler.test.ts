import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultKvMemoryBytes, KvPool } from '../src/cache/kv-pool.ts';
import { generate } from '../src/engine/generate.ts';
import { DEFAULT_MODEL_DIR, loadModel } from '../src/engine/loaded-model.ts';
import { BatchScheduler } from '../src/engine/scheduler.ts';
import { KvCapacityError, type SequenceEvent, type SequenceRequest, type SharedContext } from '../src/engine/scheduler-types.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';
import { goldenPrompts } from './helpers/tiny-model.ts';

// fp32 activations on every CPU, so a batched step and a sequence run alone agree far below any logit gap.
const lm = loadModel(DEFAULT_MODEL_DIR, { backend: nativeAvailable() ? new NativeBackend({ bf16Activations: false }) : new ReferenceBackend() });
const golden = goldenPrompts();
const prompts = golden.map((g) => g.input_ids);
const MiB = 1 << 20;

/** What generate() gives for the request run alone on a private cache (a copy of the context's, if any). */
async function alone(req: SequenceRequest) {
  const cache = req.context ? req.context.cache.clone(undefined, null) : lm.newCache();
  return generate(lm, cache, req.promptIds, { maxTokens: req.maxTokens, sampling: req.sampling, stopStrings: req.stopStrings });
}

async function collect(events: AsyncIterable<SequenceEvent>): Promise<{ text: string; last: SequenceEvent | undefined; count: number }> {
  let text = '';
  let last: SequenceEvent | undefined;
  let count = 0;
  for await (const e of events) {
    count++;
    last = e;
    if (e.type === 'text') text += e.delta;
  }
  return { text, last, count };
}

test('concurrent requests (different prompts, lengths, sampling) give what each gives alone; events stream the text; the pool returns to its start', async () => {
  const pool = new KvPool(64 * MiB);
  const s = new BatchScheduler(lm, { pool, prefillChunk: 16 });
  const reqs: SequenceRequest[] = prompts.map((p, i) => ({
    promptIds: p,
    maxTokens: 6 + 5 * i,
    sampling: i % 2 === 1 ? { temperature: 0.8, topP: 0.9, seed: 40 + i } : undefined,
  }));
  const handles = reqs.map((r) => s.submit(r));
  assert.equal(s.stats().running + s.stats().queued, reqs.length);
  const streams = handles.map((h) => collect(h.events));
  const results = await Promise.all(handles.map((h) => h.result));
  for (let i = 0; i < reqs.length; i++) {
    const want = await alone(reqs[i]!);
    assert.deepEqual(results[i]!.tokens, want.tokens, `request ${i} tokens`);
    assert.equal(results[i]!.text, want.text);
    assert.equal(results[i]!.finishReason, want.finishReason);
    assert.equal(results[i]!.promptTokens, reqs[i]!.promptIds.length);
    assert.equal(results[i]!.completionTokens, want.tokens.length);
    const st = await streams[i]!;
    assert.equal(st.text, results[i]!.text, 'text deltas add up to the result');
    assert.equal(st.last?.type, 'done');
  }
  await s.drain();
  assert.equal(pool.usedBytes, 0, 'every sequence returned its memory');
  assert.equal(pool.reserved, 0);
  assert.throws(() => s.submit(reqs[0]!), /draining/);
});

test('requests continuing one shared compressed context: tokens as on a private copy, one copy of the context held plus the tails', async () => {
  const pool = new KvPool(64 * MiB);
  const ids = [...prompts[0]!, ...prompts[1]!];
  const cache = lm.newCache(undefined);
  lm.model.forward(ids, cache, { logits: 'none' });
  const rand = seededRandom(3);
  cache.forEachHead((h, l, k) => cache.keep(l, k, Array.from({ length: h.len }, (_, i) => i).filter((i) => i < 4 || rand() < 0.3)));
  const pooled = cache.clone(undefined, pool);
  const ctx: SharedContext = { id: 'ctx', cache: pooled, ids, prefix: { start: 0, end: 4 }, context: { start: 4, end: ids.length }, method: 'random', ratio: 0.3 } as SharedContext;
  const ctxBytes = pool.usedBytes;
  const s = new BatchScheduler(lm, { pool });
  const reqs: SequenceRequest[] = [prompts[2 % prompts.length]!.slice(0, 7), prompts[1]!.slice(0, 4), prompts[0]!.slice(0, 10)].map((p, i) => ({ context: ctx, promptIds: p, maxTokens: 8 + i }));
  const handles = reqs.map((r) => s.submit(r));
  let peakTails = 0;
  const tailBudget = reqs.reduce((a, r) => a + s.requestBytes(r), 0);
  const watch = setInterval(() => (peakTails = Math.max(peakTails, pool.usedBytes - ctxBytes)), 1);
  const results = await Promise.all(handles.map((h) => h.result));
  clearInterval(watch);
  for (let i = 0; i < reqs.length; i++) {
    const want = await alone(reqs[i]!);
    assert.deepEqual(results[i]!.tokens, want.tokens, `request ${i}`);
    assert.equal(results[i]!.cachedTokens, ids.length);
    assert.equal(results[i]!.promptTokens, ids.length + reqs[i]!.promptIds.length);
  }
  assert.ok(peakTails <= tailBudget, `tails took ${peakTails} bytes, more than their ${tailBudget} (was the context copied?)`);
  assert.equal(pool.usedBytes, ctxBytes, 'tails freed; the context stays');
  pooled.release();
  assert.equal(pool.usedBytes, 0);
});

test('a full pool queues requests in order (FCFS) and admits them as memory returns; one larger than the pool is refused clearly', async () => {
  const probe = new BatchScheduler(lm, { pool: new KvPool(1) });
  // Requests of one size (the same prompt), told apart by their sampling seeds.
  const req = (i: number): SequenceRequest => ({ promptIds: prompts[0]!, maxTokens: 5, sampling: { temperature: 1, seed: i } });
  // Room for two requests, not for a third beside them.
  const pool = new KvPool(2 * probe.requestBytes(req(0)) + 100);
  const s = new BatchScheduler(lm, { pool });
  const handles = [0, 1, 2, 3].map((i) => s.submit(req(i)));
  assert.deepEqual({ running: s.stats().running, queued: s.stats().queued }, { running: 2, queued: 2 });
  const results = await Promise.all(handles.map((h) => h.result));
  assert.ok(results[2]!.timings.queuedMs > 0 && results[3]!.timings.queuedMs >= results[2]!.timings.queuedMs, 'later requests waited longer');
  for (let i = 0; i < 4; i++) assert.deepEqual(results[i]!.tokens, (await alone(req(i))).tokens);
  assert.equal(pool.usedBytes, 0);
  assert.throws(
    () => s.submit({ promptIds: prompts[0]!, maxTokens: 100000 }),
    (e: unknown) => e instanceof KvCapacityError && /request needs .* of KV memory \(.* prompt \+ 100000 max tokens .*\), more than the whole pool .*--kv-memory/.test((e as Error).message),
  );
  assert.throws(() => s.submit({ promptIds: [], maxTokens: 1 }), /promptIds must hold at least one token/);
  assert.throws(() => s.submit({ promptIds: [1e9], maxTokens: 1 }), /promptIds\[0\] = 1000000000 is not a token id/);
});

test('cancellation mid-step frees the sequence at once and leaves the others unchanged; an aborted signal cancels too', async () => {
  const pool = new KvPool(64 * MiB);
  const s = new BatchScheduler(lm, { pool });
  const keepReq: SequenceRequest = { promptIds: prompts[1]!, maxTokens: 12 };
  const aReq: SequenceRequest = { promptIds: prompts[0]!, maxTokens: 40 };
  const a = s.submit(aReq);
  const b = s.submit(keepReq);
  const ac = new AbortController();
  const c = s.submit({ promptIds: prompts[0]!, maxTokens: 40, signal: ac.signal });
  // The first step is in flight now (the loop awaits it): cancel while it runs.
  const bytesBefore = pool.usedBytes;
  assert.equal(s.stats().running, 3);
  a.cancel();
  ac.abort();
  const ra = await a.result;
  assert.equal(ra.finishReason, 'cancelled');
  assert.ok(pool.usedBytes <= bytesBefore - s.requestBytes(aReq), 'the cancelled sequence gave its memory back when the step ended');
  assert.equal(ra.completionTokens, 0);
  assert.equal((await c.result).finishReason, 'cancelled');
  const rb = await b.result;
  assert.deepEqual(rb.tokens, (await alone(keepReq)).tokens);
  assert.equal(pool.usedBytes, 0);
  const pre = new AbortController();
  pre.abort();
  assert.equal((await s.submit({ promptIds: prompts[0]!, maxTokens: 3, signal: pre.signal }).result).finishReason, 'cancelled');
});

test('stop strings cut the text before them and end the sequence; max tokens ends with length', async () => {
  const pool = new KvPool(64 * MiB);
  const s = new BatchScheduler(lm, { pool });
  const base = await alone({ promptIds: prompts[0]!, maxTokens: 24 });
  const stop = base.text.slice(Math.floor(base.text.length / 2), Math.floor(base.text.length / 2) + 2);
  assert.ok(stop.length === 2, 'the greedy continuation is long enough to cut');
  const h = s.submit({ promptIds: prompts[0]!, maxTokens: 24, stopStrings: [stop] });
  const [r, st] = await Promise.all([h.result, collect(h.events)]);
  assert.equal(r.finishReason, 'stop');
  assert.equal(r.text, base.text.slice(0, base.text.indexOf(stop)));
  assert.equal(st.text, r.text, 'no part of the stop string was streamed');
  const l = await s.submit({ promptIds: prompts[1]!, maxTokens: 3, stopIds: [] }).result;
  assert.equal(l.finishReason, 'length');
  assert.equal(l.tokens.length, 3);
  assert.equal(pool.usedBytes, 0);
});

test("without a pool given, the scheduler allocates from the model's one KV pool (a quarter of RAM by default)", async () => {
  const s = new BatchScheduler(lm);
  assert.equal(s.stats().poolBytesBudget, defaultKvMemoryBytes());
  assert.equal(lm.kvPool(), lm.kvPool());
  const r = await s.submit({ promptIds: prompts[0]!, maxTokens: 2 }).result;
  assert.equal(r.completionTokens + (r.finishReason === 'stop' ? 1 : 0) > 0, true);
  assert.equal(lm.kvPool().usedBytes, 0);
  assert.throws(() => lm.kvPool(123), /already exists/);
});
