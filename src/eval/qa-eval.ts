import { userContextLayout } from '../model/prompt-layout.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { getPress, type Press } from '../press/registry.ts';
import type { QaRow } from './datasets.ts';
import { sweepRatios } from './method-sweep.ts';
import type { ReconstructionOptions } from '../engine/reconstruction-check.ts';

export interface QaEvalOptions {
  methods: string[];
  /** Kept ratios; 'auto' picks each context's ratio by the reconstruction check (reconstruction-check.ts). */
  ratios: (number | 'auto')[];
  /** Options of the reconstruction check behind 'auto'. */
  auto?: Omit<ReconstructionOptions, 'protection'>;
  /** How a question becomes user text ({query} replaced); the dev set uses "Question: {query}". */
  queryTemplate: string;
  maxTokens?: number;
  system?: string;
  onProgress?: (done: number, total: number) => void;
  /** Units (a row under a method, keyed by qaUnitKey) done by an earlier run: used as they are. */
  resumed?: Map<string, QaUnit>;
  /** Called as each unit completes (to save it). */
  onUnit?: (key: string, unit: QaUnit) => void;
}

/** One row under one method: its samples at every ratio and the kept-bytes ratio of each. */
export interface QaUnit {
  samples: QaSample[];
  kept: [ratio: number | 'auto', keptBytesRatio: number][];
  /** Bytes of the whole compressed cache at each ratio (absent in units saved before it was recorded). */
  bytes?: [ratio: number | 'auto', bytesKept: number][];
}

export const qaUnitKey = (method: string, index: number, id: string) => JSON.stringify([method, index, id]);

/**
 * Every row's context and longest question must fit the model's positions; checked before anything runs,
 * so a long run does not die at its 900th row. Returns the first row that does not fit, described.
 */
export function qaRowTooLong(lm: LoadedModel, rows: QaRow[], opts: Pick<QaEvalOptions, 'queryTemplate' | 'system'>): string | null {
  const limit = lm.config.maxPositionEmbeddings;
  for (const row of rows) {
    const layout = userContextLayout(lm, row.context, { queryTemplate: opts.queryTemplate, system: opts.system });
    const question = Math.max(...row.questions.map((q) => layout.queryIds(q).length));
    if (layout.ids.length + question + 1 > limit) {
      return `row ${JSON.stringify(row.id)}: its context (${layout.ids.length} tokens with the template) and longest question (${question}) leave no room for an answer within max_position_embeddings ${limit}`;
    }
  }
  return null;
}

export interface QaResult {
  method: string;
  ratio: number | 'auto';
  accuracy: number;
  n: number;
  /** Mean over contexts of the context bytes kept (for 'auto': the average memory the chosen ratios keep). */
  kept_bytes_ratio: number;
  /** KV cache dtype of the run. */
  kv_dtype: string;
  /** Mean bytes of the compressed cache per row (prompt template included; int4 / int2: codes, scales, zero points, fp32 residual). */
  kv_bytes: number | null;
}

export interface QaSample {
  id: string;
  question_index: number;
  method: string;
  ratio: number | 'auto';
  answer: string;
  expected: string;
  correct: boolean;
}

/**
 * One row under one method: the context prefilled and scored once, then every question at every ratio.
 * The unit of work of a sweep, local or on a queue's workers.
 */
export async function qaUnit(lm: LoadedModel, row: QaRow, press: Press, opts: Pick<QaEvalOptions, 'ratios' | 'queryTemplate' | 'maxTokens' | 'system' | 'auto'>): Promise<QaUnit> {
  const unit: QaUnit = { samples: [], kept: [], bytes: [] };
  for (const point of sweepRatios(lm, row.context, press, opts.ratios, { queryTemplate: opts.queryTemplate, system: opts.system }, opts.auto)) {
    unit.kept.push([point.ratio, point.keptBytesRatio]);
    unit.bytes!.push([point.ratio, point.bytesKept]);
    // The questions are decoded together, each as it would be alone (askMany).
    const replies = await point.session.askMany(row.questions, { maxTokens: opts.maxTokens ?? 24 });
    for (const [qi, r] of replies.entries()) {
      const answer = r.text.trim();
      unit.samples.push({ id: row.id, question_index: qi, method: press.name, ratio: point.ratio, answer, expected: row.answers[qi]!, correct: answer === row.answers[qi]! });
    }
  }
  return unit;
}

/** Multi-query QA under compression: exact match of the stripped answer, per (method, ratio). */
export async function evalQa(lm: LoadedModel, rows: QaRow[], opts: QaEvalOptions): Promise<{ results: QaResult[]; samples: QaSample[] }> {
  const presses = opts.methods.map(getPress);
  const tooLong = qaRowTooLong(lm, rows, opts);
  if (tooLong) throw new RangeError(tooLong);
  const samples: QaSample[] = [];
  const kept = new Map<string, number[]>();
  const bytes = new Map<string, number[]>();
  const total = rows.length * presses.length;
  let done = 0;
  for (const press of presses) {
    for (const [index, row] of rows.entries()) {
      const key = qaUnitKey(press.name, index, row.id);
      let unit = opts.resumed?.get(key);
      if (!unit) {
        unit = await qaUnit(lm, row, press, opts);
        opts.onUnit?.(key, unit);
      }
      for (const [ratio, k] of unit.kept) kept.set(`${press.name}@${ratio}`, [...(kept.get(`${press.name}@${ratio}`) ?? []), k]);
      for (const [ratio, b] of unit.bytes ?? []) bytes.set(`${press.name}@${ratio}`, [...(bytes.get(`${press.name}@${ratio}`) ?? []), b]);
      samples.push(...unit.samples);
      opts.onProgress?.(++done, total);
    }
  }
  const results: QaResult[] = [];
  for (const press of presses)
    for (const ratio of opts.ratios) {
      const s = samples.filter((x) => x.method === press.name && x.ratio === ratio);
      const k = kept.get(`${press.name}@${ratio}`) ?? [];
      const b = bytes.get(`${press.name}@${ratio}`) ?? [];
      results.push({
        method: press.name,
        ratio,
        accuracy: s.length ? s.filter((x) => x.correct).length / s.length : 0,
        n: s.length,
        kept_bytes_ratio: k.length ? k.reduce((a, b) => a + b, 0) / k.length : 1,
        kv_dtype: lm.kvDtype,
        kv_bytes: b.length === rows.length ? Math.round(b.reduce((x, y) => x + y, 0) / b.length) : null,
      });
    }
  return { results, samples };
}
