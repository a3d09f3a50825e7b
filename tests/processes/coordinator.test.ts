// The coordinator process (src/processes/coordinator.ts) checked against docs/network.md, driven
// through the real QuickJS runtime with the real host extensions over a real embedded store that
// holds the real stories260K model. The token process is simulated: its Credit-Notices are messages
// the MU pushes with From-Process = the coordinator's Token.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import type { Evaluation, Extensions, OutboxMessage } from '../../src/ao/runtime.js';
import { loadModel } from '../../src/engine/index.js';
import { coordinatorExtensions } from '../../src/processes/host.js';
import { publishModel } from '../../src/store/models.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { generateWallet, walletAddress, walletDid, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { stories260K, tok512 } from '../helpers.js';
import type { State as CoordinatorState } from '../../src/processes/coordinator.js';
import { START_TIMESTAMP, openProcess, processSource, tagOf, tagsOf, type OpenProcess, type SendOptions } from './harness.js';

// The coordinator's state, as the process keeps it.
type CState = CoordinatorState;

// ---- identities ----

const id43 = (text: string): string => createHash('sha256').update(text).digest('base64url');
const TOKEN = id43('the token process');
const MU = id43('the MU wallet');
const OWNER = id43('the coordinator owner');
const ALICE = id43('alice');
const BOB = id43('bob');
const CAROL = id43('carol');
const SPAWN = { Token: TOKEN, 'Min-Stake': '100', 'Lease-Ms': '5000', 'Unstake-Cooldown-Ms': '10000' };
const T0 = START_TIMESTAMP;
const ROOT_A = 'a'.repeat(64);
const ROOT_B = 'b'.repeat(64);
const TRACE = id43('a stored trace item');
const PROMPT = 'Once upon a time';

interface Fixture {
  dir: string;
  store: Store;
  modelId: string;
  manifestId: string;
  tokenizerHash: string;
  ext: Extensions;
  wallets: Wallet[];
  /** The node wallets' AO addresses and did:keys, index for index. */
  addrs: string[];
  dids: string[];
}
let fx: Fixture;
let source = '';

before(async () => {
  source = await processSource('coordinator');
  const dir = mkdtempSync(join(tmpdir(), 'verity-coordinator-'));
  const store = openSqliteStore(dir);
  const publisher = await generateWallet('ed25519');
  const { modelId, manifestId } = await publishModel(store, walletSigner(publisher), loadModel(stories260K, { tokenizer: tok512 }), 'stories260K');
  const ext = coordinatorExtensions(store);
  const info = JSON.parse(await ext.model(JSON.stringify({ model: modelId, manifest: manifestId }))) as { tokenizerHash: string };
  const wallets = await Promise.all(Array.from({ length: 6 }, () => generateWallet('ed25519')));
  fx = { dir, store, modelId, manifestId, tokenizerHash: info.tokenizerHash, ext, wallets, addrs: wallets.map(walletAddress), dids: wallets.map(walletDid) };
});

after(async () => {
  await fx?.store.close();
  if (fx) rmSync(fx.dir, { recursive: true, force: true });
});

// ---- driving the process ----

type Sent = Evaluation & { id: string; timestamp: number };

class World {
  private count = 0;
  constructor(
    readonly p: OpenProcess,
    public now: number,
  ) {}

  static async open(spawn: Record<string, string> = {}, id?: string): Promise<World> {
    const p = await openProcess(source, { owner: OWNER, tags: { ...SPAWN, ...spawn }, extensions: fx.ext, ...(id ? { id } : {}) });
    assert.equal(p.boot.Error, undefined, p.boot.Error);
    return new World(p, T0);
  }

  state(): CState {
    return this.p.state() as CState;
  }

  snapshot(): CState {
    return structuredClone(this.state());
  }

  /** The next message id: deterministic for a given process id. */
  nextId(): string {
    return id43(`${this.p.id}:msg:${++this.count}`);
  }

  /** Sends at `timestamp` (default: 1 ms after the last message) and checks it was evaluated. */
  async send(m: Omit<SendOptions, 'timestamp'> & { timestamp?: number }): Promise<Sent> {
    const timestamp = m.timestamp ?? this.now + 1;
    this.now = Math.max(this.now, timestamp);
    const id = m.id ?? this.nextId();
    const r = await this.p.send({ ...m, id, timestamp });
    assert.equal(r.Error, undefined, `${JSON.stringify(m.tags)}: ${r.Error}`);
    return Object.assign(r, { id, timestamp });
  }

  /** A Credit-Notice from the token process, pushed by the MU. */
  credit(sender: string, quantity: string, purpose?: string): Promise<Sent> {
    return this.send({ from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Sender: sender, Quantity: quantity, ...(purpose ? { 'X-Action': purpose } : {}) } });
  }

  async deposit(who: string, quantity: string): Promise<void> {
    const r = await this.credit(who, quantity, 'Deposit');
    assert.deepEqual(r.Messages.map((m) => [m.Target, tagsOf(m).Action, tagsOf(m).Quantity, tagsOf(m).Balance]), [[who, 'Deposit-Notice', quantity, this.state().deposits[who]]]);
  }

  async stake(who: string, quantity: string): Promise<void> {
    const r = await this.credit(who, quantity, 'Stake');
    assert.deepEqual(r.Messages.map((m) => [m.Target, tagsOf(m).Action, tagsOf(m).Quantity, tagsOf(m).Stake]), [[who, 'Stake-Notice', quantity, this.state().stakes[who]]]);
  }

  async registerModel(): Promise<void> {
    const r = await this.send({ from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: fx.manifestId } });
    assert.equal(tagOf(r.Messages[0], 'Action'), 'Register-Model-Response');
  }

  async registerNode(i: number, capacity = 1, models = fx.modelId): Promise<Sent> {
    const r = await this.send({ from: fx.addrs[i], tags: { Action: 'Register-Node', DID: fx.dids[i], Models: models, Capacity: String(capacity) } });
    assert.equal(tagOf(r.Messages.at(-1)!, 'Action'), 'Register-Node-Response', JSON.stringify(r.Messages));
    return r;
  }

  infer(from: string, options: object | string | undefined, tags: Record<string, string> = {}, extra: Partial<SendOptions> = {}, prompt = PROMPT): Promise<Sent> {
    const opts: Record<string, string> = options === undefined ? {} : { 'X-Options': typeof options === 'string' ? options : JSON.stringify(options) };
    return this.send({ from, data: prompt, ...extra, tags: { Action: 'Infer', ...opts, ...tags } });
  }

  submit(
    node: string,
    task: string,
    o: { commitment?: string; root?: string; trace?: string; tokens?: number[]; text?: string; tokensTag?: string; data?: string; timestamp?: number } = {},
  ): Promise<Sent> {
    const tokens = o.tokens ?? [13, 42, 7];
    const commitment = o.commitment ?? this.state().tasks[task]?.commitment ?? '';
    return this.send({
      from: node,
      ...(o.timestamp === undefined ? {} : { timestamp: o.timestamp }),
      tags: { Action: 'Submit-Result', Task: task, 'Job-Commitment': commitment, 'Trace-Root': o.root ?? ROOT_A, Trace: o.trace ?? TRACE, Tokens: o.tokensTag ?? String(tokens.length) },
      data: o.data ?? JSON.stringify({ text: o.text ?? ' there was a cat', tokens }),
    });
  }

  async nodesList(): Promise<Record<string, unknown>[]> {
    const r = await this.send({ from: ALICE, tags: { Action: 'Nodes' } });
    assert.equal(tagOf(r.Messages[0], 'Action'), 'Nodes-Response');
    return JSON.parse(r.Messages[0].Data!) as Record<string, unknown>[];
  }
}

/** A world with the model registered, `nodes` nodes registered and staked, and deposits made. */
async function network(
  o: { nodes?: number; stake?: string | string[]; capacity?: number; deposits?: Record<string, string>; spawn?: Record<string, string>; id?: string } = {},
): Promise<World & { nodes: string[] }> {
  const w = await World.open(o.spawn, o.id);
  await w.registerModel();
  const n = o.nodes ?? 3;
  for (let i = 0; i < n; i++) {
    await w.registerNode(i, o.capacity ?? 1);
    const stake = Array.isArray(o.stake) ? o.stake[i] : (o.stake ?? '1000');
    if (stake !== '0') await w.stake(fx.addrs[i], stake);
  }
  for (const [who, q] of Object.entries(o.deposits ?? { [ALICE]: '1000' })) await w.deposit(who, q);
  return Object.assign(w, { nodes: fx.addrs.slice(0, n) });
}

