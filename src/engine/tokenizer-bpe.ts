// Byte-level BPE exactly as llama.cpp's `gpt2` tokenizer model does it (src/llama-vocab.cpp and
// src/unicode.cpp are the reference, including their hand-written pre-tokenizer fast paths):
//
//   1. special-token partition: the raw text is cut at every occurrence of a special token's text
//      (longest tokens first); control tokens only when `parseSpecial`, user-defined ones always;
//   2. each remaining piece is decoded into code points (a bad UTF-8 byte becomes U+FFFD) and
//      split into words by the pre-tokenizer named in the file (`tokenizer.ggml.pre`);
//   3. each word's UTF-8 bytes are spelled in GPT-2's byte-to-unicode alphabet;
//   4. a word that is a whole token is that token when the pre-tokenizer says to ignore merges
//      (Llama 3); otherwise its characters are merged pairwise, lowest merge rank first (leftmost
//      on ties), until no adjacent pair has a rank;
//   5. each final symbol is its token; one that is not a token falls back to one token per byte.
import { EngineError } from './errors.js';
import { heapPop, heapPush } from './heap.js';
import { LETTER_RANGES, NUMBER_RANGES } from './unicode-classes.js';

/** GGUF `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type). */
export const TOKEN_TYPE = { undefined: 0, normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

export interface BpeTokenizer {
  kind: 'bpe';
  /** The pre-tokenizer name as the file spells it (`tokenizer.ggml.pre`). */
  pre: string;
  /** Token text as stored: byte-level spelling for normal tokens, raw text for special ones. */
  vocab: Uint8Array[];
  /** As the file stores them (what the model id and a written GGUF carry). */
  tokenTypes: Uint8Array;
  /** The types llama.cpp acts on after its load-time fix-ups (effectiveTypes). */
  roles: Uint8Array;
  /** Merge rank r joins tokens merges[2r] and merges[2r + 1]. */
  merges: Uint32Array;
  bosId: number;
  eosId: number;
  addBos: boolean;
  addEos: boolean;
  /** Unused by BPE; empty (kept so that code sizing a tokenizer needs no case split). */
  scores: Float32Array;
  maxTokenLength: number;
  /** Token text (latin1 of its bytes) → id. */
  index: Map<string, number>;
  /** pairKey(left, right) token ids → merge rank (the first of duplicate merges wins, as in llama.cpp). */
  ranks: Map<number, number>;
  /** Control, user-defined and unknown tokens, longest text first (ties by id). */
  special: number[];
  /** What each token decodes to: llama.cpp's token_to_piece with special = true. */
  pieces: Uint8Array[];
  split: (cpts: Uint32Array) => number[];
  ignoreMerges: boolean;
}

// ---------------------------------------------------------------------------------------------
// Code point classes, as llama.cpp's unicode tables give them.

/** llama.cpp's whitespace set (unicode-data.cpp unicode_set_whitespace): not JavaScript's \s. */
const WHITESPACE = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680,
  0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a,
  0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);
const LETTER = 1;
const NUMBER = 2;
const SPACE = 4;
const OTHER = 8; // any other code point: llama.cpp's flags are never empty inside a word

/** Whether cpt lies in one of the inclusive [first, last] ranges (binary search). */
function inRanges(ranges: readonly number[], cpt: number): boolean {
  let lo = 0;
  let hi = ranges.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (cpt < ranges[2 * mid]) hi = mid - 1;
    else if (cpt > ranges[2 * mid + 1]) lo = mid + 1;
    else return true;
  }
  return false;
}

/**
 * Letters and numbers from a frozen table (unicode-classes.ts), not from the running Node's ICU:
 * its Unicode version changes between Node releases, and every machine must tokenise alike.
 */
function classOf(cpt: number): number {
  if (WHITESPACE.has(cpt)) return SPACE;
  if (inRanges(LETTER_RANGES, cpt)) return LETTER;
  return inRanges(NUMBER_RANGES, cpt) ? NUMBER : OTHER;
}

