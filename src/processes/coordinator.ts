// The coordinator process: Verity's "AI process" on AO. Its state is nothing but its message log
// evaluated by this handler, so it must be deterministic: time is the message Timestamp, randomness
// the message Hash-Chain, and every list it walks is an array in insertion order. The protocol is
// docs/network.md. This file is a self-contained module (QuickJS evaluates the compiled file as it
// is): it may import types only.
import type { OutboxMessage, ProcessEnv, ProcessMessage, Tag } from '../ao/runtime.js';

// ---- state ----

interface Config {
  minStake: string;
  leaseMs: number;
  cooldownMs: number;
  maxPromptBytes: number;
  price: string;
  maxAttempts: number;
  maxWaitMs: number;
}

interface ModelEntry {
  id: string;
  /** The manifest item registered with it: the one every CU reads. */
  manifest: string;
  name: string;
  contextLength: number;
  tokenizerHash: string;
}

interface NodeEntry {
  address: string;
  did: string;
  models: string[];
  capacity: number;
  reputation: number;
  open: number;
  completed: number;
  expired: number;
  lastSeen: number;
}

interface Options {
  max_tokens: number;
  temperature: number;
  top_p: number;
  seed: string;
}

interface Lease {
  node: string;
  start: number;
  end: number;
  status: 'open' | 'submitted' | 'expired' | 'cancelled';
}

interface TaskResult {
  node: string;
  /** The Submit-Result message id. */
  message: string;
  traceRoot: string;
  trace: string;
  tokens: number[];
  text: string;
}

type TaskStatus = 'assigned' | 'completed' | 'mismatch' | 'failed';

interface Task {
  id: string;
  requester: string;
  reference: string;
  model: string;
  prompt: string;
  options: Options;
  redundancy: number;
  nodes: string[] | null;
  commitment: string;
  promptTokens: number;
  steps: number;
  escrow: string;
  status: TaskStatus;
  /** Leases still to be drawn (after an expiry, or when no node was free). */
  pending: number;
  /** Since when a pending lease has waited for a node (Max-Wait-Ms counts from here). */
  waitingSince: number;
  leases: Lease[];
  results: TaskResult[];
  createdAt: number;
  endedAt: number | null;
}

export interface State {
  owner: string;
  token: string;
  config: Config;
  models: ModelEntry[];
  nodes: NodeEntry[];
  deposits: Record<string, string>;
  earnings: Record<string, string>;
  stakes: Record<string, string>;
  unstakeAt: Record<string, number>;
  tasks: Record<string, Task>;
  /** Ids of tasks not yet ended, oldest first: the lease sweep walks this. */
  open: string[];
  /** requester + " " + X-Reference → task id. */
  references: Record<string, string>;
}

interface Host {
  model(json: string): string;
  job(json: string): string;
  decode(json: string): string;
  didAddress(did: string): string;
}
declare const host: Host;

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

const tagOf = (msg: { Tags: Tag[] }, name: string): string | undefined => {
  for (const t of msg.Tags) if (t.name === name) return t.value;
  return undefined;
};
const big = (v: string | undefined): bigint => BigInt(v ?? '0');
/** A record's own entry: a key a sender chose ("constructor", "__proto__") must not reach Object.prototype. */
const own = <T>(record: Record<string, T>, key: string): T | undefined => (Object.prototype.hasOwnProperty.call(record, key) ? record[key] : undefined);
/** Answers and notices get no answer back, or two processes could refuse each other forever. */
const isReply = (action: string): boolean => action === '' || /-(Response|Error|Notice)$/.test(action) || action === 'Infer-Accepted' || action === 'Task-Assigned';
const add = (a: string | undefined, b: bigint): string => (big(a) + b).toString();

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

// ---- replies ----

function reply(msg: ProcessMessage, action: string, tags: Tag[] = [], data?: string): OutboxMessage {
  const ref = tagOf(msg, 'X-Reference');
  return {
    Target: msg.From,
    Tags: [{ name: 'Action', value: action }, { name: 'Reference', value: msg.Id }, ...(ref === undefined ? [] : [{ name: 'X-Reference', value: ref }]), ...tags],
    ...(data === undefined ? {} : { Data: data }),
  };
}

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

// ---- the handler ----

