// Byte-level BPE: Verity's ids equal llama.cpp's recorded ids (tests/golden/tokenizer-*.json,
// written by npm run check:tokenizer) on every corpus line, for every vocabulary; the GGUF and
// model-id round trips; malformed files give one-line errors naming the file.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  ModelFileError, canonicalTokenizer, completionText, createTokenizer, decode, encode, loadModel, parseCanonicalTokenizer, tokenize,
  type BpeTokenizer,
} from '../../src/engine/index.js';
import { goldenDir, projectRoot, runCli, withTempDir } from '../helpers.js';
import { BPE_MODELS, bpeTokenizer, smallBpeTokenizer, tinyBpeGguf, type TokenizerGolden } from './bpe-models.js';

const corpus = JSON.parse(readFileSync(join(projectRoot, 'tests', 'engine', 'tokenizer-corpus.json'), 'utf8')) as string[];

describe('byte-level BPE agrees with llama.cpp', () => {
  for (const spec of BPE_MODELS) {
    it(`${spec.name} (${spec.note}): every corpus line, with and without special parsing and BOS`, () => {
      const golden = JSON.parse(readFileSync(join(goldenDir, `tokenizer-${spec.name}.json`), 'utf8')) as TokenizerGolden;
      assert.equal(golden.plain.length, corpus.length, 'the golden file is for this corpus');
      const t = bpeTokenizer(spec);
      assert.equal(t.addBos, golden.addBos);
      const bos = golden.addBos && golden.bosId !== null ? [golden.bosId] : [];
      corpus.forEach((text, i) => {
        assert.deepEqual(tokenize(t, text, { addSpecial: false, parseSpecial: false }), golden.plain[i], `line ${i} ${JSON.stringify(text)}`);
        assert.deepEqual(tokenize(t, text, { addSpecial: false, parseSpecial: true }), golden.special[i], `line ${i} (special) ${JSON.stringify(text)}`);
        assert.deepEqual(encode(t, text, true, false), [...bos, ...golden.plain[i]], `line ${i} (+BOS)`);
      });
    });
  }

  it('decodes back to the text (control tokens as their text)', () => {
    const t = bpeTokenizer(BPE_MODELS[0]);
    for (const text of corpus) {
      const ids = tokenize(t, text, { addSpecial: false, parseSpecial: true });
      assert.equal(Buffer.from(decode(t, ids)).toString('utf8'), text);
      assert.equal(completionText(t, 0, ids), text);
    }
  });

  it('chat template tokens are single control tokens only with parseSpecial', () => {
    const t = bpeTokenizer(BPE_MODELS[0]);
    const special = tokenize(t, '<|start_header_id|>user<|end_header_id|>', { addSpecial: true, parseSpecial: true });
    assert.deepEqual(special, [128000, 128006, 882, 128007]);
    assert.ok(encode(t, '<|start_header_id|>', false).length > 1);
  });
});

describe('BPE files and model ids', () => {
  it('a tiny GGUF loads with the same tokenizer, writes back, and its canonical leaf round-trips', () => {
    withTempDir((dir) => {
      const t = bpeTokenizer(BPE_MODELS[1]);
      const file = join(dir, 'tiny.gguf');
      writeFileSync(file, tinyBpeGguf(t));
      const loaded = loadModel(file).tokenizer as BpeTokenizer;
      assert.equal(loaded.kind, 'bpe');
      const leaf = canonicalTokenizer(loaded);
      assert.deepEqual(canonicalTokenizer(t), leaf);
      const back = parseCanonicalTokenizer(leaf);
      assert.deepEqual(canonicalTokenizer(back), leaf);
      for (const text of corpus.slice(0, 60)) assert.deepEqual(encode(back, text, false), encode(t, text, false));
    });
  });

  it('the leaf changes with anything that changes ids, and the SentencePiece leaf keeps its layout', () => {
    const t = bpeTokenizer(BPE_MODELS[1]);
    const base = Buffer.from(canonicalTokenizer(t)).toString('hex');
    const other = bpeTokenizer(BPE_MODELS[2]); // same vocabulary, another pre-tokenizer
    assert.notEqual(Buffer.from(canonicalTokenizer(other)).toString('hex'), base);
    const sp = createTokenizer([Uint8Array.of(0x61)], Float32Array.of(0), 0, 0);
    assert.deepEqual([...canonicalTokenizer(sp)], [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x61]);
    assert.throws(() => parseCanonicalTokenizer(canonicalTokenizer(t).subarray(0, 100)), /bad tokenizer encoding/);
    const huge = Buffer.from(canonicalTokenizer(t).subarray(0, 40));
    huge.writeUInt32LE(0xffffffff, 12 + t.pre.length + 4 - 4 + 4); // vocab size far beyond the bytes
    assert.throws(() => parseCanonicalTokenizer(huge), /bad tokenizer encoding/);
  });
});

