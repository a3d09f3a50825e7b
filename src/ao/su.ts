// The Scheduler Unit: gives every message sent to a process its place in that process's log (slot
// = Nonce), a Timestamp, a Block-Height and a link in the Hash-Chain, as an Assignment data item
// signed by the SU wallet (the rules: su-rules.ts). The log is what a CU replays, so a slot once
// acknowledged is permanent: it is committed to SQLite (WAL, synchronous=FULL) before the reply,
// and an id already in the log gets its existing slot back. Messages that arrive together share
// one commit (group commit): one transaction, one fsync, then their assignments go into the store
// together, and only then is each answered. The HTTP API is AO's legacy SU API (research/ao.md §2b), so
// aoconnect and AO's own CU and MU can use it as they use the real one.
import { randomBytes } from 'node:crypto';
import { fastify, type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { openCommitDatabase } from '../store/database.js';
import { ITEM_ID, ItemError, createItem, parseItem, tagValue, verifyItem, type Item, type Tag } from '../store/items.js';
import { listen, type Listening } from '../store/listen.js';
import type { Store } from '../store/store.js';
import { walletAddress, walletSigner, type Wallet } from '../store/wallet.js';
import { oneLine } from './protocol.js';
import { assignmentTags, blockHeightOf, nextSlot } from './su-rules.js';

export { blockHeightOf } from './su-rules.js';

export interface Owner {
  address: string;
  key: string;
}

/** AO's SU JSON shapes, field for field (snake_case where the SU writes it so). */
export interface MessageInner {
  id: string;
  owner: Owner;
  data: string | null;
  tags: Tag[];
  signature: string;
  anchor: string | null;
  target: string | null;
}

export interface AssignmentInner {
  id: string;
  owner: Owner;
  tags: Tag[];
  signature: string;
  anchor: string | null;
  target: string | null;
}

/** `message` is null for a slot made by an assignment: as AO's SU, the CU reads the item itself. */
export interface Message {
  message: MessageInner | null;
  assignment: AssignmentInner;
}

export interface PaginatedMessages {
  page_info: { has_next_page: boolean };
  edges: { node: Message; cursor: string }[];
}

export interface ProcessInner {
  process_id: string;
  block: string;
  owner: Owner;
  tags: Tag[];
  timestamp: number;
  data: string | null;
  anchor: string | null;
  signature: string | null;
  target: string | null;
}

/** A place in a process's log. */
export interface Slot {
  process: string;
  nonce: number;
  timestamp: number;
  blockHeight: string;
  hashChain: string;
  /** The id of the message (or of the Process item, at nonce 0). */
  message: string;
  assignment: string;
  /** The id was already in the log: this is its existing slot, nothing new was written. */
  duplicate: boolean;
}

/**
 * A page of a log. `from` is exclusive and `to` inclusive, in ms timestamps or (the -nonce pair)
 * in slots, as AO's SU; strings or numbers.
 */
export interface MessagesQuery {
  from?: number | string;
  to?: number | string;
  fromNonce?: number | string;
  toNonce?: number | string;
  limit?: number | string;
}

export interface SchedulerOptions {
  /** Holds the SU's SQLite database and nothing else. */
  dir: string;
  /** Every message and assignment is also stored here. */
  store: Store;
  /** Signs assignments and the Scheduler-Location record. */
  wallet: Wallet;
  /** Where clients reach this SU, for the Scheduler-Location record. */
  url: string;
  /** The clock, in ms. */
  now?: () => number;
}

export interface Scheduler {
  readonly address: string;
  readonly url: string;
  /** Settles once the log is recovered and the Scheduler-Location record is in the store. */
  readonly ready: Promise<void>;
  /** Verifies and schedules a Process item (its own slot 0) or a Message to a process here. */
  post(raw: Uint8Array): Promise<Slot>;
  /** Schedules an item already in the store on a process's log. */
  assign(processId: string, messageId: string, exclude?: string[]): Promise<Slot>;
  /** Null when no such process is scheduled here. */
  messages(processId: string, query?: MessagesQuery): Promise<PaginatedMessages | null>;
  /** The message in the log of `processId`, or (without it) in any log here. */
  message(id: string, processId?: string): Promise<Message | null>;
  latest(processId: string): Promise<Message | null>;
  process(id: string): Promise<ProcessInner | null>;
  /** Slots made and the group commits (SQLite transactions) that made them, since it was opened. */
  stats(): { slots: number; commits: number };
  /** The current timestamp: never behind the last slot of `processId` when one is given. */
  timestamp(processId?: string): { timestamp: number; blockHeight: string };
  close(): Promise<void>;
}

export class SchedulerError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'SchedulerError';
  }
}

