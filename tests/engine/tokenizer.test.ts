import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadModel } from '../../src/engine/index.js';
import { loadTokenizerBin } from '../../src/engine/load/tokenizer-bin.js';
import { decode, decodePiece, encode, printableBytes } from '../../src/engine/tokenizer.js';
import { goldenDir, llama2Tokenizer, stories260KGguf, tok512 } from '../helpers.js';

interface EncodeCase {
  tokenizer: string;
  vocab_size: number;
  input_b64: string;
  tokens: number[];
}
const golden = JSON.parse(readFileSync(join(goldenDir, 'runc.json'), 'utf8')) as { encode: EncodeCase[] };
const tokenizers = {
  'tok512.bin': loadTokenizerBin(tok512, 512),
  'llama2-tokenizer.bin': loadTokenizerBin(llama2Tokenizer, 32000),
};
const small = tokenizers['tok512.bin'];
const big = tokenizers['llama2-tokenizer.bin'];

test('encode gives run.c\'s tokens for every recorded input, with both tokenizers', () => {
  assert.ok(golden.encode.length >= 60);
  for (const c of golden.encode) {
    const t = tokenizers[c.tokenizer as keyof typeof tokenizers];
    const input = Buffer.from(c.input_b64, 'base64');
    assert.deepEqual(encode(t, input, true, false), c.tokens, `${c.tokenizer}: ${JSON.stringify(input.toString('latin1'))}`);
  }
});

test('an empty prompt is just BOS; eos appends token 2', () => {
  assert.deepEqual(encode(small, ''), [1]);
  assert.deepEqual(encode(small, '', false), []);
  assert.deepEqual(encode(small, 'a', true, true).at(-1), 2);
});

test('byte fallback: a code point missing from the vocabulary becomes one token per byte (byte + 3)', () => {
  const tokens = encode(small, '日'); // not in the 512-token vocabulary
  const bytes = Buffer.from('日', 'utf8');
  assert.deepEqual(tokens.slice(2), Array.from(bytes, (b) => b + 3));
  // The large vocabulary has the character itself.
  assert.equal(encode(big, '日').length, 3);
});

test('decode(encode(text)) gives the text back, unicode and control characters included', () => {
  const texts = [
    'Once upon a time, there was a little girl named Lily.',
    'Café naïve — 日本語 🙂 ∑ x² ≠ y',
    'tabs\tand\nnew\r\nlines',
    '  leading and trailing  ',
    '<0x0A> <s> </s> literal',
    'ÿ\u0001\u007f',
    'x'.repeat(500),
  ];
  for (const t of [small, big]) {
    for (const text of texts) {
      assert.equal(Buffer.from(decode(t, encode(t, text))).toString('utf8'), text, JSON.stringify(text));
    }
  }
});

test('decodePiece strips the space after BOS and maps <0xXX> tokens to their byte', () => {
  const space = encode(small, ' x')[1]; // the dummy-prefix " " token
  assert.deepEqual(Array.from(decodePiece(small, 1, space)), []);
  assert.deepEqual(Array.from(decodePiece(small, 5, space)), [0x20]);
  assert.deepEqual(Array.from(decodePiece(small, 5, 13)), [0x0a]); // <0x0A>
  assert.deepEqual(Array.from(decodePiece(small, 5, 3 + 0xe6)), [0xe6]);
});

test('printableBytes drops lone bytes that are neither printable nor whitespace, like safe_printf', () => {
  assert.deepEqual(Array.from(printableBytes(Uint8Array.of(0xe6))), []);
  assert.deepEqual(Array.from(printableBytes(Uint8Array.of(0x07))), []);
  assert.deepEqual(Array.from(printableBytes(Uint8Array.of(0x0a))), [0x0a]);
  assert.deepEqual(Array.from(printableBytes(Uint8Array.of(0x41))), [0x41]);
  assert.deepEqual(Array.from(printableBytes(Uint8Array.of(0x41, 0, 0x42))), [0x41]);
  assert.deepEqual(Array.from(printableBytes(Buffer.from('é'))), Array.from(Buffer.from('é')));
});

test('the GGUF tokenizer equals tok512.bin except for the spelling of BOS and EOS', () => {
  const gguf = loadModel(stories260KGguf).tokenizer;
  assert.equal(gguf.vocab.length, small.vocab.length);
  const differing = gguf.vocab.flatMap((piece, i) => (Buffer.compare(piece, small.vocab[i]) === 0 ? [] : [i]));
  assert.deepEqual(differing, [1, 2]);
  assert.deepEqual(Array.from(gguf.scores), Array.from(small.scores));
  for (const text of ['Once upon a time', 'Café 🙂', '']) assert.deepEqual(encode(gguf, text), encode(small, text));
});
