import assert from 'node:assert/strict';
import { test } from 'node:test';
import { globalBudget, headsWithWindowBudget, keptCount, streamingRows, uniformBudget } from '../src/press/budgets.ts';
import { KvCache } from '../src/cache/kv-cache.ts';
import { blockBudget, blockKeyDiffScorer } from '../src/press/methods/block.ts';
import { mergeEvictedValues } from '../src/press/methods/cam.ts';
import { chunkKvScorer, chunkScores } from '../src/press/methods/chunkkv.ts';
import { compactorBudget, compactorScorer, leverageScores } from '../src/press/methods/compactor.ts';
import { finchScorer } from '../src/press/methods/finch.ts';
import { topKIndices } from '../src/press/topk.ts';
import { chunkedBudget, chunkedScorer } from '../src/press/methods/chunked.ts';
import { criticalAdaKvBudget, criticalBudget, criticalScorer } from '../src/press/methods/criticalkv.ts';
import { curScorer } from '../src/press/methods/cur.ts';
import { keyNormScorer } from '../src/press/methods/key-norm.ts';
import { rotateRow } from '../src/press/methods/key-rerotation.ts';
import { lagKvHead } from '../src/press/methods/lagkv.ts';
import { groupQueries, qFilterScorer, queryFilter } from '../src/press/methods/qfilter.ts';
import { layerLaziness, simLayerKvScorer } from '../src/press/methods/simlayerkv.ts';
import { snapKvScorer } from '../src/press/methods/snapkv.ts';
import { protectedSelect } from '../src/press/protect.ts';
import { getPress } from '../src/press/registry.ts';
import { withStages } from '../src/press/staged-scores.ts';
import type { Scorer, Scores, ScoringContext } from '../src/press/types.ts';
import { widenWeight } from '../src/tensor/reference.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel(selectBackend());
const context = qaRows()[1]!.context.split('\n').slice(0, 6).join('\n');
const cfg = lm.config;
const d = cfg.headDim;
const G = cfg.numHeads / cfg.numKvHeads;

/** A prefilled session's scoring context, with what the scorer needs captured. */
function scoringContext(scorer: Scorer): ScoringContext {
  const session = lm.openContext(context);
  return session.scoringContext(session.prefillCapture([scorer.needs]).capture);
}

const close = (a: number, b: number, tol = 1e-5) => Math.abs(a - b) <= tol * Math.max(1, Math.abs(a), Math.abs(b));

test('ChunkKV: every row carries its chunk mean of the head-summed scores; whole chunks are kept first', () => {
  // Hand-worked: chunks of 2 over [1,2,3,4,5] + [1,1,1,1,1]: (1+2+1+1)/2, (3+4+1+1)/2, (5+1)/1.
  assert.deepEqual(Array.from(chunkScores([Float32Array.of(1, 2, 3, 4, 5), Float32Array.of(1, 1, 1, 1, 1)], 2)), [2.5, 2.5, 4.5, 4.5, 6]);
  const s = chunkScores([Float32Array.of(1, 2, 3, 4, 5), Float32Array.of(1, 1, 1, 1, 1)], 2);
  assert.deepEqual(Array.from(uniformBudget.select([[s]], 0.6)[0]![0]!), [2, 3, 4], 'the two best chunks, whole');
  // On the model: brute force from the base scores.
  const base = keyNormScorer();
  const ctx = scoringContext(base);
  const raw = base.score(ctx);
  const chunked = chunkKvScorer(base, 7).score(ctx);
  raw.forEach((layer, l) => {
    const T = layer[0]!.length;
    for (let j = 0; j < T; j++) {
      const c0 = j - (j % 7);
      const c1 = Math.min(T, c0 + 7);
      let sum = 0;
      for (const h of layer) for (let t = c0; t < c1; t++) sum += h[t]!;
      for (let h = 0; h < layer.length; h++) assert.ok(close(chunked[l]![h]![j]!, sum / (c1 - c0)), `layer ${l} row ${j}`);
    }
  });
});

