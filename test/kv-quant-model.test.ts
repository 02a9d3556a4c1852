/**
 * The embedded model on int4 / int2 caches (--kv-dtype int4|int2; KIVI, G = 32, R = 128 unless stated). What is
 * measured, not assumed:
 *   - greedy continuations of the golden prompts on int4 and int2 caches against the golden (fp32) ones, as measured
 *     on this checkpoint (trained, step 13,500 of organism/) on the AVX2 and scalar paths: every prompt but the
 *     longest keeps its whole continuation on both (qa_medium, 328 tokens, packs 192 rows per head; its answer is
 *     one token); the longest (repeat_long, 606 tokens, a copy of its context, 512 rows packed) keeps
 *     GREEDY_SAME_LONGEST[dtype] tokens: 57 of 64 on int4, 0 on int2 (its first copied token already differs);
 *   - native against the reference backend on the same quantized cache (the reference's prefill, cloned): an
 *     element of two backends' own fp32 rows may sit at a rounding boundary and take the neighbouring code (step
 *     10,000's weights did not, step 13,500's did once on int2: 1.4e-3), which is not the kernels' doing; measured
 *     at most 3.3e-6 (int4) and 8.7e-6 (int2) on logits over 200 prompt tokens and 6 decode steps (G = 16, R = 32);
 *     NATIVE_VS_REFERENCE = 1e-3 leaves room for fp32 summation order, not for a wrong kernel;
 *   - forwardAsync() on an int4 cache (the addon's recorded quantized attention) equals forward() bit for bit.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { KvCache } from '../src/cache/kv-cache.ts';
import { DEFAULT_MODEL_DIR, loadModel, type LoadedModel } from '../src/engine/loaded-model.ts';
import { benchKvQuant } from '../src/bench/kv-quant-bench.ts';
import { TimedBackend } from '../src/bench/timed-backend.ts';
import { prefill } from '../src/model/prefill.ts';
import { quantizedBytes } from '../src/tensor/kv-quant.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable, selectBackend } from '../src/tensor/select-backend.ts';
import { goldenPrompts } from './helpers/tiny-model.ts';

const skip = nativeAvailable() ? false : 'native addon not built';
const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
const GREEDY_SAME_LONGEST = { int4: 57, int2: 0 } as const;
const NATIVE_VS_REFERENCE = 1e-3;

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

function greedy(lm: LoadedModel, cache: KvCache, ids: number[], n: number): number[] {
  let logits = prefill(lm.model, cache, ids);
  const out: number[] = [];
  for (let t = 0; t < n; t++) {
    const id = argmax(logits);
    out.push(id);
    logits = lm.model.forward([id], cache)!;
  }
  return out;
}

function sameFor(a: number[], b: number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

for (const kvDtype of ['int4', 'int2'] as const) {
  test(`golden prompts on an ${kvDtype} cache keep the fp32 greedy continuation (the longest for its first ${GREEDY_SAME_LONGEST[kvDtype]} tokens)`, () => {
    const lm = loadModel(DEFAULT_MODEL_DIR, { backend: selectBackend(), kvDtype });
    const agreement: string[] = [];
    let packed = 0;
    const prompts = goldenPrompts();
    const longest = prompts.reduce((a, b) => (b.input_ids.length > a.input_ids.length ? b : a));
    for (const g of prompts) {
      const cache = lm.newCache();
      const ids = greedy(lm, cache, g.input_ids, g.greedy_ids.length);
      let rows = 0;
      cache.forEachHead((h) => (rows = Math.max(rows, h.quantRows)));
      packed = Math.max(packed, g === longest ? 0 : rows);
      const same = sameFor(ids, g.greedy_ids);
      agreement.push(`${g.name}: ${same}/${g.greedy_ids.length}`);
      const want = g === longest ? Math.min(GREEDY_SAME_LONGEST[kvDtype], g.greedy_ids.length) : g.greedy_ids.length;
      assert.ok(same >= want, `${g.name}: ${kvDtype} greedy continuation leaves the fp32 one after ${same} tokens (${agreement.join(', ')})`);
    }
    assert.ok(packed >= 128, 'no golden prompt but the longest packs rows: the test would not test quantization');
    console.log(`${kvDtype} greedy agreement with golden: ${agreement.join(', ')}`);
  });
}

test('native and reference backends agree on int4 and int2 caches; forwardAsync equals forward bit for bit', { skip }, async () => {
  for (const kvDtype of ['int4', 'int2'] as const) {
    const nat = loadModel(DEFAULT_MODEL_DIR, { backend: new NativeBackend({ bf16Activations: false }), kvDtype, kvQuant: { group: 16, residual: 32 } });
    const ref = loadModel(DEFAULT_MODEL_DIR, { backend: new ReferenceBackend(), kvDtype, kvQuant: { group: 16, residual: 32 } });
    const g = goldenPrompts().reduce((a, b) => (b.input_ids.length > a.input_ids.length ? b : a));
    const ids = g.input_ids.slice(0, 200);
    // One prefill (the reference's) for both: each backend quantizing its own fp32 rows may put an element at a
    // rounding boundary on the neighbouring code (a whole int2 step), which says nothing about the kernels.
    const b = ref.newCache();
    prefill(ref.model, b, ids);
    const a = b.clone();
    assert.ok(a.head(0, 0).quantRows >= 150);
    let worst = 0;
    for (let t = 0; t < 6; t++) {
      const la = nat.model.forward([ids[t]!], a)!;
      const lb = ref.model.forward([ids[t]!], b)!;
      for (let i = 0; i < la.length; i++) worst = Math.max(worst, Math.abs(la[i]! - lb[i]!));
    }
    assert.ok(worst <= NATIVE_VS_REFERENCE, `${kvDtype}: native vs reference logits ${worst}`);
    // The async step records the quantized attention; the same step run synchronously gives the same bits.
    const c = a.clone();
    const sync = nat.model.forward([ids[7]!, ids[8]!], a, { logits: 'all' })!;
    const asyncLogits = (await nat.model.forwardAsync([ids[7]!, ids[8]!], c, { logits: 'all' }))!;
    assert.deepEqual(asyncLogits, sync);
    a.forEachHead((h, l, k) => assert.deepEqual(c.head(l, k).keys(), h.keys()));
  }
});

test('kvlab compress --kv-dtype int4 --json reports the packed bytes; bad quantization options are refused by name', () => {
  const file = join(mkdtempSync(join(tmpdir(), 'kvlab-kivi-')), 'doc.txt');
  writeFileSync(file, 'The code of tean is 4417. The code of brin is 2210. The code of olo is 9931.\n'.repeat(12));
  const run = (args: string[]) => execFileSync(process.execPath, [cli, 'compress', '--context', file, '--method', 'snapkv', '--ratio', '0.5', '--json', ...args], { encoding: 'utf8', stdio: 'pipe' });
  let out: { cache: { bytes_full: number; bytes_kept: number } };
  try {
    out = JSON.parse(run(['--kv-dtype', 'int4', '--kv-group', '16', '--kv-residual', '32']));
  } catch (e) {
    throw new Error(`compress failed: ${(e as { stderr?: string }).stderr ?? e}`);
  }
  const f32 = JSON.parse(run([])) as typeof out;
  assert.ok(out.cache.bytes_full < f32.cache.bytes_full * 0.5, `int4 ${out.cache.bytes_full} vs f32 ${f32.cache.bytes_full} bytes`);
  assert.ok(out.cache.bytes_kept < out.cache.bytes_full);
  for (const [args, message] of [
    [['--kv-dtype', 'int3'], /--kv-dtype must be f32, bf16, int4 or int2, got "int3"/],
    [['--kv-dtype', 'int4', '--kv-group', '0'], /--kv-group must be an integer >= 1/],
    [['--kv-group', '16'], /--kv-group and --kv-residual apply to --kv-dtype int4 or int2/],
  ] as const) {
    assert.throws(() => run([...args]), (e: { stderr?: string }) => message.test(e.stderr ?? ''));
  }
});

test('a sequence continuing a shared int4 context (batched, async): native equals the reference', { skip }, async () => {
  const g = goldenPrompts().reduce((a, b) => (b.input_ids.length > a.input_ids.length ? b : a));
  const run = async (backend: NativeBackend | ReferenceBackend) => {
    const lm = loadModel(DEFAULT_MODEL_DIR, { backend, kvDtype: 'int4', kvQuant: { group: 16, residual: 32 } });
    const context = lm.newCache();
    prefill(lm.model, context, g.input_ids.slice(0, 300));
    const own = lm.newCache();
    own.nextPos = context.nextPos;
    const out: Float32Array[] = [];
    for (let t = 0; t < 60; t++) out.push((await lm.model.forwardBatchAsync([{ ids: [g.input_ids[300 + t]!], cache: own, context }]))[0]!);
    assert.ok(own.head(0, 0).quantRows >= 16, 'the sequence packed rows of its own');
    return out;
  };
  const a = await run(new NativeBackend({ bf16Activations: false }));
  const b = await run(new ReferenceBackend());
  let worst = 0;
  a.forEach((x, t) => x.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - b[t]![i]!)))));
  assert.ok(worst <= NATIVE_VS_REFERENCE, `native vs reference ${worst}`);
});

test('the bench kv quant section times every cache and counts the bytes each holds', { skip }, () => {
  const timed = new TimedBackend(new NativeBackend());
  const lm = loadModel(DEFAULT_MODEL_DIR, { backend: timed, kvQuant: { group: 32, residual: 128 } });
  const r = benchKvQuant(lm, timed, 1, 700, 0.3, () => {}, 1, 1) as { caches: { cache: string; kv_bytes: number; attention_ms_per_token: number; attention_vs_f32: number }[] };
  const bytes = Object.fromEntries(r.caches.map((c) => [c.cache, c.kv_bytes]));
  const { numLayers: L, numKvHeads: H, headDim: d } = lm.config;
  assert.equal(bytes.f32, L * H * 700 * d * 2 * 4);
  assert.equal(bytes.bf16, L * H * 700 * d * 2 * 2);
  // 544 packed rows per head (700 - 128 rounded down to groups of 32) and 156 fp32 rows.
  assert.equal(bytes.int4, L * H * (quantizedBytes(544, d, 4, 32) + 156 * d * 8));
  assert.equal(bytes.int2, L * H * (quantizedBytes(544, d, 2, 32) + 156 * d * 8));
  assert.ok(bytes['int4 + 0.3 kept']! < bytes.int4! * 0.5);
  for (const c of r.caches) assert.ok(c.attention_ms_per_token > 0 && Number.isFinite(c.attention_vs_f32), `${c.cache}: ${JSON.stringify(c)}`);
});
