import type { Protection } from '../press/protect.ts';
import type { Press } from '../press/registry.ts';
import { ContextSession, type CompressionReport } from './context-session.ts';
import type { ConversationContext } from './conversation-context.ts';
import type { LoadedModel } from './loaded-model.ts';

/** What contexts get unless a request says otherwise: a detected defense span is always kept. */
export const DEFAULT_CONTEXT_PROTECTION: Protection = { whitelist: ['defense'] };

export interface CompressedContext {
  session: ContextSession;
  report: CompressionReport;
}

/**
 * Prefills a context, scores it with the press and keeps `ratio` of its span under the protection as
 * effectiveProtection() states it (whitelisted ranges kept inside the budget; fair shares ranked by
 * span-local scores).
 */
export function compressContext(lm: LoadedModel, ctx: ConversationContext, press: Press, ratio: number, protection: Protection | undefined): CompressedContext {
  const session = new ContextSession(lm, ctx.layout);
  const applied = effectiveProtection(protection, ctx);
  const { report } = session.score(press, { spanLocal: Boolean(applied?.fair) }).compressInPlace(ratio, applied);
  return { session, report };
}

/**
 * The protection as applied: template tokens inside the span are structure and join the whitelist (as the
 * pitfalls study keeps them), and names the context has no range for leave it, so a context without a
 * defense span is selected exactly as the bare method selects.
 */
export function effectiveProtection(protection: Protection | undefined, ctx: ConversationContext): Protection | undefined {
  const present = new Set(ctx.ranges.map((r) => r.name));
  const whitelist = [...new Set([...(protection?.whitelist ?? []), 'template'])].filter((n) => present.has(n));
  const out: Protection = { ...protection, whitelist: whitelist.length ? whitelist : undefined };
  return out.whitelist || out.fair ? out : undefined;
}
