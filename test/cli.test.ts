import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
const data = (f: string) => fileURLToPath(new URL(`../data/${f}`, import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'kvlab-cli-'));
const run = (...args: string[]) => execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 26 });
const fail = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

// A ~1,500-token context made of dev documents.
const tok = tinyModel().tokenizer;
const lines = qaRows().flatMap((r) => r.context.split('\n').slice(1));
let long = 'Document:';
for (const line of lines) {
  if (tok.encode(long).length >= 1500) break;
  long += `\n${line}`;
}
const longFile = join(dir, 'context.txt');
writeFileSync(longFile, long);

test('compress --json: one KVzip-compressed 1,500-token context answers every question; kept bytes <= 0.31 at ratio 0.3', () => {
  const out = JSON.parse(run('compress', '--context', longFile, '--method', 'kvzip', '--ratio', '0.3', '--ask', 'What is the code of tean?', '--ask', 'What is the color of loth?', '--json'));
  assert.ok(out.cache.context_tokens >= 1500);
  assert.equal(out.cache.kv_dtype, 'f32');
  assert.equal(out.answers.length, 2);
  assert.ok(out.cache.kept_ratio <= 0.31, `kept ${out.cache.kept_ratio}`);
  assert.ok(out.cache.context_bytes_kept < out.cache.context_bytes_full);
  assert.equal(out.cache.per_layer_kept.length, tinyModel().config.numLayers);
  for (const k of ['prefill_ms', 'score_ms', 'answer_ms']) assert.ok(out.timings[k] > 0);
});

test('generate --weights int8[/row|/gN] quantizes at load: about half the bytes per token, and it still decodes', () => {
  const args = ['generate', '--prompt', 'What is the code of tean?', '-n', '6', '--json'];
  const full = JSON.parse(run(...args));
  assert.equal(full.weights.kind, 'checkpoint');
  const cfg = JSON.parse(readFileSync(fileURLToPath(new URL('../models/kvlab-tiny-chat/config.json', import.meta.url)), 'utf8'));
  // bf16 -> int8 plus one fp32 scale per group: 1/2 + 4/(2 x group) of the bytes (the hidden size per row).
  for (const [option, label, group] of [['int8', 'int8/g128', 128], ['int8/g64', 'int8/g64', 64], ['int8/row', 'int8/row', cfg.hidden_size]] as const) {
    const int8 = JSON.parse(run(...args, '--weights', option));
    assert.equal(int8.weights.kind, label);
    const ratio = int8.weights.decode_bytes_per_token / full.weights.decode_bytes_per_token;
    assert.ok(Math.abs(ratio - (0.5 + 2 / group)) < 0.02, `${option}: int8 / bf16 bytes ${ratio}`);
    assert.ok(int8.tokens.length >= 1 && int8.timings.decode_tokens_per_s > 0);
  }
});

test('bad input gets a clear error naming the problem', () => {
  const cases: [string[], RegExp][] = [
    [['compress', '--context', longFile, '--ratio', '1.5', '--ask', 'q'], /ratio must be a number in \[0, 1\]/],
    [['compress', '--context', longFile, '--method', 'magic', '--ask', 'q'], /unknown method "magic"/],
    [['compress', '--context', join(dir, 'missing.txt'), '--ask', 'q'], /--context file not found: .*missing\.txt/],
    [['generate', '--prompt', 'x'.repeat(1).padEnd(1, 'x'), '--model', join(dir, 'nowhere')], /config\.json not found/],
    [['eval', 'qa', '--data', data('dev/qa.jsonl'), '--ratio', '0.5,2'], /ratio must be in \[0, 1\]/],
    [['generate', '--prompt', 'x', '--weights', 'int4'], /--weights must be checkpoint, int8, int8\/row or int8\/g<N> \(N > 0\), got "int4"/],
    [['generate', '--prompt', 'x', '--weights', 'int8/g0'], /--weights must be .* got "int8\/g0"/],
  ];
  for (const [args, pattern] of cases) {
    const r = fail(...args);
    assert.notEqual(r.status, 0, args.join(' '));
    assert.match(r.stderr, pattern);
  }
  const tooLong = join(dir, 'too-long.txt');
  writeFileSync(tooLong, `${long}\n`.repeat(3));
  const r = fail('compress', '--context', tooLong, '--ask', 'q');
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /longer than the model allows \(4096\)/);
});

