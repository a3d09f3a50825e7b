// GGUF (versions 2 and 3, little-endian) for the llama architecture with F32, F16, Q8_0, Q4_0,
// Q4_K, Q5_K or Q6_K tensors (the quantised ones per the trait table, src/engine/dtypes.ts)
// and the SentencePiece tokenizer inside. The metadata is parsed from a prefix of the file; tensor data is
// read straight into the engine's memory.
import { ARCHITECTURES, isArchitecture, type Architecture } from '../architecture.js';
import { EngineError, ModelFileError } from '../errors.js';
import { createArena } from '../memory.js';
import { DTYPES, dtypeOfGgml, prepareScales, preparedPerBlock, rowsFit, type DType } from '../dtypes.js';
import { absentLayer, absentMatrix, configProblem, deriveConfig, type LayerWeights, type Matrix, type ModelConfig } from '../model.js';
import { instantiateKernels } from '../numerics/index.js';
import { createTokenizer, type Tokenizer } from '../tokenizer.js';
import { createBpeTokenizer } from '../tokenizer-bpe.js';
import { readBytes, readExact, withFile, type OpenFile } from './file.js';
import { canMapWeights, mapFile, type MappedFile, type WeightPlacement } from './mapped.js';
import { MAX_WEIGHT_BYTES, requestedPart, wasmBudgetProblem, type LoadedWeights, type PartOptions } from './types.js';

const MAGIC = 0x46554747; // "GGUF"
const GGML_TYPE_NAMES: Record<number, string> = {
  0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 6: 'Q5_0', 7: 'Q5_1', 8: 'Q8_0', 9: 'Q8_1', 10: 'Q2_K', 11: 'Q3_K',
  12: 'Q4_K', 13: 'Q5_K', 14: 'Q6_K', 15: 'Q8_K', 16: 'IQ2_XXS', 17: 'IQ2_XS', 18: 'IQ3_XXS', 19: 'IQ1_S',
  20: 'IQ4_NL', 21: 'IQ3_S', 22: 'IQ2_S', 23: 'IQ4_XS', 24: 'I8', 25: 'I16', 26: 'I32', 27: 'I64', 28: 'F64',
  29: 'IQ1_M', 30: 'BF16',
};
const GGML_F32 = 0;
const GGML_F16 = 1;
/** The quantised types a matrix may have (F32 and F16 aside), from the trait table. */
const quantizedType = (ggmlType: number) => {
  const dtype = dtypeOfGgml(ggmlType);
  return dtype && dtype !== 'f32' ? DTYPES[dtype] : undefined;
};

export type GgufValue = number | bigint | boolean | Uint8Array | GgufValue[] | Float32Array | Int32Array;

export interface GgufTensorInfo {
  name: string;
  dims: number[]; // ne[0] first: the fastest-varying dimension
  type: number;
  offset: number; // absolute file offset of the data
}

export interface GgufFile {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
}

/** Signals that the parser ran past the bytes read so far (not necessarily past the file). */
class NeedMore extends Error {}

const decoder = new TextDecoder('utf-8', { fatal: false });
const text = (v: GgufValue | undefined): string | undefined => (v instanceof Uint8Array ? decoder.decode(v) : undefined);
/** Integers may be stored in any integer type, including 64-bit ones. */
const integer = (v: GgufValue | undefined): number | undefined =>
  typeof v === 'bigint' ? (v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= 0n ? Number(v) : undefined) : typeof v === 'number' && Number.isInteger(v) ? v : undefined;

