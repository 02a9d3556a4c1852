import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  CheckpointError,
  fileByteSource,
  readCheckpointIndex,
  readSafetensorsHeader,
  readTensor,
  type TensorByteSource,
  type TensorInfo,
} from '../src/model/safetensors.ts';

const scratch = mkdtempSync(join(tmpdir(), 'kvlab-safetensors-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
let serial = 0;

/** A safetensors file: length prefix, JSON header, data bytes. */
function encode(header: unknown, data: Uint8Array, headerLength?: bigint): Buffer {
  const text = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLength ?? BigInt(text.length));
  return Buffer.concat([len, text, data]);
}

function writeFile(bytes: Uint8Array, name = `t${serial++}.safetensors`, dir = scratch): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

// Two tensors tiling the data section, and a zero-sized one.
const f32Values = new Float32Array([1.5, -2, 3.25, 0]);
const bf16Bits = new Uint16Array([0x3f80, 0xc000, 0x4049]); // 1, -2, 3.140625
const data = new Uint8Array(16 + 6);
data.set(new Uint8Array(f32Values.buffer), 0);
data.set(new Uint8Array(bf16Bits.buffer), 16);
const goodHeader = {
  __metadata__: { format: 'pt' },
  a: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] },
  b: { dtype: 'BF16', shape: [3], data_offsets: [16, 22] },
  empty: { dtype: 'F16', shape: [0, 5], data_offsets: [22, 22] },
};

test('a well-formed header gives absolute offsets, dtypes and shapes (metadata skipped)', () => {
  const file = writeFile(encode(goodHeader, data));
  const headerLen = JSON.stringify(goodHeader).length;
  const infos = readSafetensorsHeader(file);
  assert.deepEqual(
    infos.map((t) => [t.name, t.dtype, t.shape, t.offset, t.byteLength]),
    [
      ['a', 'F32', [2, 2], 8 + headerLen, 16],
      ['b', 'BF16', [3], 8 + headerLen + 16, 6],
      ['empty', 'F16', [0, 5], 8 + headerLen + 22, 0],
    ],
  );
  assert.ok(infos.every((t) => t.file === file));
  const [a, b] = infos as [TensorInfo, TensorInfo];
  assert.deepEqual(readTensor(a, fileByteSource), f32Values);
  assert.deepEqual(readTensor(b, fileByteSource), bf16Bits);
});

/** Asserts the header is rejected with a CheckpointError naming the file and matching `pattern`. */
function rejects(bytes: Uint8Array, pattern: RegExp) {
  const file = writeFile(bytes);
  assert.throws(
    () => readSafetensorsHeader(file),
    (e: Error) => {
      assert.ok(e instanceof CheckpointError, `${e.name}: ${e.message}`);
      assert.ok(e.message.includes(file), `message names the file: ${e.message}`);
      assert.match(e.message, pattern);
      return true;
    },
  );
}

const withEntry = (name: string, entry: unknown) => encode({ ...goodHeader, [name]: entry }, data);

test('file shorter than the 8-byte length prefix', () => {
  rejects(new Uint8Array(5), /truncated file \(5 bytes/);
  rejects(new Uint8Array(0), /truncated file \(0 bytes/);
});

test('header length zero, too big, or beyond the file', () => {
  rejects(encode('', data, 0n), /bad header length 0 /);
  rejects(encode(goodHeader, data, 200n * 1024n * 1024n), /bad header length 209715200 /);
  rejects(encode(goodHeader, data, 2n ** 63n), /bad header length 9223372036854775808 /);
  rejects(encode(goodHeader, data, 10_000n), /header length 10000 runs past the end of the file/);
});

test('header that is not JSON, or not a JSON object', () => {
  rejects(encode('{"a": {"dtype": ', data), /header is not valid JSON/);
  rejects(encode('[1, 2, 3]', data), /header is not a JSON object/);
  rejects(encode(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]).toString('latin1'), data), /header is not valid JSON/);
  rejects(encode({ __metadata__: 5 }, data), /__metadata__ is not a JSON object/);
  rejects(withEntry('c', [1, 2]), /tensor c: header entry is not an object/);
});

