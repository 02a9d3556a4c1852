import assert from 'node:assert/strict';
import { test } from 'node:test';
import { adaKvBudget, globalBudget, keptAtLevel, keptCount, pyramidBudget, pyramidLayerBudgets, uniformBudget, wholeHeadBudget, headsWithWindowBudget } from '../src/press/budgets.ts';
import { compareScores, topKIndices } from '../src/press/topk.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';
import type { Scores } from '../src/press/types.ts';

function randomScores(L: number, H: number, T: number, seed = 1): Scores {
  const r = seededRandom(seed);
  return Array.from({ length: L }, () => Array.from({ length: H }, () => Float32Array.from({ length: T }, r)));
}

const count = (keep: Int32Array[][]) => keep.flat().reduce((s, k) => s + k.length, 0);

test('top-k is exact and ties go to the lower position', () => {
  assert.deepEqual([...topKIndices([1, 5, 5, 2, 5], 2)], [1, 2]);
  assert.deepEqual([...topKIndices([0.1, 0.9, 0.3], 2)], [1, 2]);
  assert.deepEqual([...topKIndices([NaN, 1, 2], 2)], [1, 2]);
  assert.equal(topKIndices([1, 2, 3], 0).length, 0);
  assert.deepEqual([...topKIndices([NaN, 1, NaN, 2], 3)], [0, 1, 3], 'all numbers, then the first NaN');
  assert.deepEqual([...topKIndices([0, -0, 3, 0], 2)], [0, 2], '-0 and 0 tie: the lower position goes');
});

test('top-k equals a brute-force sort by (score desc, position asc) on scores with many ties, infinities and NaN', () => {
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const values = [0, -0, 1, -1, 0.5, Infinity, -Infinity, NaN];
  for (let trial = 0; trial < 300; trial++) {
    const n = 1 + Math.floor(rand() * 60);
    const scores = Float32Array.from({ length: n }, () => (rand() < 0.5 ? values[Math.floor(rand() * values.length)]! : Math.round(rand() * 8) / 4));
    const k = Math.floor(rand() * (n + 2));
    const brute = [...scores.keys()].sort((a, b) => compareScores(scores[a]!, scores[b]!) || a - b).slice(0, Math.min(n, k)).sort((a, b) => a - b);
    assert.deepEqual([...topKIndices(scores, k)], brute, `trial ${trial}: n ${n}, k ${k}`);
  }
});

test('uniform: every head keeps floor(T * ratio) of its own top scores', () => {
  const s = randomScores(3, 2, 101);
  for (const ratio of [1, 0.5, 0.2, 0]) {
    const keep = uniformBudget.select(s, ratio);
    for (const layer of keep) for (const k of layer) assert.equal(k.length, keptCount(101, ratio));
  }
  const keep = uniformBudget.select(s, 0.3)[1]![1]!;
  const min = Math.min(...[...keep].map((j) => s[1]![1]![j]!));
  const dropped = [...s[1]![1]!.keys()].filter((j) => !keep.includes(j));
  assert.ok(dropped.every((j) => s[1]![1]![j]! <= min));
});

test('global: one top-k over all heads, budgets unequal, total exact', () => {
  const s = randomScores(2, 2, 50);
  s[0]![0]!.fill(10);
  const keep = globalBudget.select(s, 0.25);
  assert.equal(count(keep), keptCount(2 * 2 * 50, 0.25));
  assert.equal(keep[0]![0]!.length, 50, 'the dominant head takes its whole span');
  assert.equal(count(globalBudget.select(s, 1)), 200);
});

test('pyramid: budgets decrease with depth, total preserved, ratio 1 keeps all', () => {
  const b = pyramidLayerBudgets(6, 100, 0.3, 20);
  for (let l = 1; l < 6; l++) assert.ok(b[l]! <= b[l - 1]!);
  assert.equal(b.reduce((x, y) => x + y, 0), 6 * 30);
  assert.deepEqual(pyramidLayerBudgets(6, 100, 1, 20), [100, 100, 100, 100, 100, 100]);
  const keep = pyramidBudget(20).select(randomScores(6, 2, 100), 0.3);
  keep.forEach((layer, l) => layer.forEach((k) => assert.equal(k.length, b[l])));
});

test('adakv: per-layer total fixed, every head keeps its safeguard share', () => {
  const s = randomScores(2, 4, 80);
  s[0]![2]!.fill(5);
  const keep = adaKvBudget(0.2).select(s, 0.25);
  const perHead = keptCount(80, 0.25);
  for (const layer of keep) {
    assert.equal(layer.reduce((a, k) => a + k.length, 0), 4 * perHead);
    for (const k of layer) assert.ok(k.length >= Math.floor(perHead * 0.2));
  }
  assert.equal(keep[0]![2]!.length, 4 * perHead - 3 * Math.floor(perHead * 0.2), 'the dominant head takes all the slack');
  assert.equal(count(adaKvBudget().select(s, 1)), 2 * 4 * 80);
});

test('whole heads: the top round(L*H*ratio) heads keep everything, the rest nothing', () => {
  const s: Scores = [[new Float32Array(10).fill(3), new Float32Array(10).fill(1)], [new Float32Array(10).fill(2), new Float32Array(10).fill(0)]];
  const keep = wholeHeadBudget.select(s, 0.5);
  assert.deepEqual(keep.map((l) => l.map((k) => k.length)), [[10, 0], [10, 0]]);
});

test('every policy keeps exactly what its expectedKept states, whatever the scores', () => {
  const policies = [uniformBudget, globalBudget, pyramidBudget(20), adaKvBudget(0.2), wholeHeadBudget, headsWithWindowBudget(2, 5)];
  for (const policy of policies)
    for (const [L, H, T] of [[3, 2, 101], [1, 4, 7], [4, 1, 1]] as const)
      for (const ratio of [1, 0.7, 0.3, 0.05, 0])
        for (const seed of [1, 2]) {
          const kept = policy.select(randomScores(L, H, T, seed), ratio).map((layer) => layer.map((k) => k.length));
          const want = policy.expectedKept(L, H, T, ratio);
          assert.deepEqual(keptAtLevel(kept, want.level), want.counts, `${policy.name} L${L} H${H} T${T} ratio ${ratio}`);
        }
});
