import assert from 'node:assert/strict';
import { test } from 'node:test';
import { globalBudget, keptCount, uniformBudget } from '../src/press/budgets.ts';
import { apportion, parseProtection, protectedSelect, type NamedRange } from '../src/press/protect.ts';
import { keepRateBySpan } from '../src/eval/prompt-study.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';
import type { Scores } from '../src/press/types.ts';

const T = 60;
const ranges: NamedRange[] = [
  { name: 'directive', start: 0, end: 20 },
  { name: 'defense', start: 20, end: 30 },
  { name: 'directive', start: 30, end: 60 },
];
function scores(seed: number, bias?: (j: number) => number): Scores {
  const r = seededRandom(seed);
  return Array.from({ length: 3 }, () => Array.from({ length: 2 }, () => Float32Array.from({ length: T }, (_, j) => r() + (bias?.(j) ?? 0))));
}
// A scorer that dislikes the defense span, as the paper observed for most policies.
const biased = scores(1, (j) => (j >= 20 && j < 30 ? -1 : 0));
const local = scores(2);
const inDefense = (k: Int32Array) => [...k].filter((j) => j >= 20 && j < 30).length;

test('parseProtection reads the CLI forms', () => {
  assert.equal(parseProtection('none'), undefined);
  assert.deepEqual(parseProtection('whitelist:defense'), { whitelist: ['defense'] });
  assert.deepEqual(parseProtection('whitelist:a,b'), { whitelist: ['a', 'b'] });
  assert.deepEqual(parseProtection('fair'), { fair: { lambda: 1 } });
  assert.deepEqual(parseProtection('fair:0.25'), { fair: { lambda: 0.25 } });
  assert.deepEqual(parseProtection('both'), { whitelist: ['defense'], fair: { lambda: 1 } });
  assert.throws(() => parseProtection('fair:2'), /lambda/);
  assert.throws(() => parseProtection('magic'), /unknown protection/);
});

for (const ratio of [0.5, 0.3]) {
  test(`whitelist keeps the defense inside the same budget (ratio ${ratio})`, () => {
    const base = protectedSelect(uniformBudget, biased, ratio, ranges, undefined);
    const wl = protectedSelect(uniformBudget, biased, ratio, ranges, { whitelist: ['defense'] });
    base.forEach((layer, l) =>
      layer.forEach((k, h) => {
        assert.equal(wl[l]![h]!.length, k.length, 'same total');
        assert.equal(k.length, keptCount(T, ratio));
        assert.equal(inDefense(wl[l]![h]!), 10, 'every defense token kept');
      }),
    );
    assert.equal(inDefense(base[0]![0]!), 0, 'the biased base policy drops the defense');
  });

  test(`fair splits each head's budget in proportion to span lengths (ratio ${ratio})`, () => {
    const fair = protectedSelect(uniformBudget, biased, ratio, ranges, { fair: { lambda: 1 } }, local);
    const b = keptCount(T, ratio);
    const quotas = apportion([(b * 20) / 60, (b * 10) / 60, (b * 30) / 60], b, [20, 10, 30]);
    for (const layer of fair)
      for (const k of layer) {
        assert.equal(k.length, b);
        assert.deepEqual(ranges.map((r) => [...k].filter((j) => j >= r.start && j < r.end).length), quotas);
      }
  });
}

test('lambda moves span budgets from the base allocation (0) to the fair one (1)', () => {
  const at = (lambda: number) => protectedSelect(uniformBudget, biased, 0.5, ranges, { fair: { lambda } }, local)[0]![0]!;
  assert.equal(inDefense(at(0)), 0);
  assert.equal(inDefense(at(1)), 5);
  const mid = inDefense(at(0.5));
  assert.ok(mid > 0 && mid < 5, `halfway: ${mid}`);
});

test('whitelist and fair compose: whitelisted first, fair split of the rest', () => {
  const both = protectedSelect(uniformBudget, biased, 0.5, ranges, { whitelist: ['defense'], fair: { lambda: 1 } }, local);
  for (const layer of both)
    for (const k of layer) {
      assert.equal(k.length, 30);
      assert.equal(inDefense(k), 10);
      assert.deepEqual([[0, 20], [30, 60]].map(([a, z]) => [...k].filter((j) => j >= a! && j < z!).length), [8, 12]);
    }
});

test('protection works around a global (KVzip-style) budget with the same total', () => {
  const base = protectedSelect(globalBudget, biased, 0.3, ranges, undefined);
  const wl = protectedSelect(globalBudget, biased, 0.3, ranges, { whitelist: ['defense'] });
  const total = (x: Int32Array[][]) => x.flat().reduce((s, k) => s + k.length, 0);
  assert.ok(Math.abs(total(wl) - total(base)) <= 6, `${total(wl)} vs ${total(base)}`);
  wl.flat().forEach((k) => assert.equal(inDefense(k), 10));
});

test('keep rate per span is the fraction of heads keeping each token', () => {
  const keep = [[Int32Array.from([0, 1, 20]), Int32Array.from([0, 21])]];
  const rate = keepRateBySpan(keep, ranges);
  assert.equal(rate.defense, (0.5 + 0.5) / 10);
  assert.equal(rate.directive, (1 + 0.5) / 50);
});
