// Checking an answer without trusting anyone: the stored trace must be the one the receipt names,
// the job must be the one the request describes, re-running that job here must give the same trace
// root — the engine is bit-exact, so an honest node's root is the only root — and the text must be
// the text of the tokens that run produced.
import { completionText, loadModel, modelIdentity } from '../engine/index.js';
import { accumulators, jobCommitment, recordTrace, schedule, type Job, type LeafPreimage, type StepRef, type Trace } from '../proof/index.js';
import { describeRequest } from '../processes/host.js';
import { fetchModel } from '../store/models.js';
import type { Store } from '../store/store.js';
import { RefusedError } from '../ao/client.js';
import type { Receipt } from './sdk.js';
import { VerityError } from '../errors.js';

export interface ReceiptRequest {
  prompt: string;
  maxTokens: number;
  temperature?: number;
  topP?: number;
  seed?: number | string;
}

export async function verifyReceipt(
  store: Store, answer: { receipt: Receipt | null; text: string }, request: ReceiptRequest, cacheDir: string,
): Promise<{ traceRoot: string; steps: number }> {
  const { receipt } = answer;
  if (!receipt) throw new RefusedError(409, 'the task has no receipt: it did not complete');
  const item = await store.get(receipt.trace);
  if (!item) throw new RefusedError(404, `trace item ${receipt.trace} is not in the store`);
  const stored = JSON.parse(item.data.toString('utf8')) as { root?: string; commitment?: string };
  if (stored.root !== receipt.traceRoot || stored.commitment !== receipt.commitment) throw new RefusedError(409, 'the stored trace is not the one the receipt names');
  const model = loadModel(await fetchModel(store, receipt.model, cacheDir));
  const job = describeRequest(
    { ...modelIdentity(model), tokenizer: model.tokenizer, seqLen: model.config.seqLen },
    { prompt: request.prompt, maxTokens: request.maxTokens, temperature: request.temperature ?? 0, topP: request.topP ?? 0.9, seed: String(request.seed ?? 0) },
  );
  if (jobCommitment(job) !== receipt.commitment) throw new RefusedError(409, 'the receipt is for another job than this request');
  const trace = recordTrace(model, job);
  if (trace.root !== receipt.traceRoot) throw new RefusedError(409, `a local re-run gives trace root ${trace.root}, the receipt says ${receipt.traceRoot}`);
  const generated = trace.tokens.slice(job.promptTokens.length - 1);
  if (completionText(model.tokenizer, job.promptTokens[job.promptTokens.length - 1], generated) !== answer.text) {
    throw new RefusedError(409, 'the text is not what the job generates');
  }
  return { traceRoot: trace.root, steps: trace.leaves.length };
}

// ---------------------------------------------------------------------------------------------
// `verity verify`: the same check, reporting what differs instead of stopping at the first refusal.

/** A step of a trace as the proof library names it (schedule(): layer or head; past BOS, end). */
export interface StepName {
  step: number;
  kind: 'layer' | 'head' | 'end';
  pos: number;
  layer?: number;
}

/** The first step (1-based) at which two leaf lists differ, or null when they are equal (a shorter list differs where it ends). */
export function firstDifferingStep(stored: readonly string[], local: readonly string[]): number | null {
  const n = Math.min(stored.length, local.length);
  for (let i = 0; i < n; i++) if (stored[i] !== local[i]) return i + 1;
  return stored.length === local.length ? null : n + 1;
}

/** What step `step` of `job` is: its schedule entry, 'end' when the local run had stopped (BOS) by then. */
export function nameStep(job: Job, nLayers: number, step: number, localKind?: LeafPreimage['kind']): StepName {
  const sched = schedule(job, nLayers);
  if (step < 1 || step > sched.steps) return { step, kind: 'end', pos: -1 };
  const ref: StepRef = sched.at(step);
  if (localKind === 'end') return { step, kind: 'end', pos: ref.pos };
  return ref.kind === 'layer' ? { step, kind: 'layer', pos: ref.pos, layer: ref.layer } : { step, kind: 'head', pos: ref.pos };
}

export const describeStepName = (s: StepName): string =>
  s.kind === 'layer' ? `step ${s.step} (layer ${s.layer} at position ${s.pos})` : s.kind === 'head' ? `step ${s.step} (head at position ${s.pos})` : `step ${s.step} (end)`;

/** A check that could not be made: data missing, the network out of reach. */
export class CannotCheckError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'CannotCheckError';
  }

  /** `verity verify`'s "cannot check" (1 is a mismatch). */
  override get exitCode(): number {
    return 2;
  }
}

export interface VerifyReport {
  task: string;
  verdict: 'match' | 'mismatch';
  /** Why it is a mismatch (empty on a match). */
  reasons: string[];
  model: string;
  commitment: string;
  traceRoot: { receipt: string; stored: string | null; local: string | null };
  steps: number | null;
  /** The first step whose stored leaf is not the local run's, with both leaves. */
  firstDifference: (StepName & { stored: string | null; local: string | null }) | null;
  text: { match: boolean; answer: string; local: string | null };
  trace: string;
  /** Whether the receipt's job commitment was compared with the coordinator's for the task (a receipt file read offline is not). */
  commitmentChecked: boolean;
}