test('eval qa: JSON summary and the output folder (results, per-sample CSV, report with plot)', () => {
  const out = join(dir, 'qa');
  const s = JSON.parse(run('eval', 'qa', '--data', data('dev/qa.jsonl'), '--limit', '2', '--method', 'kvzip,snapkv', '--ratio', '1,0.3', '--out', out, '--json'));
  assert.equal(s.results.length, 4);
  for (const r of s.results) {
    assert.ok(r.accuracy >= 0 && r.accuracy <= 1);
    assert.ok(r.n > 0);
    assert.ok(r.ratio === 1 ? r.kept_bytes_ratio === 1 : r.kept_bytes_ratio <= 0.31);
  }
  for (const f of ['results.json', 'samples.csv', 'report.md', 'accuracy.svg']) assert.ok(existsSync(join(out, f)), f);
  assert.match(readFileSync(join(out, 'report.md'), 'utf8'), /accuracy\.svg/);
});

test('eval leakage: protections and order variants in one run, keep rates per span', () => {
  const out = join(dir, 'leak');
  const s = JSON.parse(
    run('eval', 'leakage', '--data', data('dev/leakage.jsonl'), '--limit', '4', '--method', 'snapkv', '--ratio', '1,0.5', '--protect', 'none', '--protect', 'whitelist:defense', '--order', '--out', out, '--json'),
  );
  const wl = s.results.filter((r: { protect: string; ratio: number; variant: string }) => r.protect === 'whitelist:defense' && r.ratio === 0.5 && r.variant === 'original');
  assert.equal(wl.length, 1);
  assert.equal(wl[0].keep_defense, 1, 'whitelisted defense fully kept');
  assert.ok(s.results.some((r: { variant: string }) => r.variant === 'defense-first'));
  for (const f of ['results.json', 'samples.csv', 'report.md', 'leak.svg', 'keep_rate.svg']) assert.ok(existsSync(join(out, f)), f);
});

test('eval instructions on SystemCheck rows runs the IFEval checkers', () => {
  const s = JSON.parse(run('eval', 'instructions', '--data', data('external/sys_ifeval/sys_ifeval.jsonl'), '--limit', '2', '--method', 'knorm', '--ratio', '1,0.5', '--max-tokens', '8', '--json'));
  assert.equal(s.format, 'sys_ifeval');
  assert.equal(s.results.length, 2);
  assert.ok('follow_rate' in s.results[0] || 'unsupported' in s.results[0]);
});

test('demo runs on the embedded model and shows memory before and after KVzip', () => {
  const out = run('demo');
  assert.match(out, /KVzip, 30% of the context kept/);
  assert.match(out, /context KV: [\d.]+ KiB -> [\d.]+ KiB/);
  assert.match(out, /KV cache [\d.]+ KiB \(f32\)/);
  // Each block's count of exact answers is the number of its answer lines equal to the expected one.
  const blocks = out.split(/\n-- /).slice(1);
  assert.equal(blocks.length, 2);
  for (const block of blocks) {
    const pairs = [...block.matchAll(/answer: (".*?")\s+expected: (".*?")$/gm)].map((m) => [JSON.parse(m[1]!) as string, JSON.parse(m[2]!) as string]);
    assert.equal(pairs.length, 4);
    const right = pairs.filter(([a, e]) => a.trim() === e).length;
    assert.match(block, new RegExp(`^${right} of 4 answered exactly`, 'm'));
  }
});
