// Random-weight llama2.c checkpoints of real model shapes: they cost exactly what the trained
// models cost to run, without shipping weights. Values come from a seeded xorshift generator.
import { closeSync, openSync, statSync, writeSync } from 'node:fs';
import {
  DTYPES, GGML_TYPE, createArena, dtypeOfGgml, f32ToF16, ggufFromModel, writeGguf,
  type Architecture, type DType, type Matrix, type Model, type ModelConfig, type QuantizeTarget,
} from '../src/engine/index.js';
import { loadTokenizerBin } from '../src/engine/load/tokenizer-bin.js';
import { deriveConfig, type LayerWeights } from '../src/engine/model.js';

export type ModelShape = Pick<ModelConfig, 'dim' | 'hiddenDim' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'vocabSize' | 'seqLen'> & {
  /** A separate classifier (llama2.c writes a negative vocab_size then). */
  separateClassifier?: boolean;
};

export const SHAPES: Record<string, ModelShape> = {
  stories15M: { dim: 288, hiddenDim: 768, nLayers: 6, nHeads: 6, nKvHeads: 6, vocabSize: 32000, seqLen: 256 },
  stories42M: { dim: 512, hiddenDim: 1376, nLayers: 8, nHeads: 8, nKvHeads: 8, vocabSize: 32000, seqLen: 1024 },
  stories110M: { dim: 768, hiddenDim: 2048, nLayers: 12, nHeads: 12, nKvHeads: 12, vocabSize: 32000, seqLen: 1024 },
  /** TinyLlama-1.1B: GQA 32/4, untied classifier. */
  tinyllama: { dim: 2048, hiddenDim: 5632, nLayers: 22, nHeads: 32, nKvHeads: 4, vocabSize: 32000, seqLen: 2048, separateClassifier: true },
  /** Llama 2 7B. */
  llama7B: { dim: 4096, hiddenDim: 11008, nLayers: 32, nHeads: 32, nKvHeads: 32, vocabSize: 32000, seqLen: 4096, separateClassifier: true },
};