export const MAX_ITEM_BYTES = 16 * 1024 * 1024;
const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;
// A page stops early past this much message data: a page of 1,000 16 MiB items would be 16 GB.
const PAGE_DATA_BYTES = 32 * 1024 * 1024;
const LOCATION_TTL = '3600000';

/** The most slots one group commit makes; more requests wait for the next. */
const MAX_GROUP_COMMIT = 1024;

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS slots (
    process TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    message TEXT NOT NULL,
    assigned INTEGER NOT NULL,
    assignment TEXT NOT NULL UNIQUE,
    hash_chain TEXT NOT NULL,
    raw BLOB NOT NULL,
    message_raw BLOB,
    PRIMARY KEY (process, nonce)
  );
  CREATE UNIQUE INDEX IF NOT EXISTS slots_message ON slots (message, process);
  CREATE UNIQUE INDEX IF NOT EXISTS slots_time ON slots (process, timestamp);
`;

interface Row {
  process: string;
  nonce: number;
  timestamp: number;
  message: string;
  /** 1 when made by an assignment (POST ?assign), not by posting the message. */
  assigned: number;
  assignment: string;
  hash_chain: string;
  /** The signed assignment item: kept here so that a slot committed before a crash can still be published. */
  raw: Buffer;
  /**
   * The posted message's bytes until it is in the store: a group commit keeps them with the slot,
   * then stores the message and the assignment together, so a message costs one durable step
   * before its slot and one after, not two after. NULL once stored, and for an assignment's slot.
   */
  message_raw: Buffer | null;
}

interface Head extends Row {
  /** The last nonce of this process whose assignment is known to be in the store (−1: none). */
  published: number;
}

const slotOf = (row: Row, duplicate: boolean): Slot => ({
  process: row.process,
  nonce: row.nonce,
  timestamp: row.timestamp,
  blockHeight: blockHeightOf(row.timestamp),
  hashChain: row.hash_chain,
  message: row.message,
  assignment: row.assignment,
  duplicate,
});

const ownerOf = (item: Item): Owner => ({ address: item.address, key: item.owner });
// AO's SU JSON carries data as text; a binary item's exact bytes are in the store.
const dataOf = (item: Item): string | null => (item.data.length ? item.data.toString('utf8') : null);

const messageInner = (item: Item): MessageInner => ({
  id: item.id,
  owner: ownerOf(item),
  data: dataOf(item),
  tags: item.tags,
  signature: item.signature,
  anchor: item.anchor,
  target: item.target,
});

function assignmentInner(raw: Buffer): AssignmentInner {
  const a = parseItem(raw);
  return { id: a.id, owner: ownerOf(a), tags: a.tags, signature: a.signature, anchor: a.anchor, target: a.target };
}

const bad = (message: string): SchedulerError => new SchedulerError(400, message);

function checkId(id: unknown, what: string): string {
  if (typeof id !== 'string' || !ITEM_ID.test(id)) throw bad(`${what} must be an id: 43 base64url characters`);
  return id;
}

/** An integer from a query (string or number), or undefined when absent. */
function integer(value: unknown, name: string): number | undefined {
  if (value === undefined || value === '') return undefined;
  const n = typeof value === 'number' ? value : typeof value === 'string' && /^-?\d{1,16}$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n)) throw bad(`${name} must be an integer`);
  return n;
}

/** Opens (creating if needed) the SU whose log is in `dir`. */
export function openScheduler(options: SchedulerOptions): Scheduler {
  const { store, url } = options;
  const now = (): number => Math.floor((options.now ?? Date.now)());
  const signer = walletSigner(options.wallet);
  const address = walletAddress(options.wallet);
  // Each group commit's transaction is made durable by an fsync of the WAL off the event loop
  // before any of its slots is answered (openCommitDatabase): synchronous=FULL's guarantee.
  const { db, synced } = openCommitDatabase(options.dir, 'su.sqlite', SCHEMA);
  // Logs written by earlier versions stored each message before its slot: they have no copy to keep.
  if (!db.prepare<[], { name: string }>("SELECT name FROM pragma_table_info('slots')").all().some((c) => c.name === 'message_raw')) db.exec('ALTER TABLE slots ADD COLUMN message_raw BLOB');
  const q = {
    head: db.prepare<[string], Row>('SELECT * FROM slots WHERE process = ? ORDER BY nonce DESC LIMIT 1'),
    processes: db.prepare<[], { process: string }>('SELECT process FROM slots WHERE nonce = 0'),
    slot: db.prepare<[string, number], Row>('SELECT * FROM slots WHERE process = ? AND nonce = ?'),
    inLog: db.prepare<[string, string], Row>('SELECT * FROM slots WHERE message = ? AND process = ?'),
    anywhere: db.prepare<[string], Row>('SELECT * FROM slots WHERE message = ? ORDER BY rowid LIMIT 1'),
    byTime: db.prepare<[string, number, number, number], Row>('SELECT * FROM slots WHERE process = ? AND timestamp > ? AND timestamp <= ? ORDER BY timestamp LIMIT ?'),
    byNonce: db.prepare<[string, number, number, number], Row>('SELECT * FROM slots WHERE process = ? AND nonce > ? AND nonce <= ? ORDER BY nonce LIMIT ?'),
    insert: db.prepare('INSERT INTO slots (process, nonce, timestamp, message, assigned, assignment, hash_chain, raw, message_raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)'),
    // Once a message is in the store its copy here can go (not waited for: the store has it).
    stored: db.prepare('UPDATE slots SET message_raw = NULL WHERE process = ? AND nonce > ? AND nonce <= ? AND message_raw IS NOT NULL'),
  };
  const insertAll = db.transaction((rows: Row[]) => {
    for (const r of rows) q.insert.run(r.process, r.nonce, r.timestamp, r.message, r.assigned, r.assignment, r.hash_chain, r.raw, r.message_raw);
  });

  // The last slot of each process, and the last of its slots known to be in the store: the slots
  // after it were committed by a group commit whose assignments are being stored (or failed to
  // be), and stay out of the log's pages until they are.
  const heads = new Map<string, Head>();
  function headOf(processId: string): Head | null {
    let head = heads.get(processId);
    if (!head) {
      const row = q.head.get(processId);
      if (!row) return null;
      // Not known to be stored: publishUpTo looks (recover() does this for every process at start).
      head = { ...row, published: row.nonce - 1 };
      heads.set(processId, head);
    }
    return head;
  }

  /** Puts the assignments of `processId` up to `nonce` into the store, in order of nonce. */
  async function publishUpTo(processId: string, nonce: number): Promise<void> {
    const head = headOf(processId);
    if (!head || head.published >= nonce) return;
    const from = head.published;
    const rows = q.byNonce.all(processId, from, nonce, Number.MAX_SAFE_INTEGER);
    // Each message with its assignment: one group commit of the store for all of them.
    // Every put settles before a failure is reported: the caller hears of it with nothing still under way.
    const puts = await Promise.allSettled(rows.flatMap((row) => [store.put(row.raw), ...(row.message_raw ? [store.put(row.message_raw)] : [])]));
    const failed = puts.find((p): p is PromiseRejectedResult => p.status === 'rejected');
    if (failed) throw failed.reason;
    if (rows.some((row) => row.message_raw)) q.stored.run(processId, from, nonce);
    // The head may have moved on (a group commit replaced it) meanwhile: mark the current one.
    const current = heads.get(processId) ?? head;
    current.published = Math.max(current.published, nonce);
  }

  /** A slot to be made by the next group commit. */
  interface Request {
    processId: string;
    messageId: string;
    assigned: boolean;
    /** A posted message's bytes (not yet in the store); none for an assignment. */
    messageRaw: Buffer | null;
    exclude?: string;
    resolve: (slot: Slot) => void;
    reject: (error: Error) => void;
  }
  let requests: Request[] = [];
  const stats = { slots: 0, commits: 0 };
  let committing = false;

  /** An existing slot, once its assignment is surely in the store. */
  async function existingSlot(row: Row): Promise<Slot> {
    await publishUpTo(row.process, row.nonce);
    return slotOf(row, true);
  }

  /**
   * Group commit: every slot requested while the previous commit was being made is made in one
   * SQLite transaction (one fsync), then their assignments go into the store together (the store
   * batches them too), and only then is each request answered. The slots of one process are made in
   * the order they were requested, each from the one before it (su-rules.ts).
   */
  async function commitSlots(batch: Request[]): Promise<void> {
    const made: { request: Request; row: Row; duplicate: boolean }[] = [];
    // The heads as this batch moves them: written into `heads` only once the transaction holds.
    const moved = new Map<string, Row>();
    const inBatch = new Map<string, Row>();
    for (const request of batch) {
      const { processId, messageId } = request;
      const key = `${processId} ${messageId}`;
      const existing = inBatch.get(key) ?? q.inLog.get(messageId, processId);
      if (existing) {
        made.push({ request, row: existing, duplicate: true });
        continue;
      }
      const before = moved.get(processId) ?? headOf(processId);
      if (!before && messageId !== processId) {
        request.reject(new SchedulerError(404, `no process ${processId} is scheduled here`));
        continue;
      }
      const slot = nextSlot(processId, before ? { nonce: before.nonce, timestamp: before.timestamp, assignment: before.assignment, hashChain: before.hash_chain } : null, now());
      let item: Item;
      try {
        item = await createItem('', signer, { target: processId, tags: assignmentTags(processId, slot, messageId, request.exclude) });
      } catch (e) {
        request.reject(e instanceof Error ? e : new Error(String(e)));
        continue;
      }
      const row: Row = { process: processId, nonce: slot.nonce, timestamp: slot.timestamp, message: messageId, assigned: request.assigned ? 1 : 0, assignment: item.id, hash_chain: slot.hashChain, raw: item.raw, message_raw: request.messageRaw };
      moved.set(processId, row);
      inBatch.set(key, row);
      made.push({ request, row, duplicate: false });
    }
    const fresh = made.filter((m) => !m.duplicate).map((m) => m.row);
    const rejectAll = (e: unknown): void => {
      for (const m of made) m.request.reject(e instanceof Error ? e : new Error(String(e)));
    };
    try {
      // The point of no return: the slots are committed before anyone sees their assignments, so
      // the SU never signs two assignments for one slot, even across a crash.
      insertAll(fresh);
    } catch (e) {
      rejectAll(e);
      return;
    }
    stats.commits++;
    stats.slots += fresh.length;
    // Committed: the heads move on whatever happens next (the next slot follows these).
    for (const [processId, row] of moved) {
      const head = heads.get(processId);
      heads.set(processId, { ...row, published: head ? head.published : -1 });
    }
    try {
      await synced();
    } catch (e) {
      // Not known to be durable: nobody is answered yes (a retry gets the same slots back).
      rejectAll(e);
      return;
    }
    // Each request is answered once its own slot and every one before it in its log are stored.
    await Promise.all(
      made.map(async ({ request, row, duplicate }) => {
        try {
          await publishUpTo(row.process, row.nonce);
          request.resolve(slotOf(row, duplicate));
        } catch (e) {
          request.reject(e instanceof Error ? e : new Error(String(e)));
        }
      }),
    );
  }

  /** Makes group commits until no slot is requested; requests arriving meanwhile form the next. */
  async function commitRequests(): Promise<void> {
    committing = true;
    try {
      // The requests of this turn of the event loop join the first commit.
      await new Promise<void>((resolve) => setImmediate(resolve));
      while (requests.length > 0) {
        const batch = requests.slice(0, MAX_GROUP_COMMIT);
        requests = requests.slice(batch.length);
        await commitSlots(batch);
      }
    } finally {
      committing = false;
    }
  }

  function schedule(processId: string, messageId: string, messageRaw: Buffer | null, exclude?: string): Promise<Slot> {
    const assigned = messageRaw === null;
    return new Promise<Slot>((resolve, reject) => {
      requests.push({ processId, messageId, assigned, messageRaw, exclude, resolve, reject });
      if (!committing) void commitRequests();
    });
  }

  async function recover(): Promise<void> {
    for (const { process } of q.processes.all()) {
      const head = headOf(process)!;
      // A crash after a group commit may leave several trailing slots of a process unpublished.
      let published = head.nonce;
      // A slot is published once its assignment and (while the row still holds it) its message are stored.
      const stored = async (row: Row): Promise<boolean> => (await store.has(row.assignment)) && (row.message_raw === null || (await store.has(row.message)));
      while (published >= 0 && !(await stored(q.slot.get(process, published)!))) published--;
      head.published = published;
      await publishUpTo(process, head.nonce);
    }
  }

  async function publishLocation(): Promise<void> {
    const latest = await store.query({
      owners: [address],
      tags: [
        { name: 'Data-Protocol', values: ['ao'] },
        { name: 'Type', values: ['Scheduler-Location'] },
      ],
      first: 1,
      sort: 'HEIGHT_DESC',
    });
    const node = latest.edges[0]?.node;
    if (node && tagValue(node, 'Url') === url && tagValue(node, 'Time-To-Live') === LOCATION_TTL) return;
    const tags = [
      { name: 'Data-Protocol', value: 'ao' },
      { name: 'Type', value: 'Scheduler-Location' },
      { name: 'Url', value: url },
      { name: 'Time-To-Live', value: LOCATION_TTL },
    ];
    // A fresh anchor makes a fresh item, so that moving back to an earlier URL makes it the newest record again.
    const record = await createItem('', signer, { tags, anchor: randomBytes(24).toString('base64url') });
    await store.put(record.raw);
  }

  const ready = (async () => {
    await recover();
    await publishLocation();
  })();
  ready.catch(() => undefined); // surfaced by every call that awaits it

  // Every call is tracked so that close() can let it finish: a slot being written was promised to someone.
  let closed = false;
  const pending = new Set<Promise<unknown>>();
  function guarded<T>(work: () => Promise<T>): Promise<T> {
    if (closed) return Promise.reject(new SchedulerError(503, 'the scheduler is closed'));
    const run = ready.then(work);
    pending.add(run);
    const done = (): void => void pending.delete(run);
    run.then(done, done);
    return run;
  }

  async function nodeOf(row: Row): Promise<Message> {
    const assignment = assignmentInner(row.raw);
    if (row.assigned) return { message: null, assignment };
    const item = await store.get(row.message);
    return { message: item ? messageInner(item) : null, assignment };
  }

  const exists = (processId: string): boolean => headOf(processId) !== null;

  // Cheapest checks first, so that junk costs the least: the length, then the header's structure
  // and tags, then (for a Message) whether its process is here; only then the signature, which
  // must hold before anything is answered from the log or stored.
  async function post(raw: Uint8Array): Promise<Slot> {
    if (raw.length > MAX_ITEM_BYTES) throw new SchedulerError(413, `the item is ${raw.length} bytes, at most ${MAX_ITEM_BYTES}`);
    let item: Item;
    try {
      item = parseItem(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength));
    } catch (e) {
      if (e instanceof ItemError) throw bad(e.message);
      throw e;
    }
    const type = tagValue(item, 'Type');
    let processId: string;
    if (type === 'Process') {
      processId = item.id;
      if (tagValue(item, 'Scheduler') !== address) throw bad(`the process's Scheduler tag must be this SU's address ${address}`);
      if (!ITEM_ID.test(tagValue(item, 'Module') ?? '')) throw bad('the process needs a Module tag holding a module id');
    } else if (type === 'Message') {
      if (!item.target) throw bad('a Message needs a target: the process it is for');
      processId = item.target;
    } else {
      throw bad(`the Type tag must be Process or Message, not ${type === undefined ? 'absent' : JSON.stringify(type.slice(0, 64))}`);
    }
    if (type === 'Message' && !exists(processId)) throw new SchedulerError(404, `no process ${processId} is scheduled here`);
    try {
      item = await verifyItem(item.raw);
    } catch (e) {
      if (e instanceof ItemError) throw bad(e.message);
      throw e;
    }
    const existing = q.inLog.get(item.id, processId);
    if (existing) return existingSlot(existing);
    // The message's bytes are committed with its slot, then stored with its assignment before the
    // slot is in the log's pages or answered (publishUpTo): a visible slot never points at a missing item.
    return schedule(processId, item.id, item.raw);
  }

  async function assign(processId: string, messageId: string, exclude?: string[]): Promise<Slot> {
    checkId(processId, 'process-id');
    checkId(messageId, 'assign');
    let excluded: string | undefined;
    if (exclude !== undefined && exclude.length > 0) {
      if (!exclude.every((e) => typeof e === 'string' && /^[\x21-\x7e]{1,256}$/.test(e) && !e.includes(','))) throw bad('exclude must be a comma-separated list of field names');
      excluded = exclude.join(',');
      if (excluded.length > 3072) throw bad('exclude is too long');
    }
    const existing = q.inLog.get(messageId, processId);
    if (existing) return existingSlot(existing);
    if (!exists(processId)) throw new SchedulerError(404, `no process ${processId} is scheduled here`);
    if (!(await store.has(messageId))) throw new SchedulerError(404, `no item ${messageId} in the store`);
    return schedule(processId, messageId, null, excluded);
  }

  async function messagesOf(processId: string, query: MessagesQuery = {}): Promise<PaginatedMessages | null> {
    checkId(processId, 'process id');
    const from = integer(query.from, 'from');
    const to = integer(query.to, 'to');
    const fromNonce = integer(query.fromNonce, 'from-nonce');
    const toNonce = integer(query.toNonce, 'to-nonce');
    const limit = integer(query.limit, 'limit') ?? DEFAULT_LIMIT;
    if (limit < 1) throw bad('limit must be at least 1');
    const byNonce = fromNonce !== undefined || toNonce !== undefined;
    if (byNonce && (from !== undefined || to !== undefined)) throw bad('use from/to or from-nonce/to-nonce, not both');
    const head = headOf(processId);
    if (!head) return null;
    const take = Math.min(limit, MAX_LIMIT);
    // Only slots whose assignments are in the store: a CU reads each one from there.
    const visible = (row: Row): boolean => row.nonce <= head.published;
    const rows = (
      byNonce
        ? q.byNonce.all(processId, fromNonce ?? -1, toNonce ?? Number.MAX_SAFE_INTEGER, take + 1)
        : q.byTime.all(processId, from ?? -1, to ?? Number.MAX_SAFE_INTEGER, take + 1)
    ).filter(visible);
    const edges: PaginatedMessages['edges'] = [];
    let size = 0;
    for (const row of rows.slice(0, take)) {
      if (size > PAGE_DATA_BYTES) break;
      const node = await nodeOf(row);
      size += node.message?.data?.length ?? 0;
      edges.push({ node, cursor: String(byNonce ? row.nonce : row.timestamp) });
    }
    return { page_info: { has_next_page: rows.length > edges.length }, edges };
  }

  async function messageById(id: string, processId?: string): Promise<Message | null> {
    checkId(id, 'message id');
    if (processId !== undefined) checkId(processId, 'process-id');
    const row = processId === undefined ? q.anywhere.get(id) : q.inLog.get(id, processId);
    return row ? nodeOf(row) : null;
  }

  async function latestOf(processId: string): Promise<Message | null> {
    checkId(processId, 'process id');
    const head = headOf(processId);
    if (!head) return null;
    // The newest slot in the store: later ones are not in the log's pages yet either.
    await publishUpTo(processId, head.nonce).catch(() => undefined);
    const row = head.published === head.nonce ? head : q.slot.get(processId, head.published);
    return row ? nodeOf(row) : null;
  }

  async function processInfo(id: string): Promise<ProcessInner | null> {
    checkId(id, 'process id');
    const row = q.slot.get(id, 0);
    const item = row ? await store.get(id) : null;
    if (!row || !item) return null;
    return {
      process_id: id,
      block: blockHeightOf(row.timestamp),
      owner: ownerOf(item),
      tags: item.tags,
      timestamp: row.timestamp,
      data: dataOf(item),
      anchor: item.anchor,
      signature: item.signature,
      target: item.target,
    };
  }

  return {
    address,
    url,
    ready,
    post: (raw) => guarded(() => post(raw)),
    assign: (processId, messageId, exclude) => guarded(() => assign(processId, messageId, exclude)),
    messages: (processId, query) => guarded(() => messagesOf(processId, query)),
    message: (id, processId) => guarded(() => messageById(id, processId)),
    latest: (processId) => guarded(() => latestOf(processId)),
    process: (id) => guarded(() => processInfo(id)),
    stats: () => ({ ...stats }),
    timestamp(processId) {
      if (closed) throw new SchedulerError(503, 'the scheduler is closed');
      const last = processId !== undefined && ITEM_ID.test(processId) ? (headOf(processId)?.timestamp ?? 0) : 0;
      const timestamp = Math.max(now(), last);
      return { timestamp, blockHeight: blockHeightOf(timestamp) };
    },
    async close() {
      if (closed) return;
      closed = true;
      await ready.catch(() => undefined);
      while (pending.size) await Promise.allSettled([...pending]);
      db.close();
    },
  };
}

export interface SchedulerServerOptions {
  port: number;
  host?: string;
  /** Largest request body in bytes; 16 MiB by default. */
  bodyLimit?: number;
  logger?: boolean;
}

export type RunningScheduler = Listening;


function fail(reply: FastifyReply, status: number, message: string): FastifyReply {
  return reply.code(status).type('application/json; charset=utf-8').send({ error: oneLine(message) });
}

type Query = Record<string, string | string[] | undefined>;

/** One value of a query parameter, or undefined; a repeated one is malformed. */
function param(query: Query, name: string): string | undefined {
  const value = query[name];
  if (Array.isArray(value)) throw bad(`${name} must be given once`);
  return value;
}

export function createSchedulerApp(scheduler: Scheduler, options: Omit<SchedulerServerOptions, 'port' | 'host'> = {}): FastifyInstance {
  const app = fastify({
    bodyLimit: options.bodyLimit ?? MAX_ITEM_BYTES,
    logger: options.logger ?? false,
    frameworkErrors: (error, _request, reply) => fail(reply, 400, error.message),
  });
  // A data item comes as application/octet-stream, but any type (or none) is read as its bytes.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));

  app.setErrorHandler((error: FastifyError | SchedulerError, request, reply) => {
    const status = error instanceof SchedulerError ? error.status : (error.statusCode ?? 500);
    if (status >= 400 && status < 500) return fail(reply, status, error.message);
    if (status === 503) return fail(reply, 503, error.message);
    request.log.error(error);
    return fail(reply, 500, 'internal error');
  });
  app.setNotFoundHandler((request, reply) => fail(reply, 404, `no route for ${request.method} ${request.url}`));

  const notFound = (what: string): SchedulerError => new SchedulerError(404, what);

  app.get('/', async () => ({ timestamp: scheduler.timestamp().timestamp, address: scheduler.address }));

  app.get<{ Querystring: Query }>('/timestamp', async (request) => {
    const { timestamp, blockHeight } = scheduler.timestamp(param(request.query, 'process-id'));
    return { timestamp: String(timestamp), block_height: blockHeight };
  });

  app.post<{ Querystring: Query }>('/', async (request) => {
    const processId = param(request.query, 'process-id');
    const assign = param(request.query, 'assign');
    if (processId !== undefined || assign !== undefined) {
      if (processId === undefined || assign === undefined) throw bad('process-id and assign go together');
      // base-layer (an L1 transaction rather than a bundled item) changes nothing here: both are items in the store.
      const exclude = param(request.query, 'exclude');
      const slot = await scheduler.assign(processId, assign, exclude === undefined || exclude === '' ? undefined : exclude.split(','));
      return { timestamp: slot.timestamp, id: slot.assignment };
    }
    const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
    if (body.length === 0) throw bad('empty body: send a signed ANS-104 data item');
    const slot = await scheduler.post(body);
    return { timestamp: slot.timestamp, id: slot.message };
  });

  app.get<{ Params: { id: string } }>('/processes/:id', async (request) => {
    const process = await scheduler.process(request.params.id);
    if (!process) throw notFound(`no process ${request.params.id} is scheduled here`);
    return process;
  });

  app.get<{ Params: { id: string } }>('/:id/latest', async (request) => {
    const latest = await scheduler.latest(request.params.id);
    if (!latest) throw notFound(`no process ${request.params.id} is scheduled here`);
    return latest;
  });

  app.get<{ Params: { id: string }; Querystring: Query }>('/:id', async (request) => {
    const { id } = request.params;
    const query = request.query;
    const processId = param(query, 'process-id');
    // AO's SU requires process-id; aoconnect's getMessages leaves it out, so it is optional here.
    if (processId === undefined || processId === id) {
      const page = await scheduler.messages(id, {
        from: param(query, 'from'),
        to: param(query, 'to'),
        fromNonce: param(query, 'from-nonce'),
        toNonce: param(query, 'to-nonce'),
        limit: param(query, 'limit'),
      });
      if (page) return page;
    }
    const message = await scheduler.message(id, processId);
    if (!message) throw notFound(processId === undefined ? `no message or process ${id} is scheduled here` : `no message ${id} in the log of ${processId}`);
    return message;
  });

  return app;
}

/** Serves the SU's HTTP API on host:port (port 0: any free port) once the scheduler is ready. */
export async function startScheduler(scheduler: Scheduler, options: SchedulerServerOptions): Promise<RunningScheduler> {
  await scheduler.ready;
  return listen(createSchedulerApp(scheduler, options), options.port, options.host);
}
