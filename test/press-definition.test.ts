import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pyramidBudget, uniformBudget } from '../src/press/budgets.ts';
import { keyNormScorer } from '../src/press/methods/key-norm.ts';
import { snapKvScorer } from '../src/press/methods/snapkv.ts';
import { perHead } from '../src/press/per-head.ts';
import { describeMethods, describePress, getPress, methodNames } from '../src/press/registry.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel();
const context = qaRows()[0]!.context.split('\n').slice(0, 2).join('\n');

test('perHead hands each (layer, KV head) its own span rows, in cache order', () => {
  const session = lm.openContext(context);
  const ctx = session.scoringContext(session.prefillCapture([]).capture);
  const { span, cache } = ctx;
  const d = cache.headDim;
  const scores = keyNormScorer().score(ctx);
  assert.equal(scores.length, cache.numLayers);
  scores.forEach((layer, l) => {
    assert.equal(layer.length, cache.numKvHeads);
    layer.forEach((s, h) => {
      const k = cache.head(l, h).k as Float32Array;
      assert.equal(s.length, span.end - span.start);
      s.forEach((x, j) => {
        const row = k.subarray((span.start + j) * d, (span.start + j + 1) * d);
        assert.equal(x, Math.fround(-Math.sqrt(row.reduce((a, v) => a + v * v, 0))), `layer ${l} head ${h} key ${j}`);
      });
    });
  });
  const seen: string[] = [];
  perHead(ctx, ({ layer, head, positions, values }) => {
    seen.push(`${layer}.${head}`);
    assert.equal(positions[0], span.start);
    assert.equal(values.length, span.end - span.start);
    return positions;
  });
  assert.deepEqual(seen, Array.from({ length: cache.numLayers * cache.numKvHeads }, (_, i) => `${Math.floor(i / cache.numKvHeads)}.${i % cache.numKvHeads}`));
  assert.throws(() => perHead(ctx, () => [1, 2]), /a per-head score gave 2 scores for a span of \d+ \(layer 0, head 0\)/);
});

test('a press describes itself from its scorer options and its budget', () => {
  assert.equal(getPress('snapkv').describe, describePress(snapKvScorer(), uniformBudget));
  assert.match(describePress(snapKvScorer({ window: 8, kernel: 3 }), pyramidBudget(5)), /^SnapKV: .*\(window 8, kernel 3\); budget pyramid\(beta=5\)$/);
  assert.match(getPress('adakv:knorm').describe, /^K-norm: keep low-norm keys; budget adakv\(alpha=0.2\)$/);
  const wrappers = ['adakv:<method>', 'chunked[N]:<method>', 'chunkkv:<method>', 'critical:<method>', 'rerotate:<method>', 'cam:<method>', 'think[R]:<method>'];
  assert.deepEqual(describeMethods().map((m) => m.name), [...methodNames(), ...wrappers]);
  assert.match(describeMethods().find((m) => m.name === 'adakv:<method>')!.describe, /budget adakv\(alpha=0.2\)$/);
  assert.match(getPress('rerotate:adakv:knorm').describe, /^K-norm: keep low-norm keys; budget adakv\(alpha=0.2\); keys re-rotated$/);
  assert.equal(getPress('adakv:rerotate:knorm').rerotate, true, 'an outer wrapper keeps the inner re-rotation');
  assert.match(getPress('chunked64:snapkv').describe, /^chunked \(64 rows\): SnapKV: .*chunkLength 64\); budget chunked\(64, uniform\)$/);
  assert.throws(() => getPress('nope'), /unknown method "nope"; known: kvzip, /);
});
