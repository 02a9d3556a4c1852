import { createHash } from 'node:crypto';
import type { ReconstructionOptions } from '../engine/reconstruction-check.ts';
import type { KvDtype } from '../cache/kv-cache.ts';
import type { QaRow } from '../eval/datasets.ts';
import type { QaEvalOptions, QaUnit } from '../eval/qa-eval.ts';

/** One unit of a QA sweep on the queue: a row under a method, with everything a worker needs to run it. */
export interface QaJobData {
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
  /** The model the sweep was submitted for (persistentFingerprint) and its KV storage: a worker checks both. */
  fingerprint: string;
  kvDtype: KvDtype;
}

export type QaJobSettings = Pick<QaEvalOptions, 'ratios' | 'queryTemplate' | 'maxTokens' | 'system' | 'auto'>;

/**
 * The queue a model's workers take jobs from: one per (model fingerprint, KV dtype), so a worker only ever
 * receives jobs its model can run, and any number of sweeps for that model share it.
 */
export function queueNameFor(fingerprint: string, kvDtype: KvDtype): string {
  return `kvlab-qa-${createHash('sha256').update(`${fingerprint}\0${kvDtype}`).digest('hex').slice(0, 16)}`;
}

/**
 * A job's id: a hash of everything that decides its result, so submitting the same unit again (a resumed
 * sweep, a second submitter) finds the job already there instead of adding a duplicate.
 */
export function qaJobId(data: QaJobData): string {
  return `qa-${createHash('sha256').update(JSON.stringify(data)).digest('hex').slice(0, 40)}`;
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
