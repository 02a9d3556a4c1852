import type { KvCache } from '../cache/kv-cache.ts';
import type { SessionLayout } from '../model/prompt-layout.ts';
import { checkRatio } from '../press/budgets.ts';
import { KVZIP_FIRST_PROMPT, KVZIP_NEXT_PROMPT, reconstructionChunk } from '../press/methods/kvzip.ts';
import type { Protection } from '../press/protect.ts';
import { KvlabError } from '../tensor/kvlab-error.ts';
import type { ScoredContext } from './context-session.ts';
import type { LoadedModel } from './loaded-model.ts';
import { choosePredictedRatio, negativeProbability, PredictorError, type NegativePredictor } from './negative-predictor.ts';
import { keptMass, routerFeatures, scoreEntropy, type RouterFeatures } from './router-features.ts';

/** The ratios `ratio: "auto"` tries unless told otherwise (1 is always tried: it is the reference). */
export const AUTO_RATIO_GRID: readonly number[] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1];
/** Default threshold: a candidate must reconstruct at least this fraction of what the full cache does. */
export const AUTO_RATIO_THRESHOLD = 0.9;
/** Repeat-prompt chunk (tokens of context per teacher-forced pass), as KVzip's scoring chunks. */
const RECONSTRUCTION_CHUNK = 2000;
/** Rows per forward call whose logits are held at once (bounds memory on large vocabularies). */
const LOGIT_ROWS = 256;

