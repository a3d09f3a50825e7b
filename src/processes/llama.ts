// In-process inference (aos-llama): the host functions behind a Lua process's `require('llama')`.
// A process keeps its own context (the model id and the tokens so far, in its memory); each call
// hands the whole context to the host, which is a pure function of it — the model read from the
// store by id (every leaf checked against the id), greedy sampling, Verity's bit-exact engine — so
// every CU, on any machine and kernel build, answers the same, and a CU restarted mid-generation
// needs nothing but the process's memory image. The price is the work in ticks, from the model's
// shape and the positions run, never from time (docs/lua.md "In-process inference").
import { HostError, HostUnavailable, LLAMA_EXTENSION_NAMES, type Extension, type Extensions } from '../ao/runtime.js';
import { decodePiece, encode, generate, printableBytes, type Model } from '../engine/index.js';
import { ModelStoreError, readModel } from '../store/models.js';
import type { Store } from '../store/store.js';

const MODEL_ID = /^[0-9a-f]{64}$/;
/** The largest argument a llama host function parses: a context of 2^17 ids and a prompt of 64 KiB fit. */
const ARGUMENT_CHARS = 2 * 2 ** 20;
/** Prompt text, UTF-8 bytes. */
const PROMPT_BYTES = 64 * 1024;
/** Models held in memory at once; more are read from the store again. */
const MODELS_HELD = 2;

/** Weights touched per position, in units of 2^20: the price of one position in ticks. */
export function positionTicks(model: Pick<Model, 'config'>): number {
  const { dim, hiddenDim, kvDim, nLayers, vocabSize } = model.config;
  const weights = nLayers * (2 * dim * dim + 2 * dim * kvDim + 3 * dim * hiddenDim) + vocabSize * dim;
  return weights / 2 ** 20;
}

/** What run.c prints for each token after its predecessor, as one text (pieces may split a character). */
const printed = (pieces: Uint8Array[]): string => Buffer.concat(pieces.map(printableBytes)).toString('utf8');

function parseArgument(argument: string): Record<string, unknown> {
  if (argument.length > ARGUMENT_CHARS) throw new HostError(`the argument is over ${ARGUMENT_CHARS} characters`, 1 + Math.ceil(argument.length / 4096));
  let value: unknown;
  try {
    value = JSON.parse(argument);
  } catch {
    throw new HostError('the argument is not JSON', 1);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new HostError('the argument must be a JSON object', 1);
  return value as Record<string, unknown>;
}

/**
 * `llama.info`, `llama.encode` and `llama.generate` (arguments and answers JSON):
 * - info `{model}` → `{model, seqLen, vocabSize, bos}`
 * - encode `{model, text}` → `{tokens, text}`: BOS and the prompt's tokens, and the text run.c
 *   prints for them
 * - generate `{model, tokens, n}` → `{tokens, text}`: up to n more tokens, greedy, after the
 *   context `tokens` (BOS first); fewer when the model ends the text (BOS) or its context is full.
 */
export function llamaExtensions(store: Store): Extensions {
  const held = new Map<string, Promise<Model>>();
  function model(id: unknown): Promise<Model> {
    if (typeof id !== 'string' || !MODEL_ID.test(id)) return Promise.reject(new HostError('model must be a model id (64 hex characters)', 1));
    const cached = held.get(id);
    if (cached) {
      held.delete(id);
      held.set(id, cached);
      return cached;
    }
    const loading = readModel(store, id).then(
      (read) => read.model,
      (e: Error) => {
        held.delete(id);
        // What the store holds (no such model, a corrupt leaf) is the same on every CU; a store out of reach is not.
        throw e instanceof ModelStoreError ? new HostError(e.message, 1) : new HostUnavailable(`the store cannot give model ${id}: ${e.message}`);
      },
    );
    held.set(id, loading);
    while (held.size > MODELS_HELD) held.delete(held.keys().next().value!);
    return loading;
  }
  const priced = (work: (input: Record<string, unknown>, budget: number) => Promise<{ value: unknown; ticks: number }>): Extension => {
    const fn: Extension = () => {
      throw new Error('called through priced');
    };
    fn.priced = async (argument, budget) => {
      const { value, ticks } = await work(parseArgument(argument), budget ?? Infinity);
      return { value: JSON.stringify(value), ticks: Math.max(1, Math.ceil(ticks)) };
    };
    return fn;
  };
  const [info, encodeName, generateName] = LLAMA_EXTENSION_NAMES;
  return {
    [info]: priced(async (input) => {
      const m = await model(input.model);
      return { value: { model: input.model, seqLen: m.config.seqLen, vocabSize: m.config.vocabSize, bos: m.tokenizer.bosId }, ticks: 1 };
    }),
    [encodeName]: priced(async (input) => {
      if (typeof input.text !== 'string' || Buffer.byteLength(input.text) > PROMPT_BYTES) throw new HostError(`text must be a string of at most ${PROMPT_BYTES} bytes`, 1);
      const m = await model(input.model);
      const tokens = encode(m.tokenizer, input.text, true, false);
      if (tokens.length > m.config.seqLen) throw new HostError(`the prompt is ${tokens.length} tokens, the model's context is ${m.config.seqLen}`, 1 + tokens.length / 1024);
      const text = printed(tokens.slice(1).map((t, i) => decodePiece(m.tokenizer, tokens[i], t)));
      return { value: { tokens, text }, ticks: 1 + Buffer.byteLength(input.text) / 4096 };
    }),
    [generateName]: priced(async (input, budget) => {
      const m = await model(input.model);
      const { tokens, n } = input;
      const vocab = m.config.vocabSize;
      if (!Array.isArray(tokens) || tokens.length < 1 || tokens.length > m.config.seqLen || tokens[0] !== m.tokenizer.bosId) {
        throw new HostError(`tokens must be the context: BOS first, at most ${m.config.seqLen} ids`, 1);
      }
      if (!tokens.every((t) => Number.isInteger(t) && t >= 0 && t < vocab)) throw new HostError(`tokens must be ids below ${vocab}`, 1);
      if (!Number.isInteger(n) || (n as number) < 1) throw new HostError('n must be a whole number of tokens, 1 or more', 1);
      const want = Math.min(n as number, m.config.seqLen + 1 - tokens.length);
      if (want < 1) return { value: { tokens: [], text: '' }, ticks: 1 };
      const context = tokens as number[];
      const steps = context.length - 1 + want;
      // The price is known before the work: past what the message has left, refuse without running.
      const price = 1 + steps * positionTicks(m);
      if (price > budget) throw new HostError(`generating ${want} tokens after ${context.length} costs ${Math.ceil(price)} ticks, more than the ${budget} left`, Math.ceil(price));
      const run = generate(m, { prompt: context, steps, sampling: { temperature: 0, topp: 1 }, seed: 0n });
      const fresh: number[] = [];
      const pieces: Uint8Array[] = [];
      for (let step = run.next(); !step.done; step = run.next()) {
        // The context's own positions come first (their tokens are given): only the new ones count.
        if (step.value.pos < context.length) continue;
        fresh.push(step.value.token);
        pieces.push(step.value.piece);
      }
      return { value: { tokens: fresh, text: printed(pieces) }, ticks: price };
    }),
  };
}
