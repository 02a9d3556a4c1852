import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fitConversation } from '../src/cli/commands/chat.ts';
import { OutDirTimeoutError, checkOutDir } from '../src/eval/out-dir.ts';
import { PARTIAL_FILE, PartialResults } from '../src/eval/partial-results.ts';
import type { ChatMessage } from '../src/model/chat-template.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
const data = (f: string) => fileURLToPath(new URL(`../data/${f}`, import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'kvlab-evalh-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
const fail = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const run = (...args: string[]) => {
  const r = fail(...args);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
};

test('--out is checked before the run: a folder under a file is refused, a mkdir that never returns times out', async () => {
  const file = join(scratch, 'plain-file');
  writeFileSync(file, 'x');
  await assert.rejects(checkOutDir(join(file, 'out')), /--out .*plain-file\/out is not a writable folder \(ENOTDIR\)/);
  const never = () => new Promise<never>(() => {});
  await assert.rejects(
    checkOutDir(join(scratch, 'hung'), { timeoutMs: 100, fs: { mkdir: never, writeFile: never, rm: never } as never }),
    (e: Error) => e instanceof OutDirTimeoutError && /did not finish within 0\.1 s/.test(e.message),
  );
  await checkOutDir(join(scratch, 'fine', 'deep'));
  assert.ok(existsSync(join(scratch, 'fine', 'deep')));
  const r = fail('eval', 'qa', '--data', data('dev/qa.jsonl'), '--out', join(file, 'out'));
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /is not a writable folder/);
});

test('partial results: units append as they complete, resume needs the same settings, a cut-off last line is redone', () => {
  const dir = join(scratch, 'partial');
  const p = PartialResults.open<number[]>(dir, { a: 1 }, false);
  p.record('u1', [1]);
  p.record('u2', [2]);
  const path = join(dir, PARTIAL_FILE);
  writeFileSync(path, `${readFileSync(path, 'utf8')}{"unit":"u3","res`); // a crash mid-append
  assert.throws(() => PartialResults.open(dir, { a: 1 }, false), /partial\.jsonl holds the completed rows of an interrupted run: pass --resume/);
  assert.throws(() => PartialResults.open(dir, { a: 2 }, true), /partial\.jsonl: written by a run with a 1, this run has 2/);
  const resumed = PartialResults.open<number[]>(dir, { a: 1 }, true);
  assert.deepEqual([...resumed.done], [['u1', [1]], ['u2', [2]]]);
  resumed.record('u3', [3]);
  assert.deepEqual([...PartialResults.open<number[]>(dir, { a: 1 }, true).done.keys()], ['u1', 'u2', 'u3']);
  writeFileSync(path, '{"settings":{"a":1}}\nnot json\n');
  assert.throws(() => PartialResults.open(dir, { a: 1 }, true), /partial\.jsonl:2: not a JSON object/);
  resumed.finish();
  assert.ok(!existsSync(path));
});

test('eval qa: an interrupted run keeps its completed rows and --resume finishes it with the same results', async () => {
  const args = ['eval', 'qa', '--data', data('dev/qa.jsonl'), '--limit', '3', '--method', 'snapkv', '--ratio', '0.5', '--max-tokens', '2', '--json'];
  const whole = JSON.parse(run(...args, '--out', join(scratch, 'whole')));
  const out = join(scratch, 'interrupted');
  const partial = join(out, PARTIAL_FILE);
  // Interrupt (SIGINT, as Ctrl-C) once the first row is on disk.
  const child = spawn(process.execPath, [cli, ...args, '--out', out], { stdio: 'ignore' });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let rowsSaved = 0;
  for (let i = 0; i < 1200 && child.exitCode === null; i++) {
    await new Promise((r) => setTimeout(r, 50));
    rowsSaved = existsSync(partial) ? readFileSync(partial, 'utf8').split('\n').filter(Boolean).length - 1 : 0;
    if (rowsSaved >= 1) break;
  }
  child.kill('SIGINT');
  await exited;
  assert.ok(existsSync(partial), 'the partial file survives the interrupt');
  const kept = readFileSync(partial, 'utf8').split('\n').filter(Boolean).length - 1;
  assert.ok(kept >= 1 && kept <= 3, `${kept} rows kept`);
  assert.ok(!existsSync(join(out, 'results.json')) || kept === 3);
  const again = fail(...args, '--out', out);
  assert.notEqual(again.status, 0, 'a second run without --resume does not overwrite the partial results');
  assert.match(again.stderr, /pass --resume to continue it/);
  const resumed = JSON.parse(run(...args, '--out', out, '--resume'));
  assert.deepEqual(resumed.results, whole.results);
  assert.deepEqual(readFileSync(join(out, 'samples.csv'), 'utf8'), readFileSync(join(scratch, 'whole', 'samples.csv'), 'utf8'));
  assert.ok(!existsSync(partial), 'removed once the outputs are written');
  const mismatch = join(scratch, 'mismatch');
  mkdirSync(mismatch);
  writeFileSync(join(mismatch, PARTIAL_FILE), `${JSON.stringify({ settings: { command: 'eval qa', ratios: [0.3] } })}\n`);
  const r = fail(...args, '--out', mismatch, '--resume');
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /partial\.jsonl: written by a run with \S+ .*this run has/);
  assert.match(fail(...args, '--resume').stderr, /--resume needs --out/);
});

