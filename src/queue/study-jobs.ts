import { studyUnitKey, type StudyItem, type StudySample, type StudyUnitOptions } from '../eval/prompt-study.ts';
import type { StudyItemSource } from '../eval/study-item-source.ts';
import type { Protection } from '../press/protect.ts';
import type { ModelTag } from './sweep-jobs.ts';

/**
 * One unit of a prompt study (`eval instructions` / `eval leakage`) on the queue: an item under a method.
 * The item travels as its source data (its scorer is rebuilt from it on the worker); its id and variant
 * come along so the worker can check that it rebuilt the same item.
 */
export interface StudyJobData extends ModelTag {
  kind: 'study';
  /** The unit's key in the study (studyUnitKey). */
  unit: string;
  method: string;
  item: { id: string; variant: string; source: StudyItemSource };
  ratios: number[];
  /** null: no protection (undefined does not survive JSON). */
  protections: (Protection | null)[];
  document?: string;
  maxTokens?: number;
}

export type StudyJobSettings = Pick<StudyUnitOptions, 'ratios' | 'protections' | 'document' | 'maxTokens'>;

/** The jobs of a study: one per (method, item), in the local run's order. Every item must carry its source. */
export function studyJobs(items: StudyItem[], methods: string[], settings: StudyJobSettings, model: ModelTag): StudyJobData[] {
  for (const item of items) {
    if (!item.source) throw new Error(`item ${JSON.stringify(item.id)} has no source data, so it cannot be rebuilt by a worker: it cannot run on the queue`);
  }
  const { protections, ...rest } = settings;
  return methods.flatMap((method) =>
    items.map(
      (item, index): StudyJobData => ({
        kind: 'study',
        unit: studyUnitKey(method, index, item),
        method,
        item: { id: item.id, variant: item.variant ?? 'original', source: item.source! },
        ...rest,
        protections: protections.map((p) => p ?? null),
        ...model,
      }),
    ),
  );
}

/** The settings a worker runs a study job with. */
export function studyUnitOptions(data: StudyJobData): StudyUnitOptions {
  return { ratios: data.ratios, protections: data.protections.map((p) => p ?? undefined), document: data.document, maxTokens: data.maxTokens };
}

/** A job's return value, checked before it becomes part of the results (it came over the network). */
export function checkStudyUnit(value: unknown, data: StudyJobData): StudySample[] {
  const expected = data.ratios.length * data.protections.length;
  const ok =
    Array.isArray(value) &&
    value.length === expected &&
    value.every((s: Partial<StudySample> | null) => s && s.id === data.item.id && s.variant === data.item.variant && s.method === data.method && typeof s.response === 'string' && !!s.metrics && !!s.keepRate);
  if (!ok) throw new Error(`job ${data.unit}: its result is not the ${expected} samples of item ${JSON.stringify(data.item.id)} (${data.item.variant}) under ${data.method}`);
  return value as StudySample[];
}
