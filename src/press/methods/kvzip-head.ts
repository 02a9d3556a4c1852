import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
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
    summary: 'KVzip head-level: one score per head, its max KVzip score on a sample text (saved once per model)',
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

/**
 * The model's head scores: read from the cache file when it holds scores of this model's shape (and this
 * model's fingerprint), computed and saved otherwise. A file that does not fit is named in a warning and
 * replaced, never used: a stale or corrupt file would silently reorder every head.
 */
export function headScoresFor(lm: ScoringModel, sample: string = defaultSample()): HeadScores {
  const path = headScoresPath(lm);
  if (existsSync(path)) {
    const saved = readSavedHeadScores(path, lm);
    if (Array.isArray(saved)) return saved;
    process.emitWarning(`${path}: ${saved.problem}; recomputing the KVzip head scores and replacing the file`, 'KvzipHeadScoresWarning');
  }
  const scores = computeHeadScores(lm, sample);
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ fingerprint: fingerprintKey(lm), layers: lm.config.numLayers, kv_heads: lm.config.numKvHeads, scores }));
  renameSync(tmp, path);
  return scores;
}

const fingerprintKey = (lm: Pick<ScoringModel, 'fingerprint'>) => createHash('sha256').update(lm.fingerprint).digest('hex');

/** The scores a saved file holds if they fit this model: [numLayers][numKvHeads] finite numbers >= 0. */
export function readSavedHeadScores(path: string, lm: ScoringModel): HeadScores | { problem: string } {
  if (!statSync(path).isFile()) return { problem: 'not a regular file' };
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    return { problem: `not valid JSON (${(e as Error).message})` };
  }
  const saved = json as { fingerprint?: unknown; scores?: unknown };
  if (typeof json !== 'object' || json === null || !Array.isArray(saved.scores)) return { problem: 'no "scores" array' };
  if (saved.fingerprint !== fingerprintKey(lm)) return { problem: 'saved for other weights (fingerprint differs)' };
  const { numLayers, numKvHeads } = lm.config;
  const scores = saved.scores as unknown[];
  if (scores.length !== numLayers) return { problem: `scores for ${scores.length} layers, the model has ${numLayers}` };
  for (const [l, layer] of scores.entries()) {
    if (!Array.isArray(layer) || layer.length !== numKvHeads) return { problem: `layer ${l} does not hold ${numKvHeads} KV-head scores` };
    const bad = layer.findIndex((x) => typeof x !== 'number' || !Number.isFinite(x) || x < 0);
    if (bad >= 0) return { problem: `layer ${l}, KV head ${bad}: ${JSON.stringify(layer[bad])} is not a finite score >= 0` };
  }
  return scores as HeadScores;
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
