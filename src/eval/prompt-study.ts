import { askEach, ContextSession } from '../engine/context-session.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { systemPromptLayout } from '../model/prompt-layout.ts';
import { describeProtection, type NamedRange, type Protection } from '../press/protect.ts';
import { getPress, type Press } from '../press/registry.ts';
import type { StudyItemSource } from './study-item-source.ts';

export type Metrics = Record<string, number | boolean | null>;

/** One prompt of the study: a system prompt to compress, a user turn to answer, a scorer for the reply. */
export interface StudyItem {
  id: string;
  system: string;
  user: string;
  /** Named substrings of the system prompt (e.g. the defense); other sentences are `directive`. */
  explicit?: { name: string; text: string }[];
  /** Free label carried to the results (e.g. instruction order). */
  variant?: string;
  /** What rebuilds this item elsewhere (studyItemFromSource): needed to run it on a queue's workers. */
  source?: StudyItemSource;
  score(response: string): Metrics;
}

export interface StudyOptions {
  methods: string[];
  ratios: number[];
  protections: (Protection | undefined)[];
  /** Also compress this document (user turn) together with the system prompt. */
  document?: string;
  maxTokens?: number;
  onProgress?: (done: number, total: number) => void;
  /** Units (an item under a method, keyed by studyUnitKey) done by an earlier run: used as they are. */
  resumed?: Map<string, StudySample[]>;
  /** Called as each unit completes (to save it). */
  onUnit?: (key: string, samples: StudySample[]) => void;
}

export const studyUnitKey = (method: string, index: number, item: StudyItem) => JSON.stringify([method, index, item.id, item.variant ?? 'original']);

export interface StudySample {
  id: string;
  variant: string;
  method: string;
  ratio: number;
  protect: string;
  response: string;
  metrics: Metrics;
  /** Mean keep rate (fraction of KV heads, averaged over layers) per span name. */
  keepRate: Record<string, number>;
}

export interface StudyResult {
  method: string;
  ratio: number;
  protect: string;
  variant: string;
  n: number;
  metrics: Record<string, number>;
  keep_rate: Record<string, number>;
}

/**
 * The pitfalls protocol: the system prompt is compressed at prefill (query-agnostic), the user turn is
 * appended uncompressed, greedy decoding. Each (method, item) is prefilled and scored once; every ratio and
 * protection reuses that work.
 */
export async function runPromptStudy(lm: LoadedModel, items: StudyItem[], opts: StudyOptions): Promise<{ results: StudyResult[]; samples: StudySample[] }> {
  const presses = opts.methods.map(getPress);
  checkStudyItems(lm, items, opts);
  const samples: StudySample[] = [];
  const total = presses.length * items.length;
  let done = 0;
  for (const press of presses) {
    for (const [index, item] of items.entries()) {
      const key = studyUnitKey(press.name, index, item);
      let unit = opts.resumed?.get(key);
      if (!unit) {
        unit = await studyUnit(lm, item, press, opts);
        opts.onUnit?.(key, unit);
      }
      samples.push(...unit);
      opts.onProgress?.(++done, total);
    }
  }
  return { results: aggregate(samples), samples };
}

export type StudyUnitOptions = Pick<StudyOptions, 'ratios' | 'protections' | 'document' | 'maxTokens'>;

/**
 * One item under one method: its system prompt prefilled and scored once, then a response at every
 * protection and ratio. The unit of work of a study, local or on a queue's workers.
 */
export async function studyUnit(lm: LoadedModel, item: StudyItem, press: Press, opts: StudyUnitOptions): Promise<StudySample[]> {
  const unit: StudySample[] = [];
  const layout = systemPromptLayout(lm, item.system, { explicit: item.explicit, otherName: 'directive', document: opts.document });
  const scored = new ContextSession(lm, layout).score(press, { spanLocal: opts.protections.some((p) => p?.fair) });
  const points = opts.protections.flatMap((protection) =>
    opts.ratios.map((ratio) => {
      // Template tokens inside the span (the "context" variant) are structure: always kept, inside the budget.
      const { session, keep } = scored.compressed(ratio, withTemplateKept(protection, layout.ranges));
      return { protection, ratio, session, keep };
    }),
  );
  // Every point's response decoded together, each as it would be alone (askEach).
  const replies = await askEach(points.map((p) => ({ session: p.session, query: item.user })), { maxTokens: opts.maxTokens ?? 48 });
  for (const [i, { protection, ratio, keep }] of points.entries()) {
    const response = replies[i]!.text;
    unit.push({
      id: item.id,
      variant: item.variant ?? 'original',
      method: press.name,
      ratio,
      protect: describeProtection(protection),
      response,
      metrics: item.score(response),
      keepRate: keepRateBySpan(keep, layout.ranges),
    });
  }
  return unit;
}

