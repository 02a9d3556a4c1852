import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { goldenPrompts, tinyModel } from './helpers/tiny-model.ts';

const lm = tinyModel();
const TOL = 1e-3;

for (const g of goldenPrompts()) {
  test(`golden ${g.name}: token ids and top-10 logits (reference backend)`, () => {
    const ids = lm.tokenizer.encode(g.text);
    assert.deepEqual(ids, g.input_ids);
    const cache = lm.newCache();
    const logits = lm.model.forward(ids, cache, { logits: 'all' })!;
    const V = lm.model.weights.lmHead.rows;
    for (const at of g.logits) {
      const row = logits.subarray(at.position * V, (at.position + 1) * V);
      const top = [...row.keys()].sort((a, b) => row[b]! - row[a]! || a - b).slice(0, 10);
      assert.deepEqual(top, at.top10_ids, `top-10 ids at position ${at.position}`);
      at.top10_ids.forEach((id, i) => {
        const diff = Math.abs(row[id]! - at.top10_logits[i]!);
        assert.ok(diff <= TOL, `logit of ${id} at ${at.position}: ${row[id]} vs ${at.top10_logits[i]} (|diff| ${diff})`);
      });
    }
  });
}

const cli = fileURLToPath(new URL('../bin/kvlab.js', import.meta.url));
for (const g of goldenPrompts()) {
  test(`golden ${g.name}: kvlab generate --raw --temperature 0 --json reproduces the greedy continuation`, () => {
    const out = execFileSync(process.execPath, [cli, 'generate', '--raw', '--temperature', '0', '--json', '--max-tokens', '64', '--prompt', g.text], {
      encoding: 'utf8',
      env: { ...process.env, KVLAB_BACKEND: 'reference' },
    });
    const r = JSON.parse(out) as { text: string; tokens: number[]; prompt_tokens: number; finish_reason: string };
    assert.deepEqual(r.tokens, g.greedy_ids);
    assert.equal(r.text, g.greedy_text);
    assert.equal(r.prompt_tokens, g.input_ids.length);
    assert.equal(r.finish_reason, g.stopped_on_eos ? 'stop' : 'length');
  });
}
