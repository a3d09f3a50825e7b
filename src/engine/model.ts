import type { Arena, Ptr } from './memory.js';
import type { Tokenizer } from './tokenizer.js';
import { DTYPES, type DType } from './dtypes.js';
import { architectureOf, type Architecture } from './architecture.js';

/** The shape of a Llama-family transformer. `normEps` and `ropeTheta` are f32 values. */
export interface ModelConfig {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  headSize: number;
  kvDim: number;
  normEps: number;
  ropeTheta: number;
  /** architecture.ts; absent means llama (llama2.c checkpoints and GGUF llama files leave it out). */
  architecture?: Architecture;
  /** The model has per-frequency RoPE factors (`rope_freqs.weight`, Llama 3.1+); absent means none. */
  ropeFactors?: boolean;
}

export type { DType } from './dtypes.js';

/** Q8_0's block, kept for callers that predate the trait table (src/engine/dtypes.ts). */
export const Q8_BLOCK = DTYPES.q8_0.block;
export const Q8_BLOCK_BYTES = DTYPES.q8_0.blockBytes;

/** A row-major matrix: its blocks in the model's arena, or in a mapped file (`memory`). */
export interface Matrix {
  dtype: DType;
  /** Offset of the blocks in the model's arena, or in `memory` when that is set. */
  ptr: Ptr;
  /** The native memory handle holding the blocks: a window of the mapped model file (load/mapped.ts); absent: the arena. */
  memory?: number;
  /** Quantised types: the block scales widened once at load (dtypes.ts prepareScales); 0 for f32. */
  scales: Ptr;
}

export interface LayerWeights {
  attnNorm: Ptr; // vectors are always f32
  wq: Matrix;
  wk: Matrix;
  wv: Matrix;
  wo: Matrix;
  ffnNorm: Ptr;
  w1: Matrix; // gate
  w2: Matrix; // down
  w3: Matrix; // up
  /** Q/K/V biases (f32 vectors), for architectures that have them (qwen2); 0 or absent otherwise. */
  bq?: Ptr;
  bk?: Ptr;
  bv?: Ptr;
}

export interface Weights {
  tokenEmbedding: Matrix;
  layers: LayerWeights[];
  finalNorm: Ptr;
  classifier: Matrix; // the token embedding itself when the file shares them
  /** headSize/2 RoPE frequency factors (f32) when config.ropeFactors; 0 or absent otherwise. */
  ropeFactors?: Ptr;
}

export const f32Matrix = (ptr: Ptr): Matrix => ({ dtype: 'f32', ptr, scales: 0 });

/** A tensor not loaded (a partial model's other layers): address 0, which no tensor has. */
export const absentMatrix = (): Matrix => f32Matrix(0);
export const absentLayer = (): LayerWeights => ({
  attnNorm: 0, wq: absentMatrix(), wk: absentMatrix(), wv: absentMatrix(), wo: absentMatrix(), ffnNorm: 0, w1: absentMatrix(), w2: absentMatrix(), w3: absentMatrix(),
});

/** Bytes of a rows×cols matrix stored as dtype. */
export function matrixBytes(dtype: DType, rows: number, cols: number): number {
  return (rows * cols * DTYPES[dtype].blockBytes) / DTYPES[dtype].block;
}

/** Where a model came from: a file format, or parts of its canonical encoding (model-id.ts). */
export type ModelFormat = 'llama2c' | 'gguf' | 'parts';

export interface Model {
  file: string;
  format: ModelFormat;
  config: ModelConfig;
  weights: Weights;
  tokenizer: Tokenizer;
  arena: Arena;
  /** Pointer to headSize/2 RoPE frequencies, computed once by the canonical kernels. */
  ropeFrequencies: Ptr;
  /** The file's Jinja chat template (GGUF `tokenizer.chat_template`), if it has one; see chat.ts. */
  chatTemplate?: string;
  /**
   * The tensors this model holds when it was loaded in part (a pipeline stage's share, loadModel's
   * `layers`); absent: all of them. The others are not in memory, and steps that need them throw.
   */
  part?: ModelPart;
  /** Bytes the loaded weights take: the arena's use after loading, plus mapped tensors' bytes. */
  heldBytes?: number;
}

/** Layers [first, end): a contiguous share of a model's layers. */
export interface LayerRange {
  first: number;
  end: number;
}

/** The part of a model one pipeline stage holds: some layers, and the embedding and/or the head. */
export interface ModelPart {
  layers: LayerRange;
  /** The token embedding, to embed (the first stage). */
  embedding: boolean;
  /** The final norm and the classifier (the token embedding when tied), to sample (the last stage). */
  head: boolean;
}

export const holdsLayer = (m: Model, layer: number): boolean =>
  Number.isInteger(layer) && layer >= 0 && layer < m.config.nLayers && (!m.part || (layer >= m.part.layers.first && layer < m.part.layers.end));
export const holdsEmbedding = (m: Model): boolean => !m.part || m.part.embedding;
export const holdsHead = (m: Model): boolean => !m.part || m.part.head;

/** What a partial model holds, in words, for errors. */
export function describePart(p: ModelPart): string {
  const what = [p.layers.first < p.layers.end ? `layers ${p.layers.first}..${p.layers.end - 1}` : 'no layers'];
  if (p.embedding) what.push('the embedding');
  if (p.head) what.push('the head');
  return what.join(', ');
}

