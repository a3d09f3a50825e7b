// The coordinator process (src/processes/coordinator.ts) checked against docs/network.md, driven
// through the real QuickJS runtime with the real host extensions over a real embedded store that
// holds the real stories260K model. The token process is simulated: its Credit-Notices are messages
// the MU pushes with From-Process = the coordinator's Token. Where a flow must reach a final result
// the nodes are the in-process players of ./players.ts (the real engine, real traces, real signed
// trace items); where it only needs a lease or a commitment, a made-up commitment does.
// The verification game itself (audits, disputes, challenges) is verification.test.ts's subject.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import type { Evaluation, OutboxMessage } from '../../src/ao/runtime.js';
import { resultCommitment } from '../../src/processes/coordinator.js';
import type { Assignment, Params, TasksReply, TaskView } from '../../src/processes/protocol.js';
import { openProcess, tagOf, tagsOf, type SendOptions } from './harness.js';
import {
  ALICE, MU, OWNER, PROMPT, Player, TOKEN, World, actionOf, answer, fx, id43, play, source, until, useFixture, type Behaviour, type Net, type Sent,
} from './players.js';

// ---- identities and parameters ----

const BOB = id43('bob');
const CAROL = id43('carol');
/**
 * Small stakes and short times. Every result is audited (Audit-Ppm 10⁶), which the economic rule
 * allows with S = 100 at T = 512: 10⁶·(512 + 100) ≥ 1.1·10⁶·512.
 */
const SPAWN = {
  Token: TOKEN, 'Min-Stake': '100', Slash: '100', 'Miss-Slash': '10', 'Challenge-Bond': '100', 'Round-Bond': '5', 'Audit-Ppm': '1000000',
  'Lease-Ms': '5000', 'Reveal-Ms': '5000', 'Clock-Ms': '5000', 'Challenge-Window-Ms': '3000', 'Unstake-Cooldown-Ms': '10000',
};
/** Never audited: honest only when running costs nothing (the rule allows it with C = 0); results become final through the window. */
const UNAUDITED = { 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0' };

useFixture({ prefix: 'verity-coordinator-', spawn: SPAWN });

// ---- driving the process ----

async function deposit(w: World, who: string, quantity: string): Promise<void> {
  const r = await w.credit(who, quantity, 'Deposit');
  assert.deepEqual(r.Messages.map((m) => [m.Target, tagsOf(m).Action, tagsOf(m).Quantity, tagsOf(m).Balance]), [[who, 'Deposit-Notice', quantity, w.state().deposits[who]]]);
}

async function stake(w: World, who: string, quantity: string): Promise<void> {
  const r = await w.credit(who, quantity, 'Stake');
  assert.deepEqual(r.Messages.map((m) => [m.Target, tagsOf(m).Action, tagsOf(m).Quantity, tagsOf(m).Stake]), [[who, 'Stake-Notice', quantity, w.state().stakes[who]]]);
}

async function registerModel(w: World): Promise<void> {
  const r = await w.send({ from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: fx.manifestId } });
  assert.equal(tagOf(r.Messages[0], 'Action'), 'Register-Model-Response');
}

async function registerNode(w: World, i: number, capacity = 1, models = fx.modelId): Promise<Sent> {
  const r = await w.send({ from: fx.addrs[i], tags: { Action: 'Register-Node', DID: fx.dids[i], Models: models, Capacity: String(capacity) } });
  assert.equal(tagOf(r.Messages.at(-1)!, 'Action'), 'Register-Node-Response', JSON.stringify(r.Messages.map(tagsOf)));
  return r;
}

interface TestNet extends Net {
  /** The players' addresses, index for index. */
  nodes: string[];
}

/** A world with the model registered, nodes staked (stake comes first now) and registered, and deposits made. */
async function network(
  o: { nodes?: number; behaviours?: Behaviour[]; stake?: string | string[]; capacity?: number; deposits?: Record<string, string>; spawn?: Record<string, string>; id?: string } = {},
): Promise<TestNet> {
  const w = await World.open(o.spawn, o.id);
  await registerModel(w);
  const behaviours = o.behaviours ?? Array.from({ length: o.nodes ?? 3 }, (): Behaviour => 'honest');
  for (let i = 0; i < behaviours.length; i++) {
    const q = Array.isArray(o.stake) ? o.stake[i] : (o.stake ?? '1000');
    if (q !== '0') await stake(w, fx.addrs[i], q);
    await registerNode(w, i, o.capacity ?? 1);
  }
  for (const [who, q] of Object.entries(o.deposits ?? { [ALICE]: '1000' })) await deposit(w, who, q);
  return { w, players: behaviours.map((b, i) => new Player(fx.wallets[i], b)), nodes: fx.addrs.slice(0, behaviours.length) };
}

function inferMessage(from: string, options: object | string | undefined, tags: Record<string, string> = {}, extra: Partial<SendOptions> = {}, prompt = PROMPT) {
  const opts: Record<string, string> = options === undefined ? {} : { 'X-Options': typeof options === 'string' ? options : JSON.stringify(options) };
  return { from, data: prompt, ...extra, tags: { Action: 'Infer', ...opts, ...tags } };
}

const infer = (w: World, from: string, options: object | string | undefined, tags: Record<string, string> = {}, extra: Partial<SendOptions> = {}, prompt = PROMPT): Promise<Sent> =>
  w.send(inferMessage(from, options, tags, extra, prompt));

/** A commitment to a made-up root: enough for a lease to count as answered (it can never be revealed). */
function commitTags(w: World, node: string, task: string, tokens: number[], root = 'a'.repeat(64)): Record<string, string> {
  return {
    Action: 'Submit-Result', Task: task, 'Job-Commitment': w.state().tasks[task]?.commitment ?? 'c'.repeat(64), 'Result-Commitment': resultCommitment(task, node, root), Tokens: String(tokens.length),
  };
}
const commit = (w: World, node: string, task: string, tokens = [13, 42, 7], extra: Partial<SendOptions> = {}): Promise<Sent> =>
  w.send({ from: node, ...extra, tags: commitTags(w, node, task, tokens), data: JSON.stringify({ tokens }) });

const withAction = (r: Evaluation, action: string): OutboxMessage[] => r.Messages.filter((m) => actionOf(m) === action);
const one = (r: Evaluation, action: string): OutboxMessage => {
  const found = withAction(r, action);
  assert.equal(found.length, 1, `exactly one ${action} in ${JSON.stringify(r.Messages.map((m) => [m.Target, actionOf(m)]))}`);
  return found[0];
};
const heartbeat = (w: World, from: string, timestamp?: number): Promise<Sent> => w.send({ from, tags: { Action: 'Heartbeat' }, ...(timestamp === undefined ? {} : { timestamp }) });
const viewOf = (m: OutboxMessage): TaskView => JSON.parse(m.Data!) as TaskView;
const assignmentOf = (m: OutboxMessage): Assignment => JSON.parse(m.Data!) as Assignment;

async function nodesList(w: World): Promise<Record<string, unknown>[]> {
  const r = await w.send({ from: ALICE, tags: { Action: 'Nodes' } });
  assert.equal(tagOf(r.Messages[0], 'Action'), 'Nodes-Response');
  return JSON.parse(r.Messages[0].Data!) as Record<string, unknown>[];
}

/**
 * Sends `m` and checks it is refused as docs/network.md says: one reply to the sender with
 * `<Action>-Error` (`Infer-Response` for Infer), Code, a one-line Message, Reference = the message
 * id, the X-Reference echoed, and the state exactly as it was.
 */
async function refused(w: World, m: Omit<SendOptions, 'timestamp'> & { timestamp?: number }, code: number, label = JSON.stringify(m.tags), pattern?: RegExp): Promise<OutboxMessage> {
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
  if (pattern) assert.match(tags.Message, pattern, label);
  assert.equal(tags.Reference, r.id, label);
  assert.equal(tags['X-Reference'], xref, label);
  if (action === 'Infer') assert.equal(tags.Status, 'rejected', label);
  assert.deepEqual(w.state(), before, `${label}: the state is unchanged`);
  return reply;
}

const sum = (record: Record<string, string>): bigint => Object.values(record).reduce((a, v) => a + BigInt(v), 0n);

// ---- 1. models ----

test('Register-Model: owner only, a 64-hex id, published; Models lists {id, manifest, name, contextLength, tokenizerHash, bytes, profile}', async () => {
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

  const entry = { id: fx.modelId, manifest: fx.manifestId, name: 'stories260K', contextLength: 512, tokenizerHash: fx.tokenizerHash, bytes: 1_826_560,
    // Per part, for pipelines: the parts add up to bytes (5 layers of weights and K/V, the embedding, the final norm and classifier).
    profile: { nLayers: 5, layerBytes: [312_832, 312_832, 312_832, 312_832, 312_832], embedBytes: 131_072, headBytes: 131_328, residualBytes: 256 } };
  assert.equal(entry.profile.layerBytes.reduce((a, b) => a + b, 0) + entry.profile.embedBytes + entry.profile.headBytes, entry.bytes);
  assert.match(fx.tokenizerHash, /^[0-9a-f]{64}$/);
  const r = await w.send({ from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: fx.manifestId, 'X-Reference': 'm-3' } });
  assert.equal(r.Messages.length, 1);
  assert.equal(r.Messages[0].Target, OWNER);
  assert.deepEqual(tagsOf(r.Messages[0]), { Action: 'Register-Model-Response', Reference: r.id, 'X-Reference': 'm-3', Model: fx.modelId });
  assert.deepEqual(JSON.parse(r.Messages[0].Data!), entry);
  assert.deepEqual(w.state().models, [entry]);

  // Registering again keeps one entry.
  await registerModel(w);
  const list = await w.send({ from: BOB, tags: { Action: 'Models', 'X-Reference': 'l' } });
  assert.deepEqual(tagsOf(list.Messages[0]), { Action: 'Models-Response', Reference: list.id, 'X-Reference': 'l' });
  assert.deepEqual(JSON.parse(list.Messages[0].Data!), [entry]);
});

// ---- 2. nodes and stakes ----

test('Register-Node: the signer\'s own did:key, stake ≥ Min-Stake first, registered models, Capacity 1-64; registering again updates; stakes come only from the token', async () => {
  const w = await World.open();
  await registerModel(w);
  const [a, b] = fx.addrs;
  const base = { Action: 'Register-Node', DID: fx.dids[0], Models: fx.modelId, Capacity: '2' };
  await refused(w, { from: a, tags: { ...base, DID: fx.dids[1], 'X-Reference': 'n-1' } }, 403, 'another wallet\'s DID');
  await refused(w, { from: b, tags: base }, 403, 'signed by the wallet of another DID');
  await refused(w, { from: a, owner: MU, tags: base }, 403, 'pushed by an MU, not signed by the node');
  for (const did of ['', 'garbage', 'did:key:z', 'did:key:zzzzzzzz', `did:key:z${'1'.repeat(40)}`, fx.dids[0].replace('did:key:', 'did:web:'), `${fx.dids[0]}x`]) {
    await refused(w, { from: a, tags: { ...base, DID: did } }, 400, `DID=${did}`);
  }
  await refused(w, { from: a, tags: { Action: 'Register-Node', Models: fx.modelId } }, 400, 'no DID');

  // An entry costs stake: none, then not enough.
  await refused(w, { from: a, tags: base }, 402, 'no stake', /stake at least Min-Stake \(100\) before registering/);
  await stake(w, a, '99');
  await refused(w, { from: a, tags: base }, 402, 'stake 99 < Min-Stake 100');
  await stake(w, a, '51');
  assert.equal(w.state().stakes[a], '150');
  assert.equal(w.state().deposits[a], undefined, 'a stake is not a deposit');

  await refused(w, { from: a, tags: { ...base, Models: 'f'.repeat(64) } }, 404, 'unregistered model');
  await refused(w, { from: a, tags: { ...base, Models: '' } }, 400, 'no model');
  // More ids than registered models is malformed (a bound on the list), whatever they are.
  await refused(w, { from: a, tags: { ...base, Models: `${fx.modelId},${'f'.repeat(64)}` } }, 400, 'one registered, one not', /more models than are registered/);
  for (const capacity of ['0', '65', '100', '-1', '1.5', 'x', '', ' 2']) {
    await refused(w, { from: a, tags: { ...base, Capacity: capacity } }, 400, `Capacity=${capacity}`);
  }
  assert.deepEqual(w.state().nodes, []);

  const r = await w.send({ from: a, tags: { ...base, 'X-Reference': 'n-2' } });
  assert.deepEqual(r.Messages.map((m) => m.Target), [a]);
  assert.deepEqual(tagsOf(r.Messages[0]), { Action: 'Register-Node-Response', Reference: r.id, 'X-Reference': 'n-2', Node: a });
  const view = (await nodesList(w))[0];
  assert.deepEqual(view, {
    address: a, did: fx.dids[0], models: [fx.modelId], capacity: 2, reputation: 100, open: 0, completed: 0, expired: 0, audited: 0, disputesLost: 0, lastSeen: r.timestamp,
    stake: '150', locked: '0', active: true,
  });

  // Again: capacity 64 (the top of the range), models updated in place, still one node.
  await w.send({ from: a, tags: { ...base, Capacity: '64' } });
  assert.equal(w.state().nodes.length, 1);
  assert.equal(w.state().nodes[0].capacity, 64);

  // Stream-Url: an http(s) URL of at most 200 characters, shown in the node view; empty clears it; absent keeps it.
  for (const url of ['ftp://x', 'javascript:alert(1)', 'http://', 'http://a b', `http://${'a'.repeat(200)}`, 'http://x/\u0000', 'x']) {
    await refused(w, { from: a, tags: { ...base, 'Stream-Url': url } }, 400, `Stream-Url=${url}`);
  }
  await w.send({ from: a, tags: { ...base, 'Stream-Url': 'http://127.0.0.1:8080/' } });
  assert.equal((await nodesList(w))[0].streamUrl, 'http://127.0.0.1:8080');
  await w.send({ from: a, tags: base });
  assert.equal((await nodesList(w))[0].streamUrl, 'http://127.0.0.1:8080');
  await w.send({ from: a, tags: { ...base, 'Stream-Url': '' } });
  assert.equal((await nodesList(w))[0].streamUrl, undefined);

  // Anyone else's Credit-Notice is refused, signed or pushed.
  for (const [from, owner] of [[ALICE, ALICE], [ALICE, MU], [OWNER, OWNER], [a, a]]) {
    await refused(w, { from, owner, tags: { Action: 'Credit-Notice', Sender: a, Quantity: '1000', 'X-Action': 'Stake', 'X-Reference': 'forged' } }, 403, `Credit-Notice from ${from}`);
    await refused(w, { from, owner, tags: { Action: 'Credit-Notice', Sender: from, Quantity: '1000', 'X-Action': 'Deposit' } }, 403, `deposit from ${from}`);
  }
  assert.equal(w.state().stakes[a], '150');
  const bal = await w.send({ from: a, tags: { Action: 'Balance' } });
  assert.deepEqual([tagOf(bal.Messages[0], 'Stake'), tagOf(bal.Messages[0], 'Locked')], ['150', '0']);
});