interface StoredTrace {
  job?: Job;
  commitment?: string;
  root?: string;
  leaves?: string[];
}

/**
 * Checks an answer and its receipt against the stored trace and a local re-run of the job the
 * trace names (its commitment must be the receipt's: the coordinator computed it from the request).
 * `progress` is told of the slow parts (model fetch, the re-run).
 */
export async function checkAnswer(
  store: Store, answer: { task: string; receipt: Receipt | null; text: string }, cacheDir: string, progress: (line: string) => void = () => {},
  /** The job commitment the coordinator holds for the task (its task view's receipt), when known. */
  coordinatorCommitment?: string,
): Promise<{ report: VerifyReport; job: Job | null; trace: Trace | null }> {
  const { receipt } = answer;
  if (!receipt) throw new CannotCheckError(`task ${answer.task} has no receipt yet: its result is not revealed (or it did not complete)`);
  const item = await store.get(receipt.trace);
  if (!item) throw new CannotCheckError(`trace item ${receipt.trace} is not in the store`);
  let stored: StoredTrace;
  try {
    stored = JSON.parse(item.data.toString('utf8')) as StoredTrace;
  } catch {
    stored = {};
  }
  const reasons: string[] = [];
  const report: VerifyReport = {
    task: answer.task, verdict: 'mismatch', reasons, model: receipt.model, commitment: receipt.commitment,
    traceRoot: { receipt: receipt.traceRoot, stored: typeof stored.root === 'string' ? stored.root : null, local: null },
    steps: null, firstDifference: null, text: { match: false, answer: answer.text, local: null }, trace: receipt.trace,
    commitmentChecked: coordinatorCommitment !== undefined,
  };
  if (coordinatorCommitment !== undefined && coordinatorCommitment !== receipt.commitment) reasons.push(`the receipt's job commitment is not the coordinator's for task ${answer.task} (${coordinatorCommitment})`);
  if (stored.root !== receipt.traceRoot) reasons.push(`the stored trace's root ${stored.root ?? '(none)'} is not the receipt's ${receipt.traceRoot}`);
  if (stored.commitment !== receipt.commitment) reasons.push('the stored trace is for another job commitment than the receipt\'s');
  const job = stored.job;
  if (!job || typeof job !== 'object' || !Array.isArray(stored.leaves)) {
    reasons.push('the stored item is not a trace document (job, leaves)');
    return { report, job: null, trace: null };
  }
  if (jobCommitment(job) !== receipt.commitment) {
    reasons.push('the stored trace\'s job is not the job the receipt commits to');
    return { report, job: null, trace: null };
  }
  if (job.modelId !== receipt.model) {
    reasons.push(`the job is for model ${job.modelId}, the receipt names ${receipt.model}`);
    return { report, job: null, trace: null };
  }
  // The stored leaves must chain to the stored root, or they are not the trace that root commits to.
  if (accumulators({ commitment: receipt.commitment, leaves: stored.leaves }).at(-1) !== stored.root) reasons.push('the stored leaves do not chain to the stored root');

  progress(`fetching model ${receipt.model.slice(0, 12)}…`);
  const started = Date.now();
  let path: string;
  try {
    path = await fetchModel(store, receipt.model, cacheDir, (done, total) => progress(`model ${receipt.model.slice(0, 12)}…: chunk ${done}/${total} verified`));
  } catch (e) {
    throw new CannotCheckError(`model ${receipt.model}: ${(e as Error).message}`);
  }
  const model = loadModel(path);
  progress(`re-running the job (${job.steps} positions) here`);
  const trace = recordTrace(model, job);
  progress(`re-ran ${trace.leaves.length} steps in ${Date.now() - started} ms`);
  report.traceRoot.local = trace.root;
  report.steps = trace.leaves.length;
  if (trace.root !== receipt.traceRoot) reasons.push(`a local re-run gives trace root ${trace.root}, the receipt says ${receipt.traceRoot}`);
  const differs = firstDifferingStep(stored.leaves, trace.leaves);
  if (differs !== null) {
    const name = nameStep(job, model.config.nLayers, differs, trace.preimages[differs - 1]?.kind);
    report.firstDifference = { ...name, stored: stored.leaves[differs - 1] ?? null, local: trace.leaves[differs - 1] ?? null };
    reasons.push(`the stored trace differs from the local run first at ${describeStepName(name)}`);
  }
  const generated = trace.tokens.slice(job.promptTokens.length - 1);
  const text = completionText(model.tokenizer, job.promptTokens[job.promptTokens.length - 1], generated);
  report.text = { match: text === answer.text, answer: answer.text, local: text };
  if (!report.text.match) reasons.push('the text is not what the job generates');
  if (reasons.length === 0) report.verdict = 'match';
  return { report, job, trace };
}
