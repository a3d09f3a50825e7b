import type { Arena, Ptr } from './memory.js';
import type { Tokenizer } from './tokenizer.js';

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
}

export interface LayerWeights {
  attnNorm: Ptr;
  wq: Ptr;
  wk: Ptr;
  wv: Ptr;
  wo: Ptr;
  ffnNorm: Ptr;
  w1: Ptr; // gate
  w2: Ptr; // down
  w3: Ptr; // up
}

/** Pointers to f32 row-major tensors in the model's arena. */
export interface Weights {
  tokenEmbedding: Ptr;
  layers: LayerWeights[];
  finalNorm: Ptr;
  classifier: Ptr; // equals tokenEmbedding when the file shares them
}

export type ModelFormat = 'llama2c' | 'gguf';

export interface Model {
  file: string;
  format: ModelFormat;
  config: ModelConfig;
  weights: Weights;
  tokenizer: Tokenizer;
  arena: Arena;
  /** Pointer to headSize/2 RoPE frequencies, computed once by the canonical kernels. */
  ropeFrequencies: Ptr;
}

export interface TensorRef {
  name: string;
  /** [rows, cols] for matrices, [n] for vectors; rows are contiguous. */
  shape: number[];
  ptr: Ptr;
  bytes: number;
}

/**
 * Every tensor of the model in canonical order, under GGUF's names. The classifier is always
 * listed, even when the file shares it with the token embedding, so that the list (and the model
 * id built on it) does not depend on the file format.
 */
export function canonicalTensors(config: ModelConfig, weights: Weights): TensorRef[] {
  const { dim, hiddenDim, kvDim, vocabSize } = config;
  const t = (name: string, shape: number[], ptr: Ptr): TensorRef => ({
    name,
    shape,
    ptr,
    bytes: 4 * shape.reduce((a, b) => a * b, 1),
  });
  const list = [t('token_embd.weight', [vocabSize, dim], weights.tokenEmbedding)];
  weights.layers.forEach((w, l) => {
    list.push(
      t(`blk.${l}.attn_norm.weight`, [dim], w.attnNorm),
      t(`blk.${l}.attn_q.weight`, [dim, dim], w.wq),
      t(`blk.${l}.attn_k.weight`, [kvDim, dim], w.wk),
      t(`blk.${l}.attn_v.weight`, [kvDim, dim], w.wv),
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
  if (!(c.normEps > 0 && Number.isFinite(c.normEps))) return `bad header: rms norm epsilon ${c.normEps}`;
  if (!(c.ropeTheta >= 1 && Number.isFinite(c.ropeTheta))) return `bad header: rope theta ${c.ropeTheta}`;
  return null;
}

export function deriveConfig(base: Omit<ModelConfig, 'headSize' | 'kvDim'>): ModelConfig {
  const headSize = base.dim / base.nHeads;
  return { ...base, headSize, kvDim: headSize * base.nKvHeads };
}
