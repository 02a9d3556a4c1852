import { seededRandom } from '../tensor/seeded-random.ts';

/**
 * k folds over groups (a group never straddles two folds): the distinct groups are shuffled with the seed
 * and dealt round-robin. Returns each group's fold in [0, k).
 */
export function groupFolds(groups: readonly string[], k: number, seed: number): Map<string, number> {
  const distinct = [...new Set(groups)].sort();
  if (!Number.isInteger(k) || k < 2) throw new RangeError(`folds must be an integer >= 2, got ${k}`);
  if (distinct.length < k) throw new RangeError(`${k} folds need at least ${k} contexts; the runs hold ${distinct.length}`);
  const rand = seededRandom(seed);
  for (let i = distinct.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [distinct[i], distinct[j]] = [distinct[j]!, distinct[i]!];
  }
  return new Map(distinct.map((g, i) => [g, i % k]));
}
