import { createHash, timingSafeEqual } from 'node:crypto';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { LoadedModel } from '../engine/loaded-model.ts';
import type { NegativePredictor } from '../engine/negative-predictor.ts';
import type { Scheduler } from '../engine/scheduler-types.ts';
import { ApiError } from './api-error.ts';
import { chatCompletion } from './chat-route.ts';
import { contextRoutes } from './context-routes.ts';
import { inspectRoutes } from './inspect-route.ts';
import type { ContextWorker } from './context-worker.ts';
import type { ContextStore } from './context-store.ts';
import type { ServerMetrics } from './metrics.ts';

/** What the routes read; filled in once the model has loaded (phase 'ready'). */
export interface ServerState {
  phase: 'loading' | 'ready' | 'draining';
  modelId: string;
  lm: LoadedModel | null;
  scheduler: Scheduler | null;
  store: ContextStore | null;
  /** Where POST /v1/contexts compresses (on a worker thread for `kvlab serve`). */
  contextWorker: ContextWorker | null;
  /** What `ratio: "auto"` chooses by unless a request asks for the threshold (`kvlab serve --auto-predictor`). */
  autoPredictor?: NegativePredictor;
}

export interface AppOptions {
  /** Accepted bearer keys; empty leaves every route open. */
  apiKeys: string[];
  bodyLimitBytes: number;
  /** max_tokens when a request gives none (clipped to what the model's length leaves). */
  defaultMaxTokens: number;
  metrics: ServerMetrics;
}

export type AppEnv = { Variables: { tenant: string } };

/** The tenant a key maps to: contexts are visible to, and reusable by, requests with the same key only. */
export function tenantOf(key: string | null): string {
  return key === null ? 'local' : `key_${createHash('sha256').update(key).digest('hex').slice(0, 24)}`;
}

export function createApp(state: ServerState, opts: AppOptions): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  const keys = opts.apiKeys.map((k) => Buffer.from(k));

  app.use('*', async (c, next) => {
    await next();
    opts.metrics.requests.inc({ route: c.req.routePath, status: String(c.res.status) });
  });

  app.get('/health', (c) => {
    if (state.phase === 'ready') return c.json({ status: 'ok', model: state.modelId });
    return c.json({ status: state.phase }, 503);
  });

  app.use('*', async (c, next) => {
    const auth = c.req.header('authorization');
    if (keys.length) {
      const given = /^Bearer\s+(.+)$/i.exec(auth ?? '')?.[1]?.trim();
      const match = given !== undefined && keys.some((k) => k.length === Buffer.byteLength(given) && timingSafeEqual(k, Buffer.from(given)));
      if (!match) throw new ApiError(401, given === undefined ? 'Missing API key: send Authorization: Bearer <key>' : 'Incorrect API key provided', null, 'invalid_api_key');
      c.set('tenant', tenantOf(given!));
    } else c.set('tenant', tenantOf(null));
    await next();
  });

  app.get('/metrics', async (c) => c.body(await opts.metrics.registry.metrics(), 200, { 'Content-Type': opts.metrics.registry.contentType }));

  app.use('/v1/*', async (c, next) => {
    if (state.phase === 'loading') throw new ApiError(503, 'the model is still loading; retry shortly', null, 'model_loading', { 'Retry-After': '2' });
    if (state.phase === 'draining') throw new ApiError(503, 'the server is shutting down', null, 'shutting_down');
    // A store shared with other servers: see the contexts they added or removed.
    await state.store?.refresh(c.get('tenant'));
    await next();
  });
  app.use(
    '/v1/*',
    bodyLimit({
      maxSize: opts.bodyLimitBytes,
      onError: () => {
        // The unread rest of the body leaves the connection unusable: tell the client not to reuse it.
        throw new ApiError(413, `the request body is larger than ${opts.bodyLimitBytes} bytes`, null, 'request_too_large', { Connection: 'close' });
      },
    }),
  );

  app.get('/v1/models', (c) =>
    c.json({ object: 'list', data: [{ id: state.modelId, object: 'model', created: 0, owned_by: 'kvlab' }] }),
  );
  app.get('/v1/models/:id', (c) => {
    if (c.req.param('id') !== state.modelId) throw new ApiError(404, `The model '${c.req.param('id')}' does not exist`, 'model', 'model_not_found');
    return c.json({ id: state.modelId, object: 'model', created: 0, owned_by: 'kvlab' });
  });
  app.post('/v1/chat/completions', (c) => chatCompletion(c, ready(state), opts));
  contextRoutes(app, () => ready(state));
  inspectRoutes(app, () => ready(state));

  app.notFound((c) => c.json(new ApiError(404, `no route ${c.req.method} ${c.req.path}`, null, 'unknown_url').toJSON(), 404));
  app.onError((err, c) => {
    if (err instanceof ApiError) return c.json(err.toJSON(), err.status, err.headers);
    process.stderr.write(`kvlab serve: ${c.req.method} ${c.req.path}: ${err.stack ?? err.message}\n`);
    return c.json(new ApiError(500, `internal error: ${err.message}`, null, 'internal_error').toJSON(), 500);
  });
  return app;
}

export interface ReadyState {
  modelId: string;
  lm: LoadedModel;
  scheduler: Scheduler;
  store: ContextStore;
  contextWorker: ContextWorker;
  autoPredictor?: NegativePredictor;
}

function ready(state: ServerState): ReadyState {
  if (!state.lm || !state.scheduler || !state.store || !state.contextWorker) throw new ApiError(503, 'the model is still loading; retry shortly', null, 'model_loading');
  return { modelId: state.modelId, lm: state.lm, scheduler: state.scheduler, store: state.store, contextWorker: state.contextWorker, autoPredictor: state.autoPredictor };
}

/** The request body as JSON, or a 400 naming the problem. */
export async function readJson(c: Context): Promise<unknown> {
  const text = await c.req.text();
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ApiError(400, `the request body is not valid JSON (${(e as Error).message})`, null, 'invalid_json');
  }
}
