// The Compute Unit: a process's state is nothing but its SU log evaluated in slot order, so the CU
// replays the log through the process's VM (runtime.ts; the VM keeps the state in place between
// messages, in an evaluator thread) and serves the results. It checks the SU's hash chain as it
// reads (cu-rules.ts), keeps every result in SQLite, signs each one, and writes checkpoints of the
// state to the store so that a restart resumes from the newest one instead of slot 0.
// The file reads as: storage (SQL), reading the log, evaluating it, the API; the rules are in cu-rules.ts.
import type Database from 'better-sqlite3';
import { listen } from '../store/listen.js';
import { openDatabase } from '../store/database.js';
import fastify, { type FastifyInstance } from 'fastify';
import { ITEM_ID, createItem, tagValue, verifyItem, type Item, type Tag } from '../store/items.js';
import type { Store } from '../store/store.js';
import { walletAddress, walletSigner, type Wallet } from '../store/wallet.js';
import { VmLost, evaluatorPool, type EvaluatorPool } from './evaluator.js';
import { DEFAULT_LIMITS, HostUnavailable, type Extensions, type Limits, type Outcome, type ProcessEnv, type ProcessMessage, type ProcessSpec } from './runtime.js';
import { LocateError } from './locate.js';
import { LUA_MODULE_FORMAT } from './lua-runtime.js';
import type { Fetch } from './in-process.js';
import { serialQueues } from './protocol.js';
import {
  RESULTS_CHAIN_START, assignedMessage, checkpointDue, moduleExtensions, moduleLimits, nextResultsChain, nextSlotProblem, outputHash, processMessage, sha256hex,
  type CheckpointPolicy, type LogMessage, type LogPosition,
} from './cu-rules.js';

export interface ComputeOptions {
  /** Its SQLite (results, checkpoint index). */
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
  /**
   * A checkpoint every this many messages of a process at least (default 64; more for a large
   * state: cu-rules.ts checkpointDue), and when asked.
   */
  checkpointEvery?: number;
  /** ... or after this many ms with at least one new message (default 60,000). */
  checkpointMs?: number;
  /** Processes whose VMs stay loaded (default 256): past it the least recently used is unloaded. */
  maxLoaded?: number;
  /** How it reads SUs (default: the global fetch; in-process.ts for units in one process). */
  fetch?: Fetch;
}

/** The longest a `results` call may wait for a new result. */
export const MAX_WAIT_MS = 30_000;

/**
 * Reads (dry-runs) waiting per process: each is a whole evaluation, queued behind the process's
 * log, so beyond this many the CU answers 503 at once instead of queueing without bound.
 */
export const MAX_QUEUED_DRY_RUNS = 64;

/** The largest state JSON a CU keeps for repeated reads of one slot (GET /state, /now). */
const SERIALISED_STATE_BYTES = 8 * 2 ** 20;

/** The shortest time between two wake-ups of the clients waiting for a process's results. */
const WAKE_GAP_MS = 20;
/** Processes whose last wake-up time is kept (older ones are woken at once next time). */
const MAX_WAKE_TIMES = 4096;

/** A catch-up this long wakes the clients waiting for results on the way, not only at its end. */
const WAKE_EVERY = 16;

/** Slots whose store reads go on ahead of the one being evaluated. */
const PREFETCH_SLOTS = 8;

/** The largest dry-run body (a JSON message): checked before it is parsed. */
export const MAX_DRY_RUN_BYTES = 1024 * 1024;

/** The Format tag of checkpoints: the item's data is the state's JSON, its tags say where in the log. */
const CHECKPOINT_FORMAT = 'verity-checkpoint/2';

/**
 * Set (by tests) to kill the CU at a point of its checkpoint write, as a crash there would:
 * `cu-checkpoint-stored` stops it after the checkpoint item is in the store and before the CU's
 * index names it.
 */
const FAILPOINT = process.env.VERITY_FAILPOINT;

/**
 * A result as the CU serves it: AO's shape plus the CU's attestation, a data item signed by the CU
 * (base64url of its bytes) whose tags name the process, message, slot, output hash and results chain.
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
  /** The results chain at this slot (cu-rules.ts nextResultsChain). */
  resultsChain: string;
}

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
  return { address: item.address, process: tag('Process'), message: tag('Message'), nonce: Number(tag('Nonce')), resultsChain: tag('Results-Chain') };
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
  message: LogMessage | null;
  assignment: { id: string; tags: Tag[] };
}

