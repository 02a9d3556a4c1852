import { KvlabError } from '../tensor/kvlab-error.ts';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** The output folder could not be created or written in time (a hung mount, say): the process should exit. */
export class OutDirTimeoutError extends KvlabError {
  constructor(message: string) {
    super('out_dir_timeout', message);
  }
}

export interface OutDirChecks {
  timeoutMs?: number;
  /** The file operations, replaceable in tests. */
  fs?: { mkdir: typeof mkdir; writeFile: typeof writeFile; rm: typeof rm };
}

/**
 * Checks before a long run that --out can be created and written: mkdir -p, then a probe file written and
 * removed. The check runs on the thread pool against a timeout, so a folder on a mount that never answers
 * fails in seconds with a message instead of hanging the run at its end.
 */
export async function checkOutDir(dir: string, opts: OutDirChecks = {}): Promise<void> {
  const fs = opts.fs ?? { mkdir, writeFile, rm };
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const probe = join(dir, `.kvlab-write-probe-${process.pid}`);
  const work = (async () => {
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(probe, 'probe');
    await fs.rm(probe, { force: true });
  })().catch((e: NodeJS.ErrnoException) => {
    throw new Error(`--out ${dir} is not a writable folder (${e.code ?? e.message})`);
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new OutDirTimeoutError(`--out ${dir}: creating or writing the folder did not finish within ${timeoutMs / 1000} s (a mount that does not answer?)`)), timeoutMs);
  });
  try {
    await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
