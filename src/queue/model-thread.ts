import type { ModelLoadSpec } from '../engine/model-load-spec.ts';
import { siblingModule, startTsWorker } from '../engine/ts-worker.ts';
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

/** Starts sweep-thread.ts on a worker thread and waits for its model to load. */
export async function startModelThread(spec: ModelLoadSpec): Promise<ModelThread> {
  const thread = startTsWorker(siblingModule(import.meta.url, 'sweep-thread'), spec);
  const pending = new Map<number, { resolve: (u: unknown) => void; reject: (e: Error) => void }>();
  let nextId = 0;
  let dead: Error | null = null;
  let closing = false;
  let onDeath: (e: Error) => void = () => {};
  const died = new Promise<Error>((resolve) => (onDeath = resolve));
  const ready = new Promise<{ tag: ModelTag; dir: string }>((resolve, reject) => {
    thread.on('message', (m: ThreadReply) => {
      if (m.type === 'ready') resolve(m);
      else if (m.type === 'load-error') reject(new Error(m.message));
      else {
        const p = pending.get(m.id);
        pending.delete(m.id);
        if (m.type === 'done') p?.resolve(m.unit);
        else p?.reject(new UnitFailedError(m.message, m.unrecoverable));
      }
    });
    const fail = (e: Error) => {
      if (!dead && !closing) onDeath(e);
      dead = e;
      reject(e);
      for (const p of pending.values()) p.reject(e);
      pending.clear();
    };
    thread.on('error', fail);
    thread.on('exit', (code) => fail(new Error(`the model thread exited (code ${code})`)));
  });
  const { tag, dir } = await ready;
  return {
    tag,
    dir,
    died,
    run: (data) =>
      new Promise<unknown>((resolve, reject) => {
        if (dead) return reject(dead);
        const id = nextId++;
        pending.set(id, { resolve, reject });
        thread.postMessage({ id, data });
      }),
    close: async () => {
      closing = true;
      await thread.terminate();
    },
  };
}
