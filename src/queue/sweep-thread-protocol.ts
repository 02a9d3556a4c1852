import type { ModelTag, SweepJobData } from './sweep-jobs.ts';

export interface ThreadRequest {
  id: number;
  data: SweepJobData;
}

export type ThreadReply =
  | { type: 'ready'; tag: ModelTag; dir: string }
  | { type: 'load-error'; message: string }
  | { type: 'done'; id: number; unit: unknown }
  | { type: 'error'; id: number; message: string; unrecoverable: boolean };
