// The group commit of database.ts: writes handed in together share one transaction, one that
// throws rolls back alone, each caller is answered only after the WAL holding its write is fsynced,
// and what was answered is there after reopening.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { openCommitDatabase } from '../../src/store/database.js';
import { withTempDir } from '../helpers.js';

const SCHEMA = 'CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)';

test('writes handed in together commit together; one that throws rejects only its caller', async () => {
  await withTempDir(async (dir) => {
    const { db, commit } = openCommitDatabase(dir, 'x.sqlite', SCHEMA);
    const insert = db.prepare('INSERT INTO t (k, v) VALUES (?, ?)');
    let commits = 0;
    // SQLite's data_version does not move for the connection's own commits; total_changes does, so
    // count transactions by the WAL's frames instead: one commit of 100 rows adds far fewer frames
    // than 100 commits would.
    const frames = (): number => (db.pragma('wal_checkpoint(PASSIVE)', { simple: false }) as { log: number }[])[0].log;
    const before = frames();
    const results = await Promise.allSettled(
      Array.from({ length: 100 }, (_, i) =>
        commit(() => {
          commits++;
          if (i === 50) {
            insert.run('k1', -1); // a duplicate key: this write fails, and its own earlier part goes too
            return 0;
          }
          insert.run(`k${i}`, i);
          return i;
        }),
      ),
    );
    assert.equal(commits, 100);
    assert.equal(results.filter((r) => r.status === 'rejected').length, 1);
    assert.match(String((results[50] as PromiseRejectedResult).reason), /UNIQUE/);
    assert.equal((results[7] as PromiseFulfilledResult<number>).value, 7);
    assert.equal((db.prepare('SELECT COUNT(*) AS n FROM t').get() as { n: number }).n, 99);
    assert.ok(frames() - before < 20, `${frames() - before} WAL frames for 99 rows written together`);
    db.close();
    const again = openCommitDatabase(dir, 'x.sqlite', SCHEMA);
    assert.equal((again.db.prepare('SELECT COUNT(*) AS n FROM t').get() as { n: number }).n, 99, 'every answered write is there after reopening');
    again.db.close();
  });
});

test('synced() coalesces: many callers at once share few fsyncs, and each waits for one begun after its call', async () => {
  await withTempDir(async (dir) => {
    const { db, synced } = openCommitDatabase(dir, 'y.sqlite', SCHEMA);
    db.prepare('INSERT INTO t (k, v) VALUES (?, ?)').run('a', 1);
    const order: string[] = [];
    const first = synced().then(() => order.push('first'));
    db.prepare('INSERT INTO t (k, v) VALUES (?, ?)').run('b', 2);
    // Asked while the first runs: answered by a later fsync, never by the one that may predate its write.
    const second = Promise.all(Array.from({ length: 50 }, () => synced())).then(() => order.push('second'));
    await Promise.all([first, second]);
    assert.deepEqual(order, ['first', 'second']);
    db.close();
  });
});
