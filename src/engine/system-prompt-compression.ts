import { getPress, type Press } from '../press/registry.ts';
import { checkRatio } from '../press/budgets.ts';
import { describeProtection } from '../press/protect.ts';
import { compressContext, DEFAULT_CONTEXT_PROTECTION, effectiveProtection, type CompressedContext } from './compress-context.ts';
import { conversationContext, type ConversationContext } from './conversation-context.ts';
import type { ProtectionChoice } from './default-protection.ts';
import type { LoadedModel } from './loaded-model.ts';

/** `METHOD:RATIO` for `generate --compress` / `chat --compress`: the system prompt compressed before the turns. */
export interface PromptCompression {
  press: Press;
  ratio: number | 'auto';
}

/** Parses METHOD:RATIO (RATIO a kept fraction in [0, 1] or `auto`; the method may hold a colon: adakv:snapkv:0.5). */
export function parsePromptCompression(spec: string): PromptCompression {
  const at = spec.lastIndexOf(':');
  if (at <= 0) throw new RangeError(`prompt compression must be METHOD:RATIO (e.g. kvzip:0.5 or kvzip:auto), got "${spec}"`);
  const r = spec.slice(at + 1).trim();
  const ratio = r === 'auto' ? 'auto' : /^\d*\.?\d+$/.test(r) ? Number(r) : NaN;
  if (ratio !== 'auto') checkRatio(ratio);
  return { press: getPress(spec.slice(0, at)), ratio };
}

/**
 * Compresses a system prompt as a conversation context (its sentences, a detected defense and the template
 * pieces inside it are named ranges), under the protection as chosen: the default rule keeps the defense and
 * the in-span template tokens, `none` nothing. Turns then continue it with continuationIds().
 */
export function compressSystemPrompt(
  lm: LoadedModel,
  system: string,
  pc: PromptCompression,
  choice: ProtectionChoice = 'default',
): CompressedContext & { ctx: ConversationContext; protectLabel: string } {
  if (!system.trim()) throw new RangeError('--compress compresses the system prompt: give a non-empty --system');
  const ctx = conversationContext(lm, { kind: 'messages', messages: [{ role: 'system', content: system }] });
  const protection = choice === 'none' ? undefined : choice === 'default' ? DEFAULT_CONTEXT_PROTECTION : choice;
  const names = new Set(ctx.ranges.map((r) => r.name));
  for (const n of typeof choice === 'object' ? (choice.whitelist ?? []) : []) {
    if (!names.has(n)) throw new RangeError(`--protect whitelist:${n}: the system prompt has no range named "${n}" (ranges: ${[...names].join(', ')})`);
  }
  return { ctx, protectLabel: describeProtection(effectiveProtection(protection, ctx)), ...compressContext(lm, ctx, pc.press, pc.ratio, protection) };
}
