import type { ChatMessage } from './chat-template.ts';
import type { KvTokenizer } from './tokenizer.ts';

/** A named token range [start, end) of a prompt. */
export interface TokenSpan {
  name: string;
  start: number;
  end: number;
}

export interface ChatSpanOptions {
  addGenerationPrompt: boolean;
  /** How the system prompt splits into instruction spans (default: sentences). */
  systemSplit?: 'sentence' | 'line' | 'none';
  /** Substrings of the system prompt named explicitly (e.g. a defense text); these win over the split. */
  explicit?: { name: string; text: string }[];
}

interface CharSpan {
  name: string;
  start: number;
  end: number;
}

/**
 * Token spans of a chat prompt computed through the model's own template: `template` (every piece the
 * template adds), `system`, `user`, `assistant` (message contents), and inside the system prompt one span
 * per instruction (`instruction:<i>`, or the caller's explicit names). A token belongs to the span holding
 * its first character; whitespace before a sentence goes with that sentence (it leads the sentence's first
 * token in byte-level BPE vocabularies).
 */
export function chatSpans(tok: KvTokenizer, messages: ChatMessage[], opts: ChatSpanOptions): { ids: number[]; text: string; spans: TokenSpan[] } {
  const text = tok.chat.render(messages, { addGenerationPrompt: opts.addGenerationPrompt });
  const ids = tok.encode(text);
  const top: CharSpan[] = [];
  const inner: CharSpan[] = [];
  let cursor = 0;
  for (const m of messages) {
    const content = m.content.trim();
    if (!content) continue;
    const at = text.indexOf(content, cursor);
    if (at < 0) throw new Error(`the chat template does not reproduce the ${m.role} message verbatim; cannot place its span`);
    top.push({ name: m.role, start: at, end: at + content.length });
    if (m.role === 'system') inner.push(...instructionSpans(content, at, opts));
    cursor = at + content.length;
  }
  const starts = tokenCharStarts(tok, ids, text);
  const spans: TokenSpan[] = [];
  const assign = (ranges: CharSpan[], fill: string | null) => {
    let cur: TokenSpan | null = null;
    for (let k = 0; k < ids.length; k++) {
      const c = starts[k]!;
      const r = ranges.find((s) => c >= s.start && c < s.end);
      const name = r ? r.name : fill;
      const key = r ? `${r.name}@${r.start}` : fill;
      if (name === null) {
        cur = null;
        continue;
      }
      if (cur && (cur as TokenSpan & { key?: string }).key === key && cur.end === k) cur.end = k + 1;
      else {
        cur = Object.assign({ name, start: k, end: k + 1 }, { key });
        spans.push(cur);
      }
    }
  };
  assign(top, 'template');
  assign(inner, null);
  return { ids, text, spans: spans.map(({ name, start, end }) => ({ name, start, end })) };
}

/** Character ranges of the system prompt's instructions (absolute offsets), explicit names first. */
function instructionSpans(content: string, offset: number, opts: ChatSpanOptions): CharSpan[] {
  const explicit: CharSpan[] = [];
  for (const e of opts.explicit ?? []) {
    const at = content.indexOf(e.text.trim());
    if (at < 0) throw new Error(`explicit span "${e.name}" not found in the system prompt: ${JSON.stringify(e.text.slice(0, 60))}`);
    let start = at;
    while (start > 0 && /\s/.test(content[start - 1]!)) start--;
    explicit.push({ name: e.name, start: offset + start, end: offset + at + e.text.trim().length });
  }
  const split = opts.systemSplit ?? 'sentence';
  const pieces: CharSpan[] = [];
  if (split !== 'none') {
    const boundary = split === 'line' ? /\n+/g : /(?<=[.!?])\s+|\n+/g;
    let start = 0;
    let i = 0;
    for (const m of content.matchAll(boundary)) {
      const end = m.index!;
      if (end > start) pieces.push({ name: `instruction:${i++}`, start: offset + start, end: offset + end });
      start = end;
    }
    if (start < content.length) pieces.push({ name: `instruction:${i}`, start: offset + start, end: offset + content.length });
  }
  // Explicit spans win; a split piece keeps only what lies outside them.
  const out: CharSpan[] = [...explicit];
  for (const p of pieces) {
    let parts: CharSpan[] = [p];
    for (const e of explicit) {
      parts = parts.flatMap((q) => {
        if (e.end <= q.start || e.start >= q.end) return [q];
        const left = { ...q, end: e.start };
        const right = { ...q, start: e.end };
        return [left, right].filter((r) => r.end > r.start && content.slice(r.start - offset, r.end - offset).trim() !== '');
      });
    }
    out.push(...parts);
  }
  return out.sort((a, b) => a.start - b.start);
}

/** Character offset where each token starts in text (by decoding growing prefixes). */
function tokenCharStarts(tok: KvTokenizer, ids: number[], text: string): number[] {
  const starts: number[] = [];
  let prevLen = 0;
  for (let k = 0; k < ids.length; k++) {
    starts.push(prevLen);
    const decoded = tok.decode(ids.slice(0, k + 1));
    // A token ending inside a multi-byte character decodes to U+FFFD; its successor starts at the same place.
    prevLen = decoded.endsWith('\uFFFD') && !text.startsWith(decoded) ? prevLen : decoded.length;
  }
  return starts;
}
