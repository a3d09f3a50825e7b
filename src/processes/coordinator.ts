// The coordinator process: Verity's "AI process" on AO. Its state is nothing but its message log
// evaluated by this handler, so it must be deterministic: time is the message Timestamp, randomness
// the message Hash-Chain, and every list it walks is an array in insertion order. The protocol is
// docs/network.md (the verification flow: its "Verification" section; the types:
// ./protocol.ts). The module is bundled with what it imports (scripts/build-processes.js): the
// dissection game of src/proof, the economic rule, and sha256 from @noble/hashes — all pure.
import { sha256 } from '@noble/hashes/sha2';
import { bytesToHex, hexToBytes } from '@noble/hashes/utils';
import type { Journal, OutboxMessage, ProcessEnv, ProcessMessage, Tag } from '../ao/runtime.js';
import { economicViolation } from '../proof/economics.js';
import { GameError, decide, disputedStep, openGame, post, splitPoints, tick, type GameState, type Party } from '../proof/game.js';
import { schedule } from '../proof/schedule.js';
import { PlacementError, optimalPlacement, type Placement } from '../pipeline/placement.js';
import {
  HOST_CAPS, resultCommitment, type Assignment, type DisputeView, type Duty, type Options, type Params, type Participant, type ServingProfile, type StageLease, type TaskStatus, type TaskView,
} from './protocol.js';

export { resultCommitment };

// ---- state ----

interface ModelEntry {
  id: string;
  /** The manifest item registered with it: the one every CU reads. */
  manifest: string;
  name: string;
  contextLength: number;
  tokenizerHash: string;
  /** What a node must hold to serve it (host.model: weights and a full-context K/V cache); absent in states from before. */
  bytes?: number;
  /** The same per layer and end, to split it over a pipeline; absent in states from before. */
  profile?: ServingProfile;
}

interface NodeEntry {
  address: string;
  did: string;
  models: string[];
  capacity: number;
  reputation: number;
  /** Leases running now (a committed lease no longer counts: its lock does). */
  open: number;
  completed: number;
  expired: number;
  audited: number;
  disputesLost: number;
  lastSeen: number;
  /** Where the node serves the token stream of its leases (Register-Node's Stream-Url): a preview no one checks. */
  streamUrl?: string;
  /** The bytes it can give to a model (Register-Node's Memory); absent: no limit declared. */
  memory?: number;
}

interface Dispute {
  /** Participant indices: the candidate result ('asserter' in the game) and the dissent. */
  asserter: number;
  challenger: number;
  game: GameState;
  /** The last round (or 'prove') both parties were told about. */
  notified: number | 'prove';
  proof: DisputeView['proof'];
}

interface Task {
  id: string;
  requester: string;
  reference: string;
  /** The request's X-Session, echoed on its Infer-Responses (Apus's clients read it); absent when it had none. */
  session?: string;
  model: string;
  prompt: string;
  options: Options;
  redundancy: number;
  nodes: string[] | null;
  /** No node serving the model can hold it: each lease is a pipeline of stages (docs/pipeline.md). */
  pipelined?: boolean;
  commitment: string;
  promptTokens: number;
  steps: number;
  /** Steps of the trace (from the first trace checked). */
  traceSteps: number;
  escrow: string;
  /** Slashes taken in this task, paid out when it ends. */
  pot: string;
  status: TaskStatus;
  /** Leases still to draw for the current phase's role (asserters, then validators). */
  pending: number;
  /** Since when a pending lease has waited for a node (Max-Wait-Ms counts from here). */
  waitingSince: number;
  participants: Participant[];
  /** Index of the participant whose result is the task's result now. */
  candidate: number | null;
  /** Participants already compared with a candidate. */
  compared: number[];
  /** Dissenters waiting for their dispute with the candidate. */
  queue: number[];
  /** Roots that lost a dispute: whoever holds one is slashed. */
  lostRoots: string[];
  /** For each lost root, the step its dispute narrowed to (null: it ended before): a pipeline holding it is convicted at that step's owner. */
  lostSteps?: (number | null)[];
  audits: number;
  /** The Nonce of the message that completed the commits: the audit is drawn after it. */
  drawAfter: number | null;
  revealEnd: number | null;
  windowEnd: number | null;
  disputes: Dispute[];
  winners: string[];
  /** A canary's known root. */
  canary: string | null;
  canaryChecked: boolean;
  pendingSent: boolean;
  corrected: boolean;
  createdAt: number;
  endedAt: number | null;
}

/** An audited job: its request, and the root two independent nodes agreed on. */
interface KnownAnswer {
  model: string;
  prompt: string;
  options: Options;
  commitment: string;
  promptTokens: number;
  steps: number;
  root: string;
}

export interface State {
  owner: string;
  token: string;
  params: Params;
  models: ModelEntry[];
  nodes: NodeEntry[];
  deposits: Record<string, string>;
  earnings: Record<string, string>;
  /** Every staked token, locked or free. */
  stakes: Record<string, string>;
  /** The part of a stake that in-flight leases, challenges and round bonds hold. */
  locked: Record<string, string>;
  unstakeAt: Record<string, number>;
  /** Live tasks only: a task that ends leaves the state (its last Infer-Response keeps it). */
  tasks: Record<string, Task>;
  /** Ids of live tasks, oldest first. */
  open: string[];
  /** requester + " " + X-Reference → live task id. */
  references: Record<string, string>;
  known: KnownAnswer[];
  totals: { final: number; failed: number; disputes: number; slashed: string; canaries: number };
}

interface Host {
  model(json: string): string;
  job(json: string): string;
  decode(json: string): string;
  didAddress(did: string): string;
  trace(json: string): string;
  step(json: string): string;
}
declare const host: Host;
declare const journal: Journal;

interface Outcome {
  state: State;
  Messages?: OutboxMessage[];
  Output?: unknown;
}

// ---- small pure helpers ----

const AMOUNT = /^(0|[1-9][0-9]{0,37})$/;
const ID = /^[A-Za-z0-9_-]{43}$/;
/** Who may hold a deposit or stake: an Arweave/AO address or process id, or an Ethereum-style address. */
const ACCOUNT = /^([A-Za-z0-9_-]{43}|0x[0-9a-fA-F]{40})$/;
const HEX64 = /^[0-9a-f]{64}$/;
const KNOWN_ANSWERS = 32;
const MAX_AUDITS = 3;
/** Disputes one task may hold: each challenge delays finality, so their number is bounded too. */
const MAX_DISPUTES = 8;
const REPUTATION = { start: 100, max: 200, min: 1, audited: 1, expired: 20, lost: 50 };
/** The most stages a pipeline is drawn with (placement's exact solver is exponential in it). */
const MAX_STAGES = 6;
/** The longest Stream-Url a node may register. */
const STREAM_URL_MAX = 200;

const tagOf = (msg: { Tags: Tag[] }, name: string): string | undefined => {
  for (const t of msg.Tags) if (t.name === name) return t.value;
  return undefined;
};
const big = (v: string | undefined): bigint => BigInt(v ?? '0');
/** A record's own entry: a key a sender chose ("constructor", "__proto__") must not reach Object.prototype. */
const own = <T>(record: Record<string, T>, key: string): T | undefined => (Object.prototype.hasOwnProperty.call(record, key) ? record[key] : undefined);
/** Answers and notices get no answer back, or two processes could refuse each other forever. */
const isReply = (action: string): boolean =>
  action === '' || /-(Response|Error|Notice|Requested|Round|Prove)$/.test(action) || action === 'Infer-Accepted' || action === 'Task-Assigned';
const add = (a: string | undefined, b: bigint): string => (big(a) + b).toString();
const minBig = (a: bigint, b: bigint): bigint => (a < b ? a : b);

