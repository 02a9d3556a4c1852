import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_MODEL_DIR, loadModel, type LoadedModel } from '../../src/engine/loaded-model.ts';
import type { Backend } from '../../src/tensor/backend.ts';
import { ReferenceBackend } from '../../src/tensor/reference.ts';

const cache = new Map<string, LoadedModel>();

/** The embedded model on the given backend (reference by default), loaded once per test process. */
export function tinyModel(backend: Backend = new ReferenceBackend()): LoadedModel {
  const key = backend.name;
  let lm = cache.get(key);
  if (!lm) {
    lm = loadModel(DEFAULT_MODEL_DIR, { backend });
    cache.set(key, lm);
  }
  return lm;
}

export interface GoldenPrompt {
  name: string;
  text: string;
  input_ids: number[];
  logits: { position: number; top10_ids: number[]; top10_logits: number[] }[];
  greedy_ids: number[];
  greedy_text: string;
  stopped_on_eos: boolean;
}

/** golden.json of the embedded model, read at test time (the model is retrained; nothing is hard-coded). */
export function goldenPrompts(): GoldenPrompt[] {
  return (JSON.parse(readFileSync(join(DEFAULT_MODEL_DIR, 'golden.json'), 'utf8')) as { prompts: GoldenPrompt[] }).prompts;
}

export function qaRows(): { id: string; context: string; questions: string[]; answers: string[] }[] {
  const path = new URL('../../data/dev/qa.jsonl', import.meta.url);
  return readFileSync(path, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
}
