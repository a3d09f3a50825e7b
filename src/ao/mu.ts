// The Messenger Unit: takes signed data items from clients, hands them to the process's Scheduler
// Unit, then "cranks": reads each delivered message's result from the CU and pushes its outbox
// (messages, spawns, assignments) to the SUs in turn, breadth-first. It speaks AO's legacy MU HTTP
// API (research/ao.md §2) so aoconnect works against it, and talks to the SU and CU over HTTP only.
//
// Every unit of work is a row in a SQLite queue, written before it is tried and marked done after,
// so a restart resumes where the last run stopped. Delivery is exactly-once without a two-phase
// commit: an outbox item is signed once with Ed25519 (deterministic), its bytes are kept in its row
// before they are sent, and the SU answers a repeated id with the assignment it already made.
//
// Nothing is tried forever and nothing one sender or one SU does holds up the others: an entry that
// can never become an item (outbox.ts says why) fails at once with its reason; a row that keeps
// failing transiently gives up after `retry.attempts` tries or `retry.maxAgeMs`; rows that already
// failed take at most half the slots; deliveries wait only for earlier ones into the same process;
// and a chain of pushes from one client message is bounded in depth, per-result fan-out and total
// pushes (`limits`), so two processes answering each other cannot amplify one message.
import { uploadDecision, uploadLedger, uploadPolicy, type UploadPolicy } from '../store/gateway.js';
import { listen, type Listening } from '../store/listen.js';
import { createHash } from 'node:crypto';
import { openCommitDatabase } from '../store/database.js';
import { fastify, type FastifyError, type FastifyReply } from 'fastify';
import { ITEM_ID, createItem, ItemError, tagValue, verifyItem, type Item, type Tag } from '../store/items.js';
import { walletAddress, walletSigner, type Wallet } from '../store/wallet.js';
import { LocateError } from './locate.js';
import { MAX_ITEM_BYTES, anchorProblem, entryTags, outboxData, outboxProblem, outboxTags, paddedAnchor } from './outbox.js';
import type { Fetch } from './in-process.js';
import { oneLine } from './protocol.js';
import { afterFailure, crankJob, needsSenderTags, outboxLists, planOutbox, refusesForGood, timerDelay, withinBudget, type AssignPayload, type Cap, type CrankPayload, type JobKind, type NewJob, type PushPayload } from './mu-rules.js';

export interface MessengerOptions {
  /** Where its SQLite queue lives. */
  dir: string;
  /** Signs outbox messages and spawns; must be Ed25519 (see the file comment). */
  wallet: Wallet;
  /**
   * The SU URL for a process. When it also has a `scheduler(address)` method (as locate.ts's
   * locator does), a new process is sent to the SU its `Scheduler` tag names, as AO's MU does: a
   * process that is not yet stored anywhere cannot be located by its id.
   */
  scheduler: ((processId: string) => Promise<string>) & { scheduler?: (address: string) => Promise<string>; forget?: () => void };
  /** The CU URL. */
  cu: string;
  /**
   * Transient failures (202, 408, 429, 5xx, network) are retried with exponential backoff from
   * baseMs up to maxMs, until `attempts` tries or until the row has been failing for `maxAgeMs`;
   * then it is failed with the last error. Defaults: MESSENGER_DEFAULTS.retry.
   */
  retry?: { attempts?: number; baseMs?: number; maxMs?: number; maxAgeMs?: number };
  /**
   * Crank limits: hops from the client's message (`depth`), outbox entries per result (`fanout`),
   * and units of work (pushes, spawns, assignments) per client message, all hops together
   * (`pushes`). Defaults: MESSENGER_DEFAULTS.limits.
   */
  limits?: { depth?: number; fanout?: number; pushes?: number };
  /** Units of work in flight at once; at most half of them may be retries of earlier failures. */
  concurrency?: number;
  /** Per HTTP request to an SU or the CU. */
  timeoutMs?: number;
  /** How it reaches SUs and the CU (default: the global fetch; in-process.ts for units in one process). */
  fetch?: Fetch;
  /** The largest item a client may submit (413 past it, before its signature is checked); startMessenger's bodyLimit follows it. */
  maxItemBytes?: number;
  /**
   * What one signer (and all together) may have the SUs store through this MU per window: the
   * gateway's policy and rules (DEFAULT_UPLOAD_POLICY), since every message submitted is stored for
   * good. 429 with Retry-After past it.
   */
  uploads?: Partial<UploadPolicy>;
  log?: (line: string) => void;
}

/** What the MU does when its options do not say otherwise (docs/ao.md lists them). */
export const MESSENGER_DEFAULTS = {
  // 250 ms doubling to 30 s: a row retried for a day makes about 2,900 tries.
  retry: { attempts: Number.POSITIVE_INFINITY, baseMs: 250, maxMs: 30_000, maxAgeMs: 24 * 60 * 60 * 1000 },
  // AO's chains are a few hops long (a Transfer, its notices, a reply); 128 leaves room for a long
  // ping-pong game (tests/ao/units.test.ts plays 100 rounds) and stops one after 128 pushes, where
  // 1,024 allowed 512 slots on each side. 1,024 pushes per client message, all hops together,
  // bounds any amplifying pattern (two replies per message doubled each generation before).
  limits: { depth: 128, fanout: 256, pushes: 1024 },
  concurrency: 8,
  timeoutMs: 30_000,
  maxItemBytes: MAX_ITEM_BYTES,
} as const;

/** The quick tries inside a client's request wait at most this long each: the client is waiting. */
const CLIENT_RETRY_MS = 100;

export type { JobKind } from './mu-rules.js';

