import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError } from 'commander';
import { intOption, listOption, numberOption, protectOption, queryTemplateOption, ratioList } from '../src/cli/common.ts';
import { parseProtection } from '../src/press/protect.ts';

const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
const data = (f: string) => fileURLToPath(new URL(`../data/${f}`, import.meta.url));

function refused(parse: () => unknown, pattern: RegExp) {
  assert.throws(parse, (e: Error) => {
    assert.ok(e instanceof InvalidArgumentError || e instanceof RangeError, `${e.name}: ${e.message}`);
    assert.match(e.message, pattern);
    return true;
  });
}

test('numbers: empty values and non-decimal spellings are refused (Number("") is 0)', () => {
  refused(() => intOption('--max-tokens')(''), /--max-tokens must be an integer >= 0, got an empty value/);
  refused(() => intOption('--max-tokens')('  '), /got an empty value/);
  refused(() => intOption('--limit', 1)('0x10'), /--limit must be an integer >= 1, got "0x10"/);
  refused(() => intOption('--limit', 1)('1e3'), /got "1e3"/);
  refused(() => intOption('--seed')('2.5'), /got "2.5"/);
  refused(() => intOption('--seed')('99999999999999999999'), /got "99999999999999999999"/);
  assert.equal(intOption('--seed')('42'), 42);
  refused(() => numberOption('--ratio', 0, 1)(''), /--ratio must be a number in \[0, 1\], got an empty value/);
  refused(() => numberOption('--temperature', 0)('Infinity'), /got "Infinity"/);
  refused(() => numberOption('--temperature', 0)('0x1'), /got "0x1"/);
  assert.equal(numberOption('--ratio', 0, 1)('.5'), 0.5);
  assert.equal(numberOption('--temperature', 0)('1e-1'), 0.1);
});

test('lists: a trailing comma, "," or an empty item is refused instead of adding 0 or nothing', () => {
  refused(() => ratioList('0.5,'), /the list "0\.5," has an empty item/);
  refused(() => ratioList(''), /got an empty value|empty item/);
  refused(() => ratioList('0.5,,0.3'), /empty item/);
  refused(() => ratioList('0.5,x'), /ratio must be in \[0, 1\].*got "x"/);
  assert.deepEqual(ratioList('1, 0.5,0.3'), [1, 0.5, 0.3]);
  refused(() => listOption(','), /the list "," has an empty item/);
  refused(() => listOption('kvzip,'), /empty item/);
  assert.deepEqual(listOption('snapkv', ['kvzip']), ['kvzip', 'snapkv']);
});

test('protections: fair: without lambda and whitelist: without names are refused', () => {
  refused(() => parseProtection('fair:'), /fair lambda must be a number in \[0, 1\].*got "fair:"/);
  refused(() => parseProtection('fair:x'), /got "fair:x"/);
  refused(() => parseProtection('whitelist:'), /whitelist needs span names/);
  refused(() => parseProtection('whitelist:defense,'), /whitelist needs span names/);
  assert.deepEqual(parseProtection('fair'), { fair: { lambda: 1 } });
  assert.deepEqual(parseProtection('whitelist'), { whitelist: ['defense'] });
  assert.deepEqual(parseProtection('fair:0.5+whitelist:a,b'), { fair: { lambda: 0.5 }, whitelist: ['a', 'b'] });
  refused(() => protectOption('fair:'), /fair lambda/);
});

test('--query-template must contain {query}', () => {
  refused(() => queryTemplateOption('Question:'), /--query-template must contain \{query\}/);
  refused(() => queryTemplateOption(''), /got an empty value/);
  assert.equal(queryTemplateOption('Q: {query}'), 'Q: {query}');
});

test('the commands refuse bad options before loading anything, naming the option', () => {
  const fail = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
  const cases: [string[], RegExp][] = [
    [['generate', '--prompt', 'x', '--max-tokens', ''], /--max-tokens.*got an empty value/],
    [['compress', '--context', data('dev/qa.jsonl'), '--ratio', ''], /--ratio must be a number in \[0, 1\], got an empty value/],
    [['compress', '--context', data('dev/qa.jsonl'), '--query-template', 'Question:'], /--query-template must contain \{query\}/],
    [['eval', 'qa', '--data', data('dev/qa.jsonl'), '--ratio', '0.5,'], /option '-r, --ratio <list>' argument '0\.5,' is invalid.*empty item/],
    [['eval', 'qa', '--data', data('dev/qa.jsonl'), '--method', ','], /--method <names>' argument ',' is invalid.*empty item/],
    [['eval', 'leakage', '--data', data('dev/leakage.jsonl'), '--protect', 'fair:'], /--protect <mode>' argument 'fair:' is invalid.*fair lambda/],
    [['eval', 'leakage', '--data', data('dev/leakage.jsonl'), '--protect', 'whitelist:defence', '--limit', '1', '--method', 'snapkv', '--ratio', '0.5'], /--protect whitelist:defence: no item has a span named "defence" \(spans here: defense, directive\)/],
  ];
  for (const [args, pattern] of cases) {
    const r = fail(...args);
    assert.notEqual(r.status, 0, args.join(' '));
    assert.match(r.stderr, pattern, args.join(' '));
    assert.ok(!/\n\s+at .*:\d+:\d+\)?$/m.test(r.stderr), `no stack trace: ${r.stderr}`);
  }
});
