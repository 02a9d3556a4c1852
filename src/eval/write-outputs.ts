import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { toCsv } from './csv.ts';

export interface EvalOutputs {
  results: unknown;
  samples: Record<string, unknown>[];
  /** Markdown body of report.md; plots are referenced by file name. */
  report: string;
  /** File name -> SVG text. */
  plots: Record<string, string>;
}

/** Writes results.json, samples.csv, report.md and the plots into dir, each file atomically. */
export function writeEvalOutputs(dir: string, out: EvalOutputs): string[] {
  mkdirSync(dir, { recursive: true });
  const files: [string, string][] = [
    ['results.json', `${JSON.stringify(out.results, null, 2)}\n`],
    ['samples.csv', toCsv(out.samples)],
    ['report.md', out.report],
    ...Object.entries(out.plots),
  ];
  for (const [name, text] of files) writeAtomic(join(dir, name), text);
  return files.map(([name]) => join(dir, name));
}

export function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

/** A markdown table from rows of equal keys. */
export function markdownTable(rows: Record<string, unknown>[]): string {
  if (!rows.length) return '(no rows)\n';
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: unknown) => (v === undefined || v === null ? '' : typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v));
  return [`| ${keys.join(' | ')} |`, `| ${keys.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${keys.map((k) => cell(r[k])).join(' | ')} |`)].join('\n') + '\n';
}