// ---- 3. deposits, balances, withdrawals ----

test('Deposit credits the sender of the Credit-Notice; Balance answers; Withdraw pays out with a token Transfer', async () => {
  const w = await World.open();
  await deposit(w, ALICE, '500');
  await deposit(w, ALICE, '25');
  assert.equal(w.state().deposits[ALICE], '525');
  // A Credit-Notice with another X-Action (or none) is a deposit too: no transfer is stranded.
  await deposit(w, BOB, '3');
  const plain = await w.credit(BOB, '2');
  assert.deepEqual([actionOf(plain.Messages[0]), tagOf(plain.Messages[0], 'Balance')], ['Deposit-Notice', '5']);
  const echoed = await w.send({ from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Sender: BOB, Quantity: '1', 'X-Action': 'Tip', 'X-Reference': 't-1' } });
  w.credited += 1n;
  assert.deepEqual(tagsOf(echoed.Messages[0]), { Action: 'Deposit-Notice', Quantity: '1', Balance: '6', 'X-Action': 'Tip', 'X-Reference': 't-1' }, 'the transfer\'s X- tags come back');
  // Malformed notices from the token are refused without crediting.
  await refused(w, { from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Sender: ALICE, Quantity: '-5', 'X-Action': 'Deposit' } }, 400, 'negative');
  await refused(w, { from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Sender: ALICE, Quantity: '01', 'X-Action': 'Deposit' } }, 400, 'leading zero');
  await refused(w, { from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Quantity: '5', 'X-Action': 'Deposit' } }, 400, 'no Sender');

  const self = await w.send({ from: ALICE, tags: { Action: 'Balance', 'X-Reference': 'b-1' } });
  assert.equal(self.Messages.length, 1);
  assert.equal(self.Messages[0].Target, ALICE);
  assert.deepEqual(tagsOf(self.Messages[0]), { Action: 'Balance-Response', Reference: self.id, 'X-Reference': 'b-1', Balance: '525', Earnings: '0', Stake: '0', Locked: '0', Account: ALICE });
  assert.equal(self.Messages[0].Data, '525');
  const other = await w.send({ from: ALICE, tags: { Action: 'Balance', Target: CAROL } });
  assert.deepEqual(tagsOf(other.Messages[0]), { Action: 'Balance-Response', Reference: other.id, Balance: '0', Earnings: '0', Stake: '0', Locked: '0', Account: CAROL });
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
  await refused(w, { from: CAROL, tags: { Action: 'Withdraw', Quantity: '1' } }, 402, 'CAROL has nothing');

  // All (no Quantity).
  const all = await w.send({ from: ALICE, tags: { Action: 'Withdraw' } });
  assert.equal(tagOf(one(all, 'Transfer'), 'Quantity'), '325');
  assert.equal(tagOf(one(all, 'Withdraw-Response'), 'Quantity'), '325');
  assert.equal(BigInt(w.state().deposits[ALICE] ?? '0'), 0n);
  // With nothing left, a withdrawal of everything is a refusal, not a Transfer of 0.
  await refused(w, { from: ALICE, tags: { Action: 'Withdraw' } }, 400, 'nothing left');
  w.assertConserved('after deposits and withdrawals');
});

// ---- 4. the happy path ----

test('Infer → Task-Assigned with the host.job commitment → a blind commit (pending answer, decoded here) → audit → reveal duties → final with the receipt; money moves only at finality', async () => {
  const net = await network({ nodes: 3, spawn: { 'Price-Per-Token': '3' } });
  const { w, players, nodes } = net;
  const options = { max_tokens: 20, temperature: 0, seed: 7 };
  const r = await infer(w, ALICE, options, { 'X-Reference': 'req-1' });
  const task = r.id;
  assert.equal(r.Messages.length, 2, JSON.stringify(r.Messages));
  const assigned = one(r, 'Task-Assigned');
  const node = assigned.Target;
  assert.ok(nodes.includes(node));
  const job = JSON.parse(await fx.ext.job(JSON.stringify({ model: fx.modelId, manifest: fx.manifestId, prompt: PROMPT, maxTokens: 20, temperature: 0, topP: 0.9, seed: '7' }))) as {
    commitment: string;
    promptTokens: number;
    steps: number;
  };
  assert.match(job.commitment, /^[0-9a-f]{64}$/);
  assert.equal(job.steps, job.promptTokens + 20);
  const leaseEnd = r.timestamp + 5000;
  assert.deepEqual(tagsOf(assigned), { Action: 'Task-Assigned', Task: task, Model: fx.modelId, 'Lease-End': String(leaseEnd), 'Job-Commitment': job.commitment });
  const a = assignmentOf(assigned);
  assert.deepEqual(a, { task, model: fx.modelId, prompt: PROMPT, options: { max_tokens: 20, temperature: 0, top_p: 0.9, seed: '7' }, commitment: job.commitment, steps: job.steps, leaseEnd });

  // Escrow: price 3 × max_tokens 20 × (1 asserter + 1 validator).
  const accepted = one(r, 'Infer-Accepted');
  assert.equal(accepted.Target, ALICE);
  assert.deepEqual(tagsOf(accepted), { Action: 'Infer-Accepted', Reference: task, 'X-Reference': 'req-1', Task: task, Escrow: '120' });
  let s = w.state();
  assert.equal(s.tasks[task].escrow, '120');
  assert.equal(s.tasks[task].status, 'assigned');
  assert.equal(s.deposits[ALICE], '880');
  assert.deepEqual(s.open, [task]);
  assert.equal(s.nodes.find((n) => n.address === node)!.open, 1);
  assert.equal(s.locked[node], '100', 'the lease locks Slash');

  // The node sees its lease ({leases, duties}); the requester finds the task by X-Reference.
  const leases = await w.send({ from: node, tags: { Action: 'Tasks' } });
  assert.deepEqual(JSON.parse(leases.Messages[0].Data!) as TasksReply, { leases: [a], duties: [] });
  const other = nodes.find((n) => n !== node)!;
  assert.deepEqual(JSON.parse((await w.send({ from: other, tags: { Action: 'Tasks' } })).Messages[0].Data!), { leases: [], duties: [] });
  const byRef = await w.send({ from: ALICE, tags: { Action: 'Task', 'X-Reference': 'req-1' } });
  assert.deepEqual([tagOf(byRef.Messages[0], 'Action'), tagOf(byRef.Messages[0], 'Status')], ['Task-Response', 'assigned']);
  assert.equal(viewOf(byRef.Messages[0]).task, task);

  // The commit: the root stays secret; the requester gets the tokens' text at once, decoded here.
  const asserter = players.find((p) => p.address === node)!;
  const committed = (await answer(w, asserter, assigned))!;
  const run = asserter.runs.get(task)!;
  assert.deepEqual(committed.Messages.map((m) => [m.Target, actionOf(m)]), [[node, 'Submit-Result-Response'], [ALICE, 'Infer-Response']]);
  assert.equal(tagOf(committed.Messages[0], 'Reference'), committed.id);
  const pending = committed.Messages[1];
  assert.deepEqual(tagsOf(pending), { Action: 'Infer-Response', Reference: task, 'X-Reference': 'req-1', Task: task, Status: 'pending' });
  const decoded = await fx.ext.decode(JSON.stringify({ model: fx.modelId, manifest: fx.manifestId, prompt: PROMPT, tokens: run.tokens }));
  const pv = viewOf(pending);
  assert.equal(pv.result, decoded);
  assert.deepEqual(pv.tokens, run.tokens);
  assert.equal(pv.receipt, null, 'no receipt before the reveal');
  assert.deepEqual(pv.usage, { prompt_tokens: job.promptTokens, completion_tokens: run.tokens.length });
  assert.ok(!JSON.stringify(committed.Messages).includes(run.root) && !JSON.stringify(w.state()).includes(run.root), 'the root is nowhere yet');
  s = w.state();
  assert.equal(s.tasks[task].status, 'committed');
  assert.deepEqual(s.tasks[task].participants.map((p) => [p.node, p.role, p.status]), [[node, 'asserter', 'committed']]);
  assert.equal(s.earnings[node], undefined, 'nobody is paid before the result is final');
  assert.equal(s.locked[node], '100', 'the lock stays until final');

  // A dry-run draws nothing: without a Hash-Chain its draw would be one the log never makes, and a
  // node shown that lease would work it, be refused, and then ignore the real one (a stuck task).
  for (const n of nodes) {
    const dry = await w.p.dryRun({ from: n, tags: { Action: 'Tasks' }, timestamp: w.now + 1 });
    assert.deepEqual(dry.Messages.filter((m) => actionOf(m) === 'Task-Assigned'), []);
    const listed = (JSON.parse(dry.Messages[0].Data!) as TasksReply).leases;
    assert.deepEqual(listed, [], 'no lease appears in a dry-run');
  }
  assert.equal(w.state().tasks[task].status, 'committed');

  // The next message draws the audit: a validator's lease looks like any lease.
  const hb = await heartbeat(w, ALICE);
  const vAssigned = one(hb, 'Task-Assigned');
  assert.notEqual(vAssigned.Target, node);
  assert.deepEqual({ ...assignmentOf(vAssigned), leaseEnd: 0 }, { ...a, leaseEnd: 0 });
  assert.equal(w.state().tasks[task].status, 'auditing');
  const validator = players.find((p) => p.address === vAssigned.Target)!;
  const vCommitted = (await answer(w, validator, vAssigned))!;
  // Every commitment is in: each committed participant is asked to reveal.
  const deadline = vCommitted.timestamp + 5000;
  assert.deepEqual(
    withAction(vCommitted, 'Reveal-Requested').map((m) => [m.Target, tagsOf(m)]),
    [node, validator.address].map((n) => [n, { Action: 'Reveal-Requested', Task: task, Deadline: String(deadline) }]),
  );
  assert.equal(w.state().tasks[task].status, 'revealing');
  const duties = JSON.parse((await w.p.dryRun({ from: node, tags: { Action: 'Tasks' }, timestamp: w.now + 1 })).Messages[0].Data!) as TasksReply;
  assert.deepEqual(duties, { leases: [], duties: [{ task, kind: 'reveal', deadline, assignment: a }] });

  const responses = await play(net, vCommitted);
  assert.deepEqual(responses.map((m) => [m.Target, tagOf(m, 'Status')]), [[ALICE, 'final']]);
  const fin = responses[0];
  const ft = tagsOf(fin);
  assert.deepEqual([ft.Task, ft['X-Reference'], ft.Code, ft.Corrected], [task, 'req-1', undefined, undefined]);
  const view = viewOf(fin);
  assert.equal(view.status, 'final');
  assert.equal(view.result, decoded);
  assert.equal(view.audited, true);
  assert.deepEqual(view.participants.map((p) => [p.node, p.role, p.status]), [[node, 'asserter', 'revealed'], [validator.address, 'validator', 'revealed']]);
  assert.deepEqual(view.receipt, { task, model: fx.modelId, commitment: job.commitment, traceRoot: run.root, node, result: committed.id, trace: view.participants[0].trace });
  assert.match(view.receipt!.trace, /^[A-Za-z0-9_-]{43}$/);
  assert.equal(view.endedAt, w.now);

  // Paid at finality: price × tokens to both; the rest of the escrow back; locks released; the task left the state.
  const n = run.tokens.length;
  s = w.state();
  assert.equal(s.earnings[node], String(3 * n));
  assert.equal(s.earnings[validator.address], String(3 * n));
  assert.equal(s.deposits[ALICE], String(1000 - 6 * n));
  assert.deepEqual(s.tasks, {});
  assert.deepEqual(s.open, []);
  assert.deepEqual(Object.values(s.locked).filter((v) => v !== '0'), []);
  const nn = s.nodes.find((x) => x.address === node)!;
  assert.deepEqual([nn.open, nn.completed, nn.reputation, nn.expired, nn.audited], [0, 1, 101, 0, 1]);
  const nb = await w.send({ from: node, tags: { Action: 'Balance' } });
  assert.deepEqual(['Balance', 'Earnings', 'Stake', 'Locked'].map((t) => tagOf(nb.Messages[0], t)), ['0', String(3 * n), '1000', '0']);
  // An ended task is in its last Infer-Response, no longer in the live state.
  await refused(w, { from: BOB, tags: { Action: 'Task', Task: task } }, 404, 'ended task', /no live task/);
  await refused(w, { from: ALICE, tags: { Action: 'Task', 'X-Reference': 'req-1' } }, 404, 'ended task by reference');
  const dry = await w.p.dryRun({ from: ALICE, tags: { Action: 'Task', Task: task }, timestamp: w.now + 1 });
  assert.deepEqual([tagOf(dry.Messages[0], 'Action'), tagOf(dry.Messages[0], 'Code')], ['Task-Error', '404']);

  // Withdraw pays out of deposit + earnings (the deposit first) with a token Transfer; the stake stays.
  await deposit(w, node, '5');
  const total = 5 + 3 * n;
  await refused(w, { from: node, tags: { Action: 'Withdraw', Quantity: String(total + 1) } }, 402, 'more than deposit + earnings');
  const part = await w.send({ from: node, tags: { Action: 'Withdraw', Quantity: '12' } });
  assert.equal(tagOf(one(part, 'Transfer'), 'Quantity'), '12');
  assert.equal(BigInt(w.state().deposits[node]) + BigInt(w.state().earnings[node]), BigInt(total - 12));
  const pay = await w.send({ from: node, tags: { Action: 'Withdraw' } });
  assert.equal(tagOf(one(pay, 'Transfer'), 'Quantity'), String(total - 12));
  assert.equal(tagOf(one(pay, 'Transfer'), 'Recipient'), node);
  assert.equal(BigInt(w.state().earnings[node]), 0n);
  assert.equal(BigInt(w.state().deposits[node]), 0n);
  assert.equal(w.state().stakes[node], '1000');
  w.assertConserved('after the happy path');
});

