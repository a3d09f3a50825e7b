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

/** The WebAssembly engine addresses 4 GiB; weights plus working state must fit. */
export const MAX_WEIGHT_BYTES = 3.5 * 2 ** 30;