/** Checks a requested part against the config; returns a problem or null. */
export function partProblem(c: ModelConfig, p: ModelPart): string | null {
  const { first, end } = p.layers;
  if (!Number.isInteger(first) || !Number.isInteger(end) || first < 0 || end > c.nLayers || first >= end) {
    return `layers [${first}, ${end}) are not a non-empty range of the model's ${c.nLayers} layers`;
  }
  return null;
}

export interface TensorRef {
  name: string;
  /** [rows, cols] for matrices, [n] for vectors; rows are contiguous. */
  shape: number[];
  dtype: DType;
  ptr: Ptr;
  /** As Matrix.memory: set when the bytes are in a mapped file (read them with load/mapped.ts tensorBytes). */
  memory?: number;
  /** Size in its storage type: the bytes the model id hashes. */
  bytes: number;
}

/**
 * Every tensor of the model in canonical order, under GGUF's names. The classifier is always
 * listed, even when the file shares it with the token embedding, so that the list (and the model
 * id built on it) does not depend on the file format.
 */
export function canonicalTensors(config: ModelConfig, weights: Weights): TensorRef[] {
  const { dim, hiddenDim, kvDim, vocabSize } = config;
  const t = (name: string, shape: number[], w: Ptr | Matrix): TensorRef => {
    const m = typeof w === 'number' ? f32Matrix(w) : w;
    const [rows, cols] = shape.length === 2 ? shape : [1, shape[0]];
    return { name, shape, dtype: m.dtype, ptr: m.ptr, ...(m.memory === undefined ? {} : { memory: m.memory }), bytes: matrixBytes(m.dtype, rows, cols) };
  };
  const list = [t('token_embd.weight', [vocabSize, dim], weights.tokenEmbedding)];
  if (config.ropeFactors) list.push(t('rope_freqs.weight', [config.headSize / 2], weights.ropeFactors ?? 0));
  const biases = architectureOf(config).qkvBias;
  weights.layers.forEach((w, l) => {
    list.push(
      t(`blk.${l}.attn_norm.weight`, [dim], w.attnNorm),
      t(`blk.${l}.attn_q.weight`, [dim, dim], w.wq),
      t(`blk.${l}.attn_k.weight`, [kvDim, dim], w.wk),
      t(`blk.${l}.attn_v.weight`, [kvDim, dim], w.wv),
      ...(biases ? [t(`blk.${l}.attn_q.bias`, [dim], w.bq ?? 0), t(`blk.${l}.attn_k.bias`, [kvDim], w.bk ?? 0), t(`blk.${l}.attn_v.bias`, [kvDim], w.bv ?? 0)] : []),
      t(`blk.${l}.attn_output.weight`, [dim, dim], w.wo),
      t(`blk.${l}.ffn_norm.weight`, [dim], w.ffnNorm),
      t(`blk.${l}.ffn_gate.weight`, [hiddenDim, dim], w.w1),
      t(`blk.${l}.ffn_down.weight`, [dim, hiddenDim], w.w2),
      t(`blk.${l}.ffn_up.weight`, [hiddenDim, dim], w.w3),
    );
  });
  list.push(t('output_norm.weight', [dim], weights.finalNorm), t('output.weight', [vocabSize, dim], weights.classifier));
  return list;
}

/** The tensors a file stores: the canonical list without the classifier when it is shared. */
export function storedTensors(config: ModelConfig, weights: Weights): TensorRef[] {
  const shared = weights.classifier === weights.tokenEmbedding;
  return canonicalTensors(config, weights).filter((t) => !(shared && t.name === 'output.weight'));
}

/** Checks the shape relations every loader relies on; returns a problem or null. */
export function configProblem(c: ModelConfig): string | null {
  const positive = ['dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKvHeads', 'vocabSize', 'seqLen'] as const;
  for (const key of positive) {
    if (!Number.isInteger(c[key]) || c[key] <= 0) return `bad header: ${key} = ${c[key]} (must be a positive integer)`;
  }
  if (c.dim % c.nHeads !== 0) return `bad header: dim ${c.dim} is not divisible by n_heads ${c.nHeads}`;
  if (c.nHeads % c.nKvHeads !== 0) return `bad header: n_heads ${c.nHeads} is not divisible by n_kv_heads ${c.nKvHeads}`;
  if (c.headSize % 2 !== 0) return `bad header: head size ${c.headSize} is odd (RoPE rotates pairs)`;
  if (c.seqLen > 1 << 20) return `unsupported: seq_len ${c.seqLen} exceeds 2^20 (the numerics spec's RoPE domain)`;
  if (c.vocabSize > 1 << 20) return `unsupported: vocab_size ${c.vocabSize} exceeds 2^20 (the sampler's id space)`;
  if (!(c.normEps > 0 && Number.isFinite(c.normEps))) return `bad header: rms norm epsilon ${c.normEps}`;
  if (!(c.ropeTheta >= 1 && Number.isFinite(c.ropeTheta))) return `bad header: rope theta ${c.ropeTheta}`;
  return null;
}

export function deriveConfig(base: Omit<ModelConfig, 'headSize' | 'kvDim'>): ModelConfig {
  const headSize = base.dim / base.nHeads;
  return { ...base, headSize, kvDim: headSize * base.nKvHeads };
}
