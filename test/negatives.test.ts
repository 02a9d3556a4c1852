import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseCsv, toCsv } from '../src/eval/csv.ts';
import { loadQa } from '../src/eval/datasets.ts';
import { featureCounts, findNegatives, instructionItemFeatures, negativeRows, qaSampleFeatures, readRunScores, runsDataFile, sampleOfKey } from '../src/eval/negatives.ts';

const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
const dev = loadQa(fileURLToPath(new URL('../data/dev/qa.jsonl', import.meta.url)));
// Two short dev rows: r1 with its first three questions, r2 with its first two.
const [a, b] = dev.filter((r) => (r.context_tokens ?? 0) < 500);
const rows = [
  { ...a!, id: 'r1', questions: a!.questions.slice(0, 3), answers: a!.answers.slice(0, 3) },
  { ...b!, id: 'r2', questions: b!.questions.slice(0, 2), answers: b!.answers.slice(0, 2) },
];

/** samples.csv rows as `eval qa` writes them, from [id, question, correct] triples. */
function qaSamples(method: string, ratio: number, marks: [string, number, boolean][]) {
  return marks.map(([id, qi, correct]) => ({ id, question_index: qi, method, ratio, answer: correct ? 'x' : 'y, "z"', expected: 'x', correct }));
}

// Full cache (ratio 1): r1#0 right, r1#1 right, r1#2 wrong, r2#0 right, r2#1 right.
const full = (method: string) => qaSamples(method, 1, [['r1', 0, true], ['r1', 1, true], ['r1', 2, false], ['r2', 0, true], ['r2', 1, true]]);
// kvzip@0.5 loses r1#0 and r2#0 (r1#2 was already wrong: not negative).
const kvzip = qaSamples('kvzip', 0.5, [['r1', 0, false], ['r1', 1, true], ['r1', 2, false], ['r2', 0, false], ['r2', 1, true]]);
// snapkv@0.5 loses r1#0 and r1#1, and gets r1#2 right (a gain is not negative).
const snapkv = qaSamples('snapkv', 0.5, [['r1', 0, false], ['r1', 1, false], ['r1', 2, true], ['r2', 0, true], ['r2', 1, true]]);

