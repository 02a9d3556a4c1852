import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ContextFileError, readContextFile, readContextHeader, writeContextFile } from '../src/cache/context-file.ts';
import { KvCache, type KvDtype } from '../src/cache/kv-cache.ts';

const dir = mkdtempSync(join(tmpdir(), 'kvlab-ctxfile-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A ragged cache: 2 layers x 2 heads x d=8, 30 tokens, then rows dropped unevenly per head. */
function raggedCache(dtype: KvDtype): KvCache {
  const c = new KvCache(2, 2, 8, dtype);
  const n = 30;
  const k = Float32Array.from({ length: n * 2 * 8 }, (_, i) => Math.sin(i) * 3);
  const v = Float32Array.from({ length: n * 2 * 8 }, (_, i) => Math.cos(i * 0.7));
  const pos = Int32Array.from({ length: n }, (_, i) => i);
  for (let l = 0; l < 2; l++) c.appendLayer(l, k, v, pos);
  c.advance(n);
  c.keep(0, 1, [0, 1, 2, 10, 29]);
  c.keep(1, 0, [4, 5]);
  return c;
}

function expectProblem(fn: () => unknown, problem: ContextFileError['problem'], message: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof ContextFileError && e.problem === problem && message.test(e.message));
}

test('a saved cache loads back row for row, positions and lengths included, in both dtypes', () => {
  for (const dtype of ['f32', 'bf16'] as KvDtype[]) {
    const c = raggedCache(dtype);
    const path = join(dir, `round-${dtype}.kvctx`);
    const size = writeContextFile(path, c, 'model-A', { method: 'kvzip', ids: [1, 2, 3] });
    assert.equal(readFileSync(path).length, size);
    const { header, cache } = readContextFile(path, 'model-A');
    assert.deepEqual(header.meta, { method: 'kvzip', ids: [1, 2, 3] });
    assert.equal(cache.dtype, dtype);
    assert.equal(cache.nextPos, 30);
    assert.deepEqual(cache.lengths(), c.lengths());
    c.forEachHead((s, l, h) => {
      const t = cache.head(l, h);
      assert.deepEqual([...t.pos.subarray(0, t.len)], [...s.pos.subarray(0, s.len)]);
      assert.deepEqual([...t.keys()], [...s.keys()]);
      assert.deepEqual([...t.values()], [...s.values()]);
    });
    assert.deepEqual(readContextHeader(path).lengths, c.lengths().flat());
  }
  assert.deepEqual(readdirSync(dir).filter((f) => f.includes('.tmp-')), [], 'no temp file is left behind');
});

test('another model, a truncated file, a flipped byte, a newer version and a foreign file are refused by name', () => {
  const path = join(dir, 'ok.kvctx');
  writeContextFile(path, raggedCache('f32'), 'model-A', {});
  const good = readFileSync(path);
  expectProblem(() => readContextFile(path, 'model-B'), 'other-model', /ok\.kvctx: .*another model/);

  const bad = join(dir, 'bad.kvctx');
  writeFileSync(bad, good.subarray(0, good.length - 100));
  expectProblem(() => readContextFile(bad, 'model-A'), 'truncated', /bad\.kvctx: file is truncated \(\d+ of \d+ bytes\)/);
  expectProblem(() => readContextHeader(bad), 'truncated', /truncated/);
  truncateSync(bad, 10);
  expectProblem(() => readContextFile(bad, 'model-A'), 'truncated', /preamble/);

  for (const at of [good.length - 40, Math.floor(good.length / 2), good.length - 1]) {
    const flipped = Buffer.from(good);
    flipped[at] = flipped[at]! ^ 0x01;
    writeFileSync(bad, flipped);
    expectProblem(() => readContextFile(bad, 'model-A'), 'corrupted', /checksum mismatch/);
  }
  const newer = Buffer.from(good);
  newer.writeUInt32LE(2, 8);
  writeFileSync(bad, newer);
  expectProblem(() => readContextFile(bad, 'model-A'), 'newer-version', /format version 2 is newer than this kvlab reads \(up to 1\)/);
  writeFileSync(bad, Buffer.concat([Buffer.from('GGUF0000'), good.subarray(8)]));
  expectProblem(() => readContextHeader(bad), 'not-a-context', /not a kvlab context file/);
  writeFileSync(bad, Buffer.concat([good, Buffer.from([0])]));
  expectProblem(() => readContextFile(bad, 'model-A'), 'corrupted', /1 unexpected trailing bytes/);
});
