import { median } from './machine-limits.ts';

export interface Alternation {
  /** Per side, its figure (ms) of each round after the warm-up. */
  times: number[][];
  /** Median over rounds of side 1's time over side 0's within the round: how many times faster side 0 ran. */
  ratio: number;
}

/**
 * Times `sides` one after another in each of `rounds` rounds (plus a first, discarded warm-up round), for
 * comparisons on a shared machine: the ratio is taken within each round, so load from other processes that
 * comes and goes weighs on both sides alike. `beforeRound` runs at the start of every round (a probe).
 */
export function alternate(rounds: number, sides: (() => number)[], beforeRound?: () => void): Alternation {
  const times: number[][] = sides.map(() => []);
  for (let r = 0; r <= rounds; r++) {
    beforeRound?.();
    const t = sides.map((side) => side());
    if (r > 0) t.forEach((ms, i) => times[i]!.push(ms));
  }
  return { times, ratio: median(times[0]!.map((a, r) => times[1]![r]! / a)) };
}
