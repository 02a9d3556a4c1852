import type { KvDtype } from '../cache/kv-cache.ts';
import type { QaUnit } from '../eval/qa-eval.ts';
import type { Int8Grouping } from '../tensor/quantize.ts';
import type { QaJobData } from './qa-jobs.ts';

/** What the worker thread loads: the options of loadModel, minus what cannot cross threads. */
export interface ModelLoadSpec {
  dir: string;
  weights: 'checkpoint' | 'int8';
  int8Group?: Int8Grouping;
  kvDtype: KvDtype;
  mmap: boolean;
}

export interface ThreadRequest {
  id: number;
  data: QaJobData;
}

export type ThreadReply =
  | { type: 'ready'; fingerprint: string; dir: string }
  | { type: 'load-error'; message: string }
  | { type: 'done'; id: number; unit: QaUnit }
  | { type: 'error'; id: number; message: string; unrecoverable: boolean };
