import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
const tracer = fileURLToPath(new URL('./helpers/import-trace.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'kvlab-lazy-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The modules of bullmq and ioredis a kvlab command resolved. */
function redisModules(name: string, args: string[]): string[] {
  const trace = join(dir, `${name}.txt`);
  spawnSync(process.execPath, ['--import', tracer, cli, ...args], { env: { ...process.env, KVLAB_IMPORT_TRACE: trace }, encoding: 'utf8' });
  const urls = readFileSync(trace, 'utf8').split('\n');
  assert.ok(urls.some((u) => u.endsWith('/src/cli/main.ts')), 'the tracer saw the CLI load');
  return urls.filter((u) => /\/node_modules\/(bullmq|ioredis)\//.test(u));
}

test('bullmq and ioredis load only for a command that uses Redis', () => {
  assert.deepEqual(redisModules('methods', ['methods']), []);
  assert.deepEqual(redisModules('eval-help', ['eval', 'qa', '--help']), []);
  assert.deepEqual(redisModules('leakage-help', ['eval', 'leakage', '--help']), []);
  // The tracer does see them where they are used: a worker (its Redis is unreachable, so it ends at once).
  assert.ok(redisModules('worker', ['worker', '--queue', 'redis://127.0.0.1:1/0']).some((u) => u.includes('/node_modules/bullmq/')));
});