test('LagKV: hand-worked partition scores, values count, short spans fall back to recency', () => {
  // nSink 1, lag 2, T 6: partition rows 1-2 are scored against rows 3-4 (min 0, max 1 per channel); 3-5 are the tail.
  const ref = [Float32Array.of(0, 0, 0), Float32Array.of(1, 1, 1)];
  const keys = [Float32Array.of(9, 9, 9), Float32Array.of(0, 0.5, 1), Float32Array.of(0.5, 0.5, 0.5), ...ref, Float32Array.of(5, 5, 5)];
  // Key spreads (0.5, 0): softmax [0.6225, 0.3775]. Value spreads (0, 0.5774): softmax [0.3596, 0.6404]. Means 0.491 < 0.509.
  const values = [Float32Array.of(0, 0, 0), Float32Array.of(0.3, 0.3, 0.3), Float32Array.of(0, 1, 0), ...ref, Float32Array.of(0, 0, 0)];
  assert.deepEqual(Array.from(lagKvHead(keys, values, 6, 1, 2)), [1, 0, 0.5, 1, 1, 1]);
  // With equal value spreads the key decides: row 1 (spread 0.5) now ranks first.
  const flat = [...values];
  flat[2] = Float32Array.of(0.3, 0.3, 0.3);
  assert.deepEqual(Array.from(lagKvHead(keys, flat, 6, 1, 2)), [1, 0.5, 0, 1, 1, 1]);
  assert.deepEqual(Array.from(lagKvHead(keys.slice(0, 4), values.slice(0, 4), 4, 1, 2), (x) => Math.fround(x)), [1, 0, Math.fround(1 / 3), Math.fround(2 / 3)]);
});

test('CriticalKV: scores are (s + eps) * mean_h ||W_O^h v||_1, brute force from the weights; two-stage budgets', () => {
  const base = keyNormScorer();
  const ctx = scoringContext(base);
  const raw = base.score(ctx);
  const scores = criticalScorer(base, { epsilon: 1e-4 }).score(ctx);
  assert.deepEqual(scores.stages?.first, raw, 'the base scores ride along as the first stage');
  const D = cfg.hiddenSize;
  for (const l of [0, cfg.numLayers - 1]) {
    const wo = widenWeight(lm.model.weights.layers[l]!.wo);
    for (let g = 0; g < cfg.numKvHeads; g++) {
      const v = ctx.cache.head(l, g).values(ctx.span.start, ctx.span.end);
      for (const j of [0, 5, raw[l]![g]!.length - 1]) {
        let norm = 0;
        for (let h = g * G; h < (g + 1) * G; h++)
          for (let r = 0; r < D; r++) {
            let x = 0;
            for (let c = 0; c < d; c++) x += wo[r * cfg.numHeads * d + h * d + c]! * v[j * d + c]!;
            norm += Math.abs(x) / G;
          }
        assert.ok(close(scores[l]![g]![j]!, (raw[l]![g]![j]! + 1e-4) * norm, 1e-4), `layer ${l} head ${g} row ${j}`);
      }
    }
  }
  // Hand-worked selection: n = 3, first stage floor(1.5) = 1 row by the base scores, then the reweighted top.
  const staged = withStages([[Float32Array.of(0, 0, 9, 8, 0, 7)]], { first: [[Float32Array.of(6, 5, 4, 3, 2, 1)]] });
  assert.deepEqual(Array.from(criticalBudget(0.5).select(staged, 0.5)[0]![0]!), [0, 2, 3]);
  // CriticalAdaKV: head 0 dominates the base scores, so it takes the layer's whole budget of 2 x 2 rows.
  const ada = withStages([[Float32Array.of(1, 1, 1, 1), Float32Array.of(5, 5, 5, 5)]], {
    first: [[Float32Array.of(10, 9, 8, 7), Float32Array.of(1, 1, 1, 1)]],
  });
  assert.deepEqual(criticalAdaKvBudget(0.2, 0.5).select(ada, 0.5)[0]!.map((k) => Array.from(k)), [[0, 1, 2, 3], []]);
  assert.throws(() => criticalBudget().select([[Float32Array.of(1, 2)]], 0.5), /needs the "first" scores/);
  // Under a whitelist the first stage is subset with the scores.
  const wl = protectedSelect(criticalBudget(0.5), staged, 0.5, [{ name: 'a', start: 0, end: 2 }, { name: 'b', start: 2, end: 6 }], { whitelist: ['a'] });
  assert.deepEqual(Array.from(wl[0]![0]!), [0, 1, 2], 'rows 0-1 whitelisted, then the best of the rest');
});

