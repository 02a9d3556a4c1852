import assert from 'node:assert/strict';
import { test } from 'node:test';
import { evictToRatio, sequencePoolBytes } from '../src/bench/batch-bench.ts';
import { poolThroughput } from '../src/bench/pool-throughput.ts';
import { fillCache } from '../src/bench/decode-timing.ts';
import { KvCache } from '../src/cache/kv-cache.ts';
import { KvPool } from '../src/cache/kv-pool.ts';
import { DEFAULT_MODEL_DIR, loadModel } from '../src/engine/loaded-model.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';

const lm = loadModel(DEFAULT_MODEL_DIR, { backend: new ReferenceBackend() });
const cfg = lm.config;

test("the bench's pool-fit figure equals what a pooled cache of that context is charged", () => {
  for (const dtype of ['f32', 'bf16'] as const) {
    const pool = new KvPool(1 << 30);
    const c = new KvCache(cfg.numLayers, cfg.numKvHeads, cfg.headDim, dtype, pool);
    c.reserveRows(300 + 40);
    fillCache(c, 300);
    assert.equal(pool.usedBytes, sequencePoolBytes(cfg, 300, 1, 40, dtype), `full cache, ${dtype}`);
    c.release();
    assert.equal(pool.usedBytes, 0);
  }
  assert.ok(sequencePoolBytes(cfg, 8192, 0.3, 256, 'f32') < 0.35 * sequencePoolBytes(cfg, 8192, 1, 256, 'f32'));
});

test('evictToRatio keeps about the ratio of rows overall, raggedly per head, and frees the rest from the pool', () => {
  const pool = new KvPool(1 << 30);
  const c = new KvCache(cfg.numLayers, cfg.numKvHeads, cfg.headDim, 'f32', pool);
  fillCache(c, 1000);
  const before = pool.usedBytes;
  evictToRatio(c, 0.3);
  const lens = c.lengths().flat();
  const mean = lens.reduce((a, b) => a + b, 0) / lens.length;
  assert.ok(Math.abs(mean - 300) < 60, `mean rows kept ${mean}`);
  assert.ok(new Set(lens).size > 1, 'ragged');
  assert.ok(pool.usedBytes < 0.45 * before);
  c.release();
});

test('the pool-throughput figure admits as many sequences as their promises fit, holds them in the pool, and reports their aggregate', () => {
  const context = 200;
  const per = sequencePoolBytes(cfg, context, 1, 16, 'f32');
  const poolBytes = Math.floor(3.5 * per);
  const out = poolThroughput(lm, { poolBytes, context, ratios: [1, 0.3], answerRows: 16, kvDtype: 'f32', rounds: 1, steps: 1, evict: (c, r) => evictToRatio(c, r), log: () => {} });
  const [full, kept] = out.ratios as Record<string, number>[];
  assert.equal(full!.sequences, 3, 'a full cache promises whole blocks of its 200 rows plus 16 per head');
  assert.equal(full!.bytes_promised_per_sequence, per);
  for (const e of [full!, kept!]) {
    assert.equal(e.sequences, Math.floor(poolBytes / e.bytes_promised_per_sequence!));
    assert.equal(e.pool_allocated_bytes, e.sequences! * e.bytes_promised_per_sequence!, 'each sequence holds exactly its promise');
    assert.ok(Math.abs(e.aggregate_tokens_per_second! - (e.sequences! * 1000) / e.step_ms!) < 0.1);
  }
  assert.ok(kept!.sequences! >= 2 * full!.sequences!, `0.3 kept admits ${kept!.sequences} sequences against ${full!.sequences}`);
  const none = poolThroughput(lm, { poolBytes: per / 2, context, ratios: [1], answerRows: 16, kvDtype: 'f32', rounds: 1, steps: 1, evict: () => {}, log: () => {} });
  assert.match(String((none.ratios as Record<string, unknown>[])[0]!.note), /more than the pool/);
});