/** Code points of UTF-8 bytes the way llama.cpp decodes them (unicode_cpts_from_utf8). */
export function codePoints(bytes: Uint8Array): Uint32Array {
  const out: number[] = [];
  const n = bytes.length;
  const cont = (i: number): boolean => i < n && (bytes[i] & 0xc0) === 0x80;
  for (let i = 0; i < n; ) {
    const b = bytes[i];
    if (!(b & 0x80)) { out.push(b); i += 1; continue; }
    if (b & 0x40) {
      if (!(b & 0x20)) {
        if (i + 1 < n && cont(i + 1)) { out.push(((b & 0x1f) << 6) | (bytes[i + 1] & 0x3f)); i += 2; continue; }
      } else if (!(b & 0x10)) {
        if (i + 2 < n && cont(i + 1) && cont(i + 2)) {
          out.push(((b & 0x0f) << 12) | ((bytes[i + 1] & 0x3f) << 6) | (bytes[i + 2] & 0x3f));
          i += 3;
          continue;
        }
      } else if (!(b & 0x08)) {
        if (i + 3 < n && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
          out.push(((b & 0x07) << 18) | ((bytes[i + 1] & 0x3f) << 12) | ((bytes[i + 2] & 0x3f) << 6) | (bytes[i + 3] & 0x3f));
          i += 4;
          continue;
        }
      }
    }
    out.push(0xfffd); // llama.cpp skips one byte of a bad sequence and emits U+FFFD
    i += 1;
  }
  return Uint32Array.from(out);
}

/** UTF-8 of one code point (llama.cpp unicode_cpt_to_utf8, which also encodes surrogates). */
function pushUtf8(out: number[], c: number): void {
  if (c <= 0x7f) out.push(c);
  else if (c <= 0x7ff) out.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
  else if (c <= 0xffff) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
  else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 0x3f), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
}

// ---------------------------------------------------------------------------------------------
// GPT-2's byte-to-unicode alphabet: printable latin-1 bytes stand for themselves, the other 68
// bytes are spelled U+0100 onwards in byte order.

const BYTE_TO_CPT = new Uint32Array(256);
const CPT_TO_BYTE = new Map<number, number>();
{
  const printable = (b: number): boolean => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 256;
  for (let b = 0; b < 256; b++) BYTE_TO_CPT[b] = printable(b) ? b : next++;
  BYTE_TO_CPT.forEach((c, b) => CPT_TO_BYTE.set(c, b));
}

/** A byte string spelled in the byte-level alphabet, as UTF-8 bytes (how the vocabulary stores it). */
export function byteLevelEncode(bytes: Uint8Array): Uint8Array {
  const out: number[] = [];
  for (const b of bytes) pushUtf8(out, BYTE_TO_CPT[b]);
  return Uint8Array.from(out);
}

const hex2 = (b: number): string => b.toString(16).padStart(2, '0');

/** Back from the byte-level alphabet (llama.cpp llama_decode_text, including its marker for strays). */
export function byteLevelDecode(text: Uint8Array): Uint8Array {
  const out: number[] = [];
  for (const c of codePoints(text)) {
    const b = CPT_TO_BYTE.get(c);
    if (b !== undefined) {
      out.push(b);
      continue;
    }
    const utf8: number[] = [];
    pushUtf8(utf8, c);
    const marker = `[UNK_BYTE_0x${utf8.map(hex2).join('')}`;
    for (const ch of Buffer.from(marker, 'latin1')) out.push(ch);
    for (const ch of text) out.push(ch); // llama.cpp appends the whole token text, then "]"
    out.push(0x5d);
  }
  return Uint8Array.from(out);
}

/**
 * How many bytes byteLevelDecode(text) gives, without building them: each code point outside the
 * alphabet costs a marker holding the whole token text, so a long token of strays decodes to its
 * length squared (a 12 KB token of CJK text: 48 MB).
 */
