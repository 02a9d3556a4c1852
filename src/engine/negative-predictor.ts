import { readRegularText } from '../model/regular-file.ts';
import { KvlabError } from '../tensor/kvlab-error.ts';
import { FEATURE_NAMES, type FeatureName, type RouterFeatures } from './router-features.ts';

export const PREDICTOR_KIND = 'kvlab-negative-predictor';

/**
 * A logistic model of "this (context, method, ratio) will be a negative sample", saved as a small JSON file
 * by `kvlab eval router`: p = sigmoid(bias + sum_i weights[i] * (x_i - mean[i]) / scale[i]) over the named
 * features. A candidate ratio counts as negative when p >= maxProbability.
 */
export interface NegativePredictor {
  kind: typeof PREDICTOR_KIND;
  version: 1;
  features: FeatureName[];
  mean: number[];
  scale: number[];
  weights: number[];
  bias: number;
  maxProbability: number;
  /** What it was trained on and how its labels were defined (free-form, for the reader). */
  trainedOn?: Record<string, unknown>;
}

/** A predictor file or object that cannot be used (names the field at fault). */
export class PredictorError extends KvlabError {
  constructor(message: string) {
    super('predictor', message);
  }
}

export function negativeProbability(p: NegativePredictor, f: RouterFeatures): number {
  let z = p.bias;
  p.features.forEach((name, i) => (z += (p.weights[i]! * (f[name] - p.mean[i]!)) / p.scale[i]!));
  return 1 / (1 + Math.exp(-z));
}

/** The smallest candidate predicted not negative (probability below the predictor's bar); 1 when none is. */
export function choosePredictedRatio(candidates: readonly { ratio: number; negativeProbability: number }[], maxProbability: number): number {
  const ok = candidates.filter((c) => c.ratio === 1 || c.negativeProbability < maxProbability).map((c) => c.ratio);
  return ok.length ? Math.min(...ok) : 1;
}

/** Checks a parsed predictor (from a file or a request body); `where` names its source in errors. */
export function parsePredictor(v: unknown, where: string): NegativePredictor {
  const fail = (m: string): never => {
    throw new PredictorError(`${where}: ${m}`);
  };
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('a predictor is a JSON object');
  const o = v as Record<string, unknown>;
  if (o.kind !== PREDICTOR_KIND) fail(`kind must be "${PREDICTOR_KIND}" (a file written by kvlab eval router), got ${JSON.stringify(o.kind)}`);
  if (o.version !== 1) fail(`version ${JSON.stringify(o.version)} is not supported (1)`);
  if (!Array.isArray(o.features) || o.features.length === 0) fail('features must be a non-empty array of feature names');
  const features = o.features as unknown[];
  for (const f of features) if (!FEATURE_NAMES.includes(f as FeatureName)) fail(`unknown feature ${JSON.stringify(f)} (known: ${FEATURE_NAMES.join(', ')})`);
  const n = features.length;
  const numbers = (key: string, positive = false): number[] => {
    const a = o[key];
    if (!Array.isArray(a) || a.length !== n || !a.every((x) => typeof x === 'number' && Number.isFinite(x) && (!positive || x > 0))) {
      fail(`${key} must be an array of ${n} finite numbers${positive ? ' above 0' : ''} (one per feature)`);
    }
    return a as number[];
  };
  const mean = numbers('mean');
  const scale = numbers('scale', true);
  const weights = numbers('weights');
  if (typeof o.bias !== 'number' || !Number.isFinite(o.bias)) fail('bias must be a finite number');
  const maxP = o.maxProbability;
  if (typeof maxP !== 'number' || !(maxP > 0 && maxP <= 1)) fail(`maxProbability must be a number in (0, 1], got ${JSON.stringify(maxP)}`);
  const trainedOn = o.trainedOn;
  if (trainedOn !== undefined && (typeof trainedOn !== 'object' || trainedOn === null || Array.isArray(trainedOn))) fail('trainedOn must be an object when present');
  return { kind: PREDICTOR_KIND, version: 1, features: features as FeatureName[], mean, scale, weights, bias: o.bias as number, maxProbability: maxP as number, ...(trainedOn ? { trainedOn: trainedOn as Record<string, unknown> } : {}) };
}

export function loadPredictor(path: string): NegativePredictor {
  const text = readRegularText(path, 'predictor file', (m) => new PredictorError(m));
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new PredictorError(`${path}: not JSON (${(e as Error).message})`);
  }
  return parsePredictor(v, path);
}
