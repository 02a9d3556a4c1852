import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readRegularText } from '../model/regular-file.ts';
import { parseCsv } from './csv.ts';
import { DataFileError, readJsonFile, readJsonl } from './jsonl.ts';

/** One sample's score (points, 0..100) under one setting of an eval run. */
export interface SampleScore {
  /** The sample across settings: [row id, question index, variant, protection]. */
  key: string;
  id: string;
  question_index: number;
  method: string;
  ratio: number;
  score: number;
}

export interface RunScores {
  dir: string;
  /** The data file the run evaluated (results.json's `data`). */
  data: string | null;
  metric: string;
  scores: SampleScore[];
}

/** Points of one samples.csv cell: true/false are 100/0, numbers (rates in [0, 1]) are scaled to 100. */
function points(cell: string, where: string): number {
  if (cell === 'true') return 100;
  if (cell === 'false') return 0;
  const x = Number(cell);
  if (cell.trim() === '' || !Number.isFinite(x)) throw new DataFileError(`${where}: "${cell}" is not a score (true/false or a number)`);
  return x * 100;
}

/**
 * The per-sample scores an eval run wrote (samples.csv beside results.json): QA runs score `correct`;
 * instruction and leakage runs a metric column named by `metric` (`invert` for lower-is-better ones like leak).
 * A protection other than none is part of the method's name.
 */
export function readRunScores(dir: string, opts: { metric?: string; invert?: boolean } = {}): RunScores {
  const csvPath = join(dir, 'samples.csv');
  if (!existsSync(csvPath)) throw new DataFileError(`${dir}: no samples.csv (not the --out folder of a finished eval run)`);
  const rows = parseCsv(readRegularText(csvPath, 'samples file', (m) => new DataFileError(m)), csvPath);
  const results = existsSync(join(dir, 'results.json')) ? (readJsonFile(join(dir, 'results.json')) as { data?: unknown }) : {};
  const metric = opts.metric ?? 'correct';
  if (rows.length && !(metric in rows[0]!)) throw new DataFileError(`${csvPath}: no "${metric}" column (columns: ${Object.keys(rows[0]!).join(', ')}); choose one with --metric`);
  const scores = rows.flatMap((r, k) => {
    const where = `${csvPath}: record ${k + 2}`;
    if (r[metric] === '') return [];
    const protect = r.protect && r.protect !== 'none' ? r.protect : '';
    const qi = r.question_index === undefined || r.question_index === '' ? 0 : Number(r.question_index);
    const ratio = Number(r.ratio);
    if (!r.id || !r.method || !Number.isFinite(ratio) || !Number.isInteger(qi)) throw new DataFileError(`${where}: needs id, method, ratio (and an integer question_index)`);
    const raw = points(r[metric]!, `${where}, column ${metric}`);
    return [{ key: JSON.stringify([r.id, qi, r.variant ?? '', protect]), id: r.id, question_index: qi, method: protect ? `${r.method}+${protect}` : r.method, ratio, score: opts.invert ? 100 - raw : raw }];
  });
  return { dir, data: typeof results.data === 'string' ? results.data : null, metric, scores };
}

export interface SettingNegatives {
  method: string;
  ratio: number;
  /** Samples with a full-cache score. */
  n: number;
  negatives: string[];
  mean_drop: number;
}

export interface NegativeAnalysis {
  threshold: number;
  settings: SettingNegatives[];
  /** Per ratio: the samples negative under every method run at that ratio. */
  intersection: { ratio: number; methods: string[]; negatives: string[] }[];
  /** Negative under at least one setting. */
  union: string[];
}

/**
 * Negative samples: a sample whose score under a method x ratio falls by at least `threshold` points below its
 * score on the full cache (ratio 1: every method keeps everything there; their mean is taken).
 */
export function findNegatives(scores: SampleScore[], threshold: number): NegativeAnalysis {
  if (!(threshold > 0)) throw new RangeError(`threshold must be a positive number of points, got ${threshold}`);
  const full = new Map<string, number[]>();
  for (const s of scores) if (s.ratio === 1) full.set(s.key, [...(full.get(s.key) ?? []), s.score]);
  if (full.size === 0) throw new DataFileError('no sample was scored at ratio 1 (the full cache): run the eval with ratio 1 among its ratios');
  const base = new Map([...full].map(([k, v]) => [k, v.reduce((a, b) => a + b, 0) / v.length]));
  const settingKeys = [...new Set(scores.filter((s) => s.ratio < 1).map((s) => JSON.stringify([s.method, s.ratio])))];
  const settings = settingKeys.map((sk) => {
    const [method, ratio] = JSON.parse(sk) as [string, number];
    const here = scores.filter((s) => s.method === method && s.ratio === ratio && base.has(s.key));
    const drops = here.map((s) => ({ key: s.key, drop: base.get(s.key)! - s.score }));
    return {
      method,
      ratio,
      n: here.length,
      negatives: [...new Set(drops.filter((d) => d.drop >= threshold).map((d) => d.key))].sort(),
      mean_drop: drops.length ? drops.reduce((a, d) => a + d.drop, 0) / drops.length : 0,
    };
  });
  const ratios = [...new Set(settings.map((s) => s.ratio))].sort((a, b) => b - a);
  const intersection = ratios.map((ratio) => {
    const at = settings.filter((s) => s.ratio === ratio);
    const sets = at.map((s) => new Set(s.negatives));
    return { ratio, methods: at.map((s) => s.method), negatives: [...sets[0]!].filter((k) => sets.every((set) => set.has(k))).sort() };
  });
  return { threshold, settings, intersection, union: [...new Set(settings.flatMap((s) => s.negatives))].sort() };
}

export const sampleOfKey = (key: string) => {
  const [id, question_index] = JSON.parse(key) as [string, number];
  return { id, question_index };
};