/** A process the CU has loaded: where its log stands; its state is in its VM. */
interface Loaded extends LogPosition {
  /** Its module, environment, limits and host function names. */
  spec: ProcessSpec;
  /** The host functions its module asked for (none, or the CU's). */
  extensions: Extensions;
  resultsChain: string;
  timestamp: number;
  blockHeight: number;
  sinceCheckpoint: { messages: number; since: number };
  /** The size of the state at its last checkpoint (0 before one). */
  stateBytes: number;
  /** The state's JSON as last read, and at which slot. */
  serialised?: { nonce: number; json: string };
}

/** Where a checkpoint stands in the log: its tags. */
type CheckpointPosition = Pick<Loaded, 'nonce' | 'resultsChain' | 'hashChain' | 'lastAssignment' | 'timestamp' | 'blockHeight'>;

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS results (
    process TEXT NOT NULL, nonce INTEGER NOT NULL, message TEXT NOT NULL, timestamp INTEGER NOT NULL,
    result TEXT NOT NULL, results_chain TEXT NOT NULL,
    PRIMARY KEY (process, nonce)
  );
  CREATE INDEX IF NOT EXISTS results_message ON results (message);
  CREATE TABLE IF NOT EXISTS checkpoints (
    process TEXT PRIMARY KEY, nonce INTEGER NOT NULL, item TEXT NOT NULL, state_hash TEXT NOT NULL
  );
