import type { Arena } from '../memory.js';
import { EngineError } from '../errors.js';
import { partProblem, type LayerRange, type ModelConfig, type ModelPart, type Weights } from '../model.js';
import type { Tokenizer } from '../tokenizer.js';

/** What a format loader produces: weights in an arena, and the tokenizer if the file embeds one. */
export interface LoadedWeights {
  config: ModelConfig;
  weights: Weights;
  arena: Arena;
  tokenizer: Tokenizer | null;
  chatTemplate?: string;
  /** Set when only part of the model was loaded (LoadOptions.layers). */
  part?: ModelPart;
}

/**
 * The WebAssembly engine addresses 4 GiB, and weights, KV caches and activations share it: weights
 * loaded into it may take 3.5 GiB, leaving the rest to sessions. Mapped weights (load/mapped.ts)
 * take only their block scales and vectors from it.
 */
export const MAX_WEIGHT_BYTES = 3.5 * 2 ** 30;

const gib = (bytes: number): string => `${(bytes / 2 ** 30).toFixed(2)} GiB`;

/** The one-line refusal of a model whose weights do not fit the WebAssembly memory's budget, or null. */
export function wasmBudgetProblem(arenaBytes: number, budget: number, mapped: boolean): string | null {
  if (arenaBytes <= budget) return null;
  if (mapped) return `too large: even with the matrices mapped from the file, ${gib(arenaBytes)} of vectors and block scales exceed the WebAssembly memory's ${gib(budget)} budget for weights`;
  return `too large for the WebAssembly engine: ${gib(arenaBytes)} of weights exceed its ${gib(budget)} budget (weights, KV cache and activations share one 4 GiB memory); with the native addon built (npm ci, a C compiler) the weights are mapped from the file instead`;
}

/** What loadModel's options say about loading part of a model (LoadOptions). */
export interface PartOptions {
  layers?: LayerRange;
  embedding?: boolean;
  head?: boolean;
}

/** The part `options` asks for, or null for the whole model. */
export function requestedPart(options: PartOptions, config: ModelConfig, path: string): ModelPart | null {
  if (options.layers === undefined) {
    if (options.embedding !== undefined || options.head !== undefined) throw new EngineError(`${path}: embedding and head select a part of the model together with layers`);
    return null;
  }
  const { first, end } = options.layers;
  const part: ModelPart = { layers: { first, end }, embedding: options.embedding ?? first === 0, head: options.head ?? end === config.nLayers };
  const problem = partProblem(config, part);
  if (problem) throw new EngineError(`${path}: ${problem}`);
  return part;
}