/** Bytes of a string in UTF-8 (QuickJS has no TextEncoder). */
function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/** acc[0] of a job's trace: sha256("verity-trace/1" ‖ commitment bytes) (docs/proofs.md). */
function traceStart(commitment: string): string {
  const tag = 'verity-trace/1';
  const bytes = new Uint8Array(tag.length + 32);
  for (let i = 0; i < tag.length; i++) bytes[i] = tag.charCodeAt(i);
  bytes.set(hexToBytes(commitment), tag.length);
  return bytesToHex(sha256(bytes));
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
function base64urlBytes(s: string): number[] {
  const out: number[] = [];
  let bits = 0;
  let acc = 0;
  for (const ch of s) {
    const v = B64.indexOf(ch);
    if (v < 0) continue;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  return out;
}

/**
 * The i-th 48-bit number from the message's Hash-Chain (32 bytes: five disjoint windows, then
 * windows again with i mixed in). The SU fixes the chain, so no requester or node picks it.
 */
function draw(msg: ProcessMessage, i: number): bigint {
  const bytes = base64urlBytes(msg['Hash-Chain'] ?? msg.Id);
  let v = 0n;
  for (let k = 0; k < 6; k++) v = (v << 8n) | BigInt(bytes[((i % 5) * 6 + k) % Math.max(bytes.length, 1)] ?? 0);
  return (v + BigInt(Math.floor(i / 5)) * 0x9e3779b97f4an) & 0xffffffffffffn;
}
/** True with probability ppm / 10⁶. */
const chance = (msg: ProcessMessage, draws: Draws, ppm: number): boolean => draw(msg, draws.next++) % 1_000_000n < BigInt(ppm);

// ---- replies ----

/** A reply to `msg`'s sender: its X-Reference and X-Session come back (as Apus's router echoes them). */
function reply(msg: ProcessMessage, action: string, tags: Tag[] = [], data?: string): OutboxMessage {
  const ref = tagOf(msg, 'X-Reference');
  const session = tagOf(msg, 'X-Session');
  return {
    Target: msg.From,
    Tags: [
      { name: 'Action', value: action }, { name: 'Reference', value: msg.Id }, ...(ref === undefined ? [] : [{ name: 'X-Reference', value: ref }]),
      ...(session === undefined ? [] : [{ name: 'X-Session', value: session }]), ...tags,
    ],
    ...(data === undefined ? {} : { Data: data }),
  };
}

const notice = (target: string, action: string, tags: Tag[], data?: string): OutboxMessage => ({
  Target: target,
  Tags: [{ name: 'Action', value: action }, ...tags],
  ...(data === undefined ? {} : { Data: data }),
});

/** A refusal: a Code/Message reply and the state exactly as it came in. */
class Refusal extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}
const refuse = (code: number, message: string): never => {
  throw new Refusal(code, message);
};
/** A host extension's error as one line, without the "host.x: " prefix. */
const hostError = (e: unknown, name: string): string => String((e as Error)?.message ?? e).replace(new RegExp(`^(Error: )?host\\.${name}: `), '');

// ---- parameters ----

type ParamKind = 'amount' | 'int';
/** Tag name → the Params field and its kind: one table for spawn tags, Set-Params and Params. */
export const PARAM_TAGS: [string, keyof Params, ParamKind][] = [
  ['Price-Per-Token', 'price', 'amount'],
  ['Compute-Cost-Per-Token', 'computeCost', 'amount'],
  ['Audit-Ppm', 'auditPpm', 'int'],
  ['Validators', 'validators', 'int'],
  ['Slash', 'slash', 'amount'],
  ['Miss-Slash', 'missSlash', 'amount'],
  ['Margin-Ppm', 'marginPpm', 'int'],
  ['Max-Tokens', 'maxTokens', 'int'],
  ['Min-Stake', 'minStake', 'amount'],
  ['Challenge-Window-Ms', 'challengeWindowMs', 'int'],
  ['Challenge-Bond', 'challengeBond', 'amount'],
  ['Round-Bond', 'roundBond', 'amount'],
  ['Clock-Ms', 'clockMs', 'int'],
  ['Dispute-Arity', 'arity', 'int'],
  ['Reveal-Ms', 'revealMs', 'int'],
  ['Canary-Ppm', 'canaryPpm', 'int'],
  ['Lease-Ms', 'leaseMs', 'int'],
  ['Unstake-Cooldown-Ms', 'cooldownMs', 'int'],
  ['Max-Prompt-Bytes', 'maxPromptBytes', 'int'],
  ['Max-Attempts', 'maxAttempts', 'int'],
  ['Max-Wait-Ms', 'maxWaitMs', 'int'],
  ['Max-Nodes', 'maxNodes', 'int'],
];

export const DEFAULT_PARAMS: Params = {
  price: '1', computeCost: '1', auditPpm: 100_000, validators: 1, slash: '6000', missSlash: '600', marginPpm: 100_000, maxTokens: 512,
  minStake: '6000', challengeWindowMs: 60_000, challengeBond: '6000', roundBond: '10', clockMs: 60_000, arity: 8, revealMs: 60_000,
  canaryPpm: 0, leaseMs: 60_000, cooldownMs: 600_000, maxPromptBytes: 4096, maxAttempts: 3, maxWaitMs: 600_000, maxNodes: 1000,
};

/**
 * Ranges of the integer parameters (inclusive). A prompt and a token list stay within what the
 * host extensions take (HOST_CAPS), so no request the coordinator accepts is one they refuse.
 */
const INT_RANGE: Partial<Record<keyof Params, [number, number]>> = {
  auditPpm: [0, 1_000_000], validators: [1, 3], marginPpm: [0, 10_000_000], maxTokens: [1, HOST_CAPS.tokens], arity: [2, 64], canaryPpm: [0, 1_000_000],
  maxAttempts: [1, 100], maxNodes: [1, 100_000], clockMs: [1, 86_400_000], revealMs: [1, 86_400_000], leaseMs: [1, 86_400_000],
  maxPromptBytes: [1, HOST_CAPS.promptBytes],
};

/** The parameters the tags set over `base`, or why they are refused (a tag, or a bound of the rule). */
function parseParams(tags: Tag[], base: Params): Params | string {
  const params: Params = { ...base };
  for (const [name, key, kind] of PARAM_TAGS) {
    const v = tagOf({ Tags: tags }, name);
    if (v === undefined) continue;
    if (kind === 'amount') {
      if (!AMOUNT.test(v)) return `${name} must be a whole number`;
      (params as unknown as Record<string, string>)[key] = v;
    } else {
      const [lo, hi] = INT_RANGE[key] ?? [0, 1e12];
      if (!/^[0-9]{1,13}$/.test(v) || Number(v) < lo || Number(v) > hi) return `${name} must be a whole number in ${lo}..${hi}`;
      (params as unknown as Record<string, number>)[key] = Number(v);
    }
  }
  if (big(params.missSlash) > big(params.slash)) return `Miss-Slash (${params.missSlash}) cannot exceed Slash (${params.slash}): it comes out of a lease's lock`;
  return (
    economicViolation({
      price: big(params.price), computeCost: big(params.computeCost), auditPpm: BigInt(params.auditPpm), slash: big(params.slash), marginPpm: BigInt(params.marginPpm),
      maxTokens: BigInt(params.maxTokens), minStake: big(params.minStake), challengeBond: big(params.challengeBond),
    }) ?? params
  );
}

// ---- the handler ----

interface Draws {
  next: number;
}
interface Ctx {
  state: State;
  msg: ProcessMessage;
  draws: Draws;
  out: OutboxMessage[];
}

export function handle(state: State | undefined, msg: ProcessMessage, env: ProcessEnv): Outcome {
  if (state === undefined || state === null) return boot(msg, env);
  // Anyone may assign any stored item to this process (AO's assignments): one addressed to another
  // process — say, a token's Credit-Notice to someone else — must not count here.
  if (msg.Target !== env.Process.Id) return { state, Output: { ignored: 'an item addressed to another process' } };
  const action = tagOf(msg, 'Action') ?? '';
  // Time passes for every message: leases expire, audits are drawn, clocks run out — before the
  // message itself, so that a refused message still carries what its Timestamp caused. A dry-run
  // (Read-Only) reads the state as the log left it: it has no Hash-Chain, so any draw it made would
  // be one the log never makes (a node would see a lease it does not hold).
  const advanceAll = msg['Read-Only'] ? () => {} : advanceOpenTasks;
  let ctx: Ctx = { state, msg, draws: { next: 0 }, out: [] };
  let sweepFault: string | null = null;
  // Savepoints of the CU's write journal (runtime.ts): undoing to one costs the writes since, never
  // the state's size.
  const arrived = journal.mark();
  try {
    advanceAll(ctx);
  } catch (e) {
    // A fault in the sweep runs on every message: let it cost this sweep, never the process.
    journal.undo(arrived);
    ctx = { state, msg, draws: { next: 0 }, out: [] };
    sweepFault = String(e);
  }
  const swept = { mark: journal.mark(), state: ctx.state, out: ctx.out.length };
  try {
    const handler = own(HANDLERS, action);
    if (!handler) {
      if (isReply(action)) return { state: ctx.state, Messages: ctx.out, Output: { ignored: action } };
      refuse(400, `unknown Action '${action.slice(0, 60)}'`);
    }
    const output = handler!(ctx) ?? action;
    // Any message a node has taken says it is alive (an expired pipeline's blame reads it:
    // expireStages); a refused one changes nothing, this included.
    const sender = msg['Read-Only'] ? undefined : nodeOf(ctx.state, msg.From);
    if (sender) sender.lastSeen = msg.Timestamp;
    // What the handler changed may move tasks on (a commit completes a phase, a lease frees a node).
    // A fault there, like one in the sweep, costs only this advance, never the message or the process.
    const handled = { mark: journal.mark(), state: ctx.state, out: ctx.out.length };
    try {
      advanceAll(ctx);
    } catch (e) {
      if (e instanceof Refusal) throw e;
      journal.undo(handled.mark);
      ctx.state = handled.state;
      ctx.out.length = handled.out;
      sweepFault = String(e);
    }
    return { state: ctx.state, Messages: ctx.out, Output: sweepFault ? { output, sweepFault } : output };
  } catch (e) {
    if (!(e instanceof Refusal)) throw e;
    // Whatever the handler had begun is dropped: back to the state after the sweep.
    journal.undo(swept.mark);
    const errorAction = action === 'Infer' ? 'Infer-Response' : `${action || 'Unknown'}-Error`;
    const tags = [{ name: 'Code', value: String(e.code) }, { name: 'Message', value: e.message.slice(0, 300) }];
    if (action === 'Infer') tags.push({ name: 'Status', value: 'rejected' });
    return { state: swept.state, Messages: [...ctx.out.slice(0, swept.out), reply(msg, errorAction, tags)], Output: { code: e.code, error: e.message } };
  }
}

function boot(msg: ProcessMessage, env: ProcessEnv): Outcome {
  const token = tagOf(env.Process, 'Token');
  if (!token || !ID.test(token)) throw new Error('the coordinator needs a Token tag naming the token process');
  const params = parseParams(env.Process.Tags, DEFAULT_PARAMS);
  if (typeof params === 'string') throw new Error(`the coordinator's parameters are refused: ${params}`);
  const state: State = {
    owner: env.Process.Owner,
    token,
    params,
    models: [],
    nodes: [],
    deposits: {},
    earnings: {},
    stakes: {},
    locked: {},
    unstakeAt: {},
    tasks: {},
    open: [],
    references: {},
    known: [],
    totals: { final: 0, failed: 0, disputes: 0, slashed: '0', canaries: 0 },
  };
  return { state, Output: { booted: msg.Id, token } };
}

type Handler = (ctx: Ctx) => unknown;

const HANDLERS: Record<string, Handler> = {
  Info: ({ state, msg, out }) => {
    out.push(
      reply(msg, 'Info-Response', [
        { name: 'Token', value: state.token },
        { name: 'Owner', value: state.owner },
        { name: 'Min-Stake', value: state.params.minStake },
        { name: 'Price-Per-Token', value: state.params.price },
        { name: 'Lease-Ms', value: String(state.params.leaseMs) },
      ], JSON.stringify({ ...state.params, token: state.token, owner: state.owner, models: state.models.length, nodes: state.nodes.length, openTasks: state.open.length, totals: state.totals })),
    );
  },

  Params: ({ state, msg, out }) => {
    out.push(reply(msg, 'Params-Response', [], JSON.stringify(state.params)));
  },

  'Set-Params': ({ state, msg, out }) => {
    if (msg.From !== state.owner) refuse(403, 'only the owner sets parameters');
    const params = parseParams(msg.Tags, state.params);
    if (typeof params === 'string') return refuse(400, params);
    state.params = params;
    out.push(reply(msg, 'Set-Params-Response', [], JSON.stringify(params)));
  },

  // -- money --

  'Credit-Notice': ({ state, msg, out }) => {
    if (msg.From !== state.token) refuse(403, 'only the token process sends Credit-Notice');
    const sender = tagOf(msg, 'Sender') ?? '';
    const quantity = tagOf(msg, 'Quantity') ?? '';
    if (!ACCOUNT.test(sender) || !AMOUNT.test(quantity)) refuse(400, 'a Credit-Notice needs Sender and Quantity');
    const stake = tagOf(msg, 'X-Action') === 'Stake';
    const ledger = stake ? state.stakes : state.deposits;
    ledger[sender] = add(ledger[sender], BigInt(quantity));
    // The sender learns it counted (and which transfer, by its X-Reference): a Stake-Notice or Deposit-Notice.
    out.push(
      notice(sender, stake ? 'Stake-Notice' : 'Deposit-Notice', [
        { name: 'Quantity', value: quantity },
        { name: stake ? 'Stake' : 'Balance', value: ledger[sender] },
        ...msg.Tags.filter((t) => t.name.startsWith('X-')),
      ]),
    );
    return { credited: sender, quantity, as: stake ? 'stake' : 'deposit' };
  },

  'Debit-Notice': ({ state, msg }) => {
    if (msg.From !== state.token) refuse(403, 'only the token process sends Debit-Notice');
  },

  Balance: ({ state, msg, out }) => {
    const account = tagOf(msg, 'Target') ?? tagOf(msg, 'Recipient') ?? msg.From;
    const deposit = own(state.deposits, account) ?? '0';
    out.push(
      reply(msg, 'Balance-Response', [
        { name: 'Balance', value: deposit },
        { name: 'Earnings', value: own(state.earnings, account) ?? '0' },
        { name: 'Stake', value: own(state.stakes, account) ?? '0' },
        { name: 'Locked', value: own(state.locked, account) ?? '0' },
        { name: 'Account', value: account },
      ], deposit),
    );
  },

  Withdraw: ({ state, msg, out }) => {
    const deposit = big(own(state.deposits, msg.From));
    const earned = big(own(state.earnings, msg.From));
    const asked = tagOf(msg, 'Quantity');
    if (asked !== undefined && !AMOUNT.test(asked)) refuse(400, 'Quantity must be a whole number');
    const quantity = asked === undefined ? deposit + earned : BigInt(asked);
    if (quantity <= 0n) refuse(400, 'nothing to withdraw');
    if (quantity > deposit + earned) refuse(402, `only ${deposit + earned} can be withdrawn`);
    const fromDeposit = minBig(quantity, deposit);
    state.deposits[msg.From] = (deposit - fromDeposit).toString();
    state.earnings[msg.From] = (earned - (quantity - fromDeposit)).toString();
    out.push(payOut(state, msg.From, quantity, 'Withdraw'), reply(msg, 'Withdraw-Response', [{ name: 'Quantity', value: quantity.toString() }]));
  },

  // -- models --

  'Register-Model': ({ state, msg, out }) => {
    if (msg.From !== state.owner) refuse(403, 'only the owner registers models');
    const id = tagOf(msg, 'Model') ?? '';
    const manifest = tagOf(msg, 'Manifest') ?? '';
    if (!HEX64.test(id)) refuse(400, 'Model must be a model id (64 hex characters)');
    if (!ID.test(manifest)) refuse(400, 'Manifest must be the id of the model\'s manifest item');
    let info: { name: string; contextLength: number; tokenizerHash: string; bytes: number; profile?: ServingProfile };
    try {
      info = JSON.parse(host.model(JSON.stringify({ model: id, manifest }))) as typeof info;
    } catch (e) {
      return refuse(404, `model ${id} is not published with manifest ${manifest}: ${hostError(e, 'model')}`);
    }
    const entry: ModelEntry = { id, manifest, name: info.name, contextLength: info.contextLength, tokenizerHash: info.tokenizerHash, bytes: info.bytes, ...(info.profile ? { profile: info.profile } : {}) };
    const at = state.models.findIndex((m) => m.id === id);
    if (at >= 0) state.models[at] = entry;
    else state.models.push(entry);
    out.push(reply(msg, 'Register-Model-Response', [{ name: 'Model', value: id }], JSON.stringify(entry)));
  },

  Models: ({ state, msg, out }) => {
    out.push(reply(msg, 'Models-Response', [], JSON.stringify(state.models)));
  },

  // -- nodes --

  'Register-Node': ({ state, msg, out }) => {
    if (msg.From !== msg.Owner) refuse(403, 'a node registers itself, with its own key');
    const did = tagOf(msg, 'DID') ?? '';
    // An Ed25519 did:key is 56 characters: a longer one is refused before the host decodes it.
    if (did.length > 64) refuse(400, 'DID: not an Ed25519 did:key');
    let address: string;
    try {
      address = host.didAddress(did);
    } catch (e) {
      return refuse(400, `DID: ${hostError(e, 'didAddress')}`);
    }
    if (address !== msg.From) refuse(403, 'the DID is not the key that signed this message');
    // An entry costs stake, so that fresh keys cannot fill the state for free.
    const stake = big(own(state.stakes, address));
    if (stake < big(state.params.minStake)) refuse(402, `stake at least Min-Stake (${state.params.minStake}) before registering; ${address} has ${stake}`);
    const models = (tagOf(msg, 'Models') ?? '').split(',').map((m) => m.trim()).filter((m) => m !== '');
    if (models.length === 0) refuse(400, 'Models must list at least one model id');
    if (models.length > state.models.length) refuse(400, 'Models lists more models than are registered');
    for (const m of models) if (!state.models.some((known) => known.id === m)) refuse(404, `model ${m.slice(0, 64)} is not registered`);
    const capacityTag = tagOf(msg, 'Capacity') ?? '1';
    const capacity = /^[0-9]{1,2}$/.test(capacityTag) ? Number(capacityTag) : 0;
    if (capacity < 1 || capacity > 64) refuse(400, 'Capacity must be 1 to 64');
    // Optional; an empty one clears it. Only its form is checked: what it serves is checked by no one.
    const streamTag = tagOf(msg, 'Stream-Url');
    if (streamTag !== undefined && streamTag !== '' && !(streamTag.length <= STREAM_URL_MAX && /^https?:\/\/[A-Za-z0-9.\-\[\]:]+(\/[\x21-\x7e]*)?$/.test(streamTag)))
      refuse(400, `Stream-Url must be an http(s) URL of at most ${STREAM_URL_MAX} characters`);
    const streamUrl = streamTag ? streamTag.replace(/\/+$/, '') : undefined;
    // Optional: the bytes it can give to a model (weights and K/V cache). A model bigger than that
    // is not leased to it; an empty one clears it (no limit).
    const memoryTag = tagOf(msg, 'Memory');
    if (memoryTag !== undefined && memoryTag !== '' && !(/^[1-9][0-9]{0,15}$/.test(memoryTag) && Number.isSafeInteger(Number(memoryTag)))) refuse(400, 'Memory must be a whole number of bytes');
    const memory = memoryTag ? Number(memoryTag) : undefined;
    const known = nodeOf(state, address);
    if (known) {
      known.did = did;
      known.models = models;
      known.capacity = capacity;
      known.lastSeen = msg.Timestamp;
      if (streamTag !== undefined) {
        if (streamUrl) known.streamUrl = streamUrl;
        else delete known.streamUrl;
      }
      if (memoryTag !== undefined) {
        if (memory !== undefined) known.memory = memory;
        else delete known.memory;
      }
    } else {
      if (state.nodes.length >= state.params.maxNodes) refuse(503, `the coordinator holds its limit of ${state.params.maxNodes} nodes`);
      state.nodes.push({ address, did, models, capacity, reputation: REPUTATION.start, open: 0, completed: 0, expired: 0, audited: 0, disputesLost: 0, lastSeen: msg.Timestamp, ...(streamUrl ? { streamUrl } : {}), ...(memory !== undefined ? { memory } : {}) });
    }
    out.push(reply(msg, 'Register-Node-Response', [{ name: 'Node', value: address }]));
  },

  Heartbeat: ({ state, msg }) => {
    const node = nodeOf(state, msg.From);
    if (node) node.lastSeen = msg.Timestamp;
  },

  Unstake: ({ state, msg, out }) => {
    const stake = big(own(state.stakes, msg.From));
    if (stake === 0n) refuse(409, 'nothing is staked');
    const at = own(state.unstakeAt, msg.From);
    if (at === undefined) {
      state.unstakeAt[msg.From] = msg.Timestamp + state.params.cooldownMs;
      out.push(reply(msg, 'Unstake-Started', [{ name: 'Unstake-At', value: String(state.unstakeAt[msg.From]) }]));
      return;
    }
    if (msg.Timestamp < at) refuse(409, `the stake is cooling down until ${at}`);
    const locked = big(own(state.locked, msg.From));
    if (locked > 0n) refuse(409, `${locked} of the stake is locked by tasks that are not final`);
    state.stakes[msg.From] = '0';
    delete state.unstakeAt[msg.From];
    dropIfDone(state, msg.From);
    out.push(payOut(state, msg.From, stake, 'Unstake'), reply(msg, 'Unstake-Completed', [{ name: 'Quantity', value: stake.toString() }]));
  },

  Nodes: ({ state, msg, out }) => {
    const view = state.nodes.map((n) => ({ ...n, stake: own(state.stakes, n.address) ?? '0', locked: own(state.locked, n.address) ?? '0', active: isActive(state, n) }));
    out.push(reply(msg, 'Nodes-Response', [], JSON.stringify(view)));
  },

  // -- requests --

  // Every check that reads only the message and the state comes before the one that tokenises the
  // prompt (host.job): a request anyone can send, funded or not, costs the CUs no tokenising
  // until it could be served.
  Infer: (ctx) => {
    const { state, msg, out } = ctx;
    const model = modelFor(state, tagOf(msg, 'Model'));
    // UTF-8 takes at least a byte per UTF-16 unit: a longer Data is refused without reading it.
    const maxBytes = state.params.maxPromptBytes;
    if (msg.Data.length > maxBytes || utf8Length(msg.Data) > maxBytes) refuse(413, `the prompt is over ${maxBytes} bytes`);
    if (msg.Data === '') refuse(400, 'the prompt (Data) is empty');
    const options = parseOptions(tagOf(msg, 'X-Options'));
    if (options.max_tokens > state.params.maxTokens) refuse(400, `max_tokens is at most ${state.params.maxTokens} (Max-Tokens)`);
    // A prompt is at least one token, so max_tokens must leave it a position (host.job checks the real count).
    if (options.max_tokens >= model.contextLength) refuse(400, `max_tokens (${options.max_tokens}) leaves the prompt no room in the model's context of ${model.contextLength}`);
    const redundancyTag = tagOf(msg, 'Redundancy') ?? '1';
    const redundancy = /^[1-3]$/.test(redundancyTag) ? Number(redundancyTag) : refuse(400, 'Redundancy must be 1, 2 or 3');
    const nodesTag = tagOf(msg, 'Nodes');
    const nodes = nodesTag === undefined ? null : nodesTag.split(',').map((n) => n.trim());
    if (nodes && (nodes.length === 0 || nodes.length > 64 || nodes.some((n) => !ID.test(n)))) refuse(400, 'Nodes must be up to 64 comma-separated addresses');
    const reference = tagOf(msg, 'X-Reference') ?? msg.Id;
    if (reference.length > 128) refuse(400, 'X-Reference is at most 128 characters');
    const session = tagOf(msg, 'X-Session');
    if (session !== undefined && session.length > 128) refuse(400, 'X-Session is at most 128 characters');
    const key = `${msg.From} ${reference}`;
    // A message id is in a process's log at most once (the SU keeps the slot it has: tests/ao/su.test.ts),
    // so an ended task's Infer cannot come again; the state need not remember ended ids.
    if (own(state.references, key) !== undefined || own(state.tasks, msg.Id) !== undefined) refuse(409, `request ${reference.slice(0, 80)} is already being served`);
    const escrow = escrowFor(state, options.max_tokens, redundancy);
    const deposit = big(own(state.deposits, msg.From));
    if (deposit < escrow) refuse(402, `the request needs ${escrow} in deposit, ${msg.From} has ${deposit}: deposit with a token Transfer (X-Action=Deposit)`);
    // Busy nodes are fine (the task waits for a free one); no node serving the model is not.
    const serving = servingNodes(state, model, nodes);
    const holding = serving.filter((n) => holds(n, model));
    if (serving.length < redundancy) refuse(503, `fewer than ${redundancy} active nodes serve model ${model.id}`);
    // No node can hold the model: its leases are pipelines, if the nodes that can take a stage
    // could hold it together (the placement itself is drawn with each lease).
    const pipelined = holding.length === 0;
    if (pipelined) {
      // Each of `redundancy` pipelines needs the model's bytes, in at most MAX_STAGES stages.
      const memories = serving.filter(canStage).map((n) => n.memory!).sort((x, y) => y - x);
      const memory = memories.reduce((n, x) => n + x, 0);
      const largest = memories.slice(0, MAX_STAGES).reduce((n, x) => n + x, 0);
      if (!model.profile || memory < redundancy * model.bytes!) refuse(503, `no active node serving model ${model.id} can hold it (${model.bytes} bytes, by the Memory they declared), and the ones that take pipeline stages hold ${memory} bytes together, for ${redundancy} pipelines`);
      if (largest < model.bytes!) refuse(503, `model ${model.id} (${model.bytes} bytes) needs more than ${MAX_STAGES} pipeline stages on the nodes that serve it`);
    } else if (holding.length < redundancy) refuse(503, `fewer than ${redundancy} active nodes serving model ${model.id} can hold it (${model.bytes} bytes, by the Memory they declared)`);
    let job: { commitment: string; promptTokens: number; steps: number };
    try {
      job = JSON.parse(host.job(JSON.stringify({ model: model.id, manifest: model.manifest, prompt: msg.Data, maxTokens: options.max_tokens, temperature: options.temperature, topP: options.top_p, seed: options.seed }))) as typeof job;
    } catch (e) {
      return refuse(400, hostError(e, 'job'));
    }
    state.deposits[msg.From] = (deposit - escrow).toString();
    const task = newTask(state, { id: msg.Id, requester: msg.From, reference, session, model: model.id, prompt: msg.Data, options, redundancy, nodes, job, escrow, now: msg.Timestamp });
    if (pipelined) task.pipelined = true;
    state.references[key] = task.id;
    drawLeases(ctx, task);
    out.push(reply(msg, 'Infer-Accepted', [{ name: 'Task', value: task.id }, { name: 'Escrow', value: task.escrow }]));
    maybeCanary(ctx);
    return { task: task.id };
  },

  Task: ({ state, msg, out }) => {
    const id = tagOf(msg, 'Task') ?? own(state.references, `${msg.From} ${tagOf(msg, 'X-Reference') ?? ''}`);
    const task = id === undefined ? undefined : own(state.tasks, id);
    if (!task) return refuse(404, 'no live task by that id: an ended task is in its last Infer-Response');
    out.push(reply(msg, 'Task-Response', [{ name: 'Task', value: task.id }, { name: 'Status', value: task.status }], JSON.stringify(taskView(task))));
  },

  Tasks: ({ state, msg, out }) => {
    const node = tagOf(msg, 'Node') ?? msg.From;
    const leases: Assignment[] = [];
    const duties: Duty[] = [];
    for (const id of state.open) {
      const task = state.tasks[id];
      task.participants.forEach((p, i) => {
        if (!holdersOf(p).includes(node)) return;
        if (p.status === 'open') leases.push(leaseOf(task, p, node));
        const duty = dutyOf(state, task, i, node);
        if (duty) duties.push(duty);
      });
    }
    out.push(reply(msg, 'Tasks-Response', [{ name: 'Node', value: node }], JSON.stringify({ leases, duties })));
  },

  // -- results: commit, reveal, challenge, dispute --

  'Submit-Result': (ctx) => {
    const { state, msg, out } = ctx;
    const task = liveTask(state, msg);
    const mine = task.participants.filter((p) => p.node === msg.From && p.role !== 'challenger');
    if (mine.length === 0) refuse(403, 'this node holds no lease on the task');
    const p = mine.find((l) => l.status === 'open');
    if (!p) return refuse(409, mine.some((l) => l.status !== 'expired' && l.status !== 'cancelled') ? 'the result is already in' : 'the lease has expired');
    if (tagOf(msg, 'Job-Commitment') !== task.commitment) refuse(400, 'Job-Commitment is not the task\'s');
    const commitment = tagOf(msg, 'Result-Commitment') ?? '';
    if (!HEX64.test(commitment)) refuse(400, 'Result-Commitment must be 64 hex characters: sha256 of verity-result/1, the task, the node and its trace root');
    const { tokens, text } = tokensOf(state, task, msg);
    p.status = 'committed';
    p.message = msg.Id;
    p.commitment = commitment;
    p.tokens = tokens;
    p.text = text;
    for (const address of holdersOf(p)) {
      const node = nodeOf(state, address);
      if (node) {
        node.open -= 1;
        node.completed += 1;
      }
    }
    for (const st of p.stages ?? []) st.status = 'done';
    out.push(reply(msg, 'Submit-Result-Response', [{ name: 'Task', value: task.id }]));
    // The requester sees the first answer at once; it becomes final (or is corrected) later.
    if (p.role === 'asserter' && !task.pendingSent) {
      task.pendingSent = true;
      if (task.candidate === null) task.candidate = task.participants.indexOf(p);
      out.push(inferResponse(task, 'pending'));
    }
    return { task: task.id, committed: msg.From };
  },

  Reveal: ({ state, msg, out }) => {
    const task = liveTask(state, msg);
    if (!task.participants.some((x) => x.node === msg.From)) refuse(403, 'this node takes no part in the task');
    const p = task.participants.find((x) => x.node === msg.From && x.status === 'committed') ?? refuse(409, 'nothing of this node waits to be revealed');
    if (task.status !== 'revealing') refuse(409, `the task is ${task.status}: reveals come when asked (Reveal-Requested)`);
    const root = tagOf(msg, 'Trace-Root') ?? '';
    const trace = tagOf(msg, 'Trace') ?? '';
    if (!HEX64.test(root)) refuse(400, 'Trace-Root must be 64 hex characters');
    if (!ID.test(trace)) refuse(400, 'Trace must be the id of the stored trace item');
    if (resultCommitment(task.id, msg.From, root) !== p.commitment) refuse(400, 'Trace-Root does not open the Result-Commitment');
    // A pipeline's reveal names every stage's signed record: each leaf is then its maker's.
    let records: string[] = [];
    if (p.stages) {
      records = (tagOf(msg, 'Stage-Records') ?? '').split(',');
      if (records.length !== p.stages.length || !records.every((r) => ID.test(r))) refuse(400, `Stage-Records must name the ${p.stages.length} stages' record items, in stage order`);
    }
    task.traceSteps = checkTrace(state, task, msg.From, root, trace, p.tokens!, p.stages && { stages: stageInputs(p, records), leaseEnd: p.end }).steps;
    p.stages?.forEach((st, i) => (st.record = records[i]));
    p.status = 'revealed';
    p.traceRoot = root;
    p.trace = trace;
    out.push(reply(msg, 'Reveal-Response', [{ name: 'Task', value: task.id }]));
    return { task: task.id, revealed: msg.From };
  },

  Challenge: (ctx) => {
    const { state, msg, out } = ctx;
    const task = liveTask(state, msg);
    if (task.status !== 'challengeable') refuse(409, `the task is ${task.status}: only a revealed, unaudited result in its window may be challenged`);
    const node = nodeOf(state, msg.From);
    if (!node || !isActive(state, node)) refuse(403, 'only an active staked node may challenge');
    if (task.participants.some((x) => holdersOf(x).includes(msg.From))) refuse(409, 'this node already takes part in the task');
    if (task.disputes.length >= MAX_DISPUTES) refuse(409, `the task has had its ${MAX_DISPUTES} disputes`);
    const bond = big(state.params.challengeBond);
    if (freeStake(state, msg.From) < bond) refuse(402, `a challenge locks Challenge-Bond (${bond}); ${msg.From} has ${freeStake(state, msg.From)} free stake`);
    const root = tagOf(msg, 'Trace-Root') ?? '';
    const trace = tagOf(msg, 'Trace') ?? '';
    if (!HEX64.test(root)) refuse(400, 'Trace-Root must be 64 hex characters');
    if (!ID.test(trace)) refuse(400, 'Trace must be the id of the stored trace item');
    const candidate = task.participants[task.candidate!];
    if (root === candidate.traceRoot) refuse(400, 'the challenge agrees with the result');
    const { tokens, text } = tokensOf(state, task, msg);
    checkTrace(state, task, msg.From, root, trace, tokens);
    lock(state, msg.From, bond);
    task.participants.push({
      node: msg.From, role: 'challenger', start: msg.Timestamp, end: task.windowEnd!, status: 'revealed', locked: bond.toString(), message: msg.Id, tokens, text, traceRoot: root, trace,
    });
    task.windowEnd = null;
    task.compared.push(task.participants.length - 1);
    openDispute(ctx, task, task.participants.length - 1);
    out.push(reply(msg, 'Challenge-Response', [{ name: 'Task', value: task.id }]));
    return { task: task.id, challenged: msg.From };
  },

  'Dispute-Post': (ctx) => {
    const { state, msg, out } = ctx;
    const task = liveTask(state, msg);
    const { dispute, party } = disputeParty(task, msg.From);
    const round = dispute.game.log.length + 1;
    if (tagOf(msg, 'Round') !== String(round)) refuse(409, `the dispute is in round ${round}${dispute.game.phase === 'bisect' ? '' : ` (${dispute.game.phase})`}`);
    let values: unknown;
    try {
      values = JSON.parse(msg.Data);
    } catch {
      return refuse(400, 'Data must be a JSON list of accumulators');
    }
    const p = task.participants[dispute[party]];
    // A pipeline's values are its stored trace's, whose leaves its stages' records vouch for: the
    // last stage posts them, and may not post others (it would narrow the game onto a stage it frames).
    if (p.stages) {
      const accs = traceOfPipeline(state, task, p, splitPoints(dispute.game));
      if (!Array.isArray(values) || JSON.stringify(values) !== JSON.stringify(accs)) refuse(400, 'a pipeline posts the accumulators of its stored trace at the round\'s points');
    }
    const game = gameMove(() => post(dispute.game, party, values as string[], msg.Timestamp));
    const bond = big(state.params.roundBond);
    if (freeStake(state, p.node) < bond) refuse(402, `a round locks Round-Bond (${bond}); the node has ${freeStake(state, p.node)} free stake`);
    dispute.game = game;
    lock(state, p.node, bond);
    p.locked = add(p.locked, bond);
    out.push(reply(msg, 'Dispute-Post-Response', [{ name: 'Task', value: task.id }, { name: 'Round', value: String(round) }]));
    return { task: task.id, posted: party, round };
  },

  'Dispute-Open': (ctx) => {
    const { state, msg, out } = ctx;
    const task = liveTask(state, msg);
    const { dispute, party } = disputeParty(task, msg.From, 'open');
    if (dispute.game.phase !== 'prove') refuse(409, `the dispute is in phase ${dispute.game.phase}: an opening comes when asked (Dispute-Prove)`);
    const { step, agreed } = disputedStep(dispute.game);
    // A pipeline's step is opened by the stage that made it.
    const opener = openerOf(task, task.participants[dispute[party]], step);
    if (opener !== msg.From) refuse(403, `step ${step} is stage ${opener}'s to open`);
    if (tagOf(msg, 'Step') !== String(step)) refuse(400, `the disputed step is ${step}`);
    // host.step bounds the opening by the job too; this one needs no host call.
    if (msg.Data.length > HOST_CAPS.openingChars) refuse(413, `an opening is at most ${HOST_CAPS.openingChars} characters`);
    const model = state.models.find((m) => m.id === task.model)!;
    let proof: { acc: string; leaf: string; kind: string };
    try {
      proof = JSON.parse(host.step(JSON.stringify({ ...jobInput(model, task), agreed, step, opening: msg.Data }))) as typeof proof;
    } catch (e) {
      return refuse(400, `the opening does not check: ${hostError(e, 'step')}`);
    }
    dispute.game = gameMove(() => decide(dispute.game, proof.acc, msg.Timestamp));
    dispute.proof = { step, kind: proof.kind, by: msg.From, acc: proof.acc, leaf: proof.leaf };
    settleDispute(ctx, task, dispute);
    out.push(reply(msg, 'Dispute-Open-Response', [{ name: 'Task', value: task.id }, { name: 'Step', value: String(step) }]));
    return { task: task.id, proved: party, step };
  },
};

// ---- requests: options, eligibility, drawing, leases ----

function modelFor(state: State, id: string | undefined): ModelEntry {
  if (state.models.length === 0) return refuse(404, 'no model is registered');
  if (id === undefined) return state.models[0];
  return state.models.find((m) => m.id === id) ?? refuse(404, `model ${id.slice(0, 64)} is not registered`);
}

function parseOptions(json: string | undefined): Options {
  let raw: Record<string, unknown> = {};
  if (json !== undefined) {
    try {
      raw = JSON.parse(json) as Record<string, unknown>;
    } catch {
      return refuse(400, 'X-Options must be JSON');
    }
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) refuse(400, 'X-Options must be a JSON object');
  }
  const num = (key: string, fallback: number): number => {
    const v = own(raw, key) ?? fallback;
    return typeof v === 'number' && Number.isFinite(v) ? v : refuse(400, `${key} must be a number`);
  };
  const maxTokens = num('max_tokens', 128);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) refuse(400, 'max_tokens must be a whole number ≥ 1');
  const temperature = num('temperature', 0);
  if (temperature < 0 || temperature > 2) refuse(400, 'temperature must be in [0, 2]');
  const topP = num('top_p', 0.9);
  if (!(topP > 0 && topP <= 1)) refuse(400, 'top_p must be in (0, 1]');
  const seedRaw = own(raw, 'seed') ?? 0;
  const seed = typeof seedRaw === 'number' && Number.isSafeInteger(seedRaw) && seedRaw >= 0 ? String(seedRaw) : typeof seedRaw === 'string' && /^(0|[1-9][0-9]{0,19})$/.test(seedRaw) ? seedRaw : '';
  if (seed === '' || BigInt(seed) >= 18446744073709551616n) refuse(400, 'seed must be an integer in [0, 2^64)');
  return { max_tokens: maxTokens, temperature, top_p: topP, seed };
}

