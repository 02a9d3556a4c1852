import { InvalidArgumentError, type Command } from 'commander';
import { checkKvQuantOptions, DEFAULT_KV_QUANT, KV_DTYPES, parseKvDtype, type KvDtype, type KvQuantOptions } from '../cache/kv-cache.ts';
import { DEFAULT_MODEL_DIR, loadModel, type LoadedModel } from '../engine/loaded-model.ts';
import type { ModelLoadSpec } from '../engine/model-load-spec.ts';
import { DEFAULT_INT8_GROUP, int8Label, type Int8Grouping } from '../tensor/quantize.ts';
import { selectBackend } from '../tensor/select-backend.ts';
import { parseProtection } from '../press/protect.ts';
import { resolve } from 'node:path';
import { checkOutDir } from '../eval/out-dir.ts';
import { PartialResults } from '../eval/partial-results.ts';
import { progressBar } from './progress.ts';

/** --weights: the checkpoint as stored, or int8 quantized at load with one scale per `group` columns (or per row). */
export type WeightsChoice = { kind: 'checkpoint' } | { kind: 'int8'; group: Int8Grouping };

const WEIGHTS_HELP = `checkpoint (as stored), int8 (quantized at load, one scale per ${DEFAULT_INT8_GROUP} columns: about half the bytes per token of bf16), int8/row or int8/g<N> (one scale per row, or per N columns); default checkpoint`;

function weightsOption(value: string): WeightsChoice {
  if (value === 'checkpoint') return { kind: 'checkpoint' };
  if (value === 'int8') return { kind: 'int8', group: DEFAULT_INT8_GROUP };
  if (value === 'int8/row') return { kind: 'int8', group: 'row' };
  const g = /^int8\/g(\d+)$/.exec(value);
  if (g && Number(g[1]) > 0) return { kind: 'int8', group: Number(g[1]) };
  throw new InvalidArgumentError(`--weights must be checkpoint, int8, int8/row or int8/g<N> (N > 0), got "${value}"`);
}

function kvDtypeOption(value: string): KvDtype {
  try {
    return parseKvDtype(value);
  } catch {
    throw new InvalidArgumentError(`--kv-dtype must be ${KV_DTYPES.slice(0, -1).join(', ')} or ${KV_DTYPES.at(-1)}, got "${value}"`);
  }
}

/** --model, --weights, --kv-dtype (and its --kv-group, --kv-residual), for a command that loads a model with openModel(o.model, o.weights, o.kvDtype, o). */
export function modelOptions(cmd: Command): Command {
  return cmd
    .option('-m, --model <dir>', 'Hugging Face checkpoint folder (default: the embedded kvlab-tiny-chat)')
    .option('--weights <kind>', WEIGHTS_HELP, weightsOption)
    .option(
      '--kv-dtype <dtype>',
      'KV cache storage: f32; bf16 (half the memory and the cache bytes read per token; keys and values rounded to bf16); int4 or int2 (KIVI: keys per channel, values per token, in groups, the most recent rows kept fp32); default f32',
      kvDtypeOption,
    )
    .option('--kv-group <n>', `int4 / int2 caches: rows per key group and channels per value group (default ${DEFAULT_KV_QUANT.group})`, intOption('--kv-group', 1))
    .option('--kv-residual <n>', `int4 / int2 caches: most recent rows per head kept in fp32 (default ${DEFAULT_KV_QUANT.residual})`, intOption('--kv-residual', 0));
}

/** The int4 / int2 options of modelOptions(), refused with another --kv-dtype. */
export function kvQuantChoice(kvDtype: KvDtype, o: { kvGroup?: number; kvResidual?: number }): KvQuantOptions {
  if ((o.kvGroup !== undefined || o.kvResidual !== undefined) && kvDtype !== 'int4' && kvDtype !== 'int2') {
    throw new InvalidArgumentError(`--kv-group and --kv-residual apply to --kv-dtype int4 or int2, not ${kvDtype}`);
  }
  return checkKvQuantOptions({ group: o.kvGroup ?? DEFAULT_KV_QUANT.group, residual: o.kvResidual ?? DEFAULT_KV_QUANT.residual });
}

export function weightsLabel(w: WeightsChoice): string {
  return w.kind === 'checkpoint' ? 'checkpoint' : int8Label(w.group);
}

/**
 * For an eval with --out: checks the folder is writable before the run and opens its partial results
 * (<out>/partial.jsonl; --resume continues them). Without --out there is nothing to save or resume.
 */
export async function evalRunOutputs<U>(out: string | undefined, resume: boolean | undefined, settings: Record<string, unknown>): Promise<PartialResults<U> | null> {
  if (!out) {
    if (resume) throw new InvalidArgumentError('--resume needs --out (the folder whose partial.jsonl it continues)');
    return null;
  }
  await checkOutDir(out);
  return PartialResults.open<U>(out, settings, Boolean(resume));
}

