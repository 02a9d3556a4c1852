import type { ChatMessage } from '../model/chat-template.ts';
import { userContextLayout, type SessionLayout } from '../model/prompt-layout.ts';
import { chatSpans } from '../model/segments.ts';
import type { NamedRange } from '../press/protect.ts';
import type { LoadedModel } from './loaded-model.ts';

/**
 * A context to compress once and continue many times, in one of two shapes:
 * - `text` (with an optional system prompt): the text is the user turn's content, as `kvlab compress`
 *   places it; continuations go on inside that user turn ("\n\n" + the next user message), so a chat
 *   request with one user message on it is exactly `kvlab compress --ask`.
 * - `messages`: a conversation (system, user, assistant turns) rendered by the model's template; everything
 *   from the first message's content on is compressible, continuations are the following turns.
 * Either way the context's `messages` are what a later request must start with to reuse it.
 */
export type ContextSpec = { kind: 'text'; text: string; system?: string } | { kind: 'messages'; messages: ChatMessage[] };

export interface ConversationContext {
  spec: ContextSpec;
  /** The conversation a request must begin with to reuse this context. */
  messages: ChatMessage[];
  /** The prompt text the context's ids were encoded from (continuations are rendered after it). */
  rendered: string;
  layout: SessionLayout;
  /** Named ranges tiling the compressible span (span-relative): template, system sentences, defense, user... */
  ranges: NamedRange[];
}

const SENTINEL = '\u0000KVLAB_NEXT\u0000';
const SENTENCE = /(?<=[.!?])\s+|\n+/g;
/** A system-prompt sentence that forbids disclosing something: what prompt-leakage attacks go after. */
const DEFENSE = /\b(never|not|don't|do not|must not|mustn't|under no circumstances)\b[^.!?\n]*\b(reveal|share|disclose|repeat|tell|show|output|print|leak)\b|\b(confidential|secret)\b/i;

/** Sentences of a system prompt that look like a defense (an instruction not to disclose). */
export function detectDefense(system: string): string[] {
  return system.split(SENTENCE).map((s) => s.trim()).filter((s) => s && DEFENSE.test(s));
}

export function conversationContext(lm: LoadedModel, spec: ContextSpec): ConversationContext {
  return spec.kind === 'text' ? textContext(lm, spec) : messagesContext(lm, spec);
}

function textContext(lm: LoadedModel, spec: Extract<ContextSpec, { kind: 'text' }>): ConversationContext {
  const base = userContextLayout(lm, spec.text, { system: spec.system });
  const layout: SessionLayout = { ...base, ranges: [{ name: 'user', start: 0, end: base.context.end - base.context.start }] };
  const messages: ChatMessage[] = [...(spec.system !== undefined ? [{ role: 'system' as const, content: spec.system }] : []), { role: 'user', content: spec.text }];
  const rendered = lm.tokenizer.chat.userTurnParts(spec.system).prefix + spec.text;
  return { spec, messages, rendered, layout, ranges: layout.ranges! };
}

function messagesContext(lm: LoadedModel, spec: Extract<ContextSpec, { kind: 'messages' }>): ConversationContext {
  const tok = lm.tokenizer;
  const messages = spec.messages;
  if (messages.length === 0) throw new RangeError('a context needs at least one message');
  const system = messages.find((m) => m.role === 'system')?.content ?? '';
  const explicit = detectDefense(system).map((text) => ({ name: 'defense', text }));
  const seg = chatSpans(tok, messages, { addGenerationPrompt: false, systemSplit: 'sentence', explicit });
  const ids = seg.ids;
  const names: string[] = new Array(ids.length).fill('template');
  const top = seg.spans.filter((s) => !s.name.startsWith('instruction:') && s.name !== 'defense');
  const inner = seg.spans.filter((s) => s.name.startsWith('instruction:') || s.name === 'defense');
  for (const s of [...top, ...inner]) names.fill(s.name, s.start, s.end);
  const start = names.findIndex((n) => n !== 'template');
  if (start < 0) throw new RangeError('the context messages are empty');
  const ranges: NamedRange[] = [];
  for (let k = start; k < ids.length; k++) {
    const last = ranges[ranges.length - 1];
    if (last && last.name === names[k] && last.end === k - start) last.end++;
    else ranges.push({ name: names[k]!, start: k - start, end: k - start + 1 });
  }
  const after = tok.chat.render([...messages, { role: 'user', content: SENTINEL }], { addGenerationPrompt: true });
  if (!after.startsWith(seg.text)) throw new Error('the chat template renders the context differently when a turn follows it');
  const cut = after.indexOf(SENTINEL);
  const layout: SessionLayout = {
    ids,
    prefix: { start: 0, end: start },
    context: { start, end: ids.length },
    suffix: after.slice(cut + SENTINEL.length),
    queryLead: after.slice(seg.text.length, cut),
    queryIds: (query) => continuationIds(lm, { spec, messages, rendered: seg.text }, [{ role: 'user', content: query }]),
    ranges,
  };
  return { spec, messages, rendered: seg.text, layout, ranges };
}

/**
 * Token ids that continue a context with these messages: the conversation (context messages, then
 * `rest`) rendered with the generation prompt, minus the context's own rendered text. On a text context a
 * first user message continues the context's user turn, as `kvlab compress --ask` appends a query.
 */
export function continuationIds(lm: LoadedModel, ctx: Pick<ConversationContext, 'spec' | 'messages' | 'rendered'>, rest: ChatMessage[]): number[] {
  let conversation: ChatMessage[];
  if (ctx.spec.kind === 'text' && rest[0]?.role === 'user') {
    const head = ctx.messages.slice(0, -1);
    conversation = [...head, { role: 'user', content: `${ctx.spec.text}\n\n${rest[0].content}` }, ...rest.slice(1)];
  } else conversation = [...ctx.messages, ...rest];
  const full = lm.tokenizer.chat.render(conversation, { addGenerationPrompt: true });
  if (!full.startsWith(ctx.rendered)) throw new Error('the chat template does not render this conversation as a continuation of the context');
  return lm.tokenizer.encode(full.slice(ctx.rendered.length));
}
