// SentencePiece-style BPE exactly as llama2.c's run.c does it: a dummy-prefix space, one token per
// UTF-8 code point where the vocabulary has it (else one token per byte, id = byte + 3), then
// repeated merging of the adjacent pair whose merged string scores highest (leftmost on ties).
// Strings are byte strings throughout: a token is whatever bytes the tokenizer file holds.
import { EngineError } from './errors.js';
import { heapPop, heapPush } from './heap.js';
import { MAX_SPECIAL_SCAN_BYTES, encodeBpe, type BpeTokenizer } from './tokenizer-bpe.js';

export interface SentencePieceTokenizer {
  kind: 'sentencepiece';
  vocab: Uint8Array[];
  scores: Float32Array;
  maxTokenLength: number;
  bosId: number;
  eosId: number;
  /** Token bytes (as a latin1 string) → id, the role of run.c's sorted vocabulary. */
  index: Map<string, number>;
}

/** llama2.c's SentencePiece-style tokenizer, or llama.cpp's byte-level BPE (tokenizer-bpe.ts). */
export type Tokenizer = SentencePieceTokenizer | BpeTokenizer;

const latin1 = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');

export function createTokenizer(vocab: Uint8Array[], scores: Float32Array, bosId = 1, eosId = 2): SentencePieceTokenizer {
  const index = new Map<string, number>();
  let maxTokenLength = 0;
  vocab.forEach((piece, id) => {
    const key = latin1(piece);
    if (!index.has(key)) index.set(key, id);
    maxTokenLength = Math.max(maxTokenLength, piece.length);
  });
  return { kind: 'sentencepiece', vocab, scores, maxTokenLength, bosId, eosId, index };
}

/** run.c only merges pairs that beat its initial best score of -1e10. */
const MERGE_FLOOR = -1e10;

interface Symbol {
  id: number;
  start: number; // index of the first initial token it covers: orders symbols left to right
  prev: Symbol | null;
  next: Symbol | null;
  alive: boolean;
}

interface Candidate {
  left: Symbol;
  right: Symbol;
  leftId: number;
  rightId: number;
  merged: number;
  score: number;
}

/** Max-heap order: higher score first, then the leftmost pair. */
const before = (a: Candidate, b: Candidate): boolean => a.score > b.score || (a.score === b.score && a.left.start < b.left.start);


function toBytes(text: string | Uint8Array): Uint8Array {
  const bytes = typeof text === 'string' ? new TextEncoder().encode(text) : text;
  const nul = bytes.indexOf(0);
  return nul < 0 ? bytes : bytes.subarray(0, nul); // C strings end at the first NUL
}

/**
 * Tokens of `text`, with BOS first if `bos` and EOS last if `eos` (run.c `encode`). For a BPE
 * tokenizer `bos` is llama.cpp's add_special (BOS only if the model adds one, as Llama 3 does and
 * Qwen2 does not; EOS too if the model adds one) and `eos` appends EOS; special-token text stays text.
 */
export function encode(t: Tokenizer, text: string | Uint8Array, bos = true, eos = false): number[] {
  if (t.kind === 'bpe') {
    // A prompt (host calls, nodes, clients all tokenise one this way): the partition's work bounded.
    const tokens = encodeBpe(t, text, { addSpecial: bos, parseSpecial: false, maxSpecialScan: MAX_SPECIAL_SCAN_BYTES });
    if (eos && !(bos && t.addEos)) tokens.push(t.eosId);
    return tokens;
  }
  const bytes = toBytes(text);
  const lookup = (b: Uint8Array): number => t.index.get(latin1(b)) ?? -1;
  const initial: number[] = [];
  if (bytes.length > 0) {
    const space = lookup(Uint8Array.of(0x20));
    if (space < 0) throw new EngineError('the tokenizer has no " " token for the dummy prefix');
    initial.push(space);
  }
  // One code point at a time: a lead byte plus at most three continuation bytes.
  for (let i = 0; i < bytes.length; ) {
    let end = i + 1;
    while (end < bytes.length && (bytes[end] & 0xc0) === 0x80 && end - i < 4) end++;
    const unit = bytes.subarray(i, end);
    const id = lookup(unit);
    if (id >= 0) initial.push(id);
    else {
      for (const b of unit) {
        if (b + 3 >= t.vocab.length) throw new EngineError(`byte 0x${b.toString(16)} has no byte-fallback token in a vocabulary of ${t.vocab.length}`);
        initial.push(b + 3);
      }
    }
    i = end;
  }

  const symbols: Symbol[] = initial.map((id, start) => ({ id, start, prev: null, next: null, alive: true }));
  symbols.forEach((s, i) => {
    s.prev = symbols[i - 1] ?? null;
    s.next = symbols[i + 1] ?? null;
  });
  const heap: Candidate[] = [];
  const consider = (left: Symbol | null, right: Symbol | null): void => {
    if (!left || !right) return;
    const pair = new Uint8Array(t.vocab[left.id].length + t.vocab[right.id].length);
    pair.set(t.vocab[left.id]);
    pair.set(t.vocab[right.id], t.vocab[left.id].length);
    const merged = lookup(pair);
    if (merged < 0) return;
    const score = t.scores[merged];
    if (score > MERGE_FLOOR) heapPush(heap, { left, right, leftId: left.id, rightId: right.id, merged, score }, before);
  };
  for (let i = 0; i + 1 < symbols.length; i++) consider(symbols[i], symbols[i + 1]);

  for (let c = heapPop(heap, before); c; c = heapPop(heap, before)) {
    const { left, right } = c;
    const stale = !left.alive || !right.alive || left.next !== right || left.id !== c.leftId || right.id !== c.rightId;
    if (stale) continue;
    left.id = c.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next) right.next.prev = left;
    consider(left.prev, left);
    consider(left, left.next);
  }

  const tokens: number[] = bos ? [t.bosId] : [];
  for (let s: Symbol | null = symbols[0] ?? null; s; s = s.next) tokens.push(s.id);
  if (eos) tokens.push(t.eosId);
  return tokens;
}

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{1,2})/;