test('SimLayerKV: laziness is the last query\'s attention on sinks + recent rows, brute force; lazy layers go first', () => {
  const opts = { nInitial: 4, nRecent: 16, nLast: 1 };
  const scorer = simLayerKvScorer(opts);
  const ctx = scoringContext(scorer);
  const N = ctx.ids.length;
  const p = ctx.span.end - 1;
  const slot = ctx.capture.queryPositions.indexOf(p);
  const lazy = layerLaziness(ctx, 4, 16, 1);
  for (let l = 0; l < cfg.numLayers; l++) {
    let mass = 0;
    for (let h = 0; h < cfg.numHeads; h++) {
      const q = ctx.capture.queries[l]!.subarray((slot * cfg.numHeads + h) * d, (slot * cfg.numHeads + h + 1) * d);
      const hs = ctx.cache.head(l, Math.floor(h / G));
      const logits: number[] = [];
      for (let r = 0; r < hs.len; r++) {
        if (hs.pos[r]! > p) continue;
        const k = hs.keys(r, r + 1);
        logits.push(k.reduce((s, x, c) => s + x * q[c]!, 0) / Math.sqrt(d));
      }
      const top = Math.max(...logits);
      const z = logits.reduce((s, x) => s + Math.exp(x - top), 0);
      logits.forEach((x, r) => {
        const pos = hs.pos[r]!;
        if (pos < 4 || pos >= N - 16) mass += Math.exp(x - top) / z / cfg.numHeads;
      });
    }
    assert.ok(close(lazy[l]!, mass, 1e-4), `layer ${l}: ${lazy[l]} vs ${mass}`);
  }
  const scores = scorer.score(ctx);
  const T = ctx.span.end - ctx.span.start;
  scores.forEach((layer, l) =>
    layer.forEach((s) =>
      s.forEach((x, j) => {
        const pos = ctx.span.start + j;
        assert.equal(x, Math.fround(pos < 4 ? 3 : pos >= N - 16 ? 2 + pos / N : 1 - lazy[l]!));
      }),
    ),
  );
  // Budget for every window row plus one whole layer: the least lazy layer is the one kept whole.
  let windowRows = 0;
  for (let pos = ctx.span.start; pos < ctx.span.end; pos++) if (pos < 4 || pos >= N - 16) windowRows++;
  const L = cfg.numLayers;
  const H = cfg.numKvHeads;
  const ratio = (L * H * windowRows + H * (T - windowRows)) / (L * H * T);
  const keep = globalBudget.select(scores, ratio);
  const leastLazy = lazy.indexOf(Math.min(...lazy));
  keep.forEach((layer, l) => layer.forEach((k) => assert.equal(k.length, l === leastLazy ? T : windowRows, `layer ${l}`)));
});

test('CUR: local leverage of keys times values, brute force', () => {
  const scorer = curScorer({ window: 5 });
  const ctx = scoringContext(scorer);
  const scores = scorer.score(ctx);
  const T = ctx.span.end - ctx.span.start;
  for (let l = 0; l < cfg.numLayers; l++)
    for (let h = 0; h < cfg.numKvHeads; h++) {
      const hs = ctx.cache.head(l, h);
      const sq = (rows: Float32Array, j: number) => rows.subarray(j * d, (j + 1) * d).reduce((s, x) => s + x * x, 0);
      const k = hs.keys(ctx.span.start, ctx.span.end);
      const v = hs.values(ctx.span.start, ctx.span.end);
      const local = (rows: Float32Array, j: number) => {
        let sum = 0;
        for (let t = j - (j % 5); t < Math.min(T, j - (j % 5) + 5); t++) sum += sq(rows, t);
        return sq(rows, j) / sum;
      };
      const prod = Array.from({ length: T }, (_, j) => local(k, j) * local(v, j));
      const total = prod.reduce((a, b) => a + b, 0);
      // Rows at absolute positions below nSink (4) are the sinks: score 1.
      prod.forEach((x, j) => assert.ok(close(scores[l]![h]![j]!, ctx.span.start + j < 4 ? 1 : x / total), `layer ${l} head ${h} row ${j}`));
    }
});

