// The Messenger Unit: takes signed data items from clients, hands them to the process's Scheduler
// Unit, then "cranks": reads each delivered message's result from the CU and pushes its outbox
// (messages, spawns, assignments) to the SUs in turn, breadth-first. It speaks AO's legacy MU HTTP
// API (research/ao.md §2) so aoconnect works against it, and talks to the SU and CU over HTTP only.
//
// Every unit of work is a row in a SQLite queue, written before it is tried and marked done after,
// so a restart resumes where the last run stopped. Delivery is exactly-once without a two-phase
// commit: an outbox item is signed once with Ed25519 (deterministic), its bytes are kept in its row
// before they are sent, and the SU answers a repeated id with the assignment it already made.
import { listen, type Listening } from '../store/listen.js';
import { createHash } from 'node:crypto';
import { openDatabase } from '../store/database.js';
import { fastify, type FastifyError, type FastifyReply } from 'fastify';
import { ITEM_ID, createItem, ItemError, tagValue, verifyItem, type Item, type Tag } from '../store/items.js';
import { walletAddress, walletSigner, type Wallet } from '../store/wallet.js';
import { LocateError } from './locate.js';
import { oneLine } from './protocol.js';

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
  /** Transient failures (202, 5xx, network) are retried with exponential backoff up to maxMs; `attempts` caps the tries (default: no cap, so nothing acknowledged is dropped). */
  retry?: { attempts?: number; baseMs?: number; maxMs?: number };
  /** Crank limits: how many hops from the client's message, and how many outbox entries per result. */
  limits?: { depth?: number; fanout?: number };
  /** Units of work in flight at once. */
  concurrency?: number;
  /** Per HTTP request to an SU or the CU. */
  timeoutMs?: number;
  log?: (line: string) => void;
}

export type JobKind = 'forward' | 'crank' | 'push' | 'spawn' | 'assign';

/** A row of the queue, for inspection. */
export interface Job {
  kind: JobKind;
  /** Unique per unit of work, e.g. `push:<sender>:<message>:<k>`. */
  key: string;
  state: 'pending' | 'done' | 'failed';
  attempts: number;
  /** Hops from the client's message (0: the client's own). */
  depth: number;
  /** The item built for a push or spawn, or the SU's assignment id. */
  itemId: string | null;
  /** Why it failed, the last transient error, or a cap that was hit. */
  reason: string | null;
}

export interface Messenger {
  /** The MU wallet's address (the Owner of every pushed message). */
  readonly address: string;
  /** Verifies a client's data item and hands it to its SU; its crank is queued. */
  submit(raw: Uint8Array): Promise<{ id: string; processId: string }>;
  /** Assigns an existing message to a process (AO's `assign`); its crank is queued. */
  assign(processId: string, message: string, options?: { baseLayer?: boolean; exclude?: string[] }): Promise<{ id: string }>;
  /** Records (or forgets) a monitored process. Cron is not implemented: nothing is pushed for it. */
  monitor(processId: string, on: boolean): void;
  monitors(): string[];
  jobs(): Job[];
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
  ) {
    super(message);
    this.name = 'MessengerError';
  }
}


// Tags a process may not set on what the MU pushes for it: the MU vouches for these.
const PUSH_RESERVED = new Set(['Data-Protocol', 'Type', 'Variant', 'From-Process', 'From-Module', 'Pushed-For', 'Assignments']);
const SPAWN_RESERVED = new Set([...PUSH_RESERVED, 'Scheduler', 'Module']);

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS work (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    -- deliveries into one process keep their order; NULL: no order needed (cranks, spawns)
    lane TEXT,
    payload TEXT NOT NULL,
    depth INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL DEFAULT 0,
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
  state: Job['state'];
  attempts: number;
  item_id: string | null;
  item: Buffer | null;
  reason: string | null;
}

interface NewJob {
  kind: JobKind;
  key: string;
  lane: string | null;
  payload: unknown;
  depth: number;
}