// ---- 5. refusals ----

test('Infer refusals change nothing: unknown model 404, unfunded 402, malformed options 400, beyond Max-Tokens 400, oversized prompt 413, beyond the context 400, duplicate X-Reference 409', async () => {
  const { w, nodes } = await network({ nodes: 3, spawn: { 'Max-Prompt-Bytes': '16' }, deposits: { [ALICE]: '100000', [CAROL]: '10' } });
  const msg = (from: string, options: object | string | undefined, tags: Record<string, string> = {}, prompt = 'Hi') => inferMessage(from, options, tags, {}, prompt);
  await refused(w, msg(ALICE, { max_tokens: 5 }, { Model: 'f'.repeat(64), 'X-Reference': 'r-404' }), 404, 'unknown model');
  await refused(w, msg(ALICE, { max_tokens: 5 }, { Model: 'nonsense' }), 404, 'a Model that is no id');
  await refused(w, msg(BOB, { max_tokens: 5 }, { 'X-Reference': 'r-402' }), 402, 'no deposit');
  // The escrow covers the asserters and one audit's validators: price × max_tokens × (Redundancy + Validators).
  await refused(w, msg(CAROL, { max_tokens: 6 }), 402, 'deposit 10 < escrow 6 × 2', /needs 12 in deposit/);
  await refused(w, msg(CAROL, { max_tokens: 3 }, { Redundancy: '3' }), 402, 'deposit 10 < escrow 3 × 4');

  const bad: [string, string][] = [
    ['non-JSON', '{max_tokens: 5}'],
    ['JSON that is no object', '[5]'],
    ['null', 'null'],
    ['max_tokens 0', '{"max_tokens":0}'],
    ['max_tokens 1.5', '{"max_tokens":1.5}'],
    ['max_tokens "10"', '{"max_tokens":"10"}'],
    ['max_tokens -3', '{"max_tokens":-3}'],
    ['max_tokens over Max-Tokens', '{"max_tokens":513}'],
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
  for (const [label, options] of bad) await refused(w, msg(ALICE, options, { 'X-Reference': `bad-${label}` }), 400, label);
  for (const red of ['0', '4', '01', 'two', '']) await refused(w, msg(ALICE, { max_tokens: 5 }, { Redundancy: red }), 400, `Redundancy=${red}`);
  await refused(w, msg(ALICE, { max_tokens: 5 }, { Nodes: 'not-an-address' }), 400, 'Nodes malformed');
  await refused(w, msg(ALICE, { max_tokens: 5 }, { Nodes: `${nodes[0]},` }), 400, 'an empty entry in Nodes');
  await refused(w, msg(ALICE, { max_tokens: 5 }, { Nodes: Array.from({ length: 65 }, (_, i) => id43(`n${i}`)).join(',') }), 400, '65 Nodes');
  await refused(w, msg(ALICE, { max_tokens: 5 }, { 'X-Reference': 'r'.repeat(129) }), 400, 'an X-Reference over 128 characters');
  await refused(w, msg(ALICE, { max_tokens: 5 }, {}, ''), 400, 'an empty prompt');

  // The boundaries accepted (dry runs keep nothing).
  const accepts = async (m: ReturnType<typeof msg>, label: string): Promise<void> => {
    const r = await w.p.dryRun({ ...m, timestamp: w.now + 1 });
    assert.equal(r.Error, undefined, label);
    assert.equal(withAction(r, 'Infer-Accepted').length, 1, `${label}: ${JSON.stringify(r.Messages)}`);
  };
  await accepts(msg(ALICE, '{"max_tokens":5,"temperature":2,"top_p":1,"seed":"18446744073709551615"}'), 'the top of each range');
  await accepts(msg(ALICE, '{"max_tokens":5,"temperature":0,"top_p":0.0001,"seed":0}'), 'the bottom of each range');
  await accepts(msg(ALICE, { max_tokens: 5 }, { Redundancy: '3' }), 'Redundancy 3 with three nodes');
  await accepts(msg(CAROL, { max_tokens: 5 }), 'escrow 10 = deposit 10');

  // Max-Prompt-Bytes counts UTF-8 bytes: "€" is 3 bytes (1 UTF-16 unit), "😀" 4 bytes (2 units).
  await accepts(msg(ALICE, { max_tokens: 5 }, {}, '€€€€€a'), '16 bytes');
  await refused(w, msg(ALICE, { max_tokens: 5 }, { 'X-Reference': 'big' }, '€€€€€€'), 413, '6 × € = 18 bytes in 6 units');
  await accepts(msg(ALICE, { max_tokens: 5 }, {}, '😀😀😀😀'), '16 bytes of emoji');
  await refused(w, msg(ALICE, { max_tokens: 5 }, {}, '😀😀😀😀a'), 413, '17 bytes in 9 units');
  await refused(w, msg(ALICE, { max_tokens: 5 }, {}, 'x'.repeat(17)), 413, '17 ASCII bytes');

  // The context is 512 positions, the prompt's tokens (BOS included) and max_tokens together.
  const prompt = 'The cat';
  const { promptTokens } = JSON.parse(await fx.ext.job(JSON.stringify({ model: fx.modelId, manifest: fx.manifestId, prompt, maxTokens: 1, temperature: 0, topP: 0.9, seed: '0' }))) as { promptTokens: number };
  assert.ok(promptTokens >= 3, 'BOS + at least two tokens');
  await accepts(msg(ALICE, { max_tokens: 512 - promptTokens }, {}, prompt), 'exactly the context');
  await refused(w, msg(ALICE, { max_tokens: 513 - promptTokens }, {}, prompt), 400, 'one past the context');
  await refused(w, msg(ALICE, { max_tokens: 512 }, { 'X-Reference': 'ctx' }, prompt), 400, 'max_tokens = the context');

  // A refused request does not use up its X-Reference; an accepted one does.
  await refused(w, msg(CAROL, { max_tokens: 11 }, { 'X-Reference': 'again' }), 402, 'unfunded first');
  await deposit(w, CAROL, '12');
  const first = await w.send(msg(CAROL, { max_tokens: 11 }, { 'X-Reference': 'again' }));
  assert.equal(withAction(first, 'Infer-Accepted').length, 1);
  await deposit(w, CAROL, '100');
  await refused(w, msg(CAROL, { max_tokens: 1 }, { 'X-Reference': 'again' }), 409, 'duplicate X-Reference');
  // The same X-Reference from another requester is another request.
  const alices = await w.send(msg(ALICE, { max_tokens: 1 }, { 'X-Reference': 'again' }));
  assert.equal(withAction(alices, 'Infer-Accepted').length, 1);
  // The Infer message id is the default X-Reference and the task id: the same id again, while the task lives, is a replay.
  await refused(w, { ...msg(ALICE, { max_tokens: 1 }), id: first.id }, 409, 'the same message id');
  await refused(w, msg(BOB, { max_tokens: 1 }, { 'X-Reference': first.id }), 402, 'another sender\'s task id as a reference is only a reference');
});

test('Submit-Result refusals change nothing: not the leaseholder 403, wrong job commitment or malformed 400, too large 413, replay 409, unknown task 404', async () => {
  const { w, nodes } = await network({ nodes: 3 });
  const r = await infer(w, ALICE, { max_tokens: 8, seed: 3 });
  const task = r.id;
  const node = one(r, 'Task-Assigned').Target;
  const others = nodes.filter((n) => n !== node);
  const tags = commitTags(w, node, task, [1, 2]);
  const good = JSON.stringify({ tokens: [1, 2] });

  await refused(w, { from: others[0], tags: { ...tags, 'X-Reference': 's' }, data: good }, 403, 'a registered node without the lease', /no lease/);
  await refused(w, { from: ALICE, tags, data: good }, 403, 'the requester');
  await refused(w, { from: node, tags: { ...tags, Task: id43('no task') }, data: good }, 404, 'unknown task');
  await refused(w, { from: node, tags: { ...tags, Task: '' }, data: good }, 404, 'no Task');

  const { 'Result-Commitment': _, ...noResult } = tags;
  const malformed: [string, Record<string, string>, string][] = [
    ['another job commitment', { ...tags, 'Job-Commitment': 'c'.repeat(64) }, good],
    ['no job commitment', { ...tags, 'Job-Commitment': '' }, good],
    ['no Result-Commitment', noResult, good],
    ['Result-Commitment not hex', { ...tags, 'Result-Commitment': 'z'.repeat(64) }, good],
    ['Result-Commitment upper-case hex', { ...tags, 'Result-Commitment': 'A'.repeat(64) }, good],
    ['Result-Commitment short', { ...tags, 'Result-Commitment': 'a'.repeat(63) }, good],
    ['Tokens miscounted', { ...tags, Tokens: '3' }, good],
    ['no Tokens', { ...tags, Tokens: '' }, good],
    ['Data not JSON', tags, 'ab'],
    ['no tokens list', tags, JSON.stringify({ text: 'ab' })],
    ['tokens not ids', tags, JSON.stringify({ tokens: [1, -2] })],
    ['a fractional token', tags, JSON.stringify({ tokens: [1, 2.5] })],
    ['a token outside the vocabulary', tags, JSON.stringify({ tokens: [1, 100000] })],
    ['more than max_tokens', { ...tags, Tokens: '9' }, JSON.stringify({ tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9] })],
  ];
  for (const [label, t, data] of malformed) await refused(w, { from: node, tags: t, data }, 400, label);
  await refused(w, { from: node, tags: { ...tags, Tokens: '200' }, data: JSON.stringify({ tokens: Array.from({ length: 200 }, () => 1) }) }, 413, 'Data larger than max_tokens tokens can be');

  const ok = await w.send({ from: node, tags, data: good });
  assert.deepEqual(ok.Messages.map(actionOf), ['Submit-Result-Response', 'Infer-Response']);
  // The next message draws the audit (a validator's lease); only then is the state still.
  const validator = one(await heartbeat(w, ALICE), 'Task-Assigned').Target;
  const outsider = others.find((n) => n !== validator)!;
  await refused(w, { from: node, tags: { ...tags, 'X-Reference': 'replay' }, data: good }, 409, 'a second result', /already in/);
  await refused(w, { from: node, tags, data: good, id: ok.id }, 409, 'the same message replayed');
  await refused(w, { from: outsider, tags, data: good }, 403, 'still not a leaseholder');
  w.assertConserved('after refused results');
});