function parseHeader(bytes: Uint8Array, fileSize: number, path: string): GgufFile {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const fail = (problem: string): never => {
    throw new ModelFileError(path, problem);
  };
  const need = (n: number, what: string): void => {
    if (at + n <= bytes.length) return;
    if (bytes.length < fileSize) throw new NeedMore();
    fail(`truncated: the file ends at byte ${fileSize}, inside ${what} (which starts at byte ${at})`);
  };
  const u32 = (what: string): number => {
    need(4, what);
    const v = view.getUint32(at, true);
    at += 4;
    return v;
  };
  const u64 = (what: string): number => {
    need(8, what);
    const v = view.getBigUint64(at, true);
    at += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`bad ${what}: ${v} at byte ${at - 8} is out of range`);
    return Number(v);
  };
  const str = (what: string): Uint8Array => {
    const n = u64(`${what} length`);
    if (n > fileSize) fail(`bad ${what}: length ${n} exceeds the file`);
    need(n, what);
    const s = bytes.subarray(at, at + n);
    at += n;
    return s;
  };
  const SCALAR_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const value = (type: number, key: string): GgufValue => {
    switch (type) {
      case 0: need(1, key); return view.getUint8(at++);
      case 1: need(1, key); return view.getInt8(at++);
      case 2: need(2, key); at += 2; return view.getUint16(at - 2, true);
      case 3: need(2, key); at += 2; return view.getInt16(at - 2, true);
      case 4: return u32(key);
      case 5: need(4, key); at += 4; return view.getInt32(at - 4, true);
      case 6: need(4, key); at += 4; return view.getFloat32(at - 4, true);
      case 7: need(1, key); return view.getUint8(at++) !== 0;
      case 8: return str(key);
      case 10: need(8, key); at += 8; return view.getBigUint64(at - 8, true);
      case 11: need(8, key); at += 8; return view.getBigInt64(at - 8, true);
      case 12: need(8, key); at += 8; return view.getFloat64(at - 8, true);
      case 9: {
        const itemType = u32(`${key} item type`);
        const count = u64(`${key} count`);
        const min = itemType === 8 ? 8 : SCALAR_SIZE[itemType];
        if (min === undefined) fail(`bad metadata ${key}: unknown array item type ${itemType}`);
        if (count * min > fileSize) fail(`truncated or corrupt: metadata ${key} claims ${count} items, more than the file's ${fileSize} bytes hold`);
        if (itemType === 6) {
          need(4 * count, key);
          const out = new Float32Array(count);
          for (let i = 0; i < count; i++) out[i] = view.getFloat32(at + 4 * i, true);
          at += 4 * count;
          return out;
        }
        if (itemType === 5) {
          need(4 * count, key);
          const out = new Int32Array(count);
          for (let i = 0; i < count; i++) out[i] = view.getInt32(at + 4 * i, true);
          at += 4 * count;
          return out;
        }
        const items: GgufValue[] = [];
        for (let i = 0; i < count; i++) items.push(value(itemType, key));
        return items;
      }
      default:
        return fail(`bad metadata ${key}: unknown value type ${type}`);
    }
  };

  if (u32('the magic') !== MAGIC) fail('not a GGUF file (bad magic)');
  const version = u32('the version');
  if (version !== 2 && version !== 3) fail(`unsupported GGUF version ${version} (only 2 and 3)`);
  const tensorCount = u64('the tensor count');
  const kvCount = u64('the metadata count');
  if (tensorCount > fileSize || kvCount > fileSize) fail(`bad header: ${tensorCount} tensors, ${kvCount} metadata entries`);

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = decoder.decode(str('a metadata key'));
    const type = u32(`the type of ${key}`);
    metadata.set(key, value(type, key));
  }
  const infos: Omit<GgufTensorInfo, 'offset'>[] = [];
  const relative: number[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = decoder.decode(str('a tensor name'));
    const nDims = u32(`the rank of ${name}`);
    if (nDims < 1 || nDims > 4) fail(`bad tensor ${name}: rank ${nDims}`);
    const dims = Array.from({ length: nDims }, () => u64(`a dimension of ${name}`));
    const type = u32(`the type of ${name}`);
    infos.push({ name, dims, type });
    relative.push(u64(`the offset of ${name}`));
  }
  const alignment = integer(metadata.get('general.alignment') ?? 32) ?? 0;
  if (alignment <= 0 || alignment > 1 << 20 || (alignment & (alignment - 1)) !== 0) {
    fail(`bad metadata general.alignment: ${String(metadata.get('general.alignment'))}`);
  }
  const dataStart = Math.ceil(at / alignment) * alignment;
  const tensors = infos.map((info, i) => ({ ...info, offset: dataStart + relative[i] }));
  return { version, metadata, tensors };
}

