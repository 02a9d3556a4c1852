import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, openSync, readdirSync, rmSync, truncateSync, writeSync, closeSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { generate } from '../src/engine/generate.ts';
import { DEFAULT_MODEL_DIR, loadModel, type LoadedModel } from '../src/engine/loaded-model.ts';
import { ReferenceBackend } from '../src/tensor/reference.ts';
import { nativeAvailable } from '../src/tensor/select-backend.ts';

// A checkpoint that changes on disk under a running process: read into memory (the default), the run
// goes on with the weights it loaded; mapped (opt-in), kvlab refuses to run on the changed file.

const scratch = mkdtempSync(join(tmpdir(), 'kvlab-ckpt-change-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
function copyModel(): string {
  const dir = mkdtempSync(join(scratch, 'm'));
  for (const f of readdirSync(DEFAULT_MODEL_DIR)) copyFileSync(join(DEFAULT_MODEL_DIR, f), join(dir, f));
  return dir;
}

const prompt = (lm: LoadedModel) => lm.tokenizer.encode(lm.tokenizer.chat.render([{ role: 'user', content: 'What is your name?' }], { addGenerationPrompt: true }));
const greedy = async (lm: LoadedModel) => (await generate(lm, lm.newCache(), prompt(lm), { maxTokens: 8 })).tokens;

/** Overwrites the middle of a file with 0xff bytes (NaN in bf16), in place: same size, same inode. */
function scribble(file: string): void {
  const fd = openSync(file, 'r+');
  try {
    const size = statSync(file).size;
    writeSync(fd, Buffer.alloc(65536, 0xff), 0, 65536, Math.floor(size / 2));
  } finally {
    closeSync(fd);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('read into memory by default: truncating or overwriting the checkpoint after load changes nothing', async () => {
  const reference = await greedy(loadModel(DEFAULT_MODEL_DIR, { backend: new ReferenceBackend() }));
  const dir = copyModel();
  const lm = loadModel(dir, { backend: new ReferenceBackend() });
  assert.deepEqual(lm.mappedFiles, []);
  const file = join(dir, 'model.safetensors');
  scribble(file);
  assert.deepEqual(await greedy(lm), reference);
  truncateSync(file, 1000);
  assert.deepEqual(await greedy(lm), reference);
});

test('mapping (opt-in) refuses to run once the mapped file was overwritten, truncated or replaced', { skip: !nativeAvailable() && 'needs the native addon' }, async () => {
  for (const change of ['overwrite', 'truncate', 'replace'] as const) {
    const dir = copyModel();
    const file = join(dir, 'model.safetensors');
    const lm = loadModel(dir, { backend: new ReferenceBackend(), mmap: true });
    assert.equal(lm.mappedFiles.length, 1);
    await greedy(lm);
    await sleep(20); // past the file system's timestamp granularity
    if (change === 'overwrite') scribble(file);
    else if (change === 'truncate') truncateSync(file, 1000);
    else {
      copyFileSync(file, `${file}.new`);
      rmSync(file);
      copyFileSync(`${file}.new`, file);
    }
    const pattern = { overwrite: /was modified since it was mapped/, truncate: /changed size \(\d+ -> 1000 bytes\) since it was mapped/, replace: /was replaced since it was mapped/ }[change];
    await assert.rejects(greedy(lm), (e: Error) => {
      assert.ok(e.message.includes(file), e.message);
      assert.match(e.message, pattern);
      return true;
    });
  }
});
