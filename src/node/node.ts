// The worker node: registers with the coordinator under its did:key, stakes, fetches and verifies
// its models, then takes the leases the coordinator draws for it (following the coordinator's
// results for Task-Assigned messages), runs each job while recording its trace, stores the trace
// and submits the result.
//
// Each task's progress is a row in the node's SQLite, written before the step it guards: a task
// found `running` after a crash is run again while its lease is open (the run is deterministic, so
// the result is the same) and released otherwise; a `submitting` one is re-sent from its stored,
// signed bytes, never signed twice.
import { join } from 'node:path';
import { openDatabase } from '../store/database.js';
import { RefusedError, aoClient, expectReply, messagesTo } from '../ao/client.js';
import { loadModel, type KernelPath, type Model } from '../engine/index.js';
import { fundCoordinator } from '../processes/calls.js';
import { createItem } from '../store/items.js';
import { fetchModel } from '../store/models.js';
import type { Store } from '../store/store.js';
import { walletAddress, walletDid, walletSigner, type Wallet } from '../store/wallet.js';
import { complete, traceDocument, type Assignment } from './work.js';

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
  /** Leases at once (the node runs them one after another). */
  capacity?: number;
  /** Pause after a failed round (the CU or MU unreachable). */
  pollMs?: number;
  /** How often the node says it is alive and re-reads its open leases. */
  heartbeatMs?: number;
  engine?: { kernels?: KernelPath; threads?: number };
  log?: (line: string) => void;
}

export interface RunningNode {
  address: string;
  did: string;
  models: string[];
  /** Tasks whose result the coordinator accepted since start. */
  completed(): number;
  close(): Promise<void>;
}