test('Q-Filters: the filter is the top eigenvector of the queries\' Gram matrix, oriented with them; score = k.u', () => {
  const scorer = qFilterScorer();
  const ctx = scoringContext(scorer);
  const scores = scorer.score(ctx);
  for (const [l, g] of [[0, 0], [cfg.numLayers - 1, cfg.numKvHeads - 1]] as const) {
    const q = groupQueries(ctx, l, g);
    const n = q.length / d;
    assert.equal(n, (ctx.span.end - ctx.span.start) * G);
    const u = queryFilter(q, d);
    const gram = (x: ArrayLike<number>) => {
      const out = new Float64Array(d);
      for (let i = 0; i < n; i++) {
        let qx = 0;
        for (let c = 0; c < d; c++) qx += q[i * d + c]! * x[c]!;
        for (let c = 0; c < d; c++) out[c] = out[c]! + q[i * d + c]! * qx;
      }
      return out;
    };
    const Au = gram(u);
    const lambda = Au.reduce((s, x, c) => s + x * u[c]!, 0);
    assert.ok(close(Math.hypot(...u), 1, 1e-9), 'unit length');
    for (let c = 0; c < d; c++) assert.ok(Math.abs(Au[c]! - lambda * u[c]!) < 1e-6 * lambda, `eigenvector, channel ${c}`);
    // No direction gives a larger Rayleigh quotient: every basis vector and a few pseudo-random ones.
    for (let t = 0; t < d + 8; t++) {
      const x = Float64Array.from({ length: d }, (_, c) => (t < d ? (c === t ? 1 : 0) : Math.sin(7 * t + 3 * c)));
      const nx = Math.hypot(...x);
      assert.ok(gram(x).reduce((s, y, c) => s + y * x[c]!, 0) / nx / nx <= lambda * (1 + 1e-9));
    }
    let mean = 0;
    for (let i = 0; i < n; i++) for (let c = 0; c < d; c++) mean += q[i * d + c]! * u[c]!;
    assert.ok(mean > 0, 'oriented so the queries lean towards it');
    const keys = ctx.cache.head(l, g).keys(ctx.span.start, ctx.span.end);
    scores[l]![g]!.forEach((s, j) => assert.ok(close(s, keys.subarray(j * d, (j + 1) * d).reduce((a, x, c) => a + x * u[c]!, 0), 1e-5)));
  }
});

test('head budgets with a window: whole heads by score, the others keep sink + recent (kvzip-head, duo-attention)', () => {
  const s: Scores = [[new Float32Array(10).fill(3), new Float32Array(10).fill(1)], [new Float32Array(10).fill(2), new Float32Array(10).fill(0)]];
  const keep = headsWithWindowBudget(2, 3).select(s, 0.5).map((l) => l.map((k) => Array.from(k)));
  const all = Array.from({ length: 10 }, (_, i) => i);
  assert.deepEqual(keep, [[all, [0, 1, 7, 8, 9]], [all, [0, 1, 7, 8, 9]]]);
  assert.deepEqual(Array.from(streamingRows(4, 2, 3)), [0, 1, 2, 3], 'overlapping sink and window count once');
  assert.deepEqual(headsWithWindowBudget(2, 3).expectedKept(2, 2, 10, 0.5), { level: 'head-multiset', counts: [5, 5, 10, 10] });
  assert.match(getPress('kvzip-head').describe, /budget heads\(sink=4, recent=64\)$/);
  assert.match(getPress('duo-attention').describe, /budget heads\(sink=4, recent=64\)$/);
});

