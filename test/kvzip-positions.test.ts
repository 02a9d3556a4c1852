import assert from 'node:assert/strict';
import { test } from 'node:test';
import { reconstructionChunk } from '../src/press/methods/kvzip.ts';
import { getPress } from '../src/press/registry.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

/** A context of at least n tokens, made of dev documents. */
function contextOf(n: number): string {
  const tok = tinyModel().tokenizer;
  const lines = qaRows().flatMap((r) => r.context.split('\n').slice(1));
  const parts = ['Document:'];
  for (let i = 0, count = 2; count < n; i++) {
    const line = lines[i % lines.length]!;
    parts.push(line);
    count += tok.encode(`\n${line}`).length;
  }
  return parts.join('\n');
}

test('reconstruction chunks: the requested size when it fits, the room left when not, a clear error when none is left', async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarning);
  try {
    assert.equal(reconstructionChunk(4096, 1000, 20, 2000, 900), 2000);
    assert.equal(reconstructionChunk(4096, 2500, 20, 2000, 2400), 1576);
    assert.throws(() => reconstructionChunk(4096, 4080, 20, 2000, 4000), /kvzip cannot score this context: .* after the 4080 cached tokens and needs 20 tokens of repeat prompt plus at least one context token, but max_position_embeddings is 4096; shorten the context by 5 tokens/);
    await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /2500 cached tokens leave room for reconstruction chunks of 1576 tokens .*\(not 2000\); scoring in 2 chunks of at most 1576 tokens/);
  } finally {
    process.off('warning', onWarning);
  }
});

test('kvzip on a context longer than max_position_embeddings minus one default chunk scores in smaller chunks and says so', async () => {
  const lm = tinyModel(selectBackend());
  const session = lm.openContext(contextOf(2600));
  assert.ok(session.ids.length + 2000 > lm.config.maxPositionEmbeddings, 'the default 2000-token chunk does not fit');
  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);
  process.on('warning', onWarning);
  let report;
  try {
    report = session.compress(getPress('kvzip'), 0.3);
    await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
  } finally {
    process.off('warning', onWarning);
  }
  assert.equal(warnings.length, 1);
  assert.equal(warnings[0]!.name, 'KvzipChunkWarning');
  assert.match(warnings[0]!.message, /kvzip: \d+ cached tokens leave room for reconstruction chunks of \d+ tokens within max_position_embeddings 4096 \(not 2000\); scoring in 2 chunks/);
  assert.equal(report.contextTokens, session.context.end - session.context.start);
  assert.ok(report.contextBytesKept <= 0.31 * report.contextBytesFull);
  const answer = await session.ask('What is the code of the river?', { maxTokens: 4 });
  assert.ok(answer.tokens.length > 0 || answer.finishReason === 'stop');
});
