import { seededRandom } from '../tensor/seeded-random.ts';

export interface SamplingOptions {
  /** 0 (default) = greedy. */
  temperature?: number;
  /** Keep only the k most likely tokens (0 = off). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (1 = off). */
  topP?: number;
  seed?: number;
}

/** Greedy argmax; ties go to the lowest id (as torch.argmax). */
export function argmax(logits: Float32Array, offset = 0, length = logits.length - offset): number {
  let best = 0;
  let bestVal = -Infinity;
  for (let i = 0; i < length; i++) {
    const v = logits[offset + i]!;
    if (v > bestVal) {
      bestVal = v;
      best = i;
    }
  }
  return best;
}

export class Sampler {
  private readonly random: () => number;
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;

  constructor(opts: SamplingOptions = {}) {
    this.temperature = opts.temperature ?? 0;
    this.topK = opts.topK ?? 0;
    this.topP = opts.topP ?? 1;
    if (!(this.temperature >= 0)) throw new RangeError(`temperature must be >= 0, got ${opts.temperature}`);
    if (!Number.isInteger(this.topK) || this.topK < 0) throw new RangeError(`top-k must be a non-negative integer, got ${opts.topK}`);
    if (!(this.topP > 0 && this.topP <= 1)) throw new RangeError(`top-p must be in (0, 1], got ${opts.topP}`);
    this.random = seededRandom(opts.seed ?? 0);
  }

  sample(logits: Float32Array, offset = 0, vocab = logits.length - offset): number {
    if (this.temperature === 0) return argmax(logits, offset, vocab);
    let ids = Array.from({ length: vocab }, (_, i) => i);
    ids.sort((a, b) => logits[offset + b]! - logits[offset + a]! || a - b);
    if (this.topK > 0) ids = ids.slice(0, this.topK);
    const maxLogit = logits[offset + ids[0]!]!;
    let probs = ids.map((id) => Math.exp((logits[offset + id]! - maxLogit) / this.temperature));
    let total = probs.reduce((s, p) => s + p, 0);
    if (this.topP < 1) {
      let acc = 0;
      let cut = probs.length;
      for (let i = 0; i < probs.length; i++) {
        acc += probs[i]! / total;
        if (acc >= this.topP) {
          cut = i + 1;
          break;
        }
      }
      ids = ids.slice(0, cut);
      probs = probs.slice(0, cut);
      total = probs.reduce((s, p) => s + p, 0);
    }
    let r = this.random() * total;
    for (let i = 0; i < ids.length; i++) {
      r -= probs[i]!;
      if (r <= 0) return ids[i]!;
    }
    return ids[ids.length - 1]!;
  }
}
