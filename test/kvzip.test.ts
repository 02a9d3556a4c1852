import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KVZIP_FIRST_PROMPT, KVZIP_NEXT_PROMPT, kvzipScores } from '../src/press/methods/kvzip.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';
import { widenWeight } from '../src/tensor/reference.ts';

const lm = tinyModel();
const context = qaRows()[1]!.context.split('\n').slice(0, 3).join('\n');

/**
 * Brute force, independent of the backend's attention kernel: run prefix ++ context ++ R_t through the model
 * in one pass, take the post-RoPE queries of R_t and all keys, and evaluate the reduced softmax with plain loops.
 */
function bruteForce(chunkSize: number, normalized = false): Float32Array[][] {
  const session = lm.openContext(context);
  const { ids, prefix, context: span } = session;
  const cfg = lm.config;
  const d = cfg.headDim;
  const G = cfg.numHeads / cfg.numKvHeads;
  const post = lm.tokenizer.encode(lm.tokenizer.chat.userTurnParts().suffix);
  const T = span.end - span.start;
  const out = Array.from({ length: cfg.numLayers }, () => Array.from({ length: cfg.numKvHeads }, () => new Float32Array(T)));
  for (let cs = span.start; cs < span.end; cs += chunkSize) {
    const ce = Math.min(span.end, cs + chunkSize);
    const lead = cs === span.start ? lm.tokenizer.encode(`\n\n${KVZIP_FIRST_PROMPT}`) : [...lm.tokenizer.encode(`\n\n${KVZIP_NEXT_PROMPT}`), ...ids.slice(Math.max(span.start, cs - 8), cs)];
    const R = [...lead, ...post, ...ids.slice(cs, ce)];
    const N = ids.length;
    const cache = lm.newCache();
    const qs: Float32Array[] = [];
    const hidden: Float32Array[] = [];
    lm.model.forward([...ids, ...R], cache, {
      logits: 'none',
      onLayer: (c) => {
        qs.push(c.q.slice(N * cfg.numHeads * d));
        hidden.push(c.hidden.slice(N * cfg.hiddenSize));
      },
    });
    const D = cfg.hiddenSize;
    const wo = (l: number) => widenWeight(lm.model.weights.layers[l]!.wo);
    for (let l = 0; l < cfg.numLayers; l++) {
      for (let g = 0; g < cfg.numKvHeads; g++) {
        const keysAt = [...Array.from({ length: prefix.end }, (_, i) => i), ...Array.from({ length: ce - cs }, (_, i) => cs + i), ...R.map((_, i) => N + i)];
        const K = cache.head(l, g).k;
        for (let h = g * G; h < (g + 1) * G; h++) {
          for (let i = 0; i < R.length; i++) {
            const q = qs[l]!.subarray((i * cfg.numHeads + h) * d, (i * cfg.numHeads + h + 1) * d);
            const logits = keysAt.map((row) => {
              if (row >= N && row - N > i) return -Infinity; // causal only inside R_t
              let s = 0;
              for (let c = 0; c < d; c++) s += q[c]! * K[row * d + c]!;
              return s / Math.sqrt(d);
            });
            const m = Math.max(...logits);
            const e = logits.map((x) => Math.exp(x - m));
            const z = e.reduce((a, b) => a + b, 0);
            let hn = 1;
            if (normalized) {
              let ss = 0;
              for (let k = 0; k < D; k++) ss += hidden[l]![i * D + k]! ** 2;
              hn = Math.sqrt(ss);
            }
            for (let j = 0; j < ce - cs; j++) {
              let p = e[prefix.end + j]! / z;
              if (normalized) {
                const v = cache.head(l, g).v.subarray((cs + j) * d, (cs + j + 1) * d);
                const W = wo(l);
                let ss = 0;
                for (let r = 0; r < D; r++) {
                  let acc = 0;
                  for (let c = 0; c < d; c++) acc += W[r * cfg.numHeads * d + h * d + c]! * v[c]!;
                  ss += acc * acc;
                }
                p = (p / hn) * Math.sqrt(ss);
              }
              const dst = out[l]![g]!;
              if (p > dst[cs - span.start + j]!) dst[cs - span.start + j] = p;
            }
          }
        }
      }
    }
  }
  return out;
}

for (const chunkSize of [2000, 23]) {
  test(`KVzip scores equal a brute-force reduced softmax (chunk size ${chunkSize})`, () => {
    const session = lm.openContext(context);
    const { capture } = session.prefillCapture([]);
    const ctx = session.scoringContext(capture);
    const before = session.cache.clone();
    const got = kvzipScores(ctx, { chunkSize });
    const want = bruteForce(chunkSize);
    got.forEach((layer, l) =>
      layer.forEach((s, g) =>
        s.forEach((x, j) => assert.ok(Math.abs(x - want[l]![g]![j]!) <= 1e-5, `layer ${l} head ${g} pos ${j}: ${x} vs ${want[l]![g]![j]}`)),
      ),
    );
    // Scores are probabilities, and reconstruction leaves the cache as it was.
    assert.ok(got.flat().every((s) => s.every((x) => x > 0 && x <= 1)));
    assert.equal(session.cache.nextPos, before.nextPos);
    session.cache.forEachHead((hs, l, h) => assert.equal(hs.len, before.head(l, h).len));
  });
}

test('KVzip+ scores equal the brute force with ||W_O^h v_j|| / ||h_i|| weighting', () => {
  const session = lm.openContext(context);
  const { capture } = session.prefillCapture([]);
  const got = kvzipScores(session.scoringContext(capture), { normalized: true });
  const want = bruteForce(2000, true);
  got.forEach((layer, l) =>
    layer.forEach((s, g) => s.forEach((x, j) => assert.ok(Math.abs(x - want[l]![g]![j]!) <= 1e-5 * Math.max(1, Math.abs(want[l]![g]![j]!)), `layer ${l} head ${g} pos ${j}: ${x} vs ${want[l]![g]![j]}`))),
  );
});
