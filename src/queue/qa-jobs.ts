import type { ReconstructionOptions } from '../engine/reconstruction-check.ts';
import type { QaRow } from '../eval/datasets.ts';
import { qaUnitKey, type QaEvalOptions, type QaUnit } from '../eval/qa-eval.ts';
import type { ModelTag } from './sweep-jobs.ts';

/** One unit of a QA sweep on the queue: a row under a method, with everything a worker needs to run it. */
export interface QaJobData extends ModelTag {
  kind: 'qa';
  /** The unit's key in the sweep (qaUnitKey), under which its result is gathered and saved. */
  unit: string;
  method: string;
  row: QaRow;
  /** Kept ratios; 'auto' picks each context's ratio by the reconstruction check (with `auto`'s options). */
  ratios: (number | 'auto')[];
  auto?: Omit<ReconstructionOptions, 'protection'>;
  queryTemplate: string;
  maxTokens?: number;
  system?: string;
}

export type QaJobSettings = Pick<QaEvalOptions, 'ratios' | 'queryTemplate' | 'maxTokens' | 'system' | 'auto'>;

/** The jobs of a QA sweep: one per (method, row), in the local run's order. */
export function qaJobs(rows: QaRow[], methods: string[], settings: QaJobSettings, model: ModelTag): QaJobData[] {
  return methods.flatMap((method) => rows.map((row, index): QaJobData => ({ kind: 'qa', unit: qaUnitKey(method, index, row.id), method, row, ...settings, ...model })));
}

/** A job's return value, checked before it becomes part of the results (it came over the network). */
export function checkQaUnit(value: unknown, data: QaJobData): QaUnit {
  const u = value as Partial<QaUnit> | null;
  const expected = data.ratios.length * data.row.questions.length;
  const ok =
    !!u &&
    Array.isArray(u.samples) &&
    Array.isArray(u.kept) &&
    u.samples.length === expected &&
    u.kept.length === data.ratios.length &&
    u.samples.every((s) => s && s.id === data.row.id && s.method === data.method && typeof s.answer === 'string');
  if (!ok) throw new Error(`job ${data.unit}: its result is not the ${expected} samples of row ${JSON.stringify(data.row.id)} under ${data.method}`);
  return u as QaUnit;
}