export interface TokenizeOptions {
  /** BOS (and EOS) as the model adds them: always BOS for SentencePiece (run.c), `add_bos_token` for BPE. */
  addSpecial: boolean;
  /**
   * Control tokens spelled in the text (`<|begin_of_text|>`, `<|im_start|>` …) become those single
   * tokens, as llama.cpp's parse_special; otherwise they are tokenized as plain text. BPE only:
   * llama2.c's tokenizer has no special tokens, so it has no effect there.
   */
  parseSpecial: boolean;
}

/** llama.cpp's llama_tokenize(text, add_special, parse_special); what chat templates build on. */
export function tokenize(t: Tokenizer, text: string | Uint8Array, options: TokenizeOptions): number[] {
  return t.kind === 'bpe' ? encodeBpe(t, text, options) : encode(t, text, options.addSpecial, false);
}

/**
 * The bytes printed for `token` following `prev` (run.c `decode`). BPE: llama.cpp's token_to_piece
 * with special = true (control tokens print their text; `prev` does not matter).
 */
export function decodePiece(t: Tokenizer, prev: number, token: number): Uint8Array {
  if (t.kind === 'bpe') return t.pieces[token];
  let piece = t.vocab[token];
  if (prev === t.bosId && piece[0] === 0x20) piece = piece.subarray(1);
  const match = BYTE_TOKEN.exec(latin1(piece));
  return match ? Uint8Array.of(parseInt(match[1], 16)) : piece;
}

const isPrintOrSpace = (b: number): boolean => (b >= 0x20 && b <= 0x7e) || (b >= 0x09 && b <= 0x0d);

/**
 * What run.c's `safe_printf` writes for a piece: the bytes up to the first NUL, and nothing for a
 * lone byte that is neither printable nor whitespace (so raw bytes ≥ 0x80 are dropped).
 */
export function printableBytes(piece: Uint8Array): Uint8Array {
  const nul = piece.indexOf(0);
  const text = nul < 0 ? piece : piece.subarray(0, nul);
  if (text.length === 1 && !isPrintOrSpace(text[0])) return text.subarray(0, 0);
  return text;
}

/**
 * What run.c prints for `tokens` generated after `prev`: each token's piece after its predecessor,
 * unprintable lone bytes dropped. The text of a completion, the same for the node, the coordinator
 * and anyone checking a receipt.
 */
export function completionText(t: Tokenizer, prev: number, tokens: number[]): string {
  const pieces: Uint8Array[] = [];
  for (const token of tokens) {
    if (!Number.isInteger(token) || token < 0 || token >= t.vocab.length) throw new RangeError(`token ${token} is not in the vocabulary`);
    // BPE pieces may split a character's bytes across tokens: they are joined before UTF-8 decoding.
    pieces.push(t.kind === 'bpe' ? t.pieces[token] : printableBytes(decodePiece(t, prev, token)));
    prev = token;
  }
  return Buffer.concat(pieces).toString('utf8');
}

/**
 * Concatenated text of tokens (the pieces each token prints after its predecessor). BPE: every
 * token's piece, the first included (no clean-up of spaces: llama.cpp's detokenize clean_spaces is not applied).
 */
export function decode(t: Tokenizer, tokens: number[]): Uint8Array {
  if (t.kind === 'bpe') return Buffer.concat(tokens.map((tok) => t.pieces[tok]));
  const parts = tokens.slice(1).map((tok, i) => decodePiece(t, tokens[i], tok));
  return Buffer.concat(parts);
}
