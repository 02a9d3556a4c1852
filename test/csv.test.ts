import assert from 'node:assert/strict';
import { test } from 'node:test';
import { csvField, toCsv } from '../src/eval/csv.ts';

test('RFC 4180: CRLF rows, quoting only where needed, quotes doubled', () => {
  assert.equal(toCsv([{ a: 'x,y', b: 'say "hi"' }, { a: 1 }]), 'a,b\r\n"x,y","say ""hi"""\r\n1,\r\n');
  assert.equal(csvField('line\nbreak'), '"line\nbreak"');
  assert.equal(csvField('cr\rhere'), '"cr\rhere"');
  assert.equal(csvField(' spaced '), ' spaced ');
  assert.equal(csvField(null), '');
  assert.equal(csvField(undefined), '');
  assert.equal(csvField(false), 'false');
  assert.equal(csvField({ k: [1, 'a,b'] }), '"{""k"":[1,""a,b""]}"');
});

test('header is the union of keys in first-seen order, or the given columns', () => {
  assert.equal(toCsv([{ b: 1 }, { a: 2, b: 3 }]), 'b,a\r\n1,\r\n3,2\r\n');
  assert.equal(toCsv([{ b: 1, a: 2, c: 3 }], ['a', 'b']), 'a,b\r\n2,1\r\n');
  assert.equal(toCsv([]), '\r\n');
});
