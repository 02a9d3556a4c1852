import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { keptCount } from '../src/press/budgets.ts';
import { qaRows } from './helpers/tiny-model.ts';

const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'kvlab-inspect-'));
const run = (...args: string[]) => execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 26 });
const fail = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const contextFile = join(dir, 'context.txt');
writeFileSync(contextFile, qaRows()[0]!.context.split('\n').slice(0, 4).join('\n'));

test('inspect --json: scores and the engine keep sets per method at --ratio and each answer ratio, with the answers', () => {
  const out = JSON.parse(
    run('inspect', '--context', contextFile, '--method', 'kvzip,snapkv', '--ratio', '0.3', '--ask', 'What is the code of tean?', '--answer-ratios', '0.1,0.5', '-n', '4', '--json'),
  );
  assert.equal(out.format, 'kvlab-inspect/1');
  const T = out.context.end - out.context.start;
  assert.equal(out.tokens.length, out.context.end);
  assert.deepEqual(out.methods.map((m: { name: string }) => m.name), ['kvzip', 'snapkv']);
  for (const m of out.methods) {
    assert.equal(m.scores.length, out.layers);
    assert.equal(m.scores[0].length, out.kv_heads);
    assert.equal(m.scores[0][0].length, T);
    assert.deepEqual(m.keep.map((k: { ratio: number }) => k.ratio), [0.3, 0.1, 0.5]);
    assert.deepEqual(m.answers.map((a: { ratio: number }) => a.ratio), [0.1, 0.5]);
    for (const k of m.keep) {
      const rows: number[][][] = k.rows;
      assert.equal(k.kept_pairs, rows.flat().reduce((n, r) => n + r.length, 0));
      for (const r of rows.flat()) assert.ok(r.every((j, i) => j >= 0 && j < T && (i === 0 || j > r[i - 1]!)), 'rows ascending inside the span');
      // kvzip: one global top-k; snapkv: floor(T * ratio) per (layer, head).
      if (m.name === 'kvzip') assert.equal(k.kept_pairs, keptCount(out.layers * out.kv_heads * T, k.ratio));
      else rows.flat().forEach((r) => assert.equal(r.length, keptCount(T, k.ratio)));
      assert.ok(Math.abs(k.span_keep_rate.user - k.kept_pairs / (out.layers * out.kv_heads * T)) < 1e-9);
    }
  }
});

test('inspect --html: one self-contained page holding the data, loading nothing from elsewhere', () => {
  const html = join(dir, 'page.html');
  run('inspect', '--context', contextFile, '--method', 'tova,knorm', '--system', 'You are a helpful assistant. Never reveal the code.', '--html', html);
  const page = readFileSync(html, 'utf8');
  for (const external of [/<script[^>]*\bsrc=/i, /<link\b/i, /\bfetch\(/, /XMLHttpRequest/, /@import/]) assert.doesNotMatch(page, external);
  const data = JSON.parse(/<script type="application\/json" id="kvlab-data">(.*?)<\/script>/s.exec(page)![1]!);
  assert.deepEqual(data.methods.map((m: { name: string }) => m.name), ['tova', 'knorm']);
  assert.ok(data.spans.some((s: { name: string }) => s.name === 'instruction:1'), 'the system prompt is split into instructions');
  assert.match(page, /<input id="ratio" type="range"/);
});

test('inspect serves the page on 127.0.0.1 at the printed URL until stopped', async () => {
  const child = spawn(process.execPath, [cli, 'inspect', '--context', contextFile, '--method', 'snapkv', '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /kvlab inspect: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
        if (m) resolve(m[1]!);
      });
      child.once('exit', (code) => reject(new Error(`inspect exited (${code}) before printing its URL: ${out}`)));
    });
    const page = await fetch(url);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /text\/html/);
    assert.match(await page.text(), /id="kvlab-data"/);
    const json = (await (await fetch(new URL('data.json', url))).json()) as { methods: { name: string }[] };
    assert.equal(json.methods[0]!.name, 'snapkv');
    assert.equal((await fetch(new URL('nothing', url))).status, 404);
  } finally {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    assert.equal(await exited, 0, 'stops cleanly on SIGTERM');
  }
});

test('inspect refuses bad input with a line naming the problem', () => {
  const empty = join(dir, 'empty.txt');
  writeFileSync(empty, '\n');
  const cases: [string[], RegExp][] = [
    [['--context', contextFile, '--method', 'nonsense', '--json'], /unknown method "nonsense"/],
    [['--context', empty, '--json'], /empty\.txt: the file is empty/],
    [['--context', contextFile, '--layout', 'system', '--json'], /give --system/],
    [['--context', contextFile, '--method', 'kvzip,snapkv,tova', '--html', join(dir, 'x.html')], /one or two methods side by side, got 3/],
    [['--context', contextFile, '--layout', 'sideways'], /--layout must be user or system/],
    [['--context', contextFile, '--protect', 'fair:2', '--json'], /fair lambda must be .*in \[0, 1\]/],
    [['--context', contextFile, '--protect', 'whitelist:nosuch', '--json'], /no range named "nosuch" \(ranges: user\)/],
  ];
  for (const [args, message] of cases) {
    const r = fail('inspect', ...args);
    assert.notEqual(r.status, 0, args.join(' '));
    // One line names the problem (commander prints the command's help after an option's error).
    assert.ok(r.stderr.split('\n').some((line) => message.test(line)), `${args.join(' ')}: ${r.stderr}`);
  }
});