const actionOf = (m: OutboxMessage): string | undefined => tagOf(m, 'Action');
const withAction = (r: Evaluation, action: string): OutboxMessage[] => r.Messages.filter((m) => actionOf(m) === action);
const one = (r: Evaluation, action: string): OutboxMessage => {
  const found = withAction(r, action);
  assert.equal(found.length, 1, `exactly one ${action} in ${JSON.stringify(r.Messages.map((m) => [m.Target, actionOf(m)]))}`);
  return found[0];
};

/**
 * Sends `m` and checks it is refused as docs/network.md says: one reply to the sender with
 * `<Action>-Error` (`Infer-Response` for Infer), Code, a one-line Message, Reference = the message
 * id, the X-Reference echoed, and the state exactly as it was.
 */
async function refused(w: World, m: Omit<SendOptions, 'timestamp'> & { timestamp?: number }, code: number, label = JSON.stringify(m.tags)): Promise<OutboxMessage> {
  const before = w.snapshot();
  const r = await w.send(m);
  assert.equal(r.Messages.length, 1, `${label}: ${JSON.stringify(r.Messages)}`);
  const [reply] = r.Messages;
  const tags = tagsOf(reply);
  const action = tagOf({ Tags: Array.isArray(m.tags) ? m.tags : Object.entries(m.tags).map(([name, value]) => ({ name, value })) }, 'Action');
  const xref = Array.isArray(m.tags) ? undefined : m.tags['X-Reference'];
  assert.equal(reply.Target, m.from, label);
  assert.equal(tags.Action, action === 'Infer' ? 'Infer-Response' : `${action}-Error`, label);
  assert.equal(tags.Code, String(code), `${label}: ${tags.Message}`);
  assert.ok(tags.Message && !tags.Message.includes('\n'), `${label}: a one-line Message`);
  assert.equal(tags.Reference, r.id, label);
  assert.equal(tags['X-Reference'], xref, label);
  if (action === 'Infer') assert.equal(tags.Status, 'rejected', label);
  assert.deepEqual(w.state(), before, `${label}: the state is unchanged`);
  return reply;
}

const sum = (record: Record<string, string>): bigint => Object.values(record).reduce((a, v) => a + BigInt(v), 0n);

// ---- 1. models ----

test('Register-Model: owner only, a 64-hex id, published; Models lists {id, name, contextLength, tokenizerHash}', async () => {
  const w = await World.open();
  await refused(w, { from: ALICE, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: fx.manifestId, 'X-Reference': 'm-1' } }, 403);
  // An MU pushing for another process is not the owner either.
  await refused(w, { from: ALICE, owner: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: fx.manifestId } }, 403);
  for (const bad of ['', 'abc', fx.modelId.toUpperCase(), fx.modelId.slice(1), `${fx.modelId}0`, 'g'.repeat(64)]) {
    await refused(w, { from: OWNER, tags: { Action: 'Register-Model', Model: bad, Manifest: fx.manifestId } }, 400, `Model=${bad}`);
  }
  await refused(w, { from: OWNER, tags: { Action: 'Register-Model' } }, 400, 'no Model tag');
  await refused(w, { from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId } }, 400, 'no Manifest tag');
  await refused(w, { from: OWNER, tags: { Action: 'Register-Model', Model: '0'.repeat(64), Manifest: fx.manifestId, 'X-Reference': 'm-2' } }, 404);
  await refused(w, { from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId.replace(/^./, (c) => (c === 'f' ? 'e' : 'f')), Manifest: fx.manifestId } }, 404, 'one hex digit off');
  await refused(w, { from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: 'A'.repeat(43) } }, 404, 'an unknown manifest');

  const entry = { id: fx.modelId, manifest: fx.manifestId, name: 'stories260K', contextLength: 512, tokenizerHash: fx.tokenizerHash };
  assert.match(fx.tokenizerHash, /^[0-9a-f]{64}$/);
  const r = await w.send({ from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: fx.manifestId, 'X-Reference': 'm-3' } });
  assert.equal(r.Messages.length, 1);
  assert.equal(r.Messages[0].Target, OWNER);
  assert.deepEqual(tagsOf(r.Messages[0]), { Action: 'Register-Model-Response', Reference: r.id, 'X-Reference': 'm-3', Model: fx.modelId });
  assert.deepEqual(JSON.parse(r.Messages[0].Data!), entry);
  assert.deepEqual(w.state().models, [entry]);

  // Registering again keeps one entry.
  await w.registerModel();
  const list = await w.send({ from: BOB, tags: { Action: 'Models', 'X-Reference': 'l' } });
  assert.deepEqual(tagsOf(list.Messages[0]), { Action: 'Models-Response', Reference: list.id, 'X-Reference': 'l' });
  assert.deepEqual(JSON.parse(list.Messages[0].Data!), [entry]);
});

// ---- 2. nodes and stakes ----

test('Register-Node: the signer\'s own did:key, registered models, Capacity 1-64; registering again updates; stakes come only from the token', async () => {
  const w = await World.open();
  await w.registerModel();
  const [a, b] = fx.addrs;
  const base = { Action: 'Register-Node', DID: fx.dids[0], Models: fx.modelId, Capacity: '2' };
  await refused(w, { from: a, tags: { ...base, DID: fx.dids[1], 'X-Reference': 'n-1' } }, 403, 'another wallet\'s DID');
  await refused(w, { from: b, tags: base }, 403, 'signed by the wallet of another DID');
  await refused(w, { from: a, owner: MU, tags: base }, 403, 'pushed by an MU, not signed by the node');
  for (const did of ['', 'garbage', 'did:key:z', 'did:key:zzzzzzzz', `did:key:z${'1'.repeat(40)}`, fx.dids[0].replace('did:key:', 'did:web:'), `${fx.dids[0]}x`]) {
    await refused(w, { from: a, tags: { ...base, DID: did } }, 400, `DID=${did}`);
  }
  await refused(w, { from: a, tags: { Action: 'Register-Node', Models: fx.modelId } }, 400, 'no DID');
  await refused(w, { from: a, tags: { ...base, Models: 'f'.repeat(64) } }, 404, 'unregistered model');
  await refused(w, { from: a, tags: { ...base, Models: `${fx.modelId},${'f'.repeat(64)}` } }, 404, 'one unregistered model');
  for (const capacity of ['0', '65', '100', '-1', '1.5', 'x', '', ' 2']) {
    await refused(w, { from: a, tags: { ...base, Capacity: capacity } }, 400, `Capacity=${capacity}`);
  }
  assert.deepEqual(w.state().nodes, []);

  const r = await w.send({ from: a, tags: { ...base, 'X-Reference': 'n-2' } });
  assert.deepEqual(r.Messages.map((m) => m.Target), [a]);
  assert.deepEqual(tagsOf(r.Messages[0]), { Action: 'Register-Node-Response', Reference: r.id, 'X-Reference': 'n-2', Node: a });
  const view = (await w.nodesList())[0];
  assert.deepEqual(
    { address: view.address, did: view.did, models: view.models, capacity: view.capacity, stake: view.stake, reputation: view.reputation, active: view.active, completed: view.completed, expired: view.expired },
    { address: a, did: fx.dids[0], models: [fx.modelId], capacity: 2, stake: '0', reputation: 100, active: false, completed: 0, expired: 0 },
  );

  // Again: capacity 64 (the top of the range), models updated in place, still one node.
  await w.send({ from: a, tags: { ...base, Capacity: '64' } });
  assert.equal(w.state().nodes.length, 1);
  assert.equal(w.state().nodes[0].capacity, 64);

  // A stake is a Credit-Notice with X-Action=Stake from the Token process.
  await w.stake(a, '99');
  assert.equal((await w.nodesList())[0].active, false, 'below Min-Stake');
  await w.stake(a, '51');
  assert.equal(w.state().stakes[a], '150');
  assert.equal(w.state().deposits[a], undefined, 'a stake is not a deposit');
  const listed = (await w.nodesList())[0];
  assert.equal(listed.stake, '150');
  assert.equal(listed.active, true);

  // Anyone else's Credit-Notice is refused, signed or pushed.
  for (const [from, owner] of [[ALICE, ALICE], [ALICE, MU], [OWNER, OWNER], [a, a]]) {
    await refused(w, { from, owner, tags: { Action: 'Credit-Notice', Sender: a, Quantity: '1000', 'X-Action': 'Stake', 'X-Reference': 'forged' } }, 403, `Credit-Notice from ${from}`);
    await refused(w, { from, owner, tags: { Action: 'Credit-Notice', Sender: from, Quantity: '1000', 'X-Action': 'Deposit' } }, 403, `deposit from ${from}`);
  }
  assert.equal(w.state().stakes[a], '150');
  const bal = await w.send({ from: a, tags: { Action: 'Balance' } });
  assert.equal(tagOf(bal.Messages[0], 'Stake'), '150');
});

