// Data items (interop with @dha-team/arbundles both ways, limits, malformed input), wallets, and
// the embedded store (queries, idempotence, small items inline and large ones in files, stores of
// the layout before inline items, crash safety under kill -9).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ArweaveSigner, DataItem, createData } from '@dha-team/arbundles';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { ItemError, VERIFIED_ITEMS, VerifiedItems, createItem, parseItem, verifiedItems, verifyItem, type Item } from '../../src/store/items.js';
import { INLINE_BYTES, openSqliteStore } from '../../src/store/sqlite-store.js';
import { generateWallet, readWallet, walletAddress, walletSigner, writeWallet, type Wallet } from '../../src/store/wallet.js';
import { projectRoot, withTempDir } from '../helpers.js';

const TARGET = Buffer.alloc(32, 7).toString('base64url');

/** Where the embedded store in `dir` keeps the file of an item past INLINE_BYTES. */
const itemFile = (dir: string, id: string): string => join(dir, 'items', id.slice(0, 2), id);

/** The item's bytes as the store's SQLite holds them inline, or null (read with a connection of its own). */
function inlineBytes(dir: string, id: string): Buffer | null {
  const db = new Database(join(dir, 'index.sqlite'), { readonly: true });
  try {
    const row = db.prepare<[string], { raw: Buffer }>('SELECT item_bytes.raw FROM items JOIN item_bytes ON item_bytes.seq = items.seq WHERE items.id = ?').get(id);
    return row?.raw ?? null;
  } finally {
    db.close();
  }
}

/** An item of exactly `rawBytes` raw bytes. */
async function itemOfSize(rawBytes: number, signer: ReturnType<typeof walletSigner>, name: string): Promise<Item> {
  const tags = [{ name: 'Sized', value: name }];
  const header = (await createItem('', signer, { tags })).raw.length;
  const item = await createItem(Buffer.alloc(rawBytes - header, name.length), signer, { tags });
  assert.equal(item.raw.length, rawBytes);
  return item;
}

const wallets: Promise<Record<'ed25519' | 'arweave', Wallet>> = (async () => ({
  ed25519: await generateWallet('ed25519'),
  arweave: await generateWallet('arweave'),
}))();

test('items made here verify with arbundles, and items made by arbundles verify here, for both key types', async () => {
  for (const [type, wallet] of Object.entries(await wallets)) {
    const ours = await createItem('payload', walletSigner(wallet), { tags: [{ name: 'Type', value: 'Message' }], target: TARGET, anchor: 'a'.repeat(32) });
    assert.ok(await DataItem.verify(ours.raw), `${type}: arbundles verifies ours`);
    assert.equal(new DataItem(ours.raw).id, ours.id);
    assert.equal(ours.address, walletAddress(wallet));
    const signer = wallet.type === 'arweave' ? new ArweaveSigner(wallet.jwk) : walletSigner(wallet);
    const theirs = createData(Buffer.from('theirs'), signer, { tags: [{ name: 'App', value: 'verity' }] });
    await theirs.sign(signer);
    const parsed = await verifyItem(theirs.getRaw());
    assert.equal(parsed.id, theirs.id, `${type}: ours reads theirs`);
    assert.deepEqual(parsed.tags, [{ name: 'App', value: 'verity' }]);
    assert.equal(parsed.data.toString(), 'theirs');
  }
});

test('tag limits are enforced when creating and when parsing', async () => {
  const signer = walletSigner((await wallets).ed25519);
  const cases: [object[], RegExp][] = [
    [Array.from({ length: 129 }, (_, i) => ({ name: `t${i}`, value: 'v' })), /129 tags, at most 128/],
    [[{ name: '', value: 'v' }], /name is 0 bytes/],
    [[{ name: 'n', value: 'v'.repeat(3073) }], /value is 3073 bytes/],
    [[{ name: 'n'.repeat(1025), value: 'v' }], /name is 1025 bytes/],
  ];
  for (const [tags, pattern] of cases) {
    await assert.rejects(createItem('x', signer, { tags: tags as { name: string; value: string }[] }), (e: unknown) => e instanceof ItemError && pattern.test(e.message));
  }
  await assert.rejects(createItem('x', signer, { anchor: 'short' }), /anchor: must be 32 bytes/);
  await assert.rejects(createItem('x', signer, { target: 'T'.repeat(43) }), /target: not 32 bytes in canonical base64url/);
});

