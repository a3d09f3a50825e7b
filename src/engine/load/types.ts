import type { Arena } from '../memory.js';
import type { ModelConfig, Weights } from '../model.js';
import type { Tokenizer } from '../tokenizer.js';

/** What a format loader produces: weights in an arena, and the tokenizer if the file embeds one. */
export interface LoadedWeights {
  config: ModelConfig;
  weights: Weights;
  arena: Arena;
  tokenizer: Tokenizer | null;
  chatTemplate?: string;
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