`;

export interface ProcessState {
  state: unknown;
  nonce: number;
  /** sha256 of the state's JSON, computed now. */
  stateHash: string;
  resultsChain: string;
  timestamp: number;
  blockHeight: number;
}

export interface ComputeUnit {
  address: string;
  /** The result of message `messageId` of process `processId`, evaluating the log up to it. */
  result(processId: string, messageId: string): Promise<Result>;
  /**
   * A page of results. With `wait` (ms) and nothing after `from` yet, it answers as soon as a new
   * result is stored, or empty when the time is up: a client follows a process without polling.
   */
  results(processId: string, q: { from?: string; to?: string; sort?: 'ASC' | 'DESC'; limit?: number; wait?: number; after?: string }): Promise<{ pageInfo: { hasNextPage: boolean }; edges: { cursor: string; node: Result }[] }>;
  /** The same page as `results`, as the JSON text the HTTP API sends. */
  resultsJson(processId: string, q: Parameters<ComputeUnit['results']>[1]): Promise<string>;
  /** Evaluates a message against the latest state without keeping anything. */
  dryRun(processId: string, message: { Id?: string; Owner?: string; Data?: string; Tags?: Tag[]; Anchor?: string }): Promise<Omit<Result, 'Attestation'>>;
  /** The latest state (serialised from the VM: it costs the state's size). */
  state(processId: string): Promise<ProcessState>;
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
  const policy: CheckpointPolicy = { messages: options.checkpointEvery ?? 64, bytesPerMessage: 4096, ms: options.checkpointMs ?? 60_000 };
  const maxLoaded = Math.max(1, options.maxLoaded ?? 256);
  const signer = walletSigner(options.wallet);
  const address = walletAddress(options.wallet);
  // Loaded processes, least recently used first (a Map keeps insertion order; a use moves it last).
  const loaded = new Map<string, Loaded>();
  // One evaluation at a time per process: the log is a sequence.
  const locks = serialQueues();
  // Work queued or running per process: a process with any is not unloaded.
  const active = new Map<string, number>();
  const serial = <T>(processId: string, work: () => Promise<T>): Promise<T> => {
    active.set(processId, (active.get(processId) ?? 0) + 1);
    return locks.run(processId, work).finally(() => {
      const left = active.get(processId)! - 1;
      if (left > 0) active.set(processId, left);
      else active.delete(processId);
    });
  };
  // Readers that need the log evaluated only as far as the SU has it (results pages) share one
  // catch-up: the one queued and not yet started serves everyone who asks before it starts, so
  // many clients following a process cost one SU read per turn, not one each.
  const queuedCatchUps = new Map<string, Promise<void>>();
  const caughtUp = (processId: string): Promise<void> => {
    let queued = queuedCatchUps.get(processId);
    if (!queued) {
      const run = serial(processId, async () => {
        if (queuedCatchUps.get(processId) === run) queuedCatchUps.delete(processId);
        await catchUp(await load(processId));
      });
      queued = run;
      queuedCatchUps.set(processId, run);
    }
    return queued;
  };
  let evaluatedCount = 0;
  // Dry-runs waiting (or running) per process: bounded by MAX_QUEUED_DRY_RUNS.
  const dryRuns = new Map<string, number>();
  // Checkpoint writes under way (they go on while the process evaluates its next messages).
  const writing = new Set<Promise<void>>();
  let closing = false;
  // Clients waiting for a process's next result (results with `wait`). They are woken at most
  // once per WAKE_GAP_MS per process: a client that follows a busy process then reads a page of
  // the results of that time, rather than one request per result (each reader of a process reads
  // all of its results, so the request count would grow with readers × results).
  const waiting = new Map<string, Set<() => void>>();
  const lastWoken = new Map<string, number>();
  const wakeTimers = new Map<string, NodeJS.Timeout>();
  const wakeNow = (processId: string): void => {
    lastWoken.delete(processId);
    lastWoken.set(processId, Date.now());
    if (lastWoken.size > MAX_WAKE_TIMES) lastWoken.delete(lastWoken.keys().next().value!);
    for (const done of waiting.get(processId) ?? []) done();
  };
  const wake = (processId: string): void => {
    if (wakeTimers.has(processId) || !waiting.has(processId)) return;
    const due = (lastWoken.get(processId) ?? 0) + WAKE_GAP_MS - Date.now();
    if (due <= 0 || closing) return wakeNow(processId);
    wakeTimers.set(processId, setTimeout(() => {
      wakeTimers.delete(processId);
      wakeNow(processId);
    }, due));
  };

  const q = {
    insertResult: db.prepare('INSERT OR REPLACE INTO results (process, nonce, message, timestamp, result, results_chain) VALUES (?, ?, ?, ?, ?, ?)'),
    resultAt: db.prepare<[string, number], { result: string; results_chain: string }>('SELECT result, results_chain FROM results WHERE process = ? AND nonce = ?'),
    resultByMessage: db.prepare<[string, string], { nonce: number; result: string }>('SELECT nonce, result FROM results WHERE process = ? AND message = ?'),
    checkpoint: db.prepare<[string], { nonce: number; item: string; state_hash: string }>('SELECT nonce, item, state_hash FROM checkpoints WHERE process = ?'),
    saveCheckpoint: db.prepare('INSERT OR REPLACE INTO checkpoints (process, nonce, item, state_hash) VALUES (?, ?, ?, ?)'),
  };

  const suFetch = options.fetch ?? fetch;
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
      res = await suFetch(`${su}${path}`);
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

  /** The newest checkpoint this CU indexed for a process, checked against the hash it indexed. */
  async function newestCheckpoint(processId: string): Promise<{ position: CheckpointPosition; state: string } | null> {
    const cp = q.checkpoint.get(processId);
    if (!cp) return null;
    const item = await readItem(cp.item);
    if (tagValue(item, 'Format') !== CHECKPOINT_FORMAT) return null; // an older CU's: replay instead
    const state = item.data.toString('utf8');
    if (sha256hex(state) !== cp.state_hash || tagValue(item, 'State-Hash') !== cp.state_hash) throw new ComputeError(500, `checkpoint ${cp.item} of ${processId} is corrupt`);
    const tag = (name: string): string => tagValue(item, name) ?? '';
    return {
      position: {
        nonce: Number(tag('Nonce')), resultsChain: tag('Results-Chain'), hashChain: tag('Hash-Chain') || null, lastAssignment: tag('Last-Assignment') || null,
        timestamp: Number(tag('Timestamp')), blockHeight: Number(tag('Block-Height')),
      },
      state,
    };
  }

  /** A process's VM and log position: loaded already, or from its newest checkpoint (or slot 0). */
  async function load(processId: string): Promise<Loaded> {
    const cached = loaded.get(processId);
    if (cached) {
      loaded.delete(processId);
      loaded.set(processId, cached);
      return cached;
    }
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
    const extensions = moduleExtensions(module, options.extensions ?? {});
    const spec: ProcessSpec = {
      format: tagValue(module, 'Module-Format') === LUA_MODULE_FORMAT ? 'lua' : 'js',
      source: module.data.toString('utf8'), env, limits: moduleLimits(module, limits), hostNames: Object.keys(extensions) };
    const checkpoint = await newestCheckpoint(processId);
    const fresh: Loaded = {
      processId, scheduler, spec, extensions,
      nonce: -1, resultsChain: RESULTS_CHAIN_START, hashChain: null, lastAssignment: null, timestamp: 0, blockHeight: 0,
      ...checkpoint?.position,
      sinceCheckpoint: { messages: 0, since: Date.now() },
      stateBytes: checkpoint?.state.length ?? 0,
    };
    try {
      await pool.open(processId, spec, checkpoint?.state ?? 'null', extensions);
    } catch (e) {
      throw new ComputeError(503, `the CU could not load process ${processId} now: ${(e as Error).message}`);
    }
    loaded.set(processId, fresh);
    await unloadBeyondLimit();
    return fresh;
  }

  /** Past `maxLoaded` VMs, the least recently used idle ones are unloaded (they reload from their checkpoints). */
  async function unloadBeyondLimit(): Promise<void> {
    for (const [processId] of loaded) {
      if (loaded.size <= maxLoaded) return;
      if (active.has(processId)) continue;
      loaded.delete(processId);
      await pool.drop(processId);
    }
  }

  /** A VM lost with its thread: forget the process, so that the next call loads it again. */
  function forgetIfLost(processId: string, e: unknown): void {
    if (e instanceof VmLost) loaded.delete(processId);
  }

  /** Captures the state now (in its VM) and stores it as a checkpoint, which goes on in the background. */
  async function checkpointNow(p: Loaded): Promise<void> {
    if (p.nonce < 0 || q.checkpoint.get(p.processId)?.nonce === p.nonce) return;
    const state = await pool.state(p.processId);
    p.stateBytes = state.length;
    const position: CheckpointPosition = { nonce: p.nonce, resultsChain: p.resultsChain, hashChain: p.hashChain, lastAssignment: p.lastAssignment, timestamp: p.timestamp, blockHeight: p.blockHeight };
    p.sinceCheckpoint = { messages: 0, since: Date.now() };
    const write = writeCheckpoint(p.processId, position, state).finally(() => writing.delete(write));
    writing.add(write);
  }

  async function writeCheckpoint(processId: string, at: CheckpointPosition, state: string): Promise<void> {
    const stateHash = sha256hex(state);
    const values: Record<string, string> = {
      'Data-Protocol': 'verity', Type: 'Checkpoint', Format: CHECKPOINT_FORMAT, Process: processId, Nonce: String(at.nonce), 'State-Hash': stateHash,
      'Results-Chain': at.resultsChain, 'Hash-Chain': at.hashChain ?? '', 'Last-Assignment': at.lastAssignment ?? '',
      Timestamp: String(at.timestamp), 'Block-Height': String(at.blockHeight), 'Content-Type': 'application/json',
    };
    try {
      const item = await createItem(state, signer, { tags: Object.entries(values).map(([name, value]) => ({ name, value })) });
      await options.store.put(item.raw);
      if (FAILPOINT === 'cu-checkpoint-stored') process.kill(process.pid, 'SIGKILL');
      // A newer checkpoint may have been indexed while this one was written.
      if ((q.checkpoint.get(processId)?.nonce ?? -1) < at.nonce) q.saveCheckpoint.run(processId, at.nonce, item.id, stateHash);
    } catch (e) {
      // Only a restart's work is lost: the log and the results are kept. It is tried again later.
      process.stderr.write(`cu: checkpoint of ${processId} at slot ${at.nonce} not written: ${(e as Error).message}\n`);
    }
  }

  async function attest(processId: string, messageId: string, nonce: number, outcome: Omit<Result, 'Attestation'>, resultsChain: string): Promise<Result> {
    const values = { Type: 'Attestation', Process: processId, Message: messageId, Nonce: String(nonce), 'Output-Hash': outputHash(outcome), 'Results-Chain': resultsChain };
    const item = await createItem('', signer, { tags: Object.entries(values).map(([name, value]) => ({ name, value })) });
    return { ...outcome, Attestation: item.raw.toString('base64url') };
  }

  /** Runs work on a process's VM; a fault of its thread (never the process's doing) is a 503. */
  async function onVm<T>(p: Loaded, what: string, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (e) {
      if (e instanceof HostUnavailable) throw e;
      forgetIfLost(p.processId, e);
      throw new ComputeError(503, `the CU could not ${what} now: ${(e as Error).message}`);
    }
  }

  /**
   * Evaluates the log of `p` up to slot `upTo` (or to its end), or until message `wanted` is evaluated.
   * Clients waiting for new results are woken once the run ends (or every WAKE_EVERY results of a
   * long one), so that under load each of them reads several new results per page instead of
   * coming back for every one.
   */
  async function catchUp(p: Loaded, upTo = Number.MAX_SAFE_INTEGER, wanted?: string): Promise<void> {
    const from = p.nonce;
    try {
      await evaluateLog(p, upTo, wanted);
    } finally {
      if (p.nonce !== from) wake(p.processId);
    }
  }

  async function evaluateLog(p: Loaded, upTo: number, wanted: string | undefined): Promise<void> {
    while (p.nonce < upTo) {
      const page = await suJson<{ page_info: { has_next_page: boolean }; edges: { node: SuMessage }[] }>(
        p.processId,
        `/${p.processId}?process-id=${p.processId}&from-nonce=${p.nonce}&limit=100`, // from-nonce is exclusive
      );
      const edges = page.edges.filter((e) => Number(tagValue(e.node.assignment, 'Nonce')) > p.nonce);
      if (edges.length === 0) return;
      let unannounced = 0;
      // The store reads of the next few slots go on while one is evaluated (their checks stay in order).
      const reads = new Map<number, Promise<[Item, Item | null]>>();
      const readSlot = (i: number): Promise<[Item, Item | null]> => {
        let read = reads.get(i);
        if (!read) {
          read = readItem(edges[i].node.assignment.id).then(async (a) => {
            const id = tagValue(a, 'Message');
            return [a, id ? await readItem(id) : null] as [Item, Item | null];
          });
          read.catch(() => undefined); // awaited in turn below
          reads.set(i, read);
        }
        return read;
      };
      for (let i = 0; i < edges.length; i++) {
        for (let ahead = i; ahead < Math.min(edges.length, i + PREFETCH_SLOTS); ahead++) void readSlot(ahead);
        // The SU's page only says which assignment comes next: the assignment and its message are
        // read from the store and checked, so a unit that lies is caught here.
        const [assignment, item] = await readSlot(i);
        reads.delete(i);
        const problem = nextSlotProblem(p, assignment);
        if (problem) throw new ComputeError(502, problem);
        if (!item) throw new ComputeError(502, `assignment ${assignment.id} names no message`);
        const message = processMessage(p.processId, p.spec.env, assignment, assignedMessage(assignment, item));
        const outcome = await onVm(p, `evaluate message ${message.Id}`, () => pool.apply(p.processId, message));
        evaluatedCount += 1;
        const resultsChain = nextResultsChain(p.resultsChain, outputHash(outcome));
        // A slot evaluated again (after the VM was unloaded) keeps the result already signed.
        if (q.resultAt.get(p.processId, message.Nonce)?.results_chain !== resultsChain) {
          const result = await attest(p.processId, message.Id, message.Nonce, outcome, resultsChain);
          q.insertResult.run(p.processId, message.Nonce, message.Id, message.Timestamp, JSON.stringify(result), resultsChain);
        }
        Object.assign(p, { nonce: message.Nonce, resultsChain, hashChain: tagValue(assignment, 'Hash-Chain')!, lastAssignment: assignment.id, timestamp: message.Timestamp, blockHeight: message['Block-Height'] });
        p.sinceCheckpoint.messages += 1;
        if (++unannounced >= WAKE_EVERY) {
          unannounced = 0;
          wake(p.processId);
        }
        if (checkpointDue({ messages: p.sinceCheckpoint.messages, ms: Date.now() - p.sinceCheckpoint.since }, p.stateBytes, policy)) await checkpointNow(p);
        if (p.nonce >= upTo || message.Id === wanted) return;
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

  // The few shapes of a page's query (from/after, to, sort), each prepared once.
  const pageQueries = new Map<string, Database.Statement<(string | number)[], { nonce: number; result: string }>>();
  const pageQuery = (sql: string): Database.Statement<(string | number)[], { nonce: number; result: string }> => {
    let statement = pageQueries.get(sql);
    if (!statement) pageQueries.set(sql, (statement = db.prepare(sql)));
    return statement;
  };

  /** A page of results as stored (JSON text each), after evaluating the log as far as the SU has it. */
  async function resultRows(processId: string, query: Parameters<ComputeUnit['results']>[1]): Promise<{ hasNextPage: boolean; rows: { nonce: number; result: string }[] }> {
    await caughtUp(processId);
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
    const select = pageQuery(`SELECT nonce, result FROM results WHERE ${where.join(' AND ')} ORDER BY nonce ${sort} LIMIT ?`);
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
    return { hasNextPage: rows.length > limit, rows: rows.slice(0, limit) };
  }

  return {
    address,
    result: (processId, messageId) =>
      serial(processId, async () => {
        const done = q.resultByMessage.get(processId, messageId);
        if (done) return JSON.parse(done.result) as Result;
        const p = await load(processId);
        // Most often the message is next in the log: evaluate until it is. Only when the log, as
        // the SU has it now, ends without it, ask the SU whether it is in the log at all.
        await catchUp(p, Number.MAX_SAFE_INTEGER, messageId);
        let row = q.resultByMessage.get(processId, messageId);
        if (!row) {
          // The process itself is slot 0 (its boot message); the SU answers its id with the log.
          const nonce = messageId === processId ? 0 : Number(tagValue((await suJson<SuMessage>(processId, `/${messageId}?process-id=${processId}`)).assignment, 'Nonce'));
          await catchUp(p, nonce);
          row = q.resultByMessage.get(processId, messageId);
        }
        if (!row) throw new ComputeError(404, `message ${messageId} is not in the log of ${processId}`);
        return JSON.parse(row.result) as Result;
      }),
    async results(processId, query) {
      const { hasNextPage, rows } = await resultRows(processId, query);
      return { pageInfo: { hasNextPage }, edges: rows.map((r) => ({ cursor: cursorOf(r.nonce), node: JSON.parse(r.result) as Result })) };
    },
    async resultsJson(processId, query) {
      // Many clients follow one process and read the same new results: each stored result is
      // spliced in as it is, not parsed and serialised again per reader.
      const { hasNextPage, rows } = await resultRows(processId, query);
      return `{"pageInfo":{"hasNextPage":${hasNextPage}},"edges":[${rows.map((r) => `{"cursor":"${cursorOf(r.nonce)}","node":${r.result}}`).join(',')}]}`;
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
        return onVm(p, `dry-run on ${processId}`, () => pool.dryRun(processId, message));
      }).finally(done);
    },
    state: (processId) =>
      serial(processId, async () => {
        const p = await load(processId);
        await catchUp(p);
        // Serialising costs the state's size: reads at one slot share one serialisation (kept up to
        // SERIALISED_STATE_BYTES per process, dropped at the next slot or when the process unloads).
        let json = p.serialised?.nonce === p.nonce ? p.serialised.json : null;
        if (json === null) {
          json = await onVm(p, `read the state of ${processId}`, () => pool.state(processId));
          p.serialised = json.length <= SERIALISED_STATE_BYTES ? { nonce: p.nonce, json } : undefined;
        }
        return { state: JSON.parse(json) as unknown, nonce: p.nonce, stateHash: sha256hex(json), resultsChain: p.resultsChain, timestamp: p.timestamp, blockHeight: p.blockHeight };
      }),
    async checkpoint() {
      for (const p of [...loaded.values()]) await serial(p.processId, () => checkpointNow(p));
      await Promise.all([...writing]);
    },
    evaluated: () => evaluatedCount,
    async close() {
      closing = true;
      for (const timer of wakeTimers.values()) clearTimeout(timer);
      wakeTimers.clear();
      for (const processId of [...waiting.keys()]) wakeNow(processId);
      await locks.settled();
      await Promise.all([...writing]);
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
    const page = await cu.resultsJson(request.params.process, { from, to, sort, after, limit: limit === undefined ? undefined : Number(limit), wait: wait === undefined ? undefined : Number(wait) });
    return reply.type('application/json; charset=utf-8').send(page);
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