export function byteLevelDecodedLength(text: Uint8Array): number {
  let bytes = 0;
  for (const c of codePoints(text)) {
    if (CPT_TO_BYTE.has(c)) bytes += 1;
    else bytes += 12 + 2 * (c <= 0x7f ? 1 : c <= 0x7ff ? 2 : c <= 0xffff ? 3 : 4) + text.length + 1; // "[UNK_BYTE_0x" hex text "]"
  }
  return bytes;
}

/**
 * What the markers for code points outside the byte-level alphabet may add to the decoded pieces,
 * over the vocabulary's own bytes (real vocabularies have none: Llama 3, Qwen2.5). Checked before
 * any piece is built: the pieces of a hostile vocabulary grow with the square of a token's length.
 */
export const MAX_STRAY_MARKER_BYTES = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers. Each takes the code points of one text piece and returns word lengths (in code
// points); a step of several is applied to each word of the previous step.

type Step = (cpts: Uint32Array, start: number, end: number, out: number[]) => void;

const CR = 0x0d;
const LF = 0x0a;
const APOSTROPHE = 0x27;
const lowerAscii = (c: number): number => (c >= 0x41 && c <= 0x5a ? c + 32 : c);

/** Length of a contraction ('s 't 'm 'd 're 've 'll) at `pos`, or 0; `fold` matches both cases. */
function contraction(cpts: Uint32Array, pos: number, end: number, fold: boolean): number {
  if (cpts[pos] !== APOSTROPHE || pos + 1 >= end) return 0;
  const low = (c: number): number => (fold ? lowerAscii(c) : c);
  const a = low(cpts[pos + 1]);
  if (a === 0x73 || a === 0x74 || a === 0x6d || a === 0x64) return 2; // s t m d
  if (pos + 2 >= end) return 0;
  const b = low(cpts[pos + 2]);
  return (a === 0x72 && b === 0x65) || (a === 0x76 && b === 0x65) || (a === 0x6c && b === 0x6c) ? 3 : 0; // re ve ll
}

/**
 * Llama 3's pattern, as llama.cpp's hand-written unicode_regex_split_custom_llama3 runs it:
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 */
const llama3Step: Step = (cpts, start, end, out) => {
  const cls = (p: number): number => (p >= start && p < end ? classOf(cpts[p]) : 0);
  const cpt = (p: number): number => (p >= start && p < end ? cpts[p] : -1);
  let prev = start;
  const emit = (to: number): void => {
    if (to > prev) out.push(to - prev);
    prev = to;
  };
  for (let pos = start; pos < end; ) {
    const c = cpts[pos];
    const k = cls(pos);
    const apos = contraction(cpts, pos, end, true);
    if (apos) { pos += apos; emit(pos); continue; }
    if (c !== CR && c !== LF && k !== NUMBER && (k === LETTER || cls(pos + 1) === LETTER)) {
      pos++;
      while (cls(pos) === LETTER) pos++;
      emit(pos);
      continue;
    }
    if (k === NUMBER) {
      let run = pos;
      while (cls(pos) === NUMBER) {
        if (++pos - run >= 3) { emit(pos); run = pos; }
      }
      emit(pos);
      continue;
    }
    const k2 = c === 0x20 ? cls(pos + 1) : k;
    if (k2 !== SPACE && k2 !== LETTER && k2 !== NUMBER) { // the space's own class is never empty
      if (c === 0x20) pos++;
      for (let kk = cls(pos); kk === OTHER; kk = cls(++pos));
      while (cpt(pos) === CR || cpt(pos) === LF) pos++;
      emit(pos);
      continue;
    }
    let spaces = 0;
    let afterLastNewline = 0;
    while (cls(pos + spaces) === SPACE) {
      const s = cpts[pos + spaces];
      if (s === CR || s === LF) afterLastNewline = pos + spaces + 1;
      spaces++;
    }
    if (afterLastNewline > 0) { pos = afterLastNewline; emit(pos); continue; }
    if (spaces > 1 && pos + spaces < end) { pos += spaces - 1; emit(pos); continue; }
    if (spaces > 0) { pos += spaces; emit(pos); continue; }
    emit(++pos);
  }
};

/**
 * GPT-2's pattern, as llama.cpp's unicode_regex_split_custom_gpt2 runs it:
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 */
const gpt2Step: Step = (cpts, start, end, out) => {
  const cls = (p: number): number => (p >= start && p < end ? classOf(cpts[p]) : 0);
  let prev = start;
  const emit = (to: number): void => {
    if (to > prev) out.push(to - prev);
    prev = to;
  };
  for (let pos = start; pos < end; ) {
    const c = cpts[pos];
    const apos = contraction(cpts, pos, end, false);
    if (apos) { pos += apos; emit(pos); continue; }
    const k2 = c === 0x20 ? cls(pos + 1) : cls(pos);
    if (k2 === LETTER || k2 === NUMBER || k2 === OTHER) { // ` ?` then a run of that one class
      if (c === 0x20) pos++;
      while (cls(pos) === k2) pos++;
      emit(pos);
      continue;
    }
    let spaces = 0;
    while (cls(pos + spaces) === SPACE) spaces++;
    if (spaces > 1 && pos + spaces < end) { pos += spaces - 1; emit(pos); continue; }
    if (spaces > 0) { pos += spaces; emit(pos); continue; }
    emit(++pos);
  }
};

/**
 * A pattern llama.cpp has no hand-written path for runs through std::regex over a "collapsed"
 * text: one character per code point, ASCII kept, other whitespace as \v, other letters and
 * numbers as one stand-in each (everything else as a third). The patterns below are written for
 * that alphabet; JavaScript's regex semantics equal ECMAScript std::regex's on it.
 */
const STAND_IN_LETTER = 'Ò';
const STAND_IN_NUMBER = 'Ñ';
const STAND_IN_OTHER = 'Ð';

function collapse(cpts: Uint32Array, start: number, end: number): string {
  let s = '';
  for (let p = start; p < end; p++) {
    const c = cpts[p];
    if (c < 128) s += String.fromCharCode(c);
    else {
      const k = classOf(c);
      s += k === SPACE ? '\v' : k === LETTER ? STAND_IN_LETTER : k === NUMBER ? STAND_IN_NUMBER : STAND_IN_OTHER;
    }
  }
  return s;
}

const regexStep = (pattern: RegExp): Step => (cpts, start, end, out) => {
  const text = collapse(cpts, start, end);
  const re = new RegExp(pattern.source, 'g');
  let at = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (m[0].length === 0) { re.lastIndex++; continue; }
    if (m.index > at) out.push(m.index - at); // text no alternative matched stays a word
    out.push(m[0].length);
    at = m.index + m[0].length;
  }
  if (at < text.length) out.push(text.length - at);
};

