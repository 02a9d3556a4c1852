import type { LoadedModel } from '../engine/loaded-model.ts';
import type { ContextSession } from '../engine/context-session.ts';
import { getPress } from '../press/registry.ts';
import type { QaRow } from './datasets.ts';
import { sweepRatios } from './method-sweep.ts';
import { linePlot } from './svg-plot.ts';

/** How answers are decoded: greedily, or sampled at a temperature with a seed shared by the full and compressed runs. */
export type DecodeMode = 'greedy' | 'sampled';

/** One answer under one setting: its length and its time (the full cache is method "full", ratio 1). */
export interface LengthGeneration {
  question_index: number;
  mode: DecodeMode;
  method: string;
  ratio: number;
  tokens: number;
  ttft_ms: number;
  decode_ms: number;
}

/** A row under one method (or "full"): every question, mode and ratio. */
export type LengthUnit = LengthGeneration[];

/** An answer's length under a setting beside the full cache's for the same question and decoding. */
export interface LengthSample {
  id: string;
  question_index: number;
  mode: DecodeMode;
  method: string;
  ratio: number;
  tokens: number;
  full_tokens: number;
  hit_max: boolean;
  full_hit_max: boolean;
  ttft_ms: number;
  decode_ms: number;
}

export interface LengthStudyOptions {
  methods: string[];
  /** Ratios below 1 (ratio 1 of any method is the full cache). */
  ratios: number[];
  queryTemplate: string;
  maxTokens: number;
  /** 0: greedy only; above it, a sampled answer as well. */
  temperature: number;
  seed: number;
  onProgress?: (done: number, total: number) => void;
  resumed?: Map<string, LengthUnit>;
  onUnit?: (key: string, unit: LengthUnit) => void;
}

export const lengthUnitKey = (method: string, index: number, id: string) => JSON.stringify([method, index, id]);

/** The sampling seed of one question: the same under every setting, so a length change is the cache's doing. */
export const sampleSeed = (seed: number, row: number, question: number) => seed * 100003 + row * 1009 + question;

async function answerAll(session: ContextSession, row: QaRow, rowIndex: number, method: string, ratio: number, o: LengthStudyOptions): Promise<LengthGeneration[]> {
  const out: LengthGeneration[] = [];
  const modes: DecodeMode[] = o.temperature > 0 ? ['greedy', 'sampled'] : ['greedy'];
  for (const [qi, q] of row.questions.entries()) {
    for (const mode of modes) {
      const sampling = mode === 'greedy' ? { temperature: 0 } : { temperature: o.temperature, seed: sampleSeed(o.seed, rowIndex, qi) };
      const r = await session.ask(o.queryTemplate.replaceAll('{query}', q), { maxTokens: o.maxTokens, sampling });
      out.push({ question_index: qi, mode, method, ratio, tokens: r.tokens.length, ttft_ms: r.timings.ttftMs, decode_ms: r.timings.decodeMs });
    }
  }
  return out;
}

/**
 * Output length under compression: every question of every row answered on the full cache and on each
 * method x ratio (one prefill and scoring per row and method), greedily and, with a temperature, sampled
 * with the same seed; each answer's length is paired with the full cache's.
 */
export async function runLengthStudy(lm: LoadedModel, rows: QaRow[], o: LengthStudyOptions): Promise<LengthSample[]> {
  const ratios = o.ratios.filter((r) => r < 1);
  const methods = ['full', ...o.methods.filter((m) => m !== 'full')];
  methods.slice(1).forEach(getPress);
  const total = rows.length * methods.length;
  let done = 0;
  const samples: LengthSample[] = [];
  for (const [index, row] of rows.entries()) {
    const units = new Map<string, LengthUnit>();
    for (const method of methods) {
      const key = lengthUnitKey(method, index, row.id);
      let unit = o.resumed?.get(key);
      if (!unit) {
        unit = [];
        if (method === 'full') unit.push(...(await answerAll(lm.openContext(row.context, { queryTemplate: o.queryTemplate }), row, index, 'full', 1, o)));
        else for (const point of sweepRatios(lm, row.context, getPress(method), ratios, { queryTemplate: o.queryTemplate })) unit.push(...(await answerAll(point.session, row, index, method, point.chosen, o)));
        o.onUnit?.(key, unit);
      }
      units.set(method, unit);
      o.onProgress?.(++done, total);
    }
    const full = new Map(units.get('full')!.map((g) => [`${g.question_index}|${g.mode}`, g]));
    for (const g of [...units.values()].flat()) {
      const f = full.get(`${g.question_index}|${g.mode}`)!;
      samples.push({ id: row.id, ...g, full_tokens: f.tokens, hit_max: g.tokens >= o.maxTokens, full_hit_max: f.tokens >= o.maxTokens });
    }
  }
  return samples;
}

/** A serving latency model: e2e(n) = TTFT + (n - 1) * TPOT for n >= 1 output tokens, TTFT for none. */
export interface LatencyModel {
  ttftMs: number;
  tpotMs: number;
}

/** How much longer than the full cache's an answer must be to count as lengthened (the threshold the Rethinking paper uses). */
export const LONGER_FACTOR = 1.5;

export const impliedE2eMs = (m: LatencyModel, tokens: number) => m.ttftMs + Math.max(0, tokens - 1) * m.tpotMs;

