// A model's content id: the Merkle root over [config, tokenizer, every tensor's chunks], tensors in
// canonical order (model.ts canonicalTensors) cut into CHUNK_BYTES pieces. It depends on what the
// model computes, not on the file format that carried it. See docs/model-id.md.
import { createHash } from 'node:crypto';
import { ARCHITECTURES, architectureOf, isArchitecture } from './architecture.js';
import { EngineError } from './errors.js';
import { isDType, rowsFit } from './dtypes.js';
import {
  canonicalTensors, configProblem, deriveConfig, f32Matrix, matrixBytes,
  type DType, type Model, type ModelConfig, type Weights,
} from './model.js';
import { leafHash, merkleRoot, toHex } from './merkle.js';
import { tensorBytes } from './load/mapped.js';
import { createTokenizer, type Tokenizer } from './tokenizer.js';
import { createBpeTokenizer, type BpeTokenizer } from './tokenizer-bpe.js';

export const MODEL_ID_VERSION = 'verity-model/1';
/** Arweave's chunk size, so that a published model's chunks are its storage chunks. */
export const CHUNK_BYTES = 256 * 1024;

const f32Hex = (v: number): string => {
  const b = new DataView(new ArrayBuffer(4));
  b.setFloat32(0, v);
  return `0x${b.getUint32(0).toString(16).padStart(8, '0')}`;
};

/** Canonical config: JSON with a fixed key order, f32 constants as their bit patterns. */
export function canonicalConfig(model: Model): Uint8Array {
  const c = model.config;
  const rope = architectureOf(c).rope;
  const doc = {
    version: MODEL_ID_VERSION,
    architecture: c.architecture ?? 'llama',
    dim: c.dim,
    hidden_dim: c.hiddenDim,
    n_layers: c.nLayers,
    n_heads: c.nHeads,
    n_kv_heads: c.nKvHeads,
    vocab_size: c.vocabSize,
    seq_len: c.seqLen,
    norm_eps: f32Hex(c.normEps),
    rope_theta: f32Hex(c.ropeTheta),
    // Only where it is not the interleaved default, so that llama configs (and ids) read as before.
    ...(rope === 'interleaved' ? {} : { rope_type: rope }),
    chunk_bytes: CHUNK_BYTES,
    tensors: canonicalTensors(c, model.weights).map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })),
  };
  return new TextEncoder().encode(JSON.stringify(doc));
}

/**
 * Canonical tokenizer. SentencePiece (unchanged since verity-model/1): u32 vocab size, bos, eos;
 * per token f32 score, u32 length, bytes (LE). BPE: its own versioned layout (canonicalBpeTokenizer).
 */
