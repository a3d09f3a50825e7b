// What the coordinator's process tests share (coordinator.test.ts, verification.test.ts): a store
// holding the real stories260K model, node wallets, a World that drives the real coordinator module
// through the real QuickJS runtime and keeps its books (credited, paid out), and in-process players
// that run the real engine, record real traces, store real signed trace items and answer the
// coordinator — honestly, or with a deviation (a wrong token) or garbage.
//
// Each test file calls useFixture() once, at its top level: node --test runs each file in its own
// process, so the fixture (and the default spawn tags) below are per file.
import assert from 'node:assert/strict';
import { createHash, createPrivateKey } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import type { Evaluation, Extensions, OutboxMessage } from '../../src/ao/runtime.js';
import { completionText, loadModel, modelIdentity, type Model } from '../../src/engine/index.js';
import { traceDocument } from '../../src/node/work.js';
import { resultCommitment, type State as CState } from '../../src/processes/coordinator.js';
import { coordinatorExtensions, describeRequest } from '../../src/processes/host.js';
import type { Assignment } from '../../src/processes/protocol.js';
import { accumulators, buildOpening, encodeOpening, jobCommitment, recordTrace, type Deviation, type Trace } from '../../src/proof/index.js';
import { createItem } from '../../src/store/items.js';
import { publishModel } from '../../src/store/models.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { walletAddress, walletDid, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { stories260K, tok512 } from '../helpers.js';
import { START_TIMESTAMP, openProcess, processSource, tagOf, tagsOf, type OpenProcess, type SendOptions } from './harness.js';

// ---- identities ----

export const id43 = (text: string): string => createHash('sha256').update(text).digest('base64url');
export const id43hex = (text: string): string => createHash('sha256').update(text).digest('hex');
export const TOKEN = id43('the token process');
export const MU = id43('the MU wallet');
export const OWNER = id43('the coordinator owner');
export const ALICE = id43('alice');
export const PROMPT = 'Once upon a time';

// ---- the fixture ----

export interface Fixture {
  dir: string;
  store: Store;
  model: Model;
  modelId: string;
  manifestId: string;
  tokenizerHash: string;
  ext: Extensions;
  wallets: Wallet[];
  /** The node wallets' AO addresses and did:keys, index for index. */
  addrs: string[];
  dids: string[];
}

/** An Ed25519 wallet whose key is derived from `name`: every run of a file sees the same addresses, draws and item ids. */
export function fixedWallet(name: string): Wallet {
  const seed = createHash('sha256').update(`verity test wallet: ${name}`).digest();
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  const jwk = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ format: 'jwk' }) as { x: string; d: string };
  return { type: 'ed25519', jwk: { kty: 'OKP', crv: 'Ed25519', x: jwk.x, d: jwk.d } };
}

/** Set by useFixture()'s before hook (an ES module live binding). */
export let fx: Fixture;
/** The bundled coordinator module. */
export let source = '';
let defaultSpawn: Record<string, string> = {};

/** Opens the store and the wallets before the file's tests and removes them after; `spawn`: World.open()'s default tags. */
export function useFixture(o: { prefix: string; spawn: Record<string, string>; wallets?: number }): void {
  defaultSpawn = o.spawn;
  before(async () => {
    source = await processSource('coordinator');
    const dir = mkdtempSync(join(tmpdir(), o.prefix));
    const store = openSqliteStore(dir);
    const model = loadModel(stories260K, { tokenizer: tok512 });
    const { modelId, manifestId } = await publishModel(store, walletSigner(fixedWallet('the model publisher')), model, 'stories260K');
    const ext = coordinatorExtensions(store);
    const info = JSON.parse(await ext.model(JSON.stringify({ model: modelId, manifest: manifestId }))) as { tokenizerHash: string };
    // Fixed keys: a run is reproducible (the draws depend on addresses), so a property's coverage does not flake.
    const wallets = Array.from({ length: o.wallets ?? 6 }, (_, i) => fixedWallet(`node ${i}`));
    fx = { dir, store, model, modelId, manifestId, tokenizerHash: info.tokenizerHash, ext, wallets, addrs: wallets.map(walletAddress), dids: wallets.map(walletDid) };
  });
  after(async () => {
    await fx?.store.close();
    if (fx) rmSync(fx.dir, { recursive: true, force: true });
  });
}

// ---- the players ----

export type Behaviour = 'honest' | 'wrong-token' | 'garbage' | 'silent' | 'no-reveal';

export interface Run {
  trace: Trace;
  tokens: number[];
  /** What the player claims (garbage players claim a root no trace has). */
  root: string;
}

export class Player {
  readonly address: string;
  readonly runs = new Map<string, Run>();
  constructor(
    readonly wallet: Wallet,
    public behaviour: Behaviour = 'honest',
  ) {
    this.address = walletAddress(wallet);
  }

