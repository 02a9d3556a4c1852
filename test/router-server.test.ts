import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { NegativePredictor } from '../src/engine/negative-predictor.ts';
import { startServer, type RunningServer } from '../src/server/serve.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel(selectBackend());
// p = sigmoid(4 - 10 r): 0.95, 0.73, 0.27 at 0.1, 0.3, 0.5.
const ratioOnly: NegativePredictor = { kind: 'kvlab-negative-predictor', version: 1, features: ['ratio'], mean: [0], scale: [1], weights: [-10], bias: 4, maxProbability: 0.5 };
let withPredictor: RunningServer;
let without: RunningServer;

before(async () => {
  withPredictor = await startServer({ load: () => lm, port: 0, storeDir: null, log: () => {}, autoPredictor: ratioOnly });
  without = await startServer({ load: () => lm, port: 0, storeDir: null, log: () => {} });
  await Promise.all([withPredictor.ready, without.ready]);
});

after(async () => {
  await Promise.all([withPredictor.shutdown(), without.shutdown()]);
});

async function post(server: RunningServer, body: unknown): Promise<{ status: number; json: any }> {
  const r = await fetch(`${server.url}/v1/contexts`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.status, json: await r.json() };
}

const text = qaRows()[0]!.context.split('\n').slice(0, 3).join('\n');
const candidates = [0.1, 0.3, 0.5];

test('a server with --auto-predictor chooses ratio auto by it; a request can ask for the threshold or another bar', async () => {
  const r = await post(withPredictor, { text, method: 'knorm', ratio: 'auto', auto: { candidates } });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  assert.equal(r.json.auto.rule, 'predictor');
  assert.equal(r.json.auto.chosen, 0.5);
  assert.equal(r.json.ratio, 0.5);
  assert.deepEqual(r.json.auto.candidates.map((c: { negative_probability: number }) => c.negative_probability), [0.1, 0.3, 0.5, 1].map((x) => Math.round((1 / (1 + Math.exp(-(4 - 10 * x)))) * 1e4) / 1e4));
  const lower = await post(withPredictor, { text, method: 'knorm', ratio: 'auto', auto: { candidates, max_probability: 0.8 } });
  assert.equal(lower.json.auto.chosen, 0.3);
  // threshold 0 passes every candidate: the threshold rule keeps the smallest.
  const byThreshold = await post(withPredictor, { text, method: 'knorm', ratio: 'auto', auto: { candidates, rule: 'threshold', threshold: 0 } });
  assert.equal(byThreshold.json.auto.rule, 'threshold');
  assert.equal(byThreshold.json.auto.chosen, 0.1);
});

test('predictor options on a server without one, or bad values, are 400s naming the field', async () => {
  const bad = async (server: RunningServer, auto: unknown, param: string) => {
    const r = await post(server, { text, method: 'knorm', ratio: 'auto', auto });
    assert.equal(r.status, 400, JSON.stringify(r.json));
    assert.equal(r.json.error.param, param);
  };
  await bad(without, { rule: 'predictor' }, 'auto.rule');
  await bad(without, { max_probability: 0.5 }, 'auto.max_probability');
  await bad(withPredictor, { rule: 'oracle' }, 'auto.rule');
  await bad(withPredictor, { max_probability: 0 }, 'auto.max_probability');
  await bad(withPredictor, { rule: 'threshold', max_probability: 0.5 }, 'auto.max_probability');
  const plain = await post(without, { text, method: 'knorm', ratio: 'auto', auto: { candidates } });
  assert.equal(plain.json.auto.rule, 'threshold');
});
