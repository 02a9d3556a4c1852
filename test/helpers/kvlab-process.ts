/** `kvlab` CLI processes for end-to-end tests: output captured, waits on lines, all killed by killAll(). */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../../bin/kvlab.js', import.meta.url));
const children: ChildProcess[] = [];

export interface Proc {
  proc: ChildProcess;
  out: () => string;
  exit: Promise<number | null>;
  /** Resolves with the first match of re in stdout (and rejects if the process exits first). */
  waitFor: (re: RegExp) => Promise<RegExpExecArray>;
}

export function kvlab(args: string[]): Proc {
  const proc = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let out = '';
  let err = '';
  const waiters: { re: RegExp; resolve: (m: RegExpExecArray) => void; reject: (e: Error) => void }[] = [];
  const check = () => {
    for (const w of [...waiters]) {
      const m = w.re.exec(out);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  };
  proc.stdout!.on('data', (d) => {
    out += d;
    check();
  });
  proc.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((resolve) =>
    proc.on('exit', (code) => {
      for (const w of waiters) w.reject(new Error(`kvlab ${args.join(' ')} exited (${code}) before printing ${w.re}: ${out}\n${err}`));
      resolve(code);
    }),
  );
  return {
    proc,
    exit,
    out: () => `${out}\n${err}`,
    waitFor: (re) =>
      new Promise((resolve, reject) => {
        waiters.push({ re, resolve, reject });
        check();
      }),
  };
}

/** Waits for the process to end and asserts it succeeded (its output in the message otherwise). */
export async function finished(p: Proc): Promise<void> {
  const code = await p.exit;
  assert.equal(code, 0, p.out());
}

/** A `kvlab worker` on the queue at url, with a short lock so a dead worker's job comes back quickly. */
export const queueWorker = (url: string, ...extra: string[]) => kvlab(['worker', '--queue', url, '--lock-ms', '1000', ...extra]);

export async function stopWorker(w: Proc): Promise<void> {
  w.proc.kill('SIGTERM');
  await finished(w);
}

/** Kills every process these helpers started that is still running (for after()). */
export function killAll(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

export interface ServeChild {
  proc: ChildProcess;
  url: string;
  exit: Promise<number | null>;
}

/** `kvlab serve --port 0 ARGS` in a child process; resolves once /health answers 200. */
export async function serveChild(args: string[]): Promise<ServeChild> {
  const proc = spawn(process.execPath, [cli, 'serve', '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    proc.on('exit', () => reject(new Error(`kvlab serve exited before listening: ${stderr}`)));
  });
  for (;;) {
    const r = await fetch(`${url}/health`).catch(() => null);
    if (r?.status === 200) break;
    if (proc.exitCode !== null) throw new Error(`kvlab serve exited: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { proc, url, exit };
}