test('unsupported dtypes are named with the tensor', () => {
  rejects(withEntry('ids', { dtype: 'I64', shape: [2], data_offsets: [0, 16] }), /tensor ids: unsupported dtype "I64" \(supported: BF16, F16, F32\)/);
  rejects(withEntry('ids', { dtype: 'F8_E4M3', shape: [2], data_offsets: [0, 2] }), /tensor ids: unsupported dtype "F8_E4M3"/);
  rejects(withEntry('ids', { shape: [2], data_offsets: [0, 2] }), /tensor ids: unsupported dtype undefined/);
});

test('byte size that does not match dtype and shape', () => {
  rejects(withEntry('b', { dtype: 'BF16', shape: [4], data_offsets: [16, 22] }), /tensor b: data_offsets \[16, 22\] hold 6 bytes but BF16 shape \[4\] needs 8/);
  rejects(withEntry('a', { dtype: 'BF16', shape: [2, 2], data_offsets: [0, 16] }), /tensor a: .*needs 8/);
});

test('malformed shapes and offsets', () => {
  rejects(withEntry('x', { dtype: 'F32', shape: [-1], data_offsets: [0, 0] }), /tensor x: shape \[-1\] is not a list of non-negative integers/);
  rejects(withEntry('x', { dtype: 'F32', shape: [1.5], data_offsets: [0, 4] }), /tensor x: shape/);
  rejects(withEntry('x', { dtype: 'F32', shape: 4, data_offsets: [0, 16] }), /tensor x: shape 4 /);
  rejects(withEntry('x', { dtype: 'F32', shape: [1], data_offsets: [8, 4] }), /tensor x: data_offsets \[8,4\] is not \[begin, end\]/);
  rejects(withEntry('x', { dtype: 'F32', shape: [1], data_offsets: [4] }), /tensor x: data_offsets/);
});

test('offsets past the data section (truncated file)', () => {
  rejects(encode(goodHeader, data.subarray(0, 20)), /tensor b: data_offsets \[16, 22\] out of range: the data section has 20 bytes \(truncated file\?\)/);
});

test('overlapping tensors, including one inside another', () => {
  rejects(withEntry('c', { dtype: 'BF16', shape: [2], data_offsets: [14, 18] }), /tensors a \[0, 16\] and c \[14, 18\] overlap/);
  rejects(withEntry('c', { dtype: 'BF16', shape: [1], data_offsets: [4, 6] }), /tensors a \[0, 16\] and c \[4, 6\] overlap/);
  rejects(withEntry('c', { dtype: 'F32', shape: [4], data_offsets: [0, 16] }), /overlap/);
});

test('a missing file is named', () => {
  const file = join(scratch, 'nope.safetensors');
  assert.throws(() => readSafetensorsHeader(file), new RegExp(`safetensors file not found: ${file}`));
});

test('the tensors must tile the data section: gaps, trailing bytes and a short header length are refused', () => {
  rejects(withEntry('b', { dtype: 'BF16', shape: [2], data_offsets: [18, 22] }), /data bytes \[16, 18\) belong to no tensor \(after tensor a\)/);
  rejects(encode({ b: goodHeader.b }, data), /data bytes \[0, 16\) belong to no tensor \(before the first tensor\)/);
  rejects(encode(goodHeader, Buffer.concat([data, Buffer.alloc(3)])), /3 trailing bytes after the last tensor \(the tensors end at 22 of a 25-byte data section\)/);
  rejects(encode({}, data), /22 trailing bytes/);
  rejects(withEntry('z', { dtype: 'F32', shape: [0], data_offsets: [4, 4] }), /tensors a \[0, 16\] and z \[4, 4\] overlap/);
  // A header padded with spaces (as writers align the data section) whose length field is 4 bytes short:
  // the JSON still parses, and every tensor would be read 4 bytes early.
  const padded = `${JSON.stringify(goodHeader)}        `;
  const shortBy4 = encode(padded, data, BigInt(padded.length - 4));
  rejects(shortBy4, /4 trailing bytes after the last tensor/);
  assert.equal(readSafetensorsHeader(writeFile(encode(padded, data))).length, 3, 'the same header with its true length parses');
});

