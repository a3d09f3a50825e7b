// The host extensions the coordinator calls (AO's extension idea, like WeaveDrive): each reads
// content-addressed data or computes, so every CU gives the same answer. A process calls them as
// `host.model(id)`, `host.job(json)`, `host.didAddress(did)`; an error reaches it as a thrown Error.
import { HostUnavailable, type Extensions } from '../ao/runtime.js';
import { completionText, encode, type Tokenizer } from '../engine/index.js';
import { describeJob, jobCommitment, type Job } from '../proof/index.js';
import { ModelStoreError, readModelHeader, type ModelHeader } from '../store/models.js';
import { ITEM_ID } from '../store/items.js';
import type { Store } from '../store/store.js';
import { didAddress } from '../store/wallet.js';

export interface ModelInfo {
  id: string;
  name: string;
  contextLength: number;
  vocabSize: number;
  tokenizerHash: string;
}

export interface ModelRef {
  model: string;
  /** The manifest item the coordinator registered: every CU reads the same one. */
  manifest: string;
}

export interface JobInput extends ModelRef {
  prompt: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  /** A u64 as a decimal string. */
  seed: string;
}

export interface JobInfo {
  commitment: string;
  /** The prompt's tokens, BOS not counted. */
  promptTokens: number;
  /** Positions to run, prompt included (run.c's -n). */
  steps: number;
}

const MODEL_ID = /^[0-9a-f]{64}$/;
const U64 = /^(0|[1-9][0-9]{0,19})$/;

/** The prompt's own tokens, BOS not counted (what usage.prompt_tokens reports). */
export const promptTokenCount = (promptWithBos: number[]): number => promptWithBos.length - 1;

/** The job a request describes: the same function the node and the client use, so all three agree. */
export interface JobModel {
  modelId: string;
  tokenizerHash: string;
  tokenizer: Tokenizer;
  seqLen: number;
}

export function describeRequest(model: JobModel, input: Omit<JobInput, keyof ModelRef>): Job {
  if (typeof input.prompt !== 'string') throw new Error('prompt must be text');
  if (!Number.isInteger(input.maxTokens) || input.maxTokens < 1) throw new Error('max_tokens must be a whole number ≥ 1');
  if (typeof input.seed !== 'string' || !U64.test(input.seed) || BigInt(input.seed) >= 2n ** 64n) throw new Error('seed must be an integer in [0, 2^64)');
  if (typeof input.temperature !== 'number' || typeof input.topP !== 'number') throw new Error('temperature and top_p must be numbers');
  const prompt = encode(model.tokenizer, input.prompt);
  // BOS then n prompt tokens then max_tokens sampled ones: the last prompt position samples the
  // first new token, so n + max_tokens positions (run.c's -n) make exactly max_tokens.
  const steps = promptTokenCount(prompt) + input.maxTokens;
  const context = model.seqLen;
  if (steps > context) throw new Error(`prompt (${promptTokenCount(prompt)} tokens) + max_tokens (${input.maxTokens}) exceeds the model's context of ${context}`);
  return describeJob(model, { prompt, steps, sampling: { temperature: input.temperature, topp: input.topP }, seed: BigInt(input.seed) });
}

export function coordinatorExtensions(store: Store): Extensions {
  // A pinned manifest and its chunk are content-addressed, so a header read once holds forever.
  const headers = new Map<string, Promise<ModelHeader>>();
  const header = (ref: ModelRef): Promise<ModelHeader> => {
    if (!MODEL_ID.test(String(ref?.model))) return Promise.reject(new Error(`${String(ref?.model).slice(0, 80)} is not a model id`));
    if (!ITEM_ID.test(String(ref?.manifest))) return Promise.reject(new Error('the manifest must be an item id'));
    const key = `${ref.model} ${ref.manifest}`;
    let known = headers.get(key);
    if (!known) {
      known = readModelHeader(store, ref.model, ref.manifest).catch((e: Error) => {
        headers.delete(key);
        // Out of reach is not "not there": the message waits for the store rather than failing here only.
        throw e instanceof ModelStoreError ? e : new HostUnavailable(e.message);
      });
      headers.set(key, known);
    }
    return known;
  };
  const parse = <T>(json: string, what: string): T => {
    try {
      return JSON.parse(json) as T;
    } catch {
      throw new Error(`the ${what} is not JSON`);
    }
  };
  return {
    async model(json) {
      const ref = parse<ModelRef>(json, 'model reference');
      const h = await header(ref);
      const info: ModelInfo = { id: ref.model, name: h.name, contextLength: h.config.config.seqLen, vocabSize: h.config.config.vocabSize, tokenizerHash: h.tokenizerHash };
      return JSON.stringify(info);
    },
    async job(json) {
      const input = parse<JobInput>(json, 'job');
      const h = await header(input);
      const job = describeRequest({ ...h, seqLen: h.config.config.seqLen }, input);
      const info: JobInfo = { commitment: jobCommitment(job), promptTokens: promptTokenCount(job.promptTokens), steps: job.steps };
      return JSON.stringify(info);
    },
    async decode(json) {
      const input = parse<ModelRef & { prompt: string; tokens: number[] }>(json, 'completion');
      const h = await header(input);
      if (typeof input.prompt !== 'string' || !Array.isArray(input.tokens)) throw new Error('a completion needs its prompt and a list of tokens');
      const prompt = encode(h.tokenizer, input.prompt);
      return completionText(h.tokenizer, prompt[prompt.length - 1], input.tokens);
    },
    didAddress: (did) => didAddress(did),
  };
}
