import { KvlabError } from '../tensor/kvlab-error.ts';
import type { KvCache } from '../cache/kv-cache.ts';
import type { Weight } from '../tensor/backend.ts';
import type { LlamaModel } from './llama.ts';

/** Logits or activations that hold NaN or +-Infinity; the message names the first layer (and tensor) at fault. */
export class NonFiniteError extends KvlabError {
  constructor(message: string) {
    super('non_finite', message);
  }
}

/** Index of the first NaN or infinite element, or -1. */
export function firstNonFinite(a: Float32Array): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) return i;
  return -1;
}

/** Whether any element of a weight is NaN or infinite (bf16/f16 by their exponent bits, int8 by its scales). */
function weightNonFinite(w: Weight): boolean {
  if (w.scales && firstNonFinite(w.scales) >= 0) return true;
  if (w.dtype === 'f32') return firstNonFinite(w.data as Float32Array) >= 0;
  const mask = w.dtype === 'bf16' ? 0x7f80 : w.dtype === 'f16' ? 0x7c00 : 0;
  if (mask === 0) return false;
  const bits = w.data as Uint16Array;
  for (let i = 0; i < bits.length; i++) if ((bits[i]! & mask) === mask) return true;
  return false;
}

/** Checkpoint names of the per-layer vectors (matrices carry their own names). */
const VECTOR_NAMES: Record<string, string> = {
  inputNorm: 'input_layernorm.weight',
  postAttnNorm: 'post_attention_layernorm.weight',
  bq: 'self_attn.q_proj.bias',
  bk: 'self_attn.k_proj.bias',
  bv: 'self_attn.v_proj.bias',
  bo: 'self_attn.o_proj.bias',
  qNorm: 'self_attn.q_norm.weight',
  kNorm: 'self_attn.k_norm.weight',
};

/** Names of a layer's tensors that hold non-finite values (layer -1: the embedding, numLayers: final norm and LM head). */
function badTensors(model: LlamaModel, layer: number): string[] {
  const W = model.weights;
  const p = `model.layers.${layer}.`;
  const candidates: [string, Weight | Float32Array | undefined][] =
    layer < 0
      ? [['model.embed_tokens.weight', W.embed]]
      : layer >= W.layers.length
        ? [['model.norm.weight', W.finalNorm], [W.lmHead === W.embed ? 'model.embed_tokens.weight (tied LM head)' : 'lm_head.weight', W.lmHead]]
        : Object.entries(W.layers[layer]!).map(([k, v]) => [`${p}${VECTOR_NAMES[k] ?? k}`, v as Weight | Float32Array | undefined]);
  const names: string[] = [];
  for (const [name, t] of candidates) {
    if (!t) continue;
    const bad = t instanceof Float32Array ? firstNonFinite(t) >= 0 : weightNonFinite(t);
    if (bad) names.push(t instanceof Float32Array ? name : (t.name ?? name));
  }
  return names;
}

/**
 * Throws a NonFiniteError if `logits` (the output of feeding `ids` on top of `mark`) hold NaN or Inf. To say
 * where the values broke, the same tokens are fed again from `mark` with every layer's input, queries, keys
 * and values checked; the cache is left at `mark` afterwards. Costs one scan of the logits when all is well.
 */
export function checkLogits(model: LlamaModel, logits: Float32Array, cache: KvCache, mark: ReturnType<KvCache['mark']>, ids: ArrayLike<number>, what: string, chunk = 512): void {
  const at = firstNonFinite(logits);
  if (at < 0) return;
  cache.truncate(mark);
  let layer = model.config.numLayers;
  const arr = Array.from(ids);
  try {
    for (let s = 0; s < arr.length && layer === model.config.numLayers; s += chunk) {
      model.forward(arr.slice(s, s + chunk), cache, {
        logits: 'none',
        onLayer: (c) => {
          if (c.layer >= layer) return;
          if (firstNonFinite(c.hidden) >= 0) layer = c.layer - 1;
          else if (firstNonFinite(c.q) >= 0 || firstNonFinite(c.k) >= 0 || firstNonFinite(c.v) >= 0) layer = c.layer;
        },
      });
    }
  } finally {
    cache.truncate(mark);
  }
  // The last layer's output is only seen through the final norm; blame it if its weights are at fault.
  if (layer === model.config.numLayers && badTensors(model, layer - 1).length) layer -= 1;
  const where = layer < 0 ? 'the embedding lookup' : layer >= model.config.numLayers ? 'the final norm / LM head' : `layer ${layer}`;
  const tensors = badTensors(model, layer);
  const blame = tensors.length ? `; non-finite weights in ${tensors.join(', ')}` : '';
  throw new NonFiniteError(`non-finite logits (${logits[at]} at token id ${at % model.weights.lmHead.rows}) after ${what}: ${where} is the first whose output is not finite${blame}`);
}
