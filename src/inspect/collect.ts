import { ContextSession, type ScoredContext } from '../engine/context-session.ts';
import { detectDefense } from '../engine/conversation-context.ts';
import { resolveProtection, type ProtectionChoice } from '../engine/default-protection.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import { systemPromptLayout, userContextLayout, type SessionLayout } from '../model/prompt-layout.ts';
import { chatSpans } from '../model/segments.ts';
import type { KvTokenizer } from '../model/tokenizer.ts';
import { checkRatio } from '../press/budgets.ts';
import { describeProtection, type NamedRange, type Protection } from '../press/protect.ts';
import { describeMethods, getPress } from '../press/registry.ts';
import { budgetSpec } from './budget-spec.ts';
import { encodeGrid, INSPECT_FORMAT, type InspectData } from './inspect-data.ts';

/**
 * Where the compressible span sits. `user`: the context in the user turn, the system prompt in the
 * never-evicted prefix (what `kvlab compress` does). `system`: the system prompt and the context compressed
 * together, the template pieces between them always kept (the pitfalls study's layout).
 */
export type InspectLayout = 'user' | 'system';

export interface InspectOptions {
  methods: string[];
  /** The ratio the page opens at. */
  ratio: number;
  system?: string;
  layout?: InspectLayout;
  /**
   * A sentence of the system prompt to name `defense` (whitelist:defense protects it in the system layout).
   * Without it, the sentences detectDefense() finds are named `defense`.
   */
  defense?: string;
  /** Default 'default' (default-protection.ts): in the system layout, the detected defense is kept. */
  protection?: ProtectionChoice;
  questions?: string[];
  /** Ratios to answer the questions at (default: the opening ratio). */
  answerRatios?: number[];
  maxTokens?: number;
  queryTemplate?: string;
  onProgress?: (stage: string, done: number, total: number) => void;
}

/** The page's data, and each method's scored session behind it (for keep sets computed by the engine). */
export interface Inspection {
  data: InspectData;
  scored: ScoredContext[];
  /** The protection as applied (the system layout adds the template pieces inside the span to the whitelist). */
  protection: Protection | undefined;
}

/**
 * Scores the prompt with each method through the engine's session API (each method prefills and scores its
 * own session, as `kvlab compress` does), and answers the questions with each method's compressed cache at
 * each listed ratio.
 */
export async function collectInspection(lm: LoadedModel, contextText: string, opts: InspectOptions): Promise<Inspection> {
  const layoutKind = opts.layout ?? 'user';
  if (opts.defense && opts.system === undefined) throw new Error('--defense names a sentence of the system prompt; give --system too');
  const detected = layoutKind === 'system' && !opts.defense && opts.system !== undefined ? detectDefense(opts.system) : [];
  const explicit = opts.defense ? [{ name: 'defense', text: opts.defense }] : detected.length ? detected.map((text) => ({ name: 'defense', text })) : undefined;
  let layout: SessionLayout & { ranges: NamedRange[] };
  let protection: Protection | undefined;
  if (layoutKind === 'system') {
    if (opts.system === undefined) throw new Error('the system layout compresses the system prompt: give --system');
    layout = systemPromptLayout(lm, opts.system, { explicit, document: contextText });
    protection = withTemplateKept(resolveProtection(opts.protection, layout.ranges), layout.ranges);
  } else {
    const user = userContextLayout(lm, contextText, { system: opts.system, queryTemplate: opts.queryTemplate });
    layout = { ...user, ranges: [{ name: 'user', start: 0, end: user.context.end - user.context.start }] };
    protection = resolveProtection(opts.protection, layout.ranges);
  }
  const spans = displaySpans(lm.tokenizer, layout, layoutKind, opts.system, contextText, explicit);
  return inspectPrepared(lm, { layout, ranges: layout.ranges, spans, protection, protectLabel: protectLabel(opts.protection, protection, layoutKind) }, opts);
}

/** A layout ready to score: the session layout, its named ranges and display spans, the protection as applied. */
export interface PreparedInspection {
  layout: SessionLayout;
  /** Named ranges tiling the compressible span (span-relative). */
  ranges: NamedRange[];
  /** Named spans tiling every token (absolute rows). */
  spans: NamedRange[];
  protection: Protection | undefined;
  protectLabel: string;
}

