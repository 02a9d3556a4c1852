/**
 * Checks a Hugging Face folder against its own golden.json with the TS engine (reference backend, fp32):
 * token ids, top-10 ids and logits (|diff| <= 1e-3) at the golden positions, and the greedy continuation
 * (stop at <|im_end|>, at most 64 tokens). It is the check a retrained checkpoint passes before it replaces
 * models/kvlab-tiny-chat, where test/golden.test.ts then runs the same comparison on every backend.
 *
 *   npx tsx scripts/check-golden.ts DIR
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel } from '../src/engine/loaded-model.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';

interface Golden {
  prompts: {
    name: string;
    text: string;
    input_ids: number[];
    logits: { position: number; top10_ids: number[]; top10_logits: number[] }[];
    greedy_ids: number[];
    stopped_on_eos: boolean;
  }[];
}

const IM_END = 2047;
const MAX_NEW = 64;
const TOL = 1e-3;

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

function main(): number {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: tsx scripts/check-golden.ts DIR (a folder with config.json, model.safetensors, tokenizer.json, golden.json)');
    return 2;
  }
  const golden = JSON.parse(readFileSync(join(dir, 'golden.json'), 'utf8')) as Golden;
  const lm = loadModel(dir, { backend: new ReferenceBackend(), mmap: false });
  const V = lm.model.weights.lmHead.rows;
  let failures = 0;
  for (const g of golden.prompts) {
    const problems: string[] = [];
    const ids = lm.tokenizer.encode(g.text);
    if (JSON.stringify(ids) !== JSON.stringify(g.input_ids)) problems.push('token ids differ');
    const cache = lm.newCache();
    const logits = lm.model.forward(ids, cache, { logits: 'all' })!;
    let maxDiff = 0;
    for (const at of g.logits) {
      const row = logits.subarray(at.position * V, (at.position + 1) * V);
      const top = [...row.keys()].sort((a, b) => row[b]! - row[a]! || a - b).slice(0, 10);
      if (JSON.stringify(top) !== JSON.stringify(at.top10_ids)) problems.push(`top-10 ids differ at position ${at.position}`);
      at.top10_ids.forEach((id, i) => (maxDiff = Math.max(maxDiff, Math.abs(row[id]! - at.top10_logits[i]!))));
    }
    if (maxDiff > TOL) problems.push(`top-10 logits differ by up to ${maxDiff.toExponential(2)} (> ${TOL})`);
    const out: number[] = [];
    let next = argmax(logits.subarray((ids.length - 1) * V, ids.length * V));
    while (next !== IM_END && out.length < MAX_NEW) {
      out.push(next);
      next = argmax(lm.model.forward([next], cache)!);
    }
    if (JSON.stringify(out) !== JSON.stringify(g.greedy_ids)) problems.push(`greedy continuation differs (${out.length} vs ${g.greedy_ids.length} tokens)`);
    if ((next === IM_END) !== g.stopped_on_eos) problems.push('stop reason differs');
    console.log(`${g.name}: ${problems.length ? 'FAIL ' + problems.join('; ') : 'ok'} (max top-10 logit diff ${maxDiff.toExponential(2)})`);
    failures += problems.length ? 1 : 0;
  }
  return failures ? 1 : 0;
}

process.exitCode = main();