/**
 * Checks every item before anything runs: its prompt and user turn must fit the model's positions (a long
 * run should not die at its 900th item), and every span a whitelist names must exist in some item (a
 * misspelt name would silently protect nothing).
 */
export function checkStudyItems(lm: LoadedModel, items: StudyItem[], opts: Pick<StudyOptions, 'protections' | 'document'>): void {
  const wanted = new Set(opts.protections.flatMap((p) => p?.whitelist ?? []));
  const present = new Set<string>();
  const limit = lm.config.maxPositionEmbeddings;
  for (const item of items) {
    const layout = systemPromptLayout(lm, item.system, { explicit: item.explicit, otherName: 'directive', document: opts.document });
    for (const r of layout.ranges) present.add(r.name);
    const user = layout.queryIds(item.user).length;
    if (layout.ids.length + user + 1 > limit) {
      throw new RangeError(`item ${JSON.stringify(item.id)}: its system prompt (${layout.ids.length} tokens with the template) and user turn (${user}) leave no room for a response within max_position_embeddings ${limit}`);
    }
  }
  for (const name of wanted) {
    if (!present.has(name)) throw new Error(`--protect whitelist:${name}: no item has a span named "${name}" (spans here: ${[...present].sort().join(', ')})`);
  }
}

function withTemplateKept(p: Protection | undefined, ranges: NamedRange[]): Protection | undefined {
  if (!ranges.some((r) => r.name === 'template')) return p;
  return { ...p, whitelist: [...new Set([...(p?.whitelist ?? []), 'template'])] };
}

/** keep[t] = fraction of KV heads (averaged over layers) that kept span row t; mean per span name. */
export function keepRateBySpan(keep: Int32Array[][], ranges: NamedRange[]): Record<string, number> {
  const T = ranges.reduce((m, r) => Math.max(m, r.end), 0);
  const rate = new Float64Array(T);
  const heads = keep.length * (keep[0]?.length ?? 0);
  for (const layer of keep) for (const k of layer) for (const j of k) rate[j] = rate[j]! + 1 / heads;
  const sums: Record<string, [number, number]> = {};
  for (const r of ranges) {
    const acc = (sums[r.name] ??= [0, 0]);
    for (let j = r.start; j < r.end; j++) acc[0] += rate[j]!;
    acc[1] += r.end - r.start;
  }
  return Object.fromEntries(Object.entries(sums).map(([k, [s, n]]) => [k, n ? s / n : 0]));
}

function aggregate(samples: StudySample[]): StudyResult[] {
  const groups = new Map<string, StudySample[]>();
  for (const s of samples) {
    const key = JSON.stringify([s.method, s.ratio, s.protect, s.variant]);
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  return [...groups.values()].map((g) => {
    const metrics: Record<string, number> = {};
    for (const name of new Set(g.flatMap((s) => Object.keys(s.metrics)))) {
      const vals = g.map((s) => s.metrics[name]).filter((v): v is number | boolean => v !== null && v !== undefined);
      if (vals.length) metrics[name] = vals.reduce<number>((a, v) => a + Number(v), 0) / vals.length;
    }
    const keep: Record<string, number> = {};
    for (const name of new Set(g.flatMap((s) => Object.keys(s.keepRate)))) {
      const vals = g.map((s) => s.keepRate[name]).filter((v): v is number => v !== undefined);
      keep[name] = vals.reduce((a, b) => a + b, 0) / vals.length;
    }
    const f = g[0]!;
    return { method: f.method, ratio: f.ratio, protect: f.protect, variant: f.variant, n: g.length, metrics, keep_rate: keep };
  });
}
