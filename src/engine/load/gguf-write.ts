// Writes GGUF v3 files: used to export models (random-weight benchmark models, conversions) and
// by the tests to build well-formed and deliberately malformed files.
import { closeSync, openSync, writeSync } from 'node:fs';
import { DTYPES } from '../dtypes.js';
import { matrixBytes, storedTensors, type Model, type TensorRef } from '../model.js';
import { dequantizeBlocks, f32ToF16, fallbackType, mixTensorType, quantizeBlocks, type QuantizeTarget } from '../quantize.js';
import type { Tokenizer } from '../tokenizer.js';
import { toSentencePiece } from './gguf.js';
import { tensorBytes, tensorF32 } from './mapped.js';

export type GgufEntry =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string | Uint8Array }
  | { type: 'strings'; value: (string | Uint8Array)[] }
  | { type: 'f32s'; value: ArrayLike<number> }
  | { type: 'i32s'; value: ArrayLike<number> };

export interface GgufTensorData {
  name: string;
  /** GGUF order: ne[0] (the contiguous dimension) first. */
  dims: number[];
  type: number;
  bytes: number;
  /** Produced when the file is written, one tensor at a time. */
  data(): Uint8Array;
}

export const GGML_TYPE = {
  F32: DTYPES.f32.ggmlType, F16: 1, Q8_0: DTYPES.q8_0.ggmlType, Q4_0: DTYPES.q4_0.ggmlType,
  Q4_K: DTYPES.q4_k.ggmlType, Q5_K: DTYPES.q5_k.ggmlType, Q6_K: DTYPES.q6_k.ggmlType,
} as const;

export interface GgufContents {
  metadata: [string, GgufEntry][];
  tensors: GgufTensorData[];
}

const ALIGNMENT = 32;
const TYPE = { u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9 } as const;

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
    case 'bool': out.u32(TYPE.bool); out.push(Uint8Array.of(entry.value ? 1 : 0)); break;
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

/** The header, metadata and tensor table, padded to where the tensor data starts. */
function ggufHeader(contents: GgufContents): Uint8Array[] {
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
    offset += padded(t.bytes);
  }
  out.pad();
  return out.bytes();
}

const padded = (n: number): number => Math.ceil(n / ALIGNMENT) * ALIGNMENT;

/** Every byte of the file, in order (header, then each tensor padded to the alignment). */
export function* ggufChunks(contents: GgufContents): Generator<Uint8Array> {
  yield* ggufHeader(contents);
  for (const t of contents.tensors) {
    const data = t.data();
    if (data.length !== t.bytes) throw new Error(`tensor ${t.name}: ${data.length} bytes, declared ${t.bytes}`);
    yield data;
    if (padded(t.bytes) > t.bytes) yield new Uint8Array(padded(t.bytes) - t.bytes);
  }
}

export const ggufBytes = (contents: GgufContents): Uint8Array => Buffer.concat([...ggufChunks(contents)]);

/** Streams the file to disk; `onTensor` sees each tensor as it is written (for progress). */
export function writeGguf(path: string, contents: GgufContents, onTensor?: (index: number) => void): void {
  const fd = openSync(path, 'w');
  try {
    for (const chunk of ggufHeader(contents)) writeSync(fd, chunk);
    contents.tensors.forEach((t, i) => {
      const data = t.data();
      writeSync(fd, data);
      if (padded(t.bytes) > t.bytes) writeSync(fd, new Uint8Array(padded(t.bytes) - t.bytes));
      onTensor?.(i);
    });
  } finally {
    closeSync(fd);
  }
}

/** Weight types a GGUF export can write (a type, F16 or a mix); 'keep' writes every tensor in the type it has. */
export type ExportType = QuantizeTarget | 'keep';

export interface GgufExportOptions {
  /** Weight type for matrices: 'f32', 'f16', a quantised type or mix (quantize.ts; rows not whole blocks fall back). */
  type?: ExportType;
  name?: string;
}