test('chunked wrapper: each chunk scored alone on its own keys, and budgeted alone', () => {
  const base = snapKvScorer({ window: 8, kernel: 3 });
  const wrapped = chunkedScorer(base, 16);
  const ctx = scoringContext(wrapped);
  const scores = wrapped.score(ctx);
  const T = ctx.span.end - ctx.span.start;
  for (let a = 0; a < T; a += 16) {
    const span = { start: ctx.span.start + a, end: ctx.span.start + Math.min(T, a + 16) };
    const alone = base.score({ ...ctx, span, keys: 'span' });
    alone.forEach((layer, l) => layer.forEach((s, h) => assert.deepEqual(scores[l]![h]!.subarray(a, a + s.length), s, `chunk at ${a}`)));
  }
  // Span-local attention really differs from scoring the whole span at once.
  assert.notDeepEqual(scores, base.score(ctx));
  // Each chunk keeps floor(its length * ratio) of its own best rows.
  const hand = [[Float32Array.of(1, 9, 8, 2, 7, 1, 1, 6, 5, 0)]];
  assert.deepEqual(Array.from(chunkedBudget(uniformBudget, 4).select(hand, 0.5)[0]![0]!), [1, 2, 4, 7, 8]);
  assert.deepEqual(chunkedBudget(uniformBudget, 4).expectedKept(1, 1, 10, 0.5), { level: 'head', counts: [5] });
});

test('key re-rotation: a rotation by delta moves a key to position p + delta, exactly as RoPE', () => {
  const inv = lm.model.rope.invFreq;
  const k = Float32Array.from({ length: d }, (_, c) => Math.sin(c + 1));
  const q = Float32Array.from({ length: d }, (_, c) => Math.cos(3 * c));
  const at = (x: Float32Array, p: number) => {
    const y = x.slice();
    rotateRow(y, p, inv);
    return y;
  };
  const dot = (a: Float32Array, b: Float32Array) => a.reduce((s, x, c) => s + x * b[c]!, 0);
  // Rotating a key stored at 40 by -25 gives the key at 15; logits depend only on the distance.
  const moved = at(at(k, 40), -25);
  at(k, 15).forEach((x, c) => assert.ok(Math.abs(x - moved[c]!) < 1e-5));
  assert.ok(close(dot(at(q, 20), at(k, 15)), dot(at(q, 105), at(k, 100)), 1e-4));
  // End to end on a uniform budget: kept rows become contiguous after the prefix, keys rotated by the move.
  const session = lm.openContext(context);
  const scored = session.score(getPress('rerotate:knorm'));
  const plain = scored.keep(0.5);
  const { session: s } = scored.compressed(0.5);
  const P = session.context.start;
  const n = keptCount(session.context.end - P, 0.5);
  assert.equal(s.cache.nextPos, P + n);
  for (const [l, h] of [[0, 0], [cfg.numLayers - 1, 1]] as const) {
    const hs = s.cache.head(l, h);
    assert.deepEqual(Array.from(hs.pos.subarray(P, hs.len)), Array.from({ length: n }, (_, i) => P + i));
    plain[l]![h]!.forEach((j, i) => {
      const original = session.cache.head(l, h).keys(P + j, P + j + 1).slice();
      rotateRow(original, P + i - (P + j), inv);
      const got = hs.keys(P + i, P + i + 1);
      original.forEach((x, c) => assert.ok(Math.abs(x - got[c]!) < 1e-5, `layer ${l} head ${h} row ${i}`));
    });
  }
  // Ratio 1 moves nothing.
  const full = scored.compressed(1).session;
  full.cache.forEachHead((hs, l, h) => assert.deepEqual(hs.keys(), session.cache.head(l, h).keys()));
});

