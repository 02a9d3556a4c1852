/**
 * The native attention over int4 / int2 caches (native/src/attention_quant*.cc) against the reference backend,
 * which dequantizes the packed rows plainly. The native kernel folds each key group's scales and zero points into
 * the query (q . (z + s code) = q . z + (q s) . code), dequantizes value rows in registers, and sums in another
 * order, so results differ by fp32 rounding only: outputs within 2e-5 of the largest |value| of the call and attention statistics within 2e-5
 * (probabilities, absolute). Run here on the default dispatch and, in child processes, under KVLAB_ISA=avx2 and
 * KVLAB_ISA=scalar (the AVX-512 kernels are only selected on AVX-512 CPUs).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { KvCache, type KvDtype } from '../src/cache/kv-cache.ts';
import type { AttentionArgs } from '../src/tensor/backend.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable, nativeInfo } from '../src/tensor/select-backend.ts';
import { seededRandom } from '../src/tensor/seeded-random.ts';

const skip = nativeAvailable() ? false : 'native addon not built (npm run build:native)';
const mode = process.env.KVLAB_ISA ?? 'default';
const TOL = 2e-5;

function rows(n: number, seed: number, scale = 1): Float32Array {
  const rnd = seededRandom(seed);
  return Float32Array.from({ length: n }, (_, i) => ((rnd() - 0.5) * 4 + Math.sin(i % 7)) * scale);
}

/** A cache of one layer filled by appends of `step` rows (so packed groups and a residual both exist), positions from `start`. */
function filledCache(dtype: KvDtype, heads: number, d: number, group: number, residual: number, n: number, step: number, seed: number, start = 0): KvCache {
  const cache = new KvCache(1, heads, d, dtype, undefined, { group, residual });
  cache.nextPos = start;
  const k = rows(n * heads * d, seed);
  const v = rows(n * heads * d, seed + 1, 0.5);
  for (let s = 0; s < n; s += step) {
    const m = Math.min(step, n - s);
    cache.appendLayer(0, k.subarray(s * heads * d, (s + m) * heads * d), v.subarray(s * heads * d, (s + m) * heads * d), Int32Array.from({ length: m }, (_, i) => start + s + i));
    cache.advance(m);
  }
  return cache;
}

function maxAbs(x: Float32Array): number {
  let m = 0;
  for (const v of x) m = Math.max(m, Math.abs(v));
  return m;
}

function compare(label: string, args: Omit<AttentionArgs, 'out'>, withOut = true): void {
  const ref = new ReferenceBackend();
  const nat = new NativeBackend({ bf16Activations: false });
  const size = args.nq * args.nHeads * args.headDim;
  const statsOf = () => (args.stats ? { ...args.stats, max: args.heads.map((h) => new Float32Array(h.len)), sum: args.heads.map((h) => new Float32Array(h.len)) } : undefined);
  const a = { out: withOut ? new Float32Array(size) : null, stats: statsOf() };
  const b = { out: withOut ? new Float32Array(size) : null, stats: statsOf() };
  ref.attention({ ...args, ...a });
  nat.attention({ ...args, ...b });
  if (withOut) {
    const scale = Math.max(1, maxAbs(a.out!));
    for (let i = 0; i < size; i++) assert.ok(Math.abs(a.out![i]! - b.out![i]!) <= TOL * scale, `${label}: out[${i}] ${b.out![i]} vs reference ${a.out![i]}`);
    assert.ok(maxAbs(a.out!) > 0, `${label}: empty output`);
  }
  if (a.stats) {
    for (const key of ['max', 'sum'] as const)
      a.stats[key].forEach((x, g) => x.forEach((v, j) => assert.ok(Math.abs(v - b.stats![key][g]![j]!) <= TOL, `${label}: ${key}[${g}][${j}] ${b.stats![key][g]![j]} vs ${v}`)));
  }
}

const SHAPES = [
  // d, group, KV heads, query heads per KV head
  [64, 32, 2, 4],
  [64, 8, 1, 3],
  [16, 16, 2, 2],
  [24, 8, 1, 1],
  [12, 4, 1, 2],
  // more query heads than one register block of 4 (a block of 4 then 1 or 2), key groups that are not a multiple of
  // 8 rows (the kernels' single-row tail), head dims below one 16-channel value block
  [8, 12, 1, 5],
  [16, 20, 2, 6],
] as const;

