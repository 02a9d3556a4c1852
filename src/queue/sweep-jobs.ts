import { createHash } from 'node:crypto';
import type { KvDtype, KvQuantOptions } from '../cache/kv-cache.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { persistentFingerprint } from '../engine/model-fingerprint.ts';
import { checkQaUnit, type QaJobData } from './qa-jobs.ts';
import { checkStudyUnit, type StudyJobData } from './study-jobs.ts';

/** The model a sweep was submitted for (persistentFingerprint) and its KV storage: a worker checks both. */
export interface ModelTag {
  fingerprint: string;
  kvDtype: KvDtype;
  /** Group size and residual window of an int4 / int2 cache (absent for f32 / bf16): they change results too. */
  kvQuant?: KvQuantOptions;
}

export function modelTagOf(lm: LoadedModel): ModelTag {
  const quantized = lm.kvDtype === 'int4' || lm.kvDtype === 'int2';
  return { fingerprint: persistentFingerprint(lm), kvDtype: lm.kvDtype, ...(quantized ? { kvQuant: { group: lm.kvQuant.group, residual: lm.kvQuant.residual } } : {}) };
}

/** The same model and KV storage (a job's tag against a worker's). */
export function sameModelTag(a: ModelTag, b: ModelTag): boolean {
  return a.fingerprint === b.fingerprint && a.kvDtype === b.kvDtype && a.kvQuant?.group === b.kvQuant?.group && a.kvQuant?.residual === b.kvQuant?.residual;
}

export function describeModelTag(t: ModelTag): string {
  return `${t.fingerprint} with a ${t.kvDtype} KV cache${t.kvQuant ? ` (group ${t.kvQuant.group}, residual ${t.kvQuant.residual})` : ''}`;
}

/** A job of any sweep kind; a worker takes every kind for its model. */
export type SweepJobData = QaJobData | StudyJobData;

/**
 * The queue a model's workers take jobs from: one per (model fingerprint, KV dtype), so a worker only ever
 * receives jobs its model can run, and any number of sweeps (of any kind) for that model share it. Named
 * kvlab-sweep-* since jobs have kinds: a worker from before that (queue kvlab-qa-*) never sees a study job.
 */
export function queueNameFor(t: ModelTag): string {
  const quant = t.kvQuant ? `\0${t.kvQuant.group}\0${t.kvQuant.residual}` : '';
  return `kvlab-sweep-${createHash('sha256').update(`${t.fingerprint}\0${t.kvDtype}${quant}`).digest('hex').slice(0, 16)}`;
}

/**
 * A job's id: its kind and a hash of everything that decides its result, so submitting the same unit again
 * (a resumed sweep, a second submitter) finds the job already there instead of adding a duplicate.
 */
export function sweepJobId(data: SweepJobData): string {
  return `${data.kind}-${createHash('sha256').update(JSON.stringify(data)).digest('hex').slice(0, 40)}`;
}

/** What a job is, for log lines and errors. */
export function describeJob(data: SweepJobData): string {
  return data.kind === 'qa' ? `${data.method} on row ${JSON.stringify(data.row.id)}` : `${data.method} on item ${JSON.stringify(data.item.id)} (${data.item.variant})`;
}

/** A job's return value checked against its data; throws naming the job when it is not that unit's result. */
export function checkJobResult(value: unknown, data: SweepJobData): unknown {
  return data.kind === 'qa' ? checkQaUnit(value, data) : checkStudyUnit(value, data);
}
