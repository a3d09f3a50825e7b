import { ropeFrequencies } from '../architecture.js';
import { ModelFileError } from '../errors.js';
import { canonicalTensors, type LayerRange, type Model, type ModelFormat } from '../model.js';
import { instantiateKernels } from '../numerics/index.js';
import { readBytes, withFile } from './file.js';
import { loadGguf } from './gguf.js';
import type { WeightPlacement } from './mapped.js';
import { loadLlama2c } from './llama2c.js';
import { loadTokenizerBin } from './tokenizer-bin.js';

export interface LoadOptions {
  /** A llama2.c tokenizer.bin; required for llama2.c checkpoints, overrides a GGUF's own tokenizer. */
  tokenizer?: string;
  /**
   * Where the matrices live: 'memory' (copied into the WebAssembly memory), 'mapped' (mapped from
   * the file, native kernels only; GGUF), or 'auto' (default): mapped when they exceed the budget.
   */
  weights?: WeightPlacement;
  /** The bytes weights may take in the WebAssembly memory (default MAX_WEIGHT_BYTES, 3.5 GiB). */
  wasmBudget?: number;
  /**
   * Load only layers [first, end) (a pipeline stage's share, src/pipeline/stage.ts); the others are
   * not read, and steps that need them throw. Such a model carries no model id (modelIdentity
   * throws): the caller takes it from the whole model, or the job.
   */
  layers?: LayerRange;
  /** With `layers`: also the token embedding (default: when the range starts at layer 0). */
  embedding?: boolean;
  /** With `layers`: also the final norm and classifier (default: when the range ends at the last layer). */
  head?: boolean;
}

/** The format is told by the file's first bytes; llama2.c checkpoints have no magic. */
export function detectFormat(path: string): ModelFormat {
  return withFile(path, (file) => {
    if (file.size >= 4 && Buffer.from(readBytes(file, 0, 4, 'the magic')).toString('latin1') === 'GGUF') return 'gguf';
    if (path.toLowerCase().endsWith('.gguf')) throw new ModelFileError(path, 'not a GGUF file (bad magic)');
    return 'llama2c';
  });
}

/** Loads a llama2.c checkpoint or a GGUF file; every problem is a ModelFileError naming the file. */
export function loadModel(path: string, options: LoadOptions = {}): Model {
  const format = detectFormat(path);
  if (format !== 'gguf' && options.weights === 'mapped') throw new ModelFileError(path, 'only GGUF files can be mapped (llama2.c checkpoints are read into memory)');
  const loaded = format === 'gguf' ? loadGguf(path, options) : loadLlama2c(path, options.wasmBudget, options);
  let tokenizer = loaded.tokenizer;
  if (options.tokenizer !== undefined) tokenizer = loadTokenizerBin(options.tokenizer, loaded.config.vocabSize);
  if (!tokenizer) throw new ModelFileError(path, 'a llama2.c checkpoint needs a tokenizer file (tokenizer.bin)');

  const { arena, config } = loaded;
  const frequencies = arena.alloc(4 * (config.headSize / 2));
  ropeFrequencies(arena, instantiateKernels(arena.memory), config, frequencies, loaded.weights.ropeFactors ?? 0);
  const model: Model = { file: path, format, config: loaded.config, weights: loaded.weights, tokenizer, arena, ropeFrequencies: frequencies };
  if (loaded.chatTemplate !== undefined) model.chatTemplate = loaded.chatTemplate;
  if (loaded.part) model.part = loaded.part;
  model.heldBytes = heldBytes(model);
  return model;
}

/** The arena's use (weights, scales, tables) plus the bytes of tensors mapped from the file, each counted once. */
function heldBytes(model: Model): number {
  const mapped = new Map<string, number>();
  for (const t of canonicalTensors(model.config, model.weights)) {
    if (t.memory !== undefined) mapped.set(`${t.memory}:${t.ptr}`, t.bytes);
  }
  let bytes = model.arena.usage().top;
  for (const n of mapped.values()) bytes += n;
  return bytes;
}