/**
 * The inspection of a context as kvlab serve stores it (`/inspect/{id}`): the same layout, ranges and applied
 * protection the context was compressed with, scored again by its method (stored contexts keep their kept
 * rows, not their scores).
 */
export async function inspectConversation(
  lm: LoadedModel,
  ctx: { layout: SessionLayout; ranges: NamedRange[] },
  opts: Pick<InspectOptions, 'methods' | 'ratio' | 'onProgress'> & { protection?: Protection; protectLabel?: string },
): Promise<Inspection> {
  const { start, end } = ctx.layout.context;
  const spans = tile(
    [
      { name: 'template', start: 0, end: ctx.layout.ids.length },
      ...ctx.ranges.map((r) => ({ name: r.name, start: r.start + start, end: r.end + start })),
    ],
    ctx.layout.ids.length,
  );
  if (ctx.ranges.length && ctx.ranges[ctx.ranges.length - 1]!.end + start !== end) throw new Error('the context ranges do not tile its compressible span');
  return inspectPrepared(lm, { layout: ctx.layout, ranges: ctx.ranges, spans, protection: opts.protection, protectLabel: opts.protectLabel ?? describeProtection(opts.protection) }, opts);
}

async function inspectPrepared(lm: LoadedModel, prepared: PreparedInspection, opts: Pick<InspectOptions, 'methods' | 'ratio' | 'questions' | 'answerRatios' | 'maxTokens' | 'onProgress'>): Promise<Inspection> {
  if (!opts.methods.length) throw new Error('inspect needs at least one method');
  checkRatio(opts.ratio);
  const answerRatios = opts.answerRatios?.length ? opts.answerRatios : [opts.ratio];
  answerRatios.forEach(checkRatio);
  const presses = opts.methods.map(getPress);
  const budgets = presses.map((p) => budgetSpec(p.budget));
  const { layout, ranges, protection } = prepared;
  for (const name of protection?.whitelist ?? []) {
    if (!ranges.some((r) => r.name === name)) {
      throw new Error(`--protect whitelist:${name}: the compressible span has no range named "${name}" (ranges: ${[...new Set(ranges.map((r) => r.name))].join(', ')})`);
    }
  }
  const scored: ScoredContext[] = [];
  for (const [i, press] of presses.entries()) {
    opts.onProgress?.(`scoring ${press.name}`, i, presses.length);
    const session = new ContextSession(lm, layout);
    scored.push(session.score(press, { spanLocal: protection?.fair !== undefined }));
  }
  const questions = opts.questions ?? [];
  const answers = presses.map(() => [] as InspectData['methods'][number]['answers']);
  if (questions.length) {
    let done = 0;
    const total = presses.length * answerRatios.length;
    for (const [i, s] of scored.entries()) {
      for (const ratio of answerRatios) {
        opts.onProgress?.('answering', done++, total);
        const { session } = s.compressed(ratio, protection);
        for (const question of questions) {
          const r = await session.ask(question, { maxTokens: opts.maxTokens ?? 32 });
          answers[i]!.push({ ratio, question, answer: r.text });
        }
      }
    }
  }
  const described = new Map(describeMethods().map((m) => [m.name, m.describe]));
  const data: InspectData = {
    format: INSPECT_FORMAT,
    model: lm.dir.split(/[\\/]/).filter(Boolean).pop() ?? lm.dir,
    layers: lm.config.numLayers,
    kvHeads: lm.config.numKvHeads,
    tokens: tokenPieces(lm.tokenizer, layout.ids),
    context: { start: layout.context.start, end: layout.context.end },
    spans: prepared.spans,
    ranges,
    protection,
    protectLabel: prepared.protectLabel,
    ratio: opts.ratio,
    answerRatios,
    questions,
    methods: presses.map((press, i) => ({
      name: press.name,
      describe: described.get(press.name) ?? describeAdaKv(press.name, described),
      budget: budgets[i]!,
      scores: encodeGrid(scored[i]!.scores),
      ...(scored[i]!.localScores ? { localScores: encodeGrid(scored[i]!.localScores!) } : {}),
      answers: answers[i]!,
    })),
  };
  return { data, scored, protection };
}

