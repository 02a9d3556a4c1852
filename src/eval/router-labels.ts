import { findNegatives, type SampleScore } from './negatives.ts';
import { DataFileError } from './jsonl.ts';

/** How a context's questions make its label: negative when any one is, or when more than half are. */
export type LabelRule = 'any' | 'most';

/** A context is one data row in one variant (QA rows hold many questions; an instruction item one). */
export const contextKeyOf = (s: Pick<SampleScore, 'key'>): string => {
  const [id, , variant] = JSON.parse(s.key) as [string, number, string, string];
  return JSON.stringify([id, variant]);
};

export const contextOfKey = (key: string): { id: string; variant: string } => {
  const [id, variant] = JSON.parse(key) as [string, string];
  return { id, variant };
};

export interface ContextLabel {
  context: string;
  method: string;
  ratio: number;
  /** The context's samples scored at this setting and on the full cache. */
  samples: number;
  /** Of them, those whose score fell >= the threshold below the full cache's (negatives.ts). */
  negatives: number;
  negative: boolean;
}

/**
 * Per (context, method, ratio < 1): how many of the context's samples are negative at the threshold, and the
 * context's label by the rule. Settings under a protection (method names with `+`) are left out: the
 * router's features are those of the bare method.
 */
export function contextLabels(scores: SampleScore[], thresholdPoints: number, rule: LabelRule): ContextLabel[] {
  if (rule !== 'any' && rule !== 'most') throw new RangeError(`label rule must be any or most, got ${JSON.stringify(rule)}`);
  const bare = scores.filter((s) => !s.method.includes('+'));
  if (!bare.some((s) => s.ratio < 1)) throw new DataFileError('the runs hold no unprotected setting below ratio 1 to label');
  const analysis = findNegatives(bare, thresholdPoints);
  const full = new Set(bare.filter((s) => s.ratio === 1).map((s) => s.key));
  const out = new Map<string, ContextLabel>();
  for (const setting of analysis.settings) {
    const negative = new Set(setting.negatives);
    for (const s of bare) {
      if (s.method !== setting.method || s.ratio !== setting.ratio || !full.has(s.key)) continue;
      const context = contextKeyOf(s);
      const k = JSON.stringify([context, s.method, s.ratio]);
      const l = out.get(k) ?? { context, method: s.method, ratio: s.ratio, samples: 0, negatives: 0, negative: false };
      l.samples++;
      if (negative.has(s.key)) l.negatives++;
      out.set(k, l);
    }
  }
  const labels = [...out.values()];
  for (const l of labels) l.negative = rule === 'any' ? l.negatives > 0 : 2 * l.negatives > l.samples;
  return labels.sort((a, b) => a.context.localeCompare(b.context) || a.method.localeCompare(b.method) || b.ratio - a.ratio);
}