test('property: malformed, truncated or forged items are rejected with a reason, never a crash', async () => {
  const signer = walletSigner((await wallets).ed25519);
  const valid = await createItem('some data for fuzzing', signer, { tags: [{ name: 'A', value: 'b' }, { name: 'Content-Type', value: 'text/plain' }], target: TARGET });
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.integer({ min: 0, max: valid.raw.length - 1 }).map((n) => valid.raw.subarray(0, n)),
        fc.tuple(fc.integer({ min: 0, max: valid.raw.length - 1 }), fc.integer({ min: 1, max: 255 })).map(([i, x]) => {
          const copy = Buffer.from(valid.raw);
          copy[i] ^= x;
          return copy;
        }),
        fc.uint8Array({ maxLength: 2000 }).map((b) => Buffer.from(b)),
        fc.tuple(fc.integer({ min: 0, max: 7 }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })).map(([field, v]) => {
          const copy = Buffer.from(valid.raw);
          copy.writeBigUInt64LE(v, 2 + 64 + 32 + 1 + 32 + 1 + (field % 2) * 8); // the tag count or tag bytes
          return copy;
        }),
      ),
      async (bytes) => {
        try {
          const item: Item = await verifyItem(bytes);
          assert.equal(Buffer.compare(item.raw, valid.raw), 0, 'only the untouched item verifies');
        } catch (e) {
          assert.ok(e instanceof ItemError, `unexpected ${String(e)}`);
          assert.ok(!e.message.includes('\n'));
        }
      },
    ),
    { numRuns: 400, seed: 7 },
  );
  assert.throws(() => parseItem(Buffer.from([9, 0, 1, 2])), /unsupported signature type 9/);
  // An Avro tag block claiming a huge count with a negative length: arbundles' reader would loop
  // until memory runs out; the bounded walk refuses it.
  const bomb = Buffer.concat([Buffer.from([2, 0]), Buffer.alloc(96), Buffer.from([0, 0]), Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([0xfe, 0xff, 0xff, 0x0f, 0x01, 0x00])]);
  assert.throws(() => parseItem(bomb), /bad tags: /);
});

test('wallet files: 0600, read back with the same address; bad files give one clear error', async () => {
  await withTempDir(async (dir) => {
    for (const [type, w] of Object.entries(await wallets)) {
      const path = join(dir, `${type}.json`);
      writeWallet(path, w);
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.equal(walletAddress(readWallet(path)), walletAddress(w));
    }
    const bad = join(dir, 'bad.json');
    (await import('node:fs')).writeFileSync(bad, '{"kty":"EC"}');
    assert.throws(() => readWallet(bad), /not an Arweave \(RSA\) or Ed25519 JWK/);
    assert.throws(() => readWallet(join(dir, 'none.json')), /no such wallet file/);
  });
});

