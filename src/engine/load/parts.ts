// A model assembled from the parts of its canonical encoding (config, tokenizer, tensor bytes), as
// a downloader or a referee has them. Tensors not provided are left out: a referee replaying one
// step provides only the tensors that step reads.
import { createArena } from '../memory.js';
import { prepareScales, preparedPerBlock, traits } from '../dtypes.js';
import { ropeFrequencies } from '../architecture.js';
import type { LayerWeights, Matrix, Model, Weights } from '../model.js';
import { tensorSpecBytes, type CanonicalConfig } from '../model-id.js';
import { instantiateKernels } from '../numerics/index.js';
import { createTokenizer, type Tokenizer } from '../tokenizer.js';

const ABSENT: Matrix = { dtype: 'f32', ptr: 0, scales: 0 };
const MATRIX_FIELDS: Record<string, 'wq' | 'wk' | 'wv' | 'wo' | 'w1' | 'w2' | 'w3'> = {
  attn_q: 'wq', attn_k: 'wk', attn_v: 'wv', attn_output: 'wo', ffn_gate: 'w1', ffn_down: 'w2', ffn_up: 'w3',
};

export interface SparseModel {
  model: Model;
  has(name: string): boolean;
  /** Copies a tensor's canonical bytes (whole, or as its chunks in order) into the model. */
  add(name: string, bytes: Uint8Array | Uint8Array[]): void;
}

/**
 * A model with no tensors yet, which gains them one by one: what a referee holds, filled with the
 * tensors its disputes touch. Steps may run once the tensors they read are present.
 */
export function createSparseModel(canonical: CanonicalConfig, tokenizer: Tokenizer = createTokenizer([], new Float32Array(0)), name = 'assembled'): SparseModel {
  const { config } = canonical;
  const specs = new Map(canonical.tensors.map((t) => [t.name, t]));
  const arena = createArena(0);
  const kernels = instantiateKernels(arena.memory, 'simd');
  const absent = (): Matrix => ({ ...ABSENT });
  const layers: LayerWeights[] = Array.from({ length: config.nLayers }, () => ({
    attnNorm: 0, wq: absent(), wk: absent(), wv: absent(), wo: absent(), ffnNorm: 0, w1: absent(), w2: absent(), w3: absent(),
  }));
  const weights: Weights = { tokenEmbedding: absent(), layers, finalNorm: 0, classifier: absent() };
  // With RoPE factors the frequencies wait for rope_freqs.weight (0 until then: layer steps refuse to run).
  const frequencies = arena.alloc(4 * (config.headSize / 2));
  if (!config.ropeFactors) ropeFrequencies(arena, kernels, config, frequencies, 0);
  const present = new Set<string>();
  const model: Model = { file: name, format: 'parts', config, weights, tokenizer, arena, ropeFrequencies: config.ropeFactors ? 0 : frequencies };

  function place(name: string, m: Matrix): void {
    const layer = /^blk\.(\d+)\.(\w+)\.weight$/.exec(name);
    const bias = /^blk\.(\d+)\.attn_([qkv])\.bias$/.exec(name);
    if (bias) layers[Number(bias[1])][`b${bias[2] as 'q' | 'k' | 'v'}`] = m.ptr;
    else if (name === 'rope_freqs.weight') {
      weights.ropeFactors = m.ptr;
      ropeFrequencies(arena, kernels, config, frequencies, m.ptr);
      model.ropeFrequencies = frequencies;
    } else if (name === 'token_embd.weight') weights.tokenEmbedding = m;
    else if (name === 'output.weight') weights.classifier = m;
    else if (name === 'output_norm.weight') weights.finalNorm = m.ptr;
    else if (layer) {
      const w = layers[Number(layer[1])];
      const kind = layer[2];
      if (kind === 'attn_norm') w.attnNorm = m.ptr;
      else if (kind === 'ffn_norm') w.ffnNorm = m.ptr;
      else w[MATRIX_FIELDS[kind]] = m;
    }
  }

  return {
    model,
    has: (n) => present.has(n),
    add(name, parts) {
      const spec = specs.get(name);
      if (!spec) throw new RangeError(`no tensor ${name} in this model`);
      const chunks = Array.isArray(parts) ? parts : [parts];
      const length = chunks.reduce((n, c) => n + c.length, 0);
      if (length !== tensorSpecBytes(spec)) throw new RangeError(`${name}: ${length} bytes, expected ${tensorSpecBytes(spec)}`);
      const ptr = arena.alloc(length);
      let at = ptr;
      for (const c of chunks) {
        arena.u8(at, c.length).set(c);
        at += c.length;
      }
      let scales = 0;
      if (spec.dtype !== 'f32') {
        const floats = (length / traits(spec.dtype).blockBytes) * preparedPerBlock(spec.dtype);
        scales = arena.alloc(4 * floats);
        const problem = prepareScales(spec.dtype, arena.u8(ptr, length), new Uint32Array(arena.memory.buffer, scales, floats));
        if (problem) throw new RangeError(`${name}: ${problem}`);
      }
      place(name, { dtype: spec.dtype, ptr, scales });
      present.add(name);
    },
  };
}

/** A model assembled from the tensors `tensorBytes` provides (the others are left out). */
export function assembleModel(
  canonical: CanonicalConfig,
  tensorBytes: (name: string) => Uint8Array | undefined,
  tokenizer?: Tokenizer,
  name?: string,
): Model {
  if (tokenizer && tokenizer.vocab.length !== canonical.config.vocabSize) {
    throw new RangeError(`the tokenizer has ${tokenizer.vocab.length} tokens, the config's vocabulary ${canonical.config.vocabSize}`);
  }
  const sparse = createSparseModel(canonical, tokenizer, name);
  for (const t of canonical.tensors) {
    const bytes = tensorBytes(t.name);
    if (bytes) sparse.add(t.name, bytes);
  }
  return sparse.model;
}
