import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';

/** Points KVLAB_CACHE_DIR (per-model saved head scores) at a fresh temp folder for one test file; restored and removed after. */
export function scratchCacheDir(prefix: string): string {
  const scratch = mkdtempSync(join(tmpdir(), prefix));
  const saved = process.env.KVLAB_CACHE_DIR;
  process.env.KVLAB_CACHE_DIR = scratch;
  after(() => {
    if (saved === undefined) delete process.env.KVLAB_CACHE_DIR;
    else process.env.KVLAB_CACHE_DIR = saved;
    rmSync(scratch, { recursive: true, force: true });
  });
  return scratch;
}