for (const dtype of ['int4', 'int2'] as const) {
  test(`${dtype}: native decode attention equals the reference (packed rows, residual, GQA, head sizes and groups)`, { skip }, () => {
    for (const [d, group, nKv, G] of SHAPES) {
      const cache = filledCache(dtype, nKv, d, group, 2 * group + 3, 11 * group + 5, 3 * group - 1, d + group);
      cache.settle();
      assert.ok(cache.head(0, 0).quantRows >= 8 * group, 'the call reads packed rows');
      const nHeads = nKv * G;
      const len = cache.head(0, 0).len;
      for (const nq of [1, 2]) {
        const qPos = Int32Array.from({ length: nq }, (_, i) => len - nq + i);
        compare(`${dtype} d=${d} G=${group} nq=${nq}`, { q: rows(nq * nHeads * d, 3 + nq), nq, nHeads, nKvHeads: nKv, headDim: d, qPos, heads: cache.layer(0), scale: 1 / Math.sqrt(d) });
      }
    }
  });

  test(`${dtype}: many query rows with the causal mask, a sliding window, statistics, and a shared quantized prefix`, { skip }, () => {
    const [d, group, nKv, G] = [32, 8, 2, 2];
    const nHeads = nKv * G;
    const cache = filledCache(dtype, nKv, d, group, 16, 150, 40, 5);
    cache.settle();
    const nq = 9;
    const qPos = Int32Array.from({ length: nq }, (_, i) => 141 + i);
    const q = rows(nq * nHeads * d, 77);
    const base = { q, nq, nHeads, nKvHeads: nKv, headDim: d, qPos, heads: cache.layer(0), scale: 0.2 };
    compare(`${dtype} causal`, base);
    compare(`${dtype} window 37`, { ...base, window: 37 });
    compare(`${dtype} stats`, { ...base, stats: { fromQuery: 3, max: [], sum: [], queryWeight: rows(nq, 9) } }, false);
    compare(`${dtype} stats and out`, { ...base, stats: { fromQuery: 0, max: [], sum: [] } });
    // A sequence continuing a shared context: the context's rows first, then its own.
    const context = filledCache(dtype, nKv, d, group, 16, 120, 120, 31);
    context.settle();
    const own = filledCache(dtype, nKv, d, group, 16, 70, 1, 41, 120);
    const ownPos = Int32Array.from({ length: 2 }, (_, i) => 188 + i);
    compare(`${dtype} prefix`, { ...base, nq: 2, qPos: ownPos, q: q.subarray(0, 2 * nHeads * d), heads: own.layer(0), prefix: context.layer(0) });
  });
}

test('a call mixing quantized and fp32 heads is refused by name', { skip }, () => {
  const a = filledCache('int4', 1, 16, 8, 8, 40, 40, 1);
  a.settle();
  const b = filledCache('f32', 1, 16, 8, 8, 40, 40, 2);
  const nat = new NativeBackend();
  assert.throws(
    () => nat.attention({ q: new Float32Array(32), out: new Float32Array(32), nq: 1, nHeads: 2, nKvHeads: 2, headDim: 16, qPos: Int32Array.of(39), heads: [a.head(0, 0), b.head(0, 0)], scale: 1 }),
    /KV head 1 is not quantized like KV head 0/,
  );
});

test('the addon names the quantized attention path it takes', { skip }, () => {
  const path = nativeInfo()!.paths.attention_quant_cache!;
  const expected = mode === 'scalar' ? 'scalar' : mode === 'avx2' || !nativeInfo()!.features.avx512 ? 'avx2' : 'avx512';
  assert.ok(path.startsWith(expected), `${path} under ${mode}`);
});

if (mode === 'default') {
  for (const isa of ['avx2', 'scalar']) {
    test(`the same suite under KVLAB_ISA=${isa}`, { skip }, () => {
      const env: NodeJS.ProcessEnv = { ...process.env, KVLAB_ISA: isa };
      delete env.NODE_TEST_CONTEXT;
      const out = execFileSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=tap', new URL(import.meta.url).pathname], { encoding: 'utf8', env, stdio: 'pipe' });
      assert.match(out, /# fail 0/);
      assert.doesNotMatch(out, /# pass 0\b/);
    });
  }
}
