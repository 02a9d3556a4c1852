import type { LoadedModel } from '../engine/loaded-model.ts';
import { getPress } from '../press/registry.ts';
import type { QaRow } from './datasets.ts';
import { sweepRatios } from './method-sweep.ts';

export interface QaEvalOptions {
  methods: string[];
  ratios: number[];
  /** How a question becomes user text ({query} replaced); the dev set uses "Question: {query}". */
  queryTemplate: string;
  maxTokens?: number;
  system?: string;
  onProgress?: (done: number, total: number) => void;
}

export interface QaResult {
  method: string;
  ratio: number;
  accuracy: number;
  n: number;
  kept_bytes_ratio: number;
}

export interface QaSample {
  id: string;
  question_index: number;
  method: string;
  ratio: number;
  answer: string;
  expected: string;
  correct: boolean;
}

/** Multi-query QA under compression: exact match of the stripped answer, per (method, ratio). */
export async function evalQa(lm: LoadedModel, rows: QaRow[], opts: QaEvalOptions): Promise<{ results: QaResult[]; samples: QaSample[] }> {
  const presses = opts.methods.map(getPress);
  const samples: QaSample[] = [];
  const kept = new Map<string, number[]>();
  const total = rows.length * presses.length;
  let done = 0;
  for (const press of presses) {
    for (const row of rows) {
      for (const point of sweepRatios(lm, row.context, press, opts.ratios, { queryTemplate: opts.queryTemplate, system: opts.system })) {
        const key = `${press.name}@${point.ratio}`;
        kept.set(key, [...(kept.get(key) ?? []), point.keptBytesRatio]);
        for (const [qi, q] of row.questions.entries()) {
          const r = await point.session.ask(q, { maxTokens: opts.maxTokens ?? 24 });
          const answer = r.text.trim();
          samples.push({ id: row.id, question_index: qi, method: press.name, ratio: point.ratio, answer, expected: row.answers[qi]!, correct: answer === row.answers[qi]! });
        }
      }
      opts.onProgress?.(++done, total);
    }
  }
  const results: QaResult[] = [];
  for (const press of presses)
    for (const ratio of opts.ratios) {
      const s = samples.filter((x) => x.method === press.name && x.ratio === ratio);
      const k = kept.get(`${press.name}@${ratio}`) ?? [];
      results.push({
        method: press.name,
        ratio,
        accuracy: s.length ? s.filter((x) => x.correct).length / s.length : 0,
        n: s.length,
        kept_bytes_ratio: k.length ? k.reduce((a, b) => a + b, 0) / k.length : 1,
      });
    }
  return { results, samples };
}
