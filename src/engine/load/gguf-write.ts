// Writes GGUF v3 files: used to export models (random-weight benchmark models, conversions) and
// by the tests to build well-formed and deliberately malformed files.
import { closeSync, openSync, writeSync } from 'node:fs';
import { canonicalTensors, type Model } from '../model.js';
import { toSentencePiece } from './gguf.js';

export type GgufEntry =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'string'; value: string | Uint8Array }
  | { type: 'strings'; value: (string | Uint8Array)[] }
  | { type: 'f32s'; value: ArrayLike<number> }
  | { type: 'i32s'; value: ArrayLike<number> };

export interface GgufTensorData {
  name: string;
  /** GGUF order: ne[0] (the contiguous dimension) first. */
  dims: number[];
  type: number;
  data: Uint8Array;
}

export interface GgufContents {
  metadata: [string, GgufEntry][];
  tensors: GgufTensorData[];
}

const ALIGNMENT = 32;
const TYPE = { u32: 4, i32: 5, f32: 6, string: 8, array: 9 } as const;

class ByteSink {
  private chunks: Uint8Array[] = [];
  length = 0;
  push(bytes: Uint8Array): void {
    this.chunks.push(bytes);
    this.length += bytes.length;
  }
  private scalar(bytes: number, set: (view: DataView) => void): void {
    const view = new DataView(new ArrayBuffer(bytes));
    set(view);
    this.push(new Uint8Array(view.buffer));
  }
  u32(v: number): void {
    this.scalar(4, (b) => b.setUint32(0, v, true));
  }
  i32(v: number): void {
    this.scalar(4, (b) => b.setInt32(0, v, true));
  }
  f32(v: number): void {
    this.scalar(4, (b) => b.setFloat32(0, v, true));
  }
  u64(v: number): void {
    this.scalar(8, (b) => b.setBigUint64(0, BigInt(v), true));
  }
  str(s: string | Uint8Array): void {
    const bytes = typeof s === 'string' ? new TextEncoder().encode(s) : s;
    this.u64(bytes.length);
    this.push(bytes);
  }
  pad(): void {
    const n = (ALIGNMENT - (this.length % ALIGNMENT)) % ALIGNMENT;
    if (n) this.push(new Uint8Array(n));
  }
  bytes(): Uint8Array[] {
    return this.chunks;
  }
}

function writeEntry(out: ByteSink, entry: GgufEntry): void {
  switch (entry.type) {
    case 'u32': out.u32(TYPE.u32); out.u32(entry.value); break;
    case 'i32': out.u32(TYPE.i32); out.i32(entry.value); break;
    case 'f32': out.u32(TYPE.f32); out.f32(entry.value); break;
    case 'string': out.u32(TYPE.string); out.str(entry.value); break;
    case 'strings':
      out.u32(TYPE.array); out.u32(TYPE.string); out.u64(entry.value.length);
      for (const s of entry.value) out.str(s);
      break;
    case 'f32s':
      out.u32(TYPE.array); out.u32(TYPE.f32); out.u64(entry.value.length);
      for (let i = 0; i < entry.value.length; i++) out.f32(entry.value[i]);
      break;
    case 'i32s':
      out.u32(TYPE.array); out.u32(TYPE.i32); out.u64(entry.value.length);
      for (let i = 0; i < entry.value.length; i++) out.i32(entry.value[i]);
      break;
  }
}

/** Serialises a GGUF v3 file (header, metadata, tensor table, 32-byte aligned data). */
export function ggufBytes(contents: GgufContents): Uint8Array[] {
  const out = new ByteSink();
  out.push(new TextEncoder().encode('GGUF'));
  out.u32(3);
  out.u64(contents.tensors.length);
  out.u64(contents.metadata.length);
  for (const [key, entry] of contents.metadata) {
    out.str(key);
    writeEntry(out, entry);
  }
  let offset = 0;
  for (const t of contents.tensors) {
    out.str(t.name);
    out.u32(t.dims.length);
    for (const d of t.dims) out.u64(d);
    out.u32(t.type);
    out.u64(offset);
    offset += Math.ceil(t.data.length / ALIGNMENT) * ALIGNMENT;
  }
  out.pad();
  for (const t of contents.tensors) {
    out.push(t.data);
    out.pad();
  }
  return out.bytes();
}

export function writeGguf(path: string, contents: GgufContents): void {
  const fd = openSync(path, 'w');
  try {
    for (const chunk of ggufBytes(contents)) writeSync(fd, chunk);
  } finally {
    closeSync(fd);
  }
}

/** A loaded model as GGUF contents (F32, tokenizer inside, spaces spelled "▁" as SentencePiece does). */
export function ggufFromModel(model: Model, name = 'verity'): GgufContents {
  const c = model.config;
  const t = model.tokenizer;
  const tokens = t.vocab.map(toSentencePiece);
  const metadata: [string, GgufEntry][] = [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['general.name', { type: 'string', value: name }],
    ['llama.context_length', { type: 'u32', value: c.seqLen }],
    ['llama.embedding_length', { type: 'u32', value: c.dim }],
    ['llama.feed_forward_length', { type: 'u32', value: c.hiddenDim }],
    ['llama.block_count', { type: 'u32', value: c.nLayers }],
    ['llama.attention.head_count', { type: 'u32', value: c.nHeads }],
    ['llama.attention.head_count_kv', { type: 'u32', value: c.nKvHeads }],
    ['llama.rope.dimension_count', { type: 'u32', value: c.headSize }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: c.normEps }],
    ['llama.rope.freq_base', { type: 'f32', value: c.ropeTheta }],
    ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'strings', value: tokens }],
    ['tokenizer.ggml.scores', { type: 'f32s', value: t.scores }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: t.bosId }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: t.eosId }],
  ];
  const shared = model.weights.classifier === model.weights.tokenEmbedding;
  const tensors = canonicalTensors(c, model.weights)
    .filter((ref) => !(shared && ref.name === 'output.weight'))
    .map((ref) => ({
      name: ref.name,
      dims: [...ref.shape].reverse(),
      type: 0,
      data: model.arena.u8(ref.ptr, ref.bytes).slice(),
    }));
  return { metadata, tensors };
}