  run(a: Assignment): Run {
    const known = this.runs.get(a.task);
    if (known) return known;
    const identity = modelIdentity(fx.model);
    const job = describeRequest(
      { ...identity, tokenizer: fx.model.tokenizer, seqLen: fx.model.config.seqLen },
      { prompt: a.prompt, maxTokens: a.options.max_tokens, temperature: a.options.temperature, topP: a.options.top_p, seed: a.options.seed },
    );
    assert.equal(jobCommitment(job), a.commitment);
    let deviation: Deviation | undefined;
    if (this.behaviour === 'wrong-token') deviation = { token: { pos: job.promptTokens.length + 1, token: 7 } };
    const trace = recordTrace(fx.model, job, { keepOutputs: true, deviation });
    const tokens = trace.tokens.slice(job.promptTokens.length - 1);
    const root = this.behaviour === 'garbage' ? id43hex(`garbage:${a.task}:${this.address}`) : trace.root;
    const run = { trace, tokens, root };
    this.runs.set(a.task, run);
    return run;
  }

  async traceItem(task: string): Promise<string> {
    const { trace, tokens } = this.runs.get(task)!;
    const doc = traceDocument(task, { job: trace.job, trace, tokens, text: completionText(fx.model.tokenizer, trace.job.promptTokens.at(-1)!, tokens) });
    const item = await createItem(doc.data, walletSigner(this.wallet), { tags: doc.tags });
    await fx.store.put(item.raw);
    return item.id;
  }
}

// ---- driving the process ----

export type Sent = Evaluation & { id: string; timestamp: number };

export class World {
  private count = 0;
  now = START_TIMESTAMP;
  readonly log: Sent[] = [];
  credited = 0n;
  paid = 0n;
  constructor(readonly p: OpenProcess) {}

  /** A coordinator spawned with the file's default tags and `spawn` over them; `id` for runs that must reproduce byte for byte. */
  static async open(spawn: Record<string, string> = {}, id?: string): Promise<World> {
    const p = await openProcess(source, { owner: OWNER, tags: { ...defaultSpawn, ...spawn }, extensions: fx.ext, ...(id ? { id } : {}) });
    assert.equal(p.boot.Error, undefined, p.boot.Error);
    return new World(p);
  }

  state(): CState {
    return this.p.state() as CState;
  }

  snapshot(): CState {
    return structuredClone(this.state());
  }

  /** Sends at `timestamp` (default: 1 ms after the last message), checks it was evaluated, and books what it paid out. */
  async send(m: Omit<SendOptions, 'timestamp'> & { timestamp?: number }): Promise<Sent> {
    const timestamp = m.timestamp ?? this.now + 1;
    this.now = Math.max(this.now, timestamp);
    const id = m.id ?? id43(`${this.p.id}:msg:${++this.count}`);
    const r = await this.p.send({ ...m, id, timestamp });
    assert.equal(r.Error, undefined, `${JSON.stringify(m.tags)}: ${r.Error}`);
    for (const out of r.Messages) if (out.Target === TOKEN && tagOf(out, 'Action') === 'Transfer') this.paid += BigInt(tagOf(out, 'Quantity')!);
    const sent = Object.assign(r, { id, timestamp });
    this.log.push(sent);
    return sent;
  }

  /** A Credit-Notice from the token process, pushed by the MU (booked as credited). */
  async credit(sender: string, quantity: string, purpose?: string): Promise<Sent> {
    // Booked first, so that a check wrapped around send() sees the books as they are once the notice counted.
    this.credited += BigInt(quantity);
    return this.send({ from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Sender: sender, Quantity: quantity, ...(purpose ? { 'X-Action': purpose } : {}) } });
  }

  /** Σ of the coordinator's ledgers — what its token balance must be. */
  held(): bigint {
    const s = this.state();
    const sum = (r: Record<string, string>): bigint => Object.values(r).reduce((a, v) => a + BigInt(v), 0n);
    const tasks = Object.values(s.tasks).reduce((a, t) => a + BigInt(t.escrow) + BigInt(t.pot), 0n);
    return sum(s.deposits) + sum(s.earnings) + sum(s.stakes) + tasks;
  }

  assertConserved(label: string): void {
    assert.equal(this.held(), this.credited - this.paid, `money is conserved ${label}`);
    const s = this.state();
    for (const [who, locked] of Object.entries(s.locked)) {
      assert.ok(BigInt(locked) >= 0n && BigInt(locked) <= BigInt(s.stakes[who] ?? '0'), `${who}: 0 ≤ locked ${locked} ≤ stake ${s.stakes[who]}`);
    }
    // Every lock is a live participant's.
    const byNode = new Map<string, bigint>();
    const count = (h: { node: string; locked: string }): void => void byNode.set(h.node, (byNode.get(h.node) ?? 0n) + BigInt(h.locked));
    // A pipelined participant's stages each lock their own (docs/pipeline.md).
    for (const t of Object.values(s.tasks)) for (const p of t.participants) for (const h of [p, ...(p.stages ?? [])]) count(h);
    for (const [who, locked] of Object.entries(s.locked)) assert.equal(BigInt(locked), byNode.get(who) ?? 0n, `${who}: locks match the live participants ${label}`);
  }
}