test('a node whose stake falls below Min-Stake (here: the owner raises it) is never assigned; only such nodes → 503', async () => {
  const { w, nodes } = await network({ nodes: 3, stake: ['10000', '100', '100'], capacity: 64, deposits: { [ALICE]: '100000' } });
  const [good, low1, low2] = nodes;
  const set = await w.send({ from: OWNER, tags: { Action: 'Set-Params', 'Min-Stake': '10000' } });
  assert.equal(actionOf(set.Messages[0]), 'Set-Params-Response');
  assert.deepEqual((await nodesList(w)).map((n) => [n.address, n.active]), [[good, true], [low1, false], [low2, false]]);
  for (let i = 0; i < 12; i++) {
    const r = await infer(w, ALICE, { max_tokens: 1 }, {}, { hashChain: id43(`chain ${i}`) });
    assert.equal(one(r, 'Task-Assigned').Target, good, `draw ${i}`);
  }
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Nodes: `${low1},${low2}`, 'X-Reference': 'low' } }, 503, 'only under-staked nodes');
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Redundancy: '2' } }, 503, 'redundancy 2 with one staked node');
  // A node below Min-Stake cannot register again (update its entry) either.
  await refused(w, { from: low1, tags: { Action: 'Register-Node', DID: fx.dids[1], Models: fx.modelId } }, 402, 'register below Min-Stake');
  const bare = await World.open();
  await registerModel(bare);
  await deposit(bare, ALICE, '100');
  await refused(bare, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}' } }, 503, 'no node at all');
});

test('Memory: a node is leased no model bigger than the memory it declared (weights and a full K/V cache, as host.model counts them); none big enough → 503; an empty Memory clears it', async () => {
  const { w, nodes } = await network({ nodes: 3, capacity: 64, deposits: { [ALICE]: '100000' } });
  const [small, big, tiny] = nodes;
  const [model] = JSON.parse(one(await w.send({ from: ALICE, tags: { Action: 'Models' } }), 'Models-Response').Data!) as { bytes: number }[];
  // stories260K: 1,040,128 bytes of f32 weights (run.c's count), its tied classifier again (the
  // canonical form lists it as its own tensor: 512 × 64 floats), and 5 layers × 512 positions × 2 × 32 floats of K/V.
  assert.equal(model.bytes, 1_040_128 + 512 * 64 * 4 + 5 * 512 * 2 * 32 * 4);
  const declare = (i: number, memory: string) => w.send({ from: fx.addrs[i], tags: { Action: 'Register-Node', DID: fx.dids[i], Models: fx.modelId, Capacity: '64', Memory: memory } });
  await declare(0, String(model.bytes - 1));
  await declare(1, String(model.bytes));
  await declare(2, '1000');
  const listed = await nodesList(w);
  assert.deepEqual(listed.map((n) => [n.address, n.memory]), [[small, model.bytes - 1], [big, model.bytes], [tiny, 1000]]);
  for (let i = 0; i < 8; i++) {
    const r = await infer(w, ALICE, { max_tokens: 1 }, {}, { hashChain: id43(`memory ${i}`) });
    assert.equal(one(r, 'Task-Assigned').Target, big, `draw ${i}: only the node that holds the model`);
  }
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Nodes: `${small},${tiny}`, 'X-Reference': 'small' } }, 503, 'only nodes too small', /can hold it/);
  // Cleared: no limit declared, so it is leased again.
  await declare(0, '');
  assert.equal((await nodesList(w)).find((n) => n.address === small)!.memory, undefined);
  const r = await infer(w, ALICE, { max_tokens: 1 }, { Nodes: small, 'X-Reference': 'cleared' });
  assert.equal(one(r, 'Task-Assigned').Target, small);
  for (const bad of ['0', '-5', '1.5', '1e9', '99999999999999999', ' 12']) {
    await refused(w, { from: fx.addrs[2], tags: { Action: 'Register-Node', DID: fx.dids[2], Models: fx.modelId, Memory: bad } }, 400, `Memory ${bad}`, /Memory must be/);
  }
});

test('Slash = Min-Stake: a node holds one lease at a time whatever its Capacity; an expired lease\'s Miss-Slash leaves it under Min-Stake, inactive until it stakes again', async () => {
  const { w, nodes } = await network({ nodes: 1, stake: ['100'], capacity: 2, spawn: { 'Max-Wait-Ms': '20000' } });
  const [n] = nodes;
  const r1 = await infer(w, ALICE, { max_tokens: 2 });
  assert.equal(one(r1, 'Task-Assigned').Target, n);
  // A free slot, but no free stake to lock: the second task waits (busy nodes count, so no 503).
  const r2 = await infer(w, ALICE, { max_tokens: 2 });
  assert.deepEqual(r2.Messages.map(actionOf), ['Infer-Accepted']);
  assert.equal(w.state().locked[n], '100');
  const expiry = await heartbeat(w, ALICE, r1.timestamp + 5001);
  assert.deepEqual(expiry.Messages.map((m) => [m.Target, actionOf(m), tagOf(m, 'Quantity')]), [[n, 'Slash-Notice', '10']]);
  let s = w.state();
  assert.deepEqual([s.stakes[n], s.locked[n]], ['90', '0']);
  assert.equal((await nodesList(w))[0].active, false, '90 < Min-Stake');
  await refused(w, inferMessage(ALICE, { max_tokens: 2 }), 503, 'no active node');
  // Nobody takes either task: both fail after Max-Wait-Ms; the requester gets escrow and the slashed 10.
  const timeout = await heartbeat(w, ALICE, expiry.timestamp + 20_001);
  assert.deepEqual(withAction(timeout, 'Infer-Response').map((m) => [tagOf(m, 'Task'), tagOf(m, 'Status'), tagOf(m, 'Code')]), [[r1.id, 'failed', '504'], [r2.id, 'failed', '504']]);
  s = w.state();
  assert.equal(s.deposits[ALICE], '1010');
  assert.deepEqual(s.tasks, {});
  // Staking the difference makes it active again.
  await stake(w, n, '10');
  assert.equal(one(await infer(w, ALICE, { max_tokens: 2 }), 'Task-Assigned').Target, n);
  w.assertConserved('after a Miss-Slash');
});

// ---- 6. leases ----

test('an expired lease costs the node 20 reputation and Miss-Slash and is drawn again elsewhere; its late result is 409; after Max-Attempts the task fails 504, escrow and slashes go back', async () => {
  const { w } = await network({ nodes: 3, spawn: { 'Max-Attempts': '3' } });
  const r = await infer(w, ALICE, { max_tokens: 10 }, { 'X-Reference': 'slow' });
  const task = r.id;
  const first = one(r, 'Task-Assigned').Target;
  assert.equal(w.state().deposits[ALICE], '980');
  const leaseEnd = r.timestamp + 5000;

  // At Lease-End the lease still holds.
  const at = await heartbeat(w, ALICE, leaseEnd);
  assert.deepEqual(at.Messages, []);
  assert.equal(w.state().tasks[task].participants[0].status, 'open');

  // Past it, the next message (the late result itself) expires it and draws another node.
  const late = await commit(w, first, task, [1], { timestamp: leaseEnd + 1 });
  assert.deepEqual(late.Messages.map((m) => [m.Target, actionOf(m)]).slice(0, 1), [[first, 'Slash-Notice']]);
  assert.equal(tagOf(late.Messages[0], 'Quantity'), '10');
  const again = one(late, 'Task-Assigned');
  assert.notEqual(again.Target, first);
  assert.equal(tagOf(again, 'Lease-End'), String(leaseEnd + 1 + 5000));
  assert.equal(tagOf(again, 'Task'), task);
  const refusal = one(late, 'Submit-Result-Error');
  assert.equal(tagOf(refusal, 'Code'), '409');
  assert.match(tagOf(refusal, 'Message')!, /expired/);
  assert.equal(late.Messages.length, 3);
  let s = w.state();
  const firstNode = s.nodes.find((n) => n.address === first)!;
  assert.deepEqual([firstNode.reputation, firstNode.expired, firstNode.open], [80, 1, 0]);
  assert.deepEqual([s.stakes[first], s.locked[first]], ['990', '0']);
  assert.deepEqual(s.tasks[task].participants.map((p) => [p.node, p.status]), [[first, 'expired'], [again.Target, 'open']]);
  assert.deepEqual([s.tasks[task].escrow, s.tasks[task].pot], ['20', '10']);

  // And again, to a third node, never one that held a lease on the task.
  const second = again.Target;
  await refused(w, { from: first, tags: commitTags(w, first, task, [1]), data: '{"tokens":[1]}' }, 409, 'the expired node again');
  const beat2 = await heartbeat(w, second, leaseEnd + 1 + 5000 + 1);
  const third = one(beat2, 'Task-Assigned').Target;
  assert.ok(![first, second].includes(third));

  // The third expiry is the last: Infer-Response 504 with the whole view, escrow and the three Miss-Slashes back.
  const beat3 = await heartbeat(w, ALICE, w.now + 5001);
  const failed = one(beat3, 'Infer-Response');
  assert.equal(failed.Target, ALICE);
  assert.deepEqual(['Code', 'Status', 'X-Reference', 'Task'].map((t) => tagOf(failed, t)), ['504', 'failed', 'slow', task]);
  assert.match(tagOf(failed, 'Message')!, /no verified result: 3 leases expired/);
  const view = viewOf(failed);
  assert.equal(view.status, 'failed');
  assert.deepEqual(view.participants.map((p) => [p.node, p.status]), [first, second, third].map((n) => [n, 'expired']));
  s = w.state();
  assert.equal(s.deposits[ALICE], '1030');
  assert.deepEqual(s.tasks, {});
  assert.deepEqual(s.open, []);
  for (const a of [first, second, third]) {
    const n = s.nodes.find((x) => x.address === a)!;
    assert.deepEqual([n.reputation, n.expired, n.open, s.stakes[a]], [80, 1, 0, '990'], a);
  }
  await refused(w, { from: ALICE, tags: { Action: 'Task', 'X-Reference': 'slow' } }, 404, 'the failed task left the state');
  w.assertConserved('after a failed task');
});

// docs/network.md: "after Max-Attempts × Redundancy expiries ... the task fails". The coordinator
// draws a replacement before it counts the expiries, so while fresh nodes are free a task gets more.
test('Max-Attempts bounds a task\'s leases even when more nodes are free', async () => {
  const { w } = await network({ nodes: 4, spawn: { 'Max-Attempts': '2' } });
  const r = await infer(w, ALICE, { max_tokens: 10 });
  one(r, 'Task-Assigned');
  const beat1 = await heartbeat(w, ALICE, r.timestamp + 5001);
  one(beat1, 'Task-Assigned');
  const beat2 = await heartbeat(w, ALICE, beat1.timestamp + 5001);
  assert.deepEqual(withAction(beat2, 'Task-Assigned').map((m) => m.Target), [], 'two nodes are free, but Max-Attempts is 2: no third lease');
  assert.equal(tagOf(one(beat2, 'Infer-Response'), 'Code'), '504');
});

