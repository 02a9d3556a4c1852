/**
 * The embedded model with a bf16 KV cache (--kv-dtype bf16). Tolerances:
 *   - native against the reference, both with bf16 caches: each backend rounds its own fp32 keys and values, which
 *     differ in their last bits, so an element close to a rounding boundary can land on neighbouring bf16 values
 *     (2^-8 apart, relative) in the two. Measured up to 1.4e-3 on the 606-token golden prompt; 5e-3 is the bound.
 *   - a bf16 against an fp32 cache: every key and value rounded (relative error <= 2^-9). Measured up to 0.11 on
 *     logits of magnitude ~18; 0.25 is the bound.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DEFAULT_MODEL_DIR, loadModel } from '../src/engine/loaded-model.ts';
import { getPress, methodNames } from '../src/press/registry.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable, selectBackend } from '../src/tensor/select-backend.ts';
import { goldenPrompts, qaRows } from './helpers/tiny-model.ts';

const skip = nativeAvailable() ? false : 'native addon not built';
const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('bf16 KV cache: native matches the reference on the golden prompts, and stays close to an fp32 cache', { skip }, () => {
  const nat = loadModel(DEFAULT_MODEL_DIR, { backend: new NativeBackend({ bf16Activations: false }), kvDtype: 'bf16' });
  const ref = loadModel(DEFAULT_MODEL_DIR, { backend: new ReferenceBackend(), kvDtype: 'bf16' });
  const V = nat.config.vocabSize;
  for (const g of goldenPrompts()) {
    const cache = nat.newCache();
    assert.equal(cache.dtype, 'bf16');
    const a = nat.model.forward(g.input_ids, cache, { logits: 'all' })!;
    const b = ref.model.forward(g.input_ids, ref.newCache(), { logits: 'all' })!;
    const f = nat.model.forward(g.input_ids, nat.newCache('f32'), { logits: 'all' })!;
    for (const at of g.logits) {
      const row = (x: Float32Array) => x.subarray(at.position * V, (at.position + 1) * V);
      const ra = row(a);
      const rb = row(b);
      const diff = maxAbsDiff(ra, rb);
      assert.ok(diff <= 5e-3, `${g.name} at ${at.position}: native vs reference ${diff}`);
      const top = (r: Float32Array) => [...r.keys()].sort((x, y) => r[y]! - r[x]! || x - y).slice(0, 10);
      top(ra).forEach((id, i) => {
        const other = top(rb)[i]!;
        assert.ok(id === other || Math.abs(ra[id]! - ra[other]!) <= 1e-2, `${g.name} at ${at.position}: rank ${i} ${id} vs ${other} is not a near-tie`);
      });
      const vsF32 = maxAbsDiff(ra, row(f));
      assert.ok(vsF32 <= 0.25 && vsF32 > 0, `${g.name} at ${at.position}: bf16 vs fp32 cache ${vsF32}`);
    }
    assert.equal(cache.bytes(), g.input_ids.length * nat.config.numLayers * nat.config.numKvHeads * nat.config.headDim * 2 * 2);
  }
});

test('every press scores a bf16 cache as it scores an fp32 cache holding the same values', async () => {
  const lm = loadModel(DEFAULT_MODEL_DIR, { backend: selectBackend(), kvDtype: 'bf16' });
  const row = qaRows()[0]!;
  const context = row.context.split('\n').slice(0, 4).join('\n');
  for (const method of [...methodNames(), 'adakv:snapkv']) {
    const press = getPress(method);
    const session = lm.openContext(context, { queryTemplate: 'Question: {query}' });
    const scored = session.score(press);
    const { context: ctx, scores } = scored;
    if (method.startsWith('kvzip') || method === 'finch') {
      // KVzip (and FINCH) prefill their repeat prompts (or prompt) into the cache they score, rounded to bf16
      // there and not in an fp32 copy: checked for sane scores and a working compressed cache instead.
      scores.flat().forEach((s) => s.forEach((x) => assert.ok(Number.isFinite(x) && x >= 0, `${method} score ${x}`)));
    } else {
      const wide = press.scorer.score({ ...ctx, cache: session.cache.clone('f32') });
      scores.forEach((layer, l) =>
        layer.forEach((s, h) => {
          const w = wide[l]![h]!;
          for (let j = 0; j < s.length; j++) assert.ok(s[j] === w[j] || Math.abs(s[j]! - w[j]!) <= 1e-5 * Math.max(1, Math.abs(w[j]!)), `${method} layer ${l} head ${h} key ${j}: ${s[j]} vs ${w[j]}`);
        }),
      );
    }
    const full = session.cache.bytes();
    const { report } = scored.compressInPlace(0.5);
    assert.equal(session.cache.dtype, 'bf16');
    assert.equal(report.contextBytesFull, (session.context.end - session.context.start) * lm.config.numLayers * lm.config.numKvHeads * lm.config.headDim * 4);
    assert.ok(session.cache.bytes() < full, `${method}: compression frees bf16 rows`);
    const answer = await session.ask(row.questions[0]!, { maxTokens: 3 });
    assert.ok(answer.tokens.length > 0);
  }
});

test('kvlab generate --kv-dtype bf16 runs on a bf16 cache; an unknown dtype is refused by name', () => {
  const out = JSON.parse(execFileSync(process.execPath, [cli, 'generate', '--kv-dtype', 'bf16', '--temperature', '0', '--max-tokens', '4', '--json', '--prompt', 'Hello'], { encoding: 'utf8' }));
  // Up to 4 tokens: the model may end its answer sooner (finish_reason "stop").
  assert.ok(out.tokens.length >= 1 && out.tokens.length <= 4, `${out.tokens.length} tokens`);
  assert.ok(out.tokens.length === 4 || out.finish_reason === 'stop', `${out.tokens.length} tokens, finish_reason ${out.finish_reason}`);
  assert.equal(out.kv_dtype, 'bf16');
  const bad = spawnSync(process.execPath, [cli, 'generate', '--kv-dtype', 'fp8', '--prompt', 'Hello'], { encoding: 'utf8' });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /--kv-dtype must be f32, bf16, int4 or int2, got "fp8"/);
});