/** Seeded xorshift32 in [0, 1): weights, schedules and test inputs that are random but the same every run. */
export function xorshift32(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

/** `n` seeded floats, uniform in [lo, hi). */
export function randomFloats(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const next = xorshift32(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * next());
}

/** Writes the checkpoint; weights uniform in ±1/sqrt(fan-in), norms 1. Returns its size in bytes. */
export function writeRandomLlama2c(path: string, shape: ModelShape, seed = 1): number {
  const { dim, hiddenDim, nLayers: L, nHeads, nKvHeads, vocabSize, seqLen } = shape;
  const headSize = dim / nHeads;
  const kvDim = headSize * nKvHeads;
  const random = xorshift32(seed);
  const fd = openSync(path, 'w');
  let written = 0;
  const write = (bytes: Uint8Array): void => {
    writeSync(fd, bytes);
    written += bytes.length;
  };
  const header = new Int32Array([dim, hiddenDim, L, nHeads, nKvHeads, shape.separateClassifier ? -vocabSize : vocabSize, seqLen]);
  const block = (count: number, fill: () => number): void => {
    const CHUNK = 1 << 20;
    for (let done = 0; done < count; done += CHUNK) {
      const part = new Float32Array(Math.min(CHUNK, count - done));
      for (let i = 0; i < part.length; i++) part[i] = fill();
      write(new Uint8Array(part.buffer));
    }
  };
  const uniform = (fanIn: number) => () => (2 * random() - 1) / Math.sqrt(fanIn);
  const one = () => 1;
  try {
    write(new Uint8Array(header.buffer));
    block(vocabSize * dim, uniform(1));
    block(L * dim, one);
    block(L * dim * dim, uniform(dim));
    block(L * kvDim * dim, uniform(dim));
    block(L * kvDim * dim, uniform(dim));
    block(L * dim * dim, uniform(dim));
    block(L * dim, one);
    block(L * hiddenDim * dim, uniform(dim));
    block(L * dim * hiddenDim, uniform(hiddenDim));
    block(L * hiddenDim * dim, uniform(dim));
    block(dim, one);
    block(seqLen * headSize, () => 0); // freq_cis_real/imag, unused
    if (shape.separateClassifier) block(vocabSize * dim, uniform(dim));
  } finally {
    closeSync(fd);
  }
  return written;
}

// ---------------------------------------------------------------------------------------------
// Random *quantised* GGUFs of any size: every block is random bytes with finite f16 scales sized
// like ±1/sqrt(fan-in) weights, so nothing is quantised from floats (the JS k-quant quantiser takes
// about 1 µs per weight: hours for a 7B shape). Tensor types follow `verity quantize --type`,
// including llama.cpp's _M mixes. For speed and memory measurements, not for text quality.

/** A model with the shape and tokenizer but no weights: ggufFromModel reads only its metadata and tensor list. */
function shellModel(shape: ModelShape, tokenizerPath: string): Model {
  const config = deriveConfig({ ...shape, normEps: 1e-5, ropeTheta: 10000 });
  const empty = (): Matrix => ({ dtype: 'f32', ptr: 0, scales: 0 });
  const layers: LayerWeights[] = Array.from({ length: shape.nLayers }, () => ({
    attnNorm: 0, wq: empty(), wk: empty(), wv: empty(), wo: empty(), ffnNorm: 0, w1: empty(), w2: empty(), w3: empty(),
  }));
  const tokenEmbedding = empty();
  const weights = { tokenEmbedding, layers, finalNorm: 0, classifier: shape.separateClassifier ? empty() : tokenEmbedding };
  const tokenizer = loadTokenizerBin(tokenizerPath, shape.vocabSize);
  return { file: 'random', format: 'parts', config, weights, tokenizer, arena: createArena(0), ropeFrequencies: 0 };
}

/** Random blocks of `dtype` for a [rows, cols] matrix: random quants, scales f16 ≈ magnitude / (typical |quant|). */
function randomBlocks(dtype: Exclude<DType, 'f32'>, rows: number, cols: number, random: () => number): Uint8Array {
  const { block, blockBytes, scaleOffsets } = DTYPES[dtype];
  const blocks = (rows * cols) / block;
  const out = new Uint8Array(blocks * blockBytes);
  const words = new Uint32Array(out.buffer, 0, out.length >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = (random() * 4294967296) >>> 0;
  // Typical |quant × sub-scale| per type, so that weights come out near ±1/sqrt(cols).
  const typical: Record<Exclude<DType, 'f32'>, number> = { q8_0: 64, q4_0: 4, q4_k: 32 * 8, q5_k: 32 * 16, q6_k: 64 * 16 };
  const scale = f32ToF16(1 / (typical[dtype] * Math.sqrt(cols)));
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) for (const at of scaleOffsets) view.setUint16(b * blockBytes + at, scale, true);
  return out;
}

/**
 * Writes a random-weight GGUF of `shape` whose matrices have the types `target` gives them (f32 and
 * f16 rows are random floats; norms are 1). Returns the file's size in bytes.
 */
export function writeRandomGguf(path: string, shape: ModelShape, target: QuantizeTarget, tokenizerPath: string, seed = 1): number {
  const contents = ggufFromModel(shellModel(shape, tokenizerPath), { type: target, name: 'random' });
  const random = xorshift32(seed);
  contents.tensors = contents.tensors.map((t) => {
    const [cols, rows = 1] = t.dims;
    const dtype = dtypeOfGgml(t.type);
    const isNorm = t.dims.length === 1;
    const data = (): Uint8Array => {
      if (dtype && dtype !== 'f32') return randomBlocks(dtype, rows, cols, random);
      const values = new Float32Array(rows * cols);
      for (let i = 0; i < values.length; i++) values[i] = isNorm ? 1 : (2 * random() - 1) / Math.sqrt(cols);
      return t.type === GGML_TYPE.F16 ? new Uint8Array(Uint16Array.from(values, f32ToF16).buffer) : new Uint8Array(values.buffer);
    };
    return { ...t, data };
  });
  writeGguf(path, contents);
  return statSync(path).size;
}

// ---------------------------------------------------------------------------------------------
// Architecture variants of a loaded model, for the tests and the llama.cpp cross-check.

export interface ArchitectureVariant {
  architecture?: Architecture;
  ropeTheta?: number;
  /** Llama 3 style per-frequency RoPE factors. */
  ropeFactors?: boolean;
  /** The classifier shares the token embedding. */
  tied?: boolean;
}

/**
 * `base` turned into the variant in memory (new tensors in its arena): factors as Llama 3.1's
 * converter writes them (1 for high frequencies, up to 8 for low ones), Qwen2's Q/K/V biases
 * seeded by `seed`, the classifier tied. Ready for ggufFromModel.
 */
export function architectureVariant(base: Model, seed: number, v: ArchitectureVariant): Model {
  const { arena, config: c } = base;
  const vector = (values: Float32Array): number => {
    const ptr = arena.alloc(4 * values.length);
    arena.f32(ptr, values.length).set(values);
    return ptr;
  };
  const config = { ...c, ...(v.architecture ? { architecture: v.architecture } : {}), ...(v.ropeFactors ? { ropeFactors: true } : {}), ropeTheta: Math.fround(v.ropeTheta ?? c.ropeTheta) };
  const weights = { ...base.weights };
  if (v.ropeFactors) weights.ropeFactors = vector(Float32Array.from({ length: c.headSize / 2 }, (_, i) => Math.fround(1 + (7 * i) / (c.headSize / 2 - 1))));
  if (v.architecture === 'qwen2') {
    weights.layers = weights.layers.map((w, l) => ({
      ...w, bq: vector(randomFloats(c.dim, seed + 10 * l + 1)), bk: vector(randomFloats(c.kvDim, seed + 10 * l + 2)), bv: vector(randomFloats(c.kvDim, seed + 10 * l + 3)),
    }));
  }
  if (v.tied) weights.classifier = weights.tokenEmbedding;
  return { ...base, config, weights };
}