test('reputation never falls below 1', async () => {
  const { w } = await network({ nodes: 1, spawn: { 'Max-Attempts': '1' }, deposits: { [ALICE]: '100' } });
  for (let i = 0; i < 6; i++) {
    const r = await infer(w, ALICE, { max_tokens: 1 });
    assert.equal(withAction(r, 'Task-Assigned').length, 1);
    const beat = await heartbeat(w, ALICE, w.now + 5001);
    assert.equal(tagOf(one(beat, 'Infer-Response'), 'Code'), '504');
  }
  const s = w.state();
  assert.deepEqual([s.nodes[0].reputation, s.nodes[0].expired], [1, 6]);
  assert.equal(s.stakes[s.nodes[0].address], String(1000 - 6 * 10));
  assert.equal(s.deposits[ALICE], String(100 + 6 * 10), 'each failure returns the escrow and the Miss-Slash');
});

// Max-Wait-Ms counts from when a task began waiting for a node, not from the Infer: long leases
// must not cut a task's Max-Attempts short.
test('with Lease-Ms 300000 a task still gets its Max-Attempts (3) leases', async () => {
  const { w } = await network({ nodes: 3, spawn: { 'Lease-Ms': '300000', 'Max-Attempts': '3' } });
  const r = await infer(w, ALICE, { max_tokens: 10 });
  one(r, 'Task-Assigned');
  const b1 = await heartbeat(w, ALICE, r.timestamp + 300_001);
  one(b1, 'Task-Assigned');
  const b2 = await heartbeat(w, ALICE, b1.timestamp + 300_001);
  assert.deepEqual(withAction(b2, 'Infer-Response').map((m) => tagsOf(m)), [], 'the task must not fail after 2 of 3 leases');
  one(b2, 'Task-Assigned');
});

test('Max-Wait-Ms: a task no node takes fails 504 once it has waited that long, its escrow back', async () => {
  const { w } = await network({ nodes: 1, spawn: { 'Lease-Ms': '60000', 'Max-Wait-Ms': '20000' } });
  const r1 = await infer(w, ALICE, { max_tokens: 4 });
  one(r1, 'Task-Assigned');
  const r2 = await infer(w, ALICE, { max_tokens: 4 }, { 'X-Reference': 'waits' });
  assert.deepEqual(r2.Messages.map(actionOf), ['Infer-Accepted']);
  assert.equal(w.state().deposits[ALICE], '984');
  assert.deepEqual((await heartbeat(w, ALICE, r2.timestamp + 20_000)).Messages, [], 'at Max-Wait-Ms it still waits');
  const gone = await heartbeat(w, ALICE, r2.timestamp + 20_001);
  const failed = one(gone, 'Infer-Response');
  assert.deepEqual(['Task', 'Status', 'Code', 'X-Reference'].map((t) => tagOf(failed, t)), [r2.id, 'failed', '504', 'waits']);
  assert.match(tagOf(failed, 'Message')!, /no node took it within 20000 ms/);
  assert.equal(w.state().deposits[ALICE], '992');
  assert.deepEqual(w.state().open, [r1.id], 'the leased task runs on');
});

// ---- 7. queueing ----

test('with every node busy an Infer waits; a commit that frees a lease starts it in the same outbox', async () => {
  const { w } = await network({ nodes: 2, capacity: 1 });
  const r1 = await infer(w, ALICE, { max_tokens: 4 });
  const r2 = await infer(w, ALICE, { max_tokens: 4 });
  const n1 = one(r1, 'Task-Assigned').Target;
  const n2 = one(r2, 'Task-Assigned').Target;
  assert.notEqual(n1, n2);
  const r3 = await infer(w, ALICE, { max_tokens: 4 }, { 'X-Reference': 'waits' });
  assert.deepEqual(r3.Messages.map(actionOf), ['Infer-Accepted']);
  assert.equal(w.state().tasks[r3.id].pending, 1);
  assert.deepEqual(w.state().tasks[r3.id].participants, []);
  assert.equal(w.state().deposits[ALICE], String(1000 - 3 * 8), 'the waiting task holds its escrow');
  // Other traffic does not start it while both nodes are busy.
  const quiet = await heartbeat(w, n1);
  assert.deepEqual(quiet.Messages, []);

  const result = await commit(w, n2, r2.id, [1, 2]);
  assert.deepEqual(result.Messages.map((m) => [m.Target, actionOf(m)]), [[n2, 'Submit-Result-Response'], [ALICE, 'Infer-Response'], [n2, 'Task-Assigned']]);
  const started = one(result, 'Task-Assigned');
  assert.equal(tagOf(started, 'Task'), r3.id);
  assert.equal(tagOf(started, 'Lease-End'), String(result.timestamp + 5000));
  assert.equal(tagOf(started, 'Job-Commitment'), w.state().tasks[r3.id].commitment);
  assert.equal(w.state().tasks[r3.id].pending, 0);
  assert.equal(w.state().locked[n2], '200', 'the committed lease keeps its lock, the new one adds one');
});

// ---- 8. redundancy and Nodes ----

test('Redundancy=2 with two agreeing honest asserters: two different nodes, one pending answer, both paid at finality (through the window when unaudited)', async () => {
  const net = await network({ nodes: 3, capacity: 4, spawn: UNAUDITED });
  const { w, players } = net;
  const r = await infer(w, ALICE, { max_tokens: 6 }, { Redundancy: '2', 'X-Reference': 'agree' });
  const leases = withAction(r, 'Task-Assigned');
  assert.equal(leases.length, 2);
  const [a, b] = leases.map((m) => m.Target);
  assert.notEqual(a, b);
  assert.equal(w.state().tasks[r.id].escrow, '18', 'price × max_tokens × (2 asserters + 1 validator)');
  const first = (await answer(w, players.find((p) => p.address === a)!, leases[0]))!;
  assert.deepEqual(first.Messages.map(actionOf), ['Submit-Result-Response', 'Infer-Response']);
  assert.equal(w.state().tasks[r.id].status, 'assigned', 'the second asserter is still running');
  const second = (await answer(w, players.find((p) => p.address === b)!, leases[1]))!;
  assert.deepEqual(second.Messages.map(actionOf), ['Submit-Result-Response'], 'one pending answer per task');
  assert.equal(w.state().tasks[r.id].status, 'committed');
  const responses = await play(net, second, { tickMs: 500 });
  const fin = responses.at(-1)!;
  assert.deepEqual([tagOf(fin, 'Status'), tagOf(fin, 'X-Reference')], ['final', 'agree']);
  const view = viewOf(fin);
  assert.deepEqual(view.participants.map((p) => [p.node, p.role, p.status]), [[a, 'asserter', 'revealed'], [b, 'asserter', 'revealed']]);
  assert.equal(view.participants[0].traceRoot, view.participants[1].traceRoot);
  assert.equal(view.disputes.length, 0);
  assert.equal(view.audited, false);
  assert.ok(view.windowEnd !== null && view.endedAt! > view.windowEnd, 'final once the window passed');
  const n = view.tokens!.length;
  const s = w.state();
  assert.deepEqual([s.earnings[a], s.earnings[b]], [String(n), String(n)]);
  assert.equal(s.deposits[ALICE], String(1000 - 2 * n));
  w.assertConserved('after a redundant task');
});

test('Redundancy=2 with a lying asserter: the two roots are compared, the dispute convicts the liar, a validator outside Nodes confirms the honest result', async () => {
  const net = await network({ behaviours: ['honest', 'wrong-token', 'honest'], spawn: UNAUDITED });
  const { w, players, nodes } = net;
  const r = await infer(w, ALICE, { max_tokens: 8 }, { Redundancy: '2', Nodes: `${nodes[0]},${nodes[1]}` });
  assert.deepEqual(withAction(r, 'Task-Assigned').map((m) => m.Target).sort(), [nodes[0], nodes[1]].sort());
  const responses = await play(net, r);
  const fin = responses.at(-1)!;
  assert.equal(tagOf(fin, 'Status'), 'final');
  const view = viewOf(fin);
  const honest = players[0].runs.get(r.id)!;
  assert.equal(view.receipt!.traceRoot, honest.root);
  assert.deepEqual(view.tokens, honest.tokens);
  assert.equal(view.disputes.length, 1);
  assert.equal(view.disputes[0].outcome!.winner, nodes[0]);
  const byNode = new Map(view.participants.map((p) => [p.node, p]));
  assert.equal(byNode.get(nodes[1])!.status, 'slashed');
  assert.equal(byNode.get(nodes[2])?.role, 'validator', 'the requester chose its asserters, never its validators');
  assert.equal(byNode.get(nodes[2])!.traceRoot, honest.root);
  assert.equal(w.state().earnings[nodes[1]] ?? '0', '0', 'the liar is paid nothing');
  w.assertConserved('after a redundant dispute');
});

test('Nodes restricts the draw of asserters, whatever the Hash-Chain', async () => {
  const { w, nodes } = await network({ nodes: 3, capacity: 16 });
  const [, n2, n3] = nodes;
  for (let i = 0; i < 6; i++) {
    const r = await infer(w, ALICE, { max_tokens: 1 }, { Nodes: n3 }, { hashChain: id43(`only n3 ${i}`) });
    assert.equal(one(r, 'Task-Assigned').Target, n3);
  }
  const pair = await infer(w, ALICE, { max_tokens: 1 }, { Nodes: `${n2}, ${n3}`, Redundancy: '2' });
  assert.deepEqual(withAction(pair, 'Task-Assigned').map((m) => m.Target).sort(), [n2, n3].sort());
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Nodes: n3, Redundancy: '2' } }, 503, 'two leases from one node');
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Nodes: id43('a stranger') } }, 503, 'Nodes names no registered node');
});

// ---- 9. unstaking ----

test('Unstake starts a cool-down at once; before it ends 409; after it, Unstake-Completed, a token Transfer of the stake, and the node leaves the node list', async () => {
  const { w, nodes } = await network({ nodes: 2, stake: ['500', '1000'], capacity: 8, spawn: { 'Lease-Ms': '60000' } });
  const [n1, n2] = nodes;
  const started = await w.send({ from: n1, tags: { Action: 'Unstake', 'X-Reference': 'u-1' } });
  assert.equal(started.Messages.length, 1);
  assert.equal(started.Messages[0].Target, n1);
  assert.deepEqual(tagsOf(started.Messages[0]), { Action: 'Unstake-Started', Reference: started.id, 'X-Reference': 'u-1', 'Unstake-At': String(started.timestamp + 10_000) });
  const listed = (await nodesList(w)).find((n) => n.address === n1)!;
  assert.equal(listed.active, false);
  // No new task for it.
  for (let i = 0; i < 6; i++) {
    const r = await infer(w, ALICE, { max_tokens: 1 }, {}, { hashChain: id43(`unstake ${i}`) });
    assert.equal(one(r, 'Task-Assigned').Target, n2);
  }
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":1}', Nodes: n1 } }, 503, 'only the unstaking node');

  await refused(w, { from: n1, tags: { Action: 'Unstake', 'X-Reference': 'u-2' }, timestamp: started.timestamp + 9_999 }, 409, 'still cooling down', /cooling down/);
  const done = await w.send({ from: n1, tags: { Action: 'Unstake' }, timestamp: started.timestamp + 10_000 });
  assert.equal(done.Messages.length, 2);
  const transfer = one(done, 'Transfer');
  assert.equal(transfer.Target, TOKEN);
  assert.deepEqual([tagOf(transfer, 'Recipient'), tagOf(transfer, 'Quantity'), tagOf(transfer, 'X-Reason')], [n1, '500', 'Unstake']);
  const completed = one(done, 'Unstake-Completed');
  assert.equal(completed.Target, n1);
  assert.equal(tagOf(completed, 'Quantity'), '500');
  assert.equal(BigInt(w.state().stakes[n1]), 0n);
  assert.deepEqual((await nodesList(w)).map((n) => n.address), [n2], 'no stake, no lease: the entry is dropped');
  await refused(w, { from: n1, tags: { Action: 'Register-Node', DID: fx.dids[0], Models: fx.modelId } }, 402, 'registering again needs stake again');
  await refused(w, { from: n1, tags: { Action: 'Unstake' } }, 409, 'nothing staked');
  await refused(w, { from: BOB, tags: { Action: 'Unstake' } }, 409, 'never staked');
  w.assertConserved('after an unstake');
});

