// The one way this project opens SQLite: WAL, the schema applied, and fsync on every commit unless
// the caller's data can be recomputed (then a crash may lose only the newest commits, never consistency).
import { mkdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';

export function openDatabase(dir: string, file: string, schema: string, options: { durable?: boolean } = {}): Database.Database {
  mkdirSync(dir, { recursive: true });
  const db = new Database(join(dir, file));
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${options.durable === false ? 'NORMAL' : 'FULL'}`);
  db.exec(schema);
  return db;
}

/**
 * Group commit for a synchronous SQLite connection: the writes handed in during one turn of the
 * event loop run in one transaction (one fsync under synchronous=FULL), each in its own savepoint
 * so that one that throws rolls back alone and rejects only its own caller. A caller is answered
 * only after the transaction holding its write has committed, so it may acknowledge what it wrote.
 * At most `maxBatch` writes go in one transaction; the rest go in the next.
 */
export function groupCommitter(db: Database.Database, options: { maxBatch?: number; synced?: () => Promise<void> } = {}): <T>(write: () => T) => Promise<T> {
  const maxBatch = options.maxBatch ?? 1024;
  interface Write {
    write: () => unknown;
    resolve: (value: unknown) => void;
    reject: (error: Error) => void;
  }
  let waiting: Write[] = [];
  let scheduled = false;
  const one = db.transaction((write: () => unknown) => write());
  const all = db.transaction((batch: Write[]) =>
    batch.map((w): { ok: true; value: unknown } | { ok: false; error: Error } => {
      try {
        return { ok: true, value: one(w.write) };
      } catch (e) {
        return { ok: false, error: e instanceof Error ? e : new Error(String(e)) };
      }
    }),
  );
  function flush(): void {
    scheduled = false;
    while (waiting.length > 0) {
      const batch = waiting.slice(0, maxBatch);
      waiting = waiting.slice(batch.length);
      let outcomes: ReturnType<typeof all>;
      try {
        outcomes = all(batch);
      } catch (e) {
        // The commit itself failed (the disk, a closed database): nothing of the batch holds.
        for (const w of batch) w.reject(e instanceof Error ? e : new Error(String(e)));
        continue;
      }
      const answer = (): void => outcomes.forEach((o, i) => (o.ok ? batch[i].resolve(o.value) : batch[i].reject(o.error)));
      if (!options.synced) answer();
      else
        options.synced().then(answer, (e: Error) => {
          for (const w of batch) w.reject(e);
        });
    }
  }
  return <T>(write: () => T): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      waiting.push({ write, resolve: resolve as (value: unknown) => void, reject });
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    });
}

/**
 * fsyncs a WAL-mode database's write-ahead log off the event loop (libuv's thread pool). Opened with
 * synchronous=NORMAL, SQLite writes each commit to the WAL without an fsync (and fsyncs the WAL
 * before every checkpoint, the database after it); a commit that is then followed by one of these
 * fsyncs is as durable as under synchronous=FULL, but the event loop does not wait for the disk,
 * and every commit made before an fsync starts is covered by it: callers that arrive while one runs
 * share the next. The file is opened by path each time, so the fsync reaches the WAL that exists
 * now, whatever SQLite did to it in between (a reset after a checkpoint keeps the same file).
 */
export function walSyncer(databasePath: string): () => Promise<void> {
  let running: Promise<void> | null = null;
  let next: Promise<void> | null = null;
  const once = async (): Promise<void> => {
    let wal;
    try {
      wal = await open(`${databasePath}-wal`, 'r');
    } catch (e) {
      // No log: the last connection to close checkpointed every commit into the database file
      // (and fsynced it) and removed the log, so there is nothing left to make durable.
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    try {
      await wal.datasync();
    } finally {
      await wal.close();
    }
  };
  const start = (): Promise<void> => {
    const run = once().finally(() => {
      if (running === run) running = null;
    });
    running = run;
    return run;
  };
  return () => {
    if (!running) return start();
    // One is running, perhaps begun before the caller's commit: the caller needs the one after it.
    next ??= running
      .catch(() => undefined)
      .then(() => {
        next = null;
        return start();
      });
    return next;
  };
}

/**
 * A database whose commits are made durable by the caller: WAL with synchronous=NORMAL, `commit`
 * (a group committer whose callers are answered once the WAL is fsynced) and `synced` (an fsync of
 * the WAL, for writes made outside `commit` that must be durable before an answer).
 */
export function openCommitDatabase(dir: string, file: string, schema: string): { db: Database.Database; commit: <T>(write: () => T) => Promise<T>; synced: () => Promise<void> } {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, file);
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec(schema);
  const synced = walSyncer(path);
  return { db, commit: groupCommitter(db, { synced }), synced };
}
