// Attacks on what the engine parses from store bytes (a model's canonical config and tokenizer
// leaves, which anyone can publish): each must be a one-line EngineError, found by a bound checked
// before the expensive work, never a crash, an out-of-memory or minutes of CPU.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  EngineError, ModelFileError, canonicalTokenizer, encode, parseCanonicalConfig, parseCanonicalTokenizer, renderChat, type ChatMessage, type Model,
} from '../../src/engine/index.js';
import {
  MAX_SPECIAL_SCAN_BYTES, MAX_STRAY_MARKER_BYTES, byteLevelDecodedLength, byteLevelDecode, createBpeTokenizer, specialScanBytes, type BpeTokenizer,
} from '../../src/engine/tokenizer-bpe.js';
import { describeRequest } from '../../src/processes/host.js';

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

/** A BPE leaf as canonicalTokenizer writes it, for the vocabulary given (every token normal). */
function bpeLeaf(vocab: Uint8Array[]): Uint8Array {
  // canonicalTokenizer only reads the fields of the leaf layout: build those by hand, not via
  // createBpeTokenizer (which the attack is about).
  const t = { kind: 'bpe', pre: 'gpt-2', vocab, tokenTypes: new Uint8Array(vocab.length).fill(1), merges: new Uint32Array(0), bosId: 0, eosId: 0, addBos: false, addEos: false } as unknown as BpeTokenizer;
  return canonicalTokenizer(t);
}

describe('a BPE tokenizer leaf whose pieces decode to the square of its size', () => {
  it('byteLevelDecodedLength is what byteLevelDecode gives', () => {
    for (const text of ['hello', 'Ġworld', '中文', 'a中b', '\u{1F600}x', '']) {
      const bytes = utf8(text);
      assert.equal(byteLevelDecodedLength(bytes), byteLevelDecode(bytes).length, text);
    }
  });

  it('a 40,000-character CJK token (120 KB) is refused before its 4.8 GB piece is built', () => {
    // llama_decode_text appends the whole token text after each code point outside the byte
    // alphabet: unbounded, this leaf took 13 s and died with "Invalid array length".
    const leaf = bpeLeaf([utf8('a'), utf8('中'.repeat(40_000))]);
    assert.throws(() => parseCanonicalTokenizer(leaf), (e: Error) => e instanceof EngineError && /decode to \d+ bytes, more than/.test(e.message) && !e.message.includes('\n'));
  });

  it('many mid-sized stray tokens are refused by the total, not each alone', () => {
    // 200 tokens of 1,000 CJK characters: 3 MB each decoded, 600 MB together (from a 600 KB leaf).
    const vocab = [utf8('a'), ...Array.from({ length: 200 }, (_, i) => utf8(`${String.fromCharCode(0x4e00 + i)}${'中'.repeat(999)}`))];
    assert.throws(() => parseCanonicalTokenizer(bpeLeaf(vocab)), /decode to \d+ bytes/);
  });

  it('a few stray characters within the allowance still load, decoded as llama.cpp does', () => {
    const t = createBpeTokenizer({ pre: 'gpt-2', vocab: [utf8('a'), utf8('中x')], tokenTypes: [1, 1], merges: [], bosId: 0, eosId: 0 });
    assert.equal(Buffer.from(t.pieces[1]).toString('latin1'), '[UNK_BYTE_0xe4b8ad' + Buffer.from('中x').toString('latin1') + ']x');
    assert.ok(MAX_STRAY_MARKER_BYTES >= 1 << 20);
  });
});

describe('a canonical config naming more layers than it lists tensors', () => {
  const config = (nLayers: number): Uint8Array =>
    utf8(JSON.stringify({
      version: 'verity-model/1', architecture: 'llama', dim: 64, hidden_dim: 64, n_layers: nLayers, n_heads: 2, n_kv_heads: 2, vocab_size: 32,
      seq_len: 8, norm_eps: '0x3727c5ac', rope_theta: '0x461c4000', chunk_bytes: 262144, tensors: [],
    }));

  it('n_layers 10^8 in a 300-byte leaf is refused before the expected tensor list is built', () => {
    // Unbounded, parseCanonicalConfig built 900 million expected tensors: the CU died out of memory.
    assert.throws(() => parseCanonicalConfig(config(100_000_000)), (e: Error) => e instanceof EngineError && /n_layers 100000000/.test(e.message));
    assert.throws(() => parseCanonicalConfig(config(2 ** 31)), /n_layers/);
  });
});

