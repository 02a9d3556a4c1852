import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Scorer, ScoringContext, ScoringModel } from '../types.ts';
import { kvzipScorer } from './kvzip.ts';

/** Per [layer][kvHead]: max KVzip score the head gives any position of a long sample context. */
export type HeadScores = number[][];

/**
 * KVzip head-level: every position of a head carries that head's score, so a whole-head budget keeps or
 * drops entire heads. Head scores are computed once per model (KVzip pair scores on a sample) and saved.
 */
export function kvzipHeadScorer(load: (ctx: ScoringContext) => HeadScores = (ctx) => headScoresFor(ctx.lm)): Scorer {
  return {
    name: 'kvzip-head',
    score(ctx) {
      const heads = load(ctx);
      const T = ctx.span.end - ctx.span.start;
      return heads.map((layer) => layer.map((s) => new Float32Array(T).fill(s)));
    },
  };
}

/** Where head scores of a model are saved: KVLAB_CACHE_DIR or ~/.cache/kvlab, keyed by the weights' identity. */
export function headScoresPath(lm: Pick<ScoringModel, 'fingerprint'>): string {
  const root = process.env.KVLAB_CACHE_DIR ?? join(homedir(), '.cache', 'kvlab');
  const key = createHash('sha256').update(lm.fingerprint).digest('hex').slice(0, 16);
  return join(root, `kvzip-head-scores-${key}.json`);
}

export function headScoresFor(lm: ScoringModel, sample: string = defaultSample()): HeadScores {
  const path = headScoresPath(lm);
  if (existsSync(path)) {
    const saved = JSON.parse(readFileSync(path, 'utf8')) as { scores: HeadScores };
    return saved.scores;
  }
  const scores = computeHeadScores(lm, sample);
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ fingerprint: lm.fingerprint, scores }));
  renameSync(tmp, path);
  return scores;
}

export function computeHeadScores(lm: ScoringModel, sample: string): HeadScores {
  const pair = lm.scoreText(sample, kvzipScorer());
  return pair.map((layer) => layer.map((s) => s.reduce((m, x) => Math.max(m, x), 0)));
}

/** A long, varied sample text (facts and filler), deterministic. */
function defaultSample(): string {
  const words = ['river', 'castle', 'market', 'garden', 'tower', 'forest', 'bridge', 'harbor', 'village', 'library'];
  const lines: string[] = ['Document:'];
  for (let i = 0; i < 60; i++) {
    const a = words[i % words.length]!;
    const b = words[(i * 7 + 3) % words.length]!;
    lines.push(`The code of ${a}${i} is ${1000 + ((i * 7919) % 9000)}. The old ${a} stands near the ${b}.`);
  }
  return lines.join('\n');
}
