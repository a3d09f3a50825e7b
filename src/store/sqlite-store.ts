// The embedded store: ANS-104 data items indexed in SQLite (WAL, each commit fsynced before its
// answer). Where an item's bytes live depends on its size:
//   - at most INLINE_BYTES of raw bytes: in SQLite, a row of item_bytes keyed by the item's seq,
//     written in the same transaction as its index row;
//   - larger: a file items/<first two characters of the id>/<id>, fsynced with its folder before
//     its index row is committed.
// An item is acknowledged only once its bytes and its index row are durable, so a `kill -9` never
// loses an acknowledged item; a file without a row (a crash in between) is simply written again.
// Puts that arrive together share one commit (GROUP_COMMIT): the large ones' files are fsynced in
// parallel off the event loop, their folders once each, then every row and inline item is one
// transaction, made durable by one fsync of the WAL. Stores written before item_bytes existed hold
// every item in a file: a row without inline bytes is read from its file.
import { mkdirSync, readFileSync } from 'node:fs';
import { mkdir, open, rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { walSyncer } from './database.js';
import { ITEM_ID, ItemError, verifyItem, type Item } from './items.js';
import { QueryError, checkQuery, type ItemSummary, type PutResult, type Store, type TransactionsPage, type TransactionsQuery } from './store.js';

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    signature TEXT NOT NULL,
    owner TEXT NOT NULL,
    address TEXT NOT NULL,
    target TEXT,
    anchor TEXT,
    data_size INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS items_address ON items (address, seq);
  CREATE INDEX IF NOT EXISTS items_target ON items (target, seq);
  CREATE TABLE IF NOT EXISTS tags (
    seq INTEGER NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (seq, position)
  );
  CREATE INDEX IF NOT EXISTS tags_name_value ON tags (name, value, seq);
  -- Apart from items, so that queries, which read only index rows, never page through item bytes.
  -- Created on opening a store made before it existed; that store's items stay in their files.
  CREATE TABLE IF NOT EXISTS item_bytes (
    seq INTEGER PRIMARY KEY,
    raw BLOB NOT NULL
  );
`;

/**
 * Items of at most this many raw bytes live in SQLite, larger ones in files. Most items are a few
 * KiB (messages, assignments, results): inline, a commit of them costs one transaction and one WAL
 * fsync, where a file costs each an open, a write, an fsync, a close and a rename in the thread pool
 * and its folder an fsync. Why no higher: an inline item is written on the event loop, and twice (to
 * the WAL, then by the checkpoint), where a file is written once in the thread pool; SQLite's own
 * measurements find blobs read faster from the database than from files only below about 100 KB
 * (sqlite.org/intern-v-extern-blob.html); and at 64 KiB a commit's inline bytes stay within
 * GROUP_COMMIT.items × 64 KiB = 16 MiB of WAL.
 */
export const INLINE_BYTES = 64 * 1024;

const isInline = (item: Item): boolean => item.raw.length <= INLINE_BYTES;

/** A put waiting for the next group commit. */
interface Waiting {
  item: Item;
  resolve: (result: PutResult) => void;
  reject: (error: Error) => void;
}

/**
 * Group commit: the puts that arrive while one commit is being made wait and go together in the
 * next, whose files (for items past INLINE_BYTES) are written and fsynced in parallel (libuv's
 * thread pool, off the event loop) and whose index rows and inline items are one SQLite
 * transaction: one WAL fsync for all of them, not one each. A commit takes at most this many items
 * and raw bytes, inline or not; the rest wait for the one after.
 */
export const GROUP_COMMIT = { items: 256, bytes: 64 * 1024 * 1024 };

/** Writes a file and makes its bytes durable (fsync before the rename that makes it visible). */
async function writeFileDurably(path: string, bytes: Uint8Array): Promise<void> {
  const temp = `${path}.${process.pid}.tmp`;
  const file = await open(temp, 'w');
  try {
    await file.write(bytes);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temp, path);
}

/** A folder's entries (the renames into it) are durable once the folder itself is fsynced. */
async function syncFolder(folder: string): Promise<void> {
  const handle = await open(folder, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

interface Row {
  seq: number;
  id: string;
  signature: string;
  owner: string;
  address: string;
  target: string | null;
  anchor: string | null;
  data_size: number;
}

function summaryOfRow(row: Row, tags: { name: string; value: string }[]): ItemSummary {
  const contentType = tags.find((t) => t.name === 'Content-Type')?.value ?? null;
  const { id, signature, owner, address, target, anchor } = row;
  return { id, signature, owner, address, target, anchor, tags, dataSize: row.data_size, contentType, block: null, bundledIn: null };
}

const cursorOf = (seq: number): string => Buffer.from(`seq:${seq}`).toString('base64url');

function seqOf(cursor: string): number {
  const m = /^seq:(\d+)$/.exec(Buffer.from(cursor, 'base64url').toString());
  if (!m) throw new QueryError('bad cursor');
  return Number(m[1]);
}

/** Opens (creating if needed) the embedded store in `dir`. */
export function openSqliteStore(dir: string): Store {
  mkdirSync(join(dir, 'items'), { recursive: true });
  const db = new Database(join(dir, 'index.sqlite'));
  db.pragma('journal_mode = WAL');
  // Every put's index rows are made durable by an fsync of the WAL off the event loop (walSyncer)
  // before it is answered: as durable as synchronous=FULL, without the event loop waiting on it.
  db.pragma('synchronous = NORMAL');
  const walSynced = walSyncer(join(dir, 'index.sqlite'));
  // Several processes (the units, a gateway) may share one store: wait for each other's writes.
  db.pragma('busy_timeout = 10000');
  db.exec(SCHEMA);
  const fileOf = (id: string): string => join(dir, 'items', id.slice(0, 2), id);
  const folders = new Set<string>();
  const find = db.prepare<[string], { seq: number }>('SELECT seq FROM items WHERE id = ?');
  const bytesOf = db.prepare<[string], { raw: Buffer | null }>('SELECT item_bytes.raw FROM items LEFT JOIN item_bytes ON item_bytes.seq = items.seq WHERE items.id = ?');
  const insertItem = db.prepare('INSERT INTO items (id, signature, owner, address, target, anchor, data_size) VALUES (?, ?, ?, ?, ?, ?, ?)');
  const tagsOf = db.prepare<[number], { name: string; value: string }>('SELECT name, value FROM tags WHERE seq = ? ORDER BY position');
  const insertTag = db.prepare('INSERT INTO tags (seq, position, name, value) VALUES (?, ?, ?, ?)');
  const insertBytes = db.prepare('INSERT INTO item_bytes (seq, raw) VALUES (?, ?)');
  const indexAll = db.transaction((items: Item[]) => {
    for (const item of items) {
      const { lastInsertRowid } = insertItem.run(item.id, item.signature, item.owner, item.address, item.target, item.anchor, item.data.length);
      item.tags.forEach((t, i) => insertTag.run(lastInsertRowid, i, t.name, t.value));
      if (isInline(item)) insertBytes.run(lastInsertRowid, item.raw);
    }
  });

  // Every get verifies the bytes it reads again, inline or from a file: the store may be shared with
  // other processes (the units, a gateway) and a disk may turn a byte. verifyItem's cache makes that
  // a sha256 of the bytes for an item this process verified before, and the full check for any byte
  // changed since.
  async function read(id: string): Promise<Item | null> {
    if (!ITEM_ID.test(id)) return null;
    const row = bytesOf.get(id);
    if (!row) return null;
    // No inline bytes: an item past INLINE_BYTES, or one stored before item_bytes existed.
    const item = await verifyItem(row.raw ?? readFileSync(fileOf(id)));
    if (item.id !== id) throw new ItemError(`the stored bytes for ${id} hold item ${item.id}`);
    return item;
  }

  let waiting: Waiting[] = [];
  /** Whether commits are being made, and the ids in the one being made: a second put of one waits for it. */
  let committing = false;
  let run: Promise<void> = Promise.resolve();
  const inCommit = new Map<string, Promise<void>>();

  function takeBatch(): Waiting[] {
    let bytes = 0;
    let n = 0;
    while (n < waiting.length && n < GROUP_COMMIT.items && (n === 0 || bytes + waiting[n].item.raw.length <= GROUP_COMMIT.bytes)) bytes += waiting[n++].item.raw.length;
    const batch = waiting.slice(0, n);
    waiting = waiting.slice(n);
    return batch;
  }

  async function commit(batch: Waiting[]): Promise<Set<string>> {
    // One of each id: two puts of one item in one batch write it once.
    const items = new Map<string, Item>();
    for (const w of batch) if (!items.has(w.item.id) && !find.get(w.item.id)) items.set(w.item.id, w.item);
    const files = [...items.values()].filter((item) => !isInline(item));
    const touched = new Set<string>();
    for (const { id } of files) {
      const folder = dirname(fileOf(id));
      // 256 shard folders at most: made once, not on every put.
      if (!folders.has(folder)) {
        await mkdir(folder, { recursive: true });
        folders.add(folder);
      }
      touched.add(folder);
    }
    await Promise.all(files.map((item) => writeFileDurably(fileOf(item.id), item.raw)));
    await Promise.all([...touched].map(syncFolder));
    // Another process sharing the store may have indexed some of them meanwhile: a file without a
    // row is harmless (written again), a row without a durable file never happens. Inline bytes
    // commit with their row, so they are durable exactly when it is.
    const fresh = [...items.values()].filter((item) => !find.get(item.id));
    if (fresh.length > 0) {
      indexAll(fresh);
      await walSynced();
    }
    return new Set(fresh.map((item) => item.id));
  }

  /** Makes commits until no put is waiting; puts arriving meanwhile form the next one. */
  async function commitWaiting(): Promise<void> {
    committing = true;
    try {
      // The puts made in this turn of the event loop join the first commit.
      await new Promise<void>((resolve) => setImmediate(resolve));
      while (waiting.length > 0) {
        const batch = takeBatch();
        const done = commit(batch);
        const settled = done.then(
          () => undefined,
          () => undefined,
        );
        for (const w of batch) inCommit.set(w.item.id, settled);
        try {
          const fresh = await done;
          for (const w of batch) w.resolve({ id: w.item.id, duplicate: !fresh.delete(w.item.id) });
        } catch (e) {
          for (const w of batch) w.reject(e instanceof Error ? e : new Error(String(e)));
        } finally {
          for (const w of batch) if (inCommit.get(w.item.id) === settled) inCommit.delete(w.item.id);
        }
      }
    } finally {
      committing = false;
    }
  }

  return {
    async put(raw) {
      const item = await verifyItem(raw);
      if (find.get(item.id)) return { id: item.id, duplicate: true } satisfies PutResult;
      const pending = inCommit.get(item.id);
      if (pending) {
        await pending;
        if (find.get(item.id)) return { id: item.id, duplicate: true };
      }
      return new Promise<PutResult>((resolve, reject) => {
        waiting.push({ item, resolve, reject });
        if (!committing) run = commitWaiting();
      });
    },
    get: read,
    async has(id) {
      return ITEM_ID.test(id) && find.get(id) !== undefined;
    },
    async query(q: TransactionsQuery): Promise<TransactionsPage> {
      const { first, sort } = checkQuery(q);
      const where: string[] = [];
      const params: (string | number)[] = [];
      const inList = (column: string, values: string[] | undefined): void => {
        if (values === undefined) return;
        where.push(values.length ? `${column} IN (${values.map(() => '?').join(', ')})` : '0');
        params.push(...values);
      };
      inList('items.id', q.ids);
      inList('items.address', q.owners);
      inList('items.target', q.recipients);
      for (const t of q.tags ?? []) {
        where.push(`EXISTS (SELECT 1 FROM tags WHERE tags.seq = items.seq AND tags.name = ? AND tags.value IN (${t.values.map(() => '?').join(', ') || "''"}))`);
        params.push(t.name, ...t.values);
      }
      if (q.after !== undefined) {
        where.push(sort === 'HEIGHT_DESC' ? 'items.seq < ?' : 'items.seq > ?');
        params.push(seqOf(q.after));
      }
      const sql = `SELECT * FROM items ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq ${sort === 'HEIGHT_DESC' ? 'DESC' : 'ASC'} LIMIT ?`;
      const rows = db.prepare<(string | number)[], Row>(sql).all(...params, first + 1);
      const edges = rows.slice(0, first).map((row) => ({ cursor: cursorOf(row.seq), node: summaryOfRow(row, tagsOf.all(row.seq)) }));
      return { edges, hasNextPage: rows.length > first };
    },
    async close() {
      // A put in a commit was promised durability: let it land before the index closes.
      while (committing) await run;
      db.close();
    },
  };
}