describe('a vocabulary of many user-defined tokens against a long prompt', () => {
  // The shattering token comes first (longest); every later one scans every fragment it left.
  function shatterTokenizer(count: number): BpeTokenizer {
    const vocab = [utf8('\x01\x01\x01\x01'), utf8('a')];
    for (let i = 0; vocab.length < count + 2; i++) vocab.push(Uint8Array.of(0x02 + (i >> 14), 0x40 + ((i >> 7) & 0x7f), 0x80 + (i & 0x7f)));
    const types = vocab.map((_, i) => (i === 1 ? 1 : 4));
    return createBpeTokenizer({ pre: 'gpt-2', vocab, tokenTypes: types, merges: [], bosId: 1, eosId: 1 });
  }

  it('encode refuses a 64 KB prompt over 10,000 user-defined tokens before partitioning it (unbounded: ~30 s)', () => {
    const t = shatterTokenizer(10_000);
    const prompt = '\x01\x01\x01\x01a'.repeat(13_107);
    assert.ok(specialScanBytes(t, prompt.length, false) > MAX_SPECIAL_SCAN_BYTES);
    assert.throws(() => encode(t, prompt), (e: Error) => e instanceof EngineError && /special tokens in it: \d+ bytes to scan, more than 67108864/.test(e.message));
    // The job a host call, a node and a client describe from it: the same one-line refusal.
    const model = { modelId: '0'.repeat(64), tokenizerHash: '0'.repeat(64), tokenizer: t, seqLen: 64 };
    assert.throws(() => describeRequest(model, { prompt, maxTokens: 1, seed: '1', temperature: 0, topP: 1 }), /bytes to scan/);
  });

  it('within the bound the same tokenizer still tokenises, as before', () => {
    const t = shatterTokenizer(100);
    assert.deepEqual(encode(t, '\x01\x01\x01\x01a'.repeat(3), false), [0, 1, 0, 1, 0, 1]);
    assert.deepEqual(encode(t, '', false), []);
  });
});

describe('a GGUF chat template that loops or reads the clock', () => {
  const model = (chatTemplate: string): Model =>
    ({ file: 'hostile.gguf', chatTemplate, tokenizer: { kind: 'bpe', vocab: [utf8('<s>'), utf8('</s>')], bosId: 0, eosId: 1 } }) as unknown as Model;
  const hi: ChatMessage[] = [{ role: 'user', content: 'hi' }];

  it('range(10^8) and nested range(3000)s are refused, not run for minutes', () => {
    for (const source of ['{% for i in range(100000000) %}{% endfor %}x', '{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}x']) {
      assert.throws(() => renderChat(model(source), hi), (e: Error) => e instanceof ModelFileError && /range\(\) gives more than 65536 values/.test(e.message));
    }
  });

  it('range keeps its meaning within the bound; raise_exception still raises', () => {
    const text = renderChat(model("{% for i in range(3) %}{{ i }}{% endfor %}|{% for i in range(5, 0, -2) %}{{ i }}{% endfor %}|{{ range(2, 4)|length }}|{{ messages[0]['content'] }}{{ bos_token }}"), hi);
    assert.equal(text, '012|531|2|hi<s>');
    assert.throws(() => renderChat(model("{{ raise_exception('no system role') }}"), hi), /chat template failed: no system role/);
  });

  it('strftime_now is not defined: the same messages render the same text on any day', () => {
    // Llama 3.1's template: {%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}
    const text = renderChat(model("{% if strftime_now is defined %}{{ strftime_now('%d %b %Y') }}{% else %}26 Jul 2024{% endif %}"), hi);
    assert.equal(text, '26 Jul 2024');
  });
});

describe('a tokenizer that does not fit its config', () => {
  it('a BPE vocabulary past 2^20 tokens is refused (merge keys and the sampler stop there)', () => {
    const vocab = Array.from({ length: (1 << 20) + 1 }, (_, i) => utf8(`t${i}`));
    const started = { pre: 'gpt-2', vocab, tokenTypes: new Uint8Array(vocab.length).fill(1), merges: [], bosId: 0, eosId: 0 };
    assert.throws(() => createBpeTokenizer(started), (e: Error) => e instanceof EngineError && /1048577 tokens, more than the 1048576 supported/.test(e.message));
  });

  it('a model assembled from parts whose tokenizer has more tokens than the config has rows is refused', async () => {
    const { loadModel, modelTreeLeaves, parseCanonicalConfig: parse, assembleModel, createTokenizer } = await import('../../src/engine/index.js');
    const { stories260K, tok512 } = await import('../helpers.js');
    const model = loadModel(stories260K, { tokenizer: tok512 });
    const canonical = parse(modelTreeLeaves(model)[0]);
    const longer = createTokenizer([...model.tokenizer.vocab, utf8('extra')], Float32Array.from([...model.tokenizer.scores, 0]));
    assert.throws(() => assembleModel(canonical, () => undefined, longer), /the tokenizer has 513 tokens, the config's vocabulary 512/);
  });
});