/** A loaded model as GGUF contents (tokenizer inside, spaces spelled "▁" as SentencePiece does). */
export function ggufFromModel(model: Model, options: GgufExportOptions = {}): GgufContents {
  const name = options.name ?? 'verity';
  const c = model.config;
  const t = model.tokenizer;
  // Hyperparameters under the architecture's name, as llama.cpp's converter writes them.
  const arch = c.architecture ?? 'llama';
  const metadata: [string, GgufEntry][] = [
    ['general.architecture', { type: 'string', value: arch }],
    ['general.name', { type: 'string', value: name }],
    [`${arch}.context_length`, { type: 'u32', value: c.seqLen }],
    [`${arch}.embedding_length`, { type: 'u32', value: c.dim }],
    [`${arch}.feed_forward_length`, { type: 'u32', value: c.hiddenDim }],
    [`${arch}.block_count`, { type: 'u32', value: c.nLayers }],
    [`${arch}.attention.head_count`, { type: 'u32', value: c.nHeads }],
    [`${arch}.attention.head_count_kv`, { type: 'u32', value: c.nKvHeads }],
    [`${arch}.rope.dimension_count`, { type: 'u32', value: c.headSize }],
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: 'f32', value: c.normEps }],
    [`${arch}.rope.freq_base`, { type: 'f32', value: c.ropeTheta }],
    ...tokenizerMetadata(t),
  ];
  if (model.chatTemplate !== undefined) metadata.push(['tokenizer.chat_template', { type: 'string', value: model.chatTemplate }]);
  const tensors = storedTensors(c, model.weights).map((ref) => tensorData(model, ref, options.type ?? 'f32'));
  return { metadata, tensors };
}

/** The tokenizer as llama.cpp reads it: SentencePiece 'llama' (spaces as "▁") or byte-level BPE 'gpt2'. */
export function tokenizerMetadata(t: Tokenizer): [string, GgufEntry][] {
  if (t.kind === 'bpe') {
    const merges = Array.from({ length: t.merges.length / 2 }, (_, r) =>
      Buffer.concat([t.vocab[t.merges[2 * r]], Uint8Array.of(0x20), t.vocab[t.merges[2 * r + 1]]]));
    return [
      ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
      ['tokenizer.ggml.pre', { type: 'string', value: t.pre }],
      ['tokenizer.ggml.tokens', { type: 'strings', value: t.vocab }],
      ['tokenizer.ggml.token_type', { type: 'i32s', value: t.tokenTypes }],
      ['tokenizer.ggml.merges', { type: 'strings', value: merges }],
      ['tokenizer.ggml.bos_token_id', { type: 'u32', value: t.bosId }],
      ['tokenizer.ggml.eos_token_id', { type: 'u32', value: t.eosId }],
      ['tokenizer.ggml.add_bos_token', { type: 'bool', value: t.addBos }],
      ['tokenizer.ggml.add_eos_token', { type: 'bool', value: t.addEos }],
    ];
  }
  return [
    ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'strings', value: t.vocab.map(toSentencePiece) }],
    ['tokenizer.ggml.scores', { type: 'f32s', value: t.scores }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: t.bosId }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: t.eosId }],
  ];
}

/** A tensor as the requested weight type: matrices are quantised (quantize.ts picks per tensor for a mix and the fallback for rows that are not whole blocks); vectors stay f32. */
function tensorData(model: Model, ref: TensorRef, type: ExportType): GgufTensorData {
  const dims = [...ref.shape].reverse();
  const stored = (): Uint8Array => tensorBytes(model.arena, ref, 0, ref.bytes).slice();
  const count = ref.shape.reduce((a, b) => a * b, 1);
  const asF32 = (): Float32Array =>
    ref.dtype === 'f32' ? tensorF32(model.arena, ref, 0, count).slice() : dequantizeBlocks(ref.dtype, tensorBytes(model.arena, ref, 0, ref.bytes));
  const shared = model.weights.classifier === model.weights.tokenEmbedding;
  const wanted = type === 'keep' ? ref.dtype : mixTensorType(type, ref.name, model.config.nLayers, shared);
  const dtype = ref.shape.length === 2 && wanted !== 'f16' ? fallbackType(wanted, ref.shape[1]) : 'f32';
  if (dtype !== 'f32') {
    const bytes = matrixBytes(dtype, ref.shape[0], ref.shape[1]);
    const data = ref.dtype === dtype ? stored : () => quantizeBlocks(dtype, asF32());
    return { name: ref.name, dims, type: DTYPES[dtype].ggmlType, bytes, data };
  }
  if (wanted === 'f16' && ref.shape.length === 2) {
    const data = (): Uint8Array => new Uint8Array(Uint16Array.from(asF32(), f32ToF16).buffer);
    return { name: ref.name, dims, type: GGML_TYPE.F16, bytes: 2 * count, data };
  }
  const data = ref.dtype === 'f32' ? stored : () => new Uint8Array(asF32().buffer);
  return { name: ref.name, dims, type: GGML_TYPE.F32, bytes: 4 * count, data };
}
