/**
 * Two builds of the native addon in one process: the same kernel calls on the same data (decode and many-row
 * attention over fp32 and bf16 caches, decode matmuls from DRAM, a prefill GEMM), old and new alternating in
 * each round (order swapped every round), one JSON line per figure with the medians and the median of the
 * per-round old / new time ratios. For changes that must not change speed:
 *
 *   OLD=/path/to/old/kvlab_native.node NEW=native/build/Release/kvlab_native.node [ROUNDS=9] npx tsx src/bench/addon-ab.ts
 */
import { createRequire } from 'node:module';
import { HeadStore } from '../cache/kv-cache.ts';
import { NativeBackend } from '../tensor/native.ts';
import type { Weight } from '../tensor/backend.ts';

const req = createRequire(import.meta.url);
const [oldPath, newPath] = [process.env.OLD, process.env.NEW];
if (!oldPath || !newPath) throw new Error('addon-ab: set OLD and NEW to the two kvlab_native.node builds');
const be = { old: new NativeBackend({}, req(oldPath)), new: new NativeBackend({}, req(newPath)) };
const beF32 = { old: new NativeBackend({ bf16Activations: false }, req(oldPath)), new: new NativeBackend({ bf16Activations: false }, req(newPath)) };
const median = (a: number[]) => { const s = [...a].sort((x, y) => x - y); const m = s.length >> 1; return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2; };
const rounds = Number(process.env.ROUNDS ?? 7);

function fill(dtype: 'bf16' | 'int8', rows: number, cols: number, seed: number): Weight {
  let s = seed >>> 0 || 1;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  const len = rows * cols;
  if (dtype === 'bf16') {
    const data = new Uint16Array(len);
    for (let i = 0; i < len; i++) { const r = next(); data[i] = (0x3d80 + ((r >>> 8) % 0x200)) | (r & 0x8000); }
    return { name: 'w', dtype, rows, cols, data };
  }
  const data = new Int8Array(len);
  for (let i = 0; i < len; i++) data[i] = (next() >>> 24) % 255 - 127;
  return { name: 'w', dtype: 'int8', rows, cols, data, scales: new Float32Array(rows * (cols / 128)).fill(1 / 512), groupSize: 128 };
}

function ab(label: string, run: (b: NativeBackend, which: 'old' | 'new') => void, pick: (w: 'old' | 'new') => NativeBackend = (w) => be[w]) {
  const t = { old: [] as number[], new: [] as number[] };
  const ratios: number[] = [];
  for (let r = 0; r <= rounds; r++) {
    const order: ('old' | 'new')[] = r % 2 ? ['new', 'old'] : ['old', 'new'];
    const got: Record<string, number> = {};
    for (const w of order) { const t0 = performance.now(); run(pick(w), w); got[w] = performance.now() - t0; }
    if (r === 0) continue;
    t.old.push(got.old!); t.new.push(got.new!); ratios.push(got.old! / got.new!);
  }
  console.log(JSON.stringify({ label, old_ms: +median(t.old).toFixed(2), new_ms: +median(t.new).toFixed(2), old_over_new: +median(ratios).toFixed(3), ratio_min: +Math.min(...ratios).toFixed(3), ratio_max: +Math.max(...ratios).toFixed(3), rounds }));
}

// Decode attention: one query through 16 layers of a 32:8, d 64 cache (llama-3.2-1b), fp32 and bf16 caches.
for (const [name, layers, heads, kv, d, ctx] of [['llama-3.2-1b', 16, 32, 8, 64, 2048], ['qwen2.5-0.5b', 24, 14, 2, 64, 2048]] as const) {
  const positions = Int32Array.from({ length: ctx }, (_, i) => i);
  for (const dtype of ['f32', 'bf16'] as const) {
    const cache = Array.from({ length: layers }, (_, l) => Array.from({ length: kv }, (_, g) => {
      const h = new HeadStore(d, ctx, dtype);
      h.extend(positions);
      const f = new Float32Array(1);
      const u = new Uint32Array(f.buffer);
      for (let i = 0; i < ctx * d; i++) {
        const kv = [Math.sin(i * 0.37 + g) * 0.5, Math.cos(i * 0.11 + l)];
        for (const [arr, val] of [[h.k, kv[0]!], [h.v, kv[1]!]] as const) {
          if (dtype === 'f32') (arr as Float32Array)[i] = val;
          else { f[0] = val; (arr as Uint16Array)[i] = u[0]! >>> 16; }
        }
      }
      return h;
    }));
    const q = Float32Array.from({ length: heads * d }, (_, i) => Math.sin(i));
    const out = new Float32Array(heads * d);
    const qPos = Int32Array.of(ctx);
    ab(`decode attention ${name} ${heads}:${kv} d${d} ${ctx} keys ${dtype} cache`, (b) => {
      for (let rep = 0; rep < 3; rep++) for (const layer of cache) b.attention({ q, out, nq: 1, nHeads: heads, nKvHeads: kv, headDim: d, qPos, heads: layer, scale: 1 / Math.sqrt(d) });
    });
    // Many-row (scoring / prefill-style) attention: 128 query rows over the same cache, with statistics.
    const nq = 128;
    const qm = Float32Array.from({ length: nq * heads * d }, (_, i) => Math.sin(i * 0.3));
    const om = new Float32Array(nq * heads * d);
    const qPosM = Int32Array.from({ length: nq }, (_, i) => ctx - nq + i);
    ab(`many-row attention ${name} ${nq} rows x ${ctx} keys ${dtype} cache, with stats`, (b) => {
      for (const layer of cache.slice(0, 4)) b.attention({ q: qm, out: om, nq, nHeads: heads, nKvHeads: kv, headDim: d, qPos: qPosM, heads: layer, scale: 1 / Math.sqrt(d), stats: { fromQuery: 0, sum: layer.map((h) => new Float32Array(h.len)) } });
    });
  }
}

// Decode GEMVs: 4 layers of the 1B shape + a 32768-row head, distinct weights (from DRAM), bf16 and int8/g128.
for (const dtype of ['bf16', 'int8'] as const) {
  const ws: Weight[] = [];
  for (let l = 0; l < 4; l++) for (const [r, c] of [[2048, 2048], [512, 2048], [512, 2048], [2048, 2048], [8192, 2048], [8192, 2048], [2048, 8192]] as const) ws.push(fill(dtype, r, c, ws.length + 1));
  ws.push(fill(dtype, 32768, 2048, 99));
  const x = Float32Array.from({ length: 8192 }, (_, i) => Math.sin(i) * 0.5);
  const out = new Float32Array(32768);
  ab(`decode matmuls llama-3.2-1b x4 layers + head ${dtype}`, (b) => { for (const w of ws) b.matmul(out, x, 1, w); });
}

// Prefill GEMM, 512 tokens, fp32 activations (the AVX2 GEMM's blocking).
{
  const w = fill('bf16', 2048, 2048, 7);
  const n = 512;
  const x = Float32Array.from({ length: n * 2048 }, (_, i) => Math.sin(i * 0.37) * 0.5);
  const out = new Float32Array(n * 2048);
  ab('prefill GEMM 512x2048x2048 bf16 weights, fp32 activations', (b) => b.matmul(out, x, n, w), (wh) => beF32[wh]);
}
