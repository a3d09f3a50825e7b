// The embedded store: item files on disk, indexed in SQLite (WAL, synchronous=FULL). An item is
// acknowledged only once its file is fsynced and its index row committed, so a `kill -9` never
// loses an acknowledged item; a file without a row (a crash in between) is simply written again.
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
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
`;


function writeDurably(path: string, bytes: Uint8Array, folders: Set<string>): void {
  // 256 shard folders at most: make each once instead of on every put.
  if (!folders.has(dirname(path))) {
    mkdirSync(dirname(path), { recursive: true });
    folders.add(dirname(path));
  }
  const temp = `${path}.${process.pid}.tmp`;
  const fd = openSync(temp, 'w');
  try {
    writeSync(fd, bytes);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temp, path);
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
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
  db.pragma('synchronous = FULL');
  // Several processes (the units, a gateway) may share one store: wait for each other's writes.
  db.pragma('busy_timeout = 10000');
  db.exec(SCHEMA);
  const fileOf = (id: string): string => join(dir, 'items', id.slice(0, 2), id);
  const folders = new Set<string>();
  const find = db.prepare<[string], { seq: number }>('SELECT seq FROM items WHERE id = ?');
  const insertItem = db.prepare('INSERT INTO items (id, signature, owner, address, target, anchor, data_size) VALUES (?, ?, ?, ?, ?, ?, ?)');
  const tagsOf = db.prepare<[number], { name: string; value: string }>('SELECT name, value FROM tags WHERE seq = ? ORDER BY position');
  const insertTag = db.prepare('INSERT INTO tags (seq, position, name, value) VALUES (?, ?, ?, ?)');
  const index = db.transaction((item: Item) => {
    const { lastInsertRowid } = insertItem.run(item.id, item.signature, item.owner, item.address, item.target, item.anchor, item.data.length);
    item.tags.forEach((t, i) => insertTag.run(lastInsertRowid, i, t.name, t.value));
  });

  async function read(id: string): Promise<Item | null> {
    if (!ITEM_ID.test(id) || !find.get(id)) return null;
    const item = await verifyItem(readFileSync(fileOf(id)));
    if (item.id !== id) throw new ItemError(`the stored file for ${id} holds item ${item.id}`);
    return item;
  }

  return {
    async put(raw) {
      const item = await verifyItem(raw);
      if (find.get(item.id)) return { id: item.id, duplicate: true } satisfies PutResult;
      writeDurably(fileOf(item.id), item.raw, folders);
      // Another put of the same item may have finished while this one wrote the file.
      if (find.get(item.id)) return { id: item.id, duplicate: true };
      index(item);
      return { id: item.id, duplicate: false };
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
      db.close();
    },
  };
}