// ---- 3. deposits, balances, withdrawals ----

test('Deposit credits the sender of the Credit-Notice; Balance answers; Withdraw pays out with a token Transfer', async () => {
  const w = await World.open();
  await w.deposit(ALICE, '500');
  await w.deposit(ALICE, '25');
  assert.equal(w.state().deposits[ALICE], '525');
  // Malformed notices from the token are refused without crediting.
  await refused(w, { from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Sender: ALICE, Quantity: '-5', 'X-Action': 'Deposit' } }, 400, 'negative');
  await refused(w, { from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Sender: ALICE, Quantity: '01', 'X-Action': 'Deposit' } }, 400, 'leading zero');
  await refused(w, { from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Quantity: '5', 'X-Action': 'Deposit' } }, 400, 'no Sender');

  const self = await w.send({ from: ALICE, tags: { Action: 'Balance', 'X-Reference': 'b-1' } });
  assert.equal(self.Messages.length, 1);
  assert.equal(self.Messages[0].Target, ALICE);
  assert.deepEqual(tagsOf(self.Messages[0]), { Action: 'Balance-Response', Reference: self.id, 'X-Reference': 'b-1', Balance: '525', Earnings: '0', Stake: '0', Account: ALICE });
  assert.equal(self.Messages[0].Data, '525');
  const other = await w.send({ from: ALICE, tags: { Action: 'Balance', Target: BOB } });
  assert.deepEqual(tagsOf(other.Messages[0]), { Action: 'Balance-Response', Reference: other.id, Balance: '0', Earnings: '0', Stake: '0', Account: BOB });
  const recipient = await w.send({ from: BOB, tags: { Action: 'Balance', Recipient: ALICE } });
  assert.equal(tagOf(recipient.Messages[0], 'Account'), ALICE);
  assert.equal(tagOf(recipient.Messages[0], 'Balance'), '525');

  // Partial.
  const part = await w.send({ from: ALICE, tags: { Action: 'Withdraw', Quantity: '200', 'X-Reference': 'w-1' } });
  const transfer = one(part, 'Transfer');
  assert.equal(transfer.Target, TOKEN);
  assert.equal(tagOf(transfer, 'Recipient'), ALICE);
  assert.equal(tagOf(transfer, 'Quantity'), '200');
  const ok = one(part, 'Withdraw-Response');
  assert.equal(ok.Target, ALICE);
  assert.equal(tagOf(ok, 'Quantity'), '200');
  assert.equal(tagOf(ok, 'X-Reference'), 'w-1');
  assert.equal(tagOf(ok, 'Reference'), part.id);
  assert.equal(part.Messages.length, 2);
  assert.equal(w.state().deposits[ALICE], '325');

  // Too much, malformed, nothing at all: refused, nothing paid.
  await refused(w, { from: ALICE, tags: { Action: 'Withdraw', Quantity: '326', 'X-Reference': 'w-2' } }, 402);
  for (const q of ['-1', '1.5', '01', 'all', '', '1e3']) await refused(w, { from: ALICE, tags: { Action: 'Withdraw', Quantity: q } }, 400, `Quantity=${q}`);
  await refused(w, { from: BOB, tags: { Action: 'Withdraw', Quantity: '1' } }, 402, 'BOB has nothing');

  // All (no Quantity).
  const all = await w.send({ from: ALICE, tags: { Action: 'Withdraw' } });
  assert.equal(tagOf(one(all, 'Transfer'), 'Quantity'), '325');
  assert.equal(tagOf(one(all, 'Withdraw-Response'), 'Quantity'), '325');
  assert.equal(BigInt(w.state().deposits[ALICE] ?? '0'), 0n);
  // With nothing left, a withdrawal of everything is a refusal, not a Transfer of 0.
  const before = w.snapshot();
  const empty = await w.send({ from: ALICE, tags: { Action: 'Withdraw' } });
  assert.equal(empty.Messages.length, 1);
  assert.equal(actionOf(empty.Messages[0]), 'Withdraw-Error');
  assert.ok(['400', '402'].includes(tagOf(empty.Messages[0], 'Code')!));
  assert.deepEqual(w.state(), before);
});

// ---- 4. the happy path ----

test('Infer → Task-Assigned with the host.job commitment → Submit-Result → Infer-Response with the receipt; money moves as escrow, pay, refund', async () => {
  const w = await network({ spawn: { 'Price-Per-Token': '3' } });
  const options = { max_tokens: 20, temperature: 0, seed: 7 };
  const r = await w.infer(ALICE, options, { 'X-Reference': 'req-1' });
  const task = r.id;
  assert.equal(r.Messages.length, 2, JSON.stringify(r.Messages));
  const assigned = one(r, 'Task-Assigned');
  const node = assigned.Target;
  assert.ok(w.nodes.includes(node));
  const job = JSON.parse(await fx.ext.job(JSON.stringify({ model: fx.modelId, manifest: fx.manifestId, prompt: PROMPT, maxTokens: 20, temperature: 0, topP: 0.9, seed: '7' }))) as {
    commitment: string;
    promptTokens: number;
    steps: number;
  };
  assert.match(job.commitment, /^[0-9a-f]{64}$/);
  assert.equal(job.steps, job.promptTokens + 20);
  const leaseEnd = r.timestamp + 5000;
  assert.deepEqual(tagsOf(assigned), { Action: 'Task-Assigned', Task: task, Model: fx.modelId, 'Lease-End': String(leaseEnd), 'Job-Commitment': job.commitment });
  const data = JSON.parse(assigned.Data!) as Record<string, unknown>;
  assert.equal(data.task, task);
  assert.equal(data.model, fx.modelId);
  assert.equal(data.prompt, PROMPT);
  assert.equal(data.commitment, job.commitment);
  assert.equal(data.steps, job.steps);
  assert.equal(data.leaseEnd, leaseEnd);
  assert.deepEqual(data.options, { max_tokens: 20, temperature: 0, top_p: 0.9, seed: '7' });

  const accepted = one(r, 'Infer-Accepted');
  assert.equal(accepted.Target, ALICE);
  assert.equal(tagOf(accepted, 'Task'), task);
  assert.equal(tagOf(accepted, 'X-Reference'), 'req-1');
  assert.equal(tagOf(accepted, 'Reference'), task);

  const s = w.state();
  assert.equal(s.tasks[task].escrow, '60', 'price 3 × max_tokens 20');
  assert.equal(s.deposits[ALICE], '940');
  assert.deepEqual(s.open, [task]);
  assert.equal(s.nodes.find((n) => n.address === node)!.open, 1);

  // The node sees its lease; the requester finds the task by X-Reference.
  const leases = await w.send({ from: node, tags: { Action: 'Tasks' } });
  const listed = JSON.parse(leases.Messages[0].Data!) as { task: string; commitment: string; leaseEnd: number }[];
  assert.deepEqual(listed.map((l) => [l.task, l.commitment, l.leaseEnd]), [[task, job.commitment, leaseEnd]]);
  const other = w.nodes.find((n) => n !== node)!;
  assert.deepEqual(JSON.parse((await w.send({ from: other, tags: { Action: 'Tasks' } })).Messages[0].Data!), []);
  const byRef = await w.send({ from: ALICE, tags: { Action: 'Task', 'X-Reference': 'req-1' } });
  assert.equal(tagOf(byRef.Messages[0], 'Action'), 'Task-Response');
  assert.equal(tagOf(byRef.Messages[0], 'Status'), 'assigned');
  assert.equal((JSON.parse(byRef.Messages[0].Data!) as { task: string }).task, task);

  // The result: 5 tokens generated.
  const tokens = [35, 260, 310, 41, 13];
  // The node claims some text; the coordinator answers with the tokens' own text.
  const result = await w.submit(node, task, { commitment: job.commitment, root: ROOT_A, tokens, text: 'anything a node likes' });
  assert.equal(result.Messages.length, 2, JSON.stringify(result.Messages));
  const ack = one(result, 'Submit-Result-Response');
  assert.equal(ack.Target, node);
  assert.equal(tagOf(ack, 'Task'), task);
  assert.equal(tagOf(ack, 'Reference'), result.id);
  const response = one(result, 'Infer-Response');
  assert.equal(response.Target, ALICE);
  const rt = tagsOf(response);
  assert.equal(rt['X-Reference'], 'req-1');
  assert.equal(rt.Task, task);
  assert.equal(rt.Status, 'completed');
  assert.equal(rt.Code, undefined);
  const body = JSON.parse(response.Data!) as Record<string, unknown>;
  const decoded = await fx.ext.decode(JSON.stringify({ model: fx.modelId, manifest: fx.manifestId, prompt: PROMPT, tokens }));
  assert.notEqual(decoded, 'anything a node likes');
  assert.equal(body.result, decoded);
  assert.equal(body.status, 'completed');
  assert.deepEqual(body.usage, { prompt_tokens: job.promptTokens, completion_tokens: 5 });
  assert.deepEqual(body.receipt, { task, model: fx.modelId, commitment: job.commitment, traceRoot: ROOT_A, node, result: result.id, trace: TRACE });

  const end = w.state();
  assert.equal(end.earnings[node], '15', 'price 3 × 5 generated tokens');
  assert.equal(end.deposits[ALICE], '985', 'the rest of the escrow is back');
  assert.equal(end.tasks[task].escrow, '0');
  assert.equal(end.tasks[task].status, 'completed');
  assert.deepEqual(end.open, []);
  const n = end.nodes.find((x) => x.address === node)!;
  assert.deepEqual([n.open, n.completed, n.reputation, n.expired], [0, 1, 101, 0]);
  const nb = await w.send({ from: node, tags: { Action: 'Balance' } });
  assert.deepEqual([tagOf(nb.Messages[0], 'Balance'), tagOf(nb.Messages[0], 'Earnings'), tagOf(nb.Messages[0], 'Stake')], ['0', '15', '1000']);
  const done = await w.send({ from: BOB, tags: { Action: 'Task', Task: task } });
  assert.equal(tagOf(done.Messages[0], 'Status'), 'completed');

  // Withdraw pays out of deposit + earnings (the deposit first) with a token Transfer; the stake stays.
  await w.deposit(node, '5');
  await refused(w, { from: node, tags: { Action: 'Withdraw', Quantity: '21' } }, 402, 'more than deposit 5 + earnings 15');
  const part = await w.send({ from: node, tags: { Action: 'Withdraw', Quantity: '12' } });
  assert.equal(tagOf(one(part, 'Transfer'), 'Quantity'), '12');
  assert.equal(BigInt(w.state().deposits[node]) + BigInt(w.state().earnings[node]), 8n);
  const pay = await w.send({ from: node, tags: { Action: 'Withdraw' } });
  assert.equal(tagOf(one(pay, 'Transfer'), 'Quantity'), '8');
  assert.equal(tagOf(one(pay, 'Transfer'), 'Recipient'), node);
  assert.equal(one(pay, 'Transfer').Target, TOKEN);
  assert.equal(BigInt(w.state().earnings[node]), 0n);
  assert.equal(BigInt(w.state().deposits[node]), 0n);
  assert.equal(w.state().stakes[node], '1000');
});

