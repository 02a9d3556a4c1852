import { parseProtection, type NamedRange, type Protection } from '../press/protect.ts';

/**
 * The protection kvlab applies unless told otherwise (compress, generate, chat, inspect, the session API and
 * the server), inside the method's own budget:
 * - the chat-template prefix before the compressible span (system turn and user header of a context in the
 *   user turn) is never evicted, whatever the protection;
 * - template tokens inside the span (`template` ranges: turn markers of a compressed conversation or system
 *   prompt) are whitelisted;
 * - a detected defense span (`defense`) is whitelisted: a system-prompt sentence that forbids disclosure, as
 *   detectDefense() (conversation-context.ts) matches it: a negation (never, not, don't, do not, must not,
 *   mustn't, under no circumstances) followed in the same sentence by a disclosure verb (reveal, share,
 *   disclose, repeat, tell, show, output, print, leak), or the word confidential or secret.
 * A name the layout has no range for is left out, so a context without such spans is compressed exactly as
 * the bare method compresses it. `none` protects nothing inside the span (the behaviour before protection
 * was on by default).
 */
export const DEFAULT_PROTECTION: Protection = { whitelist: ['template', 'defense'] };

/** A protection as a caller states it: the default rule, nothing, or an explicit whitelist / fair split. */
export type ProtectionChoice = Protection | 'default' | 'none';

/** `default`, `none`, or what parseProtection() reads (`whitelist:NAME[,NAME]`, `fair[:lambda]`, `both`). */
export function parseProtectionChoice(text: string): ProtectionChoice {
  const t = text.trim();
  if (t === '') throw new RangeError('protect: empty value; use default, none, whitelist:NAME[,NAME], fair[:lambda] or both');
  if (t === 'default') return 'default';
  if (t === 'none') return 'none';
  return parseProtection(t)!;
}

/** The protection to apply over a layout's named ranges (undefined: select as the bare method does). */
export function resolveProtection(choice: ProtectionChoice | undefined, ranges: readonly NamedRange[] | undefined): Protection | undefined {
  if (choice === 'none') return undefined;
  if (choice === undefined || choice === 'default') {
    const present = new Set((ranges ?? []).map((r) => r.name));
    const whitelist = DEFAULT_PROTECTION.whitelist!.filter((n) => present.has(n));
    return whitelist.length ? { whitelist } : undefined;
  }
  return choice;
}
