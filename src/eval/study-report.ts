import type { StudyResult } from './prompt-study.ts';
import { barPlot, linePlot } from './svg-plot.ts';
import { markdownTable } from './write-outputs.ts';

const HEADLINE: Record<'instructions' | 'leakage', { metric: string; label: string }[]> = {
  instructions: [
    { metric: 'follow_rate', label: 'instruction following rate' },
    { metric: 'exact', label: 'exact match' },
  ],
  leakage: [
    { metric: 'leak', label: 'leak rate (confidential items)' },
    { metric: 'refusal', label: 'exact refusal rate' },
    { metric: 'correct_reveal', label: 'correct reveal rate (items without the never-reveal sentence)' },
  ],
};

/** report.md and its SVG plots for an instruction/leakage study. */
export function studyReport(kind: 'instructions' | 'leakage', model: string, data: string, results: StudyResult[]): { report: string; plots: Record<string, string> } {
  const plots: Record<string, string> = {};
  const headline = results.some((r) => r.variant === 'original') ? 'original' : results[0]?.variant;
  const original = results.filter((r) => r.variant === headline);
  const lines: string[] = [`# ${kind === 'instructions' ? 'Instruction following' : 'System-prompt leakage'} under compression`, '', `Model: ${model}  `, `Data: ${data}`, ''];
  for (const { metric, label } of HEADLINE[kind]) {
    const keys = [...new Set(original.map((r) => `${r.method}|${r.protect}`))];
    const protections = [...new Set(original.map((r) => r.protect))];
    const series = keys.map((key) => {
      const [method, protect] = key.split('|') as [string, string];
      return {
        name: protect === 'none' ? method : `${method} + ${protect}`,
        group: method,
        dash: protections.indexOf(protect),
        points: original.filter((r) => r.method === method && r.protect === protect && r.metrics[metric] !== undefined).map((r) => [r.ratio, r.metrics[metric]!] as [number, number]),
      };
    });
    const file = `${metric}.svg`;
    plots[file] = linePlot({ title: `${label} vs kept ratio`, xLabel: 'ratio of the system prompt kept', yLabel: label, series, xDomain: [0, 1], yDomain: [0, 1] });
    lines.push(`## ${label}`, '', `![${label}](${file})`, '');
    const table = keys.map((key) => {
      const [method, protect] = key.split('|') as [string, string];
      const row: Record<string, unknown> = { method, protect };
      for (const r of original.filter((x) => x.method === method && x.protect === protect)) row[`r=${r.ratio}`] = r.metrics[metric] ?? '';
      return row;
    });
    lines.push(markdownTable(table), '');
  }
  const base = original.filter((r) => r.protect === 'none' && r.ratio < 1);
  const spans = [...new Set(base.flatMap((r) => Object.keys(r.keep_rate)))].filter((s) => s !== 'template').sort();
  if (base.length && spans.length) {
    const methods = [...new Set(base.map((r) => r.method))];
    const values = methods.map((m) => spans.map((s) => mean(base.filter((r) => r.method === m).map((r) => r.keep_rate[s] ?? 0))));
    plots['keep_rate.svg'] = barPlot({ title: 'Mean keep rate per span (ratios < 1, no protection)', yLabel: 'fraction of KV heads keeping a token', groups: methods, series: spans, values, yDomain: [0, 1] });
    lines.push('## Eviction bias: keep rate per span', '', '![keep rate](keep_rate.svg)', '');
    lines.push(markdownTable(methods.map((m, i) => ({ method: m, ...Object.fromEntries(spans.map((s, j) => [s, values[i]![j]!])) }))), '');
  }
  const variants = [...new Set(results.map((r) => r.variant))];
  if (variants.length > 1) {
    lines.push('## Instruction order', '');
    const metric = HEADLINE[kind][0]!.metric;
    const rows = [...new Set(results.filter((r) => r.protect === 'none').map((r) => `${r.method}|${r.ratio}`))].map((key) => {
      const [method, ratio] = key.split('|') as [string, string];
      const row: Record<string, unknown> = { method, ratio: Number(ratio) };
      for (const v of variants) row[v] = results.find((r) => r.method === method && String(r.ratio) === ratio && r.protect === 'none' && r.variant === v)?.metrics[metric] ?? '';
      return row;
    });
    lines.push(`${metric} by position of the defense sentence:`, '', markdownTable(rows), '');
  }
  return { report: lines.join('\n'), plots };
}

function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}
