import type { Hono } from 'hono';
import { conversationContext } from '../engine/conversation-context.ts';
import { renderInspectPage } from '../inspect/render.ts';
import { ApiError } from './api-error.ts';
import type { AppEnv, ReadyState } from './app.ts';
import type { ContextRecord } from './context-store.ts';
import type { InspectResult } from './context-thread-protocol.ts';

/** Inspections kept per server, most recently used last (a page is re-scored only when it is not here). */
const KEEP = 8;

/**
 * GET /inspect/{id}: the inspector page of a stored context, and GET /inspect/{id}/data.json its data, re-scored
 * by the context worker (inspect-stored.ts; on the context thread under `kvlab serve`).
 */
export function inspectRoutes(app: Hono<AppEnv>, ready: () => ReadyState): void {
  const cache = new Map<string, Promise<InspectResult>>();

  const inspection = async (s: ReadyState, tenant: string, id: string): Promise<InspectResult> => {
    // A store shared with other servers: see the contexts they added or removed, as /v1 routes do.
    await s.store.refresh(tenant);
    const record = s.store.get(tenant, id);
    if (!record) throw new ApiError(404, `no context '${id}'`, 'id', 'context_not_found');
    const key = `${record.id}@${record.createdAt}`;
    let hit = cache.get(key);
    if (hit) cache.delete(key);
    else {
      hit = inspectRecord(s, record);
      hit.catch(() => cache.delete(key));
    }
    cache.set(key, hit);
    while (cache.size > KEEP) cache.delete(cache.keys().next().value!);
    return hit;
  };

  app.get('/inspect/:id', async (c) => {
    const ins = await inspection(ready(), c.get('tenant'), c.req.param('id'));
    return c.html(renderInspectPage(ins.data));
  });
  app.get('/inspect/:id/data.json', async (c) => {
    const ins = await inspection(ready(), c.get('tenant'), c.req.param('id'));
    return c.json(ins.json);
  });
}

function inspectRecord(s: ReadyState, record: ContextRecord): Promise<InspectResult> {
  const ctx = conversationContext(s.lm, record.spec);
  if (ctx.layout.ids.length !== record.ids.length || ctx.layout.ids.some((id, i) => id !== record.ids[i])) {
    return Promise.reject(new ApiError(500, `context '${record.id}' no longer tokenizes to the ids it was compressed from`, 'id', 'context_mismatch'));
  }
  return s.contextWorker.inspect({ spec: record.spec, method: record.method, ratio: record.ratio, protect: record.protect });
}
