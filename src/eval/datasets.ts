import { existsSync, readFileSync } from 'node:fs';

export class DatasetError extends Error {}

/** Parses a JSONL file; errors name the file and line. */
export function readJsonl(path: string): { line: number; value: Record<string, unknown> }[] {
  if (!existsSync(path)) throw new DatasetError(`data file not found: ${path}`);
  const out: { line: number; value: Record<string, unknown> }[] = [];
  readFileSync(path, 'utf8')
    .split('\n')
    .forEach((text, i) => {
      if (!text.trim()) return;
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (e) {
        throw new DatasetError(`${path}:${i + 1}: not valid JSON (${(e as Error).message})`);
      }
      if (!value || typeof value !== 'object' || Array.isArray(value)) throw new DatasetError(`${path}:${i + 1}: expected a JSON object`);
      out.push({ line: i + 1, value: value as Record<string, unknown> });
    });
  return out;
}

type Kind = 'string' | 'number' | 'boolean' | 'string[]' | 'array';

function field<T>(path: string, line: number, row: Record<string, unknown>, key: string, kind: Kind): T {
  const v = row[key];
  const ok =
    kind === 'string[]'
      ? Array.isArray(v) && v.every((x) => typeof x === 'string')
      : kind === 'array'
        ? Array.isArray(v)
        : typeof v === kind;
  if (!ok) throw new DatasetError(`${path}:${line}: field "${key}" must be ${kind}${row.id ? ` (row ${String(row.id)})` : ''}`);
  return v as T;
}

export interface QaRow {
  id: string;
  context: string;
  questions: string[];
  answers: string[];
}

export function loadQa(path: string): QaRow[] {
  return readJsonl(path).map(({ line, value: r }) => {
    const row: QaRow = {
      id: field(path, line, r, 'id', 'string'),
      context: field(path, line, r, 'context', 'string'),
      questions: field(path, line, r, 'questions', 'string[]'),
      answers: field(path, line, r, 'answers', 'string[]'),
    };
    if (row.questions.length !== row.answers.length) throw new DatasetError(`${path}:${line}: questions and answers differ in length (row ${row.id})`);
    return row;
  });
}

export interface Instruction {
  type: string;
  arg: string | null;
}

export interface InstructionRow {
  id: string;
  system: string;
  instructions: Instruction[];
  user: string;
  value: string;
  expected: string;
  checks: string[];
}

export function loadInstructions(path: string): InstructionRow[] {
  return readJsonl(path).map(({ line, value: r }) => ({
    id: field(path, line, r, 'id', 'string'),
    system: field(path, line, r, 'system', 'string'),
    instructions: field(path, line, r, 'instructions', 'array'),
    user: field(path, line, r, 'user', 'string'),
    value: field(path, line, r, 'value', 'string'),
    expected: field(path, line, r, 'expected', 'string'),
    checks: field(path, line, r, 'checks', 'string[]'),
  }));
}

export interface LeakageRow {
  id: string;
  system: string;
  instructions: Instruction[];
  confidential: boolean;
  confidential_position: number;
  kind: string;
  user: string;
  secret_code: string;
  leak_markers: string[];
  expected: string;
}

export function loadLeakage(path: string): LeakageRow[] {
  return readJsonl(path).map(({ line, value: r }) => ({
    id: field(path, line, r, 'id', 'string'),
    system: field(path, line, r, 'system', 'string'),
    instructions: field(path, line, r, 'instructions', 'array'),
    confidential: field(path, line, r, 'confidential', 'boolean'),
    confidential_position: field(path, line, r, 'confidential_position', 'number'),
    kind: field(path, line, r, 'kind', 'string'),
    user: field(path, line, r, 'user', 'string'),
    secret_code: field(path, line, r, 'secret_code', 'string'),
    leak_markers: field(path, line, r, 'leak_markers', 'string[]'),
    expected: field(path, line, r, 'expected', 'string'),
  }));
}
