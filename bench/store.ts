// npm run bench:store — puts/s and gets/s on the embedded store for 1 KiB and 1 MiB items, one put
// at a time (Ed25519-signed; every put verifies the item and commits its index row, with a 1 KiB
// item's bytes inline in the same transaction and a 1 MiB item's in an fsynced file first; every
// get reads and verifies it again).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createItem, type Item } from '../src/store/items.js';
import { INLINE_BYTES, openSqliteStore } from '../src/store/sqlite-store.js';
import { generateWallet, walletSigner } from '../src/store/wallet.js';

const signer = walletSigner(await generateWallet('ed25519'));
console.log(`embedded store (SQLite WAL fsynced per commit; items up to ${INLINE_BYTES / 1024} KiB inline, larger in fsynced files)\n`);
console.log('item size  items  puts/s   gets/s   put MB/s  get MB/s');
for (const [label, size, count] of [['1 KiB', 1024, 2000], ['1 MiB', 2 ** 20, 100]] as const) {
  const dir = mkdtempSync(join(tmpdir(), 'verity-bench-store-'));
  try {
    const store = openSqliteStore(dir);
    const items: Item[] = [];
    for (let i = 0; i < count; i++) {
      const data = Buffer.alloc(size, i % 251);
      items.push(await createItem(data, signer, { tags: [{ name: 'Bench', value: String(i) }] }));
    }
    let t0 = performance.now();
    for (const item of items) await store.put(item.raw);
    const putSeconds = (performance.now() - t0) / 1000;
    t0 = performance.now();
    for (const item of items) await store.get(item.id);
    const getSeconds = (performance.now() - t0) / 1000;
    await store.close();
    const mb = (count * size) / 1e6;
    const row = [label.padEnd(9), String(count).padEnd(6), (count / putSeconds).toFixed(0).padEnd(8), (count / getSeconds).toFixed(0).padEnd(8), (mb / putSeconds).toFixed(1).padEnd(9), (mb / getSeconds).toFixed(1)];
    console.log(row.join(' '));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
