/**
 * One decode step on a kept cache (a random 0.3 of each head's rows of a CTX-token prefill) as fp32 and as int4,
 * 20 steps each with the cache restored after every step: forward and truncate times (medians) and the per-op
 * split of the forward. Checks that an int4 cache's decode costs what its attention does, nothing beside it:
 *
 *   [MODEL=dir] [CTX=2000] npx tsx src/bench/kept-int4-step.ts
 */
import { loadModel, DEFAULT_MODEL_DIR } from '../engine/loaded-model.ts';
import { NativeBackend } from '../tensor/native.ts';
import { TimedBackend } from './timed-backend.ts';
import { seededRandom } from '../tensor/seeded-random.ts';
const timed = new TimedBackend(new NativeBackend());
const lm = loadModel(process.env.MODEL ?? DEFAULT_MODEL_DIR, { backend: timed });
const rand = seededRandom(3);
const n = Number(process.env.CTX ?? 2000);
const ids = Array.from({ length: n }, () => Math.floor(rand() * 2000));
const cache = lm.newCache();
lm.model.forward(ids, cache, { logits: 'none' });
cache.forEachHead((h, l, k) => cache.keep(l, k, Array.from({ length: h.len }, (_, i) => i).filter(() => rand() < 0.3)));
for (const [name, c] of [['f32 kept', cache], ['int4 kept', cache.clone('int4')]] as const) {
  const mark = c.mark();
  const fw: number[] = [], tr: number[] = [];
  timed.reset();
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now();
    lm.model.forward([100 + i], c);
    const t1 = performance.now();
    c.truncate(mark);
    fw.push(t1 - t0); tr.push(performance.now() - t1);
  }
  const med = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1]!.toFixed(2);
  const ops = Object.entries(timed.ms).sort((a, b) => b[1] - a[1]).slice(0, 6).map(([k, v]) => `${k} ${(v / 20).toFixed(2)}`).join(', ');
  console.log(name, 'forward', med(fw), 'truncate', med(tr), '| per step:', ops);
}