const L = `${STAND_IN_LETTER}A-Za-z`;
const N = `${STAND_IN_NUMBER}0-9`;
const QWEN2_PATTERN = new RegExp(
  `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n${L}${N}]?[${L}]+|[${N}]| ?[^\\s${L}${N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`,
);
const DIGIT_PATTERN = new RegExp(`[${N}]`);

interface PreTokenizer {
  steps: Step[];
  /** A word that is a whole token is taken as is (llama.cpp's ignore_merges). */
  ignoreMerges: boolean;
  /** add_bos when the file does not say (tokenizer.ggml.add_bos_token). */
  addBos: boolean;
}

/** The supported `tokenizer.ggml.pre` names: one row per llama.cpp pre-tokenizer type. */
const LLAMA3: PreTokenizer = { steps: [llama3Step], ignoreMerges: true, addBos: true };
export const PRE_TOKENIZERS: Record<string, PreTokenizer> = {
  'llama-bpe': LLAMA3,
  llama3: LLAMA3,
  'llama-v3': LLAMA3,
  qwen2: { steps: [regexStep(QWEN2_PATTERN)], ignoreMerges: false, addBos: false },
  smollm: { steps: [regexStep(DIGIT_PATTERN), gpt2Step], ignoreMerges: false, addBos: false },
  'gpt-2': { steps: [gpt2Step], ignoreMerges: false, addBos: false },
};

