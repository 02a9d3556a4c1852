import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DataFileError } from './jsonl.ts';

export const PARTIAL_FILE = 'partial.jsonl';

/**
 * Completed units of an eval run (a row under one method), appended to <out>/partial.jsonl as each one
 * finishes, so a crash or Ctrl-C keeps what was done and `--resume` continues from it. The first line
 * records the run's settings; a resumed run must have the same ones. The file is removed once the run's
 * outputs are written.
 */
export class PartialResults<U> {
  private constructor(
    readonly path: string,
    /** Units already done, by key, in the order they were written. */
    readonly done: Map<string, U>,
  ) {}

  /**
   * Opens <dir>/partial.jsonl for a run with these settings. Without `resume`, an existing file of an
   * interrupted run is refused (it would be overwritten); with it, its units are loaded after checking
   * that it was written with the same settings.
   */
  static open<U>(dir: string, settings: Record<string, unknown>, resume: boolean): PartialResults<U> {
    const path = join(dir, PARTIAL_FILE);
    const done = new Map<string, U>();
    const exists = existsSync(path);
    if (exists && !resume) {
      throw new DataFileError(`${path} holds the completed rows of an interrupted run: pass --resume to continue it, or remove the file to start over`);
    }
    if (exists) {
      const lines = readFileSync(path, 'utf8').split('\n');
      // Drops what follows the last newline: nothing, or a line a crash cut short (its unit is redone).
      lines.pop();
      const parse = (text: string, i: number): Record<string, unknown> => {
        try {
          const v = JSON.parse(text) as unknown;
          if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
        } catch {
          // reported below
        }
        throw new DataFileError(`${path}:${i + 1}: not a JSON object (the file is damaged; remove it to start over)`);
      };
      const header = lines.length ? parse(lines[0]!, 0) : {};
      const saved = (header.settings ?? {}) as Record<string, unknown>;
      for (const key of new Set([...Object.keys(saved), ...Object.keys(settings)])) {
        if (JSON.stringify(saved[key]) !== JSON.stringify(settings[key])) {
          throw new DataFileError(`${path}: written by a run with ${key} ${JSON.stringify(saved[key])}, this run has ${JSON.stringify(settings[key])}; resume with the same options or remove the file`);
        }
      }
      for (let i = 1; i < lines.length; i++) {
        const entry = parse(lines[i]!, i);
        if (typeof entry.unit !== 'string') throw new DataFileError(`${path}:${i + 1}: no "unit" key`);
        done.set(entry.unit, entry.result as U);
      }
      // Rewrite without a cut-off tail, so new units start on a line of their own.
      writeFileSync(path, [JSON.stringify({ settings }), ...[...done].map(([unit, result]) => JSON.stringify({ unit, result }))].join('\n') + '\n');
    } else {
      mkdirSync(dir, { recursive: true });
      writeFileSync(path, `${JSON.stringify({ settings })}\n`);
    }
    return new PartialResults<U>(path, done);
  }

  /** Appends one completed unit (one synchronous write, so it is on disk before the next unit starts). */
  record(unit: string, result: U): void {
    this.done.set(unit, result);
    appendFileSync(this.path, `${JSON.stringify({ unit, result })}\n`);
  }

  /** The run's outputs are written: the partial file is no longer needed. */
  finish(): void {
    rmSync(this.path, { force: true });
  }
}
