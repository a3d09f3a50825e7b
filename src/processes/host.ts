// The host extensions the coordinator calls (AO's extension idea, like WeaveDrive): each reads
// content-addressed data or computes, so every CU gives the same answer. A process calls them as
// `host.model(id)`, `host.job(json)`, `host.didAddress(did)`; an error reaches it as a thrown Error.
import type { Extensions } from '../ao/runtime.js';
import { encode, type Tokenizer } from '../engine/index.js';
import { describeJob, jobCommitment, type Job } from '../proof/index.js';
import { readModelHeader, type ModelHeader } from '../store/models.js';
import type { Store } from '../store/store.js';
import { didAddress } from '../store/wallet.js';

export interface ModelInfo {
  id: string;
  name: string;
  contextLength: number;
  vocabSize: number;
  tokenizerHash: string;
}

export interface JobInput {
  model: string;
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

export function describeRequest(model: JobModel, input: Omit<JobInput, 'model'>): Job {
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
  // Model headers are immutable (content-addressed): cache them, failures included only while in flight.
  const headers = new Map<string, Promise<ModelHeader>>();
  const header = (id: string): Promise<ModelHeader> => {
    if (!MODEL_ID.test(id)) return Promise.reject(new Error(`${id.slice(0, 80)} is not a model id`));
    let known = headers.get(id);
    if (!known) {
      known = readModelHeader(store, id);
      headers.set(id, known);
      known.catch(() => headers.delete(id));
    }
    return known;
  };
  return {
    async model(id) {
      const h = await header(id);
      const info: ModelInfo = { id, name: h.name, contextLength: h.config.config.seqLen, vocabSize: h.config.config.vocabSize, tokenizerHash: h.tokenizerHash };
      return JSON.stringify(info);
    },
    async job(json) {
      let input: JobInput;
      try {
        input = JSON.parse(json) as JobInput;
      } catch {
        throw new Error('the job is not JSON');
      }
      const h = await header(String(input?.model));
      const job = describeRequest({ ...h, seqLen: h.config.config.seqLen }, input);
      const info: JobInfo = { commitment: jobCommitment(job), promptTokens: promptTokenCount(job.promptTokens), steps: job.steps };
      return JSON.stringify(info);
    },
    didAddress: (did) => didAddress(did),
  };
}
