import assert from 'node:assert/strict';
import { test } from 'node:test';
import { chooseRatio, reconstructionAccuracy, reconstructionCheck, ReconstructionOptionError } from '../src/engine/reconstruction-check.ts';
import { KVZIP_FIRST_PROMPT } from '../src/press/methods/kvzip.ts';
import { getPress } from '../src/press/registry.ts';
import { RatioError } from '../src/tensor/kvlab-error.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel(selectBackend());
const context = qaRows()[0]!.context.split('\n').slice(0, 3).join('\n');

/** The same accuracy by brute force: the whole prompt and the repeat prompt in one forward pass, every row's logits. */
function bruteForceAccuracy(): number {
  const session = lm.openContext(context);
  const lead = lm.tokenizer.encode(session.layout.queryLead + KVZIP_FIRST_PROMPT);
  const post = lm.tokenizer.encode(session.layout.suffix);
  const ctxIds = session.ids.slice(session.context.start, session.context.end);
  const all = [...session.ids, ...lead, ...post, ...ctxIds];
  const logits = lm.model.forward(all, lm.newCache(), { logits: 'all' })!;
  const vocab = logits.length / all.length;
  const first = session.ids.length + lead.length + post.length;
  let right = 0;
  for (let t = first; t < all.length; t++) {
    const row = logits.subarray((t - 1) * vocab, t * vocab);
    let best = 0;
    for (let v = 1; v < vocab; v++) if (row[v]! > row[best]!) best = v;
    if (best === all[t]) right++;
  }
  return right / ctxIds.length;
}

test('teacher-forced reconstruction accuracy of the full cache equals a brute-force pass over prompt + repeat prompt', () => {
  const session = lm.openContext(context);
  session.prefillCapture([]);
  const before = session.cache.lengths();
  const r = reconstructionAccuracy(lm, session.cache, session.layout);
  assert.equal(r.total, session.context.end - session.context.start);
  assert.equal(r.accuracy, bruteForceAccuracy());
  assert.deepEqual(session.cache.lengths(), before, 'the repeat prompt rows are truncated away');
});

test('the check scores every candidate (1 added), the full candidate is the brute-force accuracy, and the choice is the smallest passing ratio', () => {
  const scored = lm.openContext(context).score(getPress('snapkv'));
  const check = reconstructionCheck(scored, { candidates: [0.5, 0.1, 0.3], threshold: 0.8 });
  assert.deepEqual(check.candidates.map((c) => c.ratio), [0.1, 0.3, 0.5, 1]);
  assert.equal(check.fullAccuracy, bruteForceAccuracy());
  const bar = 0.8 * check.fullAccuracy;
  const passing = check.candidates.filter((c) => c.accuracy >= bar).map((c) => c.ratio);
  assert.equal(check.chosen, Math.min(...passing));
  for (const c of check.candidates) assert.ok(c.accuracy >= 0 && c.accuracy <= 1 && c.correct <= c.total);
  // A compressed candidate's accuracy is its own cache's: recomputed from an independent compressed copy.
  const again = reconstructionAccuracy(lm, scored.compressed(0.1).session.cache, scored.session.layout);
  assert.equal(check.candidates[0]!.accuracy, again.accuracy);
  // The scored session itself is untouched (every candidate was a copy).
  scored.session.cache.forEachHead((hs) => assert.equal(hs.len, scored.session.ids.length));
});

test('threshold 0 picks the smallest candidate; absolute 1 needs a perfect reconstruction or falls back to 1', () => {
  const scored = lm.openContext(context).score(getPress('knorm'));
  assert.equal(reconstructionCheck(scored, { candidates: [0.2, 0.6], threshold: 0 }).chosen, 0.2);
  const strict = reconstructionCheck(scored, { candidates: [0.2, 0.6], threshold: 1, mode: 'absolute' });
  const perfect = strict.candidates.filter((c) => c.correct === c.total).map((c) => c.ratio);
  assert.equal(strict.chosen, perfect.length ? Math.min(...perfect) : 1);
});

test('chooseRatio: relative and absolute bars on hand-made candidates', () => {
  const c = [
    { ratio: 0.1, accuracy: 0.2, correct: 2, total: 10 },
    { ratio: 0.3, accuracy: 0.5, correct: 5, total: 10 },
    { ratio: 0.5, accuracy: 0.45, correct: 9, total: 10 },
    { ratio: 1, accuracy: 0.6, correct: 6, total: 10 },
  ];
  assert.equal(chooseRatio(c, 0.8, 'relative', 0.6), 0.3); // bar 0.48
  assert.equal(chooseRatio(c, 0.9, 'relative', 0.6), 1); // bar 0.54: only ratio 1
  assert.equal(chooseRatio(c, 0.2, 'absolute', 0.6), 0.1);
  assert.equal(chooseRatio(c, 0.7, 'absolute', 0.6), 1); // none passes: the full cache
});

test('compressAuto keeps the chosen ratio and reports every candidate', () => {
  const session = lm.openContext(context);
  const report = session.compressAuto(getPress('snapkv'), { auto: { candidates: [0.25, 0.5], threshold: 0.9 } });
  assert.ok(report.auto);
  assert.equal(report.ratio, report.auto.chosen);
  const T = session.context.end - session.context.start;
  session.cache.forEachHead((hs) => assert.equal(hs.len, session.context.start + Math.floor(T * report.ratio + 1e-9)));
});

test('bad options are named', () => {
  const scored = lm.openContext(context).score(getPress('knorm'));
  assert.throws(() => reconstructionCheck(scored, { threshold: 1.5 }), ReconstructionOptionError);
  assert.throws(() => reconstructionCheck(scored, { candidates: [] }), /at least one ratio/);
  assert.throws(() => reconstructionCheck(scored, { candidates: [0.5, 2] }), RatioError);
  assert.throws(() => reconstructionCheck(scored, { mode: 'fuzzy' as 'relative' }), /relative.*absolute/);
});

test('eval qa with ratio auto: each context answers as at its chosen fixed ratio; the row reports the average memory kept', async () => {
  const { evalQa } = await import('../src/eval/qa-eval.ts');
  const rows = qaRows().slice(0, 2).map((r) => ({ ...r, questions: r.questions.slice(0, 2), answers: r.answers.slice(0, 2) }));
  const auto = { candidates: [0.1, 0.5], threshold: 0.97 };
  const chosen = rows.map((r) => reconstructionCheck(lm.openContext(r.context, { queryTemplate: 'Question: {query}' }).score(getPress('knorm')), auto).chosen);
  const { results, samples } = await evalQa(lm, rows, { methods: ['knorm'], ratios: ['auto', 0.1, 0.5, 1], auto, queryTemplate: 'Question: {query}', maxTokens: 8 });
  for (const [i, row] of rows.entries()) {
    const at = (ratio: number | 'auto') => samples.filter((s) => s.id === row.id && s.ratio === ratio).map((s) => s.answer);
    assert.deepEqual(at('auto'), at(chosen[i]!), `row ${row.id} chose ${chosen[i]}`);
  }
  const keptAt = (ratio: number | 'auto') => results.find((r) => r.ratio === ratio)!.kept_bytes_ratio;
  const mean = chosen.reduce((a, c) => a + c, 0) / chosen.length;
  assert.ok(Math.abs(keptAt('auto') - mean) < 0.02, `auto kept ${keptAt('auto')}, mean chosen ratio ${mean}`);
});