/** The settings an eval's partial results must share with a run that resumes them. */
export function evalSettings(command: string, o: { data: string; model?: string; weights?: WeightsChoice; kvDtype?: KvDtype; kvGroup?: number; kvResidual?: number; limit?: number; maxTokens?: number }, extra: Record<string, unknown>): Record<string, unknown> {
  return {
    command,
    data: resolve(o.data),
    model: resolve(o.model ?? DEFAULT_MODEL_DIR),
    weights: weightsLabel(o.weights ?? { kind: 'checkpoint' }),
    kv_dtype: o.kvDtype ?? 'f32',
    ...(o.kvDtype === 'int4' || o.kvDtype === 'int2' ? { kv_quant: kvQuantChoice(o.kvDtype, o) } : {}),
    limit: o.limit ?? null,
    max_tokens: o.maxTokens ?? null,
    ...extra,
  };
}

/** What a worker thread loads for the model options of modelOptions() (mapped when KVLAB_MMAP=1, as openModel does). */
export function modelLoadSpec(o: { model?: string; weights?: WeightsChoice; kvDtype?: KvDtype; kvGroup?: number; kvResidual?: number }): ModelLoadSpec {
  const kvDtype = o.kvDtype ?? 'f32';
  const weights = o.weights ?? { kind: 'checkpoint' };
  return {
    dir: o.model ?? DEFAULT_MODEL_DIR,
    weights: weights.kind,
    int8Group: weights.kind === 'int8' ? weights.group : undefined,
    kvDtype,
    kvQuant: kvQuantChoice(kvDtype, o),
    mmap: process.env.KVLAB_MMAP === '1',
  };
}

export function openModel(dir: string | undefined, weights: WeightsChoice = { kind: 'checkpoint' }, kvDtype: KvDtype = 'f32', quant: { kvGroup?: number; kvResidual?: number } = {}): LoadedModel {
  const kvQuant = kvQuantChoice(kvDtype, quant);
  const bar = progressBar(weights.kind === 'int8' ? `loading (${weightsLabel(weights)})` : 'loading', 50);
  try {
    return loadModel(dir ?? DEFAULT_MODEL_DIR, {
      backend: selectBackend(),
      weights: weights.kind,
      int8Group: weights.kind === 'int8' ? weights.group : undefined,
      kvDtype,
      kvQuant,
      // Weights are read into memory unless KVLAB_MMAP=1 asks for a mapping (see README, "Weights in memory").
      mmap: process.env.KVLAB_MMAP === '1',
      onProgress: (d, t) => bar.update(d, t),
    });
  } finally {
    bar.stop();
  }
}

const INTEGER = /^[+-]?\d+$/;
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
const shown = (value: string) => (value.trim() === '' ? 'an empty value' : `"${value}"`);

/** An integer option >= min; empty values, "0x10" or "1e3" are refused (Number() would read "" as 0). */
export function intOption(name: string, min = 0) {
  return (value: string): number => {
    const n = INTEGER.test(value.trim()) ? Number(value) : NaN;
    if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${shown(value)}`);
    return n;
  };
}

/** A decimal number option in [min, max]; an empty value is refused. */
export function numberOption(name: string, min = -Infinity, max = Infinity) {
  return (value: string): number => {
    const n = DECIMAL.test(value.trim()) ? Number(value) : NaN;
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}], got ${shown(value)}`);
    return n;
  };
}

/** The items of a comma-separated value; an empty item (",", "a,,b", a trailing comma) is refused. */
function splitList(value: string): string[] {
  const items = value.split(',').map((s) => s.trim());
  if (items.some((s) => s === '')) throw new InvalidArgumentError(`the list ${shown(value)} has an empty item (a stray or trailing comma?)`);
  return items;
}

/** A repeatable comma-separated option: each occurrence adds its items. */
export function listOption(value: string, previous: string[] = []): string[] {
  return [...previous, ...splitList(value)];
}

/** Comma-separated kept ratios, each in [0, 1]. */
export function ratioList(value: string): number[] {
  return splitList(value).map((s) => {
    const r = DECIMAL.test(s) ? Number(s) : NaN;
    if (!(r >= 0 && r <= 1)) throw new InvalidArgumentError(`ratio must be in [0, 1] (fraction of the context kept), got "${s}"`);
    return r;
  });
}

/** --query-template: the text a question becomes, which must contain {query}. */
export function queryTemplateOption(value: string): string {
  if (!value.includes('{query}')) throw new InvalidArgumentError(`--query-template must contain {query} (where the question goes), got ${shown(value)}`);
  return value;
}

/** --protect: parsed once at option time, so a bad mode fails before the model loads. */
export function protectOption(value: string, previous: string[] = []): string[] {
  try {
    parseProtection(value);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  return [...previous, value];
}

export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