test('locked stake cannot be unstaked: not while the lease runs, not while the committed result waits for finality; then the whole stake comes back', async () => {
  const net = await network({ nodes: 1, spawn: { ...UNAUDITED, 'Lease-Ms': '60000' } });
  const { w, nodes } = net;
  const [n] = nodes;
  const r = await infer(w, ALICE, { max_tokens: 2 });
  assert.equal(one(r, 'Task-Assigned').Target, n);
  const s = await w.send({ from: n, tags: { Action: 'Unstake' } });
  one(s, 'Unstake-Started');
  await refused(w, { from: n, tags: { Action: 'Unstake' }, timestamp: s.timestamp + 10_000 }, 409, 'holds a lease', /100 of the stake is locked/);
  // The lease runs on: its result is still accepted, its lock held until the result is final.
  const rest = await until(net, r, () => w.state().tasks[r.id]?.status === 'challengeable');
  await refused(w, { from: n, tags: { Action: 'Unstake' } }, 409, 'the result is not final', /locked/);
  const responses = await play(net, { ...r, Messages: rest });
  assert.equal(tagOf(responses.at(-1)!, 'Status'), 'final');
  const done = await w.send({ from: n, tags: { Action: 'Unstake' } });
  assert.equal(tagOf(one(done, 'Transfer'), 'Quantity'), '1000');
  assert.deepEqual(w.state().nodes, [], 'the node left the list');
  // Its earnings stay its own.
  const earned = w.state().earnings[n];
  assert.ok(BigInt(earned) > 0n);
  const pay = await w.send({ from: n, tags: { Action: 'Withdraw' } });
  assert.equal(tagOf(one(pay, 'Transfer'), 'Quantity'), earned);
  w.assertConserved('after unstaking');
});

test('a node that loses all its stake (slashed for a missed reveal) leaves the node list', async () => {
  const net = await network({ behaviours: ['no-reveal', 'honest', 'honest'], stake: ['100', '1000', '1000'], deposits: { [ALICE]: '1000' } });
  const { w, nodes } = net;
  const [lazy] = nodes;
  const r = await infer(w, ALICE, { max_tokens: 8 }, { Nodes: lazy });
  assert.equal(one(r, 'Task-Assigned').Target, lazy);
  const slashes: OutboxMessage[] = [];
  const send = w.send.bind(w);
  w.send = async (m) => {
    const sent = await send(m);
    slashes.push(...withAction(sent, 'Slash-Notice'));
    return sent;
  };
  const responses = await play(net, r, { tickMs: 500 });
  assert.deepEqual(slashes.map((m) => [m.Target, tagOf(m, 'Quantity'), tagOf(m, 'Reason')]), [[lazy, '100', 'did not reveal its result in time']]);
  const fin = responses.at(-1)!;
  assert.equal(tagOf(fin, 'Status'), 'final');
  const view = viewOf(fin);
  assert.equal(view.participants[0].status, 'slashed');
  assert.notEqual(view.receipt!.node, lazy, 'the validator\'s revealed result is the result');
  const st = w.state();
  assert.equal(st.stakes[lazy], '0');
  assert.ok(!st.nodes.some((n) => n.address === lazy), 'the entry is gone');
  assert.equal(st.totals.slashed, '100');
  await refused(w, { from: lazy, tags: { Action: 'Register-Node', DID: fx.dids[0], Models: fx.modelId } }, 402, 'no stake to register with');
  w.assertConserved('after a slash to zero');
});

// ---- 10. parameters ----

/** Every parameter tag, each with a value unlike its default and SPAWN's, together within the economic rule: 0.5·(3·100 + 700) ≥ 1.2·2·100. */
const ALL_PARAMS: Record<string, string> = {
  'Price-Per-Token': '3', 'Compute-Cost-Per-Token': '2', 'Audit-Ppm': '500000', Validators: '2', Slash: '700', 'Miss-Slash': '70', 'Margin-Ppm': '200000', 'Max-Tokens': '100',
  'Min-Stake': '800', 'Challenge-Window-Ms': '4000', 'Challenge-Bond': '900', 'Round-Bond': '7', 'Clock-Ms': '6000', 'Dispute-Arity': '4', 'Reveal-Ms': '7000', 'Canary-Ppm': '1234',
  'Lease-Ms': '8000', 'Unstake-Cooldown-Ms': '9000', 'Max-Prompt-Bytes': '2000', 'Max-Attempts': '4', 'Max-Wait-Ms': '11000', 'Max-Nodes': '50',
};
const ALL_EXPECTED: Params = {
  price: '3', computeCost: '2', auditPpm: 500000, validators: 2, slash: '700', missSlash: '70', marginPpm: 200000, maxTokens: 100, minStake: '800', challengeWindowMs: 4000,
  challengeBond: '900', roundBond: '7', clockMs: 6000, arity: 4, revealMs: 7000, canaryPpm: 1234, leaseMs: 8000, cooldownMs: 9000, maxPromptBytes: 2000, maxAttempts: 4, maxWaitMs: 11000,
  maxNodes: 50,
};

test('Params and Set-Params: every tag round-trips (spawn tags and Set-Params alike); Info answers with them; bad values and the non-owner are refused', async () => {
  const w = await World.open();
  const params = async (): Promise<Params> => {
    const r = await w.send({ from: ALICE, tags: { Action: 'Params', 'X-Reference': 'p' } });
    assert.deepEqual(tagsOf(r.Messages[0]), { Action: 'Params-Response', Reference: r.id, 'X-Reference': 'p' });
    return JSON.parse(r.Messages[0].Data!) as Params;
  };
  const spawned = await params();
  assert.deepEqual(spawned, {
    ...spawned, minStake: '100', slash: '100', missSlash: '10', challengeBond: '100', roundBond: '5', auditPpm: 1000000, leaseMs: 5000, revealMs: 5000, clockMs: 5000,
    challengeWindowMs: 3000, cooldownMs: 10000,
  });
  assert.deepEqual(spawned, w.state().params);
  assert.deepEqual(Object.keys(ALL_EXPECTED).sort(), Object.keys(spawned).sort(), 'ALL_PARAMS names every parameter');
  for (const key of Object.keys(spawned) as (keyof Params)[]) assert.notEqual(ALL_EXPECTED[key], spawned[key], `${key} changes`);

  // Refusals first (each leaves the state as it was).
  await refused(w, { from: ALICE, tags: { Action: 'Set-Params', ...ALL_PARAMS } }, 403, 'not the owner', /owner/);
  await refused(w, { from: ALICE, owner: OWNER, tags: { Action: 'Set-Params', 'Lease-Ms': '1' } }, 403, 'pushed for the owner by someone else');
  const bad: [string, string, RegExp][] = [
    ['Slash', '01', /Slash must be a whole number/], ['Slash', '-1', /whole number/], ['Price-Per-Token', '1.5', /whole number/], ['Round-Bond', '', /whole number/],
    ['Validators', '0', /Validators must be a whole number in 1\.\.3/], ['Validators', '4', /1\.\.3/], ['Dispute-Arity', '1', /2\.\.64/], ['Dispute-Arity', '65', /2\.\.64/],
    ['Audit-Ppm', '1000001', /0\.\.1000000/], ['Canary-Ppm', '1000001', /0\.\.1000000/], ['Max-Attempts', '0', /1\.\.100/], ['Max-Attempts', '101', /1\.\.100/],
    ['Max-Nodes', '0', /1\.\.100000/], ['Lease-Ms', '0', /Lease-Ms/], ['Clock-Ms', '86400001', /Clock-Ms/], ['Reveal-Ms', 'x', /Reveal-Ms/], ['Max-Tokens', '0', /Max-Tokens/],
    ['Margin-Ppm', '10000001', /Margin-Ppm/], ['Max-Wait-Ms', ' 5', /Max-Wait-Ms/], ['Miss-Slash', '101', /Miss-Slash \(101\) cannot exceed Slash \(100\)/],
  ];
  for (const [tag, value, pattern] of bad) await refused(w, { from: OWNER, tags: { Action: 'Set-Params', [tag]: value } }, 400, `${tag}=${JSON.stringify(value)}`, pattern);
  await refused(w, { from: OWNER, tags: { Action: 'Set-Params', 'Audit-Ppm': '100000' } }, 400, 'p too small for S', /honesty must pay/);

  // No tags: nothing changes, and the answer says so.
  const none = await w.send({ from: OWNER, tags: { Action: 'Set-Params' } });
  assert.deepEqual(JSON.parse(none.Messages[0].Data!), spawned);

  const set = await w.send({ from: OWNER, tags: { Action: 'Set-Params', ...ALL_PARAMS, 'X-Reference': 's-1' } });
  assert.deepEqual(set.Messages.map((m) => [m.Target, tagsOf(m)]), [[OWNER, { Action: 'Set-Params-Response', Reference: set.id, 'X-Reference': 's-1' }]]);
  assert.deepEqual(JSON.parse(set.Messages[0].Data!), ALL_EXPECTED);
  assert.deepEqual(w.state().params, ALL_EXPECTED);
  assert.deepEqual(await params(), ALL_EXPECTED);

  const info = await w.send({ from: BOB, tags: { Action: 'Info' } });
  assert.deepEqual(tagsOf(info.Messages[0]), { Action: 'Info-Response', Reference: info.id, Token: TOKEN, Owner: OWNER, 'Min-Stake': '800', 'Price-Per-Token': '3', 'Lease-Ms': '8000' });
  assert.deepEqual(JSON.parse(info.Messages[0].Data!), {
    ...ALL_EXPECTED, token: TOKEN, owner: OWNER, models: 0, nodes: 0, openTasks: 0, totals: { final: 0, failed: 0, disputes: 0, slashed: '0', canaries: 0 },
  });

  // The same tags at spawn give the same parameters; a set the rule refuses is no process at all.
  const booted = await World.open(ALL_PARAMS);
  assert.deepEqual(booted.state().params, ALL_EXPECTED);
  const badBoot = await openProcess(source, { owner: OWNER, tags: { ...SPAWN, 'Dispute-Arity': '65' }, extensions: fx.ext });
  assert.match(badBoot.boot.Error ?? '', /parameters are refused: Dispute-Arity must be a whole number in 2\.\.64/);
  const noToken = await openProcess(source, { owner: OWNER, tags: { 'Min-Stake': '100' }, extensions: fx.ext });
  assert.match(noToken.boot.Error ?? '', /Token tag/);
});

test('Set-Params takes effect on the next message: Max-Tokens, Max-Prompt-Bytes and Lease-Ms', async () => {
  const { w } = await network({ nodes: 1, deposits: { [ALICE]: '10000' } });
  await w.send({ from: OWNER, tags: { Action: 'Set-Params', 'Max-Tokens': '64', 'Max-Prompt-Bytes': '8', 'Lease-Ms': '1234' } });
  await refused(w, inferMessage(ALICE, { max_tokens: 65 }, {}, {}, 'Hi'), 400, 'over the new Max-Tokens', /at most 64/);
  await refused(w, inferMessage(ALICE, { max_tokens: 4 }, {}, {}, 'Once upon'), 413, 'over the new Max-Prompt-Bytes');
  const r = await infer(w, ALICE, { max_tokens: 64 }, {}, {}, 'Once');
  assert.equal(tagOf(one(r, 'Task-Assigned'), 'Lease-End'), String(r.timestamp + 1234));
});

// ---- 11. canaries ----

/**
 * A network with a known answer (an audited final task), then audits off (C = 0 keeps the rule),
 * a task while the owner has no deposit (no canary), then the owner's deposit: the next Infer
 * also issues a canary (Canary-Ppm 10⁶). Returns the canary's first messages.
 */
