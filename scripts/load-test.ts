/**
 * `npm run load`: a bounded load test of `kvlab serve` (not part of npm test). Starts the server in a child
 * process on a loopback port (embedded model, a fresh store), compresses one shared context over HTTP, then
 * runs N streaming clients for a fixed time with the official openai client: half ask questions on the
 * shared context, half chat without one. Prints one JSON object: errors, client-side TTFT and TPOT
 * percentiles per group, throughput, and the server's RSS, JS heap and external memory sampled from
 * /metrics every 5 s (after warm-up: first, last, max, and the least-squares slope in MiB per minute).
 *
 *   npm run load -- [--clients 64] [--seconds 600] [--warmup 60] [--max-tokens 32] [--method kvzip] [--ratio 0.3]
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import OpenAI from 'openai';

const { values: args } = parseArgs({
  options: {
    clients: { type: 'string', default: '64' },
    seconds: { type: 'string', default: '600' },
    warmup: { type: 'string', default: '60' },
    'max-tokens': { type: 'string', default: '32' },
    method: { type: 'string', default: 'kvzip' },
    ratio: { type: 'string', default: '0.3' },
  },
});
const clients = Number(args.clients);
const seconds = Number(args.seconds);
const warmup = Number(args.warmup);
const maxTokens = Number(args['max-tokens']);
for (const [name, v] of Object.entries({ clients, seconds, warmup, maxTokens })) {
  if (!Number.isInteger(v) || v < 0 || (name !== 'warmup' && v < 1)) throw new Error(`--${name} must be a positive integer, got ${v}`);
}

const root = fileURLToPath(new URL('..', import.meta.url));
const MODEL = 'kvlab-tiny-chat';
const rows = readFileSync(join(root, 'data/dev/qa.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { context: string; questions: string[] });
const PLAIN = ['Hello', 'What is your name?', 'Say the word gumo.', 'Tell me a long story.', 'List three colors.', 'What is the code of tean?'];

const store = mkdtempSync(join(tmpdir(), 'kvlab-load-'));
const server = spawn(process.execPath, [join(root, 'bin/kvlab.js'), 'serve', '--port', '0', '--store', store, '--max-queue', String(clients + 8)], { stdio: ['ignore', 'pipe', 'inherit'] });
const exited = new Promise<number | null>((resolve) => server.on('exit', resolve));

async function main() {
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    server.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    server.on('exit', () => reject(new Error('kvlab serve exited before listening')));
  });
  while ((await fetch(`${url}/health`).catch(() => null))?.status !== 200) await sleep(50);
  const client = new OpenAI({ apiKey: 'none', baseURL: `${url}/v1`, maxRetries: 0, timeout: 600_000 });
  const shared = rows[0]!;
  const ctx = await client.post<{ id: string; tokens: number; kept_ratio: number; timings: Record<string, number> }>('/contexts', {
    body: { text: shared.context, method: args.method, ratio: Number(args.ratio) },
  });

  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const measureFrom = t0 + warmup * 1000;
  const samples = { shared: { ttft: [] as number[], tpot: [] as number[] }, plain: { ttft: [] as number[], tpot: [] as number[] } };
  let requests = 0;
  let completionTokens = 0;
  const errors: string[] = [];
  const rss: { t: number; bytes: number }[] = [];
  const heap: typeof rss = [];
  const external: typeof rss = [];
  const running: { t: number; n: number }[] = [];

  const sampler = (async () => {
    while (performance.now() < end) {
      const text = await (await fetch(`${url}/metrics`)).text();
      const t = (performance.now() - t0) / 1000;
      for (const [name, series] of [['kvlab_process_resident_memory_bytes', rss], ['kvlab_nodejs_heap_size_used_bytes', heap], ['kvlab_nodejs_external_memory_bytes', external]] as const) {
        const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
        if (m) series.push({ t, bytes: Number(m[1]) });
      }
      const r = /^kvlab_running_sequences (\S+)$/m.exec(text);
      if (r) running.push({ t, n: Number(r[1]) });
      await sleep(5000);
    }
  })();

  const worker = async (i: number) => {
    const group = i % 2 === 0 ? 'shared' : 'plain';
    let n = 0;
    while (performance.now() < end) {
      n++;
      const q = group === 'shared' ? shared.questions[(i + n) % shared.questions.length]! : PLAIN[(i + n) % PLAIN.length]!;
      const started = performance.now();
      let first = 0;
      try {
        const stream = await client.chat.completions.create({
          model: MODEL,
          messages: [{ role: 'user', content: q }],
          max_tokens: maxTokens,
          temperature: group === 'shared' ? 0 : 0.8,
          seed: i * 100003 + n,
          stream: true,
          stream_options: { include_usage: true },
          ...((group === 'shared' ? { context: ctx.id } : {}) as Record<string, unknown>),
        });
        let tokens = 0;
        let finish: string | null = null;
        for await (const chunk of stream) {
          if (!first && chunk.choices[0]?.delta.content) first = performance.now();
          finish = chunk.choices[0]?.finish_reason ?? finish;
          if (chunk.usage) tokens = chunk.usage.completion_tokens;
        }
        const done = performance.now();
        if (finish !== 'stop' && finish !== 'length') throw new Error(`finish_reason ${finish}`);
        requests++;
        completionTokens += tokens;
        if (started >= measureFrom && first) {
          samples[group].ttft.push(first - started);
          if (tokens > 1) samples[group].tpot.push((done - first) / (tokens - 1));
        }
      } catch (e) {
        errors.push(`${group}: ${(e as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, i) => worker(i)));
  const elapsed = (performance.now() - t0) / 1000;
  await sampler;

  const mib = (b: number) => Math.round((b / 2 ** 20) * 10) / 10;
  const memory = (series: typeof rss) => {
    const after = series.filter((s) => s.t >= warmup);
    return after.length
      ? { samples: after.length, after_warmup: mib(after[0]!.bytes), end: mib(after.at(-1)!.bytes), max: mib(Math.max(...after.map((s) => s.bytes))), slope_per_minute: mib(slope(after) * 60) }
      : null;
  };
  const report = {
    machine: { cpu: cpuName(), cores: cpus().length },
    config: { clients, seconds, warmup_seconds: warmup, max_tokens: maxTokens, method: args.method, ratio: Number(args.ratio), context_tokens: ctx.tokens, context_kept_ratio: ctx.kept_ratio },
    requests,
    errors: errors.length,
    first_errors: errors.slice(0, 5),
    /** Sequences the server ran per step, sampled from /metrics every 5 s after the warm-up (the batch size). */
    running_sequences: percentiles(running.filter((s) => s.t >= warmup).map((s) => s.n)),
    completion_tokens_per_second: Math.round((completionTokens / elapsed) * 10) / 10,
    ttft_ms: { shared: percentiles(samples.shared.ttft), plain: percentiles(samples.plain.ttft) },
    tpot_ms: { shared: percentiles(samples.shared.tpot), plain: percentiles(samples.plain.tpot) },
    rss_mib: memory(rss),
    heap_used_mib: memory(heap),
    external_mib: memory(external),
  };
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  return errors.length === 0;
}

function percentiles(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  const at = (p: number) => (s.length ? Math.round(s[Math.min(s.length - 1, Math.floor(p * s.length))]! * 10) / 10 : null);
  return { n: s.length, p50: at(0.5), p99: at(0.99) };
}

/** Least-squares slope of bytes over seconds. */
function slope(points: { t: number; bytes: number }[]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mt = points.reduce((a, p) => a + p.t, 0) / n;
  const mb = points.reduce((a, p) => a + p.bytes, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.bytes - mb);
    den += (p.t - mt) ** 2;
  }
  return den ? num / den : 0;
}

function cpuName(): string {
  try {
    return /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model ?? 'unknown';
  } catch {
    return cpus()[0]?.model ?? 'unknown';
  }
}

function sleep(ms: number) {
  return new Promise((r) => setTimeout(r, ms));
}

main()
  .then(async (ok) => {
    server.kill('SIGTERM');
    await exited;
    rmSync(store, { recursive: true, force: true });
    process.exit(ok ? 0 : 1);
  })
  .catch(async (e: unknown) => {
    process.stderr.write(`load test failed: ${(e as Error).message}\n`);
    server.kill('SIGKILL');
    await exited;
    rmSync(store, { recursive: true, force: true });
    process.exit(1);
  });
