// A model's content id: the Merkle root over [config, tokenizer, every tensor's chunks], tensors in
// canonical order (model.ts canonicalTensors) cut into CHUNK_BYTES pieces. It depends on what the
// model computes, not on the file format that carried it. See docs/model-id.md.
import { createHash } from 'node:crypto';
import { canonicalTensors, type Model } from './model.js';
import { leafHash, merkleRoot, toHex, type Hash } from './merkle.js';
import type { Tokenizer } from './tokenizer.js';

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
  const doc = {
    version: MODEL_ID_VERSION,
    architecture: 'llama',
    dim: c.dim,
    hidden_dim: c.hiddenDim,
    n_layers: c.nLayers,
    n_heads: c.nHeads,
    n_kv_heads: c.nKvHeads,
    vocab_size: c.vocabSize,
    seq_len: c.seqLen,
    norm_eps: f32Hex(c.normEps),
    rope_theta: f32Hex(c.ropeTheta),
    chunk_bytes: CHUNK_BYTES,
    tensors: canonicalTensors(c, model.weights).map((t) => ({ name: t.name, dtype: 'f32', shape: t.shape })),
  };
  return new TextEncoder().encode(JSON.stringify(doc));
}

/** Canonical tokenizer: u32 vocab size, bos, eos; per token f32 score, u32 length, bytes (LE). */
export function canonicalTokenizer(t: Tokenizer): Uint8Array {
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

export interface ModelIdentity {
  modelId: string;
  configHash: string;
  tokenizerHash: string;
  /** Root over the tensor chunks alone: equal for two files holding the same weights. */
  weightsRoot: string;
  chunks: number;
}

export function tensorChunkLeaves(model: Model): Hash[] {
  const leaves: Hash[] = [];
  for (const t of canonicalTensors(model.config, model.weights)) {
    for (let at = 0; at < t.bytes; at += CHUNK_BYTES) {
      leaves.push(leafHash(model.arena.u8(t.ptr + at, Math.min(CHUNK_BYTES, t.bytes - at))));
    }
  }
  return leaves;
}

export function modelIdentity(model: Model): ModelIdentity {
  const config = canonicalConfig(model);
  const tokenizer = canonicalTokenizer(model.tokenizer);
  const chunks = tensorChunkLeaves(model);
  const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
  return {
    modelId: toHex(merkleRoot([leafHash(config), leafHash(tokenizer), ...chunks])),
    configHash: sha(config),
    tokenizerHash: sha(tokenizer),
    weightsRoot: toHex(merkleRoot(chunks)),
    chunks: chunks.length,
  };
}
