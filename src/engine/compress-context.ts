import type { Protection } from '../press/protect.ts';
import type { Press } from '../press/registry.ts';
import { ContextSession, type CompressionReport } from './context-session.ts';
import type { ConversationContext } from './conversation-context.ts';
import type { LoadedModel } from './loaded-model.ts';
import { reconstructionCheck, type ReconstructionOptions } from './reconstruction-check.ts';

/** What contexts get unless a request says otherwise: a detected defense span (and, by effectiveProtection, in-span template tokens) kept; default-protection.ts states the rule. */
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
export function compressContext(
  lm: LoadedModel,
  ctx: ConversationContext,
  press: Press,
  ratio: number | 'auto',
  protection: Protection | undefined,
  auto: Omit<ReconstructionOptions, 'protection'> = {},
): CompressedContext {
  const session = new ContextSession(lm, ctx.layout);
  const applied = effectiveProtection(protection, ctx);
  const scored = session.score(press, { spanLocal: Boolean(applied?.fair) });
  if (ratio !== 'auto') return { session, report: scored.compressInPlace(ratio, applied).report };
  const t = performance.now();
  const check = reconstructionCheck(scored, { ...auto, protection: applied });
  const { report } = scored.compressInPlace(check.chosen, applied);
  report.timings.scoreMs += performance.now() - t;
  return { session, report: { ...report, auto: check } };
}

/**
 * The protection as applied: the default rule of default-protection.ts for DEFAULT_CONTEXT_PROTECTION, and
 * template tokens inside the span join any explicit protection as well (structure, as the pitfalls study
 * keeps them); names the context has no range for leave it, so a context without a defense span is selected
 * exactly as the bare method selects. No protection (`none`) keeps nothing on purpose.
 */
export function effectiveProtection(protection: Protection | undefined, ctx: ConversationContext): Protection | undefined {
  if (!protection) return undefined;
  const present = new Set(ctx.ranges.map((r) => r.name));
  const whitelist = [...new Set([...(protection.whitelist ?? []), 'template'])].filter((n) => present.has(n));
  const out: Protection = { ...protection, whitelist: whitelist.length ? whitelist : undefined };
  return out.whitelist || out.fair ? out : undefined;
}
