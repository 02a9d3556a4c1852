import type { Hono } from 'hono';
import { DEFAULT_CONTEXT_PROTECTION, effectiveProtection } from '../engine/compress-context.ts';
import { conversationContext, type ContextSpec } from '../engine/conversation-context.ts';
import { describeProtection, parseProtection, type Protection } from '../press/protect.ts';
import { getPress } from '../press/registry.ts';
import { ApiError, badRequest } from './api-error.ts';
import { readJson, type AppEnv, type ReadyState } from './app.ts';
import type { ContextRecord, ContextStore } from './context-store.ts';
import { parseContextRequest } from './validate.ts';

/** kvlab's extension: POST/GET /v1/contexts, GET/DELETE /v1/contexts/{id}, each scoped to the caller's tenant. */
export function contextRoutes(app: Hono<AppEnv>, ready: () => ReadyState): void {
  app.post('/v1/contexts', async (c) => {
    const s = ready();
    const r = parseContextRequest(await readJson(c));
    try {
      getPress(r.method);
    } catch (e) {
      throw badRequest((e as Error).message, 'method', 'invalid_value');
    }
    let protection: Protection | undefined;
    try {
      protection = r.protect === null || r.protect.trim() === 'default' ? DEFAULT_CONTEXT_PROTECTION : parseProtection(r.protect);
    } catch (e) {
      throw badRequest((e as Error).message, 'protect', 'invalid_value');
    }
    const spec: ContextSpec = r.text !== null ? { kind: 'text', text: r.text, ...(r.system !== null ? { system: r.system } : {}) } : { kind: 'messages', messages: r.messages! };
    let ctx;
    try {
      ctx = conversationContext(s.lm, spec);
    } catch (e) {
      throw badRequest((e as Error).message, r.text !== null ? 'text' : 'messages', 'invalid_value');
    }
    const limit = s.lm.config.maxPositionEmbeddings;
    if (ctx.layout.ids.length >= limit) {
      throw badRequest(`This model's maximum context length is ${limit} tokens. However, the context resulted in ${ctx.layout.ids.length} tokens.`, r.text !== null ? 'text' : 'messages', 'context_length_exceeded');
    }
    if (ctx.layout.context.end === ctx.layout.context.start) throw badRequest('the context is empty', r.text !== null ? 'text' : 'messages', 'invalid_value');
    const { rule, maxProbability, ...check } = r.auto;
    if (rule === 'predictor' && !s.autoPredictor) throw badRequest('auto.rule "predictor": this server has no predictor (kvlab serve --auto-predictor FILE)', 'auto.rule', 'invalid_value');
    const predictor = rule !== 'threshold' ? s.autoPredictor : undefined;
    if (maxProbability !== undefined && !predictor) throw badRequest('auto.max_probability goes with the predictor rule', 'auto.max_probability', 'invalid_value');
    const built = await s.contextWorker.compress(ctx, { spec, method: r.method, ratio: r.ratio, protection, auto: { ...check, ...(predictor ? { predictor, maxProbability } : {}) } });
    const { record, saveMs } = await s.store.add(c.get('tenant'), ctx, built, describeProtection(effectiveProtection(protection, ctx)));
    const auto = built.report.auto;
    return c.json({
      ...view(record, s.store, saveMs),
      ...(auto
        ? {
            auto: {
              chosen: auto.chosen,
              rule: auto.rule,
              ...(auto.rule === 'predictor' ? { max_probability: auto.maxProbability } : {}),
              threshold: auto.threshold,
              mode: auto.mode,
              full_accuracy: round(auto.fullAccuracy),
              candidates: auto.candidates.map((x) => ({ ratio: x.ratio, accuracy: round(x.accuracy), ...(x.negativeProbability !== undefined ? { negative_probability: round(x.negativeProbability) } : {}) })),
            },
          }
        : {}),
    });
  });

  app.get('/v1/contexts', (c) => {
    const s = ready();
    return c.json({ object: 'list', data: s.store.list(c.get('tenant')).map((r) => view(r, s.store)) });
  });

  app.get('/v1/contexts/:id', (c) => {
    const s = ready();
    const r = s.store.get(c.get('tenant'), c.req.param('id'));
    if (!r) throw notFound(c.req.param('id'));
    return c.json(view(r, s.store));
  });

  app.delete('/v1/contexts/:id', async (c) => {
    const s = ready();
    if (!(await s.store.remove(c.get('tenant'), c.req.param('id')))) throw notFound(c.req.param('id'));
    return c.json({ id: c.req.param('id'), object: 'context.deleted', deleted: true });
  });
}

function notFound(id: string): ApiError {
  return new ApiError(404, `no context '${id}'`, 'id', 'context_not_found');
}

function round(x: number, digits = 4): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function view(r: ContextRecord, store: ContextStore, saveMs?: number) {
  return {
    id: r.id,
    object: 'context',
    created: Math.floor(Date.parse(r.createdAt) / 1000),
    kind: r.spec.kind,
    messages: r.messages.length,
    tokens: r.ids.length,
    context_tokens: r.contextTokens,
    method: r.method,
    ratio: r.ratio,
    protect: r.protect,
    kept_ratio: round(r.keptRatio),
    bytes: r.bytes,
    file_bytes: store.fileBytes(r.id),
    per_layer_kept: r.perLayerKept.map((x) => round(x)),
    timings: { prefill_ms: round(r.timings.prefillMs, 1), score_ms: round(r.timings.scoreMs, 1), ...(saveMs !== undefined ? { save_ms: round(saveMs, 1) } : {}) },
  };
}
