import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as kvlab from '../src/api/index.ts';

test('the public API: open the embedded model, compress once, ask twice; the cache is the same after each answer', async () => {
  const lm = kvlab.openModel();
  const session = lm.openContext('Document:\nThe code of tean is 4242. The code of ruko is 1717. The code of vela is 9090.');
  const report = session.compress(kvlab.getPress('snapkv'), 0.5);
  assert.equal(report.method, 'snapkv');
  assert.ok(report.contextBytesKept < report.contextBytesFull);
  const bytes = session.cache.bytes();
  const a = await session.ask('What is the code of tean?', { maxTokens: 6 });
  const b = await session.ask('What is the code of tean?', { maxTokens: 6 });
  assert.deepEqual(a.tokens, b.tokens, 'greedy answers on an untouched cache repeat');
  assert.equal(session.cache.bytes(), bytes);
});

test('a custom press registered from user code is used by name, and its scores decide what is kept', () => {
  kvlab.registerMethod('api-test-first', { summary: 'keep the earliest tokens', score: (ctx) => kvlab.perHead(ctx, ({ positions }) => Array.from(positions, (p) => -p)) }, kvlab.uniformBudget);
  assert.ok(kvlab.methodNames().includes('api-test-first'));
  assert.match(kvlab.getPress('api-test-first').describe, /^keep the earliest tokens; budget /);
  const lm = kvlab.openModel(undefined, { backend: 'reference' });
  const scored = lm.openContext('Document:\nThe code of tean is 4242. The code of ruko is 1717.').score(kvlab.getPress('api-test-first'));
  const { keep } = scored.compressed(0.5);
  const T = scored.session.context.end - scored.session.context.start;
  const n = kvlab.keptCount(T, 0.5);
  for (const layer of keep) for (const head of layer) assert.deepEqual([...head], Array.from({ length: n }, (_, j) => j), 'the first n rows of every head');
  assert.throws(() => kvlab.registerMethod('api-test-first', { summary: 's', score: () => [] }, kvlab.uniformBudget), (e: unknown) => e instanceof kvlab.MethodNameError && e.code === 'unknown_method' && /already registered/.test(e.message));
  assert.throws(() => kvlab.registerMethod('Bad Name', { summary: 's', score: () => [] }, kvlab.uniformBudget), /must be lower-case/);
});

test('errors are typed with stable codes', () => {
  const lm = kvlab.openModel();
  const session = lm.openContext('Document:\nThe code of tean is 4242.');
  assert.throws(() => session.compress(kvlab.getPress('snapkv'), 1.5), (e: unknown) => e instanceof kvlab.RatioError && e instanceof kvlab.KvlabError && e.code === 'ratio_out_of_range');
  assert.throws(() => kvlab.getPress('no-such-method'), (e: unknown) => e instanceof kvlab.KvlabError && e.code === 'unknown_method');
  assert.throws(() => lm.openContext('word '.repeat(lm.config.maxPositionEmbeddings)), (e: unknown) => e instanceof kvlab.ContextTooLongError && e.code === 'context_too_long');
  assert.throws(() => kvlab.openModel('/nonexistent/model'), (e: unknown) => e instanceof kvlab.CheckpointError && e.code.length > 0);
});

test('a context saved through the API loads back for this model and answers as the compressed session does', async () => {
  const { mkdtempSync, rmSync, writeFileSync, readFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-api-'));
  try {
    const lm = kvlab.openModel();
    const text = 'Document:\nThe code of tean is 4242. The code of ruko is 1717.';
    const path = join(dir, 'doc.kvctx');
    const record = kvlab.saveContext(lm, path, text, kvlab.getPress('snapkv'), 0.5);
    assert.equal(record.method, 'snapkv');
    const { shared } = kvlab.loadContext(lm, path);
    assert.equal(shared.cache.bytes(), record.bytes);
    const bytes = readFileSync(path);
    bytes[bytes.length - 3]! ^= 0xff;
    writeFileSync(path, bytes);
    assert.throws(() => kvlab.loadContext(lm, path), (e: unknown) => e instanceof kvlab.ContextFileError && e.code === 'context_file');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
