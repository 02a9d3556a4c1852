import type { NegativePredictor } from '../engine/negative-predictor.ts';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename } from 'node:path';
import { serve } from '@hono/node-server';
import type { LoadedModel } from '../engine/loaded-model.ts';
import type { ModelLoadSpec } from '../engine/model-load-spec.ts';
import { persistentFingerprint } from '../engine/model-fingerprint.ts';
import type { Scheduler } from '../engine/scheduler-types.ts';
import { BatchScheduler } from '../engine/scheduler.ts';
import { createApp, type ServerState } from './app.ts';
import { inlineContextWorker, startContextThread } from './context-worker.ts';
import { ContextStore } from './context-store.ts';
import { ServerMetrics } from './metrics.ts';
import { DEFAULT_BODY_LIMIT, DEFAULT_MAX_TOKENS } from './defaults.ts';

export interface ServeOptions {
  /** Loads the model; called once the server listens (GET /health answers 503 until it has returned). */
  load: () => LoadedModel | Promise<LoadedModel>;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Folder of context files; null keeps contexts in memory only (or in Redis, with redisStore). */
  storeDir: string | null;
  /** redis://HOST:PORT/N: contexts kept in Redis, shared by every server on it (instead of storeDir). */
  redisStore?: string;
  apiKeys?: string[];
  bodyLimitBytes?: number;
  defaultMaxTokens?: number;
  /** The scheduler to drive; by default the serial one with these limits. */
  makeScheduler?: (lm: LoadedModel) => Scheduler;
  maxQueue?: number;
  /** Sequences decoded together per step (the batching scheduler's batch size). Default 16. */
  maxBatch?: number;
  /** The model's KV memory pool budget in bytes. Default a quarter of RAM. */
  kvMemoryBytes?: number;
  /**
   * Compress POST /v1/contexts and re-score /inspect/{id} on a worker thread that loads this model (the same one
   * `load` returns: its fingerprint is checked), so streams keep going meanwhile. Without it that work runs on the
   * event loop.
   */
  contextThread?: ModelLoadSpec;
  /** `ratio: "auto"` chooses by this negative-sample predictor (`kvlab eval router`) unless a request asks for the threshold. */
  autoPredictor?: NegativePredictor;
  log?: (line: string) => void;
}

export interface RunningServer {
  readonly url: string;
  readonly port: number;
  readonly state: ServerState;
  /** Resolves once the model is loaded and the store listed. */
  readonly ready: Promise<void>;
  /** Stops taking requests, lets every running and queued sequence finish, closes the listener. */
  shutdown(): Promise<void>;
}

export { DEFAULT_BODY_LIMIT, DEFAULT_MAX_TOKENS, defaultStoreDir } from './defaults.ts';

/** The Redis client loads only for a server that stores its contexts there. */
async function openRedisStore(url: string) {
  const [{ parseRedisUrl }, { RedisContexts }] = await Promise.all([import('../queue/redis-connection.ts'), import('./redis-contexts.ts')]);
  return RedisContexts.open(parseRedisUrl(url, '--store'));
}

export async function startServer(opts: ServeOptions): Promise<RunningServer> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const state: ServerState = { phase: 'loading', modelId: 'loading', lm: null, scheduler: null, store: null, contextWorker: null, autoPredictor: opts.autoPredictor };
  const metrics = new ServerMetrics(() => state.scheduler, () => state.store?.loadedBytes() ?? 0, () => state.contextWorker);
  const app = createApp(state, {
    apiKeys: opts.apiKeys ?? [],
    bodyLimitBytes: opts.bodyLimitBytes ?? DEFAULT_BODY_LIMIT,
    defaultMaxTokens: opts.defaultMaxTokens ?? DEFAULT_MAX_TOKENS,
    metrics,
  });
  const server = await new Promise<Server>((resolve) => {
    const s = serve({ fetch: app.fetch, port: opts.port ?? 8080, hostname: opts.host ?? '127.0.0.1' }, () => resolve(s as Server));
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${opts.host ?? '127.0.0.1'}:${port}`;

  const ready = (async () => {
    // Let the listener answer /health (503) before the synchronous load takes the thread.
    await new Promise((r) => setImmediate(r));
    const lm = await opts.load();
    const remote = opts.redisStore ? await openRedisStore(opts.redisStore) : null;
    const fingerprint = persistentFingerprint(lm);
    const store = new ContextStore(lm, fingerprint, remote ? null : opts.storeDir, remote);
    const scan = store.scan();
    for (const s of scan.skipped) log(`kvlab serve: skipped ${s.file}: ${s.reason}`);
    state.contextWorker = metrics.timed(opts.contextThread ? await startContextThread(opts.contextThread, fingerprint) : inlineContextWorker(lm));
    state.lm = lm;
    state.store = store;
    state.modelId = basename(lm.dir);
    state.scheduler = opts.makeScheduler ? opts.makeScheduler(lm) : new BatchScheduler(lm, { pool: lm.kvPool(opts.kvMemoryBytes), maxQueue: opts.maxQueue, maxBatch: opts.maxBatch });
    state.phase = 'ready';
    log(`kvlab serve: ${state.modelId} on ${url}; ${remote ? `contexts in ${remote.where}` : `${scan.listed} stored context(s)${opts.storeDir ? ` in ${opts.storeDir}` : ' (memory only)'}`}`);
  })();

  let closing: Promise<void> | null = null;
  const shutdown = () =>
    (closing ??= (async () => {
      state.phase = 'draining';
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await ready.catch(() => {});
      await state.scheduler?.drain();
      await state.contextWorker?.close();
      await state.store?.remote?.close();
      // Responses of the drained sequences are written by now; whatever stays open is idle or a finished stream.
      setTimeout(() => server.closeAllConnections(), 1000).unref();
      await closed;
    })());
  return { url, port, state, ready, shutdown };
}
