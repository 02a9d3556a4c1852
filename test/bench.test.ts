import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { median, quartiles } from '../src/bench/machine-limits.ts';
import { nativeAvailable, nativeInfo } from '../src/tensor/select-backend.ts';

const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
const skip = nativeAvailable() ? false : 'native addon not built (npm run build:native)';

interface Decode {
  context: number;
  kv_dtype: string;
  tokens_per_s: number;
  ms_per_token: number;
  bytes_per_token: number;
  kv_bytes: number;
  bandwidth_gbs_around: number;
  bound_tokens_per_s: number;
  fraction_of_bound: number;
  bandwidth_gbs_rounds: number[];
  ms_per_token_rounds: number[];
  fraction_of_bound_rounds: number[];
  fraction_of_bound_quartiles: number[];
  time_by_op_ms_per_token: Record<string, number>;
  matmul_gbs: number;
  matmul_fraction_of_bandwidth: number;
}

test('quartiles interpolate between order statistics, whatever the input order', () => {
  assert.deepEqual(quartiles([5, 1, 4, 2, 3]), [2, 4]);
  assert.deepEqual(quartiles([4, 1, 3, 2]), [1.75, 3.25]);
  assert.deepEqual(quartiles([7]), [7, 7]);
});

test('bench --quick: the JSON report holds the machine limits and every figure beside its bound', { skip }, () => {
  const out = join(mkdtempSync(join(tmpdir(), 'kvlab-bench-')), 'bench.json');
  const stdout = execFileSync(process.execPath, [cli, 'bench', '--quick', '-o', out], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const report = JSON.parse(readFileSync(out, 'utf8'));
  assert.deepEqual(JSON.parse(stdout), report);
  assert.ok(report.machine.bandwidthGBs > 0 && report.machine.threads >= 1);
  assert.deepEqual(
    report.models.map((m: { model: string; weights: string }) => `${m.model}/${m.weights}`),
    ['tiny/bf16', 'tiny/int8'],
  );
  const cfg = JSON.parse(readFileSync(fileURLToPath(new URL('../models/kvlab-tiny-chat/config.json', import.meta.url)), 'utf8'));
  for (const m of report.models) {
    assert.ok(m.prefill.tokens_per_s > 0 && m.prefill.matmul_gflops > 0);
    // The op times are those of the prefill run the other prefill figures come from.
    const prefillMs = (m.prefill.tokens / m.prefill.tokens_per_s) * 1000;
    assert.ok(Math.abs(m.prefill.time_by_op_ms.matmul / prefillMs - m.prefill.matmul_share_of_time) < 0.03, JSON.stringify(m.prefill));
    const [d, bf] = m.decode as Decode[];
    assert.equal(d!.context, 1024);
    assert.equal(d!.kv_dtype, 'f32');
    // fp32 keys and values of every layer and KV head.
    assert.equal(d!.kv_bytes, cfg.num_hidden_layers * cfg.num_key_value_heads * 1024 * cfg.head_dim * 2 * 4);
    assert.equal(d!.bytes_per_token, m.decode_weight_bytes + d!.kv_bytes);
    // The same context on a bf16 cache: half the cache bytes in the bound.
    assert.deepEqual([bf!.context, bf!.kv_dtype, bf!.kv_bytes * 2], [1024, 'bf16', d!.kv_bytes]);
    assert.equal(bf!.bytes_per_token, m.decode_weight_bytes + bf!.kv_bytes);
    assert.ok(bf!.fraction_of_bound > 0 && bf!.tokens_per_s > 0);
    assert.ok(Math.abs(d!.bound_tokens_per_s - (d!.bandwidth_gbs_around * 1e9) / d!.bytes_per_token) <= 0.1 * d!.bound_tokens_per_s);
    // Each round pairs a probe pass with the steps right after it; the fraction is the median over rounds.
    assert.equal(d!.fraction_of_bound_rounds.length, d!.bandwidth_gbs_rounds.length);
    d!.fraction_of_bound_rounds.forEach((f, r) => {
      const expected = d!.bytes_per_token / (d!.bandwidth_gbs_rounds[r]! * 1e9) / (d!.ms_per_token_rounds[r]! / 1000);
      assert.ok(Math.abs(f - expected) <= 0.01 * expected + 0.002, `round ${r}: ${f} vs ${expected}`);
    });
    assert.ok(Math.abs(d!.fraction_of_bound - median(d!.fraction_of_bound_rounds)) < 0.002);
    const [q1, q3] = d!.fraction_of_bound_quartiles;
    assert.ok(q1! <= d!.fraction_of_bound + 0.002 && d!.fraction_of_bound <= q3! + 0.002, `quartiles ${q1}-${q3} around ${d!.fraction_of_bound}`);
    assert.ok(d!.fraction_of_bound_rounds.filter((f) => f < q1! - 0.002).length <= d!.fraction_of_bound_rounds.length / 4);
    assert.ok(d!.time_by_op_ms_per_token.matmul! > 0 && d!.time_by_op_ms_per_token.attention! > 0);
    assert.ok(d!.matmul_gbs > 0 && d!.matmul_fraction_of_bandwidth > 0);
  }
  const int8 = report.int8_vs_bf16[0].decode_speedup[0];
  assert.equal(int8.context, 1024);
  assert.ok(int8.ratio > 0);
  // The same two models timed in alternating rounds: a median of per-round ratios, near the ratio of medians.
  const [alt, altBf16] = report.int8_vs_bf16[0].decode_speedup_alternating;
  assert.deepEqual([alt.context, alt.kv_dtype, altBf16.context, altBf16.kv_dtype], [1024, 'f32', 1024, 'bf16']);
  assert.ok(alt.rounds >= 1 && alt.bf16_ms_per_token > 0 && alt.int8_ms_per_token > 0);
  assert.ok(Math.abs(Math.log(alt.ratio / (alt.bf16_ms_per_token / alt.int8_ms_per_token))) < Math.log(1.5), JSON.stringify(alt));
  // One model on an fp32 and a bf16 cache, alternating.
  const [kv] = report.kv_bf16_vs_f32[0].decode_speedup_alternating;
  assert.equal(report.kv_bf16_vs_f32[0].model, 'tiny');
  assert.ok(kv.context === 1024 && kv.f32_ms_per_token > 0 && kv.bf16_ms_per_token > 0);
  assert.ok(Math.abs(Math.log(kv.ratio / (kv.f32_ms_per_token / kv.bf16_ms_per_token))) < Math.log(1.5), JSON.stringify(kv));
  assert.equal(report.kvzip, null);
});

/** GB/s (rounded to 0.1) is bytes over milliseconds (rounded to 0.01): small test shapes take ~0.1 ms, so allow for the rounding. */
function assertRateFromTime(GBs: number, bytes: number, ms: number): void {
  const lo = bytes / ((ms + 0.005) * 1e6) - 0.05;
  const hi = ms > 0.005 ? bytes / ((ms - 0.005) * 1e6) + 0.05 : Infinity;
  assert.ok(GBs >= lo && GBs <= hi, `${GBs} GB/s from ${bytes} bytes in ${ms} ms`);
}

/** A fraction (rounded to 0.01 or finer) of two rates each rounded to 0.1. */
function assertFraction(fraction: number, GBs: number, streamGBs: number): void {
  const lo = (GBs - 0.05) / (streamGBs + 0.05) - 0.005;
  const hi = (GBs + 0.05) / (streamGBs - 0.05) + 0.005;
  assert.ok(fraction >= lo && fraction <= hi, `${fraction} of ${GBs} / ${streamGBs}`);
}

test("kernel bench: a decode token's matmuls against the streaming probe", { skip }, async () => {
  const { benchDecodeMatmuls } = await import('../src/bench/kernels.ts');
  const { NativeBackend } = await import('../src/tensor/native.ts');
  const shape = { name: 'small', layers: 2, hidden: 256, intermediate: 512, kvDim: 64, vocab: 1000 };
  for (const dtype of ['bf16', 'int8/g128'] as const) {
    const r = benchDecodeMatmuls(new NativeBackend(), shape, dtype, 2);
    const perLayer = 2 * 256 * 256 + 2 * 64 * 256 + 3 * 256 * 512;
    const elements = 2 * perLayer + 1000 * 256;
    assert.equal(r.bytes, dtype === 'bf16' ? 2 * elements : elements + (elements / 128) * 4);
    assert.ok(r.ms > 0 && r.GBs >= 0 && r.streamGBs > 0, JSON.stringify(r)); // GBs rounds to 0.0 on a saturated host
    assertRateFromTime(r.GBs, r.bytes, r.ms);
    assertFraction(r.fractionOfBandwidth, r.GBs, r.streamGBs);
  }
});

test('kernel bench: decode attention against the streaming probe, with the path it took', { skip }, async () => {
  const { benchDecodeAttention } = await import('../src/bench/kernels.ts');
  const { NativeBackend } = await import('../src/tensor/native.ts');
  const r = benchDecodeAttention(new NativeBackend(), { name: 'small', layers: 2, heads: 6, kvHeads: 2, headDim: 64 }, 300, 2);
  assert.equal(r.kvBytes, 2 * 2 * 300 * 64 * 4 * 2);
  assert.equal(r.path, nativeInfo()!.paths.attention);
  assert.ok(r.ms > 0 && r.GBs >= 0 && r.streamGBs > 0, JSON.stringify(r)); // GBs rounds to 0.0 on a saturated host
  assertRateFromTime(r.GBs, r.kvBytes, r.ms);
  assertFraction(r.fractionOfBandwidth, r.GBs, r.streamGBs);
});
