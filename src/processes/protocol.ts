// The coordinator's protocol: what the process keeps, what it sends and what it answers, and the
// one formula both sides compute (the result commitment). One file for the process, the node and
// the SDK; what runs here is pure and bundled into the process module. The rules are
// docs/network.md; the verification flow is its "Verification" section.
import { sha256 } from '@noble/hashes/sha2';
import { bytesToHex } from '@noble/hashes/utils';

/**
 * What a node commits to before anyone may see its root (docs/network.md, Verification §2): sha256
 * of the text `verity-result/1\n<task>\n<node>\n<root>` — all ASCII (ids, addresses, hex), which
 * QuickJS can encode without a TextEncoder.
 */
export function resultCommitment(task: string, node: string, root: string): string {
  const text = `verity-result/1\n${task}\n${node}\n${root}`;
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i) & 0x7f;
  return bytesToHex(sha256(bytes));
}

/**
 * The largest inputs the coordinator's host extensions take (src/processes/host.ts), checked before
 * any parse or work. They decide answers — a call over one is refused — so they are constants of
 * the protocol, the same on every CU, never a CU's option. The coordinator keeps its parameters
 * inside them (Max-Prompt-Bytes ≤ promptBytes, Max-Tokens ≤ tokens), so it never makes a call an
 * extension refuses for its size.
 */
export const HOST_CAPS = {
  /** UTF-8 bytes of a prompt (host.job, host.decode, host.trace, host.step): 16× the default Max-Prompt-Bytes. */
  promptBytes: 64 * 1024,
  /** Token ids in one list (host.decode, host.trace): more than any model here has context for. */
  tokens: 1 << 17,
  /** Characters of an opening (host.step): an opening is a message's Data, and an MU takes at most 16 MiB. */
  openingChars: 16 * 1024 * 1024,
} as const;

export interface Tag {
  name: string;
  value: string;
}

/** Sampling options of a request (X-Options), as the coordinator normalised them. */
export interface Options {
  max_tokens: number;
  temperature: number;
  top_p: number;
  /** A u64 as a decimal string. */
  seed: string;
}

/**
 * The verification economics (spawn tags, and the owner's `Set-Params`). Amounts are decimal
 * strings (BigInt), rates are parts per million, times are ms of message Timestamp.
 */
export interface Params {
  /** R: pay per generated token, to each node whose result is final (asserters and validators). */
  price: string;
  /** C: what running one token costs a node (what a cheat saves). */
  computeCost: string;
  /** p: probability that a result is audited, ppm. */
  auditPpm: number;
  /** Validators drawn per audit (1..3). */
  validators: number;
  /** S: stake locked per lease, slashed from a node that loses a dispute or fails to reveal. */
  slash: string;
  /** Slashed from a lease that expires (out of its lock). */
  missSlash: string;
  /** The margin in p·(R+S) ≥ (1+margin)·C, ppm. */
  marginPpm: number;
  /** The largest max_tokens a request may ask for: the job size the rule is checked at. */
  maxTokens: number;
  /** Minimum stake of an active node; must cover one lock (≥ S). */
  minStake: string;
  /** How long an unaudited, revealed result may be challenged. */
  challengeWindowMs: number;
  /** A challenger's bond (locked from its stake; ≥ S). */
  challengeBond: string;
  /** Bond per dissection round each party posts (locked from stake, forfeited by the loser). */
  roundBond: string;
  /** Each party's chess clock in a dispute; also the time to post a valid opening. */
  clockMs: number;
  /** Arity of the dissection game. */
  arity: number;
  /** Time a node has to reveal once asked. */
  revealMs: number;
  /** Probability per accepted Infer of also issuing a canary task, ppm. */
  canaryPpm: number;
  leaseMs: number;
  cooldownMs: number;
  maxPromptBytes: number;
  maxAttempts: number;
  maxWaitMs: number;
  /** Bound on registered node entries (each must be staked ≥ Min-Stake to register). */
  maxNodes: number;
}

/**
 * A task's life: `assigned` (leases out, waiting for commits) → `committed` (the audit is drawn
 * from the next message's Hash-Chain) → `auditing` (validators' commits awaited) → `revealing`
 * (reveals awaited) → `challengeable` (unaudited: the window runs) or `disputed` → `final`;
 * `failed` when no valid result can be had.
 */
export type TaskStatus = 'assigned' | 'committed' | 'auditing' | 'revealing' | 'challengeable' | 'disputed' | 'final' | 'failed';

export type Role = 'asserter' | 'validator' | 'challenger';