/** What a request escrows: every asserter and every validator of one audit, at max_tokens. */
const escrowFor = (state: State, maxTokens: number, redundancy: number): bigint => big(state.params.price) * BigInt(maxTokens) * BigInt(redundancy + state.params.validators);

const nodeOf = (state: State, address: string): NodeEntry | undefined => state.nodes.find((n) => n.address === address);
/** The nodes a participant's lease is held by: its stages' (a pipeline), or its own. */
const holdersOf = (p: Participant): string[] => (p.stages ? p.stages.map((st) => st.node) : [p.node]);
/** Can take a pipeline stage: it says how much it holds and where the other stages reach it. */
const canStage = (n: NodeEntry): boolean => n.memory !== undefined && n.streamUrl !== undefined;
/**
 * Whether a node may not be drawn for the task again: it takes part in it, or was held
 * responsible for a lease of it that ran out. A stage let go when its pipeline's lease ran out
 * through another stage's silence may be drawn again.
 */
const excluded = (task: Task, address: string): boolean =>
  task.participants.some((p) => (p.stages ? p.stages.some((st) => st.node === address && (p.status !== 'expired' || st.status === 'expired')) : p.node === address));
/** The active nodes that serve the model (among `nodes`, when the requester names them). */
const servingNodes = (state: State, model: ModelEntry, nodes: string[] | null): NodeEntry[] =>
  state.nodes.filter((n) => isActive(state, n) && n.models.includes(model.id) && (nodes === null || nodes.includes(n.address)));
