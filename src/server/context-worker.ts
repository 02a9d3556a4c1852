import type { Worker } from 'node:worker_threads';
import { decodeContextFile } from '../cache/context-file.ts';
import type { KvCache } from '../cache/kv-cache.ts';
import { compressContext } from '../engine/compress-context.ts';
import type { CompressionReport } from '../engine/context-session.ts';
import type { ConversationContext } from '../engine/conversation-context.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import type { ModelLoadSpec } from '../engine/model-load-spec.ts';
import { siblingModule } from '../engine/ts-worker.ts';
import { openWorkerChannel, type WorkerChannel } from '../engine/worker-channel.ts';
import type { Span } from '../model/prompt-layout.ts';
import { getPress } from '../press/registry.ts';
import type { CompressRequest, ContextThreadReply, ContextThreadRequest, InspectRequest, InspectResult } from './context-thread-protocol.ts';
import { inspectStored } from './inspect-stored.ts';

/** A compressed context as the store keeps it: its rows and the layout and report of its compression. */
export interface BuiltContext {
  session: { cache: KvCache; ids: number[]; prefix: Span; context: Span };
  report: CompressionReport;
}

/** The server's long synchronous work on contexts: compressing a posted one, re-scoring a stored one for /inspect. */
export interface ContextWorker {
  /** 'thread' when the work runs off the event loop. */
  readonly where: 'inline' | 'thread';
  compress(ctx: ConversationContext, request: CompressRequest): Promise<BuiltContext>;
  inspect(request: InspectRequest): Promise<InspectResult>;
  /** The worker thread doing the work now (none inline): for health checks and tests. */
  readonly thread?: Worker;
  /** Threads started again after one stopped. */
  readonly restarts: number;
  close(): Promise<void>;
}

/** Works on the calling thread: every other request waits until it is done. */
export function inlineContextWorker(lm: LoadedModel): ContextWorker {
  return {
    where: 'inline',
    compress: async (ctx, r) => compressContext(lm, ctx, getPress(r.method), r.ratio, r.protection, r.auto),
    inspect: (r) => inspectStored(lm, r),
    restarts: 0,
    close: async () => {},
  };
}

type Reply = Extract<ContextThreadReply, { id: number }>;

/**
 * Works on a worker thread that loads the model of `spec` (a second copy of the weights unless they are mapped);
 * refuses to start when that model's fingerprint is not `fingerprint`, the server's own, since the thread's rows
 * would then belong to another model. Requests run one at a time, in order. A thread that stops (a crash, the
 * memory limit) fails the requests it held, and the next request starts a new one.
 */
export async function startContextThread(spec: ModelLoadSpec, fingerprint: string): Promise<ContextWorker> {
  let closing = false;
  const spawn = async (): Promise<WorkerChannel<Reply>> =>
    (
      await openWorkerChannel<null, Reply>(siblingModule(import.meta.url, 'context-thread'), spec, {
        start: (m) => {
          const r = m as ContextThreadReply;
          if (r.type === 'load-error') return { error: new Error(`the context thread could not load the model: ${r.message}`) };
          if (r.type !== 'ready') return { error: new Error(`the context thread sent ${r.type} before it was ready`) };
          if (r.fingerprint !== fingerprint)
            return { error: new Error("the context thread loaded a model whose fingerprint differs from the server's (another folder, weights or KV storage)") };
          return { ready: null };
        },
        stopped: (how) =>
          new Error(`the context thread stopped: ${'error' in how ? how.error.message : closing ? 'the server is shutting down' : `exit code ${how.exitCode}`}`),
      })
    ).channel;
  let current = await spawn();
  let respawn: Promise<WorkerChannel<Reply>> | null = null;
  let restarts = 0;
  const live = async (): Promise<WorkerChannel<Reply>> => {
    if (!current.dead) return current;
    if (closing) throw current.dead;
    if (!respawn) {
      restarts++;
      respawn = spawn().finally(() => (respawn = null));
    }
    current = await respawn;
    return current;
  };
  const send = async (message: Omit<ContextThreadRequest, 'id'>): Promise<Reply> => {
    const r = await (await live()).request(message);
    if (r.type === 'error') throw new Error(r.message);
    return r;
  };
  return {
    where: 'thread',
    get thread() {
      return current.worker;
    },
    get restarts() {
      return restarts;
    },
    compress: async (_ctx, request) => {
      const r = await send({ kind: 'compress', request });
      if (r.type !== 'compressed') throw new Error(`the context thread answered a compression with ${r.type}`);
      const { cache } = decodeContextFile(Buffer.from(r.file.buffer, r.file.byteOffset, r.file.length), "the context thread's reply", fingerprint);
      return { session: { cache, ids: r.ids, prefix: r.prefix, context: r.context }, report: r.report };
    },
    inspect: async (request) => {
      const r = await send({ kind: 'inspect', request });
      if (r.type !== 'inspected') throw new Error(`the context thread answered an inspection with ${r.type}`);
      return r.result;
    },
    // Lets the work in hand finish (its requests are still answered), then stops the thread.
    close: async () => {
      closing = true;
      await respawn?.catch(() => {});
      await current.drained();
      await current.close();
    },
  };
}
