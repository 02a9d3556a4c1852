/**
 * Decode attention alone over f32, int4 and int2 caches (the `kv_quant` bench section's attention, without the
 * model): one query row through every layer of a llama-3.2-1b-shaped cache (16 layers, 32 query heads, 8 KV heads,
 * head dim 64, KIVI G = 32, R = 128) at CONTEXT rows, in alternating rounds. With OLD set, two builds of the
 * addon run the same calls in each round (order rotating), so old and new kernels are compared within one run:
 *
 *   [OLD=/path/to/old/kvlab_native.node] [NEW=native/build/Release/kvlab_native.node] [CONTEXT=8192] [ROUNDS=7] \
 *     npx tsx src/bench/kv-quant-attention-ab.ts
 *
 * Prints one JSON object: per (addon, cache) the median ms per token and the median of the per-round ratios to
 * the same addon's f32 time, and the CPU's model name and load average beside them.
 */
import { cpus, loadavg } from 'node:os';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { KvCache, type KvDtype } from '../cache/kv-cache.ts';
import { NativeBackend } from '../tensor/native.ts';
import { fillCache } from './decode-timing.ts';
import { median, quartiles } from './machine-limits.ts';

const req = createRequire(import.meta.url);
const newPath = process.env.NEW ?? fileURLToPath(new URL('../../native/build/Release/kvlab_native.node', import.meta.url));
const addons: [string, NativeBackend][] = [['new', new NativeBackend({ bf16Activations: false }, req(newPath))]];
if (process.env.OLD) addons.unshift(['old', new NativeBackend({ bf16Activations: false }, req(process.env.OLD))]);
const context = Number(process.env.CONTEXT ?? 8192);
const rounds = Number(process.env.ROUNDS ?? 7);
const [layers, heads, kvHeads, d] = [16, 32, 8, 64];
const dtypes: KvDtype[] = ['f32', 'int4', 'int2'];
if (!(context > 0 && rounds > 0)) throw new Error('kv-quant-attention-ab: CONTEXT and ROUNDS must be positive');

const caches = dtypes.map((dtype) => {
  process.stderr.write(`kv-quant-attention-ab: filling a ${dtype} cache of ${context} rows\n`);
  const cache = new KvCache(layers, kvHeads, d, dtype, undefined, { group: 32, residual: 128 });
  fillCache(cache, context);
  return cache;
});
const q = Float32Array.from({ length: heads * d }, (_, i) => Math.sin(i * 0.7));
const out = new Float32Array(heads * d);
const qPos = Int32Array.of(context);

function tokenMs(be: NativeBackend, cache: KvCache): number {
  const t = performance.now();
  for (let l = 0; l < layers; l++) be.attention({ q, out, nq: 1, nHeads: heads, nKvHeads: kvHeads, headDim: d, qPos, heads: cache.layer(l), scale: 1 / Math.sqrt(d) });
  return performance.now() - t;
}

const runs = addons.flatMap(([addon]) => dtypes.map((dtype) => ({ addon, dtype })));
const times = runs.map(() => [] as number[]);
const loads: number[] = [];
for (let r = 0; r <= rounds; r++) {
  loads.push(loadavg()[0]!);
  for (let k = 0; k < runs.length; k++) {
    const i = (k + r) % runs.length;
    const be = addons.find(([a]) => a === runs[i]!.addon)![1];
    const ms = median([0, 1, 2].map(() => tokenMs(be, caches[dtypes.indexOf(runs[i]!.dtype)]!)));
    if (r > 0) times[i]!.push(ms);
  }
  process.stderr.write(`kv-quant-attention-ab: round ${r}/${rounds}\n`);
}
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const results = runs.map((run, i) => {
  const f32 = times[runs.findIndex((x) => x.addon === run.addon && x.dtype === 'f32')]!;
  return {
    addon: run.addon,
    cache: run.dtype,
    kv_bytes: caches[dtypes.indexOf(run.dtype)]!.bytes(),
    attention_ms_per_token: r3(median(times[i]!)),
    quartiles: quartiles(times[i]!).map(r3),
    vs_f32_same_addon: r3(median(times[i]!.map((t, k) => t / f32[k]!))),
  };
});
console.log(JSON.stringify({ shape: 'llama-3.2-1b (16 x 32:8, d 64), G 32, R 128', context, rounds, cpu: cpus()[0]?.model, vcpus: cpus().length, load_average_rounds: loads.map((x) => Math.round(x * 100) / 100), results }, null, 1));