/** Parses the metadata and tensor table, reading a growing prefix of the file as needed. */
export function readGgufHeader(file: OpenFile): GgufFile {
  for (let prefix = Math.min(file.size, 1 << 22); ; prefix = Math.min(file.size, prefix * 4)) {
    const bytes = readBytes(file, 0, prefix, 'the GGUF header');
    try {
      return parseHeader(bytes, file.size, file.path);
    } catch (e) {
      if (!(e instanceof NeedMore)) throw e;
    }
  }
}

const SENTENCEPIECE_SPACE = [0xe2, 0x96, 0x81]; // "▁"

/** SentencePiece pieces spell spaces as "▁"; llama2.c's tokenizer (and its BPE) use " ". */
export function fromSentencePiece(piece: Uint8Array): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < piece.length; i++) {
    const isSpace = piece[i] === SENTENCEPIECE_SPACE[0] && piece[i + 1] === SENTENCEPIECE_SPACE[1] && piece[i + 2] === SENTENCEPIECE_SPACE[2];
    out.push(isSpace ? 0x20 : piece[i]);
    if (isSpace) i += 2;
  }
  return Uint8Array.from(out);
}

export function toSentencePiece(piece: Uint8Array): Uint8Array {
  const out: number[] = [];
  for (const b of piece) {
    if (b === 0x20) out.push(...SENTENCEPIECE_SPACE);
    else out.push(b);
  }
  return Uint8Array.from(out);
}

function ggufTokenizer(gguf: GgufFile, fail: (p: string) => never): Tokenizer {
  const m = gguf.metadata;
  const model = text(m.get('tokenizer.ggml.model'));
  if (model === undefined) fail('no tokenizer inside (tokenizer.ggml.model is missing)');
  if (model !== 'llama' && model !== 'gpt2') fail(`unsupported tokenizer model '${model}' (only SentencePiece 'llama' and byte-level BPE 'gpt2')`);
  const tokens = m.get('tokenizer.ggml.tokens');
  if (!Array.isArray(tokens) || !tokens.every((t) => t instanceof Uint8Array)) fail('bad metadata tokenizer.ggml.tokens');
  if (model === 'gpt2') return ggufBpeTokenizer(m, tokens as Uint8Array[], fail);
  const scores = m.get('tokenizer.ggml.scores');
  if (!(scores instanceof Float32Array) || scores.length !== (tokens as GgufValue[]).length) {
    fail('bad metadata tokenizer.ggml.scores (missing, or not one f32 per token)');
  }
  const id = (key: string, fallback: number): number => {
    const v = integer(m.get(key) ?? fallback);
    if (v === undefined || v >= (tokens as GgufValue[]).length) fail(`bad metadata ${key}: ${String(m.get(key))}`);
    return v as number;
  };
  const vocab = (tokens as Uint8Array[]).map(fromSentencePiece);
  return createTokenizer(vocab, scores as Float32Array, id('tokenizer.ggml.bos_token_id', 1), id('tokenizer.ggml.eos_token_id', 2));
}

