// The worker node: stakes, registers with the coordinator under its did:key, fetches and verifies
// its models, then takes the leases the coordinator draws for it and does what the verification
// protocol asks of a participant (docs/network.md "Verification"):
//
//   Task-Assigned     → run the job recording its trace; Submit-Result with the Result-Commitment
//                       (the root stays secret; the trace document is kept here, not yet stored)
//   Reveal-Requested  → store the trace item (signed by the node), then Reveal its id and root
//   Dispute-Round     → Dispute-Post: the node's accumulators at the round's points
//   Dispute-Prove     → Dispute-Open: the opening of the step, from a re-run that keeps every
//                       layer's outputs (the run is deterministic)
//
// It learns of these by following the coordinator's results, and with each heartbeat reconciles
// with a `Tasks` dry-run (open leases and outstanding duties). Following the results never waits on
// the work: leases run up to the capacity at once (more wait in a queue), each task's duties run in
// order but beside other tasks'. When its own commit or challenge window waits for the
// coordinator's next message and no one else sends one, the node does (wake.ts). Every decision — which run to claim,
// whether to reveal, what to post, what to open — is the Behaviour's (behaviour.ts: honest by
// default; strategies.ts: the cheats); the node does the rest the same way for every behaviour.
//
// Crash safety: each task's progress is a row in the node's SQLite, written before the step it
// guards. A task found `running` after a crash is run again while its lease is open (the run is
// deterministic) and released otherwise; every signed message (Submit-Result, Reveal, Dispute-Post,
// Dispute-Open) is stored before it is sent and re-sent byte for byte, never signed twice; a duty
// already answered is never answered again.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { RefusedError, aoClient, expectReply, type MessageInput, type ResultsPage } from '../ao/client.js';
import { loadModel, type KernelPath, type Model } from '../engine/index.js';
import { fundCoordinator } from '../processes/calls.js';
import type { Duty, TaskView, TasksReply } from '../processes/protocol.js';
import { encodeOpening } from '../proof/index.js';
import { openCommitDatabase } from '../store/database.js';
import { createItem, verifyItem } from '../store/items.js';
import { readStageRecord, stageOpening, startNetStage, type NetStage, type StageReplay } from '../pipeline/net-stage.js';
import { wireSender } from '../pipeline/wire.js';
import { fetchModel } from '../store/models.js';
import type { Store } from '../store/store.js';
import { walletAddress, walletDid, walletSigner, type Wallet } from '../store/wallet.js';
import { honest, resultCommitment, type Behaviour, type BehaviourContext, type Claim } from './behaviour.js';
import { strategy as strategyNamed, type StrategyOptions } from './strategies.js';
import { afterBeat, beatAt, emptyWake, observe, type SeenResult } from './wake.js';
import { startTokenStreams, type StreamLimits, type TokenStreams } from './stream.js';
import { stageJobOf, traceItem, type Assignment, type TraceDocument } from './work.js';
import { VerityError } from '../errors.js';

export interface Network {
  mu: string;
  cu: string;
  coordinator: string;
  token: string;
}

export interface NodeOptions {
  /** The node's database and model cache. */
  dir: string;
  /** Ed25519: its public key is the node's did:key. */
  wallet: Wallet;
  /** Where models are fetched from and traces stored. */
  store: Store;
  network: Network;
  /** Tokens to keep staked. */
  stake: bigint;
  /** Model ids to serve; default every model the coordinator lists. */
  models?: string[];
  /** Leases worked at once, interleaved on one loaded copy of each model (default 1). */
  capacity?: number;
  /** Pause after a failed round (the CU or MU unreachable). */
  pollMs?: number;
  /** How often the node says it is alive and re-reads its open leases and duties. */
  heartbeatMs?: number;
  engine?: { kernels?: KernelPath; threads?: number };
  /** How the node decides (default honest): a Behaviour, or a strategy name of strategies.ts. */
  strategy?: string | Behaviour;
  /** Options of a named strategy (colluding-pair's shared folder, cheap-model's layer). */
  strategyOptions?: StrategyOptions;
  /**
   * Watch others' results: this share (parts per million) of the tasks leased to other nodes is
   * run here too once revealed, and a result in its challenge window whose root differs from this
   * node's is challenged (the node's free stake must cover Challenge-Bond). Default 0.
   */
  watchPpm?: number;
  log?: (line: string) => void;
  /**
   * Serve the token stream of the leases this node generates (stream.ts: `GET /stream/<task>`)
   * on this port (0: any free one), on streamHost (default 127.0.0.1); absent: no stream.
   */
  streamPort?: number;
  streamHost?: string;
  /** The stream's address as announced to the coordinator (Stream-Url), default the server's own http://host:port. */
  streamUrl?: string;
  streamLimits?: Partial<StreamLimits>;
  /** The bytes this node gives a model (weights and K/V cache), declared at registration (Memory): the coordinator leases it no bigger model. */
  memory?: number;
}

/** What the node has done since start (for tests and logs). */
export interface NodeActivity {
  /** Results the coordinator accepted (Submit-Result-Response). */
  committed: number;
  /** Leases the behaviour chose not to answer. */
  abandoned: number;
  reveals: number;
  posts: number;
  openings: number;
  /** Duties the behaviour chose to leave unanswered. */
  silent: number;
  /** Messages the coordinator refused. */
  refused: number;
  /** Others' results re-run (watch mode), and those challenged. */
  watched: number;
  challenges: number;
}

export interface RunningNode {
  address: string;
  did: string;
  models: string[];
  /** Where this node serves its token stream (the announced Stream-Url); null without one. */
  streamUrl: string | null;
  /** The behaviour's name ('honest' unless a strategy was given). */
  strategy: string;
  /** Results the coordinator accepted since start. */
  completed(): number;
  activity(): NodeActivity;
  /** The most leases this node has worked at once since start (at most its capacity). */
  jobsAtOnce(): number;
  close(): Promise<void>;
}