/** The engine's keep sets (span-relative rows per [layer][kvHead]) for one inspected method at a ratio. */
export function engineKeep(ins: Inspection, method: number, ratio: number): Int32Array[][] {
  return ins.scored[method]!.keep(ratio, ins.protection);
}

function describeAdaKv(name: string, described: Map<string, string>): string {
  const inner = /^adakv:(.+)$/.exec(name)?.[1];
  return inner ? `AdaKV budget (alpha 0.2) over ${inner}: ${described.get(inner) ?? inner}` : name;
}

/** Template pieces inside the span (between the system turn and the document) are structure: always kept. */
/** What the page says about protection: the choice, what it resolved to, and the system layout's template rule. */
function protectLabel(choice: ProtectionChoice | undefined, applied: Protection | undefined, layout: InspectLayout): string {
  const stated = choice === undefined || choice === 'default' ? 'default' : choice === 'none' ? 'none' : describeProtection(choice);
  const note = layout === 'system' ? ' (template pieces inside the span always kept)' : '';
  return stated === describeProtection(applied) ? `${stated}${note}` : `${stated}: ${describeProtection(applied)}${note}`;
}

function withTemplateKept(p: Protection | undefined, ranges: NamedRange[]): Protection | undefined {
  if (!ranges.some((r) => r.name === 'template')) return p;
  return { ...p, whitelist: [...new Set([...(p?.whitelist ?? []), 'template'])] };
}

/**
 * The text each token adds, by decoding a few tokens of left context with and without it (a byte-level
 * token that ends inside a multi-byte character shows as U+FFFD; its successor shows the character).
 */
export function tokenPieces(tok: KvTokenizer, ids: number[]): string[] {
  const pieces: string[] = [];
  for (let k = 0; k < ids.length; k++) {
    const from = Math.max(0, k - 6);
    const before = k > from ? tok.decode(ids.slice(from, k)) : '';
    const after = tok.decode(ids.slice(from, k + 1));
    let common = 0;
    while (common < before.length && common < after.length && before[common] === after[common]) common++;
    pieces.push(after.slice(common));
  }
  return pieces;
}

/**
 * Named spans tiling every token: the chat template's pieces, the system prompt's instructions (and the
 * named defense), the user text. Computed through the model's own template (src/model/segments.ts).
 */
function displaySpans(
  tok: KvTokenizer,
  layout: SessionLayout,
  kind: InspectLayout,
  system: string | undefined,
  contextText: string,
  explicit: { name: string; text: string }[] | undefined,
): NamedRange[] {
  const N = layout.ids.length;
  const messages: ChatMessage[] = [...(system !== undefined ? [{ role: 'system' as const, content: system }] : []), { role: 'user', content: contextText }];
  const seg = chatSpans(tok, messages, { addGenerationPrompt: false, systemSplit: 'sentence', explicit });
  const sameTokens = kind === 'system' ? seg.ids.length === N && seg.ids.every((id, i) => layout.ids[i] === id) : layout.ids.every((id, i) => seg.ids[i] === id);
  if (!sameTokens) {
    // The template tokenizes the message differently from prefix + context: mark only what the layout knows.
    return tile([{ name: 'template', start: 0, end: layout.context.start }, { name: 'user', start: layout.context.start, end: layout.context.end }], N);
  }
  // Instructions are listed after the whole system message, so they take its tokens over.
  return tile(seg.spans, N);
}

/** Labels every token with the last span that covers it (name@start), then merges runs into spans. */
function tile(spans: NamedRange[], N: number): NamedRange[] {
  const label: (NamedRange | undefined)[] = new Array(N);
  for (const s of spans) for (let k = Math.max(0, s.start); k < Math.min(N, s.end); k++) label[k] = s;
  const out: NamedRange[] = [];
  for (let k = 0; k < N; k++) {
    const s = label[k];
    const name = s?.name ?? 'template';
    const last = out[out.length - 1];
    if (last && last.end === k && last.name === name && (s === undefined || label[k - 1] === s)) last.end = k + 1;
    else out.push({ name, start: k, end: k + 1 });
  }
  return out;
}