export function handle(state: State | undefined, msg: ProcessMessage, env: ProcessEnv): Outcome {
  if (state === undefined || state === null) return boot(msg, env);
  // Anyone may assign any stored item to this process (AO's assignments): one addressed to another
  // process — say, a token's Credit-Notice to someone else — must not count here.
  if (msg.Target !== env.Process.Id) return { state, Output: { ignored: 'an item addressed to another process' } };
  const action = tagOf(msg, 'Action') ?? '';
  // Time passes for every message: expired leases are re-drawn before anything else.
  let out: OutboxMessage[] = [];
  let sweepFault: string | null = null;
  const draws = { next: 0 };
  const arrived = JSON.stringify(state);
  try {
    sweep(state, msg, out, draws);
  } catch (e) {
    // A fault in the sweep runs on every message: let it cost this sweep, never the process.
    state = JSON.parse(arrived) as State;
    out = [];
    sweepFault = String(e);
  }
  const swept = JSON.stringify(state);
  try {
    const handler = own(HANDLERS, action);
    if (!handler) {
      if (isReply(action)) return { state, Messages: out, Output: { ignored: action } };
      refuse(400, `unknown Action '${action.slice(0, 60)}'`);
    }
    const result = handler!(state, msg, draws);
    // A new task, or a lease the handler freed, may let waiting tasks start.
    const started: OutboxMessage[] = [];
    assignWaiting(state, msg, started, draws);
    const output = result.output ?? action;
    return { state, Messages: [...out, ...result.messages, ...started], Output: sweepFault ? { output, sweepFault } : output };
  } catch (e) {
    if (!(e instanceof Refusal)) throw e;
    // Whatever the handler had begun is dropped: back to the state after the sweep.
    const errorAction = action === 'Infer' ? 'Infer-Response' : `${action || 'Unknown'}-Error`;
    const tags = [{ name: 'Code', value: String(e.code) }, { name: 'Message', value: e.message.slice(0, 300) }];
    if (action === 'Infer') tags.push({ name: 'Status', value: 'rejected' });
    return { state: JSON.parse(swept) as State, Messages: [...out, reply(msg, errorAction, tags)], Output: { code: e.code, error: e.message } };
  }
}

function boot(msg: ProcessMessage, env: ProcessEnv): Outcome {
  const tag = (name: string): string | undefined => tagOf(env.Process, name);
  const int = (name: string, fallback: number): number => {
    const v = tag(name);
    return v !== undefined && /^[0-9]{1,12}$/.test(v) ? Number(v) : fallback;
  };
  const amount = (name: string, fallback: string): string => {
    const v = tag(name);
    return v !== undefined && AMOUNT.test(v) ? v : fallback;
  };
  const token = tag('Token');
  if (!token || !ID.test(token)) throw new Error('the coordinator needs a Token tag naming the token process');
  const state: State = {
    owner: env.Process.Owner,
    token,
    config: {
      minStake: amount('Min-Stake', '100'),
      leaseMs: int('Lease-Ms', 60_000),
      cooldownMs: int('Unstake-Cooldown-Ms', 600_000),
      maxPromptBytes: int('Max-Prompt-Bytes', 4096),
      price: amount('Price-Per-Token', '1'),
      maxAttempts: Math.max(1, int('Max-Attempts', 3)),
      maxWaitMs: int('Max-Wait-Ms', 600_000),
    },
    models: [],
    nodes: [],
    deposits: {},
    earnings: {},
    stakes: {},
    unstakeAt: {},
    tasks: {},
    open: [],
    references: {},
  };
  return { state, Output: { booted: msg.Id, token } };
}

interface Handled {
  messages: OutboxMessage[];
  output?: unknown;
}
type Handler = (state: State, msg: ProcessMessage, draws: { next: number }) => Handled;

