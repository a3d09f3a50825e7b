// The one way this project opens SQLite: WAL, the schema applied, and fsync on every commit unless
// the caller's data can be recomputed (then a crash may lose only the newest commits, never consistency).
import { mkdirSync } from 'node:fs';
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
