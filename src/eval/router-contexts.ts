import { ContextSession } from '../engine/context-session.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { reconstructionCheck } from '../engine/reconstruction-check.ts';
import type { RouterFeatures } from '../engine/router-features.ts';
import { systemPromptLayout, userContextLayout, type SessionLayout } from '../model/prompt-layout.ts';
import type { Protection } from '../press/protect.ts';
import type { Press } from '../press/registry.ts';
import { loadInstructions, loadLeakage, loadQa, readJsonl } from './datasets.ts';
import { DataFileError } from './jsonl.ts';
import { instructionItem, leakageItem, type LeakageVariant } from './study-items.ts';

/** A context as the eval run compressed it: its layout, and the protection the run applied to it. */
export interface RouterContext {
  layout: SessionLayout;
  protection?: Protection;
}

export type RouterDataKind = 'qa' | 'instructions' | 'leakage';

export function routerDataKind(dataPath: string): RouterDataKind {
  const first = readJsonl(dataPath)[0]?.value;
  if (!first) throw new DataFileError(`${dataPath}: no rows`);
  if (Array.isArray(first.questions)) return 'qa';
  if ('confidential' in first) return 'leakage';
  if (Array.isArray(first.instructions) && 'checks' in first) return 'instructions';
  throw new DataFileError(`${dataPath}: the router reads the dev QA, instructions or leakage rows (data/dev/*.jsonl); this row has none of their fields`);
}

/**
 * The contexts of a data file by context key (JSON [id, variant], router-labels.ts), built as the eval
 * commands build them: a QA context in the user turn (eval qa, no protection); an instruction or leakage
 * item's system prompt with its template tokens kept (eval instructions / leakage under --protect none).
 */
export function routerContexts(lm: LoadedModel, dataPath: string, keys: readonly string[], opts: { queryTemplate: string }): Map<string, RouterContext> {
  const kind = routerDataKind(dataPath);
  const wanted = keys.map((k) => [k, JSON.parse(k) as [string, string]] as const);
  const out = new Map<string, RouterContext>();
  const missing = (id: string, variant: string): never => {
    throw new DataFileError(`${dataPath}: no row ${JSON.stringify(id)}${variant ? ` (variant ${variant})` : ''} that the runs scored; is this the runs' data file?`);
  };
  if (kind === 'qa') {
    const rows = new Map(loadQa(dataPath).map((r) => [r.id, r]));
    for (const [key, [id, variant]] of wanted) {
      const row = rows.get(id) ?? missing(id, variant);
      out.set(key, { layout: userContextLayout(lm, row.context, { queryTemplate: opts.queryTemplate }) });
    }
    return out;
  }
  const instructions = kind === 'instructions' ? new Map(loadInstructions(dataPath).map((r) => [r.id, r])) : null;
  const leakage = kind === 'leakage' ? new Map(loadLeakage(dataPath).map((r) => [r.id, r])) : null;
  for (const [key, [id, variant]] of wanted) {
    let item;
    if (instructions) {
      const row = instructions.get(id) ?? missing(id, variant);
      if (variant !== 'original' && variant !== 'with-defense') missing(id, variant);
      item = instructionItem(row, variant === 'with-defense');
    } else {
      const row = leakage!.get(id) ?? missing(id, variant);
      if (!['original', 'defense-first', 'defense-last'].includes(variant)) missing(id, variant);
      item = leakageItem(row, variant as LeakageVariant);
    }
    const layout = systemPromptLayout(lm, item.system, { explicit: item.explicit, otherName: 'directive' });
    const template = layout.ranges.some((r) => r.name === 'template');
    out.set(key, { layout, ...(template ? { protection: { whitelist: ['template'] } } : {}) });
  }
  return out;
}

/**
 * The router features of one context under one press at each ratio below 1: prefill and score once, then
 * the reconstruction check over the ratios (router-features.ts defines each signal).
 */
export function contextFeatures(lm: LoadedModel, ctx: RouterContext, press: Press, ratios: readonly number[]): RouterFeatures[] {
  const session = new ContextSession(lm, ctx.layout);
  try {
    const check = reconstructionCheck(session.score(press), { candidates: ratios, protection: ctx.protection });
    return check.candidates.filter((c) => c.ratio < 1).map((c) => c.features);
  } finally {
    session.cache.release();
  }
}
