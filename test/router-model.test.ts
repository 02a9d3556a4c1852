import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { choosePredictedRatio, loadPredictor, type NegativePredictor } from '../src/engine/negative-predictor.ts';
import { chooseRatio, reconstructionCheck } from '../src/engine/reconstruction-check.ts';
import { keptMass, scoreEntropy } from '../src/engine/router-features.ts';
import { parseCsv, toCsv } from '../src/eval/csv.ts';
import { contextFeatures, routerContexts } from '../src/eval/router-contexts.ts';
import { getPress } from '../src/press/registry.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel(selectBackend());
const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'kvlab-router-'));
const context = qaRows()[0]!.context.split('\n').slice(0, 3).join('\n');
const ratioOnly: NegativePredictor = { kind: 'kvlab-negative-predictor', version: 1, features: ['ratio'], mean: [0], scale: [1], weights: [-10], bias: 4, maxProbability: 0.5 };

test('ratio auto with a predictor keeps the hand-expected ratio; the check reports every candidate\'s features', () => {
  // p = sigmoid(4 - 10 r) is 0.95, 0.73, 0.27, 0.05 at 0.1, 0.3, 0.5, 0.7: the smallest below 0.5 is 0.5.
  const session = lm.openContext(context);
  const report = session.compressAuto(getPress('snapkv'), { auto: { candidates: [0.1, 0.3, 0.5, 0.7], predictor: ratioOnly } });
  assert.equal(report.auto!.rule, 'predictor');
  assert.equal(report.ratio, 0.5);
  const T = session.context.end - session.context.start;
  session.cache.forEachHead((hs) => assert.equal(hs.len, session.context.start + Math.floor(T * 0.5 + 1e-9)));
  // Overriding the bar: below 0.8, 0.3 is safe too.
  const again = lm.openContext(context).compressAuto(getPress('snapkv'), { auto: { candidates: [0.1, 0.3, 0.5, 0.7], predictor: ratioOnly, maxProbability: 0.8 } });
  assert.equal(again.ratio, 0.3);
  assert.throws(() => lm.openContext(context).compressAuto(getPress('snapkv'), { auto: { maxProbability: 0.5 } }), /goes with a predictor/);

  // The features, recomputed from the scores and keep sets by hand.
  const scored = lm.openContext(context).score(getPress('knorm'));
  const check = reconstructionCheck(scored, { candidates: [0.2, 0.6] });
  assert.equal(check.rule, 'threshold');
  for (const c of check.candidates) {
    const f = c.features;
    assert.equal(f.ratio, c.ratio);
    assert.equal(f.reconstruction, c.accuracy);
    assert.equal(f.reconstruction_relative, check.fullAccuracy ? c.accuracy / check.fullAccuracy : 1);
    assert.equal(f.log_context_tokens, Math.log(T));
    assert.equal(f.score_entropy, scoreEntropy(scored.scores));
    assert.equal(f.kept_mass, keptMass(scored.scores, scored.keep(c.ratio)));
    assert.ok(f.kept_mass > 0 && f.kept_mass <= 1 + 1e-9);
  }
  assert.ok(Math.abs(check.candidates.at(-1)!.features.kept_mass - 1) < 1e-9, 'ratio 1 keeps all the mass');
});

test('a predictor that encodes the threshold rule chooses what the threshold chooses', () => {
  // p >= 0.5 exactly when reconstruction_relative <= 0.9 - 1e-9, i.e. below the default bar.
  const bar = 0.9 - 1e-9;
  const encoded: NegativePredictor = { ...ratioOnly, features: ['reconstruction_relative'], weights: [-1e4], bias: 1e4 * bar };
  for (const method of ['knorm', 'streamingllm']) {
    const scored = lm.openContext(context).score(getPress(method));
    const byPredictor = reconstructionCheck(scored, { candidates: [0.1, 0.3, 0.5, 0.8], predictor: encoded });
    const expected = chooseRatio(byPredictor.candidates, 0.9, 'relative', byPredictor.fullAccuracy);
    assert.equal(byPredictor.chosen, expected, method);
  }
});