test('every eval names file:line for bad rows; a row too long for the model names its id', () => {
  const bad = join(scratch, 'bad.jsonl');
  writeFileSync(bad, '{"id": "x", "system": \n');
  for (const kind of ['instructions', 'leakage', 'qa']) {
    const r = fail('eval', kind, '--data', bad);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, new RegExp(`${bad}:1: not valid JSON`), kind);
  }
  const sys = join(scratch, 'sys.jsonl');
  writeFileSync(sys, `${JSON.stringify({ key: 1, prompt: 'p', instruction_id_list: [], kwargs: [], messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'u' }] })}\n${JSON.stringify({ key: 2, instruction_id_list: [] })}\n`);
  const r = fail('eval', 'instructions', '--data', sys, '--format', 'sys_ifeval');
  assert.match(r.stderr, new RegExp(`${sys}:2: field "prompt" must be string \\(row 2\\)`));
  const long = join(scratch, 'long.jsonl');
  const row = qaRows()[0]!;
  writeFileSync(long, `${JSON.stringify(row)}\n${JSON.stringify({ ...row, id: 'too-long-row', context: row.context.repeat(12) })}\n`);
  const t = fail('eval', 'qa', '--data', long, '--method', 'snapkv');
  assert.notEqual(t.status, 0);
  assert.match(t.stderr, new RegExp(`${long}: row "too-long-row": its context \\(\\d+ tokens with the template\\) and longest question \\(\\d+\\) leave no room for an answer within max_position_embeddings 4096`));
});

test('--context naming a directory or a missing file names the path', () => {
  const d = fail('compress', '--context', scratch, '--ask', 'q');
  assert.match(d.stderr, new RegExp(`--context file ${scratch} is a directory, not a regular file`));
  const m = fail('compress', '--context', join(scratch, 'nope.txt'), '--ask', 'q');
  assert.match(m.stderr, new RegExp(`--context file not found: ${join(scratch, 'nope.txt')}`));
  assert.ok(!/\n\s+at .*:\d+:\d+\)?$/m.test(d.stderr + m.stderr), 'no stack trace');
});

test('chat keeps the session when the conversation outgrows the context: oldest turns dropped, an oversized message refused', () => {
  const count = (m: ChatMessage[]) => m.reduce((n, x) => n + x.content.length, 0);
  const conv: ChatMessage[] = [
    { role: 'system', content: 'sss' },
    { role: 'user', content: 'aaaa' },
    { role: 'assistant', content: 'bbbb' },
    { role: 'user', content: 'cccc' },
  ];
  assert.deepEqual(fitConversation(conv, count, 100), { ok: true, messages: conv, dropped: 0 });
  assert.deepEqual(fitConversation(conv, count, 10), { ok: true, messages: [conv[0], conv[3]], dropped: 2 });
  assert.deepEqual(fitConversation(conv, count, 5), { ok: false, tokens: 7 });

  const tok = tinyModel().tokenizer;
  const lines = qaRows().flatMap((r) => r.context.split('\n').slice(1));
  let chunk = '';
  for (let i = 0; tok.encode(chunk).length < 1500; i++) chunk += `${lines[i]!} `;
  const huge = chunk.repeat(4);
  const input = [chunk, chunk, 'hello', huge, chunk, 'bye', '/exit'].join('\n') + '\n';
  const r = spawnSync(process.execPath, [cli, 'chat', '--max-tokens', '2'], { input, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\(the conversation outgrew the model's 4096 positions: dropped the 2 oldest messages\)/);
  assert.match(r.stdout, /\(this message does not fit the model's 4096 positions even on its own: \d+ tokens; not sent\)/);
  assert.equal((r.stdout.match(/^> /gm) ?? []).length, 7, 'a prompt after every line: the session went on');
});
