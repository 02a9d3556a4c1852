import assert from 'node:assert/strict';
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DEFAULT_MODEL_DIR } from '../src/engine/loaded-model.ts';
import type { FuzzReply, FuzzRequest } from './helpers/fuzz-worker.ts';

// Seeded fuzzing of the embedded checkpoint: its safetensors header, its tensor data (structure and
// non-finite values, not plausible values: a changed weight is a different model) and its config.json.
// Every case must end in a one-line error naming the file (or the tensor or field at fault), or in a run
// whose tokens and logits equal the unmutated model's; never a signal, a hang or unbounded memory. Cases
// run in child processes (one per core) so a crash or hang costs one case, not the suite.

const SEED = 21;
const CASES = 300;
const CASE_TIMEOUT_MS = 30_000;
const MAX_RSS_KIB = 1024 * 1024;
const WORKERS = 2;

const scratch = mkdtempSync(join(tmpdir(), 'kvlab-fuzz-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const original = readFileSync(join(DEFAULT_MODEL_DIR, 'model.safetensors'));
const headerLen = Number(original.readBigUInt64LE(0));
const headerText = original.subarray(8, 8 + headerLen).toString('latin1');
const header = JSON.parse(headerText) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
const tensorNames = Object.keys(header).filter((n) => n !== '__metadata__');
const configText = readFileSync(join(DEFAULT_MODEL_DIR, 'config.json'), 'utf8');
const config = JSON.parse(configText) as Record<string, unknown>;

/** mulberry32: a small seeded generator, so every run fuzzes the same cases. */
function random(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[int(0, xs.length - 1)]!;
  return { int, pick };
}
type Rng = ReturnType<typeof random>;

type FileEdit = Buffer | string | 'fifo' | 'dir' | { link: string } | null;
interface Case {
  what: string;
  /** The edited files, built only when the case runs (a few hundred copies of the checkpoint at once would not be bounded memory). */
  files: () => Record<string, FileEdit>;
}

const withHeader = (text: string, lengthField = Buffer.byteLength(text, 'latin1')) => {
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(lengthField));
  return Buffer.concat([len, Buffer.from(text, 'latin1'), original.subarray(8 + headerLen)]);
};

const HEADER_CHARS = '{}[]":,0123456789abcdefBFI_. ';
const CONFIG_FIELDS = ['num_hidden_layers', 'hidden_size', 'intermediate_size', 'vocab_size', 'num_attention_heads', 'num_key_value_heads', 'head_dim', 'max_position_embeddings', 'model_type', 'tie_word_embeddings', 'attention_bias', 'rope_scaling', 'hidden_act'];
const CONFIG_VALUES: unknown[] = [0, -1, 1, 2, 3, 5, 7, 64, 1e9, 2 ** 53, 1.5, '6', null, true, [], {}, 'llama', 'qwen2', 'qwen3', 'mistral', 'gelu', { rope_type: 'yarn', factor: 2 }];
const NON_FINITE = [0x7fc0, 0x7f80, 0xff80, 0xffc1];

const MUTATIONS: ((r: Rng) => Case)[] = [
  (r) => {
    const delta = r.pick([-16, -8, -6, -4, -3, -2, -1, 1, 2, 3, 4, 8, 100, -100, 1 << 20, -headerLen, 2 ** 40]);
    return { what: `header length ${delta > 0 ? '+' : ''}${delta}`, files: () => ({ 'model.safetensors': withHeader(headerText, Math.max(0, headerLen + delta)) }) };
  },
  (r) => {
    const at = r.int(0, headerText.trimEnd().length - 1);
    const c = r.pick([...HEADER_CHARS]);
    return { what: `header byte ${at} ${JSON.stringify(headerText[at])} -> ${JSON.stringify(c)}`, files: () => ({ 'model.safetensors': withHeader(headerText.slice(0, at) + c + headerText.slice(at + 1)) }) };
  },
  (r) => {
    const at = r.int(0, headerText.trimEnd().length - 1);
    const keep = r.int(0, 1) === 1;
    const text = r.int(0, 1) ? headerText.slice(0, at) + r.pick([...HEADER_CHARS]) + headerText.slice(at) : headerText.slice(0, at) + headerText.slice(at + 1);
    return { what: `header byte ${at} ${text.length > headerText.length ? 'inserted' : 'deleted'}${keep ? ', length field kept' : ''}`, files: () => ({ 'model.safetensors': withHeader(text, keep ? headerLen : undefined) }) };
  },
  (r) => {
    const name = r.pick(tensorNames);
    const other = r.pick(tensorNames);
    const text = `{"${name}":${JSON.stringify({ ...header[other], data_offsets: header[name]!.data_offsets })},${headerText.slice(1)}`;
    return { what: `duplicate header key ${name}`, files: () => ({ 'model.safetensors': withHeader(text) }) };
  },
  (r) => {
    const at = r.int(0, original.length - 1);
    return { what: `truncated to ${at} bytes`, files: () => ({ 'model.safetensors': original.subarray(0, at) }) };
  },
  (r) => {
    const extra = r.int(1, 4096);
    const fill = r.int(0, 255);
    return { what: `${extra} bytes appended`, files: () => ({ 'model.safetensors': Buffer.concat([original, Buffer.alloc(extra, fill)]) }) };
  },
  (r) => {
    const name = r.pick(tensorNames);
    const [begin, end] = header[name]!.data_offsets;
    const element = r.int(0, (end - begin) / 2 - 1);
    const bits = r.pick(NON_FINITE);
    const poisoned = () => {
      const b = Buffer.from(original);
      b.writeUInt16LE(bits, 8 + headerLen + begin + 2 * element);
      return b;
    };
    return { what: `${name}[${element}] = 0x${bits.toString(16)}`, files: () => ({ 'model.safetensors': poisoned() }) };
  },
  (r) => {
    const field = r.pick(CONFIG_FIELDS);
    const value = r.pick(CONFIG_VALUES);
    return { what: `config ${field} = ${JSON.stringify(value)}`, files: () => ({ 'config.json': JSON.stringify({ ...config, [field]: value }) }) };
  },
  (r) => {
    const field = r.pick(CONFIG_FIELDS);
    const rest = { ...config };
    delete rest[field];
    return { what: `config without ${field}`, files: () => ({ 'config.json': JSON.stringify(rest) }) };
  },
  (r) => {
    const at = r.int(0, configText.length - 2);
    return { what: `config.json cut at ${at}`, files: () => ({ 'config.json': configText.slice(0, at) }) };
  },
  (r) => {
    const file = r.pick(['model.safetensors', 'config.json', 'tokenizer.json']);
    const kind = r.pick(['fifo', 'dir', 'dev', 'empty', 'missing'] as const);
    const edit: FileEdit = kind === 'dev' ? { link: '/dev/zero' } : kind === 'empty' ? '' : kind === 'missing' ? null : kind;
    return { what: `${file} is ${kind}`, files: () => ({ [file]: edit }) };
  },
  (r) => {
    const shard = r.pick(['model-00001-of-00002.safetensors', '../model.safetensors', '', 5]);
    const index = JSON.stringify({ weight_map: Object.fromEntries(tensorNames.map((n, i) => [n, i === 0 ? shard : 'model-00001-of-00002.safetensors'])) });
    return { what: `sharded index naming ${JSON.stringify(shard)}`, files: () => ({ 'model.safetensors': null, 'model.safetensors.index.json': index, 'model-00001-of-00002.safetensors': original }) };
  },
];

function materialize(c: Case, id: number): string {
  const dir = join(scratch, `case${id}`);
  mkdirSync(dir);
  const files = c.files();
  for (const f of readdirSync(DEFAULT_MODEL_DIR)) if (!(f in files)) symlinkSync(join(DEFAULT_MODEL_DIR, f), join(dir, f));
  for (const [f, edit] of Object.entries(files)) {
    const path = join(dir, f);
    if (edit === null) continue;
    if (edit === 'fifo') execFileSync('mkfifo', [path]);
    else if (edit === 'dir') mkdirSync(path);
    else if (typeof edit === 'object' && 'link' in edit) symlinkSync(edit.link, path);
    else writeFileSync(path, edit);
  }
  return dir;
}

/** A pool of fuzz workers; a case that crashes or outlives its timeout kills (only) its worker. */
class Pool {
  private idle: ChildProcess[] = [];
  private waiting: ((w: ChildProcess) => void)[] = [];
  private readonly worker = fileURLToPath(new URL('./helpers/fuzz-worker.ts', import.meta.url));

  private spawn(): Promise<ChildProcess> {
    const child = fork(this.worker, [], { execArgv: ['--import', 'tsx', '--max-old-space-size=512'], env: { ...process.env, KVLAB_THREADS: '1' }, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    child.stderr!.resume();
    return new Promise((resolve, reject) => {
      child.once('message', () => resolve(child));
      child.once('exit', (code, signal) => reject(new Error(`fuzz worker exited before it was ready (${code ?? signal})`)));
    });
  }

  async start(n: number): Promise<void> {
    this.idle = await Promise.all(Array.from({ length: n }, () => this.spawn()));
  }

  private async take(): Promise<ChildProcess> {
    return this.idle.pop() ?? new Promise((resolve) => this.waiting.push(resolve));
  }

  private give(w: ChildProcess): void {
    const next = this.waiting.shift();
    if (next) next(w);
    else this.idle.push(w);
  }

  async run(req: FuzzRequest): Promise<FuzzReply | { id: number; crashed: string }> {
    const w = await this.take();
    const outcome = await new Promise<FuzzReply | { id: number; crashed: string }>((resolve) => {
      const timer = setTimeout(() => finish({ id: req.id, crashed: `no answer within ${CASE_TIMEOUT_MS / 1000} s (hang)` }), CASE_TIMEOUT_MS);
      const onMessage = (m: FuzzReply) => m.id === req.id && finish(m);
      const onExit = (code: number | null, signal: string | null) => finish({ id: req.id, crashed: `worker died (${signal ?? `exit ${code}`})` });
      function finish(r: FuzzReply | { id: number; crashed: string }) {
        clearTimeout(timer);
        w.off('message', onMessage);
        w.off('exit', onExit);
        resolve(r);
      }
      w.on('message', onMessage);
      w.once('exit', onExit);
      w.send(req);
    });
    if ('crashed' in outcome) {
      if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
      this.give(await this.spawn());
    } else this.give(w);
    return outcome;
  }

  stop(): void {
    for (const w of this.idle) w.kill();
  }
}

test(`checkpoint fuzz: ${CASES} seeded mutations of header, data and config end in a named error or the unmutated output`, { timeout: 300_000 }, async (t) => {
  const r = random(SEED);
  const cases = Array.from({ length: CASES }, (_, i) => MUTATIONS[i % MUTATIONS.length]!(r));
  const pool = new Pool();
  await pool.start(WORKERS);
  try {
    const baseline = await pool.run({ id: -1, dir: materialize({ what: 'unmutated', files: () => ({}) }, -1) });
    assert.ok('ok' in baseline && baseline.ok, `the unmutated checkpoint runs: ${JSON.stringify(baseline)}`);
    const problems: string[] = [];
    let errors = 0;
    let equal = 0;
    // One runner per worker takes the next case: a case's files exist only while it runs.
    let next = 0;
    const runCase = async (c: Case, id: number) => {
      const dir = materialize(c, id);
      const out = await pool.run({ id, dir });
      rmSync(dir, { recursive: true, force: true });
      const where = `case ${id} (${c.what})`;
      if ('crashed' in out) return void problems.push(`${where}: ${out.crashed}`);
      if (out.maxRssKiB > MAX_RSS_KIB) problems.push(`${where}: peak RSS ${out.maxRssKiB} KiB`);
      if (out.ok) {
        if (out.logits === baseline.logits && JSON.stringify(out.tokens) === JSON.stringify(baseline.tokens)) equal++;
        else problems.push(`${where}: ran, with output that differs from the unmutated model's (a silent wrong answer)`);
        return;
      }
      errors++;
      const named = out.message.includes(dir) || (out.name === 'NonFiniteError' && /model\.\S+/.test(out.message)) || /max_position_embeddings/.test(out.message);
      if (!named) problems.push(`${where}: ${out.name}: ${out.message} (names no file, tensor or field)`);
      if (out.message.includes('\n')) problems.push(`${where}: a multi-line message`);
    };
    await Promise.all(
      Array.from({ length: WORKERS }, async () => {
        while (next < cases.length) {
          const id = next++;
          await runCase(cases[id]!, id);
        }
      }),
    );
    t.diagnostic(`${errors} named errors, ${equal} runs equal to the unmutated model`);
    assert.deepEqual(problems.slice(0, 15), [], `${problems.length} of ${CASES} cases failed`);
    assert.equal(errors + equal, CASES);
    assert.ok(errors > CASES / 2, `most mutations are errors (${errors} errors, ${equal} equal runs)`);
  } finally {
    pool.stop();
  }
});