/**
 * The data file's rows holding the chosen samples, fields as they were: a QA row keeps only the chosen
 * questions and answers (`source_question_indices` says which they were); any other row is kept whole
 * when one of its samples is chosen. The result is a data file `eval` takes again.
 */
export function negativeRows(dataPath: string, keys: string[]): Record<string, unknown>[] {
  const chosen = new Map<string, Set<number>>();
  for (const k of keys) {
    const { id, question_index } = sampleOfKey(k);
    chosen.set(id, (chosen.get(id) ?? new Set()).add(question_index));
  }
  const out: Record<string, unknown>[] = [];
  const seen = new Set<string>();
  for (const { value } of readJsonl(dataPath)) {
    const id = String(value.id);
    const qs = chosen.get(id);
    if (!qs) continue;
    seen.add(id);
    if (Array.isArray(value.questions) && Array.isArray(value.answers)) {
      const idx = [...qs].sort((a, b) => a - b).filter((i) => i < (value.questions as unknown[]).length);
      if (idx.length < qs.size) throw new DataFileError(`${dataPath}: row ${id} has fewer questions than the run scored; is this the run's data file?`);
      out.push({ ...value, questions: idx.map((i) => (value.questions as unknown[])[i]), answers: idx.map((i) => (value.answers as unknown[])[i]), source_question_indices: idx });
    } else out.push(value);
  }
  const missing = [...chosen.keys()].filter((id) => !seen.has(id));
  if (missing.length) throw new DataFileError(`${dataPath}: no row with id ${missing.slice(0, 3).map((m) => JSON.stringify(m)).join(', ')}${missing.length > 3 ? ` (and ${missing.length - 3} more)` : ''}; is this the run's data file?`);
  return out;
}

/** The features a QA sample is described by: context length, where the answer's fact sits, the asked attribute. */
export function qaSampleFeatures(row: Record<string, unknown>, questionIndex: number): Record<string, string> {
  const context = String(row.context ?? '');
  const question = String((row.questions as unknown[] | undefined)?.[questionIndex] ?? '');
  const answer = String((row.answers as unknown[] | undefined)?.[questionIndex] ?? '');
  const tokens = typeof row.context_tokens === 'number' ? row.context_tokens : null;
  const length = tokens === null ? 'unknown' : tokens < 500 ? '< 500 tokens' : tokens < 1000 ? '500-999 tokens' : '>= 1000 tokens';
  const entity = /of (.+?)\?\s*$/.exec(question)?.[1];
  const attribute = /^What is the (.+?) of /.exec(question)?.[1] ?? 'other';
  let at = entity ? context.indexOf(`of ${entity} is ${answer}`) : -1;
  if (at < 0 && answer) at = context.indexOf(answer);
  const position = at < 0 || !context.length ? 'not found' : at / context.length < 1 / 3 ? 'first third' : at / context.length < 2 / 3 ? 'middle third' : 'last third';
  return { context_length: length, answer_position: position, attribute, answer_kind: /^\d+$/.test(answer) ? 'number' : 'word' };
}

/** The features an instruction (or leakage) item is described by: how many instructions, which kinds, the question kind. */
export function instructionItemFeatures(row: Record<string, unknown>): Record<string, string> {
  const list = (row.instructions as { type?: unknown }[]).map((i) => String(i?.type ?? '?'));
  const out: Record<string, string> = { instruction_count: String(list.length) };
  for (const t of new Set(list)) out[`has_${t}`] = 'yes';
  if (typeof row.user === 'string') out.asks = /name/i.test(row.user) ? 'name' : /secret|code/i.test(row.user) ? 'secret' : 'other';
  return out;
}

/** Features of a sample of a data row: QA rows per question, instruction items per item; other rows have none. */
function sampleFeatures(row: Record<string, unknown>, questionIndex: number): Record<string, string> {
  if (Array.isArray(row.questions)) return qaSampleFeatures(row, questionIndex);
  if (Array.isArray(row.instructions)) return instructionItemFeatures(row);
  return {};
}

export interface FeatureCount {
  feature: string;
  value: string;
  negatives: number;
  samples: number;
}

/** For each feature value: how many negative samples have it, beside how many of all scored samples do (QA and instruction rows). */
export function featureCounts(dataPath: string, allKeys: string[], negativeKeys: string[]): FeatureCount[] {
  const rows = new Map(readJsonl(dataPath).map(({ value }) => [String(value.id), value]));
  const neg = new Set(negativeKeys);
  const counts = new Map<string, FeatureCount>();
  for (const key of allKeys) {
    const { id, question_index } = sampleOfKey(key);
    const row = rows.get(id);
    if (!row) continue;
    for (const [feature, value] of Object.entries(sampleFeatures(row, question_index))) {
      const k = `${feature}\u0000${value}`;
      const c = counts.get(k) ?? { feature, value, negatives: 0, samples: 0 };
      c.samples++;
      if (neg.has(key)) c.negatives++;
      counts.set(k, c);
    }
  }
  return [...counts.values()].sort((a, b) => a.feature.localeCompare(b.feature) || b.samples - a.samples || a.value.localeCompare(b.value));
}

/** The data file of a set of runs: the one they name (all must agree), or the one given. */
export function runsDataFile(runs: RunScores[], given?: string): string {
  if (given) return given;
  const named = [...new Set(runs.map((r) => (r.data ? resolve(r.data) : null)))];
  if (named.includes(null)) throw new DataFileError(`${runs.find((r) => !r.data)!.dir}: results.json names no data file; pass --data`);
  if (named.length > 1) throw new DataFileError(`the runs evaluated different data files (${named.join(', ')}); negatives compare one data set`);
  return named[0]!;
}
