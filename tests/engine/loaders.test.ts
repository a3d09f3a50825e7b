// Loaders: the formats load identically, and every malformed, truncated or unsupported file ends in
// a ModelFileError that names the file and the problem — never another exception, never a crash.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ModelFileError, canonicalTensors, loadModel, type LoadOptions } from '../../src/engine/index.js';
import { ggufBytes, ggufFromModel, writeGguf, type GgufContents } from '../../src/engine/load/gguf-write.js';
import { llama2Tokenizer, stories260K, stories260KGguf, tok512, withTempDir } from '../helpers.js';

const binBytes = readFileSync(stories260K);
const ggufFileBytes = readFileSync(stories260KGguf);
const tokBytes = readFileSync(tok512);

function expectError(path: string, options: LoadOptions, pattern: RegExp): void {
  assert.throws(
    () => loadModel(path, options),
    (e: unknown) => {
      assert.ok(e instanceof ModelFileError, `expected a ModelFileError, got ${String(e)}`);
      assert.ok(e.message.startsWith(`${e.file}: `), 'the message names the file');
      assert.ok(!e.message.includes('\n'), 'one line');
      assert.match(e.message, pattern);
      return true;
    },
  );
}

function patchedHeader(values: Partial<Record<number, number>>): Buffer {
  const copy = Buffer.from(binBytes);
  for (const [i, v] of Object.entries(values)) copy.writeInt32LE(v as number, 4 * Number(i));
  return copy;
}

test('llama2.c checkpoints: bad headers, truncation and wrong sizes are reported precisely', () => {
  withTempDir((dir) => {
    const cases: [string, Buffer, RegExp][] = [
      ['tiny.bin', binBytes.subarray(0, 10), /truncated: 10 bytes, a llama2.c header needs 28/],
      ['cut.bin', binBytes.subarray(0, 5000), /size mismatch: .* describes 1056540 bytes, the file has 5000/],
      ['long.bin', Buffer.concat([binBytes, Buffer.alloc(4)]), /size mismatch: .* the file has 1056544/],
      ['zero-dim.bin', patchedHeader({ 0: 0 }), /bad header: dim = 0/],
      ['negative-layers.bin', patchedHeader({ 2: -3 }), /bad header: nLayers = -3/],
      ['heads.bin', patchedHeader({ 3: 7 }), /bad header: dim 64 is not divisible by n_heads 7/],
      ['kv.bin', patchedHeader({ 4: 3 }), /bad header: n_heads 8 is not divisible by n_kv_heads 3/],
      ['huge.bin', patchedHeader({ 0: 1 << 30, 3: 1, 4: 1 }), /size mismatch/],
      ['v1.bin', Buffer.concat([Buffer.from(Uint32Array.of(0x616b3432, 1).buffer), binBytes.subarray(8)]), /export version 1 is not supported/],
    ];
    for (const [name, bytes, pattern] of cases) {
      writeFileSync(join(dir, name), bytes);
      expectError(join(dir, name), { tokenizer: tok512 }, pattern);
    }
    expectError(join(dir, 'missing.bin'), { tokenizer: tok512 }, /no such file/);
    mkdirSync(join(dir, 'folder.bin'));
    expectError(join(dir, 'folder.bin'), { tokenizer: tok512 }, /not a regular file/);
    expectError(stories260K, {}, /needs a tokenizer file/);
  });
});

