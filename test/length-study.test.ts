import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_MODEL_DIR, loadModel } from '../src/engine/loaded-model.ts';
import { loadQa } from '../src/eval/datasets.ts';
import { changeHistogram, impliedE2eMs, lengthPlots, lengthUnitKey, runLengthStudy, summarizeLengths, type LengthSample } from '../src/eval/length-study.ts';
import { getPress } from '../src/press/registry.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';

const sample = (method: string, ratio: number, tokens: number, full: number, max = 10): LengthSample => ({
  id: 'r',
  question_index: 0,
  mode: 'greedy',
  method,
  ratio,
  tokens,
  full_tokens: full,
  hit_max: tokens >= max,
  full_hit_max: full >= max,
  ttft_ms: 0,
  decode_ms: 0,
});

test('length summary on a fixture: the hand-counted mean change, 1.5x share, max-token share and implied latency', () => {
  // Four answers under kvzip@0.3 against the full cache's: 4->6 (1.5x), 2->2, 0->1 (counts as 1 -> 1: not 1.5x), 3->10 (hits max 10).
  const fixture = [sample('kvzip', 0.3, 6, 4), sample('kvzip', 0.3, 2, 2), sample('kvzip', 0.3, 1, 0), sample('kvzip', 0.3, 10, 3), sample('kvzip', 0.1, 1, 4)];
  const latency = { ttftMs: 100, tpotMs: 10 };
  assert.equal(impliedE2eMs(latency, 0), 100);
  assert.equal(impliedE2eMs(latency, 6), 150);
  const [at3, at1] = summarizeLengths(fixture, latency);
  assert.equal(at3!.n, 4);
  assert.equal(at3!.mean_tokens, 19 / 4);
  assert.equal(at3!.mean_full_tokens, 9 / 4);
  assert.equal(at3!.mean_change, 10 / 4);
  assert.equal(at3!.share_longer_1_5x, 2 / 4);
  assert.equal(at3!.share_shorter, 0);
  assert.equal(at3!.share_hit_max, 1 / 4);
  // e2e: 150, 110, 100, 190 vs full 130, 110, 100, 120.
  assert.equal(at3!.implied_e2e_ms, 550 / 4);
  assert.equal(at3!.implied_e2e_vs_full, 550 / 460);
  assert.equal(at1!.share_shorter, 1);
  assert.deepEqual(changeHistogram([-5, -1, 0, 0, 2, 9], -2, 3), [
    { change: -2, count: 1 },
    { change: -1, count: 1 },
    { change: 0, count: 2 },
    { change: 1, count: 0 },
    { change: 2, count: 1 },
    { change: 3, count: 1 },
  ]);
  const plots = lengthPlots(fixture, [at3!, at1!]);
  assert.deepEqual(Object.keys(plots).sort(), ['length-change-greedy-0.1.svg', 'length-change-greedy-0.3.svg', 'longer-1.5x-greedy.svg']);
});

test('on the embedded model: full-cache lengths are the session answers, and each compressed answer is paired with them', async () => {
  const lm = loadModel(DEFAULT_MODEL_DIR, { backend: nativeAvailable() ? new NativeBackend({ bf16Activations: false }) : new ReferenceBackend() });
  const row = loadQa('data/dev/qa.jsonl').find((r) => (r.context_tokens ?? 0) < 500)!;
  const samples = await runLengthStudy(lm, [row], { methods: ['streamingllm'], ratios: [1, 0.2], queryTemplate: 'Question: {query}', maxTokens: 6, temperature: 0, seed: 1 });
  assert.equal(samples.length, row.questions.length * 2, 'ratio 1 runs once, as the full cache');
  const full = samples.filter((s) => s.method === 'full');
  const compressed = samples.filter((s) => s.method === 'streamingllm');
  const plain = lm.openContext(row.context, { queryTemplate: 'Question: {query}' });
  const squeezed = lm.openContext(row.context, { queryTemplate: 'Question: {query}' });
  squeezed.compress(getPress('streamingllm'), 0.2);
  for (const [qi, q] of row.questions.entries()) {
    const f = full.find((s) => s.question_index === qi)!;
    const c = compressed.find((s) => s.question_index === qi)!;
    assert.equal(f.tokens, (await plain.ask(`Question: ${q}`, { maxTokens: 6 })).tokens.length);
    assert.equal(c.tokens, (await squeezed.ask(`Question: ${q}`, { maxTokens: 6 })).tokens.length);
    assert.equal(c.full_tokens, f.tokens);
    assert.equal(c.hit_max, c.tokens >= 6);
  }
});

test('resumed units are used as they are: answers are paired with the full cache by question and decoding', async () => {
  const row = { id: 'r', context: 'Document:\nx', questions: ['q0', 'q1'], answers: ['a', 'b'] };
  const g = (method: string, ratio: number, qi: number, mode: 'greedy' | 'sampled', tokens: number) => ({ question_index: qi, mode, method, ratio, tokens, ttft_ms: 1, decode_ms: 2 });
  const resumed = new Map([
    [lengthUnitKey('full', 0, 'r'), [g('full', 1, 0, 'greedy', 3), g('full', 1, 0, 'sampled', 5), g('full', 1, 1, 'greedy', 2), g('full', 1, 1, 'sampled', 8)]],
    [lengthUnitKey('knorm', 0, 'r'), [g('knorm', 0.5, 0, 'greedy', 8), g('knorm', 0.5, 0, 'sampled', 1), g('knorm', 0.5, 1, 'greedy', 2), g('knorm', 0.5, 1, 'sampled', 8)]],
  ]);
  // No model is touched when every unit is resumed.
  const samples = await runLengthStudy(null as never, [row], { methods: ['knorm'], ratios: [0.5], queryTemplate: '{query}', maxTokens: 8, temperature: 0.5, seed: 1, resumed });
  const knorm = samples.filter((s) => s.method === 'knorm').map((s) => [s.question_index, s.mode, s.tokens, s.full_tokens, s.hit_max, s.full_hit_max]);
  assert.deepEqual(knorm, [
    [0, 'greedy', 8, 3, true, false],
    [0, 'sampled', 1, 5, false, false],
    [1, 'greedy', 2, 2, false, false],
    [1, 'sampled', 8, 8, true, true],
  ]);
});