/** Whether a node's declared memory holds the model (no declaration, or a model of unknown size: yes). */
const holds = (n: NodeEntry, model: ModelEntry): boolean => n.memory === undefined || model.bytes === undefined || n.memory >= model.bytes;
const freeStake = (state: State, address: string): bigint => big(own(state.stakes, address)) - big(own(state.locked, address));

function isActive(state: State, node: NodeEntry): boolean {
  return own(state.unstakeAt, node.address) === undefined && big(own(state.stakes, node.address)) >= big(state.params.minStake);
}

function newTask(
  state: State,
  r: { id: string; requester: string; reference: string; session?: string; model: string; prompt: string; options: Options; redundancy: number; nodes: string[] | null; job: { commitment: string; promptTokens: number; steps: number }; escrow: bigint; now: number },
): Task {
  const task: Task = {
    id: r.id, requester: r.requester, reference: r.reference, model: r.model, prompt: r.prompt, options: r.options, redundancy: r.redundancy, nodes: r.nodes,
    ...(r.session === undefined ? {} : { session: r.session }),
    commitment: r.job.commitment, promptTokens: r.job.promptTokens, steps: r.job.steps, traceSteps: 0, escrow: r.escrow.toString(), pot: '0',
    status: 'assigned', pending: r.redundancy, waitingSince: r.now, participants: [], candidate: null, compared: [], queue: [], lostRoots: [], audits: 0,
    drawAfter: null, revealEnd: null, windowEnd: null, disputes: [], winners: [], canary: null, canaryChecked: false, pendingSent: false, corrected: false,
    createdAt: r.now, endedAt: null,
  };
  state.tasks[task.id] = task;
  state.open.push(task.id);
  return task;
}