test('tokenizer.bin: truncation and a vocabulary that does not match the model are reported', () => {
  withTempDir((dir) => {
    // Offsets of token boundaries in tok512.bin.
    const boundaries = [4];
    for (let i = 0; i < 512; i++) boundaries.push(boundaries[i] + 8 + tokBytes.readInt32LE(boundaries[i] + 4));
    const cases: [string, Buffer, RegExp][] = [
      ['empty.tok', Buffer.alloc(0), /truncated: 0 bytes/],
      ['header.tok', Buffer.from(Int32Array.of(0).buffer), /bad header: max_token_length = 0/],
      ['fewer.tok', tokBytes.subarray(0, boundaries[300]), /vocab mismatch: the tokenizer has 300 tokens, the model's vocab_size is 512/],
      ['mid.tok', tokBytes.subarray(0, boundaries[300] + 5), /truncated: token 300 header/],
      ['midpiece.tok', tokBytes.subarray(0, boundaries[301] - 1), /truncated: token 300 needs/],
    ];
    for (const [name, bytes, pattern] of cases) {
      writeFileSync(join(dir, name), bytes);
      expectError(stories260K, { tokenizer: join(dir, name) }, pattern);
    }
    expectError(stories260K, { tokenizer: llama2Tokenizer }, /vocab mismatch: the tokenizer has more than the model's vocab_size 512 tokens/);
    expectError(stories260K, { tokenizer: join(dir, 'nope.bin') }, /no such file/);
  });
});

function modifiedGguf(dir: string, name: string, change: (c: GgufContents) => void): string {
  const contents = ggufFromModel(loadModel(stories260KGguf));
  change(contents);
  const path = join(dir, name);
  writeGguf(path, contents);
  return path;
}

test('GGUF: bad magic, versions, tensor types, shapes, names and vocab mismatches are reported', () => {
  withTempDir((dir) => {
    const raw = (name: string, bytes: Buffer): string => {
      writeFileSync(join(dir, name), bytes);
      return join(dir, name);
    };
    const withVersion = Buffer.from(ggufFileBytes);
    withVersion.writeUInt32LE(1, 4);
    expectError(raw('magic.gguf', Buffer.concat([Buffer.from('GGUX'), ggufFileBytes.subarray(4)])), {}, /not a GGUF file \(bad magic\)/);
    expectError(raw('v1.gguf', withVersion), {}, /unsupported GGUF version 1/);
    expectError(raw('head.gguf', ggufFileBytes.subarray(0, 2000)), {}, /truncated or corrupt: metadata tokenizer\.ggml\.tokens claims 512 items/);
    expectError(raw('table.gguf', ggufFileBytes.subarray(0, 13000)), {}, /truncated: the file ends at byte 13000, inside a tensor name \(which starts at byte 12990\)/);
    expectError(raw('data.gguf', ggufFileBytes.subarray(0, ggufFileBytes.length - 100)), {}, /truncated: tensor .* ends at byte/);

    const at = (c: GgufContents, name: string) => c.tensors.find((t) => t.name === name)!;
    expectError(modifiedGguf(dir, 'q4.gguf', (c) => (at(c, 'blk.2.attn_k.weight').type = 3)), {}, /unsupported tensor type Q4_1 for blk\.2\.attn_k\.weight \(only F32, F16, Q8_0, Q4_0, Q4_K, Q5_K or Q6_K\)/);
    expectError(modifiedGguf(dir, 'q8norm.gguf', (c) => (at(c, 'blk.1.ffn_norm.weight').type = 8)), {}, /unsupported tensor type Q8_0 for blk\.1\.ffn_norm\.weight \(only F32 or F16\)/);
    expectError(modifiedGguf(dir, 'type99.gguf', (c) => (at(c, 'token_embd.weight').type = 99)), {}, /unsupported tensor type #99/);
    expectError(modifiedGguf(dir, 'shape.gguf', (c) => (at(c, 'blk.0.attn_q.weight').dims = [32, 128])), {}, /bad tensor blk\.0\.attn_q\.weight: shape \[32, 128\], expected \[64, 64\]/);
    expectError(modifiedGguf(dir, 'missing.gguf', (c) => (c.tensors = c.tensors.filter((t) => t.name !== 'blk.4.ffn_up.weight'))), {}, /missing tensor blk\.4\.ffn_up\.weight/);
    expectError(modifiedGguf(dir, 'extra.gguf', (c) => c.tensors.push({ name: 'blk.0.attn_q.bias', dims: [64], type: 0, bytes: 256, data: () => new Uint8Array(256) })), {}, /unsupported tensor blk\.0\.attn_q\.bias/);
    expectError(modifiedGguf(dir, 'factors.gguf', (c) => c.tensors.push({ name: 'rope_freqs.weight', dims: [4], type: 0, bytes: 16, data: () => new Uint8Array(16) })), {}, /bad tensor rope_freqs\.weight: factor 0 at 0/);
    expectError(
      modifiedGguf(dir, 'vocab.gguf', (c) => {
        const entry = c.metadata.find(([k]) => k === 'tokenizer.ggml.tokens')![1];
        if (entry.type === 'strings') entry.value = entry.value.slice(0, 511);
        const scores = c.metadata.find(([k]) => k === 'tokenizer.ggml.scores')![1];
        if (scores.type === 'f32s') scores.value = Array.from(scores.value).slice(0, 511);
      }),
      {},
      /vocab mismatch: the tokenizer has 511 tokens, token_embd\.weight has 512 rows/,
    );
    expectError(modifiedGguf(dir, 'arch.gguf', (c) => (c.metadata[0][1] = { type: 'string', value: 'gpt2' })), {}, /unsupported architecture 'gpt2' \(only llama, qwen2\)/);
    expectError(
      modifiedGguf(dir, 'tok.gguf', (c) => (c.metadata.find(([k]) => k === 'tokenizer.ggml.model')![1] = { type: 'string', value: 'bert' })),
      {},
      /unsupported tokenizer model 'bert' \(only SentencePiece 'llama' and byte-level BPE 'gpt2'\)/,
    );
    expectError(modifiedGguf(dir, 'heads.gguf', (c) => (c.metadata.find(([k]) => k === 'llama.attention.head_count')![1] = { type: 'u32', value: 0 })), {}, /bad header: nHeads = 0/);
    // A llama2.c tokenizer given for a GGUF replaces its own, and must match its vocabulary too.
    expectError(stories260KGguf, { tokenizer: llama2Tokenizer }, /vocab mismatch/);
  });
});

test('GGUF: every truncation and random corruption of the header ends in a ModelFileError or a valid model', () => {
  withTempDir((dir) => {
    const header = 14176; // metadata and tensor table of stories260K.gguf
    const path = join(dir, 'fuzz.gguf');
    let seed = 12345;
    const next = (): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed;
    };
    const attempts: Buffer[] = [];
    for (let cut = 0; cut < header; cut += 97) attempts.push(ggufFileBytes.subarray(0, cut));
    for (let i = 0; i < 300; i++) {
      const copy = Buffer.from(ggufFileBytes);
      for (let j = 0; j < 1 + (i % 4); j++) copy[next() % header] = next() % 256;
      attempts.push(copy);
    }
    for (const bytes of attempts) {
      writeFileSync(path, bytes);
      try {
        loadModel(path);
      } catch (e) {
        assert.ok(e instanceof ModelFileError, `unexpected ${String(e)}`);
        assert.ok(!e.message.includes('\n'));
      }
    }
  });
});

test('a model written back as GGUF loads to the same tensors, and its bytes are deterministic', () => {
  withTempDir((dir) => {
    const bin = loadModel(stories260K, { tokenizer: tok512 });
    const path = join(dir, 'copy.gguf');
    writeGguf(path, ggufFromModel(bin));
    const copy = loadModel(path);
    assert.deepEqual(copy.config, bin.config);
    const a = canonicalTensors(bin.config, bin.weights);
    const b = canonicalTensors(copy.config, copy.weights);
    a.forEach((t, i) => assert.ok(Buffer.from(bin.arena.u8(t.ptr, t.bytes)).equals(copy.arena.u8(b[i].ptr, b[i].bytes)), t.name));
    assert.deepEqual(copy.tokenizer.vocab.map((v) => Buffer.from(v).toString('hex')), bin.tokenizer.vocab.map((v) => Buffer.from(v).toString('hex')));
    assert.ok(Buffer.from(ggufBytes(ggufFromModel(bin))).equals(readFileSync(path)));
  });
});