function splitter(steps: Step[]): (cpts: Uint32Array) => number[] {
  return (cpts) => {
    let words = [cpts.length];
    for (const step of steps) {
      const next: number[] = [];
      let start = 0;
      for (const len of words) {
        step(cpts, start, start + len, next);
        start += len;
      }
      words = next;
    }
    return words;
  };
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's load-time fix-ups of token types (llama_vocab::impl::load, node-llama-cpp 3.22.1's
// llama.cpp): they decide which tokens the special-token partition sees, so they change ids.

/** Tokens whose text marks end of generation; any that is not a control token becomes one. */
export const END_OF_GENERATION_TEXTS: ReadonlySet<string> = new Set([
  '<|eot_id|>', '<|im_end|>', '<|end|>', '<|return|>', '<|call|>', '<|flush|>', '<|calls|>', '<end_of_turn>',
  '<|endoftext|>', '</s>', '<|eom_id|>', '<EOT>', '_<EOT>', '[EOT]', '[EOS]', '<|end_of_text|>',
  '<end_of_utterance>', '<eos>', '<turn|>', '<|tool_response>',
]);
/** gpt-oss: always rendered, so user-defined whatever the file says. */
const ALWAYS_USER_DEFINED = ['<|channel|>', '<|message|>', '<|start|>', '<|constrain|>'];

function effectiveTypes(types: Uint8Array, index: Map<string, number>): Uint8Array {
  const roles = types.slice();
  const idOf = (text: string): number | undefined => index.get(Buffer.from(text, 'utf8').toString('latin1'));
  for (const text of END_OF_GENERATION_TEXTS) {
    const id = idOf(text);
    if (id !== undefined && roles[id] !== TOKEN_TYPE.control) roles[id] = TOKEN_TYPE.control;
  }
  for (const text of ALWAYS_USER_DEFINED) {
    const id = idOf(text);
    if (id !== undefined) roles[id] = TOKEN_TYPE.userDefined;
  }
  const has = (text: string): boolean => idOf(text) !== undefined;
  const call = has('<|call|>') || has('<|calls|>');
  if (has('<|end|>') && ((has('<|return|>') && call) || (call && has('<|flush|>')))) roles[idOf('<|end|>') as number] = TOKEN_TYPE.userDefined;
  if (has('<|tool_response>') && has('</s>')) roles[idOf('</s>') as number] = TOKEN_TYPE.normal; // gemma4, paddleocr
  return roles;
}

// ---------------------------------------------------------------------------------------------

const latin1 = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
/** The most tokens a BPE vocabulary may have (the sampler's id space, configProblem's cap). */
export const MAX_BPE_TOKENS = 1 << 20;

/** A merge's key: token ids are below 2^20 (MAX_BPE_TOKENS), so the pair is an exact double. */
const pairKey = (left: number, right: number): number => left * 0x200000 + right;

export interface BpeTokenizerSpec {
  pre: string;
  vocab: Uint8Array[];
  tokenTypes: ArrayLike<number>;
  merges: ArrayLike<number>; // left0, right0, left1, right1, …
  bosId: number;
  eosId: number;
  /** Defaults to the pre-tokenizer's (true for Llama 3). */
  addBos?: boolean;
  addEos?: boolean;
}

/** Checks everything that affects token ids; throws an EngineError naming the first problem. */
export function createBpeTokenizer(spec: BpeTokenizerSpec): BpeTokenizer {
  const fail = (problem: string): never => {
    throw new EngineError(problem);
  };
  const pre = PRE_TOKENIZERS[spec.pre];
  if (!pre || !Object.hasOwn(PRE_TOKENIZERS, spec.pre)) fail(`unsupported pre-tokenizer '${spec.pre}' (supported: ${Object.keys(PRE_TOKENIZERS).join(', ')})`);
  const n = spec.vocab.length;
  if (n === 0) fail('the tokenizer has no tokens');
  // Merge keys (pairKey) are exact below 2^21 ids; the engine's vocabularies stop at 2^20.
  if (n > MAX_BPE_TOKENS) fail(`the tokenizer has ${n} tokens, more than the ${MAX_BPE_TOKENS} supported`);
  if (spec.tokenTypes.length !== n) fail(`tokenizer.ggml.token_type has ${spec.tokenTypes.length} entries for ${n} tokens`);
  const tokenTypes = new Uint8Array(n);
  const index = new Map<string, number>();
  let maxTokenLength = 0;
  for (let id = 0; id < n; id++) {
    const type = spec.tokenTypes[id];
    if (!Number.isInteger(type) || type < 0 || type > 6) fail(`token ${id} has an unknown token type ${type}`);
    tokenTypes[id] = type;
    const text = spec.vocab[id];
    if (text.length === 0) fail(`token ${id} is empty`);
    const key = latin1(text);
    if (index.has(key)) fail(`tokens ${index.get(key)} and ${id} have the same text`); // llama.cpp asserts this too
    index.set(key, id);
    maxTokenLength = Math.max(maxTokenLength, text.length);
  }
  const id = (what: string, v: number): number => (Number.isInteger(v) && v >= 0 && v < n ? v : fail(`${what} ${v} is not a token id (${n} tokens)`));
  if (spec.merges.length % 2 !== 0) fail('merges are not pairs');
  const merges = new Uint32Array(spec.merges.length);
  const ranks = new Map<number, number>();
  for (let r = 0; r < spec.merges.length / 2; r++) {
    const left = id(`merge ${r}: token`, spec.merges[2 * r]);
    const right = id(`merge ${r}: token`, spec.merges[2 * r + 1]);
    merges[2 * r] = left;
    merges[2 * r + 1] = right;
    const key = pairKey(left, right);
    if (!ranks.has(key)) ranks.set(key, r);
  }
  const roles = effectiveTypes(tokenTypes, index);
  const special: number[] = [];
  roles.forEach((type, t) => {
    if (type === TOKEN_TYPE.control || type === TOKEN_TYPE.userDefined || type === TOKEN_TYPE.unknown) special.push(t);
  });
  special.sort((a, b) => spec.vocab[b].length - spec.vocab[a].length || a - b);
  let vocabBytes = 0;
  let decodedBytes = 0;
  roles.forEach((type, t) => {
    vocabBytes += spec.vocab[t].length;
    decodedBytes += type === TOKEN_TYPE.normal ? byteLevelDecodedLength(spec.vocab[t]) : spec.vocab[t].length;
  });
  if (decodedBytes > vocabBytes + MAX_STRAY_MARKER_BYTES) {
    fail(`the tokens decode to ${decodedBytes} bytes, more than their ${vocabBytes} plus ${MAX_STRAY_MARKER_BYTES} for characters outside the byte-level alphabet`);
  }
  const decoded = spec.vocab.map((text, t) => {
    const type = roles[t];
    if (type === TOKEN_TYPE.control || type === TOKEN_TYPE.userDefined || type === TOKEN_TYPE.unknown) return text;
    if (type === TOKEN_TYPE.normal) return byteLevelDecode(text);
    return new Uint8Array(0); // unused, byte and undefined tokens print nothing in llama.cpp
  });
  // Views of one buffer: 150,000 pieces with a buffer each would take twice the memory.
  const pieceBytes = Buffer.concat(decoded);
  let at = 0;
  const pieces = decoded.map((piece) => pieceBytes.subarray(at, (at += piece.length)));
  return {
    kind: 'bpe',
    pre: spec.pre,
    vocab: spec.vocab,
    tokenTypes,
    roles,
    merges,
    bosId: id('bos token id', spec.bosId),
    eosId: id('eos token id', spec.eosId),
    addBos: spec.addBos ?? pre.addBos,
    addEos: spec.addEos ?? false,
    scores: new Float32Array(0),
    maxTokenLength,
    index,
    ranks,
    special,
    pieces,
    split: splitter(pre.steps),
    ignoreMerges: pre.ignoreMerges,
  };
}

type Fragment = Uint8Array | number; // raw text, or a special token already recognised

/** llama.cpp tokenizer_st_partition: cut raw text at each special token's occurrences, longest first. */
function partition(t: BpeTokenizer, text: Uint8Array, parseSpecial: boolean): Fragment[] {
  let fragments: Fragment[] = text.length > 0 ? [text] : [];
  for (const sid of t.special) {
    if (!parseSpecial && t.roles[sid] !== TOKEN_TYPE.userDefined) continue;
    const needle = Buffer.from(t.vocab[sid].buffer, t.vocab[sid].byteOffset, t.vocab[sid].byteLength);
    const next: Fragment[] = [];
    for (const f of fragments) {
      if (typeof f === 'number') { next.push(f); continue; }
      const hay = Buffer.from(f.buffer, f.byteOffset, f.byteLength);
      let at = 0;
      for (let m = hay.indexOf(needle, at); m >= 0; m = hay.indexOf(needle, at)) {
        if (m > at) next.push(f.subarray(at, m));
        next.push(sid);
        at = m + needle.length;
      }
      if (at < f.length) next.push(f.subarray(at));
    }
    fragments = next;
  }
  return fragments;
}

interface Candidate {
  rank: number;
  left: number; // symbol index
  right: number;
  leftId: number;
  rightId: number;
}

/** Heap order: lowest rank first, then the leftmost pair (llama.cpp llm_bigram_bpe::comparator). */
const before = (a: Candidate, b: Candidate): boolean => a.rank < b.rank || (a.rank === b.rank && a.left < b.left);


/** The tokens of one word (already in the byte-level alphabet). */
function bpeWord(t: BpeTokenizer, word: Uint8Array, out: number[]): void {
  const key = latin1(word);
  const whole = t.index.get(key);
  if (t.ignoreMerges && whole !== undefined) {
    out.push(whole);
    return;
  }
  // One symbol per UTF-8 character; `text` spans are kept so that a non-token symbol can fall back to bytes.
  const starts: number[] = [];
  const ends: number[] = [];
  for (let at = 0; at < word.length; ) {
    const b = word[at];
    const len = b < 0xc0 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
    starts.push(at);
    at = Math.min(word.length, at + len);
    ends.push(at);
  }
  const count = starts.length;
  const ids = starts.map((s, i) => t.index.get(latin1(word.subarray(s, ends[i]))) ?? -1);
  const next = Array.from({ length: count }, (_, i) => (i + 1 < count ? i + 1 : -1));
  const prev = Array.from({ length: count }, (_, i) => i - 1);
  const alive = new Array<boolean>(count).fill(true);
  const heap: Candidate[] = [];
  const consider = (left: number, right: number): void => {
    if (left < 0 || right < 0 || ids[left] < 0 || ids[right] < 0) return;
    const rank = t.ranks.get(pairKey(ids[left], ids[right]));
    if (rank !== undefined) heapPush(heap, { rank, left, right, leftId: ids[left], rightId: ids[right] }, before);
  };
  for (let i = 0; i + 1 < count; i++) consider(i, i + 1);
  for (let c = heapPop(heap, before); c; c = heapPop(heap, before)) {
    const { left, right } = c;
    if (!alive[left] || !alive[right] || next[left] !== right || ids[left] !== c.leftId || ids[right] !== c.rightId) continue;
    ends[left] = ends[right];
    ids[left] = t.index.get(latin1(word.subarray(starts[left], ends[left]))) ?? -1;
    alive[right] = false;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    consider(prev[left], left);
    consider(left, next[left]);
  }
  for (let s = 0; s >= 0 && s < count; s = next[s]) {
    if (ids[s] >= 0) {
      out.push(ids[s]);
      continue;
    }
    for (let b = starts[s]; b < ends[s]; b++) { // llama.cpp: each byte of the symbol as a one-byte token, if any
      const single = t.index.get(String.fromCharCode(word[b]));
      if (single !== undefined) out.push(single);
    }
  }
}

function encodeText(t: BpeTokenizer, text: Uint8Array, out: number[]): void {
  const cpts = codePoints(text);
  let start = 0;
  for (const len of t.split(cpts)) {
    const bytes: number[] = [];
    for (let p = start; p < start + len; p++) pushUtf8(bytes, cpts[p]);
    start += len;
    bpeWord(t, byteLevelEncode(Uint8Array.from(bytes)), out);
  }
}

export interface BpeEncodeOptions {
  /** llama.cpp's add_special: BOS first when the model adds one, EOS last when it adds one. */
  addSpecial: boolean;
  /** Control tokens written in the text become those tokens (chat templates); else plain text. */
  parseSpecial: boolean;
  /**
   * Refuse the text (one-line EngineError, before any work) when the special-token partition would
   * scan more than this many bytes: the special tokens it looks for × the text's length (see
   * MAX_SPECIAL_SCAN_BYTES). Unbounded when absent.
   */
  maxSpecialScan?: number;
}

/**
 * The most bytes encode() lets the special-token partition scan. llama.cpp's partition looks for
 * each special token in turn through every fragment cut so far: a hostile vocabulary of 10,000
 * user-defined tokens made a 20 KB prompt take 9 s (a 64 KB prompt with 100,000 of them, minutes)
 * for the price of one host call. 2^26 is a 64 KB prompt (a host call's most) with 1,024
 * user-defined tokens; Llama 3 has none (its specials are control tokens), Qwen2.5 a handful.
 */
export const MAX_SPECIAL_SCAN_BYTES = 2 ** 26;

/** What the special-token partition of `bytes` bytes scans: the special tokens it looks for × bytes. */
export function specialScanBytes(t: BpeTokenizer, bytes: number, parseSpecial: boolean): number {
  let looked = 0;
  for (const sid of t.special) if (parseSpecial || t.roles[sid] === TOKEN_TYPE.userDefined) looked++;
  return looked * bytes;
}

/** llama.cpp llama_tokenize for a `gpt2` vocabulary. */
export function encodeBpe(t: BpeTokenizer, text: string | Uint8Array, options: BpeEncodeOptions): number[] {
  const bytes = typeof text === 'string' ? new TextEncoder().encode(text) : text;
  if (options.maxSpecialScan !== undefined && bytes.length > 0) {
    const scan = specialScanBytes(t, bytes.length, options.parseSpecial);
    if (scan > options.maxSpecialScan) {
      throw new EngineError(`the text is ${bytes.length} bytes and the tokenizer looks for ${scan / bytes.length} special tokens in it: ${scan} bytes to scan, more than ${options.maxSpecialScan}`);
    }
  }
  const out: number[] = [];
  if (options.addSpecial && t.addBos) out.push(t.bosId);
  for (const f of partition(t, bytes, options.parseSpecial)) {
    if (typeof f === 'number') out.push(f);
    else encodeText(t, f, out);
  }
  if (options.addSpecial && t.addEos) out.push(t.eosId);
  return out;
}
