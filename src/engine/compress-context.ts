import { protectedSelect, type Protection } from '../press/protect.ts';
import type { Press } from '../press/registry.ts';
import type { PrefillCapture, Scores } from '../press/types.ts';
import { ContextSession, type CompressionReport } from './context-session.ts';
import type { ConversationContext } from './conversation-context.ts';
import type { LoadedModel } from './loaded-model.ts';

/** What contexts get unless a request says otherwise: a detected defense span is always kept. */
export const DEFAULT_CONTEXT_PROTECTION: Protection = { whitelist: ['defense'] };

export interface CompressedContext {
  session: ContextSession;
  report: CompressionReport;
  timings: { prefillMs: number; scoreMs: number };
}

/**
 * Prefills a context, scores it with the press and keeps `ratio` of its span under the protection
 * (whitelisted ranges kept inside the budget; fair shares ranked by span-local scores). Template tokens
 * inside the span are structure and always kept, as the pitfalls study does.
 */
export function compressContext(lm: LoadedModel, ctx: ConversationContext, press: Press, ratio: number, protection: Protection | undefined): CompressedContext {
  const session = new ContextSession(lm, ctx.layout);
  const { context } = ctx.layout;
  const rangeSpans = ctx.ranges.map((r) => ({ start: context.start + r.start, end: context.start + r.end }));
  const t0 = performance.now();
  const { capture } = session.prefillCapture([press.scorer.needs], protection?.fair ? rangeSpans : []);
  const t1 = performance.now();
  const scores = press.scorer.score(session.scoringContext(capture));
  const local = protection?.fair ? spanLocalScores(session, press, capture, ctx) : undefined;
  const keep = protectedSelect(press.budget, scores, ratio, ctx.ranges, effectiveProtection(protection, ctx), local);
  const report = session.applyKeep(press.name, ratio, keep);
  return { session, report, timings: { prefillMs: t1 - t0, scoreMs: performance.now() - t1 } };
}

/**
 * The protection as applied: in-span template ranges join the whitelist, and names the context has no
 * range for leave it (so a context without a defense span is selected exactly as the bare method selects).
 */
export function effectiveProtection(protection: Protection | undefined, ctx: ConversationContext): Protection | undefined {
  const present = new Set(ctx.ranges.map((r) => r.name));
  const whitelist = [...new Set([...(protection?.whitelist ?? []), 'template'])].filter((n) => present.has(n));
  const out: Protection = { ...protection, whitelist: whitelist.length ? whitelist : undefined };
  return out.whitelist || out.fair ? out : undefined;
}

/** Each range scored on its own (keys of that range only): the view fair eviction ranks by. */
function spanLocalScores(session: ContextSession, press: Press, capture: PrefillCapture, ctx: ConversationContext): Scores {
  const { context } = ctx.layout;
  const cfg = session.lm.config;
  const T = context.end - context.start;
  const out: Scores = Array.from({ length: cfg.numLayers }, () => Array.from({ length: cfg.numKvHeads }, () => new Float32Array(T)));
  for (const r of ctx.ranges) {
    const span = { start: context.start + r.start, end: context.start + r.end };
    const s = press.scorer.score(session.scoringContext(capture, { span, keys: 'span' }));
    s.forEach((layer, l) => layer.forEach((x, h) => out[l]![h]!.set(x, r.start)));
  }
  return out;
}
