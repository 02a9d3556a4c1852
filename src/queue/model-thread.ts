import type { ModelLoadSpec } from '../engine/model-load-spec.ts';
import { siblingModule } from '../engine/ts-worker.ts';
import { openWorkerChannel } from '../engine/worker-channel.ts';
import type { ModelTag, SweepJobData } from './sweep-jobs.ts';
import type { ThreadReply } from './sweep-thread-protocol.ts';

/** A unit the thread could not run; `unrecoverable` when running it again cannot help (an unknown method). */
export class UnitFailedError extends Error {
  constructor(
    message: string,
    readonly unrecoverable: boolean,
  ) {
    super(message);
  }
}

export interface ModelThread {
  /** The loaded model's fingerprint and KV storage. */
  tag: ModelTag;
  dir: string;
  /** Resolves if the thread ends other than by close() (a crash): nothing more can run on it. */
  died: Promise<Error>;
  /** Runs a job of any kind; resolves with its unit's result. */
  run(data: SweepJobData): Promise<unknown>;
  close(): Promise<void>;
}

type UnitReply = Extract<ThreadReply, { id: number }>;

/** Starts sweep-thread.ts on a worker thread and waits for its model to load. */
export async function startModelThread(spec: ModelLoadSpec): Promise<ModelThread> {
  const { channel, ready } = await openWorkerChannel<{ tag: ModelTag; dir: string }, UnitReply>(siblingModule(import.meta.url, 'sweep-thread'), spec, {
    start: (m) => {
      const r = m as ThreadReply;
      if (r.type === 'ready') return { ready: { tag: r.tag, dir: r.dir } };
      return { error: new Error(r.type === 'load-error' ? r.message : `the model thread sent ${r.type} before it was ready`) };
    },
    stopped: (how) => ('error' in how ? how.error : new Error(`the model thread exited (code ${how.exitCode})`)),
  });
  return {
    ...ready,
    died: channel.died,
    run: async (data) => {
      const r = await channel.request({ data });
      if (r.type === 'done') return r.unit;
      throw new UnitFailedError(r.message, r.unrecoverable);
    },
    close: () => channel.close(),
  };
}