/** A client's item on its way to its SU; the bytes are in the row. */
interface ForwardPayload {
  process: string;
  /** For a new process: the scheduler address its Scheduler tag names (it is in no store yet). */
  scheduler?: string;
}
interface CrankPayload {
  message: string;
  process: string;
  /** The client's message (or assigned message) the chain started from: Pushed-For. */
  root: string;
}
interface PushPayload {
  from: string;
  root: string;
  entry: unknown;
}
interface AssignPayload {
  process: string;
  message: string;
  root: string;
}

interface Done {
  children?: NewJob[];
  itemId?: string;
  reason?: string;
}

/** Worth trying again later. */
class Transient extends Error {}
/** No answer at all from a unit (it may have moved): also worth locating it again. */
class Unreachable extends Transient {}
/** Will never work: recorded as failed. */
class Permanent extends Error {}
/** The messenger is closing: leave the row as it is. */
class Stopped extends Error {}

const PARKED = Number.MAX_SAFE_INTEGER;

const crankJob = (message: string, process: string, root: string, depth: number): NewJob => ({
  kind: 'crank',
  key: `crank:${process}:${message}`,
  lane: null,
  payload: { message, process, root } satisfies CrankPayload,
  depth,
});

/** aos pads its Reference to 32 digits ("%032d"); other short anchors get the same treatment. */
function anchorFor(anchor: unknown, key: string): string {
  if (anchor === undefined || anchor === null || anchor === '') {
    // Without an anchor, two equal outbox messages would be the same item and the SU would keep one.
    return createHash('sha256').update(key).digest().subarray(0, 24).toString('base64url');
  }
  if (typeof anchor !== 'string') throw new Permanent('Anchor must be a string');
  const bytes = Buffer.byteLength(anchor);
  if (bytes > 32) throw new Permanent(`Anchor is ${bytes} bytes, at most 32`);
  return '0'.repeat(32 - bytes) + anchor;
}

function tagsOf(value: unknown, what: string): Tag[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((t) => typeof t?.name === 'string' && typeof t?.value === 'string')) {
    throw new Permanent(`${what} Tags must be a list of {name, value} strings`);
  }
  return value.map((t: Tag) => ({ name: t.name, value: t.value }));
}

