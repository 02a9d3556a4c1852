import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DEFAULT_MODEL_DIR } from '../src/engine/loaded-model.ts';
import { ChatTemplateError } from '../src/model/chat-template.ts';
import { loadTokenizer } from '../src/model/tokenizer.ts';

const scratch = mkdtempSync(join(tmpdir(), 'kvlab-template-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
const tokenizerConfig = JSON.parse(readFileSync(join(DEFAULT_MODEL_DIR, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
const tokenizerJson = JSON.parse(readFileSync(join(DEFAULT_MODEL_DIR, 'tokenizer.json'), 'utf8')) as Record<string, Record<string, unknown>>;

/** A copy of the embedded model's tokenizer files, with the given overrides. */
function folder(opts: { template?: string; tokenizer?: unknown }): string {
  const dir = mkdtempSync(join(scratch, 't'));
  for (const f of readdirSync(DEFAULT_MODEL_DIR)) if (f !== 'model.safetensors') copyFileSync(join(DEFAULT_MODEL_DIR, f), join(dir, f));
  if (opts.template !== undefined) writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...tokenizerConfig, chat_template: opts.template }));
  if (opts.tokenizer !== undefined) writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(opts.tokenizer));
  return dir;
}

const chat = [
  { role: 'system' as const, content: 'Your name is Orion.' },
  { role: 'user' as const, content: 'What is your name?' },
];

function templateFails(template: string, pattern: RegExp) {
  const dir = folder({ template });
  assert.throws(
    () => loadTokenizer(dir).chat.render(chat, { addGenerationPrompt: true }),
    (e: Error) => {
      assert.ok(e instanceof ChatTemplateError, `${e.name}: ${e.message}`);
      assert.ok(e.message.startsWith(`${join(dir, 'tokenizer_config.json')}: `), e.message);
      assert.match(e.message, pattern);
      return true;
    },
  );
}

test('a template that loops or grows without end stops at the render limits, naming the file', () => {
  templateFails('{% for i in range(100000000) %}x{% endfor %}', /range\(\) of 100000000 items \(limit 100000\)/);
  templateFails('{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}{% endfor %}{% endfor %}{% endfor %}', /exceeded 102000 steps/);
  templateFails('{% for m in messages %}{% for i in range(99999) %}{{ m.content }}{% endfor %}{% endfor %}', /exceeded 102000 steps/);
  templateFails('{% set ns = namespace(s="xxxxxxxxxxxxxxxx") %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}', /more than 67108864 characters|exceeded/);
});

test('a template that drops a message, does not parse, or raises names the file', () => {
  templateFails('{{ "<|im_start|>assistant\\n" }}', /renders without the content of message 0 \(system\)/);
  templateFails('{% for m in messages %}{% if m.role == "user" %}{{ m.content }}{% endif %}{% endfor %}', /renders without the content of message 0 \(system\)/);
  templateFails('{% for m in messages %}', /chat_template does not parse/);
  templateFails('{{ raise_exception("no system role") }}', /chat_template failed to render \(no system role\)/);
  // The embedded template still renders every message, and trims nothing it should keep.
  const text = loadTokenizer(folder({})).chat.render(chat, { addGenerationPrompt: true });
  for (const m of chat) assert.ok(text.includes(m.content));
});

test('tokenizer.json structure errors and non-regular files name the file', () => {
  const fails = (dir: string, pattern: RegExp) =>
    assert.throws(() => loadTokenizer(dir), (e: Error) => {
      assert.ok(e.message.includes(join(dir, 'tokenizer.json')), e.message);
      assert.match(e.message, pattern);
      return true;
    });
  fails(folder({ tokenizer: { ...tokenizerJson, model: undefined } }), /no "model" object/);
  fails(folder({ tokenizer: { ...tokenizerJson, model: { ...tokenizerJson.model, vocab: 5 } } }), /model\.vocab is missing or not an object/);
  fails(folder({ tokenizer: { ...tokenizerJson, model: { ...tokenizerJson.model, merges: 'a b' } } }), /model\.merges is not a list/);
  fails(folder({ tokenizer: [1, 2] }), /expected a JSON object/);
  const fifo = folder({});
  rmSync(join(fifo, 'tokenizer.json'));
  execFileSync('mkfifo', [join(fifo, 'tokenizer.json')]);
  fails(fifo, /is a FIFO, not a regular file/);
});