// ---- 5. refusals ----

test('Infer refusals change nothing: unknown model 404, unfunded 402, malformed options 400, oversized prompt 413, beyond the context 400, duplicate X-Reference 409', async () => {
  const w = await network({ spawn: { 'Max-Prompt-Bytes': '16' }, deposits: { [ALICE]: '1000', [CAROL]: '10' } });
  const infer = (from: string, options: object | string | undefined, tags: Record<string, string> = {}, prompt = 'Hi') => ({
    from,
    data: prompt,
    tags: { Action: 'Infer', ...(options === undefined ? {} : { 'X-Options': typeof options === 'string' ? options : JSON.stringify(options) }), ...tags },
  });
  await refused(w, infer(ALICE, { max_tokens: 5 }, { Model: 'f'.repeat(64), 'X-Reference': 'r-404' }), 404, 'unknown model');
  await refused(w, infer(ALICE, { max_tokens: 5 }, { Model: 'nonsense' }), 404, 'a Model that is no id');
  await refused(w, infer(BOB, { max_tokens: 5 }, { 'X-Reference': 'r-402' }), 402, 'no deposit');
  await refused(w, infer(CAROL, { max_tokens: 11 }), 402, 'deposit 10 < escrow 11');
  await refused(w, infer(CAROL, { max_tokens: 4 }, { Redundancy: '3' }), 402, 'deposit 10 < escrow 4 × 3');

  const bad: [string, string][] = [
    ['non-JSON', '{max_tokens: 5}'],
    ['JSON that is no object', '[5]'],
    ['null', 'null'],
    ['max_tokens 0', '{"max_tokens":0}'],
    ['max_tokens 1.5', '{"max_tokens":1.5}'],
    ['max_tokens "10"', '{"max_tokens":"10"}'],
    ['max_tokens -3', '{"max_tokens":-3}'],
    ['temperature -1', '{"max_tokens":5,"temperature":-1}'],
    ['temperature 3', '{"max_tokens":5,"temperature":3}'],
    ['temperature "0.5"', '{"max_tokens":5,"temperature":"0.5"}'],
    ['top_p 0', '{"max_tokens":5,"top_p":0}'],
    ['top_p 1.5', '{"max_tokens":5,"top_p":1.5}'],
    ['top_p -0.1', '{"max_tokens":5,"top_p":-0.1}'],
    ['seed -1', '{"max_tokens":5,"seed":-1}'],
    ['seed 2^64', '{"max_tokens":5,"seed":18446744073709551616}'],
    ['seed "2^64"', '{"max_tokens":5,"seed":"18446744073709551616"}'],
    ['seed "x"', '{"max_tokens":5,"seed":"x"}'],
    ['seed 1.5', '{"max_tokens":5,"seed":1.5}'],
  ];
  for (const [label, options] of bad) await refused(w, infer(ALICE, options, { 'X-Reference': `bad-${label}` }), 400, label);
  for (const red of ['0', '4', '01', 'two', '']) await refused(w, infer(ALICE, { max_tokens: 5 }, { Redundancy: red }), 400, `Redundancy=${red}`);
  await refused(w, infer(ALICE, { max_tokens: 5 }, { Nodes: 'not-an-address' }), 400, 'Nodes malformed');

  // The boundaries accepted (dry runs keep nothing).
  const accepts = async (m: ReturnType<typeof infer>, label: string): Promise<void> => {
    const r = await w.p.dryRun({ ...m, timestamp: w.now + 1 });
    assert.equal(r.Error, undefined, label);
    assert.equal(withAction(r, 'Infer-Accepted').length, 1, `${label}: ${JSON.stringify(r.Messages)}`);
  };
  await accepts(infer(ALICE, '{"max_tokens":5,"temperature":2,"top_p":1,"seed":"18446744073709551615"}'), 'the top of each range');
  await accepts(infer(ALICE, '{"max_tokens":5,"temperature":0,"top_p":0.0001,"seed":0}'), 'the bottom of each range');

  // Max-Prompt-Bytes counts UTF-8 bytes: "€" is 3 bytes (1 UTF-16 unit), "😀" 4 bytes (2 units).
  await accepts(infer(ALICE, { max_tokens: 5 }, {}, '€€€€€a'), '16 bytes');
  await refused(w, infer(ALICE, { max_tokens: 5 }, { 'X-Reference': 'big' }, '€€€€€€'), 413, '6 × € = 18 bytes in 6 units');
  await accepts(infer(ALICE, { max_tokens: 5 }, {}, '😀😀😀😀'), '16 bytes of emoji');
  await refused(w, infer(ALICE, { max_tokens: 5 }, {}, '😀😀😀😀a'), 413, '17 bytes in 9 units');
  await refused(w, infer(ALICE, { max_tokens: 5 }, {}, 'x'.repeat(17)), 413, '17 ASCII bytes');

  // The context is 512 positions, the prompt's tokens (BOS included) and max_tokens together.
  const prompt = 'The cat';
  const { promptTokens } = JSON.parse(await fx.ext.job(JSON.stringify({ model: fx.modelId, manifest: fx.manifestId, prompt, maxTokens: 1, temperature: 0, topP: 0.9, seed: '0' }))) as { promptTokens: number };
  assert.ok(promptTokens >= 3, 'BOS + at least two tokens');
  await accepts(infer(ALICE, { max_tokens: 512 - promptTokens }, {}, prompt), 'exactly the context');
  await refused(w, infer(ALICE, { max_tokens: 513 - promptTokens }, {}, prompt), 400, 'one past the context');
  await refused(w, infer(ALICE, { max_tokens: 512 }, { 'X-Reference': 'ctx' }, prompt), 400, 'max_tokens = the context');

  // A refused request does not use up its X-Reference; an accepted one does.
  await refused(w, infer(CAROL, { max_tokens: 11 }, { 'X-Reference': 'again' }), 402, 'unfunded first');
  await w.deposit(CAROL, '1');
  const first = await w.send(infer(CAROL, { max_tokens: 11 }, { 'X-Reference': 'again' }));
  assert.equal(withAction(first, 'Infer-Accepted').length, 1);
  await w.deposit(CAROL, '100');
  await refused(w, infer(CAROL, { max_tokens: 1 }, { 'X-Reference': 'again' }), 409, 'duplicate X-Reference');
  // The same X-Reference from another requester is another request.
  const alices = await w.send(infer(ALICE, { max_tokens: 1 }, { 'X-Reference': 'again' }));
  assert.equal(withAction(alices, 'Infer-Accepted').length, 1);
  // The Infer message id is the default X-Reference and the task id: the same id again is a replay.
  await refused(w, { ...infer(ALICE, { max_tokens: 1 }), id: first.id }, 409, 'the same message id');
});

