// What a node decides, apart from how it talks to the coordinator: which run it commits to for a
// lease, whether it reveals, what it posts in a dispute round and which step opening it sends. The
// daemon (node.ts) asks a Behaviour each time and does the rest — signing, storing, sending,
// re-sending after a crash — the same way for every behaviour. The honest behaviour is the default;
// the cheating strategies of strategies.ts wrap it, so the honest path has no strategy in it.
import type { KernelPath, Model } from '../engine/index.js';
import type { TaskView } from '../processes/protocol.js';
import {
  accAt, accumulators, buildOpening, checkOpening, recordTrace, type Deviation, type Hex, type Opening, type Trace,
} from '../proof/index.js';
import type { Tag } from '../store/items.js';
import { completeCooperatively, jobOf, traceDocument, type Assignment, type Completion } from './work.js';

export type EngineOptions = { kernels?: KernelPath; threads?: number };

/** A JSON value (what a behaviour may keep about how it made a claim). */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** What a node commits to for a lease, and keeps until the task is over. */
export interface Claim {
  /** The job commitment (the lease's). */
  commitment: Hex;
  /** The trace root, kept secret until the reveal: the coordinator sees only resultCommitment(). */
  root: Hex;
  /** The generated tokens, as submitted. */
  tokens: number[];
  /** The trace item's content and tags (traceDocument); it is signed and stored at the reveal. */
  document: { data: string; tags: Tag[] };
  /** How to make the same run again (a strategy's own note, e.g. its deviation); none for an honest run. */
  recipe?: Json;
}

/** What the node gives a behaviour to decide with. */
export interface BehaviourContext {
  /** The node's address. */
  address: string;
  engine: EngineOptions;
  /** Aborted when the node stops: a run in progress may end early (the task is run again after a restart). */
  signal?: AbortSignal;
  /** The task as the coordinator shows it now (participants, roles, commitments); null if unknown. */
  view(task: string): Promise<TaskView | null>;
  /** A private copy of a served model, loaded again from its verified file (for a behaviour that alters one). */
  copyOf(modelId: string): Model;
  log(line: string): void;
  /** Each token sampled for a lease's task, and the token before it: the node's token stream (stream.ts), a preview no one checks. */
  onToken?(task: string, token: number, prev: number): void;
}

export interface Behaviour {
  readonly name: string;
  /** The claim to commit to for this lease; null: never submit (the lease runs out). */
  claim(model: Model, a: Assignment, ctx: BehaviourContext): Promise<Claim | null>;
  /** Whether to reveal the claim when the coordinator asks. */
  reveal(a: Assignment, claim: Claim, ctx: BehaviourContext): boolean;
  /** The values to post for a dispute round's points; null: stay silent (the clock runs). */
  post(a: Assignment, claim: Claim, points: number[], ctx: BehaviourContext): Hex[] | null;
  /** The opening of `step` to send; null: stay silent. */
  open(model: Model, a: Assignment, claim: Claim, step: number, ctx: BehaviourContext): Promise<Opening | null>;
  /** A pipeline stage lease: how to run it (a cheat may alter what it sends on); honest by default. */
  stage?(a: Assignment): { corrupt?: { pos: number } };
}

/** The Result-Commitment of Submit-Result: sha256 of `verity-result/1\n<task>\n<node>\n<root>` (hex). */
export { resultCommitment } from '../processes/protocol.js';

/** A completion as a claim: its root, tokens and the trace document anyone can check after the reveal. */
export function claimOf(task: string, c: Completion, recipe?: Json): Claim {
  const claim: Claim = { commitment: c.trace.commitment, root: c.trace.root, tokens: c.tokens, document: traceDocument(task, c) };
  if (recipe !== undefined) claim.recipe = recipe;
  return claim;
}

/** The leaves a claim's trace document lists. */
export function claimLeaves(claim: Claim): Hex[] {
  return (JSON.parse(claim.document.data) as { leaves: Hex[] }).leaves;
}

/** acc[p] of the claimed trace for each point (the values a round asks for). */
export function claimedValues(claim: Claim, points: number[]): Hex[] | null {
  const accs = accumulators({ commitment: claim.commitment, leaves: claimLeaves(claim) });
  if (!points.every((p) => Number.isInteger(p) && p >= 0 && p < accs.length)) return null;
  return points.map((p) => accs[p]);
}

/**
 * The opening of `step` from a trace recorded with keepOutputs, provided the trace is the claimed
 * one (same root) and the opening checks against its own acc[step − 1]; null otherwise.
 */
export function openingFrom(model: Model, trace: Trace, claim: Claim, step: number): Opening | null {
  if (trace.root !== claim.root || step < 1 || step > trace.leaves.length) return null;
  const opening = buildOpening(trace, step, model.config);
  try {
    checkOpening(trace.job, model.config, accAt(trace, step - 1), opening);
  } catch {
    return null;
  }
  return opening;
}

/** The lease's job run on `model` (a copy may be another model: the job stays the lease's). */
export function runJob(model: Model, lease: Model, a: Assignment, engine: EngineOptions, extra: { deviation?: Deviation; keepOutputs?: boolean } = {}): Trace {
  return recordTrace(model, jobOf(lease, a), { ...engine, ...extra });
}

/** Runs the job it was given, reveals, posts its accumulators and opens steps from a re-run. */
export const honest: Behaviour = {
  name: 'honest',
  async claim(model, a, ctx) {
    // Cooperatively: the node works up to its capacity of leases at once on one copy of the model.
    return claimOf(a.task, await completeCooperatively(model, a, ctx.engine, ctx.signal, ctx.onToken && ((token, prev) => ctx.onToken?.(a.task, token, prev))));
  },
  reveal: () => true,
  post: (_a, claim, points) => claimedValues(claim, points),
  async open(model, a, claim, step, ctx) {
    // The run is deterministic: run it again, keeping every layer's outputs this time.
    return openingFrom(model, runJob(model, model, a, ctx.engine, { keepOutputs: true }), claim, step);
  },
};