export interface Net {
  w: World;
  players: Player[];
}

export const actionOf = (m: OutboxMessage): string | undefined => tagOf(m, 'Action');

/**
 * Answers every message the coordinator sent to a player, as that player would, until nothing is
 * left to answer; heartbeats move time on (a step of `tickMs`) so draws and deadlines happen.
 * Returns the Infer-Responses (to any requester).
 */
export async function play(net: Net, first: Sent, o: { tickMs?: number; maxMessages?: number } = {}): Promise<OutboxMessage[]> {
  const { w, players } = net;
  const responses: OutboxMessage[] = [];
  const inbox: OutboxMessage[] = [...first.Messages];
  const byAddress = new Map(players.map((p) => [p.address, p]));
  // Quiet heartbeats move time on faster and faster (up to 2 s), so deadlines come in few messages.
  let tick = o.tickMs ?? 1;
  for (let n = 0; n < (o.maxMessages ?? 400); n++) {
    const m = inbox.shift();
    if (!m) {
      if (w.state().open.length === 0) return responses;
      const r = await w.send({ from: players[0].address, tags: { Action: 'Heartbeat' }, timestamp: w.now + tick });
      tick = r.Messages.length > 0 ? (o.tickMs ?? 1) : Math.min(2000, tick * 2);
      inbox.push(...r.Messages);
      continue;
    }
    if (actionOf(m) === 'Infer-Response') responses.push(m);
    const player = byAddress.get(m.Target);
    if (!player) continue;
    const r = await answer(w, player, m);
    if (r) inbox.push(...r.Messages);
  }
  throw new Error(`the flow did not end within ${o.maxMessages ?? 400} messages: ${JSON.stringify(w.state().open.map((id) => w.state().tasks[id].status))}`);
}

/**
 * Like play(), but stops as soon as `stop` holds (checked before each message is answered) and
 * returns what was not answered yet.
 */
export async function until(net: Net, first: Sent, stop: (m: OutboxMessage | undefined) => boolean, limit = 100): Promise<OutboxMessage[]> {
  const { w, players } = net;
  const inbox: OutboxMessage[] = [...first.Messages];
  for (let n = 0; n < limit; n++) {
    if (stop(inbox[0])) return inbox;
    const m = inbox.shift();
    if (!m) {
      inbox.push(...(await w.send({ from: players[0].address, tags: { Action: 'Heartbeat' } })).Messages);
      continue;
    }
    const player = players.find((p) => p.address === m.Target);
    if (player) inbox.push(...((await answer(w, player, m))?.Messages ?? []));
  }
  throw new Error(`no stop within ${limit} messages`);
}

/** What `player` sends in answer to the coordinator's message `m` (null: nothing). */
export async function answer(w: World, player: Player, m: OutboxMessage): Promise<Sent | null> {
  const tags = tagsOf(m);
  const task = tags.Task;
  const from = player.address;
  switch (tags.Action) {
    case 'Task-Assigned': {
      if (player.behaviour === 'silent') return null;
      const a = JSON.parse(m.Data!) as Assignment;
      const run = player.run(a);
      return w.send({
        from,
        tags: { Action: 'Submit-Result', Task: task, 'Job-Commitment': a.commitment, 'Result-Commitment': resultCommitment(task, from, run.root), Tokens: String(run.tokens.length) },
        data: JSON.stringify({ tokens: run.tokens }),
      });
    }
    case 'Reveal-Requested': {
      if (player.behaviour === 'no-reveal') return null;
      const run = player.runs.get(task)!;
      if (player.behaviour === 'garbage') {
        // Its stored trace cannot back a made-up root: the reveal is refused and the deadline convicts it.
        const r = await w.send({ from, tags: { Action: 'Reveal', Task: task, 'Trace-Root': run.root, Trace: await player.traceItem(task) } });
        assert.equal(tagOf(r.Messages.at(-1)!, 'Action'), 'Reveal-Error');
        return r;
      }
      return w.send({ from, tags: { Action: 'Reveal', Task: task, 'Trace-Root': run.root, Trace: await player.traceItem(task) } });
    }
    case 'Dispute-Round': {
      const run = player.runs.get(task)!;
      const { points } = JSON.parse(m.Data!) as { points: number[] };
      const accs = accumulators(run.trace);
      return w.send({ from, tags: { Action: 'Dispute-Post', Task: task, Round: tags.Round }, data: JSON.stringify(points.map((p) => accs[p])) });
    }
    case 'Dispute-Prove': {
      const run = player.runs.get(task)!;
      const opening = encodeOpening(buildOpening(run.trace, Number(tags.Step), { kvDim: fx.model.config.kvDim }));
      return w.send({ from, tags: { Action: 'Dispute-Open', Task: task, Step: tags.Step }, data: JSON.stringify(opening) });
    }
    default:
      return null;
  }
}
