import { KvlabError } from '../tensor/kvlab-error.ts';
import { readRegularText } from '../model/regular-file.ts';

/** A data file that cannot be used; the message names the file (and the line, for JSONL). */
export class DataFileError extends KvlabError {
  constructor(message: string) {
    super('data_file', message);
  }
}

export interface JsonlLine {
  /** 1-based line number in the file. */
  line: number;
  value: Record<string, unknown>;
}

function readText(path: string): string {
  return readRegularText(path, 'data file', (msg) => new DataFileError(msg));
}

/** Parses JSONL text: one JSON object per line, blank lines skipped; `source` names the text in errors. */
export function parseJsonl(text: string, source: string): JsonlLine[] {
  const out: JsonlLine[] = [];
  const lines = text.replace(/^\uFEFF/, '').split('\n');
  for (const [i, raw] of lines.entries()) {
    const text = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (!text.trim()) continue;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new DataFileError(`${source}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new DataFileError(`${source}:${i + 1}: expected a JSON object, got ${describeValue(value)}`);
    }
    out.push({ line: i + 1, value: value as Record<string, unknown> });
  }
  return out;
}

/** Reads a JSONL file; errors name the file and line. */
export function readJsonl(path: string): JsonlLine[] {
  return parseJsonl(readText(path), path);
}

/** Reads a whole-file JSON document; errors name the file. */
export function readJsonFile(path: string): unknown {
  const text = readText(path);
  try {
    return JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (e) {
    throw new DataFileError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

/** A short description of a JSON value's type for error messages. */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing (missing)';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}