/** The role the current phase leases. */
const leaseRole = (task: Task): 'asserter' | 'validator' => (task.status === 'auditing' ? 'validator' : 'asserter');

/**
 * Nodes that may take the task's next lease: free, staked for the lock, serving the model, and
 * holding it — or, for a stage of a pipeline (`stage`), able to take one (canStage).
 */
function eligible(state: State, task: Task, stage = false): NodeEntry[] {
  const role = leaseRole(task);
  const model = state.models.find((m) => m.id === task.model);
  const lock = big(state.params.slash);
  return state.nodes.filter(
    (n) =>
      isActive(state, n) &&
      n.open < n.capacity &&
      freeStake(state, n.address) >= lock &&
      n.models.includes(task.model) &&
      (stage ? canStage(n) : model === undefined || holds(n, model)) &&
      // A requester may choose its asserters, never its validators.
      (role === 'validator' || task.nodes === null || task.nodes.includes(n.address)) &&
      !excluded(task, n.address),
  );
}

/** Links between stages as the coordinator prices them: it cannot measure any, so all are free. */
const FREE_LINKS = { latencyNs: () => 0, bytesPerSecond: () => Infinity };

/**
 * A pipeline for the task's next lease: nodes drawn one by one (weighted as single leases are)
 * until the drawn ones can hold the model between them, then split by optimalPlacement over them
 * (exact; with every node as fast as every other, the fewest stages, ties by address). Null when
 * the eligible nodes cannot (the lease is drawn again with a later message).
 */
function drawPipeline(ctx: Ctx, task: Task, model: ModelEntry): Placement | null {
  const profile = model.profile;
  if (!profile) return null;
  const pool = eligible(ctx.state, task, true);
  const drawn: NodeEntry[] = [];
  while (pool.length > 0 && drawn.length < MAX_STAGES) {
    const chosen = drawWeighted(ctx, pool);
    pool.splice(pool.indexOf(chosen), 1);
    drawn.push(chosen);
    if (drawn.length < 2 || drawn.reduce((n, x) => n + x.memory!, 0) < model.bytes!) continue;
    try {
      const placement = optimalPlacement(
        profile,
        drawn.map((n) => ({ id: n.address, memoryBytes: n.memory!, nsPerLayer: 1000, nsHead: 1000 })),
        FREE_LINKS,
      );
      if (placement.stages.length >= 2) return placement;
    } catch (e) {
      if (!(e instanceof PlacementError)) throw e;
    }
  }
  return null;
}

/** Draws nodes for the task's pending leases, weighted by stake × reputation; each lease locks S. */
function drawLeases(ctx: Ctx, task: Task): void {
  const { state, msg } = ctx;
  const role = leaseRole(task);
  while (task.pending > 0) {
    if (task.pipelined) {
      if (!drawStages(ctx, task)) break;
      continue;
    }
    const candidates = eligible(state, task);
    if (candidates.length === 0) break;
    const chosen = drawWeighted(ctx, candidates);
    const end = msg.Timestamp + state.params.leaseMs;
    lock(state, chosen.address, big(state.params.slash));
    task.participants.push({ node: chosen.address, role, start: msg.Timestamp, end, status: 'open', locked: state.params.slash });
    task.pending -= 1;
    chosen.open += 1;
    ctx.out.push(taskAssigned(task, chosen.address, assignmentOf(task, end)));
  }
}

/** The lease as its node is told of it (a stage's with its Stage). */
const taskAssigned = (task: Task, node: string, a: Assignment): OutboxMessage => ({
  Target: node,
  Tags: [
    { name: 'Action', value: 'Task-Assigned' },
    { name: 'Task', value: task.id },
    { name: 'Model', value: task.model },
    { name: 'Lease-End', value: String(a.leaseEnd) },
    { name: 'Job-Commitment', value: task.commitment },
    ...(a.pipeline ? [{ name: 'Stage', value: String(a.pipeline.stage) }] : []),
  ],
  Data: JSON.stringify(a),
});

/** One of the candidates, weighted by stake × reputation, from the message's Hash-Chain. */
function drawWeighted(ctx: Ctx, candidates: NodeEntry[]): NodeEntry {
  const { state, msg } = ctx;
  // + 1: with Min-Stake 0 an unstaked node may serve, and a zero total would divide by zero.
  const weights = candidates.map((n) => (big(own(state.stakes, n.address)) + 1n) * BigInt(n.reputation));
  const total = weights.reduce((a, b) => a + b, 0n);
  let r = draw(msg, ctx.draws.next++) % total;
  for (let i = 0; i < candidates.length; i++) {
    if (r < weights[i]) return candidates[i];
    r -= weights[i];
  }
  return candidates[candidates.length - 1];
}

