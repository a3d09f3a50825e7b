// The Compute Unit: a process's state is nothing but its SU log evaluated in slot order, so the CU
// replays the log through the process module (runtime.ts) and serves the results. It checks the
// SU's hash chain as it reads, keeps every result and the state's hash in SQLite, writes state
// checkpoints to the store so a restart does not replay from zero, and signs each result.
import { listen } from '../store/listen.js';
import { createHash } from 'node:crypto';
import { openDatabase } from '../store/database.js';
import fastify, { type FastifyInstance } from 'fastify';
import { ITEM_ID, createItem, tagValue, verifyItem, type Item, type Tag } from '../store/items.js';
import type { Store } from '../store/store.js';
import { walletAddress, walletSigner, type Wallet } from '../store/wallet.js';
import { evaluatorPool, type EvaluatorPool } from './evaluator.js';
import { DEFAULT_LIMITS, HOST_EXTENSION, HostUnavailable, type Evaluation, type Extensions, type Limits, type Outcome, type ProcessEnv, type ProcessMessage } from './runtime.js';
import { LocateError } from './locate.js';
import { nextHashChain, serialQueues } from './protocol.js';

export interface ComputeOptions {
  /** Its SQLite (results, state hashes, checkpoint index). */
  dir: string;
  /** Where modules are read and checkpoints written. */
  store: Store;
  /** Signs every result (Ed25519 or Arweave). */
  wallet: Wallet;
  /** The SU URL for a process; `forget` drops what it cached (after the SU did not answer). */
  scheduler: ((processId: string) => Promise<string>) & { forget?: () => void };
  limits?: Limits;
  /** Host functions, offered only to processes whose module carries the tag `Extension: Verity-Host`. */
  extensions?: Extensions;
  /** Evaluator threads (default: defaultEvaluatorThreads()). */
  evaluators?: number;
  /** A checkpoint every this many messages (and when asked). */
  checkpointEvery?: number;
}

/** The longest a `results` call may wait for a new result. */
export const MAX_WAIT_MS = 30_000;

/**
 * Reads (dry-runs) waiting per process: each is a whole evaluation, queued behind the process's
 * log, so beyond this many the CU answers 503 at once instead of queueing without bound.
 */
export const MAX_QUEUED_DRY_RUNS = 64;

/** The largest dry-run body (a JSON message): checked before it is parsed. */
export const MAX_DRY_RUN_BYTES = 1024 * 1024;

/**
 * A result as the CU serves it: AO's shape plus the CU's attestation, a data item signed by the CU
 * (base64url of its bytes) whose tags name the process, message, slot, output hash and state hash.
 */
export interface Result extends Omit<Outcome, 'GasUsed'> {
  GasUsed: number;
  Attestation: string;
}

export interface Attestation {
  /** The CU's wallet address. */
  address: string;
  process: string;
  message: string;
  nonce: number;
  stateHash: string;
}

const outputHash = (outcome: Omit<Result, 'Attestation'>): string => sha256hex(JSON.stringify(outcome));

/** Checks a result's attestation (signature, and that it covers this very output); says who signed what. */
export async function verifyAttestation(result: Result): Promise<Attestation> {
  const { Attestation: raw, ...outcome } = result;
  if (typeof raw !== 'string') throw new ComputeError(400, 'the result carries no attestation');
  const item = await verifyItem(Buffer.from(raw, 'base64url'));
  const tag = (name: string): string => {
    const value = tagValue(item, name);
    if (value === undefined) throw new ComputeError(400, `the attestation has no ${name} tag`);
    return value;
  };
  if (tag('Type') !== 'Attestation') throw new ComputeError(400, 'the item is not an attestation');
  if (tag('Output-Hash') !== outputHash(outcome)) throw new ComputeError(400, 'the attestation is for another output');
  return { address: item.address, process: tag('Process'), message: tag('Message'), nonce: Number(tag('Nonce')), stateHash: tag('State-Hash') };
}

export class ComputeError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'ComputeError';
  }
}

interface SuMessage {
  message: { id: string; owner: { address: string; key: string }; data: string | null; tags: Tag[]; signature: string; anchor: string | null; target: string | null } | null;
  assignment: { id: string; tags: Tag[] };
}

