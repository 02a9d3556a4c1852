/**
 * verify:arch. Its comparison rules are checked on hand-made rows everywhere; the run against llama.cpp
 * itself (every family, f32 precision: exact weights, fp32 caches on both sides) happens where node-llama-cpp is
 * installed in .peer/ (npm run verify:arch installs it) and is skipped with a message where it is not.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { ARCH_FAMILIES } from '../src/bench/arch-families.ts';
import { comparePosition, runArchVerify, topK } from '../src/bench/arch-verify.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';

const PEER_DIR = fileURLToPath(new URL('../.peer', import.meta.url));
const peerInstalled = existsSync(`${PEER_DIR}/node_modules/node-llama-cpp/package.json`);

test('topK: the k largest, largest first, ties to the lower id', () => {
  const row = Float32Array.from([0.5, 3, -1, 3, 2, 7, 0.5]);
  assert.deepEqual(topK(row, 3), [5, 1, 3]);
  assert.deepEqual(topK(row, 7), [5, 1, 3, 4, 0, 6, 2]);
});

test('comparePosition: logits within tolerance, ranks swapped only inside it, sets equal up to the boundary', () => {
  const kv = Float32Array.from([5, 4, 3, 2.995, 1, 0]);
  const top = topK(kv, 4);
  const peer = (vals: number[]) => new Map(vals.map((v, i) => [i, v] as [number, number]));
  assert.equal(comparePosition(kv, top, peer([5, 4, 3, 2.995, 1, 0]), 4, 0.01).mismatch, null);
  // Ids 2 and 3 are 0.005 apart in kvlab: llama.cpp may order them either way.
  assert.equal(comparePosition(kv, top, peer([5, 4, 2.996, 2.999, 1, 0]), 4, 0.01).mismatch, null);
  assert.match(comparePosition(kv, top, peer([5, 4, 3.2, 2.995, 1, 0]), 4, 0.01).mismatch!, /logit difference 2\.00e-1 over tolerance/);
  // Two ids 0.015 apart in kvlab, each moved by less than the tolerance but into the opposite order.
  const near = Float32Array.from([5, 4.985, 3, 2.995, 1, 0]);
  assert.match(comparePosition(near, topK(near, 4), peer([4.992, 4.994, 3, 2.995, 1, 0]), 4, 0.01).mismatch!, /ids 0 and 1 ranked in opposite orders/);
  // Id 4 entering llama.cpp's top 4 while kvlab has it 2 below its 4th.
  assert.match(comparePosition(kv, top, new Map([[0, 5], [1, 4], [2, 3], [3, 2.995], [4, 3.5]]), 4, 0.01).mismatch!, /holds id 4/);
  assert.match(comparePosition(kv, top, new Map([[0, 5]]), 4, 0.01).mismatch!, /no logit for id 1/);
});

test('verify:arch: every family matches llama.cpp at f32 (top-10 ids and logits, 32 greedy tokens)', { skip: peerInstalled ? false : 'node-llama-cpp is not installed in .peer/ (npm run verify:arch installs it)', timeout: 30 * 60_000 }, async () => {
  const lines: string[] = [];
  const { passed, report } = await runArchVerify({ peerDir: PEER_DIR, precisions: ['f32'], threads: 2, backend: selectBackend, log: (l) => lines.push(l) });
  const results = report.results as { family: string; passed: boolean; max_logit_diff: number }[];
  assert.deepEqual(results.map((r) => r.family), ARCH_FAMILIES.map((f) => f.name));
  assert.ok(passed, lines.join('\n'));
});
