import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { generate } from '../src/engine/generate.ts';
import { argmax, Sampler } from '../src/engine/sampler.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel(selectBackend());
const prompt = lm.tokenizer.encode(lm.tokenizer.chat.render([{ role: 'user', content: 'Say the word gumo.' }], { addGenerationPrompt: true }));

test('sampling: greedy is argmax with ties to the lowest id; seeds reproduce; top-k 1 is greedy', () => {
  const logits = Float32Array.from([0.1, 2, 2, -1]);
  assert.equal(argmax(logits), 1);
  assert.equal(new Sampler().sample(logits), 1);
  const draw = (seed: number) => Array.from({ length: 50 }, ((s) => () => s.sample(Float32Array.from([1, 1.2, 0.8, 1.1])))(new Sampler({ temperature: 1, seed })));
  assert.deepEqual(draw(3), draw(3));
  assert.notDeepEqual(draw(3), draw(4));
  assert.ok(new Set(draw(3)).size > 1, 'temperature 1 explores');
  const topk = new Sampler({ temperature: 5, topK: 1, seed: 1 });
  for (let i = 0; i < 20; i++) assert.equal(topk.sample(logits), 1);
  const topp = new Sampler({ temperature: 1, topP: 0.01, seed: 9 });
  for (let i = 0; i < 20; i++) assert.equal(topp.sample(Float32Array.from([0, 5, 1])), 1);
  assert.throws(() => new Sampler({ topP: 0 }), /top-p/);
  assert.throws(() => new Sampler({ temperature: -1 }), /temperature/);
});

test('generation stops at max tokens, and stop strings cut the text before them', async () => {
  const free = await generate(lm, lm.newCache(), prompt, { maxTokens: 12 });
  assert.ok(free.tokens.length <= 12);
  if (free.finishReason === 'length') assert.equal(free.tokens.length, 12);
  const text = free.text;
  if (text.length >= 3) {
    const stop = text.slice(1, 3);
    const cut = await generate(lm, lm.newCache(), prompt, { maxTokens: 12, stopStrings: [stop] });
    assert.equal(cut.finishReason, 'stop');
    assert.equal(cut.text, text.slice(0, text.indexOf(stop)));
  }
  let streamed = '';
  const s = await generate(lm, lm.newCache(), prompt, { maxTokens: 12, onText: (t) => (streamed += t) });
  assert.equal(streamed, s.text, 'streamed deltas add up to the text');
  const stopAll = await generate(lm, lm.newCache(), prompt, { maxTokens: 12, stopIds: [free.tokens[0]!] });
  assert.deepEqual(stopAll.tokens, []);
  assert.equal(stopAll.finishReason, 'stop');
});

test('kvlab chat keeps a multi-turn conversation and reuses its cache', () => {
  const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
  const r = spawnSync(process.execPath, [cli, 'chat', '--system', 'Your name is Orion.', '--max-tokens', '8'], {
    input: 'What is your name?\nSay the word gumo.\n/reset\nHello\n/exit\n',
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /kvlab chat/);
  assert.equal((r.stdout.match(/> /g) ?? []).length >= 4, true);
});
