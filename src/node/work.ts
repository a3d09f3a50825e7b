// One task's work, with no I/O: the job the task describes, the engine run that records its trace,
// the completion as text, and the trace as the data item anyone can check later.
import { createHash } from 'node:crypto';
import { canonicalTokenizer, completionText, modelIdentity, type KernelPath, type Model } from '../engine/index.js';
import { jobCommitment, recordTrace, recordTraceCooperatively, type Job, type Trace } from '../proof/index.js';
import { describeRequest } from '../processes/host.js';
import type { Tag } from '../store/items.js';
import { VerityError } from '../errors.js';

import type { Assignment } from '../processes/protocol.js';

/** A lease as the coordinator's `Tasks` reply lists it (docs/network.md). */
export type { Assignment };

export interface Completion {
  job: Job;
  trace: Trace;
  /** The sampled tokens (the prompt's are not repeated). */
  tokens: number[];
  /** Their text, as run.c prints it after the prompt. */
  text: string;
}

export class TaskError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'TaskError';
  }
}

/** The job a lease asks for, recomputed here: a node runs only what the coordinator committed to. */
export function jobOf(model: Model, a: Assignment): Job {
  const identity = modelIdentity(model);
  if (identity.modelId !== a.model) throw new TaskError(`task ${a.task} is for model ${a.model}, not ${identity.modelId}`);
  return jobFor(model, identity, a);
}

/**
 * jobOf for a pipeline stage's partial model, which carries no model id: the id is the lease's
 * (the node fetched the file by it and verified every chunk), the tokenizer's hash its own.
 */
export function stageJobOf(model: Model, a: Assignment): Job {
  const tokenizerHash = createHash('sha256').update(canonicalTokenizer(model.tokenizer)).digest('hex');
  return jobFor(model, { modelId: a.model, tokenizerHash }, a);
}

function jobFor(model: Model, identity: { modelId: string; tokenizerHash: string }, a: Assignment): Job {
  const job = describeRequest(
    { ...identity, tokenizer: model.tokenizer, seqLen: model.config.seqLen },
    { prompt: a.prompt, maxTokens: a.options.max_tokens, temperature: a.options.temperature, topP: a.options.top_p, seed: a.options.seed },
  );
  if (jobCommitment(job) !== a.commitment) throw new TaskError(`task ${a.task}: the job's commitment is not the one the coordinator gave`);
  return job;
}

export function complete(model: Model, a: Assignment, engine: { kernels?: KernelPath; threads?: number } = {}): Completion {
  const job = jobOf(model, a);
  return completion(model, job, recordTrace(model, job, engine));
}

/**
 * complete() yielding to the event loop between positions, so that a node works several leases on
 * one loaded model at once (each gives the bits it gives alone); `signal` stops it between two;
 * `onToken` sees each sampled token as it comes (the node's token stream).
 */
export async function completeCooperatively(
  model: Model,
  a: Assignment,
  engine: { kernels?: KernelPath; threads?: number } = {},
  signal?: AbortSignal,
  onToken?: (token: number, prev: number) => void,
): Promise<Completion> {
  const job = jobOf(model, a);
  return completion(model, job, await recordTraceCooperatively(model, job, { ...engine, onToken }, signal));
}

function completion(model: Model, job: Job, trace: Trace): Completion {
  // trace.tokens holds every token after BOS: the rest of the prompt, then the sampled ones.
  const tokens = trace.tokens.slice(job.promptTokens.length - 1);
  return { job, trace, tokens, text: completionText(model.tokenizer, job.promptTokens[job.promptTokens.length - 1], tokens) };
}

/**
 * A stored trace's JSON data. `rngs` lets anyone (the coordinator's `host.trace`) recompute every
 * head leaf from the tokens: a head leaf hashes the sampled token with the RNG state after it, and
 * that state cannot be derived without running the model.
 */
export interface TraceDocument {
  task: string;
  job: Job;
  commitment: string;
  root: string;
  /** Every token after BOS: the rest of the prompt, then the sampled ones (as the engine reports them). */
  tokens: number[];
  /** leaves[s − 1] is step s's leaf (64 hex). */
  leaves: string[];
  /** The RNG state (a u64 as a decimal string) after each head step that ran, in step order. */
  rngs: string[];
}

/** The trace as a stored item: the job, its commitment, the root, every leaf and the head steps' RNG states (docs/proofs.md §2). */
export function traceDocument(task: string, c: Completion): { data: string; tags: Tag[] } {
  const { trace } = c;
  const rngs = trace.preimages.flatMap((p) => (p.kind === 'head' ? [p.rng] : []));
  return traceItem({ task, job: c.job, commitment: trace.commitment, root: trace.root, tokens: trace.tokens, leaves: trace.leaves, rngs });
}

/** A trace document's data and tags, as a trace item carries them. */
export function traceItem(doc: TraceDocument): { data: string; tags: Tag[] } {
  return {
    data: JSON.stringify(doc),
    tags: [
      { name: 'Data-Protocol', value: 'verity' },
      { name: 'Type', value: 'Trace' },
      { name: 'Task', value: doc.task },
      { name: 'Job-Commitment', value: doc.commitment },
      { name: 'Trace-Root', value: doc.root },
      { name: 'Content-Type', value: 'application/json' },
    ],
  };
}
