import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import type { KvCache } from '../cache/kv-cache.ts';
import { loadModel } from '../engine/loaded-model.ts';
import type { LlamaModel } from '../model/llama.ts';
import { NativeBackend } from '../tensor/native.ts';
import { fillCache } from './decode-timing.ts';
import { median } from './machine-limits.ts';

export interface AsyncDecodeResult {
  steps: number;
  /** Median over steps of forward() / forwardAsync() of one token. */
  syncMsPerToken: number;
  asyncMsPerToken: number;
  /** Means over the same steps: what a stall in a few steps costs a whole generation. */
  syncMeanMsPerToken: number;
  asyncMeanMsPerToken: number;
  /** (async - sync) / sync, in percent. */
  overheadPercent: number;
  /** Longest event-loop stall seen by a 1 ms timer while steps of that kind ran. */
  syncEventLoopMaxDelayMs: number;
  asyncEventLoopMaxDelayMs: number;
}

const RESOLUTION_MS = 1;

/**
 * Times one-token decode steps on top of the cache, forward() and forwardAsync() alternating (the order
 * flipped every pair, the cache cut back after every step, so both see the same context and the same
 * machine load), and the event-loop delay during each kind. The cache is returned as it was.
 */
export async function measureAsyncDecode(model: LlamaModel, cache: KvCache, steps = 16): Promise<AsyncDecodeResult> {
  const mark = cache.mark();
  const vocab = model.weights.embed.rows;
  const ms = { sync: [] as number[], async: [] as number[] };
  const delay = { sync: 0, async: 0 };
  const step = async (kind: 'sync' | 'async', id: number) => {
    // A fresh monitor per step: one enabled again after a pause would count the pause as a delay.
    const h = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
    h.enable();
    await sleep(2 * RESOLUTION_MS);
    const t0 = performance.now();
    if (kind === 'sync') model.forward([id], cache);
    else await model.forwardAsync([id], cache);
    ms[kind].push(performance.now() - t0);
    // Lets the monitor's timer fire (late, after a sync step) while it still counts for this kind.
    await sleep(2 * RESOLUTION_MS);
    h.disable();
    delay[kind] = Math.max(delay[kind], maxMs(h));
    cache.truncate(mark);
  };
  try {
    await step('sync', 1);
    await step('async', 1);
    ms.sync.length = ms.async.length = 0;
    delay.sync = delay.async = 0;
    for (let i = 0; i < steps; i++) {
      const id = 1 + ((i * 7919) % (vocab - 1));
      const order: ('sync' | 'async')[] = i % 2 ? ['async', 'sync'] : ['sync', 'async'];
      for (const kind of order) await step(kind, id);
    }
  } finally {
    if (!cache.busy) cache.truncate(mark);
  }
  const syncMs = median(ms.sync);
  const asyncMs = median(ms.async);
  return {
    steps,
    syncMsPerToken: syncMs,
    asyncMsPerToken: asyncMs,
    syncMeanMsPerToken: mean(ms.sync),
    asyncMeanMsPerToken: mean(ms.async),
    overheadPercent: (100 * (asyncMs - syncMs)) / syncMs,
    syncEventLoopMaxDelayMs: delay.sync,
    asyncEventLoopMaxDelayMs: delay.async,
  };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

const maxMs = (h: IntervalHistogram) => (h.count > 0 ? h.max / 1e6 : 0);

const sleep = (msec: number) => new Promise((r) => setTimeout(r, msec));

// npx tsx src/bench/async-decode.ts <model dir> [context tokens = 1024] [steps = 16]
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [dir, context = '1024', steps = '16'] = process.argv.slice(2);
  if (!dir) throw new Error('usage: tsx src/bench/async-decode.ts <model dir> [context] [steps]');
  const lm = loadModel(dir, { backend: new NativeBackend() });
  const cache = lm.newCache();
  fillCache(cache, Number(context));
  console.log(JSON.stringify({ model: dir, context: Number(context), ...(await measureAsyncDecode(lm.model, cache, Number(steps))) }, null, 2));
}