const HANDLERS: Record<string, Handler> = {
  Info: (state, msg) => ({
    messages: [
      reply(msg, 'Info-Response', [
        { name: 'Token', value: state.token },
        { name: 'Owner', value: state.owner },
        { name: 'Min-Stake', value: state.config.minStake },
        { name: 'Price-Per-Token', value: state.config.price },
        { name: 'Lease-Ms', value: String(state.config.leaseMs) },
      ], JSON.stringify({ ...state.config, token: state.token, owner: state.owner, models: state.models.length, nodes: state.nodes.length, openTasks: state.open.length })),
    ],
  }),

  // -- money --

  'Credit-Notice': (state, msg) => {
    if (msg.From !== state.token) refuse(403, 'only the token process sends Credit-Notice');
    const sender = tagOf(msg, 'Sender') ?? '';
    const quantity = tagOf(msg, 'Quantity') ?? '';
    if (!ACCOUNT.test(sender) || !AMOUNT.test(quantity)) refuse(400, 'a Credit-Notice needs Sender and Quantity');
    const stake = tagOf(msg, 'X-Action') === 'Stake';
    const ledger = stake ? state.stakes : state.deposits;
    ledger[sender] = add(ledger[sender], BigInt(quantity));
    // The sender learns it counted (and which transfer, by its X-Reference): a Stake-Notice or Deposit-Notice.
    const notice: OutboxMessage = {
      Target: sender,
      Tags: [
        { name: 'Action', value: stake ? 'Stake-Notice' : 'Deposit-Notice' },
        { name: 'Quantity', value: quantity },
        { name: stake ? 'Stake' : 'Balance', value: ledger[sender] },
        ...msg.Tags.filter((t) => t.name.startsWith('X-')),
      ],
    };
    return { messages: [notice], output: { credited: sender, quantity, as: stake ? 'stake' : 'deposit' } };
  },

  'Debit-Notice': (state, msg) => {
    if (msg.From !== state.token) refuse(403, 'only the token process sends Debit-Notice');
    return { messages: [] };
  },

  Balance: (state, msg) => {
    const account = tagOf(msg, 'Target') ?? tagOf(msg, 'Recipient') ?? msg.From;
    const deposit = own(state.deposits, account) ?? '0';
    return {
      messages: [
        reply(msg, 'Balance-Response', [
          { name: 'Balance', value: deposit },
          { name: 'Earnings', value: own(state.earnings, account) ?? '0' },
          { name: 'Stake', value: own(state.stakes, account) ?? '0' },
          { name: 'Account', value: account },
        ], deposit),
      ],
    };
  },

  Withdraw: (state, msg) => {
    const deposit = big(state.deposits[msg.From]);
    const earned = big(state.earnings[msg.From]);
    const asked = tagOf(msg, 'Quantity');
    if (asked !== undefined && !AMOUNT.test(asked)) refuse(400, 'Quantity must be a whole number');
    const quantity = asked === undefined ? deposit + earned : BigInt(asked);
    if (quantity <= 0n) refuse(400, 'nothing to withdraw');
    if (quantity > deposit + earned) refuse(402, `only ${deposit + earned} can be withdrawn`);
    const fromDeposit = quantity < deposit ? quantity : deposit;
    state.deposits[msg.From] = (deposit - fromDeposit).toString();
    state.earnings[msg.From] = (earned - (quantity - fromDeposit)).toString();
    return { messages: [payOut(state, msg.From, quantity, 'Withdraw'), reply(msg, 'Withdraw-Response', [{ name: 'Quantity', value: quantity.toString() }])] };
  },

  // -- models --

  'Register-Model': (state, msg) => {
    if (msg.From !== state.owner) refuse(403, 'only the owner registers models');
    const id = tagOf(msg, 'Model') ?? '';
    const manifest = tagOf(msg, 'Manifest') ?? '';
    if (!HEX64.test(id)) refuse(400, 'Model must be a model id (64 hex characters)');
    if (!ID.test(manifest)) refuse(400, 'Manifest must be the id of the model\'s manifest item');
    let info: { name: string; contextLength: number; tokenizerHash: string };
    try {
      info = JSON.parse(host.model(JSON.stringify({ model: id, manifest }))) as typeof info;
    } catch (e) {
      return refuse(404, `model ${id} is not published with manifest ${manifest}: ${(e as Error).message}`);
    }
    const entry: ModelEntry = { id, manifest, name: info.name, contextLength: info.contextLength, tokenizerHash: info.tokenizerHash };
    const at = state.models.findIndex((m) => m.id === id);
    if (at >= 0) state.models[at] = entry;
    else state.models.push(entry);
    return { messages: [reply(msg, 'Register-Model-Response', [{ name: 'Model', value: id }], JSON.stringify(entry))] };
  },

  Models: (state, msg) => ({ messages: [reply(msg, 'Models-Response', [], JSON.stringify(state.models))] }),

  // -- nodes --

  'Register-Node': (state, msg) => {
    if (msg.From !== msg.Owner) refuse(403, 'a node registers itself, with its own key');
    const did = tagOf(msg, 'DID') ?? '';
    let address: string;
    try {
      address = host.didAddress(did);
    } catch (e) {
      return refuse(400, `DID: ${(e as Error).message}`);
    }
    if (address !== msg.From) refuse(403, 'the DID is not the key that signed this message');
    const models = (tagOf(msg, 'Models') ?? '').split(',').map((m) => m.trim()).filter((m) => m !== '');
    if (models.length === 0) refuse(400, 'Models must list at least one model id');
    for (const m of models) if (!state.models.some((known) => known.id === m)) refuse(404, `model ${m.slice(0, 64)} is not registered`);
    const capacityTag = tagOf(msg, 'Capacity') ?? '1';
    const capacity = /^[0-9]{1,2}$/.test(capacityTag) ? Number(capacityTag) : 0;
    if (capacity < 1 || capacity > 64) refuse(400, 'Capacity must be 1 to 64');
    const known = state.nodes.find((n) => n.address === address);
    if (known) {
      known.did = did;
      known.models = models;
      known.capacity = capacity;
      known.lastSeen = msg.Timestamp;
    } else {
      state.nodes.push({ address, did, models, capacity, reputation: 100, open: 0, completed: 0, expired: 0, lastSeen: msg.Timestamp });
    }
    return { messages: [reply(msg, 'Register-Node-Response', [{ name: 'Node', value: address }])] };
  },

  Heartbeat: (state, msg) => {
    const node = state.nodes.find((n) => n.address === msg.From);
    if (node) node.lastSeen = msg.Timestamp;
    return { messages: [] };
  },

  Unstake: (state, msg) => {
    const stake = big(state.stakes[msg.From]);
    if (stake === 0n) refuse(409, 'nothing is staked');
    const at = state.unstakeAt[msg.From];
    if (at === undefined) {
      state.unstakeAt[msg.From] = msg.Timestamp + state.config.cooldownMs;
      return { messages: [reply(msg, 'Unstake-Started', [{ name: 'Unstake-At', value: String(state.unstakeAt[msg.From]) }])] };
    }
    if (msg.Timestamp < at) refuse(409, `the stake is cooling down until ${at}`);
    const node = state.nodes.find((n) => n.address === msg.From);
    if (node && node.open > 0) refuse(409, `the node still holds ${node.open} leases`);
    state.stakes[msg.From] = '0';
    delete state.unstakeAt[msg.From];
    return { messages: [payOut(state, msg.From, stake, 'Unstake'), reply(msg, 'Unstake-Completed', [{ name: 'Quantity', value: stake.toString() }])] };
  },

  Nodes: (state, msg) => ({
    messages: [
      reply(msg, 'Nodes-Response', [], JSON.stringify(state.nodes.map((n) => ({ ...n, stake: state.stakes[n.address] ?? '0', active: isActive(state, n) })))),
    ],
  }),

  // -- requests --

  Infer: (state, msg, draws) => {
    const model = modelFor(state, tagOf(msg, 'Model'));
    if (utf8Length(msg.Data) > state.config.maxPromptBytes) refuse(413, `the prompt is over ${state.config.maxPromptBytes} bytes`);
    if (msg.Data === '') refuse(400, 'the prompt (Data) is empty');
    const options = parseOptions(tagOf(msg, 'X-Options'));
    const redundancyTag = tagOf(msg, 'Redundancy') ?? '1';
    const redundancy = /^[1-3]$/.test(redundancyTag) ? Number(redundancyTag) : refuse(400, 'Redundancy must be 1, 2 or 3');
    const nodesTag = tagOf(msg, 'Nodes');
    const nodes = nodesTag === undefined ? null : nodesTag.split(',').map((n) => n.trim());
    if (nodes && (nodes.length === 0 || nodes.some((n) => !ID.test(n)))) refuse(400, 'Nodes must be comma-separated addresses');
    const reference = tagOf(msg, 'X-Reference') ?? msg.Id;
    if (reference.length > 128) refuse(400, 'X-Reference is at most 128 characters');
    const key = `${msg.From} ${reference}`;
    if (own(state.references, key) !== undefined || own(state.tasks, msg.Id) !== undefined) refuse(409, `request ${reference.slice(0, 80)} was already made`);
    let job: { commitment: string; promptTokens: number; steps: number };
    try {
      job = JSON.parse(
        host.job(JSON.stringify({ model: model.id, manifest: model.manifest, prompt: msg.Data, maxTokens: options.max_tokens, temperature: options.temperature, topP: options.top_p, seed: options.seed })),
      ) as typeof job;
    } catch (e) {
      return refuse(400, (e as Error).message.replace(/^(Error: )?host\.job: /, ''));
    }
    const escrow = big(state.config.price) * BigInt(options.max_tokens) * BigInt(redundancy);
    const deposit = big(state.deposits[msg.From]);
    if (deposit < escrow) refuse(402, `the request needs ${escrow} in deposit, ${msg.From} has ${deposit}: deposit with a token Transfer (X-Action=Deposit)`);
    const task: Task = {
      id: msg.Id, requester: msg.From, reference, model: model.id, prompt: msg.Data, options, redundancy, nodes,
      commitment: job.commitment, promptTokens: job.promptTokens, steps: job.steps, escrow: escrow.toString(),
      status: 'assigned', pending: redundancy, waitingSince: msg.Timestamp, leases: [], results: [], createdAt: msg.Timestamp, endedAt: null,
    };
    // Busy nodes are fine (the task waits for a free one); no node serving the model is not.
    const serving = state.nodes.filter((n) => isActive(state, n) && n.models.includes(model.id) && (nodes === null || nodes.includes(n.address)));
    if (serving.length < redundancy) refuse(503, `fewer than ${redundancy} active nodes serve model ${model.id}`);
    state.deposits[msg.From] = (deposit - escrow).toString();
    state.tasks[task.id] = task;
    state.open.push(task.id);
    state.references[key] = task.id;
    const messages = assign(state, task, msg, draws);
    messages.push(reply(msg, 'Infer-Accepted', [{ name: 'Task', value: task.id }, { name: 'Escrow', value: task.escrow }]));
    return { messages, output: { task: task.id } };
  },

  Task: (state, msg) => {
    const id = tagOf(msg, 'Task') ?? own(state.references, `${msg.From} ${tagOf(msg, 'X-Reference') ?? ''}`);
    const task = id === undefined ? undefined : own(state.tasks, id);
    if (!task) return refuse(404, 'no such task');
    return { messages: [reply(msg, 'Task-Response', [{ name: 'Task', value: task.id }, { name: 'Status', value: task.status }], JSON.stringify(taskView(task)))] };
  },

  Tasks: (state, msg) => {
    const node = tagOf(msg, 'Node') ?? msg.From;
    const leased: unknown[] = [];
    for (const id of state.open) {
      const task = state.tasks[id];
      const lease = task.leases.find((l) => l.node === node && l.status === 'open');
      if (lease) leased.push({ ...assignmentView(task), leaseEnd: lease.end });
    }
    return { messages: [reply(msg, 'Tasks-Response', [{ name: 'Node', value: node }], JSON.stringify(leased))] };
  },

  'Submit-Result': (state, msg) => {
    const task = own(state.tasks, tagOf(msg, 'Task') ?? '');
    if (!task) return refuse(404, 'no such task');
    const mine = task.leases.filter((l) => l.node === msg.From);
    if (mine.length === 0) refuse(403, 'this node holds no lease on the task');
    const lease = mine.find((l) => l.status === 'open');
    if (!lease) return refuse(409, mine.some((l) => l.status === 'submitted') ? 'the result is already in' : 'the lease has expired');
    if (tagOf(msg, 'Job-Commitment') !== task.commitment) refuse(400, 'Job-Commitment is not the task\'s');
    const traceRoot = tagOf(msg, 'Trace-Root') ?? '';
    const trace = tagOf(msg, 'Trace') ?? '';
    if (!HEX64.test(traceRoot)) refuse(400, 'Trace-Root must be 64 hex characters');
    if (!ID.test(trace)) refuse(400, 'Trace must be the id of the stored trace item');
    let body: { tokens?: unknown };
    try {
      body = JSON.parse(msg.Data) as typeof body;
    } catch {
      return refuse(400, 'Data must be JSON {tokens}');
    }
    const tokens = body?.tokens;
    if (!Array.isArray(tokens) || !tokens.every((t) => Number.isInteger(t) && t >= 0)) return refuse(400, 'Data must be JSON {tokens}');
    const generated = tokens.length;
    if (generated > task.options.max_tokens || tagOf(msg, 'Tokens') !== String(generated)) refuse(400, `Tokens must count the ${generated} generated tokens, at most max_tokens`);
    // The text is the tokens' text: decoded here, never taken from the node.
    const model = state.models.find((m) => m.id === task.model)!;
    let text: string;
    try {
      text = host.decode(JSON.stringify({ model: model.id, manifest: model.manifest, prompt: task.prompt, tokens }));
    } catch (e) {
      return refuse(400, (e as Error).message.replace(/^(Error: )?host\.decode: /, ''));
    }

    const node = state.nodes.find((n) => n.address === msg.From)!;
    lease.status = 'submitted';
    node.open -= 1;
    node.completed += 1;
    node.reputation = Math.min(200, node.reputation + 1);
    const pay = big(state.config.price) * BigInt(generated);
    state.earnings[node.address] = add(state.earnings[node.address], pay);
    task.escrow = (big(task.escrow) - pay).toString();
    task.results.push({ node: node.address, message: msg.Id, traceRoot, trace, tokens: tokens as number[], text });
    const messages = [reply(msg, 'Submit-Result-Response', [{ name: 'Task', value: task.id }, { name: 'Paid', value: pay.toString() }])];
    if (task.results.length === task.redundancy) {
      const agree = task.results.every((r) => r.traceRoot === task.results[0].traceRoot);
      messages.push(...end(state, task, agree ? 'completed' : 'mismatch', msg.Timestamp));
    }
    return { messages, output: { task: task.id, status: task.status } };
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
    const v = raw[key] ?? fallback;
    return typeof v === 'number' && Number.isFinite(v) ? v : refuse(400, `${key} must be a number`);
  };
  const maxTokens = num('max_tokens', 128);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) refuse(400, 'max_tokens must be a whole number ≥ 1');
  const temperature = num('temperature', 0);
  if (temperature < 0 || temperature > 2) refuse(400, 'temperature must be in [0, 2]');
  const topP = num('top_p', 0.9);
  if (!(topP > 0 && topP <= 1)) refuse(400, 'top_p must be in (0, 1]');
  const seedRaw = raw.seed ?? 0;
  const seed = typeof seedRaw === 'number' && Number.isSafeInteger(seedRaw) && seedRaw >= 0 ? String(seedRaw) : typeof seedRaw === 'string' && /^(0|[1-9][0-9]{0,19})$/.test(seedRaw) ? seedRaw : '';
  if (seed === '' || BigInt(seed) >= 18446744073709551616n) refuse(400, 'seed must be an integer in [0, 2^64)');
  return { max_tokens: maxTokens, temperature, top_p: topP, seed };
}

