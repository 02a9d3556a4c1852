import { spanKeepRates } from './browser/select.js';
import { engineKeep, type Inspection } from './collect.ts';
import { INSPECT_FORMAT } from './inspect-data.ts';

/** A score as JSON: finite numbers as they are, NaN and the infinities as the strings "NaN", "Infinity", "-Infinity". */
function jsonScore(x: number): number | string {
  return Number.isFinite(x) ? x : String(x);
}

/**
 * Scores and the engine's keep sets as plain JSON for other tools: per method, scores[layer][kvHead][row]
 * and, at each ratio, the kept rows per [layer][kvHead]. Rows are span-relative (add context.start for the
 * cache position).
 */
export function inspectionJson(ins: Inspection, ratios: number[]): object {
  const { data } = ins;
  return {
    format: INSPECT_FORMAT,
    model: data.model,
    layers: data.layers,
    kv_heads: data.kvHeads,
    tokens: data.tokens,
    context: data.context,
    spans: data.spans,
    ranges: data.ranges,
    protection: data.protection ?? null,
    methods: data.methods.map((m, i) => ({
      name: m.name,
      describe: m.describe,
      budget: m.budget,
      scores: ins.scored[i]!.scores.map((layer) => layer.map((s) => Array.from(s, jsonScore))),
      ...(ins.scored[i]!.localScores ? { local_scores: ins.scored[i]!.localScores!.map((layer) => layer.map((s) => Array.from(s, jsonScore))) } : {}),
      keep: ratios.map((ratio) => {
        const keep = engineKeep(ins, i, ratio);
        return {
          ratio,
          kept_pairs: keep.flat().reduce((n, rows) => n + rows.length, 0),
          span_keep_rate: spanKeepRates(keep, data.ranges),
          rows: keep.map((layer) => layer.map((rows) => Array.from(rows))),
        };
      }),
      answers: m.answers,
    })),
  };
}