test('Submit-Result refusals change nothing: not the leaseholder 403, wrong commitment or malformed 400, replay 409, unknown task 404', async () => {
  const w = await network({ nodes: 3 });
  const r = await w.infer(ALICE, { max_tokens: 8, seed: 3 });
  const task = r.id;
  const node = one(r, 'Task-Assigned').Target;
  const others = w.nodes.filter((n) => n !== node);
  const commitment = w.state().tasks[task].commitment;

  await refused(w, { from: others[0], tags: { Action: 'Submit-Result', Task: task, 'Job-Commitment': commitment, 'Trace-Root': ROOT_A, Trace: TRACE, Tokens: '1', 'X-Reference': 's' }, data: '{"text":"a","tokens":[1]}' }, 403, 'a registered node without the lease');
  await refused(w, { from: ALICE, tags: { Action: 'Submit-Result', Task: task, 'Job-Commitment': commitment, 'Trace-Root': ROOT_A, Trace: TRACE, Tokens: '1' }, data: '{"text":"a","tokens":[1]}' }, 403, 'the requester');
  await refused(w, { from: node, tags: { Action: 'Submit-Result', Task: id43('no task'), 'Job-Commitment': commitment, 'Trace-Root': ROOT_A, Trace: TRACE, Tokens: '1' }, data: '{"text":"a","tokens":[1]}' }, 404, 'unknown task');

  const submitTags = { Action: 'Submit-Result', Task: task, 'Job-Commitment': commitment, 'Trace-Root': ROOT_A, Trace: TRACE, Tokens: '2' };
  const good = JSON.stringify({ text: 'ab', tokens: [1, 2] });
  const malformed: [string, Record<string, string>, string][] = [
    ['another commitment', { ...submitTags, 'Job-Commitment': 'c'.repeat(64) }, good],
    ['no commitment', { ...submitTags, 'Job-Commitment': '' }, good],
    ['Trace-Root not hex', { ...submitTags, 'Trace-Root': 'z'.repeat(64) }, good],
    ['Trace-Root short', { ...submitTags, 'Trace-Root': 'a'.repeat(63) }, good],
    ['Trace no id', { ...submitTags, Trace: 'short' }, good],
    ['Tokens miscounted', { ...submitTags, Tokens: '3' }, good],
    ['Data not JSON', submitTags, 'ab'],
    ['tokens not ids', submitTags, JSON.stringify({ text: 'ab', tokens: [1, -2] })],
    ['a token outside the vocabulary', submitTags, JSON.stringify({ tokens: [1, 100000] })],
    ['more than max_tokens', { ...submitTags, Tokens: '9' }, JSON.stringify({ text: 'x', tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9] })],
  ];
  for (const [label, tags, data] of malformed) await refused(w, { from: node, tags, data }, 400, label);

  const ok = await w.send({ from: node, tags: submitTags, data: good });
  assert.equal(withAction(ok, 'Infer-Response').length, 1);
  await refused(w, { from: node, tags: { ...submitTags, 'X-Reference': 'replay' }, data: good }, 409, 'a second result');
  await refused(w, { from: node, tags: submitTags, data: good, id: ok.id }, 409, 'the same message replayed');
  await refused(w, { from: others[0], tags: submitTags, data: good }, 403, 'still not the leaseholder');
});

test('a node staked below Min-Stake is never assigned; only such nodes → 503', async () => {
  const w = await network({ nodes: 3, stake: ['100', '99', '99'], capacity: 64, deposits: { [ALICE]: '100000' } });
  const [good, low1, low2] = w.nodes;
  for (let i = 0; i < 12; i++) {
    const r = await w.infer(ALICE, { max_tokens: 1 }, {}, { hashChain: id43(`chain ${i}`) });
    assert.equal(one(r, 'Task-Assigned').Target, good, `draw ${i}`);
  }
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Nodes: `${low1},${low2}`, 'X-Reference': 'low' } }, 503, 'only under-staked nodes');
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Redundancy: '2' } }, 503, 'redundancy 2 with one staked node');
  const unregistered = await World.open();
  await unregistered.registerModel();
  await unregistered.deposit(ALICE, '100');
  await refused(unregistered, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}' } }, 503, 'no node at all');
});

// ---- 6. leases ----

test('an expired lease costs the node 20 reputation and is drawn again elsewhere; its late result is 409; after Max-Attempts the task fails 504 and the escrow returns', async () => {
  const w = await network({ nodes: 4, spawn: { 'Max-Attempts': '3' } });
  const r = await w.infer(ALICE, { max_tokens: 10 }, { 'X-Reference': 'slow' });
  const task = r.id;
  const first = one(r, 'Task-Assigned').Target;
  assert.equal(w.state().deposits[ALICE], '990');
  const leaseEnd = r.timestamp + 5000;

  // At Lease-End the lease still holds.
  const at = await w.send({ from: ALICE, tags: { Action: 'Heartbeat' }, timestamp: leaseEnd });
  assert.deepEqual(at.Messages, []);
  assert.equal(w.state().tasks[task].leases[0].status, 'open');

  // Past it, the next message (the late result itself) expires it and draws another node.
  const late = await w.submit(first, task, { timestamp: leaseEnd + 1 });
  const again = one(late, 'Task-Assigned');
  assert.notEqual(again.Target, first);
  assert.equal(tagOf(again, 'Lease-End'), String(leaseEnd + 1 + 5000));
  assert.equal(tagOf(again, 'Task'), task);
  const refusal = one(late, 'Submit-Result-Error');
  assert.equal(tagOf(refusal, 'Code'), '409');
  assert.equal(late.Messages.length, 2);
  let s = w.state();
  const firstNode = s.nodes.find((n) => n.address === first)!;
  assert.deepEqual([firstNode.reputation, firstNode.expired, firstNode.open], [80, 1, 0]);
  assert.deepEqual(s.tasks[task].leases.map((l) => [l.node, l.status]), [[first, 'expired'], [again.Target, 'open']]);
  assert.equal(s.tasks[task].escrow, '10');

  // And again, to a third node, never one that held a lease on the task.
  const second = again.Target;
  await refused(w, { from: first, tags: { Action: 'Submit-Result', Task: task, 'Job-Commitment': s.tasks[task].commitment, 'Trace-Root': ROOT_A, Trace: TRACE, Tokens: '1' }, data: '{"text":"a","tokens":[1]}' }, 409, 'the expired node again');
  const beat2 = await w.send({ from: second, tags: { Action: 'Heartbeat' }, timestamp: leaseEnd + 1 + 5000 + 1 });
  const third = one(beat2, 'Task-Assigned').Target;
  assert.ok(![first, second].includes(third));

  // The third expiry is the last: Infer-Response 504, failed, the whole escrow back.
  const beat3 = await w.send({ from: ALICE, tags: { Action: 'Heartbeat' }, timestamp: w.now + 5001 });
  assert.equal(withAction(beat3, 'Task-Assigned').length, 0, 'a fourth node is free, but Max-Attempts is 3');
  const failed = one(beat3, 'Infer-Response');
  assert.equal(failed.Target, ALICE);
  assert.equal(tagOf(failed, 'Code'), '504');
  assert.equal(tagOf(failed, 'Status'), 'failed');
  assert.equal(tagOf(failed, 'X-Reference'), 'slow');
  assert.equal(tagOf(failed, 'Task'), task);
  assert.ok(tagOf(failed, 'Message'));
  s = w.state();
  assert.equal(s.deposits[ALICE], '1000');
  assert.equal(s.tasks[task].escrow, '0');
  assert.equal(s.tasks[task].status, 'failed');
  assert.deepEqual(s.open, []);
  for (const a of [first, second, third]) {
    const n = s.nodes.find((x) => x.address === a)!;
    assert.deepEqual([n.reputation, n.expired, n.open], [80, 1, 0], a);
  }
  assert.equal(s.nodes.filter((n) => n.expired === 0).length, 1);
  const view = await w.send({ from: ALICE, tags: { Action: 'Task', 'X-Reference': 'slow' } });
  assert.equal(tagOf(view.Messages[0], 'Status'), 'failed');
});