test('the embedded store: put, get, duplicates, queries by ids, owners, recipients and tags with pages', async () => {
  await withTempDir(async (dir) => {
    const store = openSqliteStore(dir);
    const { ed25519, arweave } = await wallets;
    const items: Item[] = [];
    for (let i = 0; i < 12; i++) {
      const w = i % 3 === 0 ? arweave : ed25519;
      const tags = [{ name: 'Type', value: i % 2 ? 'Message' : 'Process' }, { name: 'N', value: String(i) }];
      items.push(await createItem(`item ${i}`, walletSigner(w), { tags, target: i % 4 === 0 ? TARGET : undefined }));
    }
    for (const item of items) assert.deepEqual(await store.put(item.raw), { id: item.id, duplicate: false });
    assert.deepEqual(await store.put(items[3].raw), { id: items[3].id, duplicate: true });
    const got = await store.get(items[5].id);
    assert.ok(got && Buffer.compare(got.raw, items[5].raw) === 0);
    assert.equal(await store.get('A'.repeat(43)), null);
    assert.equal(await store.get('../../etc/passwd'), null);

    const ids = async (q: Parameters<typeof store.query>[0]): Promise<string[]> => (await store.query(q)).edges.map((e) => e.node.id);
    assert.deepEqual(await ids({ ids: [items[1].id, items[2].id], sort: 'HEIGHT_ASC' }), [items[1].id, items[2].id]);
    assert.deepEqual(await ids({ owners: [walletAddress(arweave)], sort: 'HEIGHT_ASC' }), [0, 3, 6, 9].map((i) => items[i].id));
    assert.deepEqual(await ids({ recipients: [TARGET], sort: 'HEIGHT_ASC' }), [0, 4, 8].map((i) => items[i].id));
    const messagesOf3or5 = { tags: [{ name: 'Type', values: ['Message'] }, { name: 'N', values: ['3', '5', '6'] }], sort: 'HEIGHT_ASC' as const };
    assert.deepEqual(await ids(messagesOf3or5), [3, 5].map((i) => items[i].id));
    // Pages of 5, newest first, through cursors.
    const seen: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await store.query({ first: 5, after });
      seen.push(...page.edges.map((e) => e.node.id));
      if (!page.hasNextPage) break;
      after = page.edges.at(-1)!.cursor;
    }
    assert.deepEqual(seen, items.map((i) => i.id).reverse());
    await assert.rejects(store.query({ first: 1000 }), /first must be an integer in 1..100/);
    await assert.rejects(store.query({ after: 'bogus' }), /bad cursor/);
    await store.close();
    // Everything is still there after reopening.
    const again = openSqliteStore(dir);
    assert.equal((await again.query({ first: 100 })).edges.length, 12);
    await again.close();
  });
});

test('the embedded store keeps an item of at most INLINE_BYTES in SQLite (no file) and a larger one in a file', async () => {
  await withTempDir(async (dir) => {
    const signer = walletSigner((await wallets).ed25519);
    const store = openSqliteStore(dir);
    const small = await createItem(Buffer.alloc(1024, 3), signer, { tags: [{ name: 'Size', value: 'small' }] });
    const atLimit = await itemOfSize(INLINE_BYTES, signer, 'at the limit');
    const large = await itemOfSize(INLINE_BYTES + 1, signer, 'past the limit');
    // Put together: one group commit holds both kinds.
    const results = await Promise.all([small, atLimit, large].map((item) => store.put(item.raw)));
    assert.deepEqual(results.map((r) => r.duplicate), [false, false, false]);
    for (const item of [small, atLimit]) {
      assert.equal(existsSync(itemFile(dir, item.id)), false, 'no file for an inline item');
      assert.equal(inlineBytes(dir, item.id)?.equals(item.raw), true, 'its bytes are in SQLite');
    }
    assert.equal(readFileSync(itemFile(dir, large.id)).equals(large.raw), true, 'a large item is a file');
    assert.equal(inlineBytes(dir, large.id), null, 'and not in SQLite');
    for (const item of [small, atLimit, large]) {
      const got = await store.get(item.id);
      assert.equal(got?.raw.equals(item.raw), true, `${item.raw.length} bytes round-trip`);
      assert.equal(got.data.equals(item.data), true);
      assert.equal(await store.has(item.id), true);
      assert.equal((await store.put(item.raw)).duplicate, true);
    }
    assert.deepEqual((await store.query({ tags: [{ name: 'Size', values: ['small'] }] })).edges.map((e) => e.node.dataSize), [1024]);
    await store.close();
  });
});