/** llama.cpp's `gpt2` vocabulary: tokens, token types, "left right" merges, a named pre-tokenizer. */
function ggufBpeTokenizer(m: Map<string, GgufValue>, tokens: Uint8Array[], fail: (p: string) => never): Tokenizer {
  const pre = m.get('tokenizer.ggml.pre');
  if (pre === undefined) fail('tokenizer.ggml.pre is missing (the BPE pre-tokenizer must be named)');
  const preName = text(pre) ?? fail('bad metadata tokenizer.ggml.pre');
  const types = m.get('tokenizer.ggml.token_type');
  if (!(types instanceof Int32Array)) fail('bad or missing metadata tokenizer.ggml.token_type (one i32 per token)');
  const mergeTexts = m.get('tokenizer.ggml.merges');
  if (!Array.isArray(mergeTexts) || !mergeTexts.every((t) => t instanceof Uint8Array)) fail('bad or missing metadata tokenizer.ggml.merges');
  const byText = new Map<string, number>();
  tokens.forEach((t, i) => byText.set(Buffer.from(t.buffer, t.byteOffset, t.byteLength).toString('latin1'), i));
  const merges = new Uint32Array(2 * (mergeTexts as Uint8Array[]).length);
  (mergeTexts as Uint8Array[]).forEach((merge, r) => {
    const space = merge.indexOf(0x20, 1); // llama.cpp: the first space after the first byte
    const side = (from: number, to: number): number => {
      const id = byText.get(Buffer.from(merge.buffer, merge.byteOffset + from, to - from).toString('latin1'));
      return id ?? fail(`tokenizer.ggml.merges[${r}] '${decoder.decode(merge)}' names a token not in the vocabulary`);
    };
    if (space < 0) fail(`tokenizer.ggml.merges[${r}] '${decoder.decode(merge)}' is not two tokens separated by a space`);
    merges[2 * r] = side(0, space);
    merges[2 * r + 1] = side(space + 1, merge.length);
  });
  const flag = (key: string): boolean | undefined => {
    const v = m.get(key);
    if (v !== undefined && typeof v !== 'boolean') fail(`bad metadata ${key}: not a bool`);
    return v as boolean | undefined;
  };
  const id = (key: string): number => {
    const v = integer(m.get(key) ?? 11); // llama.cpp's default for gpt2 vocabularies
    if (v === undefined || v >= tokens.length) fail(`bad metadata ${key}: ${String(m.get(key) ?? 11)} is not a token id (${tokens.length} tokens)`);
    return v as number;
  };
  try {
    return createBpeTokenizer({
      pre: preName, vocab: tokens, tokenTypes: types as Int32Array, merges,
      bosId: id('tokenizer.ggml.bos_token_id'), eosId: id('tokenizer.ggml.eos_token_id'),
      addBos: flag('tokenizer.ggml.add_bos_token'), addEos: flag('tokenizer.ggml.add_eos_token'),
    });
  } catch (e) {
    if (e instanceof EngineError) fail(e.message);
    throw e;
  }
}

export interface GgufLoadOptions extends PartOptions {
  /** Matrices copied into the arena, mapped from the file (native addon), or 'auto': mapped when they do not fit (default). */
  weights?: WeightPlacement;
  /** The arena bytes weights may take (default MAX_WEIGHT_BYTES); tests simulate a big model with a small one. */
  wasmBudget?: number;
}

