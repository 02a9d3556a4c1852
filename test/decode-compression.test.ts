import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KvCache } from '../src/cache/kv-cache.ts';
import { DecodeCompressionError, parseDecodeCompression } from '../src/engine/decode-compression.ts';
import { generate } from '../src/engine/generate.ts';
import { norm } from '../src/press/per-head.ts';
import { getPress } from '../src/press/registry.ts';
import { topKIndices } from '../src/press/topk.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel(selectBackend());
const prompt = lm.tokenizer.encode(lm.tokenizer.chat.render([{ role: 'user', content: 'Tell me a long story about the code of tean.' }], { addGenerationPrompt: true }));
const P = prompt.length;

function generatedRows(cache: KvCache): number[] {
  return cache.heads.flat().map((s) => s.len - P);
}

function promptRowsIntact(cache: KvCache, reference: KvCache): void {
  cache.forEachHead((s, l, h) => {
    const r = reference.head(l, h);
    assert.deepEqual(s.pos.subarray(0, P), r.pos.subarray(0, P));
    assert.deepEqual(s.keys(0, P), r.keys(0, P));
  });
}

for (const method of ['knorm', 'snapkv']) {
  test(`${method}: a generation of 4x the budget keeps every head's generated rows at the budget, asserted at every step (every 1)`, async () => {
    const budget = 12;
    const reference = lm.newCache();
    await generate(lm, reference, prompt, { maxTokens: 1, stopIds: [] });
    const cache = lm.newCache();
    let steps = 0;
    const r = await generate(lm, cache, prompt, {
      maxTokens: 4 * budget,
      stopIds: [],
      decodeCompression: parseDecodeCompression(`${method}:${budget}:1`),
      onStep: (c, step) => {
        steps++;
        assert.deepEqual(generatedRows(c), new Array(c.numLayers * c.numKvHeads).fill(Math.min(step, budget)), `step ${step}`);
        assert.equal(c.nextPos, P + step, 'positions continue as if nothing was evicted');
      },
    });
    assert.equal(r.tokens.length, 4 * budget);
    assert.equal(steps, 4 * budget - 1);
    assert.equal(r.decodeCompression!.compressions, 4 * budget - 1 - budget);
    assert.equal(r.decodeCompression!.generatedRows, budget);
    promptRowsIntact(cache, reference);
  });
}

test('every N: the generated part grows to budget + N - 1 at most and is back at the budget after each compression', async () => {
  const budget = 10;
  const every = 4;
  const seen: number[] = [];
  await generate(lm, lm.newCache(), prompt, {
    maxTokens: 4 * budget,
    stopIds: [],
    decodeCompression: parseDecodeCompression(`keydiff:${budget}:${every}`),
    onStep: (c) => {
      const rows = new Set(generatedRows(c));
      assert.equal(rows.size, 1, 'every head holds as many generated rows');
      seen.push([...rows][0]!);
    },
  });
  assert.ok(Math.max(...seen) <= budget + every - 1, `max ${Math.max(...seen)}`);
  // First compression when the part passes the budget; afterwards every `every` steps exactly.
  const compressedAt = seen.map((g, i) => (i > 0 && g < seen[i - 1]! ? i : -1)).filter((i) => i >= 0);
  assert.ok(compressedAt.length >= 5);
  for (const i of compressedAt) assert.equal(seen[i], budget);
  for (let k = 1; k < compressedAt.length; k++) assert.equal(compressedAt[k]! - compressedAt[k - 1]!, every);
});

test('the rows kept are the scorer top-k: K-norm against the norms of an uncompressed run (same greedy tokens up to then)', async () => {
  const budget = 8;
  const steps = budget + 1; // the first compression happens at this step
  let kept: Int32Array[] = [];
  const compressed = await generate(lm, lm.newCache(), prompt, {
    maxTokens: steps + 1,
    stopIds: [],
    decodeCompression: parseDecodeCompression(`knorm:${budget}:1`),
    onStep: (c, step) => {
      if (step === steps) kept = c.heads.flat().map((s) => s.pos.slice(P, s.len));
    },
  });
  const full = lm.newCache();
  const plain = await generate(lm, full, prompt, { maxTokens: steps + 1, stopIds: [] });
  assert.deepEqual(compressed.tokens.slice(0, steps), plain.tokens.slice(0, steps));
  const expected = full.heads.flat().map((s) => {
    const d = s.headDim;
    const keys = s.keys(P, P + steps);
    const scores = Float32Array.from({ length: steps }, (_, j) => -norm(keys.subarray(j * d, (j + 1) * d)));
    return Int32Array.from(topKIndices(scores, budget), (j) => P + j);
  });
  assert.deepEqual(kept, expected);
});

