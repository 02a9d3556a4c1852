import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import type { ScoringModel } from './types.ts';

/** Per [layer][kvHead]: one score per head, computed once per model on a calibration sample. */
export type HeadScores = number[][];

/** A per-model head calibration: its file name, the warning it raises, and how the scores are computed. */
export interface HeadCalibration {
  /** File name stem, e.g. "kvzip-head-scores". */
  kind: string;
  warning: string;
  compute(lm: ScoringModel, sample: string): HeadScores;
}

/** Where a calibration's head scores are saved: KVLAB_CACHE_DIR or ~/.cache/kvlab, keyed by the weights' identity. */
export function calibrationPath(lm: Pick<ScoringModel, 'fingerprint'>, kind: string): string {
  const root = process.env.KVLAB_CACHE_DIR ?? join(homedir(), '.cache', 'kvlab');
  const key = createHash('sha256').update(lm.fingerprint).digest('hex').slice(0, 16);
  return join(root, `${kind}-${key}.json`);
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/**
 * The model's head scores for a calibration: read from its file when the file holds scores of this model's
 * shape, this model's fingerprint and this sample's hash; computed and saved (atomically) otherwise. A file
 * that does not fit is named in a warning and replaced, never used: a stale or corrupt file would silently
 * reorder every head.
 */
export function savedHeadScores(lm: ScoringModel, calibration: HeadCalibration, sample: string): HeadScores {
  const path = calibrationPath(lm, calibration.kind);
  if (existsSync(path)) {
    const saved = readSavedHeadScores(path, lm, sample);
    if (Array.isArray(saved)) return saved;
    process.emitWarning(`${path}: ${saved.problem}; recomputing the ${calibration.kind} and replacing the file`, calibration.warning);
  }
  const scores = calibration.compute(lm, sample);
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  const record = {
    fingerprint: sha256(lm.fingerprint),
    layers: lm.config.numLayers,
    kv_heads: lm.config.numKvHeads,
    sample: { sha256: sha256(sample), tokens: lm.encode(sample).length },
    scores,
  };
  writeFileSync(tmp, JSON.stringify(record));
  renameSync(tmp, path);
  return scores;
}

/** The scores a saved file holds if they fit this model and sample: [numLayers][numKvHeads] finite numbers >= 0. */
export function readSavedHeadScores(path: string, lm: ScoringModel, sample?: string): HeadScores | { problem: string } {
  if (!statSync(path).isFile()) return { problem: 'not a regular file' };
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    return { problem: `not valid JSON (${(e as Error).message})` };
  }
  const saved = json as { fingerprint?: unknown; scores?: unknown; sample?: { sha256?: unknown } };
  if (typeof json !== 'object' || json === null || !Array.isArray(saved.scores)) return { problem: 'no "scores" array' };
  if (saved.fingerprint !== sha256(lm.fingerprint)) return { problem: 'saved for other weights (fingerprint differs)' };
  if (sample !== undefined && saved.sample?.sha256 !== sha256(sample)) return { problem: 'computed on another calibration sample (sample hash differs)' };
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

/**
 * The calibration sample both head-level methods use unless given another: 60 lines of
 * "The code of WORDi is NNNN. The old WORD stands near the WORD." over ten fixed words, numbers from
 * 1000 + (i * 7919) % 9000: deterministic, so every run on the same weights computes the same head scores
 * (the saved file records its sha256 and token count).
 */
export function defaultCalibrationSample(): string {
  const words = ['river', 'castle', 'market', 'garden', 'tower', 'forest', 'bridge', 'harbor', 'village', 'library'];
  const lines: string[] = ['Document:'];
  for (let i = 0; i < 60; i++) {
    const a = words[i % words.length]!;
    const b = words[(i * 7 + 3) % words.length]!;
    lines.push(`The code of ${a}${i} is ${1000 + ((i * 7919) % 9000)}. The old ${a} stands near the ${b}.`);
  }
  return lines.join('\n');
}