function dataOf(value: unknown): string {
  if (value === undefined || value === null) return '';
  return typeof value === 'string' ? value : JSON.stringify(value);
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
  // Transient failures are retried until they pass: giving up would drop an acknowledged message.
  const attempts = Math.max(1, options.retry?.attempts ?? Number.POSITIVE_INFINITY);
  const baseMs = options.retry?.baseMs ?? 250;
  const maxMs = options.retry?.maxMs ?? 30_000;
  const maxDepth = options.limits?.depth ?? 1024;
  const maxFanout = options.limits?.fanout ?? 256;
  const concurrency = Math.max(1, options.concurrency ?? 8);
  const timeoutMs = options.timeoutMs ?? 30_000;
  const log = options.log ?? ((line: string) => console.error(line));

  const db = openDatabase(options.dir, 'mu.sqlite', SCHEMA);

  const q = {
    insert: db.prepare('INSERT OR IGNORE INTO work (key, kind, lane, payload, depth, updated_at) VALUES (?, ?, ?, ?, ?, ?)'),
    // A forward the client is waiting on is parked (never due) while submit() hands it over itself.
    park: db.prepare(`INSERT OR IGNORE INTO work (key, kind, lane, payload, depth, next_at, item_id, item, updated_at) VALUES (?, 'forward', NULL, ?, 0, ${PARKED}, ?, ?, ?)`),
    byKey: db.prepare<[string], Row>('SELECT * FROM work WHERE key = ?'),
    // After a crash mid-submit: parked forwards are due now.
    unpark: db.prepare(`UPDATE work SET next_at = 0 WHERE kind = 'forward' AND state = 'pending' AND next_at = ${PARKED}`),
    runnable: db.prepare<[{ now: number; busy: string; limit: number }], Row>(`
      SELECT * FROM work w
      WHERE w.state = 'pending' AND w.next_at <= @now AND w.id NOT IN (SELECT value FROM json_each(@busy))
        AND (w.lane IS NULL OR NOT EXISTS (SELECT 1 FROM work e WHERE e.lane = w.lane AND e.state = 'pending' AND e.id < w.id))
      ORDER BY w.id LIMIT @limit`),
    nextAt: db.prepare<[{ now: number; busy: string }], { at: number | null }>(
      // A parked forward is never due (submit() hands it over): it must not arm the timer (PARKED − now overflows setTimeout to 1 ms).
      `SELECT MIN(next_at) AS at FROM work WHERE state = 'pending' AND next_at > @now AND next_at < ${PARKED} AND id NOT IN (SELECT value FROM json_each(@busy))`,
    ),
    pending: db.prepare<[], { n: number }>(`SELECT COUNT(*) AS n FROM work WHERE state = 'pending'`),
    saveItem: db.prepare('UPDATE work SET item_id = ?, item = ?, updated_at = ? WHERE id = ?'),
    // A delivered item is never sent again: its bytes can go, its id stays.
    done: db.prepare(`UPDATE work SET state = 'done', attempts = attempts + 1, item_id = COALESCE(?, item_id), item = NULL, reason = ?, updated_at = ? WHERE id = ?`),
    retry: db.prepare('UPDATE work SET attempts = ?, next_at = ?, reason = ?, updated_at = ? WHERE id = ?'),
    failed: db.prepare(`UPDATE work SET state = 'failed', attempts = attempts + 1, reason = ?, updated_at = ? WHERE id = ?`),
    jobs: db.prepare<[], Row>('SELECT * FROM work ORDER BY id'),
    monitor: db.prepare('INSERT OR IGNORE INTO monitors (process, since) VALUES (?, ?)'),
    unmonitor: db.prepare('DELETE FROM monitors WHERE process = ?'),
    monitors: db.prepare<[], { process: string }>('SELECT process FROM monitors ORDER BY since, process'),
  };

  const enqueue = (jobs: NewJob[]): void => {
    const now = Date.now();
    for (const j of jobs) q.insert.run(j.key, j.kind, j.lane, JSON.stringify(j.payload), j.depth, now);
  };
  // The children and the "done" mark land together: a crash never leaves half of an outbox queued.
  const finish = db.transaction((row: Row, done: Done) => {
    enqueue(done.children ?? []);
    q.done.run(done.itemId ?? null, done.reason ?? null, Date.now(), row.id);
  });
  q.unpark.run();

  const stop = new AbortController();
  let closed = false;

  async function http(method: 'GET' | 'POST', url: string, body?: Uint8Array): Promise<Reply> {
    if (closed) throw new Stopped('closing');
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: body ? { 'content-type': 'application/octet-stream', accept: 'application/json' } : { accept: 'application/json' },
        body,
        signal: AbortSignal.any([stop.signal, AbortSignal.timeout(timeoutMs)]),
      });
    } catch (e) {
      if (stop.signal.aborted) throw new Stopped('closing');
      throw new Unreachable(`${method} ${url}: ${(e as Error).cause ? String((e as Error).cause) : (e as Error).message}`);
    }
    const text = await res.text().catch(() => '');
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: callers that need JSON say so
    }
    return { status: res.status, body: parsed, text };
  }

  /** 2xx passes; 4xx is the other side refusing for good; anything else may pass later. */
  function expectOk(r: Reply, what: string): void {
    if (r.status >= 200 && r.status < 300) return;
    const why = `${what}: ${r.status} ${errorText(r)}`;
    if (r.status >= 400 && r.status < 500) throw new Permanent(why);
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
    const result = r.body as { Messages?: unknown; Spawns?: unknown; Assignments?: unknown } | null;
    if (result === null || typeof result !== 'object') throw new Permanent('the CU result is not a JSON object');
    const list = (v: unknown, what: string): unknown[] => {
      if (v === undefined || v === null) return [];
      if (!Array.isArray(v)) throw new Permanent(`the CU result's ${what} is not a list`);
      return v;
    };
    const depth = row.depth + 1;
    const children: NewJob[] = [];
    for (const [k, entry] of list(result.Messages, 'Messages').entries()) {
      const target = (entry as { Target?: unknown } | null)?.Target;
      children.push({ kind: 'push', key: `push:${pid}:${message}:${k}`, lane: typeof target === 'string' ? target : null, payload: { from: pid, root, entry } satisfies PushPayload, depth });
    }
    for (const [k, entry] of list(result.Spawns, 'Spawns').entries()) {
      children.push({ kind: 'spawn', key: `spawn:${pid}:${message}:${k}`, lane: null, payload: { from: pid, root, entry } satisfies PushPayload, depth });
    }
    for (const [k, entry] of list(result.Assignments, 'Assignments').entries()) {
      const { Processes, Message } = (entry ?? {}) as { Processes?: unknown; Message?: unknown };
      if (!Array.isArray(Processes) || typeof Message !== 'string') {
        log(`mu: ${pid} result of ${message}: assignment ${k} is not {Processes: [ids], Message: id}; skipped`);
        continue;
      }
      for (const [j, target] of Processes.entries()) {
        const process = String(target);
        children.push({ kind: 'assign', key: `assign:${pid}:${message}:${k}:${j}`, lane: process, payload: { process, message: Message, root } satisfies AssignPayload, depth });
      }
    }
    if (children.length === 0) return {};
    if (row.depth >= maxDepth) {
      const reason = `depth cap ${maxDepth}: ${children.length} outbox entries of ${message} (process ${pid}, Pushed-For ${root}) not pushed`;
      log(`mu: ${reason}`);
      return { reason };
    }
    if (children.length > maxFanout) {
      const reason = `fan-out cap ${maxFanout}: ${children.length - maxFanout} of ${children.length} outbox entries of ${message} (process ${pid}) not pushed`;
      log(`mu: ${reason}`);
      return { children: children.slice(0, maxFanout), reason };
    }
    return { children };
  }

  /** Signs once and keeps the bytes in the row before they are sent (see the file comment). */
  async function built(row: Row, build: () => Promise<Item>): Promise<{ id: string; raw: Buffer }> {
    if (row.item && row.item_id) return { id: row.item_id, raw: row.item };
    let item: Item;
    try {
      item = await build();
    } catch (e) {
      if (e instanceof ItemError) throw new Permanent(e.message);
      throw e;
    }
    q.saveItem.run(item.id, item.raw, Date.now(), row.id);
    return { id: item.id, raw: item.raw };
  }

  async function push(row: Row): Promise<Done> {
    const { from, root, entry } = JSON.parse(row.payload) as PushPayload;
    const msg = (entry ?? {}) as { Target?: unknown; Anchor?: unknown; Data?: unknown; Tags?: unknown };
    if (typeof msg.Target !== 'string' || !ITEM_ID.test(msg.Target)) throw new Permanent('an outbox message needs a Target process id (43 base64url characters)');
    const target = msg.Target;
    // AO processes answer wallets (a requester, a node) through their outbox too: such a message has
    // no SU to go to and stays readable in the sender's result.
    if (!(await isProcess(target))) return { reason: `${target} is not a process: not delivered (it stays in the result of ${from})` };
    const item = await built(row, async () => {
      const tags = tagsOf(msg.Tags, 'outbox message');
      const anchor = anchorFor(msg.Anchor, row.key);
      const module = tagValue({ tags: await processTags(from) }, 'Module');
      if (!module) throw new Permanent(`the sending process ${from} has no Module tag`);
      return createItem(dataOf(msg.Data), signer, {
        target,
        anchor,
        tags: [
          ...tags.filter((t) => !PUSH_RESERVED.has(t.name)),
          { name: 'Data-Protocol', value: 'ao' },
          { name: 'Type', value: 'Message' },
          { name: 'Variant', value: 'ao.TN.1' },
          { name: 'From-Process', value: from },
          { name: 'From-Module', value: module },
          { name: 'Pushed-For', value: root },
        ],
      });
    });
    const su = await locate(target);
    expectOk(await http('POST', `${su}/`, item.raw), `SU of ${target}`);
    return { itemId: item.id, children: [crankJob(item.id, target, root, row.depth)] };
  }

  async function spawn(row: Row): Promise<Done> {
    const { from, root, entry } = JSON.parse(row.payload) as PushPayload;
    const s = (entry ?? {}) as { Anchor?: unknown; Data?: unknown; Tags?: unknown };
    // The child lives on its parent's scheduler: AO's MU puts the parent's Scheduler tag on it.
    const parent = await processTags(from);
    const scheduler = tagValue({ tags: parent }, 'Scheduler') ?? (await suAddress(await locate(from)));
    const item = await built(row, async () => {
      const tags = tagsOf(s.Tags, 'spawn');
      const module = tagValue({ tags }, 'Module') ?? tagValue({ tags: parent }, 'Module');
      if (!module) throw new Permanent(`neither the spawn nor its parent ${from} has a Module tag`);
      return createItem(dataOf(s.Data), signer, {
        anchor: anchorFor(s.Anchor, row.key),
        tags: [
          ...tags.filter((t) => !SPAWN_RESERVED.has(t.name)),
          { name: 'Data-Protocol', value: 'ao' },
          { name: 'Type', value: 'Process' },
          { name: 'Variant', value: 'ao.TN.1' },
          { name: 'From-Process', value: from },
          { name: 'Pushed-For', value: root },
          { name: 'Scheduler', value: scheduler },
          { name: 'Module', value: module },
        ],
      });
    });
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
    if (r.status >= 400 && r.status < 500) throw new Permanent(`the SU of ${pid} refused it: ${errorText(r)}`);
    expectOk(r, `SU of ${pid}`);
    return { itemId: row.item_id!, children: [crankJob(row.item_id!, pid, row.item_id!, 0)] };
  }

  const WORK: Record<JobKind, (row: Row) => Promise<Done>> = { forward, crank, push, spawn, assign: assignment };

  // ---- the crank loop ----

  const inflight = new Map<number, Promise<void>>();
  let timer: NodeJS.Timeout | null = null;
  let waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];

  async function attempt(row: Row): Promise<void> {
    let outcome: { done: Done } | { error: Error };
    try {
      outcome = { done: await WORK[row.kind](row) };
    } catch (e) {
      outcome = { error: e as Error };
    }
    // The database stays open until every attempt in flight has settled, so a success is kept.
    if ('done' in outcome) {
      finish(row, outcome.done);
      return;
    }
    const e = outcome.error;
    // Cut off by close(): the row stays as it was and is tried again on reopen.
    if (closed || e instanceof Stopped) return;
    const why = oneLine(e.message);
    const tries = row.attempts + 1;
    if (e instanceof Unreachable) options.scheduler.forget?.();
    if (e instanceof Permanent || tries >= attempts) {
      const reason = e instanceof Permanent ? why : `gave up after ${tries} tries: ${why}`;
      q.failed.run(reason, Date.now(), row.id);
      log(`mu: ${row.key} failed: ${reason}`);
      return;
    }
    const delay = Math.min(maxMs, baseMs * 2 ** Math.min(tries - 1, 30));
    q.retry.run(tries, Date.now() + delay, why, Date.now(), row.id);
    if (tries % 10 === 0) log(`mu: ${row.key} still failing after ${tries} tries: ${why}`);
  }

  function pump(): void {
    if (closed) return;
    if (timer) {
      clearTimeout(timer);
      timer = null;
    }
    const now = Date.now();
    const busy = JSON.stringify([...inflight.keys()]);
    const free = concurrency - inflight.size;
    if (free > 0) {
      for (const row of q.runnable.all({ now, busy, limit: free })) {
        const run = attempt(row)
          .catch((e: Error) => log(`mu: ${row.key}: ${e.message}`))
          .finally(() => {
            inflight.delete(row.id);
            pump();
          });
        inflight.set(row.id, run);
      }
    }
    if (inflight.size === 0 && q.pending.get()!.n === 0) {
      const ready = waiters;
      waiters = [];
      for (const w of ready) w.resolve();
      return;
    }
    const at = q.nextAt.get({ now, busy: JSON.stringify([...inflight.keys()]) })?.at;
    if (at !== null && at !== undefined) timer = setTimeout(pump, Math.max(0, at - now));
  }

  // ---- what clients ask for ----

  /** Hands an item to an SU in the client's request: a few quick tries, then the SU's answer. */
  async function toSu(url: string, body: Uint8Array | undefined, what: string): Promise<Reply> {
    let last = '';
    for (let i = 0; i < 3; i++) {
      if (i > 0) await new Promise((resolve) => setTimeout(resolve, baseMs * 2 ** (i - 1)));
      try {
        const r = await http('POST', url, body);
        if (r.status >= 200 && r.status < 300) return r;
        if (r.status >= 400 && r.status < 500) throw new MessengerError(r.status, `${what}: ${errorText(r)}`);
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

  function queue(job: NewJob): void {
    if (closed) throw new MessengerError(503, 'the messenger is closing');
    enqueue([job]);
    pump();
  }

  const messenger: Messenger = {
    address,

    async submit(raw) {
      if (raw.byteLength === 0) throw new MessengerError(400, 'empty body: send a signed ANS-104 data item');
      let item: Item;
      try {
        item = await verifyItem(raw);
      } catch (e) {
        if (e instanceof ItemError) throw new MessengerError(400, e.message);
        throw e;
      }
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
      q.park.run(key, JSON.stringify(payload), item.id, item.raw, Date.now());
      try {
        await toSu(`${su}/`, item.raw, `the SU of ${processId}`);
      } catch (e) {
        const row = q.byKey.get(key)!;
        if (e instanceof MessengerError && e.status >= 400 && e.status < 500) q.failed.run(oneLine(e.message), Date.now(), row.id);
        // The SU is away: keep trying in the background; a client that sends the same bytes again is harmless.
        else q.retry.run(row.attempts + 1, Date.now() + baseMs, oneLine((e as Error).message), Date.now(), row.id);
        pump();
        throw e;
      }
      // Done and its crank queued in one transaction, before the client hears 202.
      finish(q.byKey.get(key)!, { itemId: item.id, children: [crankJob(item.id, processId, item.id, 0)] });
      pump();
      return { id: item.id, processId };
    },

    async assign(processId, message, extra = {}) {
      if (!ITEM_ID.test(processId) || !ITEM_ID.test(message)) throw new MessengerError(400, 'process-id and assign must be ids (43 base64url characters)');
      const su = await locateForClient(processId);
      const r = await toSu(assignUrl(su, processId, message, extra), undefined, `the SU of ${processId}`);
      const id = (r.body as { id?: unknown } | null)?.id;
      if (typeof id !== 'string') throw new MessengerError(502, 'the SU did not return an assignment id');
      queue(crankJob(message, processId, message, 0));
      return { id };
    },

    monitor(processId, on) {
      if (!ITEM_ID.test(processId)) throw new MessengerError(400, 'a process id is 43 base64url characters');
      if (on) q.monitor.run(processId, Date.now());
      else q.unmonitor.run(processId);
    },

    monitors: () => q.monitors.all().map((r) => r.process),

    jobs: () =>
      q.jobs.all().map((r) => ({ kind: r.kind, key: r.key, state: r.state, attempts: r.attempts, depth: r.depth, itemId: r.item_id, reason: r.reason })),

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
      await Promise.allSettled([...inflight.values()]);
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
    bodyLimit: options.bodyLimit ?? 16 * 2 ** 20,
    frameworkErrors: (error, _request, reply) => fail(reply, 400, error.message),
  });
  // A data item comes as octet-stream, but any type (or none) is read as bytes.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
  app.setErrorHandler((error: FastifyError, _request, reply) => {
    if (error instanceof MessengerError) return fail(reply, error.status, error.message);
    const status = error.statusCode ?? 500;
    if (status >= 400 && status < 500) return fail(reply, status, error.message);
    return fail(reply, 500, 'internal error');
  });
  app.setNotFoundHandler((request, reply) => fail(reply, 404, `no route for ${request.method} ${request.url.slice(0, 100)}`));

  app.get('/', async (_request, reply) => reply.type('text/plain; charset=utf-8').send('ao messenger unit'));

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