test('duplicate header keys are refused, at any depth; the header must start with {', () => {
  const text = JSON.stringify(goodHeader);
  rejects(encode(text.replace('{"__metadata__"', '{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"__metadata__"'), data), /header has the key "a" twice/);
  rejects(encode(text.replace('"dtype":"BF16"', '"dtype":"BF16","dtype":"F16"'), data), /header has the key "dtype" twice \(in b\)/);
  rejects(encode(` ${text}`, data), /header does not start with '\{'/);
});

test('a FIFO or a directory as a checkpoint file is refused without opening it', () => {
  const dir = join(scratch, `fifo${serial++}`);
  mkdirSync(dir);
  execFileSync('mkfifo', [join(dir, 'model.safetensors')]);
  assert.throws(() => readCheckpointIndex(dir), /safetensors file .*model\.safetensors is a FIFO, not a regular file/);
  const dir2 = join(scratch, `dir${serial++}`);
  mkdirSync(join(dir2, 'model.safetensors'), { recursive: true });
  assert.throws(() => readCheckpointIndex(dir2), /model\.safetensors is a directory, not a regular file/);
});

/** A source that serves bytes from a Uint8Array view placed at the given byte offset of a larger buffer. */
function viewSource(file: string, at: number): TensorByteSource & { lastBuffer?: ArrayBufferLike } {
  const bytes = new Uint8Array(encode(goodHeader, data));
  const src: TensorByteSource & { lastBuffer?: ArrayBufferLike } = {
    read(f, offset, length) {
      assert.equal(f, file);
      const backing = new Uint8Array(at + length);
      backing.set(bytes.subarray(offset, offset + length), at);
      src.lastBuffer = backing.buffer;
      return backing.subarray(at, at + length);
    },
  };
  return src;
}

test('byte sources may return views; aligned views are used in place, misaligned ones copied', () => {
  const file = writeFile(encode(goodHeader, data));
  const [a, b] = readSafetensorsHeader(file) as [TensorInfo, TensorInfo];
  const aligned = viewSource(file, 8);
  const fa = readTensor(a, aligned);
  assert.ok(fa instanceof Float32Array);
  assert.deepEqual(fa, f32Values);
  assert.equal(fa.buffer, aligned.lastBuffer, 'aligned view is not copied');
  const odd = viewSource(file, 3);
  const fb = readTensor(b, odd);
  assert.ok(fb instanceof Uint16Array);
  assert.deepEqual(fb, bf16Bits);
  assert.notEqual(fb.buffer, odd.lastBuffer, 'misaligned view is copied');
  assert.deepEqual(readTensor(a, viewSource(file, 2)), f32Values);
  const short: TensorByteSource = { read: () => new ArrayBuffer(4) };
  assert.throws(() => readTensor(a, short), /tensor a: read 4 of 16 bytes/);
});

test('the file source reads at absolute offsets and reports a file that shrank', () => {
  const file = writeFile(encode(goodHeader, data));
  const [, b] = readSafetensorsHeader(file) as [TensorInfo, TensorInfo];
  assert.deepEqual(new Uint16Array(fileByteSource.read(file, b.offset, 6) as ArrayBuffer), bf16Bits);
  writeFileSync(file, encode(goodHeader, data).subarray(0, b.offset + 2));
  assert.throws(() => readTensor(b, fileByteSource), /unexpected end of file reading 6 bytes/);
});

/** A checkpoint folder with tensors a, b in shard 1 and c in shard 2. */
function shardedDir(weightMap?: Record<string, string>): string {
  const dir = join(scratch, `sharded${serial++}`);
  mkdirSync(dir);
  writeFile(encode({ a: goodHeader.a, b: goodHeader.b }, data), 'model-00001-of-00002.safetensors', dir);
  writeFile(encode({ c: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)), 'model-00002-of-00002.safetensors', dir);
  const map = weightMap ?? { a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' };
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 30 }, weight_map: map }));
  return dir;
}