test('Compactor: exact ridge leverage of pre-RoPE keys (checked by QR), z-scored; blend 1 - ratio; sinks kept', () => {
  // Leverage against an independent computation: squared row norms of Q from Gram-Schmidt on [X; sqrt(jitter) I].
  const rows = Array.from({ length: 12 }, (_, i) => Float32Array.from({ length: 4 }, (_, c) => Math.sin(3 * i + c * c + 1) * (c + 1)));
  const jitter = 0.01;
  const lev = leverageScores(rows, jitter);
  const mean = [0, 1, 2, 3].map((c) => rows.reduce((s, r) => s + r[c]!, 0) / rows.length);
  const aug = [...rows.map((r) => Array.from(r, (x, c) => x - mean[c]!)), ...[0, 1, 2, 3].map((i) => [0, 1, 2, 3].map((c) => (c === i ? Math.sqrt(jitter) : 0)))];
  const cols = [0, 1, 2, 3].map((c) => aug.map((r) => r[c]!));
  const Q: number[][] = [];
  for (const col of cols) {
    const v = col.slice();
    for (const q of Q) {
      const p = q.reduce((s, x, i) => s + x * col[i]!, 0);
      q.forEach((x, i) => (v[i] = v[i]! - p * x));
    }
    const n = Math.hypot(...v);
    Q.push(v.map((x) => x / n));
  }
  rows.forEach((_, j) => assert.ok(close(lev[j]!, Q.reduce((s, q) => s + q[j]! ** 2, 0), 1e-9), `row ${j}`));
  // On the model: sinks score Infinity, the leverage stage is z-scored per layer, the budget blends with 1 - ratio.
  const scorer = compactorScorer({ sinkStart: 3, sinkEnd: 2, chunkSize: 32 });
  const ctx = scoringContext(scorer);
  const scores = scorer.score(ctx);
  const T = ctx.span.end - ctx.span.start;
  const leverage = scores.stages!.leverage!;
  scores.forEach((layer) => layer.forEach((s) => [0, 1, 2, T - 2, T - 1].forEach((j) => assert.equal(s[j], Infinity))));
  const inner = leverage[0]!.flatMap((s) => Array.from(s.subarray(3, T - 2)));
  assert.ok(Math.abs(inner.reduce((a, b) => a + b, 0) / inner.length) < 1e-5, 'zero mean over the layer');
  for (const ratio of [0.3, 0.7]) {
    const keep = compactorBudget().select(scores, ratio);
    const blended = scores[1]![0]!.map((x, j) => x + (1 - ratio) * leverage[1]![0]![j]!);
    assert.deepEqual(keep[1]![0], topKIndices(blended, keptCount(T, ratio)));
  }
});

test('Block: hand-worked iterative pruning, and KeyDiff rescored on each union', () => {
  // rescore = the negated row index within the union: each step keeps the earliest rows, so nothing after
  // the first n survives; with rescore = the row itself the last rows survive.
  const make = (f: (rows: Int32Array) => Float32Array): Scores => Object.assign([[new Float32Array(10)]], { rescore: (_l: number, _h: number, rows: Int32Array) => f(rows) });
  assert.deepEqual(Array.from(blockBudget(3).select(make((r) => Float32Array.from(r, (x) => -x)), 0.3)[0]![0]!), [0, 1, 2]);
  assert.deepEqual(Array.from(blockBudget(3).select(make((r) => Float32Array.from(r, (x) => x)), 0.3)[0]![0]!), [7, 8, 9]);
  // The unions rescored, n = 2 and blocks of 4: rows 0-1 with 2-5, then the kept two (x % 3 ranks rows 2
  // and 5 first) with 6-9.
  const unions: number[][] = [];
  blockBudget(4).select(make((r) => (unions.push(Array.from(r)), Float32Array.from(r, (x) => x % 3))), 0.2);
  assert.deepEqual(unions, [[0, 1, 2, 3, 4, 5], [2, 5, 6, 7, 8, 9]]);
  assert.throws(() => blockBudget().select([[new Float32Array(4)]], 0.5), /needs scores that can be recomputed/);
  const scorer = blockKeyDiffScorer();
  const ctx = scoringContext(scorer);
  const scores = scorer.score(ctx);
  const rows = Int32Array.of(0, 3, 4, 9, 20);
  const keys = Array.from(rows, (r) => ctx.cache.head(2, 1).keys(ctx.span.start + r, ctx.span.start + r + 1));
  const unit = keys.map((k) => k.map((x) => x / Math.hypot(...k)));
  const anchor = unit[0]!.map((_, c) => unit.reduce((s, u) => s + u[c]!, 0) / unit.length);
  const an = Math.hypot(...anchor);
  const want = unit.map((u) => -u.reduce((s, x, c) => s + x * anchor[c]!, 0) / an);
  scores.rescore!(2, 1, rows).forEach((x, i) => assert.ok(close(x, want[i]!, 1e-5)));
});