interface Loaded {
  processId: string;
  /** The scheduler wallet its Process item names: only its signed assignments count. */
  scheduler: string;
  env: ProcessEnv;
  source: string;
  limits: Limits;
  /** The host functions its module asked for (none, or the CU's). */
  extensions: Extensions;
  nonce: number; // last evaluated slot, −1 before the Process itself
  state: unknown;
  stateHash: string;
  hashChain: string | null;
  lastAssignment: string | null;
  timestamp: number;
  blockHeight: number;
  sinceCheckpoint: number;
}

/** The wallets a process trusts to push messages from other processes: its `Authority` tags (comma-separated lists allowed). */
const authorities = (tags: Tag[]): Set<string> =>
  new Set(tags.filter((t) => t.name === 'Authority').flatMap((t) => t.value.split(',').map((a) => a.trim())));

const sha256hex = (text: string): string => createHash('sha256').update(text).digest('hex');


/** A module's Memory-Limit ("<n>-b") and Compute-Limit tags, capped by the CU's own limits. */
function moduleLimits(module: Item, cap: Limits): Limits {
  const memory = Number(/^(\d+)-b$/.exec(tagValue(module, 'Memory-Limit') ?? '')?.[1] ?? NaN);
  const compute = Number(tagValue(module, 'Compute-Limit') ?? NaN);
  return {
    memory: Number.isSafeInteger(memory) && memory > 0 ? Math.min(memory, cap.memory) : cap.memory,
    compute: Number.isSafeInteger(compute) && compute > 0 ? Math.min(compute, cap.compute) : cap.compute,
  };
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS results (
    process TEXT NOT NULL, nonce INTEGER NOT NULL, message TEXT NOT NULL, timestamp INTEGER NOT NULL,
    result TEXT NOT NULL, state_hash TEXT NOT NULL,
    PRIMARY KEY (process, nonce)
  );
  CREATE INDEX IF NOT EXISTS results_message ON results (message);
  CREATE TABLE IF NOT EXISTS checkpoints (
    process TEXT PRIMARY KEY, nonce INTEGER NOT NULL, item TEXT NOT NULL, state_hash TEXT NOT NULL
  );
`;

export interface ComputeUnit {
  address: string;
  /** The result of message `messageId` of process `processId`, evaluating the log up to it. */
  result(processId: string, messageId: string): Promise<Result>;
  /**
   * A page of results. With `wait` (ms) and nothing after `from` yet, it answers as soon as a new
   * result is stored, or empty when the time is up: a client follows a process without polling.
   */
  results(processId: string, q: { from?: string; to?: string; sort?: 'ASC' | 'DESC'; limit?: number; wait?: number; after?: string }): Promise<{ pageInfo: { hasNextPage: boolean }; edges: { cursor: string; node: Result }[] }>;
  /** Evaluates a message against the latest state without keeping anything. */
  dryRun(processId: string, message: { Id?: string; Owner?: string; Data?: string; Tags?: Tag[]; Anchor?: string }): Promise<Omit<Result, 'Attestation'>>;
  state(processId: string): Promise<{ state: unknown; nonce: number; stateHash: string; timestamp: number; blockHeight: number }>;
  /** Writes a checkpoint of every process loaded now. */
  checkpoint(): Promise<void>;
  /** Messages evaluated since this CU was opened (a restart that resumes from a checkpoint evaluates only what follows it). */
  evaluated(): number;
  close(): Promise<void>;
}

export async function openComputeUnit(options: ComputeOptions): Promise<ComputeUnit> {
  const pool: EvaluatorPool = evaluatorPool({ threads: options.evaluators });
  // Everything here can be recomputed from the SU log: a crash may lose only the newest results,
  // which a restart evaluates again, so no fsync per result.
  const db = openDatabase(options.dir, 'cu.sqlite', SCHEMA, { durable: false });
  const limits = options.limits ?? DEFAULT_LIMITS;
  const checkpointEvery = options.checkpointEvery ?? 64;
  const signer = walletSigner(options.wallet);
  const address = walletAddress(options.wallet);
  const loaded = new Map<string, Loaded>();
  // One evaluation at a time per process: the log is a sequence.
  const locks = serialQueues();
  let evaluatedCount = 0;
  // Dry-runs waiting (or running) per process: bounded by MAX_QUEUED_DRY_RUNS.
  const dryRuns = new Map<string, number>();
  let closing = false;
  // Clients waiting for a process's next result (results with `wait`).
  const waiting = new Map<string, Set<() => void>>();
  const wake = (processId: string): void => {
    for (const done of waiting.get(processId) ?? []) done();
  };

  const q = {
    insertResult: db.prepare('INSERT OR REPLACE INTO results (process, nonce, message, timestamp, result, state_hash) VALUES (?, ?, ?, ?, ?, ?)'),
    resultByMessage: db.prepare<[string, string], { nonce: number; result: string }>('SELECT nonce, result FROM results WHERE process = ? AND message = ?'),
    checkpoint: db.prepare<[string], { nonce: number; item: string; state_hash: string }>('SELECT nonce, item, state_hash FROM checkpoints WHERE process = ?'),
    saveCheckpoint: db.prepare('INSERT OR REPLACE INTO checkpoints (process, nonce, item, state_hash) VALUES (?, ?, ?, ?)'),
  };

  /** One evaluation at a time per process: the log is a sequence. */
  const serial = locks.run;

  async function suJson<T>(processId: string, path: string): Promise<T> {
    let su: string;
    try {
      su = await options.scheduler(processId);
    } catch (e) {
      if (e instanceof LocateError) throw e;
      throw new ComputeError(503, `cannot locate the SU of ${processId} now: ${(e as Error).message}`);
    }
    let res: Response;
    try {
      res = await fetch(`${su}${path}`);
    } catch (e) {
      // It may have moved: read its Scheduler-Location again next time.
      options.scheduler.forget?.();
      throw new ComputeError(502, `the SU at ${su} is unreachable: ${(e as Error).message}`);
    }
    if (res.status === 404 || res.status === 400) throw new ComputeError(404, `the SU does not know ${path.split('?')[0].slice(1)} (${res.status})`);
    if (!res.ok) throw new ComputeError(502, `the SU answered ${res.status} for ${path}`);
    try {
      return (await res.json()) as T;
    } catch (e) {
      throw new ComputeError(502, `the SU's answer for ${path.split('?')[0]} is not JSON: ${(e as Error).message}`);
    }
  }

  async function readItem(id: string): Promise<Item> {
    let stored: Item | null;
    try {
      stored = await options.store.get(id);
    } catch (e) {
      // A store out of reach (a gateway under load) is not "no such item": ask again later.
      throw new ComputeError(503, `the store cannot give item ${id} now: ${(e as Error).message}`);
    }
    if (stored) return stored;
    throw new ComputeError(404, `item ${id} is not in the store`);
  }

  async function load(processId: string): Promise<Loaded> {
    const cached = loaded.get(processId);
    if (cached) return cached;
    // The process as it was signed, not as any unit describes it.
    const p = await readItem(processId);
    if (tagValue(p, 'Type') !== 'Process') throw new ComputeError(400, `item ${processId} is not a Process`);
    const scheduler = tagValue(p, 'Scheduler');
    if (!scheduler) throw new ComputeError(400, `process ${processId} has no Scheduler tag`);
    const moduleId = tagValue(p, 'Module');
    if (!moduleId) throw new ComputeError(400, `process ${processId} has no Module tag`);
    const module = await readItem(moduleId);
    if (tagValue(module, 'Type') !== 'Module') throw new ComputeError(400, `item ${moduleId} is not a Module`);
    const env: ProcessEnv = {
      Process: { Id: processId, Owner: p.address, Tags: p.tags },
      Module: { Id: moduleId, Owner: module.address, Tags: module.tags },
    };
    const asksForHost = module.tags.some((t) => t.name === 'Extension' && t.value === HOST_EXTENSION);
    const fresh: Loaded = {
      processId, scheduler, env, source: module.data.toString('utf8'), limits: moduleLimits(module, limits),
      extensions: asksForHost ? (options.extensions ?? {}) : {},
      nonce: -1, state: null, stateHash: sha256hex('null'),
      hashChain: null, lastAssignment: null, timestamp: 0, blockHeight: 0, sinceCheckpoint: 0,
    };
    const cp = q.checkpoint.get(processId);
    if (cp) {
      const item = await readItem(cp.item);
      const saved = JSON.parse(item.data.toString('utf8')) as Pick<Loaded, 'nonce' | 'state' | 'stateHash' | 'hashChain' | 'lastAssignment' | 'timestamp' | 'blockHeight'>;
      if (sha256hex(JSON.stringify(saved.state)) !== cp.state_hash || saved.stateHash !== cp.state_hash) throw new ComputeError(500, `checkpoint ${cp.item} of ${processId} is corrupt`);
      Object.assign(fresh, saved);
    }
    loaded.set(processId, fresh);
    return fresh;
  }

  async function writeCheckpoint(p: Loaded): Promise<void> {
    if (p.nonce < 0 || q.checkpoint.get(p.processId)?.nonce === p.nonce) return;
    const { nonce, state, stateHash, hashChain, lastAssignment, timestamp, blockHeight } = p;
    const tags: Tag[] = [
      { name: 'Data-Protocol', value: 'verity' },
      { name: 'Type', value: 'Checkpoint' },
      { name: 'Process', value: p.processId },
      { name: 'Nonce', value: String(nonce) },
      { name: 'State-Hash', value: stateHash },
      { name: 'Content-Type', value: 'application/json' },
    ];
    const item = await createItem(JSON.stringify({ nonce, state, stateHash, hashChain, lastAssignment, timestamp, blockHeight }), signer, { tags });
    await options.store.put(item.raw);
    q.saveCheckpoint.run(p.processId, nonce, item.id, stateHash);
    p.sinceCheckpoint = 0;
  }

  async function attest(processId: string, messageId: string, nonce: number, outcome: Omit<Result, 'Attestation'>, stateHash: string): Promise<Result> {
    const values = { Type: 'Attestation', Process: processId, Message: messageId, Nonce: String(nonce), 'Output-Hash': outputHash(outcome), 'State-Hash': stateHash };
    const item = await createItem('', signer, { tags: Object.entries(values).map(([name, value]) => ({ name, value })) });
    return { ...outcome, Attestation: item.raw.toString('base64url') };
  }

  function toMessage(p: Loaded, m: SuMessage, readOnly = false): ProcessMessage {
    const a = m.assignment.tags;
    const tag = (name: string): string => a.find((t) => t.name === name)?.value ?? '';
    const msg = m.message!;
    // A From-Process tag is a claim anyone can write: it names the sender only when the item is
    // signed by one of the process's Authority wallets (its MUs), as in AO.
    const claimed = msg.tags.find((t) => t.name === 'From-Process')?.value;
    const fromProcess = claimed !== undefined && authorities(p.env.Process.Tags).has(msg.owner.address) ? claimed : undefined;
    return {
      Id: msg.id,
      Signature: msg.signature,
      Data: msg.data ?? '',
      Owner: msg.owner.address,
      Anchor: msg.anchor,
      From: fromProcess ?? msg.owner.address,
      ...(fromProcess ? { 'Forwarded-By': msg.owner.address } : {}),
      Tags: msg.tags,
      // The item's own target: an item assigned here from another process's log says so (slot 0,
      // the process itself, has none). A process acts only on what is addressed to it.
      Target: Number(tag('Nonce')) === 0 ? p.processId : (msg.target ?? ''),
      Epoch: Number(tag('Epoch') || 0),
      Nonce: Number(tag('Nonce')),
      Timestamp: Number(tag('Timestamp')),
      'Block-Height': Number(tag('Block-Height')),
      'Hash-Chain': tag('Hash-Chain'),
      Cron: false,
      ...(readOnly ? { 'Read-Only': true } : {}),
    };
  }

  /**
   * A slot made by an assignment carries no message: it is the stored item the assignment names,
   * without the fields its Exclude tag lists.
   */
  async function assignedMessage(assignment: Pick<Item, 'id' | 'tags'>): Promise<NonNullable<SuMessage['message']>> {
    const id = tagValue(assignment, 'Message');
    if (!id) throw new ComputeError(502, `assignment ${assignment.id} names no message`);
    const item = await readItem(id);
    const exclude = new Set((tagValue(assignment, 'Exclude') ?? '').split(',').map((s) => s.trim()));
    return {
      id: item.id,
      owner: { address: item.address, key: item.owner },
      data: exclude.has('Data') ? null : item.data.toString('utf8'),
      tags: item.tags,
      signature: item.signature,
      anchor: exclude.has('Anchor') ? null : item.anchor,
      target: item.target,
    };
  }

  /** One message on the process's state, in an evaluator thread; a fault of the thread (never the process's doing) is a 503. */
  async function evaluateIn(p: Loaded, message: ProcessMessage): Promise<Evaluation> {
    try {
      return await pool.evaluate(p.source, p.state, message, p.env, p.limits, p.extensions);
    } catch (e) {
      if (e instanceof HostUnavailable) throw e;
      throw new ComputeError(503, `the CU could not evaluate message ${message.Id} now: ${(e as Error).message}`);
    }
  }

  /** Evaluates the log of `p` up to slot `upTo` (or to its end). */
  async function catchUp(p: Loaded, upTo = Number.MAX_SAFE_INTEGER): Promise<void> {
    while (p.nonce < upTo) {
      const page = await suJson<{ page_info: { has_next_page: boolean }; edges: { node: SuMessage }[] }>(
        p.processId,
        `/${p.processId}?process-id=${p.processId}&from-nonce=${p.nonce}&limit=100`, // from-nonce is exclusive
      );
      const edges = page.edges.filter((e) => Number(tagValue(e.node.assignment, 'Nonce')) > p.nonce);
      if (edges.length === 0) return;
      for (const { node } of edges) {
        // The SU's page only says which assignment comes next: the assignment and its message are
        // read from the store and checked — signed by the process's scheduler, for this process,
        // the next slot, the next link of the chain — so a unit that lies is caught here.
        const assignment = await readItem(node.assignment.id);
        if (assignment.address !== p.scheduler) throw new ComputeError(502, `assignment ${assignment.id} is not signed by the scheduler of ${p.processId}`);
        if (tagValue(assignment, 'Process') !== p.processId) throw new ComputeError(502, `assignment ${assignment.id} is for another process`);
        const nonce = Number(tagValue(assignment, 'Nonce'));
        if (nonce !== p.nonce + 1) throw new ComputeError(502, `the SU skipped from slot ${p.nonce} to ${nonce} of ${p.processId}`);
        const chain = nextHashChain(p.processId, p.lastAssignment && p.hashChain ? { assignment: p.lastAssignment, chain: p.hashChain } : null);
        if (tagValue(assignment, 'Hash-Chain') !== chain) throw new ComputeError(502, `the SU's hash chain breaks at slot ${nonce} of ${p.processId}`);
        const message = toMessage(p, { assignment, message: await assignedMessage(assignment) });
        const evaluation: Evaluation = await evaluateIn(p, message);
        evaluatedCount += 1;
        const { state, ...outcome } = evaluation;
        p.state = state;
        p.stateHash = sha256hex(JSON.stringify(state));
        p.nonce = nonce;
        p.hashChain = chain;
        p.lastAssignment = assignment.id;
        p.timestamp = message.Timestamp;
        p.blockHeight = message['Block-Height'];
        const result = await attest(p.processId, message.Id, nonce, outcome, p.stateHash);
        q.insertResult.run(p.processId, nonce, message.Id, message.Timestamp, JSON.stringify(result), p.stateHash);
        wake(p.processId);
        if (++p.sinceCheckpoint >= checkpointEvery) await writeCheckpoint(p);
        if (nonce >= upTo) return;
      }
      if (!page.page_info.has_next_page && edges.length < 100) return;
    }
  }

  const cursorOf = (nonce: number): string => Buffer.from(JSON.stringify({ nonce })).toString('base64url');
  const nonceOf = (cursor: string): number => {
    try {
      const n = (JSON.parse(Buffer.from(cursor, 'base64url').toString()) as { nonce: unknown }).nonce;
      if (Number.isInteger(n)) return n as number;
    } catch {
      // fall through
    }
    throw new ComputeError(400, 'bad cursor');
  };

  return {
    address,
    result: (processId, messageId) =>
      serial(processId, async () => {
        const done = q.resultByMessage.get(processId, messageId);
        if (done) return JSON.parse(done.result) as Result;
        // The process itself is slot 0 (its boot message); the SU answers its id with the log.
        const nonce = messageId === processId ? 0 : Number(tagValue((await suJson<SuMessage>(processId, `/${messageId}?process-id=${processId}`)).assignment, 'Nonce'));
        const p = await load(processId);
        await catchUp(p, nonce);
        const row = q.resultByMessage.get(processId, messageId);
        if (!row) throw new ComputeError(404, `message ${messageId} is not in the log of ${processId}`);
        return JSON.parse(row.result) as Result;
      }),
    async results(processId, query) {
      await serial(processId, async () => catchUp(await load(processId)));
      const sort = query.sort === 'DESC' ? 'DESC' : 'ASC';
      const limit = Math.min(Math.max(query.limit ?? 25, 1), 1000);
      const where = ['process = ?'];
      const params: (string | number)[] = [processId];
      if (query.from !== undefined) {
        where.push(sort === 'ASC' ? 'nonce > ?' : 'nonce < ?');
        params.push(nonceOf(query.from));
      } else if (query.after !== undefined) {
        // Results after a given message's own slot (Verity's addition: find what a message led to).
        const row = q.resultByMessage.get(processId, query.after);
        if (!row) throw new ComputeError(404, `message ${query.after} is not in the log of ${processId}`);
        where.push(sort === 'ASC' ? 'nonce > ?' : 'nonce < ?');
        params.push(row.nonce);
      }
      if (query.to !== undefined) {
        where.push(sort === 'ASC' ? 'nonce <= ?' : 'nonce >= ?');
        params.push(nonceOf(query.to));
      }
      const select = db.prepare<(string | number)[], { nonce: number; result: string }>(`SELECT nonce, result FROM results WHERE ${where.join(' AND ')} ORDER BY nonce ${sort} LIMIT ?`);
      let rows = select.all(...params, limit + 1);
      const wait = Math.min(Math.max(query.wait ?? 0, 0), MAX_WAIT_MS);
      if (rows.length === 0 && wait > 0 && sort === 'ASC' && !closing) {
        await new Promise<void>((resolve) => {
          const set = waiting.get(processId) ?? new Set();
          waiting.set(processId, set);
          const done = (): void => {
            clearTimeout(timer);
            set.delete(done);
            if (set.size === 0) waiting.delete(processId);
            resolve();
          };
          const timer = setTimeout(done, wait);
          set.add(done);
        });
        rows = select.all(...params, limit + 1);
      }
      return {
        pageInfo: { hasNextPage: rows.length > limit },
        edges: rows.slice(0, limit).map((r) => ({ cursor: cursorOf(r.nonce), node: JSON.parse(r.result) as Result })),
      };
    },
    dryRun(processId, input) {
      const queued = dryRuns.get(processId) ?? 0;
      if (queued >= MAX_QUEUED_DRY_RUNS) return Promise.reject(new ComputeError(503, `${queued} dry-runs of ${processId} are waiting already: ask again shortly`));
      dryRuns.set(processId, queued + 1);
      const done = (): void => {
        const left = (dryRuns.get(processId) ?? 1) - 1;
        if (left > 0) dryRuns.set(processId, left);
        else dryRuns.delete(processId);
      };
      return serial(processId, async () => {
        const p = await load(processId);
        await catchUp(p);
        const message: ProcessMessage = {
          Id: input.Id ?? '1234', Data: input.Data ?? '', Owner: input.Owner ?? '1234', From: input.Owner ?? '1234',
          Anchor: input.Anchor ?? null, Tags: input.Tags ?? [], Target: processId, Nonce: p.nonce + 1,
          Timestamp: p.timestamp, 'Block-Height': p.blockHeight, Cron: false, 'Read-Only': true,
        };
        const { state: _state, ...outcome } = await evaluateIn(p, message);
        return outcome;
      }).finally(done);
    },
    state: (processId) =>
      serial(processId, async () => {
        const p = await load(processId);
        await catchUp(p);
        return { state: p.state, nonce: p.nonce, stateHash: p.stateHash, timestamp: p.timestamp, blockHeight: p.blockHeight };
      }),
    async checkpoint() {
      for (const p of loaded.values()) await serial(p.processId, () => writeCheckpoint(p));
    },
    evaluated: () => evaluatedCount,
    async close() {
      closing = true;
      for (const processId of [...waiting.keys()]) wake(processId);
      await locks.settled();
      await pool.close();
      db.close();
    },
  };
}