test('a sharded checkpoint is indexed across its shards', () => {
  const dir = shardedDir();
  const index = readCheckpointIndex(dir);
  assert.deepEqual([...index.keys()].sort(), ['a', 'b', 'c']);
  assert.equal(index.get('c')!.file, join(dir, 'model-00002-of-00002.safetensors'));
  assert.deepEqual(readTensor(index.get('b')!, fileByteSource), bf16Bits);
});

test('sharded checkpoint errors: missing shard, tensor not in its shard, duplicates, bad index', () => {
  const s1 = 'model-00001-of-00002.safetensors';
  const s2 = 'model-00002-of-00002.safetensors';
  assert.throws(() => readCheckpointIndex(shardedDir({ a: s1, b: s1, c: 'model-00003-of-00002.safetensors' })), /shard model-00003-of-00002\.safetensors .* not found: .*model-00003-of-00002\.safetensors/);
  assert.throws(() => readCheckpointIndex(shardedDir({ a: s2, b: s1, c: s2 })), /model-00002-of-00002\.safetensors: tensor a is missing, though .*index\.json places it in this shard/);
  const dup = shardedDir();
  writeFile(encode({ b: { ...goodHeader.b, data_offsets: [0, 6] } }, data.subarray(16)), s2, dup);
  writeFileSync(join(dup, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: s1, b: s2 } }));
  assert.throws(() => readCheckpointIndex(dup), /tensor b is stored twice/);
  assert.throws(() => readCheckpointIndex(shardedDir({ a: '../elsewhere.safetensors' })), /tensor a maps to "\.\.\/elsewhere\.safetensors", not a file name inside the checkpoint folder/);
  const bad = shardedDir();
  writeFileSync(join(bad, 'model.safetensors.index.json'), '{"weight_map": ');
  assert.throws(() => readCheckpointIndex(bad), /model\.safetensors\.index\.json: not valid JSON/);
  writeFileSync(join(bad, 'model.safetensors.index.json'), '{"metadata": {}}');
  assert.throws(() => readCheckpointIndex(bad), /model\.safetensors\.index\.json: no weight_map object/);
  const corrupt = shardedDir();
  writeFileSync(join(corrupt, s2), new Uint8Array(3));
  assert.throws(() => readCheckpointIndex(corrupt), new RegExp(`${s2}: truncated file`));
  const none = join(scratch, 'no-weights');
  mkdirSync(none);
  assert.throws(() => readCheckpointIndex(none), /no model\.safetensors or model\.safetensors\.index\.json in .*no-weights/);
});

test('BF16 and F16 in one checkpoint are refused, naming the rarer ones, in one file and across shards', () => {
  const one = join(scratch, `mixed${serial++}`);
  mkdirSync(one);
  const h = (dtype: string, at: number) => ({ dtype, shape: [2], data_offsets: [at, at + 4] });
  writeFile(encode({ x: h('BF16', 0), y: h('BF16', 4), z: h('F16', 8), n: { dtype: 'F32', shape: [1], data_offsets: [12, 16] } }, new Uint8Array(16)), 'model.safetensors', one);
  assert.throws(() => readCheckpointIndex(one), /tensor z \(.*model\.safetensors\) is F16 while the other 16-bit tensors are BF16: a checkpoint does not mix BF16 and F16/);
  const sharded = shardedDir();
  writeFile(encode({ c: { dtype: 'F16', shape: [2], data_offsets: [0, 4] } }, new Uint8Array(4)), 'model-00002-of-00002.safetensors', sharded);
  assert.throws(() => readCheckpointIndex(sharded), /tensor c \(.*model-00002-of-00002\.safetensors\) is F16 while the other 16-bit tensors are BF16/);
  const fp32AndBf16 = shardedDir();
  assert.equal(readCheckpointIndex(fp32AndBf16).size, 3, 'F32 beside BF16 (norms kept wide) is fine');
});
