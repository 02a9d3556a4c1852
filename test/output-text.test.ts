import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OutputText, firstStop } from '../src/engine/stop-strings.ts';
import { loadTokenizer } from '../src/model/tokenizer.ts';

const tokenizer = loadTokenizer('models/kvlab-tiny-chat');
const decodeAll = (ids: number[]) => (ids.length ? tokenizer.decode(ids, { skipSpecialTokens: true }) : '');

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('incremental text equals decoding every token so far, at every step (random ids, multi-byte text, special tokens)', () => {
  const text = 'Größe: 42 ° — naïve café, 東京 and 🙂🙃 emoji; <|im_start|> mid-text. Ça va? ';
  const sequences = [tokenizer.encode(text.repeat(3))];
  for (let seed = 1; seed <= 6; seed++) {
    const r = lcg(seed);
    sequences.push(Array.from({ length: 400 }, () => Math.floor(r() * 2048)));
  }
  for (const ids of sequences) {
    const out = new OutputText(tokenizer, new Set(), []);
    for (let i = 0; i < ids.length; i++) {
      assert.equal(out.push(ids[i]), false);
      assert.equal(out.text, decodeAll(ids.slice(0, i + 1)), `step ${i}`);
    }
  }
  const out = new OutputText(tokenizer, new Set(), []);
  for (const id of tokenizer.encode(text)) out.push(id);
  assert.equal(out.text, text.replace('<|im_start|>', ''), 'special tokens are skipped, every other character is back');
});

test('a decoder that drops the leading space of what it decodes: the window keeps the spaces between pieces', () => {
  const pieces = [' The', ' cat', ' sat', '.', ' On', ' the', ' mat', '!'];
  const spm = { decode: (ids: number[]) => ids.map((i) => pieces[i]).join('').replace(/^ /, '') };
  const out = new OutputText(spm, new Set(), []);
  const ids = [0, 1, 2, 3, 4, 5, 6, 7, 1, 2];
  for (let i = 0; i < ids.length; i++) {
    out.push(ids[i]);
    assert.equal(out.text, spm.decode(ids.slice(0, i + 1)));
  }
});

test('stop strings cut where the earliest one starts, as a scan of the whole text would, also across tokens and multi-byte characters', () => {
  const r = lcg(7);
  for (let trial = 0; trial < 40; trial++) {
    const ids = Array.from({ length: 150 }, () => Math.floor(r() * 2048));
    const full = decodeAll(ids);
    const at = 20 + Math.floor(r() * (full.length - 40));
    const stops = [full.slice(at, at + 1 + Math.floor(r() * 6)), 'never in here \u0001'];
    const out = new OutputText(tokenizer, new Set(), stops);
    let ended = -1;
    for (let i = 0; i < ids.length && ended < 0; i++) if (out.push(ids[i])) ended = i;
    assert.ok(ended >= 0, `trial ${trial}: the stop string in the text ended it`);
    const upTo = decodeAll(ids.slice(0, ended + 1));
    assert.equal(out.text, upTo.slice(0, firstStop(upTo, stops)), `trial ${trial}`);
    assert.ok(firstStop(decodeAll(ids.slice(0, ended)), stops) < 0, `trial ${trial}: no earlier step held the stop string`);
  }
  const emoji = new OutputText(tokenizer, new Set(), ['🙂!']);
  const ids = tokenizer.encode('ab🙂!cd');
  let stoppedAt = -1;
  ids.forEach((id, i) => {
    if (stoppedAt < 0 && emoji.push(id)) stoppedAt = i;
  });
  assert.ok(stoppedAt >= 0);
  assert.equal(emoji.text, 'ab');
});

test('takeStable hands out each character once, never a part a later token can change; stop ids end before the token', () => {
  const text = 'naïve 🙂 text END tail';
  const out = new OutputText(tokenizer, new Set([9999]), [' END']);
  let streamed = '';
  for (const id of tokenizer.encode(text)) {
    if (out.push(id)) break;
    const d = out.takeStable();
    assert.ok(!d.includes('\uFFFD'));
    streamed += d;
  }
  streamed += out.takeRest();
  assert.equal(streamed, 'naïve 🙂 text');
  const stopped = new OutputText(tokenizer, new Set([5]), []);
  assert.equal(stopped.push(5), true);
  assert.deepEqual(stopped.tokens, []);
});
