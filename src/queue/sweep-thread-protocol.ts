import type { KvDtype, KvQuantOptions } from '../cache/kv-cache.ts';
import type { Int8Grouping } from '../tensor/quantize.ts';
import type { ModelTag, SweepJobData } from './sweep-jobs.ts';

/** What the worker thread loads: the options of loadModel, minus what cannot cross threads. */
export interface ModelLoadSpec {
  dir: string;
  weights: 'checkpoint' | 'int8';
  int8Group?: Int8Grouping;
  kvDtype: KvDtype;
  kvQuant?: KvQuantOptions;
  mmap: boolean;
}

export interface ThreadRequest {
  id: number;
  data: SweepJobData;
}

export type ThreadReply =
  | { type: 'ready'; tag: ModelTag; dir: string }
  | { type: 'load-error'; message: string }
  | { type: 'done'; id: number; unit: unknown }
  | { type: 'error'; id: number; message: string; unrecoverable: boolean };