export interface Participant {
  node: string;
  role: Role;
  /** The lease (asserters, validators) or challenge: its start and end (ms). */
  start: number;
  end: number;
  status: 'open' | 'committed' | 'revealed' | 'expired' | 'cancelled' | 'slashed' | 'released';
  /** Stake this participant has locked for the task. */
  locked: string;
  /** Submit-Result message id and its commitment sha256(verity-result/1 ‖ task ‖ node ‖ root). */
  message?: string;
  commitment?: string;
  tokens?: number[];
  /** The tokens' text, decoded by the coordinator (kept in its state, left out of views). */
  text?: string;
  /** After the reveal. */
  traceRoot?: string;
  trace?: string;
  /**
   * A pipelined participant (docs/pipeline.md "Pipelines on the network"): the stages in order,
   * each locking its own stake (the participant's `locked` is then 0). `node` is the last stage,
   * which submits, reveals and plays the dissection; a step's opening is its owner stage's.
   */
  stages?: StageLease[];
}

/** What each part of a model needs, as pipeline placement counts it (host.model; src/pipeline/placement.ts's ModelProfile). */
export interface ServingProfile {
  nLayers: number;
  /** Per layer: its weights (and the RoPE factors every layer reads) and its K/V cache for the whole context. */
  layerBytes: number[];
  /** The token embedding table (the first stage's). */
  embedBytes: number;
  /** The final norm and the classifier (the last stage's). */
  headBytes: number;
  /** The residual one stage sends the next (f32). */
  residualBytes: number;
}

/** One stage of a pipelined lease: a node running layers [first, end) of the model. */
export interface StageLease {
  node: string;
  first: number;
  end: number;
  /** Where it takes the other stages' items: its Stream-Url + /pipe/<task>. */
  url: string;
  locked: string;
  /** running: the lease is out; done: the result is in; expired: held responsible for a lease that ran out; released: let go, not at fault; slashed: lost a dispute over a step it owns. */
  status: 'running' | 'done' | 'expired' | 'released' | 'slashed';
  /** The id of its signed stage record (named at the reveal). */
  record?: string;
}

/** A round of a dispute as `verity task` prints it. */
export interface DisputeRound {
  round: number;
  interval: [number, number];
  points: number[];
  values: { asserter: string[]; challenger: string[] };
  next: [number, number];
}

export interface DisputeView {
  /** The two parties' node addresses: the candidate result ('asserter') and the dissent. */
  asserter: string;
  challenger: string;
  steps: number;
  phase: 'bisect' | 'prove' | 'done';
  interval: [number, number];
  /** The points the current round asks for. */
  points: number[];
  rounds: DisputeRound[];
  /** The one-step proof, once made. */
  proof: { step: number; kind: string; by: string; acc: string; leaf: string } | null;
  outcome: { winner: string | null; reason: string } | null;
  openedAt: number;
  endedAt: number | null;
}

export interface Receipt {
  task: string;
  model: string;
  commitment: string;
  traceRoot: string;
  node: string;
  /** The id of the node's Submit-Result message. */
  result: string;
  /** The id of the stored trace item. */
  trace: string;
}

/** The task as a requester reads it (`Task`, and every Infer-Response's Data). */
export interface TaskView {
  task: string;
  reference: string;
  status: TaskStatus;
  model: string;
  options: Options;
  /** The current result's text and tokens (pending until final; replaced when a dispute corrects it). */
  result: string | null;
  tokens: number[] | null;
  usage: { prompt_tokens: number; completion_tokens: number };
  receipt: Receipt | null;
  audited: boolean;
  corrected: boolean;
  participants: Participant[];
  disputes: DisputeView[];
  windowEnd: number | null;
  createdAt: number;
  endedAt: number | null;
}

/** A lease as `Task-Assigned` carries it and the `Tasks` reply lists it: the same for every role. */
export interface Assignment {
  task: string;
  model: string;
  prompt: string;
  options: Options;
  commitment: string;
  steps: number;
  leaseEnd: number;
  /** A stage lease: which stage this node runs, and every stage of the pipeline. */
  pipeline?: { stage: number; stages: Pick<StageLease, 'node' | 'first' | 'end' | 'url'>[] };
}

/** What a node owes the coordinator on a task (the `Tasks` reply, beside its open leases). */
export interface Duty {
  task: string;
  /** reveal: send `Reveal`; post: send `Dispute-Post` for `points`; open: send `Dispute-Open` for `step`. */
  kind: 'reveal' | 'post' | 'open';
  deadline: number;
  points?: number[];
  step?: number;
  round?: number;
  /** The job, so that a node that forgot it can run it again. */
  assignment: Assignment;
}

export interface TasksReply {
  leases: Assignment[];
  duties: Duty[];
}