function isActive(state: State, node: NodeEntry): boolean {
  return state.unstakeAt[node.address] === undefined && big(state.stakes[node.address]) >= big(state.config.minStake);
}

function eligible(state: State, task: Task): NodeEntry[] {
  return state.nodes.filter(
    (n) =>
      isActive(state, n) &&
      n.open < n.capacity &&
      n.models.includes(task.model) &&
      (task.nodes === null || task.nodes.includes(n.address)) &&
      !task.leases.some((l) => l.node === n.address),
  );
}

/** Draws nodes for the task's pending leases, weighted by stake × reputation. */
function assign(state: State, task: Task, msg: ProcessMessage, draws: { next: number }): OutboxMessage[] {
  const messages: OutboxMessage[] = [];
  while (task.pending > 0) {
    const candidates = eligible(state, task);
    if (candidates.length === 0) break;
    // + 1: with Min-Stake 0 an unstaked node may serve, and a zero total would divide by zero.
    const weights = candidates.map((n) => (big(state.stakes[n.address]) + 1n) * BigInt(n.reputation));
    const total = weights.reduce((a, b) => a + b, 0n);
    let r = draw(msg, draws.next++) % total;
    let chosen = candidates[candidates.length - 1];
    for (let i = 0; i < candidates.length; i++) {
      if (r < weights[i]) {
        chosen = candidates[i];
        break;
      }
      r -= weights[i];
    }
    const lease: Lease = { node: chosen.address, start: msg.Timestamp, end: msg.Timestamp + state.config.leaseMs, status: 'open' };
    task.leases.push(lease);
    task.pending -= 1;
    chosen.open += 1;
    messages.push({
      Target: chosen.address,
      Tags: [
        { name: 'Action', value: 'Task-Assigned' },
        { name: 'Task', value: task.id },
        { name: 'Model', value: task.model },
        { name: 'Lease-End', value: String(lease.end) },
        { name: 'Job-Commitment', value: task.commitment },
      ],
      Data: JSON.stringify({ ...assignmentView(task), leaseEnd: lease.end }),
    });
  }
  return messages;
}

