import assert from 'node:assert/strict';
import { test } from 'node:test';
import { prepareContexts, servingSettings, servePlots, runServeBench } from '../src/bench/serve-bench.ts';
import { percentile, requestLatency, summarizeRequests, summarizeTimeline } from '../src/bench/serve-metrics.ts';
import { replayInProcess } from '../src/bench/serve-replay.ts';
import { parseOutputLengths, poissonTrace, type TraceSpec } from '../src/bench/serve-trace.ts';
import { ContextSession } from '../src/engine/context-session.ts';
import { conversationContext } from '../src/engine/conversation-context.ts';
import { loadQa } from '../src/eval/datasets.ts';
import { getPress } from '../src/press/registry.ts';
import { compressContext } from '../src/engine/compress-context.ts';
import { DEFAULT_MODEL_DIR, loadModel } from '../src/engine/loaded-model.ts';
import { NativeBackend } from '../src/tensor/native.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';

const spec: TraceSpec = { rate: 5, requests: 400, seed: 7, questionsPerContext: [5, 3, 4], outputTokens: { kind: 'uniform', min: 4, max: 9 } };

test('the trace is a function of its seed: the same seed replays the same arrivals, contexts, questions and lengths', () => {
  const a = poissonTrace(spec);
  assert.deepEqual(poissonTrace(spec), a);
  assert.notDeepEqual(poissonTrace({ ...spec, seed: 8 }), a);
  for (const r of a) {
    assert.ok(r.questionIndex < spec.questionsPerContext[r.contextIndex]!);
    assert.ok(r.maxTokens >= 4 && r.maxTokens <= 9);
  }
  assert.ok(a.every((r, i) => i === 0 || r.arrivalMs > a[i - 1]!.arrivalMs), 'arrivals increase');
  // Exponential gaps: mean 1/rate; the standard error over 400 gaps is 5% of it.
  const meanGap = a[a.length - 1]!.arrivalMs / a.length;
  assert.ok(Math.abs(meanGap - 200) < 30, `mean gap ${meanGap} ms at 5 req/s`);
  assert.equal(new Set(a.map((r) => r.maxTokens)).size, 6, 'every length of uniform:4-9 is drawn');
  assert.deepEqual(parseOutputLengths('fixed:32'), { kind: 'fixed', tokens: 32 });
  assert.throws(() => parseOutputLengths('uniform:9-4'), /uniform:A-B/);
  assert.throws(() => poissonTrace({ ...spec, rate: 0 }), /arrival rate/);
});

test('TTFT, TPOT, e2e and throughput from recorded timestamps match the hand-worked example', () => {
  const records = [
    { arrivalMs: 0, firstTokenMs: 100, endMs: 400, outputTokens: 4 },
    { arrivalMs: 50, firstTokenMs: 250, endMs: 250, outputTokens: 1 },
    { arrivalMs: 100, firstTokenMs: 130, endMs: 330, outputTokens: 5 },
  ];
  assert.deepEqual(requestLatency(records[0]!), { ttftMs: 100, tpotMs: 100, e2eMs: 400 });
  assert.deepEqual(requestLatency(records[1]!), { ttftMs: 200, tpotMs: null, e2eMs: 200 });
  assert.deepEqual(requestLatency(records[2]!), { ttftMs: 30, tpotMs: 50, e2eMs: 230 });
  const s = summarizeRequests(records);
  assert.equal(s.durationMs, 400);
  assert.equal(s.requestsPerSecond, 7.5);
  assert.equal(s.outputTokensPerSecond, 25);
  const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-9, `${a} vs ${b}`);
  // TTFT sorted 30, 100, 200: p90 sits at 1.8 order statistics, 100 + 0.8 * 100.
  close(s.ttftMs.p50, 100);
  close(s.ttftMs.p90, 180);
  close(s.ttftMs.p99, 198);
  close(s.ttftMs.mean, 110);
  close(s.tpotMs.p50, 75);
  close(s.tpotMs.p90, 95);
  assert.equal(s.tpotMs.n, 2);
  close(s.e2eMs.p50, 230);
  close(s.e2eMs.p90, 366);
  assert.equal(percentile([5], 99), 5);
  assert.throws(() => requestLatency({ arrivalMs: 10, firstTokenMs: 5, endMs: 20, outputTokens: 2 }), /out of order/);
  // Batch 1 for 10 ms, 3 for 20 ms, 2 for 10 ms: time-weighted mean 90 / 40.
  const tl = summarizeTimeline([
    { t: 0, running: 1, waiting: 0, poolBytes: 10 },
    { t: 10, running: 3, waiting: 2, poolBytes: 30 },
    { t: 30, running: 2, waiting: 0, poolBytes: 20 },
    { t: 40, running: 0, waiting: 0, poolBytes: 0 },
  ]);
  assert.deepEqual(tl, { maxBatch: 3, meanBatch: 2.25, maxWaiting: 2, peakPoolBytes: 30 });
});

test('settings: full once, then every method below ratio 1; unknown methods are refused by the registry', () => {
  assert.deepEqual(servingSettings(['full', 'kvzip'], [1, 0.5]), [
    { method: 'full', ratio: 1 },
    { method: 'kvzip', ratio: 0.5 },
  ]);
  assert.deepEqual(servingSettings(['snapkv'], [0.3]), [{ method: 'snapkv', ratio: 0.3 }]);
  assert.throws(() => servingSettings(['nope'], [0.5]), /unknown method "nope"/);
  assert.throws(() => servingSettings(['kvzip'], [0]), /ratio 0/);
});