describe('malformed BPE files', () => {
  type Metadata = Parameters<NonNullable<Parameters<typeof tinyBpeGguf>[2]>>[0];
  const failsWith = (mutate: (t: BpeTokenizer) => BpeTokenizer, pattern: RegExp, edit?: (m: Metadata) => void): void =>
    withTempDir((dir) => {
      const file = join(dir, 'bad.gguf');
      writeFileSync(file, tinyBpeGguf(mutate(smallBpeTokenizer()), 1, edit));
      assert.throws(() => loadModel(file), (e: unknown) => {
        assert.ok(e instanceof ModelFileError, String(e));
        assert.ok(e.message.startsWith(file), e.message);
        assert.ok(!e.message.includes('\n'), 'one line');
        assert.match(e.message, pattern);
        return true;
      });
    });
  const setEntry = (key: string, entry: Metadata[number][1]) => (m: Metadata): void => {
    const at = m.findIndex(([k]) => k === key);
    if (at >= 0) m[at] = [key, entry];
    else m.push([key, entry]);
  };

  it('the small vocabulary loads', () =>
    withTempDir((dir) => {
      const file = join(dir, 'ok.gguf');
      writeFileSync(file, tinyBpeGguf(smallBpeTokenizer()));
      const t = loadModel(file).tokenizer;
      assert.deepEqual(encode(t, ' the', true), [259, 258]); // BOS, then 'Ġthe' whole (llama-bpe ignores merges for a whole token)
      assert.deepEqual(encode(t, 'the', false), [116, 257]); // 't' + 'he'
    }));
  it('unknown pre-tokenizer', () => failsWith((t) => ({ ...t, pre: 'mystery' }), /unsupported pre-tokenizer 'mystery'/));
  it('missing pre-tokenizer', () => failsWith((t) => t, /tokenizer.ggml.pre is missing/, (m) => m.splice(m.findIndex(([k]) => k === 'tokenizer.ggml.pre'), 1)));
  it('merges naming unknown tokens', () =>
    failsWith((t) => t, /merges\[1\] 'nosuch token' names a token not in the vocabulary/, setEntry('tokenizer.ggml.merges', { type: 'strings', value: ['Ġ t', 'nosuch token'] })));
  it('a merge without a space', () => failsWith((t) => t, /is not two tokens/, setEntry('tokenizer.ggml.merges', { type: 'strings', value: ['Ġt'] })));
  it('token types of the wrong length', () => failsWith((t) => ({ ...t, tokenTypes: t.tokenTypes.subarray(1) }), /token_type has \d+ entries/));
  it('ids out of range', () => failsWith((t) => ({ ...t, bosId: t.vocab.length + 5 }), /bos_token_id/));
  it('unknown token type', () => failsWith((t) => ({ ...t, tokenTypes: Uint8Array.from(t.tokenTypes, (v, i) => (i === 7 ? 9 : v)) }), /unknown token type 9/));
  it('duplicate token text', () => failsWith((t) => ({ ...t, vocab: t.vocab.map((v, i) => (i === 1 ? t.vocab[0] : v)) }), /same text/));
  it('add_bos_token that is not a bool', () => failsWith((t) => t, /add_bos_token: not a bool/, setEntry('tokenizer.ggml.add_bos_token', { type: 'u32', value: 1 })));
});

describe('verity tokenize', () => {
  it('prints ids and pieces like llama-tokenize, --json, --no-bos, --parse-special; a bad file is one line, non-zero', async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'tiny.gguf');
      writeFileSync(file, tinyBpeGguf(bpeTokenizer(BPE_MODELS[0])));
      const text = await runCli(['tokenize', file, 'Hello world<|eot_id|>']);
      assert.equal(text.code, 0, text.stderr);
      const lines = text.stdout.toString('utf8').trimEnd().split('\n');
      assert.equal(lines[0], "128000 -> '<|begin_of_text|>'");
      assert.equal(lines[1], "  9906 -> 'Hello'");
      assert.equal(lines[2], "  1917 -> ' world'");
      const json = await runCli(['tokenize', file, 'Hello world<|eot_id|>', '--json', '--no-bos', '--parse-special']);
      assert.deepEqual(JSON.parse(json.stdout.toString('utf8')), { tokens: [9906, 1917, 128009] });
      const bad = join(dir, 'bad.gguf');
      writeFileSync(bad, 'not a model');
      const failed = await runCli(['tokenize', bad, 'x']);
      assert.notEqual(failed.code, 0);
      assert.equal(failed.stderr.trim().split('\n').length, 1, failed.stderr);
      assert.ok(failed.stderr.includes(bad), failed.stderr);
    });
  });
});