export interface LengthSummary {
  mode: DecodeMode;
  method: string;
  ratio: number;
  n: number;
  mean_tokens: number;
  mean_full_tokens: number;
  /** Mean of tokens - full_tokens. */
  mean_change: number;
  /** Share of answers at least LONGER_FACTOR times as long as the full cache's (a full answer of 0 tokens counts as 1). */
  share_longer_1_5x: number;
  share_shorter: number;
  share_hit_max: number;
  share_full_hit_max: number;
  /** Mean e2e under the latency model for these lengths, and its ratio to the full cache's lengths. */
  implied_e2e_ms: number;
  implied_e2e_vs_full: number;
}

/** Per (mode, method, ratio): the distribution of the length change against the full cache, and the latency it implies. */
export function summarizeLengths(samples: LengthSample[], latency: LatencyModel): LengthSummary[] {
  const keys = [...new Set(samples.map((s) => JSON.stringify([s.mode, s.method, s.ratio])))];
  return keys.map((k) => {
    const [mode, method, ratio] = JSON.parse(k) as [DecodeMode, string, number];
    const s = samples.filter((x) => x.mode === mode && x.method === method && x.ratio === ratio);
    const mean = (f: (x: LengthSample) => number) => s.reduce((a, x) => a + f(x), 0) / s.length;
    const share = (f: (x: LengthSample) => boolean) => s.filter(f).length / s.length;
    const e2e = mean((x) => impliedE2eMs(latency, x.tokens));
    const e2eFull = mean((x) => impliedE2eMs(latency, x.full_tokens));
    return {
      mode,
      method,
      ratio,
      n: s.length,
      mean_tokens: mean((x) => x.tokens),
      mean_full_tokens: mean((x) => x.full_tokens),
      mean_change: mean((x) => x.tokens - x.full_tokens),
      share_longer_1_5x: share((x) => x.tokens >= LONGER_FACTOR * Math.max(1, x.full_tokens)),
      share_shorter: share((x) => x.tokens < x.full_tokens),
      share_hit_max: share((x) => x.hit_max),
      share_full_hit_max: share((x) => x.full_hit_max),
      implied_e2e_ms: e2e,
      implied_e2e_vs_full: e2eFull > 0 ? e2e / e2eFull : NaN,
    };
  });
}

/** Median TTFT and per-token decode time of the full cache's answers in this run (greedy): the study's own latency model. */
export function fullCacheLatency(samples: LengthSample[]): LatencyModel {
  const full = samples.filter((s) => s.method === 'full' && s.mode === 'greedy');
  const med = (xs: number[]) => {
    const v = [...xs].sort((a, b) => a - b);
    return v.length ? (v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2) : NaN;
  };
  return { ttftMs: med(full.map((s) => s.ttft_ms)), tpotMs: med(full.filter((s) => s.tokens > 1).map((s) => s.decode_ms / s.tokens)) };
}

/** Counts of tokens - full_tokens per integer change from lo to hi, the ends collecting everything beyond them. */
export function changeHistogram(changes: number[], lo: number, hi: number): { change: number; count: number }[] {
  const bins = Array.from({ length: hi - lo + 1 }, (_, i) => ({ change: lo + i, count: 0 }));
  for (const c of changes) bins[Math.min(hi, Math.max(lo, c)) - lo]!.count++;
  return bins;
}

/** Per mode and ratio: the histogram of the length change (fraction of answers per change, a line per method); and the longer share vs ratio. */
export function lengthPlots(samples: LengthSample[], summaries: LengthSummary[]): Record<string, string> {
  const plots: Record<string, string> = {};
  const compressed = samples.filter((s) => s.method !== 'full');
  const changes = compressed.map((s) => s.tokens - s.full_tokens);
  const lo = Math.max(-32, Math.min(0, ...changes));
  const hi = Math.min(32, Math.max(0, ...changes));
  for (const mode of [...new Set(compressed.map((s) => s.mode))]) {
    for (const ratio of [...new Set(compressed.map((s) => s.ratio))].sort((a, b) => b - a)) {
      const at = compressed.filter((s) => s.mode === mode && s.ratio === ratio);
      plots[`length-change-${mode}-${ratio}.svg`] = linePlot({
        title: `Output length change vs the full cache (${mode}, ratio ${ratio})`,
        xLabel: 'tokens - full-cache tokens (ends collect the tails)',
        yLabel: 'fraction of answers',
        yDomain: [0, 1],
        series: [...new Set(at.map((s) => s.method))].map((method) => {
          const ofMethod = at.filter((s) => s.method === method);
          return { name: method, points: changeHistogram(ofMethod.map((s) => s.tokens - s.full_tokens), lo, hi).map((b) => [b.change, b.count / ofMethod.length] as [number, number]) };
        }),
      });
    }
    const rows = summaries.filter((s) => s.mode === mode && s.method !== 'full');
    plots[`longer-1.5x-${mode}.svg`] = linePlot({
      title: `Answers >= 1.5x the full cache's length (${mode})`,
      xLabel: 'ratio kept',
      yLabel: 'share of answers',
      xDomain: [0, 1],
      yDomain: [0, 1],
      series: [...new Set(rows.map((s) => s.method))].map((method) => ({ name: method, points: rows.filter((s) => s.method === method).map((s) => [s.ratio, s.share_longer_1_5x] as [number, number]) })),
    });
  }
  return plots;
}