export function canonicalTokenizer(t: Tokenizer): Uint8Array {
  if (t.kind === 'bpe') return canonicalBpeTokenizer(t);
  const size = 12 + t.vocab.reduce((n, piece) => n + 8 + piece.length, 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint32(0, t.vocab.length, true);
  view.setUint32(4, t.bosId, true);
  view.setUint32(8, t.eosId, true);
  let at = 12;
  t.vocab.forEach((piece, i) => {
    view.setFloat32(at, t.scores[i], true);
    view.setUint32(at + 4, piece.length, true);
    out.set(piece, at + 8);
    at += 8 + piece.length;
  });
  return out;
}

/**
 * "VBPE" (which as a SentencePiece vocab size would need a multi-gigabyte leaf), u32 layout
 * version 1, u32 length + pre-tokenizer name, u32 vocab size, u32 bos, u32 eos, u8 add_bos,
 * u8 add_eos, per token u8 type + u32 length + bytes, u32 merge count, per merge u32 left + u32
 * right token id (in rank order). Everything that changes token ids, nothing else.
 */
const BPE_MAGIC = 0x45504256; // "VBPE" read as a little-endian u32
const BPE_LAYOUT_VERSION = 1;

function canonicalBpeTokenizer(t: BpeTokenizer): Uint8Array {
  const pre = new TextEncoder().encode(t.pre);
  const size = 12 + pre.length + 14 + t.vocab.reduce((n, piece) => n + 5 + piece.length, 0) + 4 + 4 * t.merges.length;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let at = 0;
  const u32 = (v: number): void => {
    view.setUint32(at, v, true);
    at += 4;
  };
  u32(BPE_MAGIC);
  u32(BPE_LAYOUT_VERSION);
  u32(pre.length);
  out.set(pre, at);
  at += pre.length;
  u32(t.vocab.length);
  u32(t.bosId);
  u32(t.eosId);
  out[at++] = t.addBos ? 1 : 0;
  out[at++] = t.addEos ? 1 : 0;
  t.vocab.forEach((piece, i) => {
    out[at++] = t.tokenTypes[i];
    u32(piece.length);
    out.set(piece, at);
    at += piece.length;
  });
  u32(t.merges.length / 2);
  for (const id of t.merges) u32(id);
  return out;
}

function parseCanonicalBpeTokenizer(leaf: Uint8Array): Tokenizer {
  const bytes = new Uint8Array(leaf);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (why: string): never => {
    throw new EngineError(`bad tokenizer encoding: ${why}`);
  };
  let at = 0;
  const u32 = (): number => {
    if (at + 4 > bytes.length) fail('truncated');
    at += 4;
    return view.getUint32(at - 4, true);
  };
  const take = (n: number): Uint8Array => {
    if (n > bytes.length - at) fail('truncated');
    at += n;
    return bytes.subarray(at - n, at);
  };
  if (u32() !== BPE_MAGIC || u32() !== BPE_LAYOUT_VERSION) fail('unknown BPE layout');
  const preLength = u32();
  if (preLength > 64) fail('pre-tokenizer name too long');
  const pre = new TextDecoder('utf-8', { fatal: true }).decode(take(preLength));
  const size = u32();
  if (size === 0 || size > (bytes.length - at) / 5) fail(`${size} tokens cannot fit in ${bytes.length} bytes`);
  const bosId = u32();
  const eosId = u32();
  const [addBos, addEos] = take(2);
  if (addBos > 1 || addEos > 1) fail('bad add_bos/add_eos');
  const vocab: Uint8Array[] = [];
  const tokenTypes = new Uint8Array(size);
  for (let i = 0; i < size; i++) {
    tokenTypes[i] = take(1)[0];
    vocab.push(take(u32()));
  }
  const mergeCount = u32();
  if (mergeCount > (bytes.length - at) / 8) fail(`${mergeCount} merges cannot fit in ${bytes.length} bytes`);
  const merges = new Uint32Array(2 * mergeCount);
  for (let i = 0; i < merges.length; i++) merges[i] = u32();
  if (at !== bytes.length) fail('trailing bytes');
  try {
    return createBpeTokenizer({ pre, vocab, tokenTypes, merges, bosId, eosId, addBos: addBos === 1, addEos: addEos === 1 });
  } catch (e) {
    throw e instanceof EngineError ? new EngineError(`bad tokenizer encoding: ${e.message}`) : e;
  }
}

export interface ModelIdentity {
  modelId: string;
  configHash: string;
  tokenizerHash: string;
  /** Root over the tensor chunks alone: equal for two files holding the same weights. */
  weightsRoot: string;
  chunks: number;
}

/**
 * The leaves of the model tree in order: config, tokenizer, then every tensor's chunks (views of
 * the model's memory, not copies).
 */
export function modelTreeLeaves(model: Model): Uint8Array[] {
  // A partial model (a pipeline stage's share) lacks the other tensors' bytes: its id is the whole
  // model's, which the caller has from the job or from loading the whole model once.
  if (model.part) throw new EngineError('this model was loaded in part (LoadOptions.layers): it carries no model id; take the id from the whole model or the job');
  const leaves = [canonicalConfig(model), canonicalTokenizer(model.tokenizer)];
  for (const t of canonicalTensors(model.config, model.weights)) {
    for (let at = 0; at < t.bytes; at += CHUNK_BYTES) leaves.push(tensorBytes(model.arena, t, at, Math.min(CHUNK_BYTES, t.bytes - at)));
  }
  return leaves;
}

export function modelIdentity(model: Model): ModelIdentity {
  const [config, tokenizer, ...chunks] = modelTreeLeaves(model);
  const chunkHashes = chunks.map((c) => leafHash(c));
  const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
  return {
    modelId: toHex(merkleRoot([leafHash(config), leafHash(tokenizer), ...chunkHashes])),
    configHash: sha(config),
    tokenizerHash: sha(tokenizer),
    weightsRoot: toHex(merkleRoot(chunkHashes)),
    chunks: chunks.length,
  };
}

// ---------------------------------------------------------------------------------------------
// Reading the canonical encodings back: a referee or a downloader rebuilds a model (or the part of
// it a step needs) from the leaves it verified against the model id.

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

export interface CanonicalConfig {
  config: ModelConfig;
  tensors: TensorSpec[];
  chunkBytes: number;
}

const fromF32Hex = (hex: unknown): number => {
  if (typeof hex !== 'string' || !/^0x[0-9a-f]{8}$/.test(hex)) throw new EngineError(`bad model config: ${String(hex)} is not an f32 bit pattern`);
  const b = new DataView(new ArrayBuffer(4));
  b.setUint32(0, parseInt(hex.slice(2), 16));
  return b.getFloat32(0);
};

export function parseCanonicalConfig(bytes: Uint8Array): CanonicalConfig {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)) as Record<string, unknown>;
  } catch {
    throw new EngineError('bad model config: not JSON');
  }
  if (doc.version !== MODEL_ID_VERSION) throw new EngineError(`bad model config: version ${String(doc.version)}`);
  const arch = doc.architecture;
  if (!isArchitecture(arch)) throw new EngineError(`bad model config: architecture ${String(arch)}`);
  const rope = ARCHITECTURES[arch].rope;
  if (doc.rope_type !== (rope === 'interleaved' ? undefined : rope)) throw new EngineError(`bad model config: rope_type ${String(doc.rope_type)} for ${arch}`);
  // RoPE factors are a tensor of their own, listed right after the token embedding.
  const ropeFactors = Array.isArray(doc.tensors) && (doc.tensors[1] as TensorSpec | undefined)?.name === 'rope_freqs.weight';
  const int = (key: string): number => {
    const v = doc[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new EngineError(`bad model config: ${key}`);
    return v;
  };
  const config = deriveConfig({
    dim: int('dim'),
    hiddenDim: int('hidden_dim'),
    nLayers: int('n_layers'),
    nHeads: int('n_heads'),
    nKvHeads: int('n_kv_heads'),
    vocabSize: int('vocab_size'),
    seqLen: int('seq_len'),
    normEps: fromF32Hex(doc.norm_eps),
    ropeTheta: fromF32Hex(doc.rope_theta),
    ...(arch === 'llama' ? {} : { architecture: arch }),
    ...(ropeFactors ? { ropeFactors } : {}),
  });
  const problem = configProblem(config);
  if (problem) throw new EngineError(`bad model config: ${problem}`);
  const tensors = doc.tensors as TensorSpec[];
  // Nine tensors a layer at least: bounded by the leaf's own size before the expected list is built
  // (n_layers 10^8 in a 300-byte leaf would build 900 million of them).
  if (!Array.isArray(tensors) || config.nLayers * 9 > tensors.length) throw new EngineError(`bad model config: n_layers ${config.nLayers} with ${Array.isArray(tensors) ? tensors.length : 'no'} tensors`);
  const expected = canonicalTensors(config, placeholderWeights(config.nLayers));
  const valid =
    Array.isArray(tensors) &&
    tensors.length === expected.length &&
    tensors.every(
      (t, i) =>
        typeof t === 'object' && t !== null && Array.isArray(t.shape) &&
        t.name === expected[i].name &&
        (t.dtype === 'f32' || (isDType(t.dtype) && t.shape.length === 2 && rowsFit(t.dtype, t.shape[1]))) &&
        JSON.stringify(t.shape) === JSON.stringify(expected[i].shape),
    );
  if (!valid) throw new EngineError('bad model config: the tensor list does not match the shapes');
  return { config, tensors: tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })), chunkBytes: int('chunk_bytes') };
}