export function loadGguf(path: string, options: GgufLoadOptions = {}): LoadedWeights {
  return withFile(path, (file) => {
    const fail = (problem: string): never => {
      throw new ModelFileError(path, problem);
    };
    const gguf = readGgufHeader(file);
    const m = gguf.metadata;
    const archName = text(m.get('general.architecture'));
    if (!isArchitecture(archName)) fail(`unsupported architecture '${archName ?? '(missing)'}' (only ${Object.keys(ARCHITECTURES).join(', ')})`);
    const arch = archName as Architecture;
    // Hyperparameters live under the architecture's name (llama.*, qwen2.*). Mistral is written as
    // llama; its sliding window is not a key llama.cpp reads for llama, which attends to every position.
    const key = (k: string): string => `${arch}.${k}`;
    const int = (key: string, fallback?: number): number => {
      const v = integer(m.get(key) ?? fallback);
      if (v === undefined) fail(`bad or missing metadata ${key}`);
      return v as number;
    };
    const float = (key: string, fallback: number): number => {
      const v = m.get(key) ?? fallback;
      if (typeof v !== 'number') fail(`bad metadata ${key}`);
      return Math.fround(v as number);
    };
    const byName = new Map(gguf.tensors.map((t) => [t.name, t]));
    const embedding = byName.get('token_embd.weight') ?? fail('missing tensor token_embd.weight');
    const nHeads = int(key('attention.head_count'));
    const config: ModelConfig = deriveConfig({
      dim: int(key('embedding_length')),
      hiddenDim: int(key('feed_forward_length')),
      nLayers: int(key('block_count')),
      nHeads,
      nKvHeads: int(key('attention.head_count_kv'), nHeads),
      vocabSize: embedding.dims[1] ?? 0,
      seqLen: int(key('context_length')),
      normEps: float(key('attention.layer_norm_rms_epsilon'), 1e-5),
      ropeTheta: float(key('rope.freq_base'), 10000),
      // Left out for llama, so that a llama config reads as it always did.
      ...(arch === 'llama' ? {} : { architecture: arch }),
      ...(byName.has('rope_freqs.weight') ? { ropeFactors: true } : {}),
    });
    const problem = configProblem(config);
    if (problem) fail(problem);
    const ropeDims = m.get(key('rope.dimension_count'));
    if (ropeDims !== undefined && integer(ropeDims) !== config.headSize) {
      fail(`unsupported: ${key('rope.dimension_count')} ${String(ropeDims)} differs from the head size ${config.headSize}`);
    }
    const scaling = text(m.get(key('rope.scaling.type')));
    const scalingFactor = m.get(key('rope.scaling.factor'));
    if (scaling !== undefined && scaling !== 'none' && !(scalingFactor === undefined || scalingFactor === 1)) {
      fail(`unsupported: ${key('rope.scaling.type')} '${scaling}' (only per-frequency factors, rope_freqs.weight)`);
    }
    const tokenizer = ggufTokenizer(gguf, fail);
    if (tokenizer.vocab.length !== config.vocabSize) {
      fail(`vocab mismatch: the tokenizer has ${tokenizer.vocab.length} tokens, token_embd.weight has ${config.vocabSize} rows`);
    }

    const { dim, hiddenDim, kvDim, vocabSize } = config;
    // Expected shapes, as GGUF writes them: [columns, rows].
    const expected = new Map<string, number[]>([['token_embd.weight', [dim, vocabSize]], ['output_norm.weight', [dim]]]);
    if (byName.has('output.weight')) expected.set('output.weight', [dim, vocabSize]);
    if (config.ropeFactors) expected.set('rope_freqs.weight', [config.headSize / 2]);
    for (let l = 0; l < config.nLayers; l++) {
      const shapes: [string, number[]][] = [
        ['attn_norm', [dim]], ['attn_q', [dim, dim]], ['attn_k', [dim, kvDim]], ['attn_v', [dim, kvDim]],
        ['attn_output', [dim, dim]], ['ffn_norm', [dim]], ['ffn_gate', [dim, hiddenDim]], ['ffn_down', [hiddenDim, dim]],
        ['ffn_up', [dim, hiddenDim]],
      ];
      for (const [kind, shape] of shapes) expected.set(`blk.${l}.${kind}.weight`, shape);
      if (ARCHITECTURES[arch].qkvBias) for (const [kind, n] of [['attn_q', dim], ['attn_k', kvDim], ['attn_v', kvDim]] as const) expected.set(`blk.${l}.${kind}.bias`, [n]);
    }
    for (const t of gguf.tensors) if (!expected.has(t.name)) fail(`unsupported tensor ${t.name}`);
    // A part (a pipeline stage's share) loads only the tensors it uses; all are checked above and below.
    const part = requestedPart(options, config, path);
    const tied = !byName.has('output.weight');
    const heldLayer = (l: number): boolean => !part || (l >= part.layers.first && l < part.layers.end);
    const holds = (name: string): boolean => {
      if (!part) return true;
      const layer = /^blk\.(\d+)\./.exec(name);
      if (layer) return heldLayer(Number(layer[1]));
      if (name === 'token_embd.weight') return part.embedding || (part.head && tied); // a tied classifier is the embedding
      if (name === 'output_norm.weight' || name === 'output.weight') return part.head;
      return true; // rope_freqs.weight: every layer uses it
    };
    /** Bytes in the file and in memory (F16 is widened to f32 at load; quantised types add f32 block scales). */
    const sizes = (t: GgufTensorInfo): { file: number; memory: number } => {
      const count = t.dims.reduce((a, b) => a * b, 1);
      if (t.type === GGML_F32) return { file: 4 * count, memory: 4 * count };
      if (t.type === GGML_F16) return { file: 2 * count, memory: 4 * count };
      const q = quantizedType(t.type)!;
      const blocks = count / q.block;
      return { file: blocks * q.blockBytes, memory: blocks * (q.blockBytes + 4 * preparedPerBlock(q.dtype)) };
    };
    /** Arena bytes of a mapped tensor: the prepared scales of quantised matrices; F16 (widened) and unaligned F32 are copied. */
    const mappable = (t: GgufTensorInfo, matrix: boolean): boolean =>
      matrix && (quantizedType(t.type) !== undefined || (t.type === GGML_F32 && t.offset % 4 === 0));
    // Mapped Q8_0 needs no prepared scales: every native Q8_0 product widens each block's own f16
    // (exact), and a mapped model runs only native kernels; Q8_0 has no malformed-scale rule to check.
    const mappedScales = (dtype: DType): number => (dtype === 'q8_0' ? 0 : preparedPerBlock(dtype));
    const mappedMemory = (t: GgufTensorInfo, matrix: boolean): number => {
      if (!mappable(t, matrix)) return sizes(t).memory;
      const q = quantizedType(t.type);
      return q ? (sizes(t).file / q.blockBytes) * 4 * mappedScales(q.dtype) : 0;
    };
    let totalBytes = 0;
    let mappedBytes = 0;
    for (const [name, shape] of expected) {
      const t = byName.get(name) ?? fail(`missing tensor ${name}`);
      const q = quantizedType(t.type);
      const supported = t.type === GGML_F32 || t.type === GGML_F16 || (q !== undefined && shape.length === 2);
      if (!supported) {
        const allowed = shape.length === 2 ? 'F32, F16, Q8_0, Q4_0, Q4_K, Q5_K or Q6_K' : 'F32 or F16';
        fail(`unsupported tensor type ${GGML_TYPE_NAMES[t.type] ?? `#${t.type}`} for ${name} (only ${allowed})`);
      }
      if (t.dims.length !== shape.length || t.dims.some((d, i) => d !== shape[i])) {
        fail(`bad tensor ${name}: shape [${t.dims.join(', ')}], expected [${shape.join(', ')}]`);
      }
      if (q && !rowsFit(q.dtype, shape[0])) fail(`bad tensor ${name}: ${q.ggmlName} rows of ${shape[0]} are not whole blocks of ${q.block}`);
      const { file: bytes, memory } = sizes(t);
      if (t.offset + bytes > file.size) fail(`truncated: tensor ${name} ends at byte ${t.offset + bytes}, the file has ${file.size}`);
      if (!holds(name)) continue;
      totalBytes += memory;
      mappedBytes += mappedMemory(t, shape.length === 2);
    }
    const budget = options.wasmBudget ?? MAX_WEIGHT_BYTES;
    const placement = options.weights ?? 'auto';
    const mapped = placement === 'mapped' || (placement === 'auto' && totalBytes > budget && canMapWeights());
    if (mapped && !canMapWeights()) fail('cannot map the weights: the native addon is not built (npm ci builds it where a C compiler is present)');
    const tooBig = wasmBudgetProblem(mapped ? mappedBytes : totalBytes, budget, mapped);
    if (tooBig) fail(tooBig);

    const arenaBytes = mapped ? mappedBytes : totalBytes;
    const arena = createArena(arenaBytes + 128 * expected.size);
    let mapping: MappedFile | null = null;
    if (mapped) {
      const extents = [...expected].filter(([name, shape]) => holds(name) && mappable(byName.get(name)!, shape.length === 2)).map(([name]) => {
        const t = byName.get(name)!;
        return { at: t.offset, bytes: sizes(t).file };
      });
      mapping = mapFile(path, extents);
    }
    const kernels = instantiateKernels(arena.memory);
    const load = (name: string, matrix = true): Matrix => {
      const t = byName.get(name)!;
      const { file: bytes, memory } = sizes(t);
      const q = quantizedType(t.type);
      if (mapping && mappable(t, matrix)) {
        // The blocks stay in the file; only the scales the kernels read are prepared into the arena.
        const where = mapping.place(t.offset, bytes);
        if (!q) return { dtype: 'f32', ...where, scales: 0 };
        const floats = (bytes / q.blockBytes) * mappedScales(q.dtype);
        if (floats === 0) return { dtype: q.dtype, ...where, scales: 0 };
        const scales = arena.alloc(4 * floats);
        const problem = prepareScales(q.dtype, mapping.bytes(t.offset, bytes), new Uint32Array(arena.memory.buffer, scales, floats));
        if (problem) fail(`bad tensor ${name}: ${q.ggmlName} ${problem}`);
        return { dtype: q.dtype, ...where, scales };
      }
      if (q) {
        const ptr = arena.alloc(bytes);
        readExact(file, arena.u8(ptr, bytes), t.offset, `tensor ${name}`);
        const floats = (bytes / q.blockBytes) * preparedPerBlock(q.dtype);
        const scales = arena.alloc(4 * floats);
        const problem = prepareScales(q.dtype, arena.u8(ptr, bytes), new Uint32Array(arena.memory.buffer, scales, floats));
        if (problem) fail(`bad tensor ${name}: ${q.ggmlName} ${problem}`);
        return { dtype: q.dtype, ptr, scales };
      }
      const ptr = arena.alloc(memory);
      const count = memory / 4;
      // F16 is read into the upper half and widened in place, front to back.
      const at = t.type === GGML_F16 ? ptr + 2 * count : ptr;
      readExact(file, arena.u8(at, bytes), t.offset, `tensor ${name}`);
      if (t.type === GGML_F16) kernels.f16ToF32(ptr, at, count, 2);
      return { dtype: 'f32', ptr, scales: 0 };
    };
    const vector = (name: string): number => load(name, false).ptr;
    const tokenEmbedding = holds('token_embd.weight') ? load('token_embd.weight') : absentMatrix();
    const layers: LayerWeights[] = Array.from({ length: config.nLayers }, (_, l) => !heldLayer(l) ? absentLayer() : ({
      attnNorm: vector(`blk.${l}.attn_norm.weight`),
      wq: load(`blk.${l}.attn_q.weight`),
      wk: load(`blk.${l}.attn_k.weight`),
      wv: load(`blk.${l}.attn_v.weight`),
      wo: load(`blk.${l}.attn_output.weight`),
      ffnNorm: vector(`blk.${l}.ffn_norm.weight`),
      w1: load(`blk.${l}.ffn_gate.weight`),
      w2: load(`blk.${l}.ffn_down.weight`),
      w3: load(`blk.${l}.ffn_up.weight`),
      ...(ARCHITECTURES[arch].qkvBias ? { bq: vector(`blk.${l}.attn_q.bias`), bk: vector(`blk.${l}.attn_k.bias`), bv: vector(`blk.${l}.attn_v.bias`) } : {}),
    }));
    const ropeFactors = config.ropeFactors ? vector('rope_freqs.weight') : 0;
    if (ropeFactors) {
      const factors = arena.f32(ropeFactors, config.headSize / 2);
      const bad = factors.findIndex((f) => !(f > 0 && Number.isFinite(f)));
      if (bad >= 0) fail(`bad tensor rope_freqs.weight: factor ${factors[bad]} at ${bad} (RoPE factors must be positive and finite)`);
    }
    const head = holds('output_norm.weight');
    const finalNorm = head ? vector('output_norm.weight') : 0;
    const classifier = !head ? absentMatrix() : tied ? tokenEmbedding : load('output.weight');
    const chatTemplate = text(m.get('tokenizer.chat_template'));
    return {
      config, weights: { tokenEmbedding, layers, finalNorm, classifier, ...(ropeFactors ? { ropeFactors } : {}) }, arena, tokenizer,
      ...(chatTemplate === undefined ? {} : { chatTemplate }), ...(part ? { part } : {}),
    };
  });
}
