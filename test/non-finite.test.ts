import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { generate } from '../src/engine/generate.ts';
import { DEFAULT_MODEL_DIR, loadModel, type LoadedModel } from '../src/engine/loaded-model.ts';
import { NonFiniteError } from '../src/model/non-finite.ts';
import { ReferenceBackend, widenWeight } from '../src/tensor/reference.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';

const scratch = mkdtempSync(join(tmpdir(), 'kvlab-nonfinite-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

/** A copy of the embedded checkpoint with one bf16 element of `tensor` set to `bits` (0x7fc0 NaN, 0x7f80 +Inf). */
function poisoned(tensor: string, element: number, bits: number): string {
  const dir = mkdtempSync(join(scratch, 'm'));
  for (const f of readdirSync(DEFAULT_MODEL_DIR)) copyFileSync(join(DEFAULT_MODEL_DIR, f), join(dir, f));
  const file = join(dir, 'model.safetensors');
  const bytes = readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString()) as Record<string, { data_offsets: [number, number] }>;
  bytes.writeUInt16LE(bits, 8 + headerLen + header[tensor]!.data_offsets[0] + 2 * element);
  writeFileSync(file, bytes);
  return dir;
}

// The last two layers of whichever model is shipped.
const LAST = (JSON.parse(readFileSync(join(DEFAULT_MODEL_DIR, 'config.json'), 'utf8')) as { num_hidden_layers: number }).num_hidden_layers - 1;

const prompt = (lm: LoadedModel) => lm.tokenizer.encode(lm.tokenizer.chat.render([{ role: 'user', content: 'What is your name?' }], { addGenerationPrompt: true }));

const cases: [string, number, number, RegExp][] = [
  ['model.layers.2.mlp.down_proj.weight', 5, 0x7fc0, /layer 2 is the first whose output is not finite; non-finite weights in model\.layers\.2\.mlp\.down_proj\.weight/],
  [`model.layers.${LAST - 1}.self_attn.q_proj.weight`, 300, 0x7f80, new RegExp(`layer ${LAST - 1} is the first .*model\\.layers\\.${LAST - 1}\\.self_attn\\.q_proj\\.weight`)],
  ['model.layers.0.input_layernorm.weight', 7, 0xff80, /layer 0 is the first .*model\.layers\.0\.input_layernorm\.weight/],
  [`model.layers.${LAST}.mlp.up_proj.weight`, 11, 0x7fc0, new RegExp(`layer ${LAST} is the first .*model\\.layers\\.${LAST}\\.mlp\\.up_proj\\.weight`)],
  ['model.norm.weight', 3, 0x7fc0, /the final norm \/ LM head is the first .*model\.norm\.weight/],
];

for (const backend of [new ReferenceBackend(), selectBackend()]) {
  for (const [tensor, element, bits, pattern] of cases) {
    test(`[${backend.name}] a non-finite ${tensor} fails the prefill naming the layer and tensor (not a silent token 0)`, async () => {
      const lm = loadModel(poisoned(tensor, element, bits), { backend });
      const cache = lm.newCache();
      let inPrefill = true;
      await assert.rejects(generate(lm, cache, prompt(lm), { maxTokens: 4 }), (e: Error) => {
        inPrefill = /after the prefill/.test(e.message);
        assert.ok(e instanceof NonFiniteError, `${e.name}: ${e.message}`);
        // The prefill's logits are checked; a kernel that keeps a broken head's rows finite is caught a step later.
        assert.match(e.message, backend.name === 'reference' ? /non-finite logits .* after the prefill of \d+ tokens/ : /non-finite logits .* after (the prefill of \d+ tokens|decode step 1):/);
        assert.match(e.message, pattern);
        return true;
      });
      assert.equal(cache.nextPos, inPrefill ? 0 : prompt(lm).length, 'the failed pass is taken back out of the cache');
    });
  }
}

test('a weight turning non-finite between decode steps fails that step, naming the layer', async () => {
  const lm = loadModel(DEFAULT_MODEL_DIR, { backend: new ReferenceBackend() });
  // The reference backend reads its cached fp32 copy of each weight; poison that copy mid-run.
  const wv = widenWeight(lm.model.weights.layers[1]!.wv);
  const saved = wv[0]!;
  let steps = 0;
  try {
    await assert.rejects(
      generate(lm, lm.newCache(), prompt(lm), {
        maxTokens: 6,
        stopIds: [],
        onText: () => {
          if (++steps === 1) wv[0] = NaN;
        },
      }),
      /non-finite logits .* after decode step \d+: layer 1 is the first whose output is not finite/,
    );
  } finally {
    wv[0] = saved;
  }
});