test('reputation never falls below 1', async () => {
  const w = await network({ nodes: 1, spawn: { 'Max-Attempts': '1' }, deposits: { [ALICE]: '100' } });
  for (let i = 0; i < 6; i++) {
    const r = await w.infer(ALICE, { max_tokens: 1 });
    assert.equal(withAction(r, 'Task-Assigned').length, 1);
    const beat = await w.send({ from: ALICE, tags: { Action: 'Heartbeat' }, timestamp: w.now + 5001 });
    assert.equal(tagOf(one(beat, 'Infer-Response'), 'Code'), '504');
  }
  const n = w.state().nodes[0];
  assert.deepEqual([n.reputation, n.expired], [1, 6]);
  assert.equal(w.state().deposits[ALICE], '100');
});

// Max-Wait-Ms counts from when a task began waiting for a node, not from the Infer: long leases
// must not cut a task's Max-Attempts short.
test('with Lease-Ms 300000 a task still gets its Max-Attempts (3) leases', async () => {
  const w = await network({ nodes: 4, spawn: { 'Lease-Ms': '300000', 'Max-Attempts': '3' } });
  const r = await w.infer(ALICE, { max_tokens: 10 });
  one(r, 'Task-Assigned');
  const b1 = await w.send({ from: ALICE, tags: { Action: 'Heartbeat' }, timestamp: r.timestamp + 300_001 });
  one(b1, 'Task-Assigned');
  const b2 = await w.send({ from: ALICE, tags: { Action: 'Heartbeat' }, timestamp: b1.timestamp + 300_001 });
  assert.deepEqual(withAction(b2, 'Infer-Response').map((m) => tagsOf(m)), [], 'the task must not fail after 2 of 3 leases');
  one(b2, 'Task-Assigned');
});

// ---- 7. queueing ----

test('with every node busy an Infer waits; a result that frees a lease starts it in the same outbox', async () => {
  const w = await network({ nodes: 2, capacity: 1 });
  const r1 = await w.infer(ALICE, { max_tokens: 4 });
  const r2 = await w.infer(ALICE, { max_tokens: 4 });
  const n1 = one(r1, 'Task-Assigned').Target;
  const n2 = one(r2, 'Task-Assigned').Target;
  assert.notEqual(n1, n2);
  const r3 = await w.infer(ALICE, { max_tokens: 4 }, { 'X-Reference': 'waits' });
  assert.deepEqual(r3.Messages.map(actionOf), ['Infer-Accepted']);
  assert.equal(w.state().tasks[r3.id].pending, 1);
  assert.deepEqual(w.state().tasks[r3.id].leases, []);
  assert.equal(w.state().deposits[ALICE], '988', 'the waiting task holds its escrow');
  // Other traffic does not start it while both nodes are busy.
  const quiet = await w.send({ from: n1, tags: { Action: 'Heartbeat' } });
  assert.deepEqual(quiet.Messages, []);

  const result = await w.submit(n2, r2.id, { tokens: [1, 2] });
  const started = one(result, 'Task-Assigned');
  assert.equal(started.Target, n2);
  assert.equal(tagOf(started, 'Task'), r3.id);
  assert.equal(tagOf(started, 'Lease-End'), String(result.timestamp + 5000));
  assert.equal(tagOf(started, 'Job-Commitment'), w.state().tasks[r3.id].commitment);
  one(result, 'Submit-Result-Response');
  one(result, 'Infer-Response');
  assert.equal(result.Messages.length, 3);
  assert.equal(w.state().tasks[r3.id].pending, 0);
});

// ---- 8. redundancy and Nodes ----

test('Redundancy=2 leases two different nodes; Infer-Response only after both results: completed when the roots agree, mismatch otherwise; Nodes restricts the draw', async () => {
  const w = await network({ nodes: 3, capacity: 16 });
  const run = async (roots: [string, string], label: string): Promise<void> => {
    const r = await w.infer(ALICE, { max_tokens: 6 }, { Redundancy: '2', 'X-Reference': label });
    const leases = withAction(r, 'Task-Assigned');
    assert.equal(leases.length, 2);
    const [a, b] = leases.map((m) => m.Target);
    assert.notEqual(a, b);
    assert.equal(w.state().tasks[r.id].escrow, '12', 'price × max_tokens × 2');
    const before = BigInt(w.state().deposits[ALICE]);
    const first = await w.submit(a, r.id, { root: roots[0], tokens: [1, 2, 3] });
    assert.deepEqual(first.Messages.map(actionOf), ['Submit-Result-Response']);
    assert.equal(w.state().tasks[r.id].status, 'assigned');
    const second = await w.submit(b, r.id, { root: roots[1], tokens: [1, 2, 3, 4] });
    const response = one(second, 'Infer-Response');
    const status = roots[0] === roots[1] ? 'completed' : 'mismatch';
    assert.equal(tagOf(response, 'Status'), status);
    assert.equal(tagOf(response, 'X-Reference'), label);
    assert.equal((JSON.parse(response.Data!) as { status: string }).status, status);
    assert.equal(w.state().tasks[r.id].status, status);
    assert.equal(BigInt(w.state().deposits[ALICE]) - before, 12n - 3n - 4n, 'the unpaid escrow returns');
    assert.equal(w.state().tasks[r.id].escrow, '0');
  };
  await run([ROOT_A, ROOT_A], 'agree');
  await run([ROOT_A, ROOT_B], 'differ');

  // Nodes restricts the draw, whatever the Hash-Chain.
  const [, n2, n3] = w.nodes;
  for (let i = 0; i < 6; i++) {
    const r = await w.infer(ALICE, { max_tokens: 1 }, { Nodes: n3 }, { hashChain: id43(`only n3 ${i}`) });
    assert.equal(one(r, 'Task-Assigned').Target, n3);
  }
  const pair = await w.infer(ALICE, { max_tokens: 1 }, { Nodes: `${n2}, ${n3}`, Redundancy: '2' });
  assert.deepEqual(withAction(pair, 'Task-Assigned').map((m) => m.Target).sort(), [n2, n3].sort());
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Nodes: n3, Redundancy: '2' } }, 503, 'two leases from one node');
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Nodes: id43('a stranger') } }, 503, 'Nodes names no registered node');
});

// ---- 9. unstaking ----

test('Unstake starts a cool-down at once; before it ends 409; after it, Unstake-Completed and a token Transfer of the stake', async () => {
  const w = await network({ nodes: 2, stake: ['500', '300'], capacity: 8, spawn: { 'Lease-Ms': '60000' } });
  const [n1, n2] = w.nodes;
  const started = await w.send({ from: n1, tags: { Action: 'Unstake', 'X-Reference': 'u-1' } });
  assert.equal(started.Messages.length, 1);
  assert.equal(started.Messages[0].Target, n1);
  assert.deepEqual(tagsOf(started.Messages[0]), { Action: 'Unstake-Started', Reference: started.id, 'X-Reference': 'u-1', 'Unstake-At': String(started.timestamp + 10_000) });
  const listed = (await w.nodesList()).find((n) => n.address === n1)!;
  assert.equal(listed.active, false);
  // No new task for it.
  for (let i = 0; i < 6; i++) {
    const r = await w.infer(ALICE, { max_tokens: 1 }, {}, { hashChain: id43(`unstake ${i}`) });
    assert.equal(one(r, 'Task-Assigned').Target, n2);
  }
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Nodes: n1 } }, 503, 'only the unstaking node');

  await refused(w, { from: n1, tags: { Action: 'Unstake', 'X-Reference': 'u-2' }, timestamp: started.timestamp + 9_999 }, 409, 'still cooling down');
  const done = await w.send({ from: n1, tags: { Action: 'Unstake' }, timestamp: started.timestamp + 10_000 });
  assert.equal(done.Messages.length, 2);
  const transfer = one(done, 'Transfer');
  assert.equal(transfer.Target, TOKEN);
  assert.equal(tagOf(transfer, 'Recipient'), n1);
  assert.equal(tagOf(transfer, 'Quantity'), '500');
  const completed = one(done, 'Unstake-Completed');
  assert.equal(completed.Target, n1);
  assert.equal(tagOf(completed, 'Quantity'), '500');
  assert.equal(BigInt(w.state().stakes[n1]), 0n);
  await refused(w, { from: n1, tags: { Action: 'Unstake' } }, 409, 'nothing staked');
  await refused(w, { from: BOB, tags: { Action: 'Unstake' } }, 409, 'never staked');
});

