import { InvalidArgumentError } from 'commander';
import { DEFAULT_MODEL_DIR, loadModel, type LoadedModel } from '../engine/loaded-model.ts';
import { selectBackend } from '../tensor/select-backend.ts';
import { progressBar } from './progress.ts';

export type WeightsChoice = 'checkpoint' | 'int8';

export const WEIGHTS_HELP = 'checkpoint (as stored) or int8 (quantized at load, one scale per 128 columns: half the bytes per token of bf16)';

export function weightsOption(value: string): WeightsChoice {
  if (value !== 'checkpoint' && value !== 'int8') throw new InvalidArgumentError(`--weights must be checkpoint or int8, got "${value}"`);
  return value;
}

export function openModel(dir: string | undefined, weights: WeightsChoice = 'checkpoint'): LoadedModel {
  const bar = progressBar(weights === 'int8' ? 'loading (int8)' : 'loading', 50);
  try {
    return loadModel(dir ?? DEFAULT_MODEL_DIR, { backend: selectBackend(), weights, onProgress: (d, t) => bar.update(d, t) });
  } finally {
    bar.stop();
  }
}

export function intOption(name: string, min = 0) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${value}"`);
    return n;
  };
}

export function numberOption(name: string, min = -Infinity, max = Infinity) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}], got "${value}"`);
    return n;
  };
}

export function listOption(value: string, previous: string[] = []): string[] {
  return [...previous, ...value.split(',').map((s) => s.trim()).filter(Boolean)];
}

export function ratioList(value: string): number[] {
  return value.split(',').map((s) => {
    const r = Number(s.trim());
    if (!(r >= 0 && r <= 1)) throw new InvalidArgumentError(`ratio must be in [0, 1] (fraction of the context kept), got "${s}"`);
    return r;
  });
}

export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