/** A row of the queue, for inspection. */
export interface Job {
  kind: JobKind;
  /** Unique per unit of work, e.g. `push:<sender>:<message>:<k>`. */
  key: string;
  state: 'pending' | 'done' | 'failed';
  attempts: number;
  /** Hops from the client's message (0: the client's own). */
  depth: number;
  /** The client's message the chain started from (Pushed-For). */
  root: string | null;
  /** The item built for a push or spawn, or the SU's assignment id. */
  itemId: string | null;
  /** Why it failed, the last transient error, or a cap that was hit. */
  reason: string | null;
}

export interface Messenger {
  /** The MU wallet's address (the Owner of every pushed message). */
  readonly address: string;
  /** The largest item submit() takes. */
  readonly maxItemBytes: number;
  /** Verifies a client's data item and hands it to its SU; its crank is queued. */
  submit(raw: Uint8Array): Promise<{ id: string; processId: string }>;
  /** Assigns an existing message to a process (AO's `assign`); its crank is queued. */
  assign(processId: string, message: string, options?: { baseLayer?: boolean; exclude?: string[] }): Promise<{ id: string }>;
  /** Records (or forgets) a monitored process. Cron is not implemented: nothing is pushed for it. */
  monitor(processId: string, on: boolean): void;
  monitors(): string[];
  jobs(): Job[];
  /** How often the crank loop ran and armed its timer since it was opened: a busy loop shows here. */
  stats(): { pumps: number; timersArmed: number };
  /** Resolves once the queue holds no pending work. */
  idle(): Promise<void>;
  /** Stops cranking; pending work stays queued and resumes when the same dir is reopened. */
  close(): Promise<void>;
}

/** A request the MU refuses or cannot pass on; `status` is the HTTP status to answer with. */
export class MessengerError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** For a 429: when to come back. */
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
    this.name = 'MessengerError';
  }
}


const SCHEMA = `
  CREATE TABLE IF NOT EXISTS work (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    -- deliveries into one process keep their order; NULL: no order needed (cranks, spawns)
    lane TEXT,
    payload TEXT NOT NULL,
    depth INTEGER NOT NULL,
    -- the client's message the chain started from (Pushed-For): what the push budget is counted by
    root TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL DEFAULT 0,
    -- when its current run of transient failures began: retry.maxAgeMs is counted from here
    failing_since INTEGER,
    item_id TEXT,
    item BLOB,
    reason TEXT,
    updated_at INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS work_pending ON work (state, next_at);
  CREATE INDEX IF NOT EXISTS work_lane ON work (lane, state, id);
  CREATE TABLE IF NOT EXISTS monitors (process TEXT PRIMARY KEY, since INTEGER NOT NULL);
`;

interface Row {
  id: number;
  key: string;
  kind: JobKind;
  lane: string | null;
  payload: string;
  depth: number;
  root: string | null;
  state: Job['state'];
  attempts: number;
  failing_since: number | null;
  item_id: string | null;
  item: Buffer | null;
  reason: string | null;
}

/** A client's item on its way to its SU; the bytes are in the row. */
interface ForwardPayload {
  process: string;
  /** For a new process: the scheduler address its Scheduler tag names (it is in no store yet). */
  scheduler?: string;
}
interface Done {
  children?: NewJob[];
  itemId?: string;
  reason?: string;
  /** A crank limit cut this work short: recorded as failed with the reason (its allowed children still go). */
  capped?: Cap[];
}

/** Worth trying again later. */
class Transient extends Error {}
/**
 * The unit already has its share of this MU's slots: tried again shortly, and not counted as a
 * failure. A unit holds at most half the slots (one, once it failed lately), so one that holds
 * every request for seconds cannot hold up the work bound elsewhere.
 */
class Deferred extends Transient {}
const DEFER_MS = 100;
/** No answer at all from a unit (it may have moved): also worth locating it again. */
class Unreachable extends Transient {}
/** Will never work: recorded as failed. */
class Permanent extends Error {}
/** The messenger is closing: leave the row as it is. */
class Stopped extends Error {}

const PARKED = Number.MAX_SAFE_INTEGER;

/** The anchor the MU writes (outbox.ts has the rule; anchorProblem() was checked first). */
function anchorFor(anchor: unknown, key: string): string {
  if (anchor === undefined || anchor === null || anchor === '') {
    // Without an anchor, two equal outbox messages would be the same item and the SU would keep one.
    return createHash('sha256').update(key).digest().subarray(0, 24).toString('base64url');
  }
  const problem = anchorProblem(anchor);
  if (problem) throw new Permanent(problem);
  return paddedAnchor(anchor as string);
}

function tagsOf(value: unknown, what: string): Tag[] {
  const tags = entryTags(value);
  if (typeof tags === 'string') throw new Permanent(`${what} ${tags}`);
  return tags;
}

interface Reply {
  status: number;
  body: unknown;
  text: string;
}

const errorText = (r: Reply): string => {
  const error = (r.body as { error?: unknown } | null)?.error;
  return oneLine(typeof error === 'string' ? error : r.text || `HTTP ${r.status}`);
};

