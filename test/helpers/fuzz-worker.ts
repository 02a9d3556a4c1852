// Child process of test/checkpoint-fuzz.test.ts: loads each checkpoint folder it is sent and runs a short
// greedy generation, reporting the tokens and a digest of the first logits, or the error; and its peak
// memory. A crash or hang here costs the parent one case, not the suite.
import { createHash } from 'node:crypto';
import { generate } from '../../src/engine/generate.ts';
import { loadModel } from '../../src/engine/loaded-model.ts';
import { prefill } from '../../src/model/prefill.ts';
import { selectBackend } from '../../src/tensor/select-backend.ts';

export interface FuzzRequest {
  id: number;
  dir: string;
}

export type FuzzReply = { id: number; maxRssKiB: number } & ({ ok: true; tokens: number[]; logits: string } | { ok: false; name: string; message: string });

const backend = selectBackend();
const PROMPT = '<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n';

process.on('message', async (req: FuzzRequest) => {
  let reply: FuzzReply;
  try {
    const lm = loadModel(req.dir, { backend });
    const ids = lm.tokenizer.encode(PROMPT);
    const first = prefill(lm.model, lm.newCache(), ids);
    const logits = createHash('sha256').update(new Uint8Array(first.buffer, first.byteOffset, first.byteLength)).digest('hex');
    const { tokens } = await generate(lm, lm.newCache(), ids, { maxTokens: 4, stopIds: [] });
    reply = { id: req.id, ok: true, tokens, logits, maxRssKiB: process.resourceUsage().maxRSS };
  } catch (e) {
    const err = e as Error;
    reply = { id: req.id, ok: false, name: err?.name ?? typeof e, message: String(err?.message ?? e), maxRssKiB: process.resourceUsage().maxRSS };
  }
  process.send!(reply);
});
process.send!({ ready: true });