export class NodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NodeError';
  }
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS tasks (
    task TEXT PRIMARY KEY,
    lease_end INTEGER NOT NULL,
    status TEXT NOT NULL,            -- running | submitting | submitted | done | rejected | released
    submit BLOB,                     -- the signed Submit-Result, kept before it is sent
    submit_id TEXT,
    note TEXT,
    updated_at INTEGER NOT NULL
  );`;

interface Row {
  task: string;
  lease_end: number;
  status: string;
  submit: Buffer | null;
  submit_id: string | null;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function startNode(options: NodeOptions): Promise<RunningNode> {
  const { network, wallet, store } = options;
  if (wallet.type !== 'ed25519') throw new NodeError('a node needs an Ed25519 wallet: its public key is its did:key');
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const address = walletAddress(wallet);
  const did = walletDid(wallet);
  const name = `node ${address.slice(0, 8)}`;
  const ao = aoClient({ mu: network.mu, cu: network.cu, wallet });
  const pollMs = options.pollMs ?? 500;
  const heartbeatMs = options.heartbeatMs ?? 5000;
  // Jobs run one after another: a second lease would wait and could expire while it waits.
  const capacity = options.capacity ?? 1;

  const ask = async (process: string, message: string, action: string): Promise<Record<string, string>> => expectReply(await ao.result(process, message), action).tags;
  const dry = async (action: string, tags: { name: string; value: string }[] = []) =>
    expectReply(await ao.dryRun(network.coordinator, { tags: [{ name: 'Action', value: action }, ...tags], from: address }), `${action}-Response`);
  const dryData = async <T>(action: string, tags: { name: string; value: string }[] = []): Promise<T> => JSON.parse((await dry(action, tags)).data) as T;

  // ---- models ----
  const wanted = options.models ?? (await dryData<{ id: string }[]>('Models')).map((m) => m.id);
  if (wanted.length === 0) throw new NodeError('the coordinator lists no models and none were given');
  const models = new Map<string, Model>();
  for (const id of wanted) {
    log(`${name}: fetching model ${id.slice(0, 12)}…`);
    const path = await fetchModel(store, id, join(options.dir, 'models'), (done, total) => log(`${name}: model ${id.slice(0, 12)} chunk ${done}/${total} verified`));
    models.set(id, loadModel(path));
  }

  // ---- registration and stake ----
  const registered = (await dryData<{ address: string; models: string[]; capacity: number }[]>('Nodes')).find((n) => n.address === address);
  if (!registered || registered.capacity !== capacity || registered.models.join(',') !== wanted.join(',')) {
    const id = await ao.message(network.coordinator, {
      tags: [
        { name: 'Action', value: 'Register-Node' },
        { name: 'DID', value: did },
        { name: 'Models', value: wanted.join(',') },
        { name: 'Capacity', value: String(capacity) },
      ],
    });
    await ask(network.coordinator, id, 'Register-Node-Response');
    log(`${name}: registered as ${did}`);
  }
  const staked = BigInt((await dry('Balance', [{ name: 'Target', value: address }])).tags.Stake ?? '0');
  if (staked < options.stake) {
    const { total } = await fundCoordinator(ao, { ...network, account: address, amount: options.stake - staked, purpose: 'Stake' });
    log(`${name}: staked ${total}`);
  }

  // ---- tasks ----
  const db = openDatabase(options.dir, 'node.sqlite', SCHEMA);
  const q = {
    get: db.prepare<[string], Row>('SELECT * FROM tasks WHERE task = ?'),
    start: db.prepare('INSERT INTO tasks (task, lease_end, status, updated_at) VALUES (?, ?, \'running\', ?) ON CONFLICT(task) DO UPDATE SET status = \'running\', lease_end = excluded.lease_end, updated_at = excluded.updated_at'),
    submitting: db.prepare("UPDATE tasks SET status = 'submitting', submit = ?, submit_id = ?, updated_at = ? WHERE task = ?"),
    set: db.prepare('UPDATE tasks SET status = ?, note = ?, updated_at = ? WHERE task = ?'),
    unfinished: db.prepare<[], Row>("SELECT * FROM tasks WHERE status IN ('running', 'submitting', 'submitted') ORDER BY updated_at"),
  };

  let completed = 0;
  async function confirm(row: Pick<Row, 'task' | 'submit_id'>): Promise<void> {
    try {
      await ask(network.coordinator, row.submit_id!, 'Submit-Result-Response');
      q.set.run('done', null, Date.now(), row.task);
      completed += 1;
    } catch (e) {
      // Only the coordinator's own refusal is final; a CU out of reach is asked again next round.
      if (!(e instanceof RefusedError)) return log(`${name}: result for ${row.task} not confirmed yet: ${(e as Error).message}`);
      q.set.run('rejected', e.message, Date.now(), row.task);
      log(`${name}: result for ${row.task} refused: ${e.message}`);
    }
  }

  async function work(a: Assignment): Promise<void> {
    const known = q.get.get(a.task);
    if (known && known.status !== 'running') return;
    const model = models.get(a.model);
    if (!model) return log(`${name}: leased task ${a.task} for model ${a.model}, which this node does not serve`);
    q.start.run(a.task, a.leaseEnd, Date.now());
    const done = complete(model, a, options.engine);
    const doc = traceDocument(a.task, done);
    const trace = await createItem(doc.data, walletSigner(wallet), { tags: doc.tags });
    await store.put(trace.raw);
    const submit = await ao.sign(network.coordinator, {
      tags: [
        { name: 'Action', value: 'Submit-Result' },
        { name: 'Task', value: a.task },
        { name: 'Job-Commitment', value: done.trace.commitment },
        { name: 'Trace-Root', value: done.trace.root },
        { name: 'Trace', value: trace.id },
        { name: 'Tokens', value: String(done.tokens.length) },
      ],
      data: JSON.stringify({ tokens: done.tokens }),
    });
    q.submitting.run(submit.raw, submit.id, Date.now(), a.task);
    await ao.send(submit.raw);
    q.set.run('submitted', null, Date.now(), a.task);
    await confirm({ task: a.task, submit_id: submit.id });
  }

  // What a crash interrupted: results to re-send; running tasks are settled by the first reconcile.
  for (const row of q.unfinished.all()) {
    if (row.status === 'running') continue;
    if (row.status === 'submitting') await ao.send(row.submit!);
    await confirm(row);
  }

  /** The open leases as the coordinator lists them: work them, and release what it no longer lists. */
  async function reconcile(): Promise<void> {
    const leases = await dryData<Assignment[]>('Tasks', [{ name: 'Node', value: address }]);
    const listed = new Set(leases.map((l) => l.task));
    for (const row of q.unfinished.all()) {
      if (row.status === 'running' && !listed.has(row.task)) q.set.run('released', 'the lease is no longer open', Date.now(), row.task);
      if (row.status === 'submitted') await confirm(row);
    }
    for (const lease of leases) if (!stopped) await attempt(lease);
  }
  const attempt = (lease: Assignment): Promise<void> => work(lease).catch((e: Error) => log(`${name}: task ${lease.task}: ${e.message}`));

  // New leases arrive as Task-Assigned messages in the coordinator's results, which the node follows
  // with the CU's waiting `results` call; a dry-run of `Tasks` with each heartbeat catches anything
  // missed (a restart, a CU that was down).
  let stopped = false;
  const stop = new AbortController();
  const loop = (async () => {
    let cursor: string | undefined;
    let lastBeat = 0;
    while (!stopped) {
      try {
        if (Date.now() - lastBeat >= heartbeatMs) {
          lastBeat = Date.now();
          cursor ??= await ao.latest(network.coordinator);
          await reconcile();
          await ao.message(network.coordinator, { tags: [{ name: 'Action', value: 'Heartbeat' }] });
        }
        const page = await ao.results(network.coordinator, { from: cursor, wait: Math.min(heartbeatMs, 5000), signal: stop.signal });
        cursor = page.edges.at(-1)?.cursor ?? cursor;
        for (const { data } of messagesTo(page, address, 'Task-Assigned')) if (!stopped) await attempt(JSON.parse(data) as Assignment);
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
    completed: () => completed,
    async close() {
      stopped = true;
      stop.abort();
      await loop;
      db.close();
    },
  };
}
