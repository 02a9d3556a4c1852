import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readCheckpointIndex } from '../model/safetensors.ts';
import type { LoadedModel } from './loaded-model.ts';

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json'];

/**
 * What persisted caches are keyed by: a sha256 over the model config, every checkpoint tensor's name, shape
 * and dtype, the linear weights as loaded (int8 and its grouping change the cached rows), and the
 * tokenizer files' bytes. Unlike LoadedModel.fingerprint it holds no paths or modification times, so a
 * copied or re-downloaded checkpoint keeps its contexts; the weight values themselves are not hashed (a
 * fine-tune with the same shapes and tokenizer is not told apart).
 */
export function persistentFingerprint(lm: LoadedModel): string {
  const tensors = [...readCheckpointIndex(lm.dir).values()].map((t) => [t.name, t.dtype, t.shape]).sort((a, b) => String(a[0]).localeCompare(String(b[0])));
  const W = lm.model.weights;
  const linear = W.layers.flatMap((l) => [l.wq, l.wk, l.wv, l.wo, l.gate, l.up, l.down]).concat([W.lmHead]);
  const loaded = linear.map((w) => [w.name, w.dtype, w.rows, w.cols, w.groupSize ?? null]);
  const h = createHash('sha256');
  h.update(JSON.stringify({ config: lm.config, tensors, loaded }));
  for (const f of TOKENIZER_FILES) {
    const path = join(lm.dir, f);
    h.update(`\0${f}\0`);
    if (existsSync(path)) h.update(readFileSync(path));
  }
  return `sha256:${h.digest('hex')}`;
}