/** Expires overdue leases (each counts against its node), then lets waiting tasks start. */
function sweep(state: State, msg: ProcessMessage, out: OutboxMessage[], draws: { next: number }): void {
  for (const id of state.open) {
    const task = state.tasks[id];
    for (const lease of task.leases) {
      if (lease.status !== 'open' || lease.end >= msg.Timestamp) continue;
      lease.status = 'expired';
      task.pending += 1;
      task.waitingSince = msg.Timestamp;
      const node = state.nodes.find((n) => n.address === lease.node)!;
      node.open -= 1;
      node.expired += 1;
      node.reputation = Math.max(1, node.reputation - 20);
    }
  }
  assignWaiting(state, msg, out, draws);
}

/**
 * Draws nodes for tasks waiting for one, oldest first. A task whose leases ran out Max-Attempts
 * times per node asked for, or that waited longer than Max-Wait-Ms, fails and its escrow goes back.
 */
function assignWaiting(state: State, msg: ProcessMessage, out: OutboxMessage[], draws: { next: number }): void {
  for (const id of [...state.open]) {
    const task = state.tasks[id];
    if (task.pending === 0) continue;
    const expired = task.leases.filter((l) => l.status === 'expired').length;
    const giveUp = expired >= state.config.maxAttempts * task.redundancy || msg.Timestamp > task.waitingSince + state.config.maxWaitMs;
    if (giveUp) out.push(...end(state, task, 'failed', msg.Timestamp, expired >= state.config.maxAttempts * task.redundancy ? `${expired} leases expired` : `no node took it within ${state.config.maxWaitMs} ms`));
    else out.push(...assign(state, task, msg, draws));
  }
}