export function openMessenger(options: MessengerOptions): Messenger {
  if (options.wallet.type !== 'ed25519') {
    throw new Error('the MU wallet must be Ed25519: its signatures are deterministic, which makes re-sending an outbox item after a crash harmless');
  }
  const signer = walletSigner(options.wallet);
  const address = walletAddress(options.wallet);
  const cu = options.cu.replace(/\/+$/, '');
  const defaults = MESSENGER_DEFAULTS;
  // Transient failures are retried for a long while (giving up drops an acknowledged message), but
  // not forever: a unit that never answers must not keep a row, and its lane, for good.
  const attempts = Math.max(1, options.retry?.attempts ?? defaults.retry.attempts);
  const baseMs = Math.max(1, options.retry?.baseMs ?? defaults.retry.baseMs);
  const maxMs = Math.max(baseMs, options.retry?.maxMs ?? defaults.retry.maxMs);
  const maxAgeMs = Math.max(0, options.retry?.maxAgeMs ?? defaults.retry.maxAgeMs);
  const maxDepth = Math.max(0, options.limits?.depth ?? defaults.limits.depth);
  const maxFanout = Math.max(0, options.limits?.fanout ?? defaults.limits.fanout);
  const maxPushes = Math.max(0, options.limits?.pushes ?? defaults.limits.pushes);
  const concurrency = Math.max(1, options.concurrency ?? defaults.concurrency);
  // Rows that failed before may fill only half the slots: a unit that hangs until the timeout
  // cannot take them all from work that has never failed.
  const retrySlots = Math.max(1, Math.floor(concurrency / 2));
  const timeoutMs = options.timeoutMs ?? defaults.timeoutMs;
  const maxItemBytes = Math.max(1, options.maxItemBytes ?? defaults.maxItemBytes);
  const uploads = uploadPolicy({ maxItemBytes, ...options.uploads });
  const ledger = uploadLedger(uploads);
  const log = options.log ?? ((line: string) => console.error(line));

  // The queue rows that a client's answer or an outbox hangs on (a forward parked before it leaves,
  // a unit of work marked done with its children) are
  // written in group commits: the submits and cranks that end together share one transaction and
  // one fsync of the WAL, made off the event loop, each answered once it holds. Other writes (a
  // retry's next time, a failure's reason) are fsynced with the next commit: a power cut may cost a
  // retry, never a delivery.
  const { db, commit: durably, synced } = openCommitDatabase(options.dir, 'mu.sqlite', SCHEMA);
  // Queues written by earlier versions lack these columns; their rows get a root from their payload.
  const columns = new Set(db.prepare<[], { name: string }>('SELECT name FROM pragma_table_info(\'work\')').all().map((c) => c.name));
  if (!columns.has('root')) {
    db.exec(`ALTER TABLE work ADD COLUMN root TEXT`);
    db.exec(`UPDATE work SET root = CASE WHEN kind = 'forward' THEN item_id ELSE json_extract(payload, '$.root') END`);
  }
  if (!columns.has('failing_since')) db.exec('ALTER TABLE work ADD COLUMN failing_since INTEGER');
  db.exec('CREATE INDEX IF NOT EXISTS work_root ON work (root, kind)');

  const q = {
    insert: db.prepare('INSERT OR IGNORE INTO work (key, kind, lane, payload, depth, root, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
    // A forward the client is waiting on is parked (never due) while submit() hands it over itself.
    park: db.prepare(`INSERT OR IGNORE INTO work (key, kind, lane, payload, depth, root, next_at, item_id, item, updated_at) VALUES (?, 'forward', NULL, ?, 0, ?, ${PARKED}, ?, ?, ?)`),
    byKey: db.prepare<[string], Row>('SELECT * FROM work WHERE key = ?'),
    // After a crash mid-submit: parked forwards are due now.
    unpark: db.prepare(`UPDATE work SET next_at = 0 WHERE kind = 'forward' AND state = 'pending' AND next_at = ${PARKED}`),
    // Due rows that have (@retried = 1) or have not (0) failed before; a lane runs one row at a time, in order.
    runnable: db.prepare<[{ now: number; busy: string; limit: number; retried: number }], Row>(`
      SELECT * FROM work w
      WHERE w.state = 'pending' AND w.next_at <= @now AND (w.attempts > 0) = @retried AND w.id NOT IN (SELECT value FROM json_each(@busy))
        AND (w.lane IS NULL OR NOT EXISTS (SELECT 1 FROM work e WHERE e.lane = w.lane AND e.state = 'pending' AND e.id < w.id))
      ORDER BY w.id LIMIT @limit`),
    nextAt: db.prepare<[{ now: number; busy: string }], { at: number | null }>(
      // A parked forward is never due (submit() hands it over): it must not arm the timer (PARKED − now overflows setTimeout to 1 ms).
      `SELECT MIN(next_at) AS at FROM work WHERE state = 'pending' AND next_at > @now AND next_at < ${PARKED} AND id NOT IN (SELECT value FROM json_each(@busy))`,
    ),
    pending: db.prepare<[], { n: number }>(`SELECT COUNT(*) AS n FROM work WHERE state = 'pending'`),
    saveItem: db.prepare('UPDATE work SET item_id = ?, item = ?, updated_at = ? WHERE id = ?'),
    // A delivered item is never sent again: its bytes can go, its id stays. A crank cut short by a
    // limit ends 'failed' the same way, its allowed children queued.
    done: db.prepare(`UPDATE work SET state = ?, attempts = attempts + 1, item_id = COALESCE(?, item_id), item = NULL, reason = ?, updated_at = ? WHERE id = ?`),
    retry: db.prepare('UPDATE work SET attempts = ?, next_at = ?, reason = ?, failing_since = COALESCE(failing_since, ?), updated_at = ? WHERE id = ?'),
    failed: db.prepare(`UPDATE work SET state = 'failed', attempts = attempts + 1, item = NULL, reason = ?, updated_at = ? WHERE id = ?`),
    // Units of work already queued for a client message: what the push budget is counted against.
    spent: db.prepare<[string], { n: number }>(`SELECT COUNT(*) AS n FROM work WHERE root = ? AND kind IN ('push', 'spawn', 'assign')`),
    jobs: db.prepare<[], Row>('SELECT * FROM work ORDER BY id'),
    monitor: db.prepare('INSERT OR IGNORE INTO monitors (process, since) VALUES (?, ?)'),
    unmonitor: db.prepare('DELETE FROM monitors WHERE process = ?'),
    monitors: db.prepare<[], { process: string }>('SELECT process FROM monitors ORDER BY since, process'),
  };

  const enqueue = (jobs: NewJob[]): void => {
    const now = Date.now();
    for (const j of jobs) q.insert.run(j.key, j.kind, j.lane, JSON.stringify(j.payload), j.depth, j.root, now);
  };

  const crankOf = (row: Row): string => {
    const { message, process } = JSON.parse(row.payload) as CrankPayload;
    return `${message} (process ${process})`;
  };

  // A cap is logged once per client message and cap (it may be hit by many cranks of one chain).
  const capsLogged = new Set<string>();
  const logCap = (root: string | null, cap: Cap): void => {
    const key = `${root}:${cap.name}`;
    if (capsLogged.has(key)) return;
    if (capsLogged.size >= 10_000) capsLogged.clear();
    capsLogged.add(key);
    log(`mu: ${cap.reason}`);
  };

  // The children and the "done" mark land together: a crash never leaves half of an outbox queued.
  // The push budget is counted and spent in the same transaction, so cranks of one chain that
  // finish together cannot overspend it.
  const finish = db.transaction((row: Row, done: Done) => {
    let children = done.children ?? [];
    const capped = [...(done.capped ?? [])];
    if (row.kind === 'crank' && children.length > 0) {
      const budget = withinBudget(children, q.spent.get(children[0].root)!.n, maxPushes, crankOf(row));
      if (budget.cap) capped.push(budget.cap);
      children = budget.children;
    }
    enqueue(children);
    const reason = capped.length > 0 ? capped.map((c) => c.reason).join('; ') : (done.reason ?? null);
    q.done.run(capped.length > 0 ? 'failed' : 'done', done.itemId ?? null, reason, Date.now(), row.id);
    return capped;
  });
  q.unpark.run();

  const stop = new AbortController();
  let closed = false;

  // A unit (an SU; the CU is the MU's own) has all the slots but one, and one that failed lately
  // (no answer, a timeout, a 5xx) one request at a time until it answers again: an SU that holds
  // every request for seconds, then fails, cannot take the slot the other units' work needs.
  const unitSlots = Math.max(1, concurrency - 1);
  const FAILING_MS = 60_000;
  const MAX_FAILING_UNITS = 1024;
  const failingUntil = new Map<string, number>();
  const inflightAt = new Map<string, number>();
  const cuOrigin = new URL(cu).origin;
  const unitFetch = options.fetch ?? fetch;

  /** One request; `client`: on a client's behalf (its submit), not queue work, so no share of the queue's slots applies. */
  async function http(method: 'GET' | 'POST', url: string, body?: Uint8Array, client = false): Promise<Reply> {
    if (closed) throw new Stopped('closing');
    const origin = new URL(url).origin;
    const busy = inflightAt.get(origin) ?? 0;
    if (origin !== cuOrigin && !client) {
      const failing = (failingUntil.get(origin) ?? 0) > Date.now();
      if (busy >= (failing ? 1 : unitSlots)) {
        throw new Deferred(`the unit at ${origin} has ${busy} requests in flight${failing ? ' and failed lately: one at a time until it answers' : `, its share of ${concurrency} slots`}`);
      }
    }
    const failed = (): void => {
      failingUntil.delete(origin);
      failingUntil.set(origin, Date.now() + FAILING_MS);
      if (failingUntil.size > MAX_FAILING_UNITS) failingUntil.delete(failingUntil.keys().next().value!);
    };
    inflightAt.set(origin, busy + 1);
    let res: Response;
    try {
      res = await unitFetch(url, {
        method,
        headers: body ? { 'content-type': 'application/octet-stream', accept: 'application/json' } : { accept: 'application/json' },
        body,
        signal: AbortSignal.any([stop.signal, AbortSignal.timeout(timeoutMs)]),
      });
    } catch (e) {
      if (stop.signal.aborted) throw new Stopped('closing');
      failed();
      throw new Unreachable(`${method} ${url}: ${(e as Error).cause ? String((e as Error).cause) : (e as Error).message}`);
    } finally {
      const left = (inflightAt.get(origin) ?? 1) - 1;
      if (left > 0) inflightAt.set(origin, left);
      else inflightAt.delete(origin);
    }
    if (res.status >= 500) failed();
    else failingUntil.delete(origin);
    const text = await res.text().catch(() => '');
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: callers that need JSON say so
    }
    return { status: res.status, body: parsed, text };
  }

  /** 2xx passes; 4xx is the other side refusing for good (but 408, 425, 429); anything else may pass later. */
  function expectOk(r: Reply, what: string): void {
    if (r.status >= 200 && r.status < 300) return;
    const why = `${what}: ${r.status} ${errorText(r)}`;
    if (refusesForGood(r.status)) throw new Permanent(why);
    throw new Transient(why);
  }

  async function locate(processId: string): Promise<string> {
    try {
      return (await options.scheduler(processId)).replace(/\/+$/, '');
    } catch (e) {
      throw new Transient(`cannot locate the SU of ${processId}: ${(e as Error).message}`);
    }
  }

  /** False only when the locator is sure the id names no process; unsure answers are retried. */
  async function isProcess(id: string): Promise<boolean> {
    try {
      await options.scheduler(id);
      return true;
    } catch (e) {
      if (e instanceof LocateError && e.notAProcess) return false;
      throw new Transient(`cannot locate the SU of ${id}: ${(e as Error).message}`);
    }
  }

  async function locateScheduler(address: string, fallbackProcess: string): Promise<string> {
    const byAddress = options.scheduler.scheduler;
    if (!byAddress) return locate(fallbackProcess);
    try {
      return (await byAddress(address)).replace(/\/+$/, '');
    } catch (e) {
      throw new Transient(`cannot locate scheduler ${address}: ${(e as Error).message}`);
    }
  }

  // A process's tags never change, so its SU record is read once per run.
  const processes = new Map<string, Promise<Tag[]>>();
  function processTags(pid: string): Promise<Tag[]> {
    let known = processes.get(pid);
    if (!known) {
      known = (async () => {
        const su = await locate(pid);
        const r = await http('GET', `${su}/processes/${encodeURIComponent(pid)}`);
        expectOk(r, `SU GET /processes/${pid}`);
        return tagsOf((r.body as { tags?: unknown } | null)?.tags, `process ${pid}`);
      })();
      processes.set(pid, known);
      known.catch(() => processes.delete(pid));
    }
    return known;
  }

  async function suAddress(su: string): Promise<string> {
    const r = await http('GET', `${su}/`);
    expectOk(r, 'SU GET /');
    const address = (r.body as { address?: unknown } | null)?.address;
    if (typeof address !== 'string' || address === '') throw new Transient('the SU does not say its address');
    return address;
  }

  // ---- units of work ----

  async function crank(row: Row): Promise<Done> {
    const { message, process: pid, root } = JSON.parse(row.payload) as CrankPayload;
    const r = await http('GET', `${cu}/result/${encodeURIComponent(message)}?process-id=${encodeURIComponent(pid)}`);
    if (r.status === 202) throw new Transient('the CU is still evaluating (202)');
    expectOk(r, 'CU result');
    const lists = outboxLists(r.body);
    if (typeof lists === 'string') throw new Permanent(lists);
    // The sender's tags are read here, where a failure holds up only this crank (see PushPayload);
    // nothing is read past the depth cap.
    const sender = needsSenderTags(lists) && row.depth < maxDepth ? await processTags(pid) : [];
    const plan = planOutbox(lists, {
      message,
      process: pid,
      root,
      depth: row.depth,
      module: tagValue({ tags: sender }, 'Module') ?? null,
      scheduler: tagValue({ tags: sender }, 'Scheduler') ?? null,
      limits: { depth: maxDepth, fanout: maxFanout },
    });
    for (const line of plan.skipped) log(`mu: ${line}`);
    return { children: plan.children, capped: plan.capped };
  }

  /** Signs once and keeps the bytes in the row before they are sent (see the file comment). */
  function built(row: Row, build: () => Promise<Item>): Promise<{ id: string; raw: Buffer }> | { id: string; raw: Buffer } {
    if (row.item && row.item_id) return { id: row.item_id, raw: row.item };
    return (async () => {
      let item: Item;
      try {
        item = await build();
      } catch (e) {
        // Building is local and deterministic (everything it needs was read before): whatever
        // fails here fails again, arbundles' plain Errors included.
        throw new Permanent(`cannot build the item: ${(e as Error)?.message ?? String(e)}`);
      }
      // Written before it is sent, fsynced with the next commit rather than waited for: a kill -9
      // keeps the write (it is in the OS's hands), and were a power cut to lose it, building the
      // item again from the row gives the same bytes (Ed25519 is deterministic, the anchor comes
      // from the row's key), so the SU answers it with the slot it already made.
      q.saveItem.run(item.id, item.raw, Date.now(), row.id);
      return { id: item.id, raw: item.raw };
    })();
  }

  /** The sender's Module tag: from the row, or (rows of earlier versions) from the sender's SU. */
  async function senderModule(from: string, known: string | null | undefined): Promise<string> {
    const module = known !== undefined ? known : (tagValue({ tags: await processTags(from) }, 'Module') ?? null);
    if (!module) throw new Permanent(`the sending process ${from} has no Module tag`);
    return module;
  }

  async function push(row: Row): Promise<Done> {
    const { from, root, entry, module: known } = JSON.parse(row.payload) as PushPayload;
    const problem = outboxProblem('message', entry, { 'from-process': from, 'pushed-for': root, ...(known ? { 'from-module': known } : {}) });
    if (problem) throw new Permanent(`cannot push this outbox message: ${problem}`);
    const msg = entry as { Target: string; Anchor?: unknown; Data?: unknown; Tags?: unknown };
    const target = msg.Target;
    // AO processes answer wallets (a requester, a node) through their outbox too: such a message has
    // no SU to go to and stays readable in the sender's result.
    if (!(await isProcess(target))) return { reason: `${target} is not a process: not delivered (it stays in the result of ${from})` };
    const module = row.item ? null : await senderModule(from, known);
    const item = await built(row, async () =>
      createItem(outboxData(msg.Data), signer, {
        target,
        anchor: anchorFor(msg.Anchor, row.key),
        tags: outboxTags('message', tagsOf(msg.Tags, 'outbox message'), { 'from-process': from, 'from-module': module!, 'pushed-for': root }),
      }),
    );
    const su = await locate(target);
    expectOk(await http('POST', `${su}/`, item.raw), `SU of ${target}`);
    return { itemId: item.id, children: [crankJob(item.id, target, root, row.depth)] };
  }

  async function spawn(row: Row): Promise<Done> {
    const { from, root, entry, module: parentModule, scheduler: parentScheduler } = JSON.parse(row.payload) as PushPayload;
    const problem = outboxProblem('spawn', entry, { 'from-process': from, 'pushed-for': root });
    if (problem) throw new Permanent(`cannot spawn this outbox entry: ${problem}`);
    const s = entry as { Anchor?: unknown; Data?: unknown; Tags?: unknown };
    // The child lives on its parent's scheduler: AO's MU puts the parent's Scheduler tag on it.
    const parent = parentModule === undefined ? await processTags(from) : null;
    const scheduler = (parent ? tagValue({ tags: parent }, 'Scheduler') : parentScheduler) ?? (await suAddress(await locate(from)));
    const tags = tagsOf(s.Tags, 'spawn');
    const module = tagValue({ tags }, 'Module') ?? (parent ? tagValue({ tags: parent }, 'Module') : parentModule);
    if (!module) throw new Permanent(`neither the spawn nor its parent ${from} has a Module tag`);
    const item = await built(row, async () =>
      createItem(outboxData(s.Data), signer, {
        anchor: anchorFor(s.Anchor, row.key),
        tags: outboxTags('spawn', tags, { 'from-process': from, 'pushed-for': root, scheduler, module }),
      }),
    );
    const su = await locateScheduler(scheduler, from);
    expectOk(await http('POST', `${su}/`, item.raw), 'SU (spawn)');
    // The child's first message is itself (aop-6): its boot result may have an outbox too.
    return { itemId: item.id, children: [crankJob(item.id, item.id, root, row.depth)] };
  }

  function assignUrl(su: string, processId: string, message: string, extra: { baseLayer?: boolean; exclude?: string[] } = {}): string {
    let url = `${su}/?process-id=${encodeURIComponent(processId)}&assign=${encodeURIComponent(message)}`;
    if (extra.baseLayer) url += '&base-layer';
    if (extra.exclude?.length) url += `&exclude=${encodeURIComponent(extra.exclude.join(','))}`;
    return url;
  }

  async function assignment(row: Row): Promise<Done> {
    const { process: pid, message, root } = JSON.parse(row.payload) as AssignPayload;
    if (!ITEM_ID.test(pid) || !ITEM_ID.test(message)) throw new Permanent('an assignment needs process and message ids (43 base64url characters)');
    const r = await http('POST', assignUrl(await locate(pid), pid, message));
    expectOk(r, `SU of ${pid} (assign)`);
    const id = (r.body as { id?: unknown } | null)?.id;
    return { itemId: typeof id === 'string' ? id : undefined, children: [crankJob(message, pid, root, row.depth)] };
  }

  /** A client's item the SU has not acknowledged yet (the MU stopped, or the SU was away). */
  async function forward(row: Row): Promise<Done> {
    const { process: pid, scheduler } = JSON.parse(row.payload) as ForwardPayload;
    const su = scheduler ? await locateScheduler(scheduler, pid) : await locate(pid);
    const r = await http('POST', `${su}/`, row.item!);
    if (refusesForGood(r.status)) throw new Permanent(`the SU of ${pid} refused it: ${r.status} ${errorText(r)}`);
    expectOk(r, `SU of ${pid}`);
    return { itemId: row.item_id!, children: [crankJob(row.item_id!, pid, row.item_id!, 0)] };
  }

  const WORK: Record<JobKind, (row: Row) => Promise<Done>> = { forward, crank, push, spawn, assign: assignment };

  // ---- the crank loop ----

  const inflight = new Map<number, { run: Promise<void>; retry: boolean }>();
  let timer: NodeJS.Timeout | null = null;
  let timerAt = 0;
  const stats = { pumps: 0, timersArmed: 0 };
  let waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];

  /** Records a unit of work's end: its children and mark, or its failure, or when to try it again. */
  async function attempt(row: Row): Promise<void> {
    let outcome: { done: Done } | { error: Error };
    try {
      outcome = { done: await WORK[row.kind](row) };
    } catch (e) {
      outcome = { error: e instanceof Error ? e : new Error(String(e)) };
    }
    // The database stays open until every attempt in flight has settled, so a success is kept.
    if ('done' in outcome) {
      for (const cap of await durably(() => finish(row, outcome.done))) logCap(row.root, cap);
      return;
    }
    const e = outcome.error;
    // Cut off by close(): the row stays as it was and is tried again on reopen.
    if (closed || e instanceof Stopped) return;
    if (e instanceof Deferred) {
      q.retry.run(row.attempts, Date.now() + DEFER_MS, oneLine(e.message), row.failing_since, Date.now(), row.id);
      return;
    }
    if (e instanceof Unreachable) options.scheduler.forget?.();
    failOrRetry(row, e);
  }

  /** A failed try: permanent, or out of tries or time, is recorded as failed; otherwise it is due again after a backoff. */
  function failOrRetry(row: Row, e: Error): void {
    const why = oneLine(e.message);
    const now = Date.now();
    const tries = row.attempts + 1;
    const since = row.failing_since ?? now;
    const next = afterFailure({ attempts, baseMs, maxMs, maxAgeMs }, { tries, since, now, permanent: e instanceof Permanent, why });
    if ('failed' in next) {
      q.failed.run(next.failed, now, row.id);
      log(`mu: ${row.key} failed: ${next.failed}`);
      return;
    }
    q.retry.run(tries, next.at, why, since, now, row.id);
    if (tries % 10 === 0) log(`mu: ${row.key} still failing after ${tries} tries: ${why}`);
  }

  /** Starts what is due, within the slots free; then arms the timer for the next row that becomes due, if any. */
  function pump(): void {
    if (closed) return;
    stats.pumps++;
    const now = Date.now();
    const busy = (): string => JSON.stringify([...inflight.keys()]);
    let free = concurrency - inflight.size;
    const start = (rows: Row[], retry: boolean): void => {
      for (const row of rows) {
        const run = attempt(row)
          .catch((e: Error) => log(`mu: ${row.key}: ${e.message}`))
          .finally(() => {
            inflight.delete(row.id);
            pump();
          });
        inflight.set(row.id, { run, retry });
        free--;
      }
    };
    if (free > 0) start(q.runnable.all({ now, busy: busy(), limit: free, retried: 0 }), false);
    const retrying = [...inflight.values()].filter((w) => w.retry).length;
    const retryFree = Math.min(free, retrySlots - retrying);
    if (retryFree > 0) start(q.runnable.all({ now, busy: busy(), limit: retryFree, retried: 1 }), true);
    if (inflight.size === 0 && q.pending.get()!.n === 0) {
      const ready = waiters;
      waiters = [];
      for (const w of ready) w.resolve();
    }
    arm(now);
  }

  /**
   * The timer is set only for a row that becomes due later (never for a parked one, nor for rows
   * in flight or due now: their end pumps), and left alone when it is already set for that time:
   * no re-arming at 0 ms while work is in flight. Node caps a timer at 2^31 − 1 ms; a row due later
   * than that is looked at again then.
   */
  function arm(now: number): void {
    const at = q.nextAt.get({ now, busy: JSON.stringify([...inflight.keys()]) })?.at ?? null;
    const delay = timerDelay(at, now);
    if (at === null || delay === null) {
      if (timer) clearTimeout(timer);
      timer = null;
      return;
    }
    if (timer && timerAt === at) return;
    if (timer) clearTimeout(timer);
    timerAt = at;
    stats.timersArmed++;
    timer = setTimeout(() => {
      timer = null;
      pump();
    }, delay);
  }

  // ---- what clients ask for ----

  /** Hands an item to an SU in the client's request: a few quick tries, then the SU's answer. */
  async function toSu(url: string, body: Uint8Array | undefined, what: string): Promise<Reply> {
    let last = '';
    for (let i = 0; i < 3; i++) {
      if (i > 0) await new Promise((resolve) => setTimeout(resolve, Math.min(baseMs, CLIENT_RETRY_MS) * 2 ** (i - 1)));
      try {
        const r = await http('POST', url, body, true);
        if (r.status >= 200 && r.status < 300) return r;
        if (refusesForGood(r.status)) throw new MessengerError(r.status, `${what}: ${errorText(r)}`);
        last = `${r.status} ${errorText(r)}`;
      } catch (e) {
        if (e instanceof Stopped) throw new MessengerError(503, 'the messenger is closing');
        if (!(e instanceof Transient)) throw e;
        last = e.message;
      }
    }
    throw new MessengerError(502, `${what} is unavailable: ${oneLine(last)}`);
  }

  async function locateForClient(processId: string): Promise<string> {
    try {
      return await locate(processId);
    } catch (e) {
      throw new MessengerError(400, (e as Error).message);
    }
  }

  async function queue(job: NewJob): Promise<void> {
    if (closed) throw new MessengerError(503, 'the messenger is closing');
    await durably(() => enqueue([job]));
    pump();
  }

  const messenger: Messenger = {
    address,
    maxItemBytes,

    async submit(raw) {
      if (raw.byteLength === 0) throw new MessengerError(400, 'empty body: send a signed ANS-104 data item');
      // Size first: an oversized body costs nothing more (no hash, no signature check).
      if (raw.byteLength > maxItemBytes) throw new MessengerError(413, `the item is ${raw.byteLength} bytes, at most ${maxItemBytes}`);
      let item: Item;
      try {
        item = await verifyItem(raw);
      } catch (e) {
        if (e instanceof ItemError) throw new MessengerError(400, e.message);
        throw e;
      }
      // Every message submitted is stored for good: the signer's quota, counted once it is signed.
      const now = Date.now();
      const decision = uploadDecision(uploads, ledger.usage(item.address), { bytes: raw.byteLength, signer: item.address }, now);
      if (!decision.allowed) throw new MessengerError(decision.status, decision.message, decision.status === 429 ? decision.retryAfterSeconds : undefined);
      if (decision.counted) ledger.change(item.address, now, { at: now, bytes: raw.byteLength, items: 1 });
      if (!item.tags.some((t) => t.name === 'Data-Protocol' && t.value === 'ao')) throw new MessengerError(400, 'not an ao item: it needs the tag Data-Protocol=ao');
      const type = tagValue(item, 'Type');
      let processId: string;
      let su: string;
      if (type === 'Message') {
        if (!item.target) throw new MessengerError(400, 'a Message needs a target process');
        processId = item.target;
        su = await locateForClient(processId);
      } else if (type === 'Process') {
        processId = item.id;
        const scheduler = tagValue(item, 'Scheduler');
        try {
          su = scheduler && options.scheduler.scheduler ? await locateScheduler(scheduler, item.id) : await locate(item.id);
        } catch (e) {
          throw new MessengerError(400, (e as Error).message);
        }
      } else {
        throw new MessengerError(400, `the Type tag must be Process or Message, not ${type === undefined ? 'missing' : JSON.stringify(type.slice(0, 40))}`);
      }
      // Kept before it leaves: if the MU stops between the SU's answer and queueing the crank, the
      // restarted MU sends it again (the SU answers a repeated id with its slot) and cranks it.
      const key = `forward:${item.id}`;
      const payload: ForwardPayload = type === 'Process' ? { process: processId, scheduler: tagValue(item, 'Scheduler') } : { process: processId };
      await durably(() => q.park.run(key, JSON.stringify(payload), item.id, item.id, item.raw, Date.now()));
      try {
        await toSu(`${su}/`, item.raw, `the SU of ${processId}`);
      } catch (e) {
        const row = q.byKey.get(key)!;
        if (e instanceof MessengerError && e.status >= 400 && e.status < 500) q.failed.run(oneLine(e.message), Date.now(), row.id);
        // The SU is away: keep trying in the background, within the retry limits; a client that
        // sends the same bytes again is harmless.
        else failOrRetry(row, e as Error);
        pump();
        throw e;
      }
      // Done and its crank queued in one transaction, before the client hears 202.
      await durably(() => finish(q.byKey.get(key)!, { itemId: item.id, children: [crankJob(item.id, processId, item.id, 0)] }));
      pump();
      return { id: item.id, processId };
    },

    async assign(processId, message, extra = {}) {
      if (!ITEM_ID.test(processId) || !ITEM_ID.test(message)) throw new MessengerError(400, 'process-id and assign must be ids (43 base64url characters)');
      const su = await locateForClient(processId);
      const r = await toSu(assignUrl(su, processId, message, extra), undefined, `the SU of ${processId}`);
      const id = (r.body as { id?: unknown } | null)?.id;
      if (typeof id !== 'string') throw new MessengerError(502, 'the SU did not return an assignment id');
      await queue(crankJob(message, processId, message, 0));
      return { id };
    },

    monitor(processId, on) {
      if (!ITEM_ID.test(processId)) throw new MessengerError(400, 'a process id is 43 base64url characters');
      if (on) q.monitor.run(processId, Date.now());
      else q.unmonitor.run(processId);
      // Recorded for the next start (cron is not implemented): durable shortly after, not before the answer.
      synced().catch((e: Error) => log(`mu: the monitor record of ${processId} is not fsynced: ${e.message}`));
    },

    monitors: () => q.monitors.all().map((r) => r.process),

    jobs: () =>
      q.jobs.all().map((r) => ({ kind: r.kind, key: r.key, state: r.state, attempts: r.attempts, depth: r.depth, root: r.root, itemId: r.item_id, reason: r.reason })),

    stats: () => ({ ...stats }),

    idle() {
      if (closed) return Promise.reject(new Error('the messenger is closed'));
      return new Promise<void>((resolve, reject) => {
        waiters.push({ resolve, reject });
        pump();
      });
    },

    async close() {
      if (closed) return;
      closed = true;
      if (timer) clearTimeout(timer);
      stop.abort();
      await Promise.allSettled([...inflight.values()].map((w) => w.run));
      for (const w of waiters) w.reject(new Error('the messenger was closed with work pending'));
      waiters = [];
      db.close();
    },
  };
  // Resume whatever a previous run left pending.
  setImmediate(pump);
  return messenger;
}