/** Four short dev QA rows and eval-qa-shaped runs with hand-set correctness (the labels), for knorm and streamingllm. */
function fixture() {
  const rows = qaRows()
    .filter((r) => lm.tokenizer.encode(r.context).length < 600)
    .slice(0, 4)
    .map((r, i) => ({ ...r, id: `q${i}`, questions: r.questions.slice(0, 2), answers: r.answers.slice(0, 2) }));
  const data = join(dir, 'qa.jsonl');
  writeFileSync(data, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  // Full cache: every question right. Negative (a question lost): knorm at 0.2 on q0 and q1, streamingllm at 0.2 on q2;
  // q3 under knorm loses one of two questions at 0.5 as well.
  const lost = new Set(['knorm@0.2@q0@0', 'knorm@0.2@q1@1', 'streamingllm@0.2@q2@0', 'knorm@0.5@q3@1']);
  const runs = ['knorm', 'streamingllm'].map((method) => {
    const run = join(dir, `run-${method}`);
    mkdirSync(run, { recursive: true });
    const samples = [1, 0.5, 0.2].flatMap((ratio) =>
      rows.flatMap((r) => r.questions.map((_, qi) => ({ id: r.id, question_index: qi, method, ratio, answer: 'a', expected: 'a', correct: !lost.has(`${method}@${ratio}@${r.id}@${qi}`) }))),
    );
    writeFileSync(join(run, 'samples.csv'), toCsv(samples));
    writeFileSync(join(run, 'results.json'), JSON.stringify({ model: 'm', data, results: [] }));
    return run;
  });
  return { data, runs };
}

test('kvlab eval router end to end on the embedded model: hand-counted labels, features as computed in-process, a predictor ratio auto reads', () => {
  const { data, runs } = fixture();
  const out = join(dir, 'router');
  execFileSync(process.execPath, [cli, 'eval', 'router', '--runs', ...runs, '--folds', '2', '--out', out], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const summary = JSON.parse(readFileSync(join(out, 'router.json'), 'utf8'));
  assert.equal(summary.contexts, 4);
  assert.equal(summary.settings, 16);
  assert.equal(summary.negatives, 4);
  assert.deepEqual(summary.label_counts, [
    { method: 'knorm', ratio: 0.5, contexts: 4, negative: 1 },
    { method: 'knorm', ratio: 0.2, contexts: 4, negative: 2 },
    { method: 'streamingllm', ratio: 0.5, contexts: 4, negative: 0 },
    { method: 'streamingllm', ratio: 0.2, contexts: 4, negative: 1 },
  ]);
  const c = summary.held_out.predictor;
  assert.equal(c.tp + c.fp + c.fn + c.tn, 16);
  assert.equal(c.tp + c.fn, 4);
  const rows = parseCsv(readFileSync(join(out, 'rows.csv'), 'utf8'));
  assert.equal(rows.length, 16);
  assert.equal(new Set(rows.map((r) => `${r.context}|${r.method}|${r.ratio}`)).size, 16);
  assert.deepEqual(rows.filter((r) => r.negative === 'true').map((r) => [JSON.parse(r.context!)[0], r.method, Number(r.ratio)]).sort(), [
    ['q0', 'knorm', 0.2],
    ['q1', 'knorm', 0.2],
    ['q2', 'streamingllm', 0.2],
    ['q3', 'knorm', 0.5],
  ]);
  // The command's features of q1 under knorm are those computed here.
  const key = JSON.stringify(['q1', '']);
  const ctx = routerContexts(lm, data, [key], { queryTemplate: 'Question: {query}' }).get(key)!;
  const here = contextFeatures(lm, ctx, getPress('knorm'), [0.5, 0.2]);
  for (const f of here) {
    const r = rows.find((x) => x.context === key && x.method === 'knorm' && Number(x.ratio) === f.ratio)!;
    for (const [name, v] of Object.entries(f)) assert.ok(Math.abs(Number(r[name]) - v) <= 1e-4, `${name}: ${r[name]} vs ${v}`);
  }

  const predictor = loadPredictor(join(out, 'predictor.json'));
  assert.equal(predictor.trainedOn?.settings, 16);
  const contextFile = join(dir, 'context.txt');
  writeFileSync(contextFile, context);
  const res = JSON.parse(execFileSync(process.execPath, [cli, 'compress', '--context', contextFile, '--method', 'knorm', '--ratio', 'auto', '--auto-candidates', '0.2,0.5', '--auto-predictor', join(out, 'predictor.json'), '--json'], { encoding: 'utf8' }));
  assert.equal(res.auto.rule, 'predictor');
  assert.equal(res.auto.max_probability, predictor.maxProbability);
  const cands = res.auto.candidates.map((x: { ratio: number; negative_probability: number }) => ({ ratio: x.ratio, negativeProbability: x.negative_probability }));
  assert.equal(res.auto.chosen, choosePredictedRatio(cands, predictor.maxProbability));

  // A file that is no predictor is refused before the model loads, naming the file.
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify({ kind: 'something else' }));
  const r = spawnSync(process.execPath, [cli, 'compress', '--context', contextFile, '--ratio', 'auto', '--auto-predictor', bad], { encoding: 'utf8' });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /bad\.json: kind must be "kvlab-negative-predictor"/);
  const r2 = spawnSync(process.execPath, [cli, 'compress', '--context', contextFile, '--ratio', '0.5', '--auto-predictor', join(out, 'predictor.json')], { encoding: 'utf8' });
  assert.match(r2.stderr, /go with --ratio auto/);
});
