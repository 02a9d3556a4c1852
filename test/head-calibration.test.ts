import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { calibrationPath, defaultCalibrationSample } from '../src/press/head-scores.ts';
import { DUO_DEFAULTS, duoHeadScoresFor, farAttentionScorer } from '../src/press/methods/duo-attention.ts';
import { headScoresFor, headScoresPath } from '../src/press/methods/kvzip-head.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { scratchCacheDir } from './helpers/scratch-cache-dir.ts';
import { tinyModel } from './helpers/tiny-model.ts';

scratchCacheDir('kvlab-headcal-');

const lm = tinyModel(selectBackend());
const cfg = lm.config;
const d = cfg.headDim;
const G = cfg.numHeads / cfg.numKvHeads;
const sample = defaultCalibrationSample().split('\n').slice(0, 12).join('\n');

test('the calibration sample is fixed: same text every call, documented shape', () => {
  const a = defaultCalibrationSample();
  assert.equal(a, defaultCalibrationSample());
  const lines = a.split('\n');
  assert.equal(lines.length, 61);
  assert.equal(lines[1], 'The code of river0 is 1000. The old river stands near the garden.');
  assert.equal(lines[2], 'The code of castle1 is 8919. The old castle stands near the river.');
});

test('DuoAttention calibration: far attention of the probes, brute force over the sample', () => {
  const o = { sink: 2, recent: 8, probes: 4 };
  const session = lm.openContext(sample);
  const scorer = farAttentionScorer(o);
  const ctx = session.scoringContext(session.prefillCapture([scorer.needs]).capture);
  const scores = scorer.score(ctx);
  const probes = Array.from({ length: 4 }, (_, i) => ctx.span.end - 4 + i);
  for (let l = 0; l < cfg.numLayers; l++)
    for (let g = 0; g < cfg.numKvHeads; g++) {
      const hs = ctx.cache.head(l, g);
      let far = 0;
      for (const p of probes) {
        const slot = ctx.capture.queryPositions.indexOf(p);
        for (let h = g * G; h < (g + 1) * G; h++) {
          const q = ctx.capture.queries[l]!.subarray((slot * cfg.numHeads + h) * d, (slot * cfg.numHeads + h + 1) * d);
          const logits: number[] = [];
          for (let r = 0; r <= p; r++) logits.push(hs.keys(r, r + 1).reduce((s, x, c) => s + x * q[c]!, 0) / Math.sqrt(d));
          const top = Math.max(...logits);
          const z = logits.reduce((s, x) => s + Math.exp(x - top), 0);
          // Far rows: after the span's first 2 rows, before 8 rows ahead of the first probe.
          for (let r = ctx.span.start + 2; r < probes[0]! - 8; r++) far += Math.exp(logits[r]! - top) / z;
        }
      }
      const s = scores[l]![g]!;
      assert.ok(Math.abs(s[0]! - far / 4) < 1e-5, `layer ${l} head ${g}: ${s[0]} vs ${far / 4}`);
      assert.ok(s.every((x) => x === s[0]), 'one score per head');
    }
});

test('head scores are saved per model with the sample hash and reused; another sample recomputes them', async () => {
  const sm = lm.openContext(sample).scoringModel();
  const first = duoHeadScoresFor(sm, {}, sample);
  const path = calibrationPath(sm, `duo-head-scores-s${DUO_DEFAULTS.sink}-r${DUO_DEFAULTS.recent}-p${DUO_DEFAULTS.probes}`);
  const saved = JSON.parse(readFileSync(path, 'utf8'));
  assert.equal(saved.sample.sha256, createHash('sha256').update(sample).digest('hex'));
  assert.equal(saved.sample.tokens, lm.tokenizer.encode(sample).length);
  assert.deepEqual(saved.scores, first);
  assert.deepEqual(duoHeadScoresFor(sm, {}, sample), first, 'the same sample reproduces the same scores');
  // A file in the right shape for this sample is used as saved.
  const handMade = first.map((l) => l.map((_, h) => h + 0.5));
  writeFileSync(path, JSON.stringify({ ...saved, scores: handMade }));
  assert.deepEqual(duoHeadScoresFor(sm, {}, sample), handMade);
  // Another sample: named in a warning, recomputed, file replaced.
  const warnings: Error[] = [];
  const on = (w: Error) => warnings.push(w);
  process.on('warning', on);
  const other = duoHeadScoresFor(sm, {}, `${sample}\nThe code of tower99 is 4242.`);
  await new Promise((r) => setImmediate(r));
  process.off('warning', on);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!.message, /computed on another calibration sample/);
  assert.notDeepEqual(other, handMade);
  // kvzip-head records its sample the same way.
  headScoresFor(sm, sample);
  assert.equal(JSON.parse(readFileSync(headScoresPath(sm), 'utf8')).sample.sha256, saved.sample.sha256);
});
