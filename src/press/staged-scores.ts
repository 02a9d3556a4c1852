import type { Scores } from './types.ts';

/** Scores with named score sets of the same shape attached (see Scores.stages). */
export function withStages(main: Float32Array[][], stages: Record<string, Float32Array[][]>): Scores {
  return Object.assign(main, { stages });
}

/** A score set a two-stage policy needs; a clear error when the scorer did not attach it. */
export function stage(scores: Scores, name: string, policy: string): Float32Array[][] {
  const s = scores.stages?.[name];
  if (!s) throw new Error(`budget ${policy} needs the "${name}" scores its scorer attaches; this scorer gave none`);
  return s;
}

/** The same rows taken from the scores and from every attached stage (protection selects among a subset). */
export function subsetScores(scores: Scores, rows: number[]): Scores {
  const take = (set: Float32Array[][]) => set.map((layer) => layer.map((s) => Float32Array.from(rows, (j) => s[j]!)));
  const out: Scores = take(scores);
  if (scores.stages) out.stages = Object.fromEntries(Object.entries(scores.stages).map(([k, v]) => [k, take(v)]));
  const rescore = scores.rescore;
  if (rescore) out.rescore = (l, h, sub) => rescore(l, h, Int32Array.from(sub, (r) => rows[r]!));
  return out;
}