export interface ReconstructionOptions {
  /** Candidate kept ratios, each in [0, 1]; 1 is added when missing. Default AUTO_RATIO_GRID. */
  candidates?: readonly number[];
  /**
   * A candidate passes when its token accuracy is >= threshold, read relative to the full cache's own
   * accuracy (`relative`, the default: the check asks "does compression lose what the model could
   * reconstruct?") or as an absolute fraction of the context's tokens.
   */
  threshold?: number;
  mode?: 'relative' | 'absolute';
  protection?: Protection;
  /** Context tokens per teacher-forced pass (KVzip's chunking; a shorter chunk when positions run out). */
  chunkSize?: number;
  /**
   * Choose by a negative-sample predictor (`kvlab eval router`) instead of the threshold: the smallest
   * candidate whose predicted probability of being negative is below `maxProbability` (default: the
   * predictor's own).
   */
  predictor?: NegativePredictor;
  maxProbability?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface CandidateAccuracy {
  ratio: number;
  /** Context tokens the compressed cache predicted right (argmax), teacher-forced, over all context tokens. */
  accuracy: number;
  correct: number;
  total: number;
  /** The query-agnostic signals of this candidate (router-features.ts). */
  features: RouterFeatures;
  /** With a predictor: its probability that this candidate is a negative sample. */
  negativeProbability?: number;
}

export interface ReconstructionCheck {
  /** Per candidate, ascending by ratio (ratio 1 included). */
  candidates: CandidateAccuracy[];
  /** The full cache's accuracy (the ratio-1 candidate's). */
  fullAccuracy: number;
  threshold: number;
  mode: 'relative' | 'absolute';
  /** The smallest candidate ratio that passes (1 when none smaller does). */
  chosen: number;
  /** What chose: the reconstruction threshold, or the predictor (then `maxProbability` is its bar). */
  rule: 'threshold' | 'predictor';
  maxProbability?: number;
}

/** A reconstruction option that cannot be used (threshold, mode or candidate out of range). */
export class ReconstructionOptionError extends KvlabError {
  constructor(message: string) {
    super('bad_option', message);
  }
}

/**
 * `ratio: "auto"` without a query: for each candidate ratio, the scored context is compressed (a copy) and
 * asked to repeat itself with KVzip's repeat prompt, teacher-forced, so each candidate costs one forward pass
 * over the context (in KVzip's chunks when the positions left are fewer); the accuracy is the fraction of
 * context tokens whose argmax prediction is the token itself. The chosen ratio is the smallest that passes.
 */
export function reconstructionCheck(scored: ScoredContext, opts: ReconstructionOptions = {}): ReconstructionCheck {
  const { threshold, mode, candidates, maxProbability } = checkedOptions(opts);
  const session = scored.session;
  const measured: (Omit<CandidateAccuracy, 'features'> & { keptMass: number })[] = [];
  candidates.forEach((ratio, i) => {
    const { session: copy, keep } = scored.compressed(ratio, opts.protection);
    try {
      measured.push({ ratio, ...reconstructionAccuracy(session.lm, copy.cache, session.layout, opts.chunkSize), keptMass: keptMass(scored.scores, keep) });
    } finally {
      copy.cache.release();
    }
    opts.onProgress?.(i + 1, candidates.length);
  });
  const fullAccuracy = measured[measured.length - 1]!.accuracy;
  const entropy = scoreEntropy(scored.scores);
  const contextTokens = session.context.end - session.context.start;
  const results: CandidateAccuracy[] = measured.map(({ keptMass: kept, ...c }) => {
    const features = routerFeatures({ ratio: c.ratio, accuracy: c.accuracy, fullAccuracy, contextTokens, entropy, keptMass: kept });
    return { ...c, features, ...(opts.predictor ? { negativeProbability: negativeProbability(opts.predictor, features) } : {}) };
  });
  if (opts.predictor) {
    const chosen = choosePredictedRatio(results as { ratio: number; negativeProbability: number }[], maxProbability!);
    return { candidates: results, fullAccuracy, threshold, mode, chosen, rule: 'predictor', maxProbability };
  }
  return { candidates: results, fullAccuracy, threshold, mode, chosen: chooseRatio(results, threshold, mode, fullAccuracy), rule: 'threshold' };
}

/** The smallest candidate whose accuracy passes the threshold; 1 when none does. */
export function chooseRatio(candidates: readonly Pick<CandidateAccuracy, 'ratio' | 'accuracy'>[], threshold: number, mode: 'relative' | 'absolute', fullAccuracy: number): number {
  const bar = mode === 'relative' ? threshold * fullAccuracy : threshold;
  const passing = candidates.filter((c) => c.accuracy >= bar - 1e-12).map((c) => c.ratio);
  return passing.length ? Math.min(...passing) : 1;
}

function checkedOptions(opts: ReconstructionOptions): { threshold: number; mode: 'relative' | 'absolute'; candidates: number[]; maxProbability?: number } {
  const threshold = opts.threshold ?? AUTO_RATIO_THRESHOLD;
  const mode = opts.mode ?? 'relative';
  if (!(threshold >= 0 && threshold <= 1)) throw new ReconstructionOptionError(`reconstruction threshold must be a number in [0, 1], got ${threshold}`);
  if (mode !== 'relative' && mode !== 'absolute') throw new ReconstructionOptionError(`reconstruction mode must be "relative" or "absolute", got ${JSON.stringify(mode)}`);
  const grid = opts.candidates ?? AUTO_RATIO_GRID;
  if (grid.length === 0) throw new ReconstructionOptionError('reconstruction candidates: give at least one ratio');
  for (const r of grid) checkRatio(r);
  const candidates = [...new Set([...grid, 1])].sort((a, b) => a - b);
  if (opts.maxProbability !== undefined && !opts.predictor) throw new ReconstructionOptionError('a maximum negative probability goes with a predictor');
  const maxProbability = opts.predictor ? (opts.maxProbability ?? opts.predictor.maxProbability) : undefined;
  if (maxProbability !== undefined && !(maxProbability > 0 && maxProbability <= 1)) throw new PredictorError(`maximum negative probability must be a number in (0, 1], got ${maxProbability}`);
  return { threshold, mode, candidates, maxProbability };
}

/**
 * Teacher-forced reconstruction of the layout's context from `cache` (which holds the prompt, compressed or
 * not): R = lead ++ suffix ++ context tokens runs on top of the cache, and each context token counts as right
 * when the logits of the row before it put it first. The rows R adds are truncated away afterwards.
 */
export function reconstructionAccuracy(lm: LoadedModel, cache: KvCache, layout: SessionLayout, chunkSize = RECONSTRUCTION_CHUNK): { accuracy: number; correct: number; total: number } {
  const tok = lm.tokenizer;
  const first = tok.encode(layout.queryLead + KVZIP_FIRST_PROMPT);
  const next = tok.encode(layout.queryLead + KVZIP_NEXT_PROMPT);
  const post = tok.encode(layout.suffix);
  const { start, end } = layout.context;
  const T = end - start;
  if (T === 0) return { accuracy: 1, correct: 0, total: 0 };
  const tail = 8;
  const m = reconstructionChunk(lm.config.maxPositionEmbeddings, cache.nextPos, Math.max(first.length, next.length + tail) + post.length, chunkSize, T);
  let correct = 0;
  for (let cs = start; cs < end; cs += m) {
    const ce = Math.min(end, cs + m);
    const lead = cs === start ? first : [...next, ...layout.ids.slice(Math.max(start, cs - tail), cs)];
    const R = [...lead, ...post, ...layout.ids.slice(cs, ce)];
    const firstTarget = lead.length + post.length;
    const mark = cache.mark();
    try {
      for (let s = 0; s < R.length; s += LOGIT_ROWS) {
        const part = R.slice(s, s + LOGIT_ROWS);
        const logits = lm.model.forward(part, cache, { logits: 'all' })!;
        const vocab = logits.length / part.length;
        for (let i = 0; i < part.length; i++) {
          const target = s + i + 1;
          if (target < firstTarget || target >= R.length) continue;
          if (argmax(logits, i * vocab, vocab) === R[target]) correct++;
        }
      }
    } finally {
      cache.truncate(mark);
    }
  }
  return { accuracy: correct / T, correct, total: T };
}

function argmax(x: Float32Array, offset: number, n: number): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = x[offset + i]!;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}
