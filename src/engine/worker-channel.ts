import type { Worker } from 'node:worker_threads';
import { startTsWorker } from './ts-worker.ts';

/**
 * Requests to a worker thread, each answered by one reply carrying the request's id: the bookkeeping the
 * threads of `kvlab worker` (sweep units) and `kvlab serve` (context work) share. The thread's first message
 * says whether it started (its model loaded); every later one answers a request.
 */
export interface WorkerChannel<Reply extends { id: number }> {
  readonly worker: Worker;
  /** Why the thread stopped, once it has; requests then fail with it. */
  readonly dead: Error | null;
  /** Resolves when the thread stops other than by close(): nothing more can run on it. */
  readonly died: Promise<Error>;
  /** Posts `message` with a fresh id; resolves with the thread's reply to it. */
  request(message: object): Promise<Reply>;
  /** Resolves once every request in flight has had its reply or failed. */
  drained(): Promise<void>;
  close(): Promise<void>;
}

export interface ChannelOptions<Start> {
  /** The thread's first message: what it started with, or why it could not start. */
  start(message: unknown): { ready: Start } | { error: Error };
  /** The error of a thread that stopped: by an uncaught `error`, or by exiting with `exitCode`; `closing` once close() ran. */
  stopped(how: { error: Error } | { exitCode: number }, closing: boolean): Error;
}

type Pending<Reply> = { resolve: (r: Reply) => void; reject: (e: Error) => void };

/** Starts `entry` on a worker thread with `data` and waits for its first message. */
export async function openWorkerChannel<Start, Reply extends { id: number }>(
  entry: URL,
  data: unknown,
  o: ChannelOptions<Start>,
): Promise<{ channel: WorkerChannel<Reply>; ready: Start }> {
  const worker = startTsWorker(entry, data);
  const pending = new Map<number, Pending<Reply>>();
  let nextId = 0;
  let dead: Error | null = null;
  let closing = false;
  let onDeath: (e: Error) => void = () => {};
  const died = new Promise<Error>((resolve) => (onDeath = resolve));
  let idle: () => void = () => {};
  let idleNow = Promise.resolve();
  const settle = (id: number): Pending<Reply> | undefined => {
    const p = pending.get(id);
    pending.delete(id);
    if (pending.size === 0) idle();
    return p;
  };
  let started = false;
  const ready = new Promise<Start>((resolve, reject) => {
    worker.on('message', (m: unknown) => {
      if (!started) {
        started = true;
        const s = o.start(m);
        if ('ready' in s) resolve(s.ready);
        else reject(s.error);
        return;
      }
      settle((m as Reply).id)?.resolve(m as Reply);
    });
    const fail = (how: { error: Error } | { exitCode: number }) => {
      if (dead) return;
      dead = o.stopped(how, closing);
      if (!closing) onDeath(dead);
      reject(dead);
      for (const id of [...pending.keys()]) settle(id)?.reject(dead);
    };
    worker.on('error', (error) => fail({ error }));
    worker.on('exit', (exitCode) => fail({ exitCode }));
  });
  let start: Start;
  try {
    start = await ready;
  } catch (e) {
    closing = true;
    await worker.terminate();
    throw e;
  }
  const channel: WorkerChannel<Reply> = {
    worker,
    get dead() {
      return dead;
    },
    died,
    request: (message) =>
      new Promise<Reply>((resolve, reject) => {
        if (dead) return reject(dead);
        const id = nextId++;
        if (pending.size === 0) idleNow = new Promise<void>((r) => (idle = r));
        pending.set(id, { resolve, reject });
        worker.postMessage({ ...message, id });
      }),
    drained: () => (pending.size === 0 ? Promise.resolve() : idleNow),
    close: async () => {
      closing = true;
      await worker.terminate();
    },
  };
  return { channel, ready: start };
}
