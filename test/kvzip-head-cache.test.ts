import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { computeHeadScores, headScoresFor, headScoresPath } from '../src/press/methods/kvzip-head.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { scratchCacheDir } from './helpers/scratch-cache-dir.ts';
import { tinyModel } from './helpers/tiny-model.ts';

scratchCacheDir('kvlab-headcache-');

const sample = 'Document:\nThe code of river1 is 4242. The old river stands near the tower.\nThe code of castle2 is 1717.';

async function warningsDuring(fn: () => void): Promise<Error[]> {
  const seen: Error[] = [];
  const on = (w: Error) => seen.push(w);
  process.on('warning', on);
  try {
    fn();
    await new Promise((r) => setImmediate(r));
  } finally {
    process.off('warning', on);
  }
  return seen;
}

test('the kvzip-head score file is validated against the model: a bad one is named, recomputed and replaced', async () => {
  const lm = tinyModel(selectBackend()).openContext(sample).scoringModel();
  const path = headScoresPath(lm);
  const fresh = computeHeadScores(lm, sample);
  assert.equal(fresh.length, lm.config.numLayers);
  let scores: number[][] = [];
  assert.equal((await warningsDuring(() => (scores = headScoresFor(lm, sample)))).length, 0, 'no file yet: computed silently');
  assert.deepEqual(scores, fresh);
  const good = readFileSync(path, 'utf8');
  const saved = JSON.parse(good) as { fingerprint: string; scores: number[][] };
  const { numLayers: L, numKvHeads: H } = lm.config;
  const bad: [string, RegExp][] = [
    ['{"scores": [[1, 2]', /not valid JSON/],
    [JSON.stringify({ ...saved, scores: saved.scores.slice(1) }), new RegExp(`scores for ${L - 1} layers, the model has ${L}`)],
    [JSON.stringify({ ...saved, scores: saved.scores.map((l, i) => (i === 2 ? [...l, 0.5] : l)) }), new RegExp(`layer 2 does not hold ${H} KV-head scores`)],
    [JSON.stringify({ ...saved, scores: saved.scores.map((l, i) => (i === L - 1 ? [l[0], 'x'] : l)) }), new RegExp(`layer ${L - 1}, KV head 1: "x" is not a finite score >= 0`)],
    [good.replace(/"scores":\[\[[^,\]]+/, '"scores":[[-1'), /layer 0, KV head 0: -1 is not a finite score/],
    [JSON.stringify({ ...saved, fingerprint: 'abc' }), /saved for other weights/],
    [JSON.stringify({ fingerprint: saved.fingerprint }), /no "scores" array/],
  ];
  for (const [text, pattern] of bad) {
    writeFileSync(path, text);
    const w = await warningsDuring(() => (scores = headScoresFor(lm, sample)));
    assert.equal(w.length, 1, text);
    assert.equal(w[0]!.name, 'KvzipHeadScoresWarning');
    assert.ok(w[0]!.message.startsWith(`${path}: `), w[0]!.message);
    assert.match(w[0]!.message, pattern);
    assert.deepEqual(scores, fresh, 'recomputed, not read from the bad file');
    assert.deepEqual(JSON.parse(readFileSync(path, 'utf8')).scores, fresh, 'the file is replaced');
  }
  // A good file is used as saved: scores written by hand in the right shape are returned as they are.
  const handMade = fresh.map((l) => l.map((_, h) => h + 0.25));
  writeFileSync(path, JSON.stringify({ ...saved, scores: handMade }));
  assert.deepEqual(headScoresFor(lm, sample), handMade);
});