test('FINCH: the prompt\'s attention over [prefix, chunk, prompt], brute force from the prompt\'s own queries', () => {
  const scorer = finchScorer({ prompt: 'Which code is 1551?', chunkSize: 40 });
  const ctx = scoringContext(scorer);
  const scores = scorer.score(ctx);
  const before = ctx.cache.mark();
  const P = [...lm.tokenizer.encode(ctx.queryLead + 'Which code is 1551?'), ...lm.tokenizer.encode(ctx.suffix)];
  const { start, end } = ctx.span;
  const N = ctx.cache.nextPos;
  const queries: Float32Array[] = [];
  ctx.lm.run(ctx.cache, P, (c) => (queries[c.layer] = c.q.slice()));
  for (const l of [0, cfg.numLayers - 1])
    for (let g = 0; g < cfg.numKvHeads; g++) {
      const hs = ctx.cache.head(l, g);
      for (const [cs, ce] of [[start, start + 40], [start + 160, Math.min(end, start + 200)]] as const) {
        const sums = new Float64Array(ce - cs);
        for (let i = 0; i < P.length; i++)
          for (let h = g * G; h < (g + 1) * G; h++) {
            const q = queries[l]!.subarray((i * cfg.numHeads + h) * d, (i * cfg.numHeads + h + 1) * d);
            const rows = [...Array.from({ length: ctx.prefix.end }, (_, r) => r), ...Array.from({ length: ce - cs }, (_, r) => cs + r), ...Array.from({ length: i + 1 }, (_, r) => N + r)];
            const logits = rows.map((r) => hs.keys(r, r + 1).reduce((s, x, c) => s + x * q[c]!, 0) / Math.sqrt(d));
            const top = Math.max(...logits);
            const z = logits.reduce((s, x) => s + Math.exp(x - top), 0);
            for (let j = 0; j < ce - cs; j++) sums[j] = sums[j]! + Math.exp(logits[ctx.prefix.end + j]! - top) / z / (P.length * G);
          }
        sums.forEach((x, j) => assert.ok(close(scores[l]![g]![cs - start + j]!, x, 1e-4), `layer ${l} head ${g} row ${cs - start + j}`));
      }
    }
  ctx.cache.truncate(before);
});

test('CaM: evicted values are merged into the next kept rows with probability A_i / mean A(window)', () => {
  const cache = new KvCache(1, 1, 2);
  const values = Float32Array.of(9, 9, 1, 0, 0, 1, 2, 2, 0, 0, 5, 5);
  const pos = Int32Array.from({ length: 6 }, (_, i) => i);
  cache.loadHead(0, 0, pos, new Float32Array(12), values);
  const span = { start: 1, end: 6 };
  const keep = [[Int32Array.of(1, 3)]];
  // Span rows 0, 2 and 4 are evicted; A / mean(A over the window) is 2 and 4 (merged surely); row 4 has no kept row after it.
  mergeEvictedValues(cache, span, keep, [[Float32Array.of(0, 2, 1, 4, 1, 9)]], { mergeBudget: 2 });
  assert.deepEqual(Array.from(cache.head(0, 0).values()), [9, 9, 1, 0, 0.5, 1, 2, 2, 2.5, 2, 5, 5]);
  // Attention 0 on the evicted rows: probability 0, nothing merges.
  const again = new KvCache(1, 1, 2);
  again.loadHead(0, 0, pos, new Float32Array(12), values);
  mergeEvictedValues(again, span, keep, [[Float32Array.of(0, 0, 1, 0, 1, 0)]], { mergeBudget: 2 });
  assert.deepEqual(Array.from(again.head(0, 0).values()), Array.from(values));
  // On the model: same rows and keys as the plain method, merged values, and nothing changes at ratio 1.
  const session = lm.openContext(context);
  const cam = session.score(getPress('cam:knorm')).compressed(0.5).session.cache;
  const plain = lm.openContext(context).score(getPress('knorm')).compressed(0.5).session.cache;
  let differ = 0;
  cam.forEachHead((hs, l, h) => {
    const p = plain.head(l, h);
    assert.deepEqual(hs.pos.subarray(0, hs.len), p.pos.subarray(0, p.len));
    assert.deepEqual(hs.keys(), p.keys());
    if (hs.values().some((x, i) => x !== p.values()[i])) differ++;
  });
  assert.ok(differ > 0, 'some kept values received merged ones');
  const full = lm.openContext(context);
  const whole = full.score(getPress('cam:knorm')).compressed(1).session.cache;
  whole.forEachHead((hs, l, h) => assert.deepEqual(hs.values(), full.cache.head(l, h).values()));
});
