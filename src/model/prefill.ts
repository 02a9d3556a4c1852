import { ContextTooLongError } from '../tensor/kvlab-error.ts';
import type { KvCache } from '../cache/kv-cache.ts';
import type { ForwardOptions, LlamaModel } from './llama.ts';
import { checkLogits } from './non-finite.ts';

export interface PrefillOptions extends Omit<ForwardOptions, 'logits'> {
  /** Tokens per forward pass (bounds activation memory). */
  chunkSize?: number;
  onProgress?: (done: number, total: number) => void;
}

export const DEFAULT_PREFILL_CHUNK = 512;

/** Feeds ids into the cache in chunks; returns the logits of the last token. */
export function prefill(model: LlamaModel, cache: KvCache, ids: ArrayLike<number>, opts: PrefillOptions = {}): Float32Array {
  const chunk = opts.chunkSize ?? DEFAULT_PREFILL_CHUNK;
  if (!(chunk >= 1)) throw new RangeError(`prefill chunk size must be >= 1, got ${chunk}`);
  const total = ids.length;
  if (total === 0) throw new RangeError('prefill needs at least one token');
  const limit = model.config.maxPositionEmbeddings;
  if (cache.nextPos + total > limit) {
    throw new ContextTooLongError(`context of ${cache.nextPos + total} tokens is longer than the model allows (${limit})`);
  }
  const arr = Array.from(ids);
  const mark = cache.mark();
  let logits: Float32Array | null = null;
  for (let s = 0; s < total; s += chunk) {
    const part = arr.slice(s, Math.min(total, s + chunk));
    const last = s + part.length >= total;
    logits = model.forward(part, cache, { ...opts, logits: last ? 'last' : 'none' });
    opts.onProgress?.(s + part.length, total);
  }
  checkLogits(model, logits!, cache, mark, arr, `the prefill of ${total} tokens`, chunk);
  // A quantized cache holds the prompt packed from here on (all but its residual window), as scorers and decoding see it.
  cache.settle();
  return logits!;
}
