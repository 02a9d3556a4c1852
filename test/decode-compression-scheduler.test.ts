import assert from 'node:assert/strict';
import { test } from 'node:test';
import { blockRows, kvRowBytes, KvPool } from '../src/cache/kv-pool.ts';
import { DecodeCompressionError, parseDecodeCompression } from '../src/engine/decode-compression.ts';
import { generate } from '../src/engine/generate.ts';
import { DEFAULT_MODEL_DIR, loadModel } from '../src/engine/loaded-model.ts';
import { BatchScheduler } from '../src/engine/scheduler.ts';
import { SerialScheduler } from '../src/engine/serial-scheduler.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';
import { goldenPrompts } from './helpers/tiny-model.ts';

// fp32 activations, so a batched step and a sequence run alone agree (as in scheduler.test.ts).
const lm = loadModel(DEFAULT_MODEL_DIR, { backend: nativeAvailable() ? new NativeBackend({ bf16Activations: false }) : new ReferenceBackend() });
const prompts = goldenPrompts().map((g) => g.input_ids);
const MiB = 1 << 20;

test('batched decoding-time compression gives what generate() gives alone with it, and promises only prompt + budget + every rows', async () => {
  const pool = new KvPool(64 * MiB);
  const s = new BatchScheduler(lm, { pool, prefillChunk: 16 });
  const dc = parseDecodeCompression('keydiff:8:3');
  const reqs = [
    { promptIds: prompts[0]!, maxTokens: 40, stopIds: [], decodeCompression: dc },
    { promptIds: prompts[1]!, maxTokens: 24, stopIds: [] },
    { promptIds: prompts[2]!, maxTokens: 36, stopIds: [], decodeCompression: parseDecodeCompression('knorm:5:1') },
  ];
  const cfg = lm.config;
  const heads = cfg.numLayers * cfg.numKvHeads;
  assert.equal(s.requestBytes(reqs[0]!), heads * blockRows(prompts[0]!.length + 8 + 3) * kvRowBytes(cfg.headDim, 'f32'));
  assert.equal(s.requestBytes(reqs[1]!), heads * blockRows(prompts[1]!.length + 24) * kvRowBytes(cfg.headDim, 'f32'));
  const results = await Promise.all(reqs.map((r) => s.submit(r).result));
  for (const [i, r] of reqs.entries()) {
    const cache = lm.newCache();
    const solo = await generate(lm, cache, r.promptIds, { maxTokens: r.maxTokens, stopIds: [], decodeCompression: r.decodeCompression });
    assert.deepEqual(results[i]!.tokens, solo.tokens, `request ${i}`);
    if (r.decodeCompression) assert.equal(solo.decodeCompression!.generatedRows <= r.decodeCompression.budget + r.decodeCompression.every - 1, true);
  }
  await s.drain();
  assert.equal(pool.usedBytes, 0);
  assert.equal(pool.reserved, 0);
});

test('the batching scheduler refuses scorers that read decode queries', () => {
  const s = new BatchScheduler(lm, { pool: new KvPool(16 * MiB) });
  assert.throws(() => s.submit({ promptIds: prompts[0]!, maxTokens: 8, decodeCompression: parseDecodeCompression('snapkv:8:2') }), DecodeCompressionError);
  assert.throws(() => s.submit({ promptIds: prompts[0]!, maxTokens: 8, decodeCompression: parseDecodeCompression('snapkv:8:2') }), /batched steps do not record/);
});

test('the serial scheduler runs decoding-time compression (query-reading scorers too) as generate() does, and a shared context comes back whole', async () => {
  const serial = new SerialScheduler(lm);
  for (const spec of ['knorm:6:2', 'snapkv:6:1']) {
    const dc = parseDecodeCompression(spec);
    const r = await serial.submit({ promptIds: prompts[1]!, maxTokens: 30, stopIds: [], decodeCompression: dc }).result;
    const solo = await generate(lm, lm.newCache(), prompts[1]!, { maxTokens: 30, stopIds: [], decodeCompression: dc });
    assert.deepEqual(r.tokens, solo.tokens, spec);
  }
  const context = lm.newCache();
  await generate(lm, context, prompts[0]!, { maxTokens: 1 });
  const before = context.lengths();
  const keys = context.head(0, 0).keys();
  const shared = { id: 'ctx', cache: context, ids: prompts[0]!, prefix: { start: 0, end: 0 }, context: { start: 0, end: prompts[0]!.length }, method: 'none', ratio: 1 };
  await serial.submit({ context: shared, promptIds: prompts[2]!, maxTokens: 20, stopIds: [], decodeCompression: parseDecodeCompression('keydiff:4:1') }).result;
  assert.deepEqual(context.lengths(), before);
  assert.deepEqual(context.head(0, 0).keys(), keys);
  await serial.drain();
});