test('a store of the layout before inline items (every item a file, no item_bytes table) reads its items and takes new ones', async () => {
  await withTempDir(async (dir) => {
    const signer = walletSigner((await wallets).ed25519);
    const old = await Promise.all([0, 1, 2].map((i) => createItem(`old ${i}`, signer, { tags: [{ name: 'Era', value: 'old' }] })));
    // That layout is today's schema without item_bytes and every item's bytes in its file: made
    // here from a store of today's, its inline items moved out to their files and the table dropped.
    const before = openSqliteStore(dir);
    for (const item of old) await before.put(item.raw);
    await before.close();
    const db = new Database(join(dir, 'index.sqlite'));
    for (const item of old) {
      mkdirSync(join(dir, 'items', item.id.slice(0, 2)), { recursive: true });
      writeFileSync(itemFile(dir, item.id), inlineBytes(dir, item.id)!);
    }
    db.exec('DROP TABLE item_bytes');
    db.close();

    const store = openSqliteStore(dir);
    for (const item of old) {
      assert.equal((await store.get(item.id))?.raw.equals(item.raw), true, 'an old item is read from its file');
      assert.equal(await store.has(item.id), true);
      assert.equal((await store.put(item.raw)).duplicate, true, 'and is not stored again');
      assert.equal(inlineBytes(dir, item.id), null);
    }
    const fresh = await createItem('new', signer, { tags: [{ name: 'Era', value: 'new' }] });
    assert.equal((await store.put(fresh.raw)).duplicate, false);
    assert.equal(inlineBytes(dir, fresh.id)?.equals(fresh.raw), true, 'a new small item goes inline');
    assert.equal(existsSync(itemFile(dir, fresh.id)), false);
    assert.equal((await store.query({ tags: [{ name: 'Era', values: ['old', 'new'] }] })).edges.length, 4);
    await store.close();
    const again = openSqliteStore(dir);
    for (const item of [...old, fresh]) assert.equal((await again.get(item.id))?.raw.equals(item.raw), true, `${item.id} after reopening`);
    await again.close();
  });
});

test('inline and file items put together are durable: read by a second connection while the first is open, and after reopening', async () => {
  await withTempDir(async (dir) => {
    const signer = walletSigner((await wallets).ed25519);
    const items = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 8 === 0 ? itemOfSize(INLINE_BYTES + 1 + i, signer, `large ${i}`) : createItem(`small ${i}`, signer))));
    const store = openSqliteStore(dir);
    await Promise.all(items.map((item) => store.put(item.raw)));
    // Acknowledged means committed: another process sharing the store sees every item at once.
    const other = openSqliteStore(dir);
    for (const item of items) assert.equal((await other.get(item.id))?.raw.equals(item.raw), true, `${item.id} seen by a second connection`);
    await other.close();
    await store.close();
    const again = openSqliteStore(dir);
    for (const item of items) assert.equal((await again.get(item.id))?.raw.equals(item.raw), true, `${item.id} after reopening`);
    assert.equal(items.filter((item) => existsSync(itemFile(dir, item.id))).length, 5, 'the five large ones are files');
    await again.close();
  });
});

test('kill -9 during a burst of 1,000 puts loses no acknowledged item and leaves a readable store', { timeout: 60_000 }, async () => {
  await withTempDir(async (dir) => {
    const child = spawn(process.execPath, [join(projectRoot, 'dist', 'tests', 'store', 'fixtures', 'put-burst.js'), dir, '1000'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const acknowledged: string[] = [];
    let buffer = '';
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (chunk: Buffer) => {
        buffer += chunk.toString();
        const lines = buffer.split('\n');
        buffer = lines.pop()!;
        acknowledged.push(...lines);
        if (acknowledged.length >= 300 && !child.killed) child.kill('SIGKILL');
      });
      child.on('exit', () => resolve());
    });
    assert.ok(acknowledged.length >= 300 && acknowledged.length < 1000, `killed mid-burst after ${acknowledged.length}`);
    const store = openSqliteStore(dir);
    for (const id of acknowledged) {
      const item = await store.get(id);
      assert.ok(item, `acknowledged item ${id} survived`);
    }
    assert.ok(acknowledged.filter((id) => existsSync(itemFile(dir, id))).length >= 12, 'both kinds were acknowledged: every 25th item is a file');
    const all = await store.query({ tags: [{ name: 'Burst', values: ['0'] }] });
    assert.equal(all.edges.length, 1);
    assert.ok(readFileSync(join(dir, 'index.sqlite')).length > 0);
    await store.close();
  });
});