/** Ends a task: the rest of its escrow goes back to the requester, who gets the Infer-Response. */
function end(state: State, task: Task, status: TaskStatus, now: number, why = ''): OutboxMessage[] {
  task.status = status;
  task.endedAt = now;
  for (const lease of task.leases) {
    if (lease.status !== 'open') continue;
    lease.status = 'cancelled';
    state.nodes.find((n) => n.address === lease.node)!.open -= 1;
  }
  state.deposits[task.requester] = add(state.deposits[task.requester], big(task.escrow));
  task.escrow = '0';
  state.open = state.open.filter((id) => id !== task.id);
  const view = taskView(task);
  const tags: Tag[] = [
    { name: 'Action', value: 'Infer-Response' },
    { name: 'Reference', value: task.id },
    { name: 'X-Reference', value: task.reference },
    { name: 'Task', value: task.id },
    { name: 'Status', value: status },
  ];
  if (status === 'failed') tags.push({ name: 'Code', value: '504' }, { name: 'Message', value: `no node finished the task: ${why}` });
  return [{ Target: task.requester, Tags: tags, Data: JSON.stringify(view) }];
}

function payOut(state: State, to: string, quantity: bigint, reason: string): OutboxMessage {
  return {
    Target: state.token,
    Tags: [
      { name: 'Action', value: 'Transfer' },
      { name: 'Recipient', value: to },
      { name: 'Quantity', value: quantity.toString() },
      { name: 'X-Reason', value: reason },
    ],
  };
}

/** What a node needs to run the task. */
function assignmentView(task: Task) {
  return { task: task.id, model: task.model, prompt: task.prompt, options: task.options, commitment: task.commitment, steps: task.steps };
}

/** The task as a requester reads it: the answer, its receipt, and everything that led to it. */
function taskView(task: Task) {
  const first = task.results[0];
  return {
    task: task.id,
    reference: task.reference,
    status: task.status,
    model: task.model,
    options: task.options,
    result: first ? first.text : null,
    tokens: first ? first.tokens : null,
    usage: { prompt_tokens: task.promptTokens, completion_tokens: first ? first.tokens.length : 0 },
    receipt: first ? { task: task.id, model: task.model, commitment: task.commitment, traceRoot: first.traceRoot, node: first.node, result: first.message, trace: first.trace } : null,
    results: task.results.map((r) => ({ node: r.node, traceRoot: r.traceRoot, trace: r.trace, result: r.message })),
    leases: task.leases,
    createdAt: task.createdAt,
    endedAt: task.endedAt,
  };
}