/** Draws a pipeline for one pending lease: every stage locks S and is told its layers and its peers. */
function drawStages(ctx: Ctx, task: Task): boolean {
  const { state, msg } = ctx;
  const model = state.models.find((m) => m.id === task.model);
  const placement = model && drawPipeline(ctx, task, model);
  if (!placement) return false;
  const end = msg.Timestamp + state.params.leaseMs;
  const stages: StageLease[] = placement.stages.map((st) => ({
    node: st.node, first: st.first, end: st.end, url: `${nodeOf(state, st.node)!.streamUrl}/pipe/${task.id}`, locked: state.params.slash, status: 'running',
  }));
  const p: Participant = { node: stages[stages.length - 1].node, role: leaseRole(task), start: msg.Timestamp, end, status: 'open', locked: '0', stages };
  task.participants.push(p);
  task.pending -= 1;
  for (const st of stages) {
    lock(state, st.node, big(st.locked));
    nodeOf(state, st.node)!.open += 1;
    ctx.out.push(taskAssigned(task, st.node, leaseOf(task, p, st.node)));
  }
  return true;
}

/**
 * A canary: with probability Canary-Ppm per Infer, a known (audited) job leased again like any
 * request, paid from the owner's deposit. Its id is this message's Hash-Chain, shaped like any id.
 */
function maybeCanary(ctx: Ctx): void {
  const { state, msg } = ctx;
  if (state.known.length === 0 || state.params.canaryPpm === 0 || !chance(msg, ctx.draws, state.params.canaryPpm)) return;
  const known = state.known[Number(draw(msg, ctx.draws.next++) % BigInt(state.known.length))];
  const id = msg['Hash-Chain'] ?? '';
  const escrow = escrowFor(state, known.options.max_tokens, 1);
  const funds = big(own(state.deposits, state.owner));
  if (!ID.test(id) || own(state.tasks, id) || funds < escrow || !state.models.some((m) => m.id === known.model)) return;
  state.deposits[state.owner] = (funds - escrow).toString();
  const job = { commitment: known.commitment, promptTokens: known.promptTokens, steps: known.steps };
  const task = newTask(state, { id, requester: state.owner, reference: id, model: known.model, prompt: known.prompt, options: known.options, redundancy: 1, nodes: null, job, escrow, now: msg.Timestamp });
  task.canary = known.root;
  // As Infer decides: a model no active serving node holds is served by pipelines.
  const model = state.models.find((m) => m.id === known.model)!;
  if (!servingNodes(state, model, null).some((n) => holds(n, model))) task.pipelined = true;
  state.totals.canaries += 1;
  drawLeases(ctx, task);
}

// ---- money: locks, slashes, pay ----

function lock(state: State, address: string, amount: bigint): void {
  state.locked[address] = add(own(state.locked, address), amount);
}

/** Who holds a lock: a participant, or one stage of a pipelined one. */
type Holder = { node: string; locked: string };

/** Gives back what a participant (or a stage) still has locked. */
function release(state: State, p: Holder): void {
  state.locked[p.node] = (big(own(state.locked, p.node)) - big(p.locked)).toString();
  p.locked = '0';
}

/** Takes up to `amount` of a participant's (or a stage's) lock into the task's pot. */
function slash(ctx: Ctx, task: Task, p: Holder, amount: bigint, reason: string): void {
  const { state } = ctx;
  const taken = minBig(amount, big(p.locked));
  state.stakes[p.node] = (big(own(state.stakes, p.node)) - taken).toString();
  state.locked[p.node] = (big(own(state.locked, p.node)) - taken).toString();
  p.locked = (big(p.locked) - taken).toString();
  task.pot = add(task.pot, taken);
  state.totals.slashed = add(state.totals.slashed, taken);
  ctx.out.push(notice(p.node, 'Slash-Notice', [{ name: 'Task', value: task.id }, { name: 'Quantity', value: taken.toString() }, { name: 'Reason', value: reason }]));
}

/**
 * A participant that lied (or kept silent): all its lock goes, its reputation falls. In a pipeline
 * only the stage at fault (`stage`: the one that made the disputed step; by default the last, which
 * reveals and plays the rounds) is convicted; the others are let go and paid, from the pot, for
 * the layers they served.
 */
function convict(ctx: Ctx, task: Task, p: Participant, reason: string, stage?: number): void {
  p.status = 'slashed';
  if (!p.stages) return convictHolder(ctx, task, p, reason);
  const culprit = p.stages[stage ?? p.stages.length - 1];
  // The round bonds the last stage posted for the pipeline are forfeit when it is the culprit, and
  // given back when another stage is (its fault made the pipeline lose).
  if (culprit === p.stages[p.stages.length - 1]) slash(ctx, task, p, big(p.locked), reason);
  else release(ctx.state, p);
  convictHolder(ctx, task, culprit, reason);
  culprit.status = 'slashed';
  const layers = p.stages[p.stages.length - 1].end;
  let pot = big(task.pot);
  for (const st of p.stages) {
    if (st === culprit) continue;
    const pay = minBig((big(ctx.state.params.price) * BigInt(p.tokens?.length ?? 0) * BigInt(st.end - st.first)) / BigInt(layers), pot);
    pot -= pay;
    ctx.state.earnings[st.node] = add(own(ctx.state.earnings, st.node), pay);
    release(ctx.state, st);
    st.status = 'released';
    dropIfDone(ctx.state, st.node);
  }
  task.pot = pot.toString();
}

function convictHolder(ctx: Ctx, task: Task, h: Holder, reason: string): void {
  slash(ctx, task, h, big(h.locked), reason);
  const node = nodeOf(ctx.state, h.node);
  if (node) {
    node.disputesLost += 1;
    node.reputation = Math.max(REPUTATION.min, node.reputation - REPUTATION.lost);
  }
  dropIfDone(ctx.state, h.node);
}

/** A node with nothing staked and nothing running leaves the node list (it may stake and register again). */
function dropIfDone(state: State, address: string): void {
  const node = nodeOf(state, address);
  if (node && node.open === 0 && big(own(state.stakes, address)) === 0n && big(own(state.locked, address)) === 0n) {
    state.nodes = state.nodes.filter((n) => n !== node);
  }
}

function payOut(state: State, to: string, quantity: bigint, reason: string): OutboxMessage {
  return notice(state.token, 'Transfer', [
    { name: 'Recipient', value: to },
    { name: 'Quantity', value: quantity.toString() },
    { name: 'X-Reason', value: reason },
  ]);
}

// ---- the task's life ----

/** Moves every live task on as far as this message's Timestamp and Hash-Chain allow, oldest first. */
function advanceOpenTasks(ctx: Ctx): void {
  for (const id of [...ctx.state.open]) {
    const task = own(ctx.state.tasks, id);
    if (task) advance(ctx, task);
  }
}

function advance(ctx: Ctx, task: Task): void {
  const { state, msg } = ctx;
  const now = msg.Timestamp;
  // Each pass either changes the status or stops; a task passes through each status a bounded number of times.
  for (let guard = 0; guard < 32; guard++) {
    const before = task.status;
    switch (task.status) {
      case 'assigned':
      case 'auditing': {
        expireLeases(ctx, task);
        const role = leaseRole(task);
        const wanted = role === 'asserter' ? task.redundancy : state.params.validators;
        const expiredCount = (): number => task.participants.filter((p) => p.role === role && p.status === 'expired').length;
        // The limits are checked before drawing again: an expiry that reaches Max-Attempts draws no one.
        const exhausted = expiredCount() >= state.params.maxAttempts * wanted;
        const waitedOut = now > task.waitingSince + state.params.maxWaitMs;
        if (!exhausted && !waitedOut) drawLeases(ctx, task);
        const mine = task.participants.filter((p) => p.role === role);
        const running = mine.some((p) => p.status === 'open');
        const committed = mine.filter((p) => p.status === 'committed').length;
        if (running || (task.pending > 0 && !exhausted && !waitedOut)) break;
        const expired = expiredCount();
        task.pending = 0;
        if (role === 'asserter') {
          if (committed === 0) return fail(ctx, task, expired > 0 ? `${expired} leases expired` : `no node took it within ${state.params.maxWaitMs} ms`);
          task.status = 'committed';
          task.drawAfter = msg.Nonce;
        } else startReveal(ctx, task);
        break;
      }
      case 'committed':
        // The audit is drawn from a Hash-Chain that did not exist when the last commit was sent.
        if (msg.Nonce <= task.drawAfter!) break;
        if (chance(msg, ctx.draws, state.params.auditPpm)) startAudit(ctx, task);
        else startReveal(ctx, task);
        break;
      case 'revealing': {
        const waiting = task.participants.filter((p) => p.status === 'committed');
        if (waiting.length > 0 && now <= task.revealEnd!) break;
        for (const p of waiting) convict(ctx, task, p, 'did not reveal its result in time');
        compare(ctx, task);
        break;
      }
      case 'challengeable':
        if (now > task.windowEnd!) finalize(ctx, task);
        break;
      case 'disputed': {
        const dispute = task.disputes[task.disputes.length - 1];
        const game = dispute.game;
        if (game.phase === 'bisect') dispute.game = tick(game, Math.max(now, game.lastSlot));
        else if (game.phase === 'prove' && now > game.openedAt + state.params.clockMs) dispute.game = decide(game, null, now);
        if (dispute.game.phase === 'done') settleDispute(ctx, task, dispute);
        else notifyDispute(ctx, task, dispute);
        break;
      }
      default:
        return;
    }
    if (task.status === before || !own(state.tasks, task.id)) return;
  }
}

/** Overdue leases of the current phase expire: the node loses Miss-Slash and reputation; another is drawn. */
function expireLeases(ctx: Ctx, task: Task): void {
  const { state, msg } = ctx;
  for (const p of task.participants) {
    if (p.status !== 'open' || p.end >= msg.Timestamp) continue;
    p.status = 'expired';
    task.pending += 1;
    task.waitingSince = msg.Timestamp;
    if (p.stages) {
      expireStages(ctx, task, p);
      continue;
    }
    const node = nodeOf(state, p.node);
    if (node) {
      node.open -= 1;
      expiredOn(node);
    }
    slash(ctx, task, p, big(state.params.missSlash), 'the lease expired without a result');
    release(state, p);
    dropIfDone(state, p.node);
  }
}

/** A lease ran out on the node: it is counted, and its reputation falls. */
function expiredOn(node: NodeEntry): void {
  node.expired += 1;
  node.reputation = Math.max(REPUTATION.min, node.reputation - REPUTATION.expired);
}

/**
 * A pipeline's lease ran out. The stages whose node said nothing in the lease's second half (no
 * message at all) are held responsible: Miss-Slash, reputation, and they are not drawn for the
 * task again; the others are let go unpunished and may be drawn again. When every stage was heard
 * from, none can be told apart (a stage that stalls the others while it heartbeats, or a stranger
 * that got between them): all lose reputation and are not drawn for the task again, and none is
 * slashed (docs/pipeline.md).
 */
