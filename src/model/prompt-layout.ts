import type { ChatMessage } from './chat-template.ts';
import { chatSpans, type TokenSpan } from './segments.ts';
import type { KvTokenizer } from './tokenizer.ts';

/** A half-open range of cache rows (= sequence positions before any compression). */
export interface Span {
  start: number;
  end: number;
}

/** Where the compressible span sits in a prompt, and how a query is appended after it. */
export interface SessionLayout {
  ids: number[];
  /** Template rows before the span (never evicted). */
  prefix: Span;
  /** The compressible span. */
  context: Span;
  /** The template's end-of-user-turn + assistant header (what KVzip's reconstruction prompt ends with). */
  suffix: string;
  /** What opens a query after the span (KVzip's repeat prompt starts with it). */
  queryLead: string;
  queryIds: (query: string) => number[];
  /** Named ranges tiling the compressible span (span-relative), where the layout names them. */
  ranges?: TokenSpan[];
}

/** Anything that carries the model's tokenizer (a loaded model does). */
export interface WithTokenizer {
  readonly tokenizer: KvTokenizer;
}

export interface UserContextOptions {
  system?: string;
  /** How a query becomes user text; `{query}` is replaced. Default: the query itself. */
  queryTemplate?: string;
}

/** Layout of a context placed in the user turn: queries are appended as "\n\n" + query + suffix. */
export function userContextLayout({ tokenizer }: WithTokenizer, contextText: string, opts: UserContextOptions = {}): SessionLayout {
  const parts = tokenizer.chat.userTurnParts(opts.system);
  const prefixIds = tokenizer.encode(parts.prefix);
  const ids = tokenizer.encode(parts.prefix + contextText);
  if (prefixIds.some((id, i) => ids[i] !== id)) {
    throw new Error('the chat template prefix does not tokenize as a prefix of prefix + context');
  }
  const template = opts.queryTemplate ?? '{query}';
  return {
    ids,
    prefix: { start: 0, end: prefixIds.length },
    context: { start: prefixIds.length, end: ids.length },
    suffix: parts.suffix,
    queryLead: '\n\n',
    queryIds: (query) => tokenizer.encode(`\n\n${template.replaceAll('{query}', query)}${parts.suffix}`),
  };
}

export interface PromptLayout extends SessionLayout {
  ranges: TokenSpan[];
}

export interface PromptLayoutOptions {
  /** Substrings of the system prompt to name (e.g. {name: 'defense', text: 'Never reveal ...'}). */
  explicit?: { name: string; text: string }[];
  /** Sentences not named explicitly are called this (default: instruction:<i>). */
  otherName?: string;
  /** A document placed in the user turn and compressed together with the system prompt. */
  document?: string;
}

/**
 * The pitfalls study's layout: the system prompt (and, in the "context" variant, a document in the user
 * turn) is the compressible span; each query is a whole user turn appended uncompressed, then answered.
 * Spans come from the model's own chat template: no hand-typed token positions.
 */
export function systemPromptLayout({ tokenizer: tok }: WithTokenizer, system: string, opts: PromptLayoutOptions = {}): PromptLayout {
  const head: ChatMessage[] = [{ role: 'system', content: system }];
  if (opts.document !== undefined) head.push({ role: 'user', content: opts.document });
  const seg = chatSpans(tok, head, { addGenerationPrompt: false, systemSplit: 'sentence', explicit: opts.explicit });
  const ids = seg.ids;
  const sys = seg.spans.find((s) => s.name === 'system');
  if (!sys) throw new Error('the chat template did not place the system prompt (does it support a system role?)');
  const end = opts.document !== undefined ? seg.spans.find((s) => s.name === 'user')!.end : sys.end;
  const span = { start: sys.start, end };
  const ranges: TokenSpan[] = [];
  const named = seg.spans.filter((s) => s.start >= span.start && s.end <= span.end && s.name !== 'system' && s.end > s.start);
  for (const s of named) {
    const name = s.name.startsWith('instruction:') && opts.otherName ? opts.otherName : s.name;
    ranges.push({ name, start: s.start - span.start, end: s.end - span.start });
  }
  ranges.sort((a, b) => a.start - b.start);
  const suffix = tok.chat.userTurnParts().suffix;
  // The user header alone: what the template puts between the system turn and a user message.
  const withUser = tok.chat.userTurnParts(system).prefix;
  const systemOnly = tok.chat.render([{ role: 'system', content: system }], { addGenerationPrompt: false });
  if (!withUser.startsWith(systemOnly)) throw new Error('the chat template renders the system turn differently when a user turn follows');
  const userHeader = withUser.slice(systemOnly.length);
  return {
    ids,
    prefix: { start: 0, end: span.start },
    context: span,
    suffix,
    ranges: tileRanges(ranges, span.end - span.start),
    queryLead: opts.document !== undefined ? '\n\n' : userHeader,
    queryIds: (user) => {
      if (opts.document !== undefined) return tok.encode(`\n\n${user}${suffix}`);
      const full = tok.encode(tok.chat.render([...head, { role: 'user', content: user }], { addGenerationPrompt: true }));
      if (ids.some((id, i) => full[i] !== id)) throw new Error('the rendered conversation does not extend the system prompt tokens');
      return full.slice(ids.length);
    },
  };
}

/** Drops nested/overlapping duplicates and fills gaps by extending the previous range, so ranges tile [0, T). */
function tileRanges(ranges: TokenSpan[], T: number): TokenSpan[] {
  const out: TokenSpan[] = [];
  let at = 0;
  for (const r of ranges) {
    if (r.end <= at) continue;
    const start = Math.max(r.start, at);
    if (start > at) {
      if (out.length) out[out.length - 1]!.end = start;
      else out.push({ name: 'template', start: at, end: start });
    }
    out.push({ name: r.name, start, end: r.end });
    at = r.end;
  }
  if (at < T) {
    if (out.length) out[out.length - 1]!.end = T;
    else out.push({ name: 'template', start: at, end: T });
  }
  return out;
}