/** `close` stops the HTTP server; the messenger itself is closed by its owner. */
export type RunningMessenger = Listening;

/** Serves AO's legacy MU HTTP API (research/ao.md §2) for a messenger. */
export async function startMessenger(mu: Messenger, options: { port: number; host?: string; bodyLimit?: number }): Promise<RunningMessenger> {
  const host = options.host ?? '127.0.0.1';
  const fail = (reply: FastifyReply, status: number, error: string): FastifyReply => reply.code(status).type('application/json; charset=utf-8').send({ error: oneLine(error) });
  const app = fastify({
    logger: false,
    // The messenger's own limit, so that HTTP and submit() refuse the same bodies (413).
    bodyLimit: options.bodyLimit ?? mu.maxItemBytes,
    frameworkErrors: (error, _request, reply) => fail(reply, 400, error.message),
  });
  // A data item comes as octet-stream, but any type (or none) is read as bytes.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
  app.setErrorHandler((error: FastifyError, _request, reply) => {
    if (error instanceof MessengerError) {
      if (error.retryAfterSeconds !== undefined) reply.header('retry-after', String(error.retryAfterSeconds));
      return fail(reply, error.status, error.message);
    }
    const status = error.statusCode ?? 500;
    if (status >= 400 && status < 500) return fail(reply, status, error.message);
    return fail(reply, 500, 'internal error');
  });
  app.setNotFoundHandler((request, reply) => fail(reply, 404, `no route for ${request.method} ${request.url.slice(0, 100)}`));

  app.get('/', async (_request, reply) => reply.type('text/plain; charset=utf-8').send('ao messenger unit'));
  // Its wallet's address: a process spawned to trust this MU names it in an Authority tag (verity network init).
  app.get('/info', async () => ({ unit: 'mu', address: mu.address }));

  app.post<{ Querystring: Record<string, string | string[] | undefined> }>('/', async (request, reply) => {
    const query = request.query;
    const pid = query['process-id'];
    const assign = query.assign;
    if (pid !== undefined || assign !== undefined) {
      if (typeof pid !== 'string' || typeof assign !== 'string') return fail(reply, 400, 'an assignment needs both process-id and assign, once each');
      const exclude = typeof query.exclude === 'string' && query.exclude !== '' ? query.exclude.split(',') : undefined;
      const { id } = await mu.assign(pid, assign, { baseLayer: query['base-layer'] !== undefined, exclude });
      return reply.code(202).send({ message: 'Processing Assignment', id });
    }
    const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
    const { id } = await mu.submit(body);
    return reply.code(202).send({ message: 'Processing DataItem', id });
  });

  // aoconnect's monitor/unmonitor. AO's MU then pushes the process's cron messages; this one only
  // records the process: cron is not implemented.
  const NO_CRON = 'cron is not implemented by this MU: no cron messages will be pushed';
  app.post<{ Params: { pid: string } }>('/monitor/:pid', async (request, reply) => {
    mu.monitor(request.params.pid, true);
    return reply.code(200).send({ message: `monitoring ${request.params.pid} recorded; ${NO_CRON}`, id: request.params.pid });
  });
  app.delete<{ Params: { pid: string } }>('/monitor/:pid', async (request, reply) => {
    mu.monitor(request.params.pid, false);
    return reply.code(200).send({ message: `stopped monitoring ${request.params.pid}; ${NO_CRON}`, id: request.params.pid });
  });

  return listen(app, options.port, host);
}