test('Unstake does not pay out while the node still holds a lease', async () => {
  const w = await network({ nodes: 1, spawn: { 'Lease-Ms': '60000' } });
  const [n] = w.nodes;
  const r = await w.infer(ALICE, { max_tokens: 2 });
  assert.equal(one(r, 'Task-Assigned').Target, n);
  const s = await w.send({ from: n, tags: { Action: 'Unstake' } });
  one(s, 'Unstake-Started');
  await refused(w, { from: n, tags: { Action: 'Unstake' }, timestamp: s.timestamp + 10_000 }, 409, 'holds a lease');
  // The lease runs on: its result is still accepted, and then the stake comes back.
  const result = await w.submit(n, r.id, { tokens: [1] });
  one(result, 'Infer-Response');
  const done = await w.send({ from: n, tags: { Action: 'Unstake' } });
  assert.equal(tagOf(one(done, 'Transfer'), 'Quantity'), '1000');
});

// ---- 10. money conservation ----

type MoneyOp =
  | { k: 'deposit'; who: number; q: number }
  | { k: 'stake'; node: number; q: number }
  | { k: 'infer'; who: number; max: number; red: number; nodes: boolean }
  | { k: 'submit'; pick: number; tokens: number; root: boolean }
  | { k: 'wait'; ms: number }
  | { k: 'withdraw'; who: number; q: number | null }
  | { k: 'unstake'; node: number }
  | { k: 'forged'; who: number; q: number };

const moneyOp: fc.Arbitrary<MoneyOp> = fc.oneof(
  fc.record({ k: fc.constant('deposit' as const), who: fc.nat(2), q: fc.integer({ min: 0, max: 300 }) }),
  fc.record({ k: fc.constant('stake' as const), node: fc.nat(2), q: fc.integer({ min: 0, max: 120 }) }),
  {
    arbitrary: fc.record({ k: fc.constant('infer' as const), who: fc.nat(2), max: fc.integer({ min: 1, max: 40 }), red: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 3 })), nodes: fc.boolean() }),
    weight: 4,
  },
  { arbitrary: fc.record({ k: fc.constant('submit' as const), pick: fc.nat(5), tokens: fc.nat(45), root: fc.boolean() }), weight: 6 },
  fc.record({ k: fc.constant('wait' as const), ms: fc.integer({ min: 1, max: 12_000 }) }),
  fc.record({ k: fc.constant('withdraw' as const), who: fc.nat(5), q: fc.option(fc.integer({ min: 0, max: 400 })) }),
  fc.record({ k: fc.constant('unstake' as const), node: fc.nat(2) }),
  fc.record({ k: fc.constant('forged' as const), who: fc.nat(2), q: fc.integer({ min: 1, max: 100 }) }),
);

test('money is conserved: Σ deposits + Σ open escrow + Σ earnings + Σ stakes = Σ credited − Σ paid out, after any sequence', async () => {
  const requesters = [ALICE, BOB, CAROL];
  // What the runs exercised, so that the property is known not to hold vacuously.
  const seen = { maxExpired: 0, accepted: 0, completed: 0, mismatch: 0, failed: 0, paidResults: 0, withdrawn: 0, unstaked: 0, refused: 0 };
  await fc.assert(
    fc.asyncProperty(fc.array(moneyOp, { minLength: 5, maxLength: 30 }), fc.integer({ min: 1, max: 2500 }), async (ops, step) => {
      const w = await network({ nodes: 3, stake: ['100', '150', '0'], capacity: 2, deposits: { [ALICE]: '300', [BOB]: '200' }, spawn: { 'Price-Per-Token': '2', 'Max-Attempts': '2' } });
      let credited = 100n + 150n + 300n + 200n;
      let paid = 0n;
      const account = (i: number): string => (i < 3 ? requesters[i] : w.nodes[i - 3]);
      for (const o of ops) {
        const timestamp = w.now + (o.k === 'wait' ? o.ms : step);
        let r: Sent;
        switch (o.k) {
          case 'deposit':
            r = await w.send({ from: TOKEN, owner: MU, timestamp, tags: { Action: 'Credit-Notice', Sender: requesters[o.who], Quantity: String(o.q), 'X-Action': 'Deposit' } });
            credited += BigInt(o.q);
            break;
          case 'stake':
            r = await w.send({ from: TOKEN, owner: MU, timestamp, tags: { Action: 'Credit-Notice', Sender: w.nodes[o.node], Quantity: String(o.q), 'X-Action': 'Stake' } });
            credited += BigInt(o.q);
            break;
          case 'forged':
            r = await w.send({ from: requesters[o.who], owner: MU, timestamp, tags: { Action: 'Credit-Notice', Sender: requesters[o.who], Quantity: String(o.q), 'X-Action': 'Deposit' } });
            break;
          case 'infer':
            r = await w.infer(requesters[o.who], { max_tokens: o.max }, { Redundancy: String(o.red), ...(o.nodes ? { Nodes: `${w.nodes[0]},${w.nodes[1]}` } : {}) }, { timestamp });
            break;
          case 'submit': {
            const s = w.state();
            const open = s.open.flatMap((id) => s.tasks[id].leases.filter((l) => l.status === 'open').map((l) => ({ task: s.tasks[id], lease: l })));
            if (open.length === 0) {
              r = await w.send({ from: ALICE, tags: { Action: 'Heartbeat' }, timestamp });
              break;
            }
            const { task, lease } = open[o.pick % open.length];
            const n = Math.min(o.tokens, task.options.max_tokens);
            r = await w.submit(lease.node, task.id, { tokens: Array.from({ length: n }, (_, i) => i + 1), root: o.root ? ROOT_A : ROOT_B, timestamp });
            break;
          }
          case 'wait':
            r = await w.send({ from: w.nodes[0], tags: { Action: 'Heartbeat' }, timestamp });
            break;
          case 'withdraw':
            r = await w.send({ from: account(o.who), timestamp, tags: { Action: 'Withdraw', ...(o.q === null ? {} : { Quantity: String(o.q) }) } });
            break;
          case 'unstake':
            r = await w.send({ from: w.nodes[o.node], tags: { Action: 'Unstake' }, timestamp });
            break;
        }
        for (const m of r.Messages) {
          const action = actionOf(m);
          if (action === 'Infer-Accepted') seen.accepted++;
          if (action === 'Submit-Result-Response') seen.paidResults++;
          if (action === 'Withdraw-Response') seen.withdrawn++;
          if (action === 'Unstake-Completed') seen.unstaked++;
          if (tagOf(m, 'Code') !== undefined && action !== 'Infer-Response') seen.refused++;
          if (action === 'Infer-Response') {
            const status = tagOf(m, 'Status');
            if (status === 'completed') seen.completed++;
            if (status === 'mismatch') seen.mismatch++;
            if (status === 'failed') seen.failed++;
          }
          if (m.Target === TOKEN && actionOf(m) === 'Transfer') paid += BigInt(tagOf(m, 'Quantity')!);
          assert.ok(!(m.Target === TOKEN && actionOf(m) !== 'Transfer'), `only Transfers go to the token: ${JSON.stringify(m)}`);
        }
        if (o.k === 'deposit' || o.k === 'stake') assert.deepEqual(r.Messages.filter((m) => m.Target === TOKEN), []);

        const s = w.state();
        const openEscrow = s.open.reduce((a, id) => a + BigInt(s.tasks[id].escrow), 0n);
        const held = sum(s.deposits) + openEscrow + sum(s.earnings) + sum(s.stakes);
        assert.equal(held, credited - paid, `after ${JSON.stringify(o)}`);
        for (const record of [s.deposits, s.earnings, s.stakes]) for (const v of Object.values(record)) assert.match(v, /^(0|[1-9][0-9]*)$/);
        for (const t of Object.values(s.tasks)) {
          assert.equal(s.open.includes(t.id), t.status === 'assigned', t.id);
          if (!s.open.includes(t.id)) assert.equal(t.escrow, '0');
          assert.ok(BigInt(t.escrow) >= 0n);
        }
        seen.maxExpired = Math.max(seen.maxExpired, ...s.nodes.map((n) => n.expired));
        for (const n of s.nodes) {
          const leases = s.open.reduce((a, id) => a + s.tasks[id].leases.filter((l) => l.node === n.address && l.status === 'open').length, 0);
          assert.equal(n.open, leases, `${n.address} open count`);
          assert.ok(n.open <= n.capacity);
          assert.ok(n.reputation >= 1 && n.reputation <= 200);
        }
      }
    }),
    { numRuns: 60, seed: 20240601 },
  );
  for (const [what, count] of Object.entries(seen)) assert.ok(count > 0, `no run had ${what}: ${JSON.stringify(seen)}`);
});