async function canaryNetwork(): Promise<{ net: TestNet; known: { root: string; commitment: string }; r: Sent; canary: OutboxMessage }> {
  const net = await network({ nodes: 3, spawn: { 'Canary-Ppm': '1000000' }, deposits: { [ALICE]: '100000' } });
  const { w, nodes } = net;
  const r0 = await infer(w, ALICE, { max_tokens: 8 });
  assert.equal(w.state().totals.canaries, 0, 'nothing is known yet');
  const v0 = viewOf((await play(net, r0)).at(-1)!);
  assert.deepEqual([v0.status, v0.audited], ['final', true]);
  const known = { root: v0.receipt!.traceRoot, commitment: v0.receipt!.commitment };
  assert.deepEqual(w.state().known.map((k) => [k.prompt, k.root, k.commitment]), [[PROMPT, known.root, known.commitment]]);
  await w.send({ from: OWNER, tags: { Action: 'Set-Params', ...UNAUDITED } });

  const r1 = await infer(w, ALICE, { max_tokens: 4 }, {}, {}, 'A dog');
  assert.deepEqual([w.state().totals.canaries, Object.keys(w.state().tasks)], [0, [r1.id]], 'no canary without the owner\'s deposit');
  await play(net, r1, { tickMs: 500 });
  await deposit(w, OWNER, '1000');

  // The request takes the node it names; the canary goes to a free one.
  const r = await infer(w, ALICE, { max_tokens: 4 }, { Nodes: nodes[0] }, {}, 'A bird');
  assert.deepEqual(r.Messages.map((m) => [m.Target === nodes[0] ? 'named' : m.Target === ALICE ? 'requester' : 'other', actionOf(m)]), [
    ['named', 'Task-Assigned'], ['requester', 'Infer-Accepted'], ['other', 'Task-Assigned'],
  ]);
  const canary = r.Messages[2];
  const s = w.state();
  assert.equal(s.totals.canaries, 1);
  const task = s.tasks[tagOf(canary, 'Task')!];
  assert.deepEqual([task.requester, task.prompt, task.commitment, task.escrow, task.canary], [OWNER, PROMPT, known.commitment, '16', known.root]);
  assert.equal(s.deposits[OWNER], '984', 'paid from the owner\'s deposit: price × 8 × (1 + 1 validator)');
  // A canary's lease looks like any other.
  assert.deepEqual(Object.keys(assignmentOf(canary)).sort(), Object.keys(assignmentOf(r.Messages[0])).sort());
  assert.deepEqual(Object.keys(tagsOf(canary)).sort(), Object.keys(tagsOf(r.Messages[0])).sort());
  return { net, known, r, canary };
}

test('a canary repeats a known job, paid from the owner\'s deposit; a node that answers it right is final with audited credit', async () => {
  const { net, known, r, canary } = await canaryNetwork();
  const { w } = net;
  const node = canary.Target;
  const before = structuredClone(w.state().nodes.find((n) => n.address === node)!);
  const responses = await play(net, r, { tickMs: 500 });
  const toOwner = responses.filter((m) => m.Target === OWNER);
  assert.deepEqual(toOwner.map((m) => tagOf(m, 'Status')), ['pending', 'final']);
  const view = viewOf(toOwner[1]);
  assert.equal(view.receipt!.traceRoot, known.root);
  assert.deepEqual(view.participants.map((p) => [p.node, p.role, p.status]), [[node, 'asserter', 'revealed']], 'no validator was needed');
  const s = w.state();
  const after = s.nodes.find((n) => n.address === node)!;
  assert.deepEqual([after.audited, after.reputation], [before.audited + 1, Math.min(200, before.reputation + 1)], 'a passed canary counts as an audited agreement');
  const n = view.tokens!.length;
  assert.equal(s.deposits[OWNER], String(1000 - n));
  assert.equal(s.known.length, 1, 'a canary is no new known answer');
  assert.deepEqual(s.tasks, {});
  w.assertConserved('after a canary');
});

test('a canary answered wrongly is audited: the dispute convicts the node, the known answer is the final one', async () => {
  const { net, known, r, canary } = await canaryNetwork();
  const { w, players } = net;
  const liar = players.find((p) => p.address === canary.Target)!;
  liar.behaviour = 'wrong-token';
  const stakeBefore = BigInt(w.state().stakes[liar.address]);
  const responses = await play(net, r, { tickMs: 500 });
  const fin = responses.filter((m) => m.Target === OWNER).at(-1)!;
  assert.deepEqual([tagOf(fin, 'Status'), tagOf(fin, 'Corrected')], ['final', 'true']);
  const view = viewOf(fin);
  assert.equal(view.receipt!.traceRoot, known.root);
  assert.equal(view.audited, true);
  assert.deepEqual(view.participants.map((p) => [p.role, p.status]), [['asserter', 'slashed'], ['validator', 'revealed']]);
  assert.equal(view.disputes.length, 1);
  assert.equal(view.disputes[0].outcome!.winner, view.participants[1].node);
  const s = w.state();
  assert.ok(BigInt(s.stakes[liar.address]) <= stakeBefore - 100n, 'the liar lost its lock');
  assert.equal(s.totals.disputes, 1);
  // The requester's own task (audits off) went through its window untouched.
  assert.equal(tagOf(responses.filter((m) => m.Target === ALICE).at(-1)!, 'Status'), 'final');
  w.assertConserved('after a failed canary');
});

// ---- 12. references and ended tasks ----

test('references are unique among live tasks: an X-Reference is free again once its task ended; the Task dry-run of an ended task is 404', async () => {
  const net = await network({ nodes: 2, spawn: UNAUDITED });
  const { w } = net;
  const r = await infer(w, ALICE, { max_tokens: 4 }, { 'X-Reference': 'again' });
  await refused(w, inferMessage(ALICE, { max_tokens: 4 }, { 'X-Reference': 'again' }), 409, 'while the task lives', /already being served/);
  const live = await w.p.dryRun({ from: ALICE, tags: { Action: 'Task', 'X-Reference': 'again' }, timestamp: w.now + 1 });
  assert.deepEqual([tagOf(live.Messages[0], 'Action'), tagOf(live.Messages[0], 'Task')], ['Task-Response', r.id]);
  const responses = await play(net, r, { tickMs: 500 });
  assert.equal(tagOf(responses.at(-1)!, 'Status'), 'final');
  for (const tags of [{ Task: r.id }, { 'X-Reference': 'again' }] as Record<string, string>[]) {
    const dry = await w.p.dryRun({ from: ALICE, tags: { Action: 'Task', ...tags }, timestamp: w.now + 1 });
    assert.deepEqual(['Action', 'Code'].map((t) => tagOf(dry.Messages[0], t)), ['Task-Error', '404'], JSON.stringify(tags));
    assert.match(tagOf(dry.Messages[0], 'Message')!, /ended task is in its last Infer-Response/);
  }
  assert.deepEqual(w.state().references, {});
  const again = await infer(w, ALICE, { max_tokens: 4 }, { 'X-Reference': 'again' });
  one(again, 'Infer-Accepted');
  const found = await w.send({ from: ALICE, tags: { Action: 'Task', 'X-Reference': 'again' } });
  assert.equal(tagOf(found.Messages[0], 'Task'), again.id);
  assert.deepEqual(Object.values(w.state().references), [again.id]);
});

// ---- 13. money conservation ----

type MoneyOp =
  | { k: 'deposit'; who: number; q: number }
  | { k: 'stake'; node: number; q: number }
  | { k: 'forged'; who: number; q: number }
  | { k: 'infer'; who: number; max: number; red: number; nodes: boolean }
  | { k: 'deliver'; pick: number; n: number }
  | { k: 'wait'; ms: number }
  | { k: 'withdraw'; who: number; q: number | null }
  | { k: 'unstake'; node: number };

const moneyOp: fc.Arbitrary<MoneyOp> = fc.oneof(
  fc.record({ k: fc.constant('deposit' as const), who: fc.nat(2), q: fc.integer({ min: 0, max: 300 }) }),
  fc.record({ k: fc.constant('stake' as const), node: fc.nat(3), q: fc.integer({ min: 0, max: 300 }) }),
  fc.record({ k: fc.constant('forged' as const), who: fc.nat(2), q: fc.integer({ min: 1, max: 100 }) }),
  {
    arbitrary: fc.record({ k: fc.constant('infer' as const), who: fc.nat(2), max: fc.integer({ min: 1, max: 10 }), red: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 3 })), nodes: fc.boolean() }),
    weight: 3,
  },
  // Answer up to n of the messages the coordinator sent to the nodes, picked anywhere in the mailbox (any order, late, or never).
  { arbitrary: fc.record({ k: fc.constant('deliver' as const), pick: fc.nat(50), n: fc.integer({ min: 1, max: 4 }) }), weight: 8 },
  fc.record({ k: fc.constant('wait' as const), ms: fc.integer({ min: 1, max: 12_000 }) }),
  fc.record({ k: fc.constant('withdraw' as const), who: fc.nat(6), q: fc.option(fc.integer({ min: 0, max: 400 })) }),
  { arbitrary: fc.record({ k: fc.constant('unstake' as const), node: fc.nat(3) }), weight: 2 },
);

const AMOUNT = /^(0|[1-9][0-9]*)$/;

test('money is conserved: Σ deposits + Σ earnings + Σ stakes + Σ live escrow and pots = Σ credited − Σ paid out, after every message of any sequence', async () => {
  const requesters = [ALICE, BOB, CAROL];
  const cheats: Behaviour[] = ['honest', 'wrong-token', 'garbage', 'silent', 'no-reveal'];
  // What the runs exercised, so that the property is known not to hold vacuously.
  const seen = { accepted: 0, pending: 0, final: 0, failed: 0, expired: 0, slashed: 0, disputes: 0, withdrawn: 0, unstaked: 0, refused: 0 };
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...cheats), fc.constantFrom(...cheats), fc.array(moneyOp, { minLength: 5, maxLength: 25 }), fc.integer({ min: 1, max: 2500 }), async (b2, b3, ops, step) => {
      // p = ½ with S = 200: ½·(2·512 + 200) ≥ 1.1·512.
      const spawn = { 'Price-Per-Token': '2', 'Max-Attempts': '2', 'Audit-Ppm': '500000', Slash: '200', 'Min-Stake': '200', 'Challenge-Bond': '200', 'Miss-Slash': '20', 'Max-Wait-Ms': '20000', 'Unstake-Cooldown-Ms': '2000' };
      const net = await network({ behaviours: ['honest', 'honest', b2, b3], stake: ['600', '600', '400', '400'], capacity: 2, deposits: { [ALICE]: '300', [BOB]: '200' }, spawn });
      const { w, players, nodes } = net;
      const byAddress = new Map(players.map((p) => [p.address, p]));
      const account = (i: number): string => (i < 3 ? requesters[i] : nodes[i - 3]);
      const mailbox: OutboxMessage[] = [];
      let label = 'setup';
      const check = (r: Sent): void => {
        w.assertConserved(label);
        const s = w.state();
        for (const record of [s.deposits, s.earnings, s.stakes, s.locked]) for (const v of Object.values(record)) assert.match(v, AMOUNT, label);
        assert.deepEqual([...s.open].sort(), Object.keys(s.tasks).sort(), `live tasks are the open ones ${label}`);
        for (const t of Object.values(s.tasks)) {
          assert.ok(t.status !== 'final' && t.status !== 'failed', `an ended task left the state ${label}`);
          assert.match(t.escrow, AMOUNT);
          assert.match(t.pot, AMOUNT);
        }
        for (const n of s.nodes) {
          const open = Object.values(s.tasks).reduce((a, t) => a + t.participants.filter((p) => p.node === n.address && p.status === 'open').length, 0);
          assert.equal(n.open, open, `${n.address}: open count ${label}`);
          assert.ok(n.open <= n.capacity);
          assert.ok(n.reputation >= 1 && n.reputation <= 200);
          assert.ok(BigInt(s.stakes[n.address] ?? '0') > 0n || BigInt(s.locked[n.address] ?? '0') > 0n || n.open > 0, `${n.address}: an entry with no stake and no lease is dropped ${label}`);
        }
        for (const m of r.Messages) {
          assert.ok(!(m.Target === TOKEN && actionOf(m) !== 'Transfer'), `only Transfers go to the token: ${JSON.stringify(m)}`);
          const action = actionOf(m);
          if (action === 'Infer-Accepted') seen.accepted++;
          if (action === 'Withdraw-Response') seen.withdrawn++;
          if (action === 'Unstake-Completed') seen.unstaked++;
          if (action === 'Dispute-Round') seen.disputes++;
          if (action === 'Slash-Notice') seen.slashed++;
          if (action === 'Slash-Notice' && /expired/.test(tagOf(m, 'Reason')!)) seen.expired++;
          if (tagOf(m, 'Code') !== undefined && action !== 'Infer-Response') seen.refused++;
          if (action === 'Infer-Response') {
            const status = tagOf(m, 'Status')!;
            if (status === 'pending' || status === 'final' || status === 'failed') seen[status]++;
          }
          if (byAddress.has(m.Target)) mailbox.push(m);
        }
      };
      const send = w.send.bind(w);
      w.send = async (m) => {
        const r = await send(m);
        check(r);
        return r;
      };
      for (const [i, o] of ops.entries()) {
        label = `after op ${i} ${JSON.stringify(o)}`;
        const timestamp = w.now + step;
        switch (o.k) {
          case 'deposit':
            await w.credit(requesters[o.who], String(o.q), 'Deposit');
            break;
          case 'stake':
            await w.credit(nodes[o.node], String(o.q), 'Stake');
            break;
          case 'forged':
            await w.send({ from: requesters[o.who], owner: MU, timestamp, tags: { Action: 'Credit-Notice', Sender: requesters[o.who], Quantity: String(o.q), 'X-Action': 'Deposit' } });
            break;
          case 'infer':
            await w.send(inferMessage(requesters[o.who], { max_tokens: o.max }, { Redundancy: String(o.red), ...(o.nodes ? { Nodes: `${nodes[0]},${nodes[2]}` } : {}) }, { timestamp }, `${PROMPT} ${i}`));
            break;
          case 'deliver':
            for (let j = 0; j < o.n && mailbox.length > 0; j++) {
              const [m] = mailbox.splice(o.pick % mailbox.length, 1);
              await answer(w, byAddress.get(m.Target)!, m);
            }
            break;
          case 'wait':
            await heartbeat(w, nodes[0], w.now + o.ms);
            break;
          case 'withdraw':
            await w.send({ from: account(o.who), timestamp, tags: { Action: 'Withdraw', ...(o.q === null ? {} : { Quantity: String(o.q) }) } });
            break;
          case 'unstake':
            await w.send({ from: nodes[o.node], timestamp, tags: { Action: 'Unstake' } });
            break;
        }
      }
      // Then everyone answers everything until every task has ended: nothing stays locked.
      label = 'draining';
      await play(net, { Messages: mailbox.splice(0) } as unknown as Sent, { tickMs: 500, maxMessages: 1000 });
      const s = w.state();
      assert.deepEqual(s.tasks, {});
      assert.deepEqual(Object.values(s.locked).filter((v) => v !== '0'), []);
      assert.equal(sum(s.deposits) + sum(s.earnings) + sum(s.stakes), w.credited - w.paid);
    }),
    { numRuns: 25, seed: 20240601 },
  );
  for (const [what, count] of Object.entries(seen)) assert.ok(count > 0, `no run had ${what}: ${JSON.stringify(seen)}`);
});

