// Generation exactly as llama2.c's run.c `generate`: feed the prompt (BOS first), sample once the
// prompt is consumed, stop after `steps` positions or when BOS comes next. The prompt's positions
// run in batches (steps.ts promptBatch), with the bits of run.c's one position at a time.
import { EngineError } from './errors.js';
import type { Model } from './model.js';
import type { KernelPath } from './numerics/index.js';
import type { SamplingParams } from './sampler.js';
import { createSession, disposeSession, embed, headStep, keyRow, layerStep, promptBatch, promptBatchSize, valueRow } from './steps.js';
import { decodePiece, encode } from './tokenizer.js';

/**
 * Sees every step's outputs, in the canonical order (position, layer; then the head step), and
 * `head` may return a token to use instead of the sampled one: the dispute simulator plays a
 * dishonest node that way. The layer outputs are views of session memory, valid during the call.
 * For prompt positions run as a batch, x is a copy kept for the observer, so writing to it does
 * not change the run (the calls of a batch come after all of its layers ran); with promptBatch: 1
 * every position runs alone and x is the live residual, which a write changes.
 */
export interface StepObserver {
  layer?(pos: number, layer: number, out: { x: Float32Array; key: Float32Array; value: Float32Array }): void;
  head?(pos: number, token: number, rngState: bigint): number | void;
}

export interface GenerateRequest {
  /** Text to encode (BOS is prepended), or the prompt's tokens as they are (BOS included). */
  prompt: string | Uint8Array | number[];
  /** Positions to run, prompt included (run.c's -n), 1..seq_len. */
  steps: number;
  sampling: SamplingParams;
  /** Initial xorshift state (run.c's seed). */
  seed: bigint;
  kernels?: KernelPath;
  /** Threads for matrix products and attention; the output bits do not depend on it. */
  threads?: number;
  observer?: StepObserver;
  /** Most prompt positions run as one batch (1: one at a time); the bits do not depend on it. */
  promptBatch?: number;
}

export interface GeneratedToken {
  pos: number;
  token: number;
  /** The bytes run.c's decode gives for this token after the previous one. */
  piece: Uint8Array;
}

export interface GenerationSummary {
  promptTokens: number[];
  /** Every token after BOS: the rest of the prompt, then the sampled ones. */
  tokens: number[];
  /** Forward passes run (run.c's final `pos`). */
  positions: number;
}

export function* generate(model: Model, request: GenerateRequest): Generator<GeneratedToken, GenerationSummary> {
  const { config, tokenizer, arena } = model;
  const { steps, sampling, observer } = request;
  if (!Number.isInteger(steps) || steps < 1 || steps > config.seqLen) {
    throw new EngineError(`steps must be an integer in 1..${config.seqLen} (the model's seq_len), got ${steps}`);
  }
  const promptTokens = Array.isArray(request.prompt) ? request.prompt : encode(tokenizer, request.prompt, true, false);
  if (promptTokens.length === 0 || promptTokens.some((t) => !Number.isInteger(t) || t < 0 || t >= config.vocabSize)) {
    throw new EngineError(`prompt tokens must be 1 or more ids below the vocabulary size ${config.vocabSize}`);
  }
  if (promptTokens.length > config.seqLen) {
    throw new EngineError(`prompt too long: ${promptTokens.length} tokens, the model's context is ${config.seqLen}`);
  }
  const batchLimit = request.promptBatch ?? promptBatchSize(model, observer?.layer !== undefined);
  if (!Number.isInteger(batchLimit) || batchLimit < 1) throw new EngineError(`promptBatch must be a positive integer, got ${batchLimit}`);
  const s = createSession(model, { maxPositions: steps, kernels: request.kernels, threads: request.threads });
  const tokens: number[] = [];
  let rngState = request.seed;
  let token = promptTokens[0];
  let pos = 0;
  // The prompt positions that run: up to `steps`, and before any BOS in the prompt (which stops the run).
  const laterBos = promptTokens.indexOf(tokenizer.bosId, 1);
  const promptEnd = Math.min(steps, laterBos > 0 ? laterBos : promptTokens.length);
  const observeLayer = (p: number, l: number, x: Float32Array): void =>
    observer?.layer?.(p, l, { x, key: arena.f32(keyRow(s, l, p), config.kvDim), value: arena.f32(valueRow(s, l, p), config.kvDim) });
  let batched = 0; // positions ahead that a batch has already run
  try {
    while (pos < steps) {
      const count = Math.min(batchLimit, promptEnd - pos);
      if (batched > 0) batched--;
      else if (count > 1) {
        promptBatch(s, promptTokens.slice(pos, pos + count), pos, observer?.layer ? observeLayer : undefined);
        batched = count - 1;
      } else {
        embed(s, token);
        for (let l = 0; l < config.nLayers; l++) {
          layerStep(s, l, pos);
          observeLayer(pos, l, arena.f32(s.x, config.dim));
        }
      }
      let next: number;
      if (pos < promptTokens.length - 1) next = promptTokens[pos + 1];
      else {
        ({ token: next, rngState } = headStep(s, sampling, rngState));
        next = observer?.head?.(pos, next, rngState) ?? next;
      }
      pos++;
      if (next === tokenizer.bosId) break;
      tokens.push(next);
      yield { pos, token: next, piece: decodePiece(tokenizer, token, next) };
      token = next;
    }
  } finally {
    disposeSession(s);
  }
  return { promptTokens, tokens, positions: pos };
}