// ---- 11. determinism ----

test('the same messages (ids, timestamps, hash chains) give byte-identical state and outboxes; the Hash-Chain picks the node', async () => {
  const script = async (): Promise<string[]> => {
    const w = await network({ nodes: 4, capacity: 2, stake: ['100', '200', '300', '400'], id: 'D'.repeat(43), deposits: { [ALICE]: '500', [BOB]: '500' } });
    const log: string[] = [];
    const keep = (r: Evaluation): void => void log.push(JSON.stringify(r.Messages));
    const tasks: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await w.infer(i % 2 ? BOB : ALICE, { max_tokens: 5 + i, seed: i }, { Redundancy: String(1 + (i % 2)) });
      keep(r);
      tasks.push(r.id);
    }
    keep(await w.send({ from: ALICE, tags: { Action: 'Heartbeat' }, timestamp: w.now + 5001 }));
    const s = w.state();
    for (const id of s.open) {
      for (const l of s.tasks[id].leases.filter((x) => x.status === 'open')) keep(await w.submit(l.node, id, { tokens: [1, 2] }));
    }
    keep(await w.send({ from: w.nodes[3], tags: { Action: 'Withdraw' } }));
    log.push(JSON.stringify(w.state()));
    return log;
  };
  const a = await script();
  const b = await script();
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) assert.equal(a[i], b[i], `step ${i}`);
  assert.ok(a.at(-1)!.includes('"completed"'));

  // Same state, same message, another Hash-Chain: another node may be drawn; the same chain, the same node.
  const w = await network({ nodes: 3, capacity: 4, stake: ['1000', '1000', '1000'] });
  const pick = async (chain: string): Promise<string> => {
    const r = await w.p.dryRun({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': '{"max_tokens":3}' }, hashChain: chain, timestamp: w.now + 1, id: id43('the same message') });
    assert.equal(r.Error, undefined);
    return one(r, 'Task-Assigned').Target;
  };
  const picks = new Map<string, string>();
  for (let i = 0; i < 12; i++) picks.set(id43(`chain ${i}`), await pick(id43(`chain ${i}`)));
  const chosen = new Set(picks.values());
  assert.ok(chosen.size >= 2, `12 chains all drew one node: ${[...chosen].join()}`);
  for (const [chain, node] of [...picks].slice(0, 3)) assert.equal(await pick(chain), node, 'the same chain draws the same node');
  const [c1, c2] = [...picks.keys()].filter((c, i, all) => i === 0 || picks.get(c) !== picks.get(all[0]));
  assert.notEqual(picks.get(c1), picks.get(c2), 'a pair of chains that draw different nodes');
});

test('draws are weighted by stake × reputation', async () => {
  const w = await network({ nodes: 2, capacity: 64, stake: ['100', '900'] });
  const [light, heavy] = w.nodes;
  let heavyCount = 0;
  const runs = 120;
  for (let i = 0; i < runs; i++) {
    const r = await w.p.dryRun({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': '{"max_tokens":3}' }, hashChain: id43(`weight ${i}`), timestamp: w.now + 1 });
    const target = one(r, 'Task-Assigned').Target;
    assert.ok([light, heavy].includes(target));
    if (target === heavy) heavyCount++;
  }
  // Expected 90 % (108 of 120); a fair coin would give ~60.
  assert.ok(heavyCount >= 95 && heavyCount <= 118, `heavy node drawn ${heavyCount} of ${runs}`);
});

// ---- 12. sender-chosen keys ----

test('sender-chosen keys that are Object.prototype members get clean answers, never a crash', async () => {
  const w = await network({ nodes: 1 });
  const r = await w.infer(ALICE, { max_tokens: 2 });
  one(r, 'Task-Assigned');
  for (const key of ['__proto__', 'constructor', 'hasOwnProperty', 'toString', 'valueOf']) {
    await refused(w, { from: ALICE, tags: { Action: 'Task', Task: key } }, 404, `Task ${key}`);
    await refused(w, { from: BOB, tags: { Action: 'Task', 'X-Reference': key } }, 404, `X-Reference ${key}`);
    await refused(w, { from: w.nodes[0], tags: { Action: 'Submit-Result', Task: key, 'Job-Commitment': 'c'.repeat(64), 'Trace-Root': ROOT_A, Trace: TRACE, Tokens: '1' }, data: '{"text":"a","tokens":[1]}' }, 404, `Submit-Result ${key}`);
    await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', Model: key } }, 404, `Model ${key}`);
    await refused(w, { from: fx.addrs[0], tags: { Action: 'Register-Node', DID: fx.dids[0], Models: key } }, 404, `Models ${key}`);
    const bal = await w.send({ from: ALICE, tags: { Action: 'Balance', Target: key } });
    assert.deepEqual(tagsOf(bal.Messages[0]), { Action: 'Balance-Response', Reference: bal.id, Balance: '0', Earnings: '0', Stake: '0', Account: key });
    assert.equal(bal.Messages[0].Data, '0');
    const tasks = await w.send({ from: ALICE, tags: { Action: 'Tasks', Node: key } });
    assert.equal(tasks.Messages[0].Data, '[]');
    await refused(w, { from: ALICE, tags: { Action: key } }, 400, `Action ${key}`);
  }
  // X-Reference "__proto__" is an ordinary reference.
  const proto = await w.infer(ALICE, { max_tokens: 2 }, { 'X-Reference': '__proto__' });
  one(proto, 'Infer-Accepted');
  const found = await w.send({ from: ALICE, tags: { Action: 'Task', 'X-Reference': '__proto__' } });
  assert.equal(tagOf(found.Messages[0], 'Task'), proto.id);
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":2}', 'X-Reference': '__proto__' } }, 409, 'the reference again');
});

// ---- assignments ----

// Anyone may assign any stored item to any process: a token's Credit-Notice to someone else,
// assigned here, must credit no one (it would mint deposits out of other people's transfers).
test('an item addressed to another process and assigned here changes nothing', async () => {
  const w = await network({ nodes: 1 });
  const before = w.snapshot();
  const elsewhere = id43('some other process');
  const r = await w.p.send({ from: TOKEN, owner: MU, target: elsewhere, tags: { Action: 'Credit-Notice', Sender: ALICE, Quantity: '1000', 'X-Action': 'Deposit' }, timestamp: w.now + 1 });
  assert.equal(r.Error, undefined);
  assert.deepEqual(r.Messages, []);
  assert.deepEqual(w.state(), before);
});

// ---- Min-Stake 0 ----

// A node with no stake is eligible with Min-Stake 0: its draw weight must not be zero, or the draw
// would divide by zero.
test('Min-Stake 0 with only unstaked nodes answers the Infer instead of crashing', async () => {
  const w = await network({ nodes: 1, stake: ['0'], spawn: { 'Min-Stake': '0' } });
  const before = w.snapshot();
  const r = await w.p.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': '{"max_tokens":2}' }, timestamp: w.now + 1 });
  assert.equal(r.Error, undefined, `the process crashed: ${r.Error}`);
  const answer = r.Messages.find((m) => m.Target === ALICE)!;
  assert.ok(['Infer-Accepted', 'Infer-Response'].includes(actionOf(answer)!));
  if (actionOf(answer) === 'Infer-Response') assert.deepEqual(w.state(), before);
});

// The lease sweep runs on every message: a fault there would make every later message fail.
test('Min-Stake 0: an expired lease with only an unstaked node left does not stop the process', async () => {
  const w = await network({ nodes: 2, stake: ['100', '0'], spawn: { 'Min-Stake': '0' } });
  const [staked] = w.nodes;
  // The zero-weight node is never drawn while a staked one is free.
  const r = await w.infer(ALICE, { max_tokens: 2 });
  assert.equal(one(r, 'Task-Assigned').Target, staked);
  const later = await w.p.send({ from: ALICE, tags: { Action: 'Balance' }, timestamp: r.timestamp + 5001 });
  assert.equal(later.Error, undefined, `the process crashed: ${later.Error}`);
  const again = await w.p.send({ from: ALICE, tags: { Action: 'Withdraw' }, timestamp: r.timestamp + 6000 });
  assert.equal(again.Error, undefined, `the process crashed: ${again.Error}`);
});