const lm = loadModel(DEFAULT_MODEL_DIR, { backend: nativeAvailable() ? new NativeBackend({ bf16Activations: false }) : new ReferenceBackend() });
const rows = loadQa('data/dev/qa.jsonl').filter((r) => (r.context_tokens ?? 0) < 500).slice(0, 2);

test('in-process replay: every request ends with the answer the context session gives alone, and memory bounds the batch', async () => {
  const trace = poissonTrace({ rate: 200, requests: 6, seed: 3, questionsPerContext: rows.map((r) => r.questions.length), outputTokens: { kind: 'fixed', tokens: 4 } });
  for (const setting of [{ method: 'full', ratio: 1 }, { method: 'snapkv', ratio: 0.1 }]) {
    const { contexts } = prepareContexts(lm, rows, setting, 'Question: {query}');
    const biggest = Math.max(...contexts.map((c) => c.pooledBytes));
    // Room for one full context and its rows, so full runs one request at a time; 0.1 of it fits several.
    const fullBytes = setting.method === 'full' ? biggest : prepareContexts(lm, rows, { method: 'full', ratio: 1 }, 'Question: {query}').contexts.reduce((m, c) => Math.max(m, c.pooledBytes), 0);
    const poolBytes = Math.floor(fullBytes * 1.5);
    const res = await replayInProcess(lm, contexts, trace, { poolBytes, maxBatch: 8, temperature: 0, seed: 1, sampleMs: 1 });
    assert.equal(res.failed.length, 0, JSON.stringify(res.failed));
    assert.equal(res.records.length, trace.length);
    assert.ok(res.peakPoolBytes <= poolBytes);
    const maxBatch = Math.max(...res.timeline.map((s) => s.running));
    if (setting.method === 'full') assert.equal(maxBatch, 1, 'one full context at a time');
    else assert.ok(maxBatch > 1, `compressed contexts run together (max batch ${maxBatch})`);
    const sessions = rows.map((row) => {
      const ctx = conversationContext(lm, { kind: 'text', text: row.context });
      return setting.method === 'full' ? new ContextSession(lm, ctx.layout) : compressContext(lm, ctx, getPress(setting.method), setting.ratio, undefined).session;
    });
    for (const r of res.records) {
      const t = trace[r.index]!;
      const session = sessions[t.contextIndex]!;
      const alone = await session.ask(`Question: ${rows[t.contextIndex]!.questions[t.questionIndex]}`, { maxTokens: t.maxTokens });
      assert.equal(r.outputTokens, alone.tokens.length, `request ${r.index} under ${setting.method}`);
      assert.ok(r.arrivalMs <= r.submitMs && r.submitMs <= r.firstTokenMs && r.firstTokenMs <= r.endMs);
    }
    contexts.forEach((c) => c.shared.cache.release());
  }
});

test('runServeBench reports one entry per setting and rate, and plots throughput against ratio', async () => {
  const { entries, report } = await runServeBench(lm, {
    rows,
    methods: ['full', 'streamingllm'],
    ratios: [1, 0.5],
    rates: [100, 400],
    requests: 3,
    rounds: 2,
    seed: 2,
    outputTokens: { kind: 'fixed', tokens: 2 },
    queryTemplate: 'Question: {query}',
    poolBytes: 64 << 20,
    maxBatch: 4,
    temperature: 0,
    sampleMs: 2,
    log: () => {},
  });
  assert.deepEqual(entries.map((e) => [e.method, e.ratio, e.rate]), [
    ['full', 1, 100],
    ['full', 1, 400],
    ['streamingllm', 0.5, 100],
    ['streamingllm', 0.5, 400],
  ]);
  for (const e of entries) {
    assert.equal(e.summary.completed, 6, 'two rounds of three requests');
    assert.equal(e.rounds_requests_per_second.length, 2);
  }
  assert.ok(entries[2]!.context_bytes! < entries[0]!.context_bytes!, 'a compressed context takes fewer pool bytes');
  assert.ok((report.machine as { cpu: string }).cpu);
  const plots = servePlots(entries);
  assert.deepEqual(Object.keys(plots).sort(), ['batch.svg', 'e2e-cdf-100.svg', 'e2e-cdf-400.svg', 'throughput.svg', 'token-throughput.svg', 'ttft-cdf-100.svg', 'ttft-cdf-400.svg']);
  assert.match(plots['throughput.svg']!, /streamingllm @ 400\/s/);
});

test('over HTTP (kvlab serve, openai client) the same trace gets the answers the in-process replay gives', async () => {
  const { startServer } = await import('../src/server/serve.ts');
  const server = await startServer({ load: () => lm, port: 0, storeDir: null, kvMemoryBytes: 64 << 20, log: () => {} });
  await server.ready;
  try {
    const common = { rows, methods: ['snapkv'], ratios: [0.5], rates: [50], requests: 4, rounds: 1, seed: 5, outputTokens: { kind: 'fixed', tokens: 5 } as const, queryTemplate: 'Question: {query}', poolBytes: 64 << 20, maxBatch: 4, temperature: 0, sampleMs: 2, log: () => {} };
    const http = await runServeBench(null, { ...common, url: server.url });
    const local = await runServeBench(lm, common);
    assert.equal(http.entries.length, 1);
    const e = http.entries[0]!;
    assert.equal(e.failed, 0, e.errors.join('; '));
    assert.equal(e.summary.completed, 4);
    assert.equal(e.batch, null, 'the server keeps its own batch');
    assert.deepEqual(e.per_request.map((r) => r.output_tokens), local.entries[0]!.per_request.map((r) => r.output_tokens));
    assert.ok(e.per_request.every((r) => r.ttft_ms <= r.e2e_ms));
  } finally {
    await server.shutdown();
  }
});
