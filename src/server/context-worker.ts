import type { Worker } from 'node:worker_threads';
import { decodeContextFile } from '../cache/context-file.ts';
import type { KvCache } from '../cache/kv-cache.ts';
import { compressContext } from '../engine/compress-context.ts';
import type { CompressionReport } from '../engine/context-session.ts';
import type { ConversationContext } from '../engine/conversation-context.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import type { ModelLoadSpec } from '../engine/model-load-spec.ts';
import { siblingModule, startTsWorker } from '../engine/ts-worker.ts';
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

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void; settled: Promise<void> };

/** One started thread: its requests in flight, and why it stopped once it has. */
interface ThreadHandle {
  worker: Worker;
  pending: Map<number, Pending>;
  dead: Error | null;
}

/**
 * Works on a worker thread that loads the model of `spec` (a second copy of the weights unless they are mapped);
 * refuses to start when that model's fingerprint is not `fingerprint`, the server's own, since the thread's rows
 * would then belong to another model. Requests run one at a time, in order. A thread that stops (a crash, the
 * memory limit) fails the requests it held, and the next request starts a new one.
 */
export async function startContextThread(spec: ModelLoadSpec, fingerprint: string): Promise<ContextWorker> {
  let closing = false;
  let nextId = 0;
  const spawn = async (): Promise<ThreadHandle> => {
    const worker = startTsWorker(siblingModule(import.meta.url, 'context-thread'), spec);
    const h: ThreadHandle = { worker, pending: new Map(), dead: null };
    const ready = new Promise<void>((resolve, reject) => {
      worker.on('message', (m: ContextThreadReply) => {
        if (m.type === 'ready') {
          if (m.fingerprint === fingerprint) resolve();
          else reject(new Error('the context thread loaded a model whose fingerprint differs from the server\'s (another folder, weights or KV storage)'));
          return;
        }
        if (m.type === 'load-error') return reject(new Error(`the context thread could not load the model: ${m.message}`));
        const p = h.pending.get(m.id);
        h.pending.delete(m.id);
        if (!p) return;
        if (m.type === 'error') return p.reject(new Error(m.message));
        if (m.type === 'inspected') return p.resolve(m.result);
        try {
          const { cache } = decodeContextFile(Buffer.from(m.file.buffer, m.file.byteOffset, m.file.length), 'the context thread\'s reply', fingerprint);
          p.resolve({ session: { cache, ids: m.ids, prefix: m.prefix, context: m.context }, report: m.report } satisfies BuiltContext);
        } catch (e) {
          p.reject(e as Error);
        }
      });
      const fail = (e: Error) => {
        if (h.dead) return;
        h.dead = new Error(`the context thread stopped: ${e.message}`);
        reject(h.dead);
        for (const p of h.pending.values()) p.reject(h.dead);
        h.pending.clear();
      };
      worker.on('error', fail);
      worker.on('exit', (code) => fail(new Error(closing ? 'the server is shutting down' : `exit code ${code}`)));
    });
    try {
      await ready;
    } catch (e) {
      await worker.terminate();
      throw e;
    }
    return h;
  };
  let current = await spawn();
  let respawn: Promise<ThreadHandle> | null = null;
  let restarts = 0;
  const live = async (): Promise<ThreadHandle> => {
    if (!current.dead) return current;
    if (closing) throw current.dead;
    if (!respawn) {
      restarts++;
      respawn = spawn().finally(() => (respawn = null));
    }
    current = await respawn;
    return current;
  };
  const send = async <T>(message: Omit<ContextThreadRequest, 'id'>): Promise<T> => {
    const h = await live();
    return new Promise<T>((resolve, reject) => {
      const id = nextId++;
      let settle: () => void = () => {};
      const settled = new Promise<void>((r) => (settle = r));
      h.pending.set(id, { resolve: (v) => (settle(), resolve(v as T)), reject: (e) => (settle(), reject(e)), settled });
      h.worker.postMessage({ ...message, id });
    });
  };
  return {
    where: 'thread',
    get thread() {
      return current.worker;
    },
    get restarts() {
      return restarts;
    },
    compress: (_ctx, request) => send<BuiltContext>({ kind: 'compress', request }),
    inspect: (request) => send<InspectResult>({ kind: 'inspect', request }),
    // Lets the work in hand finish (its requests are still answered), then stops the thread.
    close: async () => {
      closing = true;
      await respawn?.catch(() => {});
      await Promise.all([...current.pending.values()].map((p) => p.settled));
      await current.worker.terminate();
    },
  };
}