export class NodeError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'NodeError';
  }
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS tasks (
    task TEXT PRIMARY KEY,
    lease_end INTEGER NOT NULL,
    status TEXT NOT NULL,            -- running | submitting | submitted | done | rejected | released | abandoned | challenged
    submit BLOB,                     -- the signed Submit-Result, kept before it is sent
    submit_id TEXT,
    note TEXT,
    updated_at INTEGER NOT NULL
  );
  CREATE TABLE IF NOT EXISTS duties (
    task TEXT NOT NULL,
    kind TEXT NOT NULL,              -- reveal | post | open | challenge
    key TEXT NOT NULL,               -- '' (reveal), <round>@<deadline> (post), <step>@<deadline> (open)
    status TEXT NOT NULL,            -- sending | sent | done | refused | silent
    message BLOB,                    -- the signed message, kept before it is sent
    message_id TEXT,
    note TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (task, kind, key)
  );
  CREATE TABLE IF NOT EXISTS stage_runs (
    task TEXT PRIMARY KEY,
    positions INTEGER NOT NULL,      -- positions the pipeline ran
    tokens TEXT NOT NULL,            -- the first stage: the token embedded at each position (JSON)
    inputs BLOB NOT NULL,            -- the other stages: the residuals received, position by position (f32)
    updated_at INTEGER NOT NULL
  );`;

/** Columns added to an older node database. */
const TASK_COLUMNS = {
  assignment: 'TEXT', // the lease JSON: the job, to run again for an opening
  claim: 'TEXT', // the Claim JSON (root, tokens, trace document, recipe), kept from before the submit
};

function migrate(db: Database.Database): void {
  const have = new Set((db.prepare('PRAGMA table_info(tasks)').all() as { name: string }[]).map((c) => c.name));
  for (const [name, type] of Object.entries(TASK_COLUMNS)) if (!have.has(name)) db.exec(`ALTER TABLE tasks ADD COLUMN ${name} ${type}`);
}

interface Row {
  task: string;
  lease_end: number;
  status: string;
  submit: Buffer | null;
  submit_id: string | null;
  assignment: string | null;
  claim: string | null;
}

/** What the coordinator asks of a participant, and the challenge a watching node sends of its own accord. */
type DutyKind = Duty['kind'] | 'challenge';

interface DutyRow {
  task: string;
  kind: DutyKind;
  key: string;
  status: string;
  message: Buffer | null;
  message_id: string | null;
}

/** A duty as a message or the Tasks reply names it; the assignment only comes with the latter. */
interface DutyCall {
  task: string;
  kind: DutyKind;
  /** The duty's deadline: with the round or step, it tells two disputes of one task apart. */
  deadline?: number;
  round?: number;
  points?: number[];
  step?: number;
  assignment?: Assignment;
}

/**
 * What makes a duty one duty. A task may hold several disputes one after another (a surviving
 * result is audited again), each counting its rounds from 1; the deadline (the round's or proof's
 * opening time plus the clock) is the same in the message and in the Tasks reply, and differs
 * between disputes.
 */
function dutyKey(d: DutyCall): string | null {
  if (d.kind === 'reveal' || d.kind === 'challenge') return '';
  const n = d.kind === 'post' ? d.round : d.step;
  if (!Number.isInteger(n) || !Number.isInteger(d.deadline)) return null;
  return `${n}@${d.deadline}`;
}

const ACTION: Record<DutyKind, string> = { reveal: 'Reveal', post: 'Dispute-Post', open: 'Dispute-Open', challenge: 'Challenge' };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The Tasks reply: {leases, duties}; an older coordinator answered with the list of leases alone. */
function tasksReply(data: string): TasksReply {
  const reply = JSON.parse(data) as TasksReply | Assignment[];
  return Array.isArray(reply) ? { leases: reply, duties: [] } : { leases: reply.leases ?? [], duties: reply.duties ?? [] };
}

/** The outbox messages of a page that `want` picks (by target and tags), in slot order. */
function messagesWhere(page: ResultsPage, want: (target: string, tags: Record<string, string>) => boolean): { tags: Record<string, string>; data: string }[] {
  const found: { tags: Record<string, string>; data: string }[] = [];
  for (const { node } of page.edges) {
    for (const m of node.Messages) {
      const tags = Object.fromEntries(m.Tags.map((t) => [t.name, t.value])) as Record<string, string>;
      if (want(m.Target, tags)) found.push({ tags, data: m.Data ?? '' });
    }
  }
  return found;
}

export async function startNode(options: NodeOptions): Promise<RunningNode> {
  const { network, wallet, store } = options;
  if (wallet.type !== 'ed25519') throw new NodeError('a node needs an Ed25519 wallet: its public key is its did:key');
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const behaviour: Behaviour = typeof options.strategy === 'object' ? options.strategy : strategyNamed(options.strategy ?? 'honest', options.strategyOptions);
  const address = walletAddress(wallet);
  const did = walletDid(wallet);
  const name = `node ${address.slice(0, 8)}${behaviour === honest ? '' : ` (${behaviour.name})`}`;
  const ao = aoClient({ mu: network.mu, cu: network.cu, wallet });
  const signer = walletSigner(wallet);
  const pollMs = options.pollMs ?? 500;
  const heartbeatMs = options.heartbeatMs ?? 5000;
  // Up to `capacity` leases are worked at once (see `attempt`), so a second lease does not wait
  // (and expire) behind the first.
  const capacity = options.capacity ?? 1;
  if (!Number.isInteger(capacity) || capacity < 1 || capacity > 64) throw new NodeError('capacity must be a whole number from 1 to 64');
  if (options.memory !== undefined && !(Number.isSafeInteger(options.memory) && options.memory >= 1)) throw new NodeError('memory must be a whole number of bytes');

  const ask = async (process: string, message: string, action: string): Promise<Record<string, string>> => expectReply(await ao.result(process, message), action).tags;
  const dry = async (action: string, tags: { name: string; value: string }[] = []) =>
    expectReply(await ao.dryRun(network.coordinator, { tags: [{ name: 'Action', value: action }, ...tags], from: address }), `${action}-Response`);
  const dryData = async <T>(action: string, tags: { name: string; value: string }[] = []): Promise<T> => JSON.parse((await dry(action, tags)).data) as T;

  // ---- models ----
  const listed = await dryData<{ id: string; bytes?: number }[]>('Models');
  const wanted = options.models ?? listed.map((m) => m.id);
  if (wanted.length === 0) throw new NodeError('the coordinator lists no models and none were given');
  const models = new Map<string, Model>();
  const paths = new Map<string, string>();
  for (const id of wanted) {
    log(`${name}: fetching model ${id.slice(0, 12)}…`);
    const path = await fetchModel(store, id, join(options.dir, 'models'), (done, total) => log(`${name}: model ${id.slice(0, 12)} chunk ${done}/${total} verified`));
    paths.set(id, path);
    // A model bigger than the memory this node declares is never loaded whole: it serves only
    // pipeline stages of it, each loading its layers.
    const bytes = listed.find((m) => m.id === id)?.bytes;
    if (options.memory !== undefined && bytes !== undefined && bytes > options.memory) log(`${name}: model ${id.slice(0, 12)} (${bytes} bytes) is more than its ${options.memory}: pipeline stages only`);
    else models.set(id, loadModel(path));
  }

  // ---- stake, then registration (the coordinator registers only a node staked ≥ Min-Stake) ----
  const staked = BigInt((await dry('Balance', [{ name: 'Target', value: address }])).tags.Stake ?? '0');
  if (staked < options.stake) {
    const { total } = await fundCoordinator(ao, { ...network, account: address, amount: options.stake - staked, purpose: 'Stake' });
    log(`${name}: staked ${total}`);
  }
  // ---- the token stream (before registration: its address is announced there) ----
  const streams: TokenStreams | null = options.streamPort === undefined ? null : await startTokenStreams(options.streamHost ?? '127.0.0.1', options.streamPort, options.streamLimits);
  const streamUrl = streams ? (options.streamUrl ?? streams.url) : null;
  if (streamUrl) log(`${name}: token stream at ${streamUrl}/stream/<task>`);
  try {
    const registered = (await dryData<{ address: string; models: string[]; capacity: number; streamUrl?: string; memory?: number }[]>('Nodes')).find((n) => n.address === address);
    const memory = options.memory ?? null;
    if (!registered || registered.capacity !== capacity || registered.models.join(',') !== wanted.join(',') || (registered.streamUrl ?? null) !== streamUrl || (registered.memory ?? null) !== memory) {
      const id = await ao.message(network.coordinator, {
        tags: [
          { name: 'Action', value: 'Register-Node' },
          { name: 'DID', value: did },
          { name: 'Models', value: wanted.join(',') },
          { name: 'Capacity', value: String(capacity) },
          // An empty Stream-Url clears one registered before.
          ...(streamUrl || registered?.streamUrl ? [{ name: 'Stream-Url', value: streamUrl ?? '' }] : []),
          // Likewise an empty Memory clears a declared one.
          ...(memory !== null || registered?.memory !== undefined ? [{ name: 'Memory', value: memory === null ? '' : String(memory) }] : []),
        ],
      });
      await ask(network.coordinator, id, 'Register-Node-Response');
      log(`${name}: registered as ${did}`);
    }
  } catch (e) {
    await streams?.close();
    throw e;
  }

  // The challenge window, to end this node's unaudited results on time (wake.ts); unknown on a
  // coordinator that does not say (then the periodic heartbeat ends them).
  let windowMs: number | null = null;
  try {
    const params = await dryData<{ challengeWindowMs?: unknown }>('Params');
    if (Number.isInteger(params.challengeWindowMs) && (params.challengeWindowMs as number) >= 0) windowMs = params.challengeWindowMs as number;
  } catch (e) {
    if (!(e instanceof RefusedError)) throw e;
  }

  // ---- the node's database ----
  // Writes are not fsynced one by one (each would stall the event loop, which also runs the
  // engine): they survive a kill -9 as they are, and the bytes of a signed message are made
  // durable before it leaves (`sendKept`), so the node never forgets a message it sent. A power
  // loss may undo the newest status changes, which the next reconcile with the coordinator redoes.
  const { db, synced } = openCommitDatabase(options.dir, 'node.sqlite', SCHEMA);
  migrate(db);
  const sendKept = async (raw: Uint8Array): Promise<void> => {
    await synced();
    await ao.send(raw);
  };
  const q = {
    get: db.prepare<[string], Row>('SELECT * FROM tasks WHERE task = ?'),
    start: db.prepare<[string, number, string, number]>(
      "INSERT INTO tasks (task, lease_end, assignment, status, updated_at) VALUES (?, ?, ?, 'running', ?) ON CONFLICT(task) DO UPDATE SET status = 'running', lease_end = excluded.lease_end, assignment = excluded.assignment, updated_at = excluded.updated_at",
    ),
    submitting: db.prepare<[Uint8Array, string, string, number, string]>("UPDATE tasks SET status = 'submitting', submit = ?, submit_id = ?, claim = ?, updated_at = ? WHERE task = ?"),
    recovered: db.prepare<[string, number, string, string, number]>(
      "INSERT INTO tasks (task, lease_end, assignment, claim, status, note, updated_at) VALUES (?, ?, ?, ?, 'done', 'claim made again for a duty', ?) ON CONFLICT(task) DO UPDATE SET assignment = excluded.assignment, claim = excluded.claim, updated_at = excluded.updated_at",
    ),
    set: db.prepare<[string, string | null, number, string]>('UPDATE tasks SET status = ?, note = ?, updated_at = ? WHERE task = ?'),
    unfinished: db.prepare<[], Row>("SELECT * FROM tasks WHERE status IN ('running', 'submitting', 'submitted') ORDER BY updated_at"),
    duty: db.prepare<[string, string, string], DutyRow>('SELECT * FROM duties WHERE task = ? AND kind = ? AND key = ?'),
    dutyAdd: db.prepare<[string, string, string, string, Uint8Array | null, string | null, string | null, number]>(
      'INSERT INTO duties (task, kind, key, status, message, message_id, note, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
    ),
    dutySet: db.prepare<[string, string | null, number, string, string, string]>('UPDATE duties SET status = ?, note = ?, updated_at = ? WHERE task = ? AND kind = ? AND key = ?'),
    dutiesUnfinished: db.prepare<[], DutyRow>("SELECT * FROM duties WHERE status IN ('sending', 'sent') ORDER BY updated_at"),
  };

  /**
   * When the node last reconciled and heartbeat; set back to 0 once the coordinator accepts one of
   * its dispute messages, so that a fresh look at its duties follows at once rather than a heartbeat
   * later. (The messages a commit or a challenge window waits for are wake.ts's.)
   */
  let lastBeat = 0;
  const activity: NodeActivity = { committed: 0, abandoned: 0, reveals: 0, posts: 0, openings: 0, silent: 0, refused: 0, watched: 0, challenges: 0 };
  const ctx: BehaviourContext = {
    address,
    engine: options.engine ?? {},
    get signal() {
      return stop.signal;
    },
    async view(task) {
      try {
        return await dryData<TaskView>('Task', [{ name: 'Task', value: task }]);
      } catch {
        return null;
      }
    },
    copyOf(modelId) {
      const path = paths.get(modelId);
      if (!path) throw new NodeError(`model ${modelId} is not served by this node`);
      return loadModel(path);
    },
    log: (line) => log(`${name}: ${line}`),
    onToken: streams
      ? (task, token, prev) => {
          try {
            streams.token(task, token, prev);
          } catch (e) {
            log(`${name}: token stream of ${task}: ${(e as Error).message}`);
          }
        }
      : undefined,
  };

  // ---- leases: run, claim, commit ----
  /** Tasks whose Submit-Result is being confirmed now (by the lease's run or a reconcile): confirmed once. */
  const confirming = new Set<string>();
  async function confirm(row: Pick<Row, 'task' | 'submit_id'>): Promise<void> {
    if (confirming.has(row.task)) return;
    confirming.add(row.task);
    try {
      await ask(network.coordinator, row.submit_id!, 'Submit-Result-Response');
      q.set.run('done', null, Date.now(), row.task);
      activity.committed += 1;
    } catch (e) {
      // Only the coordinator's own refusal is final; a CU out of reach is asked again next round.
      if (!(e instanceof RefusedError)) return log(`${name}: result for ${row.task} not confirmed yet: ${(e as Error).message}`);
      q.set.run('rejected', e.message, Date.now(), row.task);
      activity.refused += 1;
      log(`${name}: result for ${row.task} refused: ${e.message}`);
    } finally {
      confirming.delete(row.task);
    }
  }

  /** Whether to work a lease: one seen before is worked once; a new lease on a task whose earlier one ended without a result here (refused, released, abandoned) is a new duty. */
  function fresh(a: Assignment): boolean {
    const known = q.get.get(a.task);
    const ended = known && (known.status === 'rejected' || known.status === 'released' || known.status === 'abandoned');
    return !(known && known.status !== 'running' && !(ended && known.lease_end !== a.leaseEnd));
  }

  async function work(a: Assignment): Promise<void> {
    if (!fresh(a)) return;
    if (a.pipeline) return workStage(a);
    const model = models.get(a.model);
    if (!model) return log(`${name}: leased task ${a.task} for model ${a.model}, which this node does not serve`);
    q.start.run(a.task, a.leaseEnd, JSON.stringify(a), Date.now());
    streams?.open(a.task, a.leaseEnd, model);
    let claim: Claim | null;
    try {
      claim = await behaviour.claim(model, a, ctx);
    } finally {
      streams?.end(a.task);
    }
    if (!claim) {
      q.set.run('abandoned', `${behaviour.name}: not submitted`, Date.now(), a.task);
      activity.abandoned += 1;
      return;
    }
    await submit(a, claim);
  }

  /** Commits to a claim: the signed Submit-Result is kept with the claim before it leaves. */
  async function submit(a: Assignment, claim: Claim): Promise<void> {
    const submit = await ao.sign(network.coordinator, {
      tags: [
        { name: 'Action', value: 'Submit-Result' },
        { name: 'Task', value: a.task },
        { name: 'Job-Commitment', value: claim.commitment },
        { name: 'Result-Commitment', value: resultCommitment(a.task, address, claim.root) },
        { name: 'Tokens', value: String(claim.tokens.length) },
      ],
      data: JSON.stringify({ tokens: claim.tokens }),
    });
    // The claim (root, trace document) and the signed bytes are kept together, before anything leaves.
    q.submitting.run(submit.raw, submit.id, JSON.stringify(claim), Date.now(), a.task);
    await sendKept(submit.raw);
    q.set.run('submitted', null, Date.now(), a.task);
    // The engine is free for the next lease now (the coordinator freed the slot with this commit);
    // the confirmation is read beside it.
    track(confirm({ task: a.task, submit_id: submit.id }));
  }

  // ---- pipeline stages (docs/pipeline.md "Pipelines on the network") ----
  /**
   * What a stage was sent, kept in the node's database for openings of its steps (a restart keeps
   * it): the residuals it ran on, or the first stage's tokens. The lease (in the tasks row) gives
   * the rest, and the stage's layers are loaded again to re-run them.
   */
  const STAGE_RUNS_KEPT = 256;
  const keepStageRun = (task: string, replay: StageReplay): void => {
    const dim = replay.inputs.size > 0 ? replay.inputs.values().next().value!.length : 0;
    const inputs = new Float32Array(replay.positions * dim);
    for (const [pos, x] of replay.inputs) if (pos < replay.positions) inputs.set(x, pos * dim);
    db.prepare('INSERT OR REPLACE INTO stage_runs (task, positions, tokens, inputs, updated_at) VALUES (?, ?, ?, ?, ?)').run(
      task, replay.positions, JSON.stringify(replay.tokens.slice(0, replay.positions)), Buffer.from(inputs.buffer), Date.now(),
    );
    // Bounded: the newest STAGE_RUNS_KEPT (a dispute comes within a task's windows, long before).
    db.prepare('DELETE FROM stage_runs WHERE task NOT IN (SELECT task FROM stage_runs ORDER BY updated_at DESC, task LIMIT ?)').run(STAGE_RUNS_KEPT);
  };
  const stageRunOf = (a: Assignment): { spec: Parameters<typeof stageOpening>[0]; replay: StageReplay } | null => {
    const row = db.prepare('SELECT positions, tokens, inputs FROM stage_runs WHERE task = ?').get(a.task) as { positions: number; tokens: string; inputs: Buffer } | undefined;
    const path = paths.get(a.model);
    if (!row || !path || !a.pipeline) return null;
    const ranges = a.pipeline.stages.map((st) => ({ first: st.first, end: st.end }));
    const i = a.pipeline.stage;
    const model = loadModel(path, { layers: ranges[i], embedding: i === 0, head: i === ranges.length - 1 });
    const { dim } = model.config;
    const floats = new Float32Array(row.inputs.buffer.slice(row.inputs.byteOffset, row.inputs.byteOffset + row.inputs.byteLength));
    const inputs = new Map<number, Float32Array>();
    if (i > 0) for (let pos = 0; pos < row.positions; pos++) inputs.set(pos, floats.subarray(pos * dim, (pos + 1) * dim));
    return { spec: { model, job: stageJobOf(model, a), index: i, ranges, threads: ctx.engine.threads }, replay: { inputs, tokens: JSON.parse(row.tokens) as number[], positions: row.positions } };
  };

  /** Runs one stage of a pipelined lease; the last stage submits the pipeline's result. */
  async function workStage(a: Assignment): Promise<void> {
    const pl = a.pipeline!;
    const path = paths.get(a.model);
    const i = pl.stage;
    if (!path) return log(`${name}: a stage lease of ${a.task} for model ${a.model}, which this node does not serve`);
    if (!streams) return log(`${name}: a stage lease of ${a.task}, but this node serves no /pipe (it has no stream port)`);
    if (!Number.isInteger(i) || i < 0 || i >= pl.stages.length || pl.stages[i].node !== address) return log(`${name}: a stage lease of ${a.task} that names another node`);
    q.start.run(a.task, a.leaseEnd, JSON.stringify(a), Date.now());
    const ranges = pl.stages.map((st) => ({ first: st.first, end: st.end }));
    const last = i === ranges.length - 1;
    const model = loadModel(path, { layers: ranges[i], embedding: i === 0, head: last });
    const job = stageJobOf(model, a);
    const lease = { task: a.task, commitment: a.commitment, leaseEnd: a.leaseEnd, nodes: pl.stages.map((st) => st.node) };
    const spec = { model, job, index: i, ranges, threads: ctx.engine.threads };
    let stage: NetStage | null = null;
    const broken = (e: Error): void => {
      log(`${name}: task ${a.task}: stage ${i}'s wire: ${e.message}`);
      stage?.close();
    };
    const senders = pl.stages.map((st, k) => (k === i ? null : wireSender(st.url, broken, 30_000, { untilMs: a.leaseEnd, retryMs: 100 })));
    stage = startNetStage({
      ...spec, lease, signer, post: (to, raw) => senders[to]?.(raw), corrupt: behaviour.stage?.(a).corrupt,
      onToken: last ? (token, prev) => ctx.onToken?.(a.task, token, prev) : undefined,
    });
    if (last) streams.open(a.task, a.leaseEnd, model);
    streams.pipe(a.task, stage.maxItemBytes, stage.take);
    const quit = (): void => stage!.close();
    stop.signal.addEventListener('abort', quit);
    const timer = setTimeout(quit, Math.max(0, a.leaseEnd - Date.now()));
    // Said once in the lease's second half, done or not: should the pipeline's lease run out, the
    // coordinator holds responsible only the stages it did not hear from then (a node gone offline).
    const alive = setTimeout(() => {
      if (!stopped) track(ao.message(network.coordinator, { tags: [{ name: 'Action', value: 'Heartbeat' }] }).then(() => undefined));
    }, Math.max(0, Math.floor(0.6 * (a.leaseEnd - Date.now()))));
    alive.unref();
    try {
      const { claim } = await stage.done;
      keepStageRun(a.task, stage.replay());
      if (!claim) {
        q.set.run('done', `stage ${i}: record sent`, Date.now(), a.task);
        return;
      }
      const document = traceItem({ task: a.task, job, commitment: a.commitment, root: claim.root, tokens: [...job.promptTokens.slice(1), ...claim.tokens], leaves: claim.leaves, rngs: claim.rngs });
      await submit(a, {
        commitment: a.commitment, root: claim.root, tokens: claim.tokens, document,
        recipe: { records: claim.records.map((r) => Buffer.from(r.raw).toString('base64')) },
      });
    } catch (e) {
      q.set.run('abandoned', `stage ${i}: ${(e as Error).message}`, Date.now(), a.task);
      if (!stopped) log(`${name}: task ${a.task}: stage ${i} stopped: ${(e as Error).message}`);
    } finally {
      clearTimeout(timer);
      stop.signal.removeEventListener('abort', quit);
      streams.unpipe(a.task);
      if (last) streams.end(a.task);
    }
  }

  /** A stage's opening of a step it made: from a re-run on what it was sent, with the stored trace and every stage's record. */
  async function stageOpenMessage(a: Assignment, step: number): Promise<MessageInput | null> {
    const run = stageRunOf(a);
    const view = await ctx.view(a.task);
    const p = view?.participants.find((x) => x.stages?.some((st) => st.node === address) && x.trace && x.stages.every((st) => st.record));
    if (!run || !p) {
      log(`${name}: cannot open step ${step} of ${a.task}: ${run ? 'the pipeline\'s trace is not revealed' : 'this stage\'s run is not kept here'}`);
      return null;
    }
    const lease = { task: a.task, commitment: a.commitment, leaseEnd: p.end, nodes: p.stages!.map((st) => st.node) };
    const items = await Promise.all([p.trace!, ...p.stages!.map((st) => st.record!)].map((id) => store.get(id)));
    if (items.some((item) => !item)) return null;
    const leaves = (JSON.parse(Buffer.from(items[0]!.data).toString('utf8')) as TraceDocument).leaves;
    const records = items.slice(1).map((item, k) => readStageRecord(item!, lease, k, run.spec.ranges[k]));
    const opening = stageOpening(run.spec, run.replay, leaves, records, step);
    return { tags: [{ name: 'Action', value: 'Dispute-Open' }, { name: 'Task', value: a.task }, { name: 'Step', value: String(step) }], data: JSON.stringify(encodeOpening(opening)) };
  }

  // ---- duties: reveal, post, open ----
  async function confirmDuty(row: Pick<DutyRow, 'task' | 'kind' | 'key' | 'message_id'>): Promise<void> {
    try {
      await ask(network.coordinator, row.message_id!, `${ACTION[row.kind]}-Response`);
      q.dutySet.run('done', null, Date.now(), row.task, row.kind, row.key);
      // A reveal's window is wake.ts's; a dispute's next round is looked at with a heartbeat at once.
      if (row.kind !== 'reveal') lastBeat = 0;
      if (row.kind === 'reveal') activity.reveals += 1;
      else if (row.kind === 'post') activity.posts += 1;
      else if (row.kind === 'open') activity.openings += 1;
      else activity.challenges += 1;
    } catch (e) {
      if (!(e instanceof RefusedError)) return log(`${name}: ${ACTION[row.kind]} for ${row.task} not confirmed yet: ${(e as Error).message}`);
      // A 409 ("already", "no longer") is the coordinator saying the duty is over: nothing to redo.
      q.dutySet.run('refused', e.message, Date.now(), row.task, row.kind, row.key);
      activity.refused += 1;
      log(`${name}: ${ACTION[row.kind]} for ${row.task} refused: ${e.message}`);
    }
  }

  /** The task's lease and claim; a duty for a task this node forgot is answered from a new run of its job. */
  async function claimFor(d: DutyCall): Promise<{ a: Assignment; claim: Claim } | null> {
    const row = q.get.get(d.task);
    if (row?.claim && row.assignment) return { a: JSON.parse(row.assignment) as Assignment, claim: JSON.parse(row.claim) as Claim };
    const a = d.assignment;
    const model = a && models.get(a.model);
    if (!a || !model) return null;
    log(`${name}: no claim kept for ${d.task}: running its job again for the ${d.kind} duty`);
    const claim = await behaviour.claim(model, a, ctx);
    if (!claim) return null;
    q.recovered.run(a.task, a.leaseEnd, JSON.stringify(a), JSON.stringify(claim), Date.now());
    return { a, claim };
  }

  /** What the behaviour answers to a duty, as a message; null when it stays silent. */
  async function answer(d: DutyCall, a: Assignment, claim: Claim): Promise<MessageInput | null> {
    const task = { name: 'Task', value: d.task };
    if (d.kind === 'challenge') {
      const item = await createItem(claim.document.data, signer, { tags: claim.document.tags });
      await store.put(item.raw);
      return {
        tags: [{ name: 'Action', value: 'Challenge' }, task, { name: 'Trace-Root', value: claim.root }, { name: 'Trace', value: item.id }, { name: 'Tokens', value: String(claim.tokens.length) }],
        data: JSON.stringify({ tokens: claim.tokens }),
      };
    }
    if (d.kind === 'reveal') {
      if (!behaviour.reveal(a, claim, ctx)) return null;
      // The trace item goes to the store before the Reveal that names it; a pipeline's stage
      // records (each signed by its stage) too.
      const item = await createItem(claim.document.data, signer, { tags: claim.document.tags });
      await store.put(item.raw);
      const records = ((claim.recipe as { records?: string[] } | undefined)?.records ?? []).map((r) => Buffer.from(r, 'base64'));
      for (const raw of records) await store.put(raw);
      const stageTag = records.length > 0 ? [{ name: 'Stage-Records', value: (await Promise.all(records.map((raw) => verifyItem(raw)))).map((r) => r.id).join(',') }] : [];
      return { tags: [{ name: 'Action', value: 'Reveal' }, task, { name: 'Trace-Root', value: claim.root }, { name: 'Trace', value: item.id }, ...stageTag] };
    }
    if (d.kind === 'post') {
      if (!d.points) return null;
      const values = behaviour.post(a, claim, d.points, ctx);
      return values && { tags: [{ name: 'Action', value: 'Dispute-Post' }, task, { name: 'Round', value: String(d.round) }], data: JSON.stringify(values) };
    }
    const model = models.get(a.model);
    if (!model || d.step === undefined) return null;
    const opening = await behaviour.open(model, a, claim, d.step, ctx);
    return opening && { tags: [{ name: 'Action', value: 'Dispute-Open' }, task, { name: 'Step', value: String(d.step) }], data: JSON.stringify(encodeOpening(opening)) };
  }

  /** Performs a duty once: a duty seen again (message and Tasks reply, or after a restart) sends nothing new. */
  async function perform(d: DutyCall): Promise<void> {
    const key = dutyKey(d);
    if (key === null) return log(`${name}: a ${d.kind} duty for ${d.task} without its ${d.kind === 'post' ? 'round' : 'step'} and deadline`);
    const row = q.duty.get(d.task, d.kind, key);
    if (row) {
      if (row.status === 'sending') {
        await sendKept(row.message!);
        q.dutySet.run('sent', null, Date.now(), row.task, row.kind, row.key);
      }
      if (row.status === 'sending' || row.status === 'sent') await confirmDuty(row);
      return;
    }
    const kept = q.get.get(d.task);
    const lease = kept?.assignment ? (JSON.parse(kept.assignment) as Assignment) : d.assignment;
    let message: MessageInput | null;
    if (lease?.pipeline && d.kind === 'open' && d.step !== undefined) message = await stageOpenMessage(lease, d.step);
    else {
      const known = await claimFor(d);
      if (!known) return log(`${name}: a ${d.kind} duty for ${d.task}, a task this node holds no claim on`);
      message = await answer(d, known.a, known.claim);
    }
    if (!message) {
      q.dutyAdd.run(d.task, d.kind, key, 'silent', null, null, `${behaviour.name}: no answer`, Date.now());
      activity.silent += 1;
      return log(`${name}: leaves the ${d.kind}${key ? ` ${key}` : ''} duty for ${d.task} unanswered`);
    }
    const signed = await ao.sign(network.coordinator, message);
    q.dutyAdd.run(d.task, d.kind, key, 'sending', signed.raw, signed.id, null, Date.now());
    await sendKept(signed.raw);
    q.dutySet.run('sent', null, Date.now(), d.task, d.kind, key);
    log(`${name}: ${ACTION[d.kind]}${key ? ` ${key}` : ''} for ${d.task}`);
    await confirmDuty({ task: d.task, kind: d.kind, key, message_id: signed.id });
  }

  // What a crash interrupted: messages to re-send and confirm; running tasks are settled by the first reconcile.
  for (const row of q.unfinished.all()) {
    if (row.status === 'running') continue;
    if (row.status === 'submitting') await sendKept(row.submit!);
    await confirm(row);
  }
  for (const row of q.dutiesUnfinished.all()) {
    if (row.status === 'sending') await sendKept(row.message!);
    await confirmDuty(row);
  }

  /** The coordinator's view of what this node owes: perform every duty not yet done, work every lease, release the rest. */
  async function reconcile(): Promise<void> {
    const { leases, duties } = tasksReply((await dry('Tasks', [{ name: 'Node', value: address }])).data);
    const listed = new Set(leases.map((l) => l.task));
    for (const row of q.unfinished.all()) {
      if (row.status === 'running' && !listed.has(row.task) && !working.has(row.task) && !queued.has(row.task)) q.set.run('released', 'the lease is no longer open', Date.now(), row.task);
      if (row.status === 'submitted') await confirm(row);
    }
    // Duties first: they have deadlines and (but for an opening) cost little.
    for (const d of duties) if (!stopped) await attemptDuty({ task: d.task, kind: d.kind, deadline: d.deadline, round: d.round, points: d.points, step: d.step, assignment: d.assignment });
    for (const lease of leases) if (!stopped) await attempt(lease);
    if (watchPpm > 0) await watch();
  }
  // Leases are worked concurrently, up to `capacity` at once, on the one loaded copy of each model:
  // the honest run yields to the event loop after every position (work.ts completeCooperatively),
  // so the runs interleave and the loop keeps following the coordinator meanwhile. Sessions on one
  // model are independent (engine/steps.ts), so each run gives the bits it gives alone.
  const working = new Map<string, Promise<void>>();
  /** Leases waiting for a free slot, in arrival order (rare: the coordinator leases a node at most Capacity at once). */
  const queued = new Map<string, Assignment>();
  const QUEUED_MAX = 256;
  let mostAtOnce = 0;
  /** Work that runs beside the loop (confirmations, duties): awaited by close(). */
  const background = new Set<Promise<void>>();
  const track = (p: Promise<void>): void => {
    const kept = p.catch((e: Error) => {
      if (!stopped) log(`${name}: ${e.message}`);
    }).finally(() => background.delete(kept));
    background.add(kept);
  };
  const startNext = (): void => {
    while (!stopped && working.size < capacity && queued.size > 0) {
      const [task, lease] = queued.entries().next().value!;
      queued.delete(task);
      start(lease);
    }
  };
  const start = (lease: Assignment): void => {
    const job = work(lease)
      .catch((e: Error) => {
        if (!stopped) log(`${name}: task ${lease.task}: ${e.message}`);
      })
      .finally(() => {
        working.delete(lease.task);
        startNext();
      });
    working.set(lease.task, job);
    mostAtOnce = Math.max(mostAtOnce, working.size);
  };
  const attempt = async (lease: Assignment): Promise<void> => {
    if (working.has(lease.task) || queued.has(lease.task) || stopped) return;
    if (working.size < capacity) return start(lease);
    if (queued.size >= QUEUED_MAX) return log(`${name}: ${QUEUED_MAX} leases wait already: task ${lease.task} is left to the next reconcile`);
    queued.set(lease.task, lease);
    // Its token stream can be listened to from now on (the API relays it once the lease is drawn).
    const model = models.get(lease.model);
    if (model) streams?.expect(lease.task, lease.leaseEnd, model);
  };
  // Each task's duties in order (a duty seen twice is then performed once: the second finds its
  // row), different tasks' side by side.
  const dutyChains = new Map<string, Promise<void>>();
  const DUTY_TASKS_MAX = 1024;
  const attemptDuty = async (d: DutyCall): Promise<void> => {
    // Past the bound, the loop waits for one task's duties to end before it reads on.
    while (dutyChains.size >= DUTY_TASKS_MAX && !dutyChains.has(d.task)) await Promise.race(dutyChains.values());
    const before = dutyChains.get(d.task) ?? Promise.resolve();
    const next: Promise<void> = before
      .then(() => (stopped ? undefined : perform(d)))
      .catch((e: Error) => log(`${name}: ${d.kind} duty for ${d.task}: ${e.message}`))
      .finally(() => {
        if (dutyChains.get(d.task) === next) dutyChains.delete(d.task);
      });
    dutyChains.set(d.task, next);
    track(next);
  };

  // ---- watching others (optional): re-run a share of their revealed results, challenge a mismatch ----
  const watchPpm = options.watchPpm ?? 0;
  if (!Number.isInteger(watchPpm) || watchPpm < 0 || watchPpm > 1_000_000) throw new NodeError('watchPpm must be a whole number from 0 to 1000000');
  /** Tasks leased to other nodes that this node re-runs once their result is revealed. */
  const watched = new Map<string, Assignment>();
  const WATCHED_MAX = 1000;
  /** Whether to watch a task: a fixed share, by a hash of the task and this node (no one can aim it). */
  const picks = (task: string): boolean => createHash('sha256').update(`verity-watch/1\n${address}\n${task}`).digest().readUInt32LE(0) % 1_000_000 < watchPpm;

  function noticeLease(a: Assignment): void {
    if (watchPpm === 0 || watched.has(a.task) || !models.has(a.model) || q.get.get(a.task) || !picks(a.task)) return;
    if (watched.size >= WATCHED_MAX) watched.delete(watched.keys().next().value!);
    watched.set(a.task, a);
  }

  /** Each watched task: once challengeable, run it; a root that differs from the result's is challenged. */
  async function watch(): Promise<void> {
    for (const [id, a] of [...watched]) {
      if (stopped) return;
      const view = await ctx.view(id);
      if (!view || view.status === 'final' || view.status === 'failed' || view.participants.some((p) => p.node === address)) {
        watched.delete(id);
        continue;
      }
      if (view.status !== 'challengeable' || !view.receipt) continue;
      watched.delete(id);
      const model = models.get(a.model)!;
      const claim = await behaviour.claim(model, a, ctx);
      activity.watched += 1;
      if (!claim || claim.root === view.receipt.traceRoot) continue;
      log(`${name}: task ${id}: the result's root ${view.receipt.traceRoot.slice(0, 12)}… is not this node's ${claim.root.slice(0, 12)}…: challenging`);
      // Kept like a claim of its own, so that the dispute's duties find it.
      q.recovered.run(id, a.leaseEnd, JSON.stringify(a), JSON.stringify(claim), Date.now());
      q.set.run('challenged', null, Date.now(), id);
      await attemptDuty({ task: id, kind: 'challenge' });
    }
  }

  /** A message from the coordinator to this node. */
  async function handle(m: { tags: Record<string, string>; data: string }): Promise<void> {
    const task = m.tags.Task;
    const deadline = Number(m.tags.Deadline);
    switch (m.tags.Action) {
      case 'Task-Assigned':
        return attempt(JSON.parse(m.data) as Assignment);
      case 'Reveal-Requested':
        return attemptDuty({ task, kind: 'reveal', deadline });
      case 'Dispute-Round': {
        const { points } = JSON.parse(m.data) as { points: number[] };
        return attemptDuty({ task, kind: 'post', deadline, round: Number(m.tags.Round), points });
      }
      case 'Dispute-Prove':
        return attemptDuty({ task, kind: 'open', deadline, step: Number(m.tags.Step) });
    }
  }

  // New leases and duties arrive as messages in the coordinator's results, which the node follows
  // with the CU's waiting `results` call, in slot order; a dry-run of `Tasks` with each heartbeat
  // catches anything missed (a restart, a CU that was down).
  let stopped = false;
  const stop = new AbortController();

  // The messages this node sends so that the coordinator moves on (wake.ts): one timer for the
  // earliest need; a beat in flight is not doubled (one more follows it if a need came meanwhile).
  let wake = emptyWake();
  let beatTimer: NodeJS.Timeout | null = null;
  let beating = false;
  let beatAgain = false;
  const schedule = (): void => {
    if (beatTimer) clearTimeout(beatTimer);
    beatTimer = null;
    const at = beatAt(wake);
    if (at === null || stopped) return;
    beatTimer = setTimeout(() => {
      beatTimer = null;
      void beat();
    }, Math.max(0, at - Date.now()));
  };
  async function beat(): Promise<void> {
    if (stopped) return;
    const at = beatAt(wake);
    if (at === null || at > Date.now()) return schedule();
    if (beating) {
      beatAgain = true;
      return;
    }
    beating = true;
    try {
      await ao.message(network.coordinator, { tags: [{ name: 'Action', value: 'Heartbeat' }] });
    } catch (e) {
      if (!stopped) log(`${name}: heartbeat: ${(e as Error).message}`);
    } finally {
      beating = false;
    }
    // Sent: the commit's draw has its later message; a window still open is looked at again later.
    wake = afterBeat(wake, Date.now());
    if (beatAgain) {
      beatAgain = false;
      return beat();
    }
    schedule();
  }
  /** What the wake rules need of a page: the replies to this node and the tasks that ended, per result. */
  const seenResults = (page: ResultsPage): SeenResult[] =>
    page.edges.map(({ node }) => {
      const seen: SeenResult = { toMe: [], ended: [] };
      for (const m of node.Messages) {
        const tag = (n: string): string => m.Tags.find((t) => t.name === n)?.value ?? '';
        if (m.Target === address) seen.toMe.push({ action: tag('Action'), task: tag('Task') });
        else if (tag('Action') === 'Infer-Response' && (tag('Status') === 'final' || tag('Status') === 'failed')) seen.ended.push(tag('Task'));
      }
      return seen;
    });

  // When this node last saw a new result of the coordinator: its clock moved then. The periodic
  // heartbeat is sent only when it did not move for a whole interval, so that one node's heartbeat
  // serves every node on a quiet network and none is needed under load.
  let lastResultAt = 0;
  const loop = (async () => {
    let cursor: string | undefined;
    while (!stopped) {
      try {
        if (Date.now() - lastBeat >= heartbeatMs) {
          lastBeat = Date.now();
          cursor ??= await ao.latest(network.coordinator);
          await reconcile();
          if (Date.now() - lastResultAt >= heartbeatMs) {
            await ao.message(network.coordinator, { tags: [{ name: 'Action', value: 'Heartbeat' }] });
            wake = afterBeat(wake, Date.now());
          }
        }
        const page = await ao.results(network.coordinator, { from: cursor, wait: Math.min(heartbeatMs, 5000), signal: stop.signal });
        cursor = page.edges.at(-1)?.cursor ?? cursor;
        if (page.edges.length > 0) {
          lastResultAt = Date.now();
          wake = observe(wake, seenResults(page), Date.now(), windowMs);
          schedule();
        }
        for (const m of messagesWhere(page, (target) => target === address)) if (!stopped) await handle(m);
        if (watchPpm > 0) for (const m of messagesWhere(page, (target, tags) => target !== address && tags.Action === 'Task-Assigned')) noticeLease(JSON.parse(m.data) as Assignment);
      } catch (e) {
        if (stopped) break;
        log(`${name}: ${(e as Error).message}`);
        await sleep(pollMs);
      }
    }
  })();
  log(`${name}: serving ${wanted.map((m) => m.slice(0, 12)).join(', ')}`);

  return {
    address,
    did,
    models: wanted,
    streamUrl,
    strategy: behaviour.name,
    completed: () => activity.committed,
    activity: () => ({ ...activity }),
    jobsAtOnce: () => mostAtOnce,
    async close() {
      stopped = true;
      stop.abort();
      if (beatTimer) clearTimeout(beatTimer);
      await loop;
      // Runs in progress stop at their next position; a running task is run again after a restart.
      queued.clear();
      await Promise.allSettled([...working.values()]);
      // Confirmations and duties in flight end too (each is re-sent or confirmed after a restart).
      while (background.size > 0) await Promise.allSettled([...background]);
      await streams?.close();
      db.close();
    },
  };
}