function placeholderWeights(layers: number): Weights {
  const m = f32Matrix(0);
  const layer = { attnNorm: 0, wq: m, wk: m, wv: m, wo: m, ffnNorm: 0, w1: m, w2: m, w3: m };
  return { tokenEmbedding: m, layers: Array.from({ length: layers }, () => layer), finalNorm: 0, classifier: m };
}

/**
 * The tokenizer a leaf encodes. Either kind keeps one private copy of the leaf and its tokens are
 * views of it: a buffer per token would double the memory of a large vocabulary, and views of the
 * caller's bytes would pin whatever holds them (a 4 MiB chunk item of the store).
 */
export function parseCanonicalTokenizer(leaf: Uint8Array): Tokenizer {
  if (leaf.length >= 4 && new DataView(leaf.buffer, leaf.byteOffset, 4).getUint32(0, true) === BPE_MAGIC) return parseCanonicalBpeTokenizer(leaf);
  const bytes = new Uint8Array(leaf);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (): never => {
    throw new EngineError('bad tokenizer encoding');
  };
  if (bytes.length < 12) fail();
  const size = view.getUint32(0, true);
  if (size > (bytes.length - 12) / 8) fail(); // every token takes at least 8 bytes: bound before allocating
  const vocab: Uint8Array[] = [];
  const scores = new Float32Array(size);
  let at = 12;
  for (let i = 0; i < size; i++) {
    if (at + 8 > bytes.length) fail();
    scores[i] = view.getFloat32(at, true);
    const len = view.getUint32(at + 4, true);
    if (at + 8 + len > bytes.length) fail();
    vocab.push(bytes.subarray(at + 8, at + 8 + len));
    at += 8 + len;
  }
  if (at !== bytes.length || view.getUint32(4, true) >= size || view.getUint32(8, true) >= size) fail();
  return createTokenizer(vocab, scores, view.getUint32(4, true), view.getUint32(8, true));
}

export const tensorSpecBytes = (t: TensorSpec): number =>
  t.shape.length === 2 ? matrixBytes(t.dtype, t.shape[0], t.shape[1]) : matrixBytes(t.dtype, 1, t.shape[0]);

export interface TensorLeaves extends TensorSpec {
  /** Index of the tensor's first chunk in the model tree (leaf 0 is the config, 1 the tokenizer). */
  firstLeaf: number;
  chunks: number;
  bytes: number;
}

/** Where each tensor's chunks sit among the model tree's leaves, and the number of leaves. */
export function chunkLayout(c: CanonicalConfig): { leaves: number; tensors: TensorLeaves[] } {
  let next = 2;
  const tensors = c.tensors.map((t) => {
    const bytes = tensorSpecBytes(t);
    const chunks = Math.ceil(bytes / c.chunkBytes);
    const entry = { ...t, firstLeaf: next, chunks, bytes };
    next += chunks;
    return entry;
  });
  return { leaves: next, tensors };
}