// ---- 14. determinism ----

test('the same messages (ids, timestamps, hash chains) give byte-identical state and outboxes; the Hash-Chain picks the node', async () => {
  const script = async (): Promise<string[]> => {
    // p = ½ with S = 700: ½·(512 + 700) ≥ 1.1·512. Some results are audited, some go through the window; one node lies.
    const spawn = { 'Audit-Ppm': '500000', Slash: '700', 'Min-Stake': '700', 'Challenge-Bond': '700', 'Miss-Slash': '70' };
    const net = await network({ behaviours: ['honest', 'honest', 'wrong-token', 'honest'], capacity: 2, stake: ['1000', '2000', '3000', '4000'], id: 'D'.repeat(43), deposits: { [ALICE]: '500', [BOB]: '500' }, spawn });
    const { w, nodes } = net;
    const infers: Sent[] = [];
    for (let i = 0; i < 5; i++) infers.push(await infer(w, i % 2 ? BOB : ALICE, { max_tokens: 4 + i, seed: i }, { Redundancy: String(1 + (i % 2)) }));
    await play(net, { Messages: infers.flatMap((r) => r.Messages) } as unknown as Sent, { tickMs: 300 });
    await w.send({ from: nodes[3], tags: { Action: 'Withdraw' } });
    return [...w.log.map((r) => JSON.stringify([r.id, r.timestamp, r.Messages, r.Output])), JSON.stringify(w.state())];
  };
  const a = await script();
  const b = await script();
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) assert.equal(a[i], b[i], `step ${i}`);
  const end = JSON.parse(a.at(-1)!) as { totals: { final: number; failed: number }; tasks: object };
  assert.equal(end.totals.final + end.totals.failed, 5);
  assert.deepEqual(end.tasks, {});

  // Same state, same message, another Hash-Chain: another node may be drawn; the same chain, the same node.
  const { w } = await network({ nodes: 3, capacity: 4, stake: ['1000', '1000', '1000'] });
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
});

test('draws are weighted by stake × reputation', async () => {
  const { w, nodes } = await network({ nodes: 2, capacity: 64, stake: ['100', '900'] });
  const [light, heavy] = nodes;
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

// ---- 15. sender-chosen keys ----

test('sender-chosen keys that are Object.prototype members get clean answers, never a crash', async () => {
  const { w, nodes } = await network({ nodes: 1 });
  const r = await infer(w, ALICE, { max_tokens: 2 });
  one(r, 'Task-Assigned');
  const trace = { 'Trace-Root': 'a'.repeat(64), Trace: id43('a trace') };
  for (const key of ['__proto__', 'constructor', 'hasOwnProperty', 'toString', 'valueOf']) {
    await refused(w, { from: ALICE, tags: { Action: 'Task', Task: key } }, 404, `Task ${key}`);
    await refused(w, { from: BOB, tags: { Action: 'Task', 'X-Reference': key } }, 404, `X-Reference ${key}`);
    await refused(w, { from: nodes[0], tags: { ...commitTags(w, nodes[0], key, [1]), 'Job-Commitment': 'c'.repeat(64) }, data: '{"tokens":[1]}' }, 404, `Submit-Result ${key}`);
    await refused(w, { from: nodes[0], tags: { Action: 'Reveal', Task: key, ...trace } }, 404, `Reveal ${key}`);
    await refused(w, { from: nodes[0], tags: { Action: 'Challenge', Task: key, ...trace, Tokens: '1' }, data: '{"tokens":[1]}' }, 404, `Challenge ${key}`);
    await refused(w, { from: nodes[0], tags: { Action: 'Dispute-Post', Task: key, Round: '1' }, data: '[]' }, 404, `Dispute-Post ${key}`);
    await refused(w, { from: nodes[0], tags: { Action: 'Dispute-Open', Task: key, Step: '1' }, data: '{}' }, 404, `Dispute-Open ${key}`);
    await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', Model: key } }, 404, `Model ${key}`);
    await refused(w, { from: fx.addrs[0], tags: { Action: 'Register-Node', DID: fx.dids[0], Models: key } }, 404, `Models ${key}`);
    await refused(w, { from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Sender: key, Quantity: '1' } }, 400, `Sender ${key}`);
    const bal = await w.send({ from: ALICE, tags: { Action: 'Balance', Target: key } });
    assert.deepEqual(tagsOf(bal.Messages[0]), { Action: 'Balance-Response', Reference: bal.id, Balance: '0', Earnings: '0', Stake: '0', Locked: '0', Account: key });
    assert.equal(bal.Messages[0].Data, '0');
    const tasks = await w.send({ from: ALICE, tags: { Action: 'Tasks', Node: key } });
    assert.deepEqual(JSON.parse(tasks.Messages[0].Data!), { leases: [], duties: [] });
    await refused(w, { from: ALICE, tags: { Action: key } }, 400, `Action ${key}`);
  }
  // X-Reference "__proto__" is an ordinary reference (the one node is busy: the task waits).
  const proto = await infer(w, ALICE, { max_tokens: 2 }, { 'X-Reference': '__proto__' });
  one(proto, 'Infer-Accepted');
  const found = await w.send({ from: ALICE, tags: { Action: 'Task', 'X-Reference': '__proto__' } });
  assert.equal(tagOf(found.Messages[0], 'Task'), proto.id);
  await refused(w, { from: ALICE, data: 'Hi', tags: { Action: 'Infer', 'X-Options': '{"max_tokens":2}', 'X-Reference': '__proto__' } }, 409, 'the reference again');
  assert.equal(Object.getPrototypeOf(w.state().references), Object.prototype, 'no key reached the prototype');
});

// ---- 16. assignments ----

// Anyone may assign any stored item to any process: a token's Credit-Notice to someone else,
// assigned here, must credit no one (it would mint deposits out of other people's transfers).
test('an item addressed to another process and assigned here changes nothing', async () => {
  const { w } = await network({ nodes: 1 });
  const before = w.snapshot();
  const elsewhere = id43('some other process');
  for (const tags of [
    { Action: 'Credit-Notice', Sender: ALICE, Quantity: '1000', 'X-Action': 'Deposit' },
    { Action: 'Credit-Notice', Sender: fx.addrs[0], Quantity: '1000', 'X-Action': 'Stake' },
  ]) {
    const r = await w.p.send({ from: TOKEN, owner: MU, target: elsewhere, tags, timestamp: w.now + 1 });
    assert.equal(r.Error, undefined);
    assert.deepEqual(r.Messages, []);
  }
  const inferElsewhere = await w.p.send({ from: ALICE, data: PROMPT, target: elsewhere, tags: { Action: 'Infer', 'X-Options': '{"max_tokens":2}' }, timestamp: w.now + 2 });
  assert.deepEqual(inferElsewhere.Messages, []);
  assert.deepEqual(w.state(), before);
});

// ---- 17. Min-Stake 0 ----

/** Min-Stake 0 needs Slash 0 (and Miss-Slash, Challenge-Bond 0); the rule then holds only with C = 0. */
const NO_STAKE = { 'Min-Stake': '0', Slash: '0', 'Miss-Slash': '0', 'Challenge-Bond': '0', 'Compute-Cost-Per-Token': '0' };

// A node with no stake is eligible with Min-Stake 0: its draw weight must not be zero, or the draw
// would divide by zero.
test('Min-Stake 0 with only unstaked nodes answers the Infer instead of crashing', async () => {
  const { w } = await network({ nodes: 1, stake: ['0'], spawn: NO_STAKE });
  assert.equal(w.state().nodes.length, 1, 'registration needs stake ≥ 0');
  const before = w.snapshot();
  const r = await w.p.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': '{"max_tokens":2}' }, timestamp: w.now + 1 });
  assert.equal(r.Error, undefined, `the process crashed: ${r.Error}`);
  const reply = r.Messages.find((m) => m.Target === ALICE)!;
  assert.ok(['Infer-Accepted', 'Infer-Response'].includes(actionOf(reply)!));
  if (actionOf(reply) === 'Infer-Response') assert.deepEqual(w.state(), before);
});

// The lease sweep runs on every message: a fault there would make every later message fail.
test('Min-Stake 0: an expired lease with only an unstaked node left does not stop the process', async () => {
  const { w } = await network({ nodes: 2, stake: ['100', '0'], spawn: NO_STAKE });
  const r = await infer(w, ALICE, { max_tokens: 2 });
  one(r, 'Task-Assigned');
  const later = await w.p.send({ from: ALICE, tags: { Action: 'Balance' }, timestamp: r.timestamp + 5001 });
  assert.equal(later.Error, undefined, `the process crashed: ${later.Error}`);
  const again = await w.p.send({ from: ALICE, tags: { Action: 'Withdraw' }, timestamp: r.timestamp + 6000 });
  assert.equal(again.Error, undefined, `the process crashed: ${again.Error}`);
  const last = await w.p.send({ from: ALICE, tags: { Action: 'Balance' }, timestamp: r.timestamp + 12_000 });
  assert.equal(last.Error, undefined, `the process crashed: ${last.Error}`);
});

// ---- 18. open questions (todo: they do not fail the suite) ----

// The task id is the Infer message id and ended tasks leave the state, so the coordinator no longer
// knows a message it already served: the same signed Infer, assigned to the process again (AO lets
// anyone assign a stored item), is served and paid for a second time.

test('X-Session is echoed as Apus\'s router does: on Infer-Accepted, every Infer-Response of the task, refusals and other replies; over 128 characters is 400', async () => {
  const net = await network({ nodes: 2, spawn: UNAUDITED });
  const { w } = net;
  const r = await infer(w, ALICE, { max_tokens: 4 }, { 'X-Reference': 's-1', 'X-Session': 'chat-7' });
  assert.equal(tagOf(one(r, 'Infer-Accepted'), 'X-Session'), 'chat-7');
  const responses = await play(net, r, { tickMs: 500 });
  assert.deepEqual(responses.map((m) => tagOf(m, 'Status')), ['pending', 'final']);
  for (const m of responses) assert.deepEqual(['X-Reference', 'X-Session'].map((t) => tagOf(m, t)), ['s-1', 'chat-7']);
  const rejected = await refused(w, inferMessage(ALICE, { max_tokens: 0 }, { 'X-Session': 'chat-7' }), 400, 'bad options');
  assert.equal(tagOf(rejected, 'X-Session'), 'chat-7');
  await refused(w, inferMessage(ALICE, { max_tokens: 4 }, { 'X-Session': 's'.repeat(129) }), 400, 'a long session', /X-Session is at most 128 characters/);
  const balance = await w.send({ from: ALICE, tags: { Action: 'Balance', 'X-Session': 'chat-7' } });
  assert.equal(tagOf(balance.Messages[0], 'X-Session'), 'chat-7');
  // Without X-Session, no tag.
  const plain = await infer(w, ALICE, { max_tokens: 4 });
  assert.equal(tagOf(one(plain, 'Infer-Accepted'), 'X-Session'), undefined);
});
