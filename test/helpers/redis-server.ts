/**
 * A real redis-server for a test: started on a free loopback port with its own temp folder (no persistence),
 * stopped (and the folder removed) by stop(). Needs Debian's redis-server on PATH (.ci/run installs it).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { Redis } from 'ioredis';

export interface TestRedis {
  url: string;
  port: number;
  proc: ChildProcess;
  /** redis-cli against this server (for tests that reach into it), returns stdout. */
  cli(...args: string[]): string;
  stop(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export function redisServerMissing(): string | null {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  return r.error ? 'redis-server is not installed (apt-get install redis-server; .ci/run does it)' : null;
}

export async function startRedis(): Promise<TestRedis> {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'kvlab-redis-'));
    const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--protected-mode', 'yes'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    let log = '';
    const ready = await new Promise<boolean>((resolve) => {
      const onData = (d: Buffer) => {
        log += d;
        if (log.includes('Ready to accept connections')) resolve(true);
      };
      proc.stdout!.on('data', onData);
      proc.stderr!.on('data', onData);
      void exited.then(() => resolve(false));
      setTimeout(() => resolve(false), 10_000).unref();
    });
    if (!ready) {
      proc.kill('SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
      // Another process may have taken the port between the probe and the bind: try another.
      if (attempt < 3) continue;
      throw new Error(`redis-server did not start on port ${port}:\n${log}`);
    }
    const url = `redis://127.0.0.1:${port}/0`;
    return {
      url,
      port,
      proc,
      cli: (...args: string[]) => {
        const r = spawnSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`redis-cli ${args.join(' ')}: ${r.stderr}`);
        return r.stdout;
      },
      stop: async () => {
        if (proc.exitCode === null) proc.kill('SIGTERM');
        await exited;
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
}

/**
 * A redis-server and a client to it for one test file: started before its tests (unless `skip`), stopped after
 * them, `cleanup` (the file's own teardown) first. Read `redis` and `direct` inside the tests.
 */
export function redisForTests(skip: unknown, cleanup: () => void = () => {}): { readonly redis: TestRedis; readonly direct: Redis } {
  let redis: TestRedis | undefined;
  let direct: Redis | undefined;
  before(async () => {
    if (skip) return;
    redis = await startRedis();
    direct = new Redis(redis.url);
  });
  after(async () => {
    cleanup();
    direct?.disconnect();
    await redis?.stop();
  });
  return {
    get redis() {
      return redis!;
    },
    get direct() {
      return direct!;
    },
  };
}