function fixture(): { dir: string; data: string; runs: string[] } {
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-negatives-'));
  const data = join(dir, 'qa.jsonl');
  writeFileSync(data, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const runs = [
    ['kvzip', [...full('kvzip'), ...kvzip]],
    ['snapkv', [...full('snapkv'), ...snapkv]],
  ].map(([name, samples]) => {
    const run = join(dir, `run-${name}`);
    mkdirSync(run);
    writeFileSync(join(run, 'samples.csv'), toCsv(samples as Record<string, unknown>[]));
    writeFileSync(join(run, 'results.json'), JSON.stringify({ model: 'm', data, results: [] }));
    return run;
  });
  return { dir, data, runs };
}

test('parseCsv reads back what toCsv writes (quotes, commas, line breaks)', () => {
  const rowsIn = [{ a: 'x,y', b: 'say "hi"', c: 'two\nlines' }, { a: '1', b: '', c: 'plain' }];
  assert.deepEqual(parseCsv(toCsv(rowsIn)), rowsIn);
  assert.throws(() => parseCsv('a,b\r\n1\r\n', 'f.csv'), /f.csv: record 2 has 1 fields/);
});

test('negatives on a fixture: the hand-counted samples per setting, their intersection and union', () => {
  const { runs, data } = fixture();
  const scores = runs.flatMap((r) => readRunScores(r).scores);
  assert.equal(runsDataFile(runs.map((r) => readRunScores(r))), data);
  const n = findNegatives(scores, 10);
  const keys = (xs: string[]) => xs.map((k) => { const s = sampleOfKey(k); return `${s.id}#${s.question_index}`; });
  assert.deepEqual(n.settings.map((s) => [s.method, s.ratio, s.n, keys(s.negatives)]), [
    ['kvzip', 0.5, 5, ['r1#0', 'r2#0']],
    ['snapkv', 0.5, 5, ['r1#0', 'r1#1']],
  ]);
  // Mean drop of snapkv: (100 + 100 - 100 + 0 + 0) / 5 points.
  assert.equal(n.settings[1]!.mean_drop, 20);
  assert.deepEqual(n.intersection.map((i) => [i.ratio, i.methods, keys(i.negatives)]), [[0.5, ['kvzip', 'snapkv'], ['r1#0']]]);
  assert.deepEqual(keys(n.union), ['r1#0', 'r1#1', 'r2#0']);
  // A threshold above 100 points finds none; no ratio-1 scores is an error.
  assert.equal(findNegatives(scores, 101).union.length, 0);
  assert.throws(() => findNegatives(scores.filter((s) => s.ratio < 1), 10), /ratio 1/);

  const saved = negativeRows(data, n.union);
  assert.deepEqual(saved.map((r) => [r.id, r.questions, r.source_question_indices]), [
    ['r1', rows[0]!.questions.slice(0, 2), [0, 1]],
    ['r2', rows[1]!.questions.slice(0, 1), [0]],
  ]);
  const features = featureCounts(data, [...new Set(scores.map((s) => s.key))], n.union);
  const attr = features.filter((f) => f.feature === 'attribute');
  assert.equal(attr.reduce((s, f) => s + f.samples, 0), 5);
  assert.equal(attr.reduce((s, f) => s + f.negatives, 0), 3);
  const len = features.filter((f) => f.feature === 'context_length');
  assert.equal(len.reduce((s, f) => s + f.negatives, 0), 3);
});

test('features of a QA sample: the answer fact position, the attribute asked and the context length', () => {
  const context = `Document:\nThe code of tean is 3426. ${'Filler words here. '.repeat(20)}The color of loth is yellow.`;
  const row = { id: 'x', context, context_tokens: 700, questions: ['What is the code of tean?', 'What is the color of loth?', 'What is the age of zed?'], answers: ['3426', 'yellow', '12'] };
  assert.deepEqual(qaSampleFeatures(row, 0), { context_length: '500-999 tokens', answer_position: 'first third', attribute: 'code', answer_kind: 'number' });
  assert.equal(qaSampleFeatures(row, 1).answer_position, 'last third');
  assert.equal(qaSampleFeatures(row, 2).answer_position, 'not found');
  const item = { id: 'i', instructions: [{ type: 'UPPER', arg: null }, { type: 'NAME', arg: 'Usze' }, { type: 'UPPER', arg: null }], user: 'What is your name?' };
  assert.deepEqual(instructionItemFeatures(item), { instruction_count: '3', has_UPPER: 'yes', has_NAME: 'yes', asks: 'name' });
});

test('kvlab eval negatives writes a data file that kvlab eval qa takes again', () => {
  const { dir, runs } = fixture();
  const out = join(dir, 'neg');
  execFileSync(process.execPath, [cli, 'eval', 'negatives', '--runs', ...runs, '--out', out], { encoding: 'utf8' });
  const summary = JSON.parse(readFileSync(join(out, 'negatives.json'), 'utf8'));
  assert.equal(summary.union, 3);
  assert.deepEqual(summary.saved, { select: 'union', samples: 3, rows: 2 });
  assert.match(readFileSync(join(out, 'report.md'), 'utf8'), /What the negative samples share/);
  const evalOut = join(dir, 'again');
  const text = execFileSync(process.execPath, [cli, 'eval', 'qa', '--data', join(out, 'negatives.jsonl'), '--method', 'streamingllm', '--ratio', '1', '-n', '2', '--out', evalOut, '--json'], { encoding: 'utf8' });
  const again = JSON.parse(text.trim().split('\n').at(-1)!);
  assert.equal(again.results[0].n, 3, 'the three negative questions are evaluated');
  const inter = join(dir, 'inter');
  execFileSync(process.execPath, [cli, 'eval', 'negatives', '--runs', ...runs, '--select', 'intersection', '--out', inter], { encoding: 'utf8' });
  assert.deepEqual(loadQa(join(inter, 'negatives.jsonl')).map((r) => [r.id, r.questions.length]), [['r1', 1]]);
});