test('group commit: puts made together share commits, each is answered once durable, one item put twice at once is stored once', async () => {
  await withTempDir(async (dir) => {
    const signer = walletSigner((await wallets).ed25519);
    const store = openSqliteStore(dir);
    const items = await Promise.all(Array.from({ length: 300 }, (_, i) => createItem(`group ${i}`, signer, { tags: [{ name: 'Group', value: String(i % 3) }] })));
    // 300 at once: more than one commit holds (GROUP_COMMIT.items), and every one is answered.
    const results = await Promise.all([...items, items[0], items[1]].map((item) => store.put(item.raw)));
    assert.deepEqual(results.slice(0, 300).map((r) => r.id), items.map((i) => i.id));
    assert.equal(results.filter((r) => !r.duplicate).length, 300, 'each item is new exactly once, the second puts of two of them are duplicates');
    assert.equal((await store.put(items[2].raw)).duplicate, true);
    await store.close();
    const again = openSqliteStore(dir);
    for (const item of items) assert.equal((await again.get(item.id))?.raw.equals(item.raw), true, `${item.id} is readable after reopening`);
    let count = 0;
    for (let after: string | undefined; ; ) {
      const page = await again.query({ tags: [{ name: 'Group', values: ['0', '1', '2'] }], first: 100, after });
      count += page.edges.length;
      if (!page.hasNextPage) break;
      after = page.edges.at(-1)!.cursor;
    }
    assert.equal(count, 300, 'one index row each');
    await again.close();
  });
});

test('attack: bytes verified once are not trusted by id alone — a tampered copy with the same signature, on the wire or on disk, fails', async () => {
  await withTempDir(async (dir) => {
    for (const type of ['ed25519', 'arweave'] as const) {
      const good = await createItem(`payload ${type}`, walletSigner((await wallets)[type]), { tags: [{ name: 'Kind', value: 'test' }] });
      await verifyItem(good.raw); // now in the cache of verified bytes
      const tampered = Buffer.from(good.raw);
      tampered[tampered.length - 1] ^= 1;
      assert.equal(parseItem(tampered).id, good.id, 'the same id: the id hashes the signature only');
      await assert.rejects(verifyItem(tampered), /bad signature/);
      await verifyItem(good.raw); // still fine
    }
    // Stored: the store verified the bytes and kept them, inline or in a file; a byte changed since is caught on get.
    const store = openSqliteStore(dir);
    const signer = walletSigner((await wallets).ed25519);
    const small = await createItem('inline', signer);
    const large = await itemOfSize(INLINE_BYTES + 1, signer, 'in a file');
    for (const item of [small, large]) {
      await store.put(item.raw);
      assert.ok(await store.get(item.id));
    }
    const db = new Database(join(dir, 'index.sqlite'));
    const turned = Buffer.from(small.raw);
    turned[turned.length - 1] ^= 1;
    db.prepare('UPDATE item_bytes SET raw = ? WHERE seq = (SELECT seq FROM items WHERE id = ?)').run(turned, small.id);
    db.close();
    const file = itemFile(dir, large.id);
    const bytes = readFileSync(file);
    bytes[bytes.length - 1] ^= 1;
    writeFileSync(file, bytes);
    await assert.rejects(store.get(small.id), /bad signature/);
    await assert.rejects(store.get(large.id), /bad signature/);
    await store.close();
  });
});

test('the cache of verified items is bounded and keeps the recently used', () => {
  const cache = new VerifiedItems(3);
  for (const id of ['a', 'b', 'c']) cache.add(id, `digest ${id}`);
  assert.equal(cache.has('a', 'digest a'), true); // a is now the most recent
  cache.add('d', 'digest d');
  assert.equal(cache.size, 3);
  assert.equal(cache.has('b', 'digest b'), false, 'the least recently used went');
  assert.equal(cache.has('a', 'digest a'), true);
  assert.equal(cache.has('a', 'another digest'), false, 'an id with other bytes is not verified');
  assert.equal(VERIFIED_ITEMS <= 65_536 && verifiedItems.capacity === VERIFIED_ITEMS, true);
});