/** AO's CU HTTP API (research/ao.md §2c) for a ComputeUnit. */
export function createComputeServer(cu: ComputeUnit): FastifyInstance {
  const app = fastify({ logger: false, bodyLimit: MAX_DRY_RUN_BYTES });
  const fail = (reply: { code(n: number): { send(b: unknown): unknown } }, status: number, message: string): unknown => reply.code(status).send({ error: message });
  app.setErrorHandler((e, _request, reply) => {
    if (e instanceof ComputeError) return reply.code(e.status).send({ error: e.message });
    if (e instanceof LocateError) return reply.code(404).send({ error: e.message });
    // A host extension could not read its data now: nothing was evaluated; ask again later.
    if (e instanceof HostUnavailable) return reply.code(503).send({ error: e.message });
    const status = (e as { statusCode?: number }).statusCode;
    if (status && status >= 400 && status < 500) return reply.code(status).send({ error: (e as Error).message });
    process.stderr.write(`cu: internal error: ${(e as Error).stack ?? String(e)}\n`);
    return reply.code(500).send({ error: 'internal error' });
  });
  app.get('/', async () => ({ address: cu.address, timestamp: Date.now() }));
  app.get<{ Params: { message: string }; Querystring: { 'process-id'?: string } }>('/result/:message', async (request, reply) => {
    const pid = request.query['process-id'];
    if (!pid || !ITEM_ID.test(pid) || !ITEM_ID.test(request.params.message)) return fail(reply, 400, 'GET /result/:message needs a message id and ?process-id=');
    return cu.result(pid, request.params.message);
  });
  app.get<{ Params: { process: string }; Querystring: { from?: string; to?: string; sort?: string; limit?: string; wait?: string; after?: string } }>('/results/:process', async (request, reply) => {
    if (!ITEM_ID.test(request.params.process)) return fail(reply, 400, 'bad process id');
    const { from, to, sort, limit, wait, after } = request.query;
    if (after !== undefined && !ITEM_ID.test(after)) return fail(reply, 400, 'after must be a message id');
    if (limit !== undefined && !/^\d+$/.test(limit)) return fail(reply, 400, 'limit must be a whole number');
    if (wait !== undefined && !/^\d{1,6}$/.test(wait)) return fail(reply, 400, `wait must be a whole number of ms (at most ${MAX_WAIT_MS})`);
    if (sort !== undefined && sort !== 'ASC' && sort !== 'DESC') return fail(reply, 400, 'sort must be ASC or DESC');
    return cu.results(request.params.process, { from, to, sort, after, limit: limit === undefined ? undefined : Number(limit), wait: wait === undefined ? undefined : Number(wait) });
  });
  app.post<{ Querystring: { 'process-id'?: string } }>('/dry-run', async (request, reply) => {
    const pid = request.query['process-id'];
    if (!pid || !ITEM_ID.test(pid)) return fail(reply, 400, 'POST /dry-run needs ?process-id=');
    const body = request.body as Record<string, unknown> | null;
    if (!body || typeof body !== 'object') return fail(reply, 400, 'the body must be a JSON message');
    const tags = Array.isArray(body.Tags) && body.Tags.every((t) => typeof t?.name === 'string' && typeof t?.value === 'string') ? (body.Tags as Tag[]) : null;
    if (body.Tags !== undefined && !tags) return fail(reply, 400, 'Tags must be a list of {name, value}');
    const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
    return cu.dryRun(pid, { Id: str(body.Id), Owner: str(body.Owner), Data: str(body.Data), Anchor: str(body.Anchor), Tags: tags ?? [] });
  });
  app.get<{ Params: { process: string } }>('/state/:process', async (request, reply) => {
    if (!ITEM_ID.test(request.params.process)) return fail(reply, 400, 'bad process id');
    const s = await cu.state(request.params.process);
    return reply
      .header('Last-Nonce', String(s.nonce))
      .header('Last-Timestamp', String(s.timestamp))
      .header('Last-Block-Height', String(s.blockHeight))
      .header('State-Hash', s.stateHash)
      .send(s.state ?? null);
  });
  return app;
}

export async function startComputeUnit(cu: ComputeUnit, options: { port: number; host?: string }): Promise<{ url: string; close(): Promise<void> }> {
  return listen(createComputeServer(cu), options.port, options.host);
}