function expireStages(ctx: Ctx, task: Task, p: Participant): void {
  const { state } = ctx;
  const half = p.start + Math.floor((p.end - p.start) / 2);
  const silent = p.stages!.filter((st) => (nodeOf(state, st.node)?.lastSeen ?? 0) <= half);
  const blamed = silent.length > 0 ? silent : p.stages!;
  for (const st of p.stages!) {
    const node = nodeOf(state, st.node);
    if (node) node.open -= 1;
    if (blamed.includes(st)) {
      st.status = 'expired';
      if (node) expiredOn(node);
      if (silent.length > 0) slash(ctx, task, st, big(state.params.missSlash), 'the pipeline lease expired without a result, and this stage was not heard from');
    } else st.status = 'released';
    release(state, st);
    dropIfDone(state, st.node);
  }
}

function startAudit(ctx: Ctx, task: Task): void {
  task.audits += 1;
  task.status = 'auditing';
  task.pending = ctx.state.params.validators;
  task.waitingSince = ctx.msg.Timestamp;
  drawLeases(ctx, task);
}

function startReveal(ctx: Ctx, task: Task): void {
  const { state, msg } = ctx;
  task.status = 'revealing';
  task.revealEnd = msg.Timestamp + state.params.revealMs;
  for (const p of task.participants) {
    if (p.status !== 'committed') continue;
    ctx.out.push(notice(p.node, 'Reveal-Requested', [{ name: 'Task', value: task.id }, { name: 'Deadline', value: String(task.revealEnd) }]));
  }
}

/**
 * Compares every revealed result with the candidate's: equal roots agree, a root that already lost
 * is convicted, and the first other dissent opens a dispute. With none left: final when a drawn
 * validator (or a canary's known answer) agrees; after a dispute, audited again; else the window.
 */
function compare(ctx: Ctx, task: Task): void {
  const { state } = ctx;
  const revealed = (i: number): boolean => task.participants[i].status === 'revealed';
  if (task.candidate === null || !revealed(task.candidate)) {
    const next = task.participants.findIndex((p, i) => revealed(i) && p.role === 'asserter');
    task.candidate = next >= 0 ? next : task.participants.findIndex((_, i) => revealed(i));
    if (task.candidate < 0) {
      task.candidate = null;
      // No result survived: try fresh nodes while audits remain.
      if (task.audits < MAX_AUDITS) return startAudit(ctx, task);
      return fail(ctx, task, 'no result survived its checks');
    }
    if (!task.compared.includes(task.candidate)) task.compared.push(task.candidate);
  }
  const root = task.participants[task.candidate].traceRoot!;
  task.participants.forEach((p, i) => {
    if (!revealed(i) || task.compared.includes(i)) return;
    task.compared.push(i);
    if (p.traceRoot !== root) task.queue.push(i);
  });
  while (task.queue.length > 0) {
    const i = task.queue.shift()!;
    const p = task.participants[i];
    if (!revealed(i) || p.traceRoot === root) continue;
    if (task.lostRoots.includes(p.traceRoot!)) {
      const step = task.lostSteps?.[task.lostRoots.indexOf(p.traceRoot!)] ?? null;
      convict(ctx, task, p, 'its root already lost a dispute', step === null ? undefined : stageOwning(task, p, step));
      continue;
    }
    return openDispute(ctx, task, i);
  }
  if (task.canary !== null && !task.canaryChecked) {
    task.canaryChecked = true;
    // A canary answered wrongly is audited: the dispute, not the coordinator's memory, convicts.
    if (root !== task.canary) return startAudit(ctx, task);
  }
  if (agreedWith(task, root)) return finalize(ctx, task);
  if (task.disputes.length > 0 && task.audits < MAX_AUDITS) return startAudit(ctx, task);
  task.status = 'challengeable';
  task.windowEnd = ctx.msg.Timestamp + state.params.challengeWindowMs;
}

function openDispute(ctx: Ctx, task: Task, challenger: number): void {
  const { state, msg } = ctx;
  const a = task.participants[task.candidate!];
  const c = task.participants[challenger];
  const game = openGame({
    k: state.params.arity, steps: task.traceSteps, start: traceStart(task.commitment),
    roots: { asserter: a.traceRoot!, challenger: c.traceRoot! }, clock: state.params.clockMs, bond: 1, now: msg.Timestamp,
  });
  const dispute: Dispute = { asserter: task.candidate!, challenger, game, notified: 0, proof: null };
  task.disputes.push(dispute);
  task.status = 'disputed';
  state.totals.disputes += 1;
  notifyDispute(ctx, task, dispute);
}

/** Tells both parties what the game asks now (once per round, once for the proof). */
function notifyDispute(ctx: Ctx, task: Task, d: Dispute): void {
  const { game } = d;
  const stage = game.phase === 'prove' ? 'prove' : game.log.length + 1;
  if (game.phase === 'done' || d.notified === stage) return;
  d.notified = stage;
  for (const party of ['asserter', 'challenger'] as const) {
    const node = task.participants[d[party]].node;
    if (game.phase === 'bisect') {
      const deadline = game.openedAt + game.clocks[party];
      ctx.out.push(
        notice(node, 'Dispute-Round', [{ name: 'Task', value: task.id }, { name: 'Round', value: String(stage) }, { name: 'Deadline', value: String(deadline) }],
          JSON.stringify({ points: splitPoints(game), interval: [game.lo, game.hi] })),
      );
    } else {
      const deadline = game.openedAt + ctx.state.params.clockMs;
      ctx.out.push(notice(openerOf(task, task.participants[d[party]], game.hi), 'Dispute-Prove', [{ name: 'Task', value: task.id }, { name: 'Step', value: String(game.hi) }, { name: 'Deadline', value: String(deadline) }]));
    }
  }
}

/** The game is over: the loser's root is convicted, its holders slashed; a winning dissent becomes the result. */
function settleDispute(ctx: Ctx, task: Task, d: Dispute): void {
  const { state } = ctx;
  const winner = d.game.outcome!.winner;
  for (const party of ['asserter', 'challenger'] as const) {
    const p = task.participants[d[party]];
    if (party === winner) {
      // Its round bonds come back; its lease lock stays until the task is final.
      const bonds = BigInt(d.game.bonded[party]) * big(state.params.roundBond);
      state.locked[p.node] = (big(own(state.locked, p.node)) - bonds).toString();
      p.locked = (big(p.locked) - bonds).toString();
      task.winners.push(p.node);
      continue;
    }
    const root = p.traceRoot!;
    // The step the game narrowed to, if it got that far: a pipeline's fault is its owner's; else
    // its last stage's, which played (or failed to play) the rounds.
    const step = d.game.hi - d.game.lo === 1 ? d.game.hi : null;
    if (!task.lostRoots.includes(root)) {
      task.lostRoots.push(root);
      (task.lostSteps ??= []).push(step);
    }
    const reason = d.game.outcome!.reason === 'proof' ? `lost the dispute at step ${d.proof?.step}` : `lost the dispute (${d.game.outcome!.reason})`;
    task.participants.forEach((q) => {
      if (q.status === 'revealed' && q.traceRoot === root) convict(ctx, task, q, reason, step === null ? undefined : stageOwning(task, q, step));
    });
  }
  if (winner === 'challenger') {
    task.candidate = d.challenger;
    task.corrected = true;
  } else if (winner === null) task.candidate = null;
  compare(ctx, task);
}

function gameMove(move: () => GameState): GameState {
  try {
    return move();
  } catch (e) {
    if (!(e instanceof GameError)) throw e;
    const code = e.code === 'bad-values' || e.code === 'bad-party' ? 400 : 409;
    return refuse(code, `${e.code}: ${e.message}`);
  }
}

/** Pays every participant whose root is the final one, and gives back what the requester is owed. */
function finalize(ctx: Ctx, task: Task): void {
  const { state } = ctx;
  const candidate = task.participants[task.candidate!];
  const root = candidate.traceRoot!;
  const price = big(state.params.price);
  let escrow = big(task.escrow);
  let pot = big(task.pot);
  const audited = agreedWith(task, root);
  for (const p of task.participants) {
    if (p.status === 'revealed' && p.traceRoot === root) {
      const pay = price * BigInt(p.tokens!.length);
      const fromEscrow = minBig(pay, escrow);
      const fromPot = minBig(pay - fromEscrow, pot);
      escrow -= fromEscrow;
      pot -= fromPot;
      // A pipeline's pay is split by layers served; the last stage takes what division leaves.
      const shares = p.stages ? p.stages.map((st) => ({ node: st.node, layers: BigInt(st.end - st.first) })) : [{ node: p.node, layers: 1n }];
      const layers = shares.reduce((n, x) => n + x.layers, 0n);
      let left = fromEscrow + fromPot;
      shares.forEach((x, k) => {
        const share = k === shares.length - 1 ? left : ((fromEscrow + fromPot) * x.layers) / layers;
        left -= share;
        state.earnings[x.node] = add(own(state.earnings, x.node), share);
        const node = nodeOf(state, x.node);
        if (node && audited) {
          node.audited += 1;
          node.reputation = Math.min(REPUTATION.max, node.reputation + REPUTATION.audited);
        }
      });
    }
  }
  closeParticipants(state, task);
  // What the pot holds beyond pay: half to the requester, half to the dispute winners.
  const winners = task.winners.filter((w, i) => task.winners.indexOf(w) === i);
  const share = winners.length === 0 ? 0n : pot / 2n / BigInt(winners.length);
  for (const w of winners) state.earnings[w] = add(own(state.earnings, w), share);
  state.deposits[task.requester] = add(own(state.deposits, task.requester), escrow + pot - share * BigInt(winners.length));
  task.escrow = '0';
  task.pot = '0';
  if (audited && task.canary === null) {
    state.known.push({ model: task.model, prompt: task.prompt, options: task.options, commitment: task.commitment, promptTokens: task.promptTokens, steps: task.steps, root });
    if (state.known.length > KNOWN_ANSWERS) state.known.shift();
  }
  state.totals.final += 1;
  end(ctx, task, 'final');
}

/** A drawn validator (or a canary's known answer) agrees with `root`: the result is audited. */
function agreedWith(task: Task, root: string): boolean {
  return task.canary === root || task.participants.some((p, i) => i !== task.candidate && p.role === 'validator' && p.status === 'revealed' && p.traceRoot === root);
}

/** The task ends for everyone in it: leases still running are cancelled and every lock left is released. */
function closeParticipants(state: State, task: Task): void {
  for (const p of task.participants) {
    if (p.status === 'open') {
      for (const address of holdersOf(p)) {
        const node = nodeOf(state, address);
        if (node) node.open -= 1;
      }
    }
    release(state, p);
    for (const st of p.stages ?? []) {
      release(state, st);
      if (st.status === 'running' || st.status === 'done') st.status = 'released';
    }
    if (p.status === 'open' || p.status === 'committed') p.status = 'cancelled';
  }
}