test('bad specs and scorers decoding cannot feed are refused by name', async () => {
  assert.throws(() => parseDecodeCompression('knorm:16'), /METHOD:BUDGET:EVERY/);
  assert.throws(() => parseDecodeCompression('knorm:0:4'), /budget must be an integer >= 1/);
  assert.throws(() => parseDecodeCompression('knorm:8:1.5'), /interval must be an integer >= 1/);
  assert.throws(() => parseDecodeCompression('nosuch:8:4'), DecodeCompressionError);
  assert.throws(() => parseDecodeCompression('h2o:8:4'), /h2o needs the attention every prefill query gave/);
  assert.throws(() => parseDecodeCompression('expected-attention:8:4'), /query statistics/);
  assert.equal(parseDecodeCompression('adakv:knorm:8:4').press.name, 'adakv:knorm');
  await assert.rejects(
    generate(lm, lm.newCache(), prompt, { maxTokens: 8, stopIds: [], decodeCompression: parseDecodeCompression('kvzip:2:1') }),
    /kvzip runs the model on the context, which decoding-time compression cannot do/,
  );
});

test('without decodeCompression the generation is unchanged (same tokens, full cache)', async () => {
  const a = lm.newCache();
  const b = lm.newCache();
  const x = await generate(lm, a, prompt, { maxTokens: 20, stopIds: [] });
  const y = await generate(lm, b, prompt, { maxTokens: 20, stopIds: [], decodeCompression: { press: getPress('knorm'), budget: 1000, every: 1 } });
  assert.deepEqual(x.tokens, y.tokens);
  assert.deepEqual(a.lengths(), b.lengths());
  assert.equal(y.decodeCompression!.compressions, 0);
});

test('snapkv during decoding: the rows kept at the first compression are what SnapKV keeps over the generated rows with queries from a prefill of the same tokens', async () => {
  const { KvCache } = await import('../src/cache/kv-cache.ts');
  const { snapKvScorer } = await import('../src/press/methods/snapkv.ts');
  const { ContextSession } = await import('../src/engine/context-session.ts');
  const { userContextLayout } = await import('../src/model/prompt-layout.ts');
  const ref = tinyModel();
  const budget = 70;
  const steps = 100; // compressing every 100 steps: the first compression keeps the 64-row window and 6 of 36 older rows by attention
  let kept: Int32Array[] = [];
  const run = await generate(ref, ref.newCache(), prompt, {
    maxTokens: steps + 1,
    stopIds: [],
    decodeCompression: parseDecodeCompression(`snapkv:${budget}:${steps}`),
    onStep: (c, step) => {
      if (step === steps) kept = c.heads.flat().map((s) => s.pos.slice(P, s.len));
    },
  });
  const ids = [...prompt, ...run.tokens.slice(0, steps)];
  const cfg = ref.config;
  const row = cfg.numHeads * cfg.headDim;
  const full = ref.newCache();
  const queries = Array.from({ length: cfg.numLayers }, () => new Float32Array(steps * row));
  ref.model.forward(ids, full, {
    logits: 'none',
    onLayer: (c) => {
      for (let i = 0; i < c.n; i++) if (c.positions[i]! >= P) queries[c.layer]!.set(c.q.subarray(i * row, (i + 1) * row), (c.positions[i]! - P) * row);
    },
  });
  const view = new KvCache(cfg.numLayers, cfg.numKvHeads, cfg.headDim);
  const rows = Int32Array.from({ length: steps }, (_, j) => j);
  full.forEachHead((s, l, h) => view.head(l, h).load(rows, s.keys(P, P + steps), s.values(P, P + steps)));
  const session = new ContextSession(ref, userContextLayout(ref, 'x'));
  const scores = snapKvScorer().score({
    lm: session.scoringModel(),
    cache: view,
    ids: [],
    span: { start: 0, end: steps },
    prefix: { start: 0, end: 0 },
    suffix: '',
    queryLead: '',
    keys: 'causal',
    capture: { queryPositions: rows, queries, queriesPreRope: queries },
  });
  const expected = scores.flat().map((s) => Int32Array.from(topKIndices(s, budget), (j) => P + j));
  assert.deepEqual(kept, expected);
  assert.ok(expected.some((k) => k[0] !== P + steps - budget), 'attention, not recency alone, decided some head');
});

test('bench quarters: tokens/s per quarter from step end times, and the median step per quarter, hand-worked', async () => {
  const { quarterRates } = await import('../src/bench/decode-compression-bench.ts');
  // 9 step ends: 8 intervals, 2 per quarter: [2,2], [4,4], [1,3], [10,10] ms.
  const stamps = [0, 2, 4, 8, 12, 13, 16, 26, 36];
  const r = quarterRates(stamps);
  assert.deepEqual(r.tokensPerSecondByQuarter, [500, 250, 500, 100]);
  assert.deepEqual(r.medianStepTokensPerSecondByQuarter, [500, 250, 500, 100]);
  const uneven = quarterRates([0, 1, 2, 3, 4, 14, 15, 16, 17, 18, 19]); // intervals 1,1 | 1,1 | 10,1 | 1,1 and the last 2 left out
  assert.deepEqual(uneven.tokensPerSecondByQuarter, [1000, 1000, (1000 * 2) / 11, 1000]);
  assert.throws(() => quarterRates([0, 1, 2, 3]), /make no quarter/);
});
