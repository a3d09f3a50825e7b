// Random-weight llama2.c checkpoints of real model shapes: they cost exactly what the trained
// models cost to run, without shipping weights. Values come from a seeded xorshift generator.
import { closeSync, openSync, writeSync } from 'node:fs';
import type { ModelConfig } from '../src/engine/index.js';

export type ModelShape = Pick<ModelConfig, 'dim' | 'hiddenDim' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'vocabSize' | 'seqLen'> & {
  /** A separate classifier (llama2.c writes a negative vocab_size then). */
  separateClassifier?: boolean;
};

export const SHAPES: Record<string, ModelShape> = {
  stories15M: { dim: 288, hiddenDim: 768, nLayers: 6, nHeads: 6, nKvHeads: 6, vocabSize: 32000, seqLen: 256 },
  stories42M: { dim: 512, hiddenDim: 1376, nLayers: 8, nHeads: 8, nKvHeads: 8, vocabSize: 32000, seqLen: 1024 },
  stories110M: { dim: 768, hiddenDim: 2048, nLayers: 12, nHeads: 12, nKvHeads: 12, vocabSize: 32000, seqLen: 1024 },
};

function xorshift32(seed: number): () => number {
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