/** No valid result: every lock left is released, the escrow and the pot go to the requester. */
function fail(ctx: Ctx, task: Task, why: string): void {
  const { state } = ctx;
  closeParticipants(state, task);
  state.deposits[task.requester] = add(own(state.deposits, task.requester), big(task.escrow) + big(task.pot));
  task.escrow = '0';
  task.pot = '0';
  state.totals.failed += 1;
  end(ctx, task, 'failed', why);
}

/** The task leaves the live state; its last Infer-Response carries all of it. */
function end(ctx: Ctx, task: Task, status: 'final' | 'failed', why = ''): void {
  const { state } = ctx;
  task.status = status;
  task.endedAt = ctx.msg.Timestamp;
  for (const p of task.participants) for (const address of holdersOf(p)) dropIfDone(state, address);
  ctx.out.push(inferResponse(task, status, why));
  delete state.tasks[task.id];
  state.open = state.open.filter((id) => id !== task.id);
  const key = `${task.requester} ${task.reference}`;
  if (own(state.references, key) === task.id) delete state.references[key];
}

function inferResponse(task: Task, status: string, why = ''): OutboxMessage {
  const tags: Tag[] = [
    { name: 'Reference', value: task.id },
    { name: 'X-Reference', value: task.reference },
    ...(task.session === undefined ? [] : [{ name: 'X-Session', value: task.session }]),
    { name: 'Task', value: task.id },
    { name: 'Status', value: status },
  ];
  if (task.corrected && status === 'final') tags.push({ name: 'Corrected', value: 'true' });
  if (status === 'failed') tags.push({ name: 'Code', value: '504' }, { name: 'Message', value: `no verified result: ${why}` });
  return notice(task.requester, 'Infer-Response', tags, JSON.stringify(taskView(task)));
}

// ---- checks through the host ----

function liveTask(state: State, msg: ProcessMessage): Task {
  return own(state.tasks, tagOf(msg, 'Task') ?? '') ?? refuse(404, 'no live task by that id');
}

const jobInput = (model: ModelEntry, task: Task) => ({
  model: model.id, manifest: model.manifest, prompt: task.prompt, maxTokens: task.options.max_tokens, temperature: task.options.temperature, topP: task.options.top_p, seed: task.options.seed,
});

/** The tokens a message carries (Data {tokens}, counted by the Tokens tag) and their text, decoded here. */
function tokensOf(state: State, task: Task, msg: ProcessMessage): { tokens: number[]; text: string } {
  if (msg.Data.length > 16 * (task.options.max_tokens + 8)) refuse(413, 'Data is larger than max_tokens tokens can be');
  let body: { tokens?: unknown };
  try {
    body = JSON.parse(msg.Data) as typeof body;
  } catch {
    return refuse(400, 'Data must be JSON {tokens}');
  }
  const tokens = body?.tokens;
  if (!Array.isArray(tokens) || !tokens.every((t) => Number.isInteger(t) && t >= 0)) return refuse(400, 'Data must be JSON {tokens}');
  if (tokens.length > task.options.max_tokens || tagOf(msg, 'Tokens') !== String(tokens.length)) refuse(400, `Tokens must count the ${tokens.length} generated tokens, at most max_tokens`);
  const model = state.models.find((m) => m.id === task.model)!;
  try {
    // The text is the tokens' text: decoded here, never taken from the node.
    return { tokens: tokens as number[], text: host.decode(JSON.stringify({ model: model.id, manifest: model.manifest, prompt: task.prompt, tokens })) };
  } catch (e) {
    return refuse(400, hostError(e, 'decode'));
  }
}

/** A pipeline's stages as host.trace takes them, each with its record item (`records[i]`). */
const stageInputs = (p: Participant, records: string[]): { node: string; first: number; end: number; record: string }[] =>
  p.stages!.map((st, i) => ({ node: st.node, first: st.first, end: st.end, record: records[i] }));

/**
 * The stored trace must exist, be the node's, and back the root and the tokens (host.trace) — and
 * for a pipeline, every stage's record must vouch for its steps. Returns its step count and, with
 * `pipeline.points`, its accumulators there. A failure is refused, `what` naming the trace.
 */
function checkTrace(
  state: State, task: Task, node: string, root: string, trace: string, tokens: number[],
  pipeline?: { stages: { node: string; first: number; end: number; record: string }[]; leaseEnd: number; points?: number[] }, what = 'the trace',
): { steps: number; accs?: string[] } {
  const model = state.models.find((m) => m.id === task.model)!;
  try {
    return JSON.parse(host.trace(JSON.stringify({ ...jobInput(model, task), task: task.id, node, commitment: task.commitment, root, trace, tokens, ...pipeline }))) as { steps: number; accs?: string[] };
  } catch (e) {
    return refuse(400, `${what} does not check: ${hostError(e, 'trace')}`);
  }
}

/** A revealed pipeline's trace checked again, with its accumulators at `points`. */
const traceOfPipeline = (state: State, task: Task, p: Participant, points: number[]): string[] =>
  checkTrace(state, task, p.node, p.traceRoot!, p.trace!, p.tokens!, { stages: stageInputs(p, p.stages!.map((st) => st.record!)), leaseEnd: p.end, points }, 'the pipeline\'s trace').accs!;

/**
 * The party `from` plays in the running dispute: its node posts the rounds; an opening may come
 * from any of a pipeline's stages (the Dispute-Open handler checks it is the step's owner).
 */
function disputeParty(task: Task, from: string, move: 'post' | 'open' = 'post'): { dispute: Dispute; party: Party } {
  const dispute = task.disputes[task.disputes.length - 1];
  if (task.status !== 'disputed' || !dispute) return refuse(409, `the task is ${task.status}: no dispute is running`);
  const plays = (i: number): boolean => (move === 'post' ? task.participants[i].node === from : holdersOf(task.participants[i]).includes(from));
  const party = plays(dispute.asserter) ? 'asserter' : plays(dispute.challenger) ? 'challenger' : null;
  if (!party) return refuse(403, 'this node is not a party to the dispute');
  return { dispute, party };
}

// ---- views ----

/** What a node needs to run the task: the same for every role, so a validator cannot tell. */
function assignmentOf(task: Task, leaseEnd: number): Assignment {
  return { task: task.id, model: task.model, prompt: task.prompt, options: task.options, commitment: task.commitment, steps: task.steps, leaseEnd };
}

/** A lease as its node reads it: a stage's names its stage and the pipeline. */
function leaseOf(task: Task, p: Participant, node: string): Assignment {
  const a = assignmentOf(task, p.end);
  if (!p.stages) return a;
  return { ...a, pipeline: { stage: p.stages.findIndex((st) => st.node === node), stages: p.stages.map((st) => ({ node: st.node, first: st.first, end: st.end, url: st.url })) } };
}

/** What participant i owes now, as `node` (one of its holders) must do it: a pipeline's reveal and rounds are its last stage's, an opening its owner's. */
function dutyOf(state: State, task: Task, i: number, node: string): Duty | null {
  const p = task.participants[i];
  const assignment = leaseOf(task, p, node);
  if (task.status === 'revealing' && p.status === 'committed') return node === p.node ? { task: task.id, kind: 'reveal', deadline: task.revealEnd!, assignment } : null;
  const d = task.disputes[task.disputes.length - 1];
  if (task.status !== 'disputed' || !d || (d.asserter !== i && d.challenger !== i)) return null;
  const party: Party = d.asserter === i ? 'asserter' : 'challenger';
  const { game } = d;
  if (game.phase === 'bisect' && game.postedAt[party] === null && node === p.node) {
    return { task: task.id, kind: 'post', deadline: game.openedAt + game.clocks[party], points: splitPoints(game), round: game.log.length + 1, assignment };
  }
  if (game.phase === 'prove' && node === openerOf(task, p, game.hi)) return { task: task.id, kind: 'open', deadline: game.openedAt + state.params.clockMs, step: game.hi, assignment };
  return null;
}

/**
 * Which stage of a pipelined participant made step s (1-based), by the job's schedule (docs/proofs.md
 * §2): a layer step the stage that runs that layer, a head step the last stage — and so is every
 * step after generation stopped (an end step, which the last stage's sampled BOS or the submitted
 * tokens' end decided). Undefined for a participant that is not a pipeline.
 */
function stageOwning(task: Task, p: Participant, s: number): number | undefined {
  if (!p.stages) return undefined;
  const last = p.stages.length - 1;
  const L = p.stages[last].end;
  // The job's prompt is BOS and task.promptTokens tokens; the run stopped after this many positions.
  const prompt = task.promptTokens + 1;
  const ran = Math.min(task.steps, prompt + (p.tokens?.length ?? task.steps));
  const ref = schedule({ promptTokens: { length: prompt }, steps: task.steps }, L).at(s);
  if (ref.kind === 'head' || ref.pos >= ran) return last;
  const owner = p.stages.findIndex((st) => ref.layer >= st.first && ref.layer < st.end);
  return owner < 0 ? last : owner;
}

/** Who opens step s for a participant: the stage that made it, or the node itself. */
const openerOf = (task: Task, p: Participant, s: number): string => (p.stages ? p.stages[stageOwning(task, p, s)!].node : p.node);

function disputeView(task: Task, d: Dispute): DisputeView {
  const { game } = d;
  const name = (party: Party): string => task.participants[d[party]].node;
  return {
    asserter: name('asserter'),
    challenger: name('challenger'),
    steps: game.steps,
    phase: game.phase,
    interval: [game.lo, game.hi],
    points: splitPoints(game),
    rounds: game.log.map((r) => ({ round: r.round, interval: [r.interval[0], r.interval[1]], points: [...r.points], values: { asserter: [...r.values.asserter], challenger: [...r.values.challenger] }, next: [r.next[0], r.next[1]] })),
    proof: d.proof,
    outcome: game.outcome ? { winner: game.outcome.winner ? name(game.outcome.winner) : null, reason: game.outcome.reason } : null,
    openedAt: game.log[0]?.openedAt ?? game.openedAt,
    endedAt: game.endedAt,
  };
}

/** The task as a requester reads it: the answer, its receipt, and everything that led to it. */
function taskView(task: Task): TaskView {
  const c = task.candidate === null ? null : task.participants[task.candidate];
  const revealed = c !== null && c.traceRoot !== undefined;
  return {
    task: task.id,
    reference: task.reference,
    status: task.status,
    model: task.model,
    options: task.options,
    result: c?.text ?? null,
    tokens: c?.tokens ?? null,
    usage: { prompt_tokens: task.promptTokens, completion_tokens: c?.tokens?.length ?? 0 },
    receipt: c && revealed ? { task: task.id, model: task.model, commitment: task.commitment, traceRoot: c.traceRoot!, node: c.node, result: c.message!, trace: c.trace! } : null,
    audited: task.audits > 0,
    corrected: task.corrected,
    participants: task.participants.map((p) => ({ ...p, text: undefined })),
    disputes: task.disputes.map((d) => disputeView(task, d)),
    windowEnd: task.windowEnd,
    createdAt: task.createdAt,
    endedAt: task.endedAt,
  };
}
