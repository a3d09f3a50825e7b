// The Scheduler Unit over real HTTP against a real embedded store: slots, timestamps and the hash
// chain (recomputed here), the assignment items, AO's routes and JSON shapes, paging, duplicates,
// concurrency, assignments, the Scheduler-Location record, bad input, restarts, and kill -9.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { test } from 'node:test';
import { MAX_ITEM_BYTES, openScheduler, startScheduler, type Message, type PaginatedMessages, type RunningScheduler, type Scheduler } from '../../src/ao/su.js';
import { createItem, parseItem, verifyItem, type Item, type Tag } from '../../src/store/items.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { generateWallet, walletAddress, walletSigner, writeWallet, type Wallet } from '../../src/store/wallet.js';
import { projectRoot, withTempDir } from '../helpers.js';

const MODULE = 'M'.repeat(43);
const PUBLIC_URL = 'http://su.test:9000';

const keys = (async () => ({ su: await generateWallet('ed25519'), client: await generateWallet('ed25519') }))();

interface Unit {
  store: Store;
  su: Scheduler;
  server: RunningScheduler;
  wallet: Wallet;
  close(): Promise<void>;
}

async function openUnit(dir: string, options: { now?: () => number; url?: string; bodyLimit?: number } = {}): Promise<Unit> {
  const { su: wallet } = await keys;
  const store = openSqliteStore(join(dir, 'store'));
  const su = openScheduler({ dir: join(dir, 'su'), store, wallet, url: options.url ?? PUBLIC_URL, now: options.now });
  const server = await startScheduler(su, { port: 0, bodyLimit: options.bodyLimit });
  return {
    store,
    su,
    server,
    wallet,
    async close() {
      await server.close();
      await su.close();
      await store.close();
    },
  };
}

interface Reply {
  status: number;
  type: string;
  body: any;
}

async function call(unit: Unit, method: string, path: string, body?: Uint8Array): Promise<Reply> {
  const res = await fetch(`${unit.server.url}${path}`, { method, body, headers: body ? { 'content-type': 'application/octet-stream' } : {} });
  const text = await res.text();
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: text ? JSON.parse(text) : undefined };
}

const get = (unit: Unit, path: string): Promise<Reply> => call(unit, 'GET', path);
const post = (unit: Unit, raw: Uint8Array, query = ''): Promise<Reply> => call(unit, 'POST', `/${query}`, raw);

let spawned = 0;

// Ed25519 signatures are deterministic: a Name tag keeps two spawns from being one item.
async function processItem(unit: Unit, tags: Tag[] = [{ name: 'Name', value: `p${spawned++}` }]): Promise<Item> {
  const signer = walletSigner((await keys).client);
  return createItem('process data', signer, {
    tags: [
      { name: 'Data-Protocol', value: 'ao' },
      { name: 'Type', value: 'Process' },
      { name: 'Module', value: MODULE },
      { name: 'Scheduler', value: unit.su.address },
      ...tags,
    ],
  });
}

async function messageItem(target: string, data: string, tags: Tag[] = [{ name: 'Type', value: 'Message' }]): Promise<Item> {
  const signer = walletSigner((await keys).client);
  return createItem(data, signer, { target, tags: [{ name: 'Data-Protocol', value: 'ao' }, ...tags] });
}

async function spawnProcess(unit: Unit): Promise<string> {
  const p = await processItem(unit);
  const r = await post(unit, p.raw);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.id, p.id);
  return p.id;
}

async function send(unit: Unit, pid: string, data: string): Promise<{ id: string; timestamp: number }> {
  const m = await messageItem(pid, data);
  const r = await post(unit, m.raw);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.id, m.id);
  assert.equal(typeof r.body.timestamp, 'number');
  return r.body;
}

const tag = (tags: Tag[], name: string): string | undefined => tags.find((t) => t.name === name)?.value;
const sha256 = (...parts: string[]): string => {
  const h = createHash('sha256');
  for (const p of parts) h.update(Buffer.from(p, 'base64url'));
  return h.digest('base64url');
};

/** Checks a whole log as a CU would: consecutive nonces from 0, rising timestamps, the hash chain, signed assignments. */
async function checkLog(unit: Unit, pid: string, nodes: Message[]): Promise<void> {
  let previous: { id: string; chain: string; timestamp: number } | null = null;
  for (const [i, node] of nodes.entries()) {
    const a = node.assignment;
    assert.equal(tag(a.tags, 'Nonce'), String(i), `slot ${i}`);
    assert.equal(tag(a.tags, 'Process'), pid);
    const chain: string = previous ? sha256(previous.id, previous.chain) : sha256(pid);
    assert.equal(tag(a.tags, 'Hash-Chain'), chain, `hash chain at slot ${i}`);
    const timestamp = Number(tag(a.tags, 'Timestamp'));
    if (previous) assert.ok(timestamp > previous.timestamp, `timestamp rises at slot ${i}`);
    const height = String(Math.max(0, Math.floor((timestamp - 1_700_000_000_000) / 120_000))).padStart(12, '0');
    assert.equal(tag(a.tags, 'Block-Height'), height);
    assert.equal(a.owner.address, unit.su.address);
    assert.equal(a.target, pid);
    const stored = await unit.store.get(a.id);
    assert.ok(stored, `assignment ${i} is in the store`);
    assert.equal((await verifyItem(stored.raw)).address, unit.su.address);
    assert.deepEqual(stored.tags, a.tags);
    previous = { id: a.id, chain, timestamp };
  }
}

async function allMessages(unit: Unit, pid: string): Promise<Message[]> {
  const nodes: Message[] = [];
  let from: string | undefined;
  for (;;) {
    const page = (await unit.su.messages(pid, { from, limit: 1000 }))!;
    nodes.push(...page.edges.map((e) => e.node));
    if (!page.page_info.has_next_page) return nodes;
    from = page.edges.at(-1)!.cursor;
  }
}

test('a process and its messages get slots 0, 1, 2…, rising timestamps, a hash chain and signed assignments', async () => {
  await withTempDir(async (dir) => {
    const unit = await openUnit(dir);
    try {
      const before = Date.now();
      const root = await get(unit, '/');
      assert.equal(root.status, 200);
      assert.equal(root.body.address, walletAddress(unit.wallet));
      assert.ok(typeof root.body.timestamp === 'number' && root.body.timestamp >= before);
      const ts = await get(unit, '/timestamp');
      assert.match(ts.body.timestamp, /^\d+$/);
      assert.match(ts.body.block_height, /^\d{12}$/);

      const pid = await spawnProcess(unit);
      const sent = [];
      for (let i = 0; i < 5; i++) sent.push(await send(unit, pid, `hello ${i}`));
      const page = await get(unit, `/${pid}?process-id=${pid}`);
      assert.equal(page.status, 200);
      assert.match(page.type, /application\/json/);
      const body = page.body as PaginatedMessages;
      assert.deepEqual(Object.keys(body).sort(), ['edges', 'page_info']);
      assert.equal(body.page_info.has_next_page, false);
      assert.equal(body.edges.length, 6);
      await checkLog(unit, pid, body.edges.map((e) => e.node));
      for (const [i, edge] of body.edges.entries()) {
        const { message, assignment } = edge.node;
        assert.deepEqual(Object.keys(edge.node).sort(), ['assignment', 'message']);
        assert.deepEqual(Object.keys(assignment).sort(), ['anchor', 'id', 'owner', 'signature', 'tags', 'target']);
        assert.equal(edge.cursor, tag(assignment.tags, 'Timestamp'));
        assert.ok(message);
        assert.deepEqual(Object.keys(message).sort(), ['anchor', 'data', 'id', 'owner', 'signature', 'tags', 'target']);
        assert.equal(message.id, i === 0 ? pid : sent[i - 1].id);
        assert.equal(message.data, i === 0 ? 'process data' : `hello ${i - 1}`);
        assert.equal(message.owner.address, walletAddress((await keys).client));
        assert.equal(message.owner.key, ((await keys).client.jwk as { x: string }).x);
        assert.equal(message.target, i === 0 ? null : pid);
        if (i > 0) assert.equal(Number(tag(assignment.tags, 'Timestamp')), sent[i - 1].timestamp);
        // Exactly AO's assignment tags, in AO's order.
        assert.deepEqual(
          assignment.tags.map((t) => t.name),
          ['Process', 'Epoch', 'Nonce', 'Hash-Chain', 'Block-Height', 'Timestamp', 'Data-Protocol', 'Type', 'Variant', 'Message'],
        );
        assert.deepEqual(
          [tag(assignment.tags, 'Epoch'), tag(assignment.tags, 'Data-Protocol'), tag(assignment.tags, 'Type'), tag(assignment.tags, 'Variant'), tag(assignment.tags, 'Message')],
          ['0', 'ao', 'Assignment', 'ao.TN.1', message.id],
        );
        assert.ok(await unit.store.has(message.id), 'the message is in the store too');
      }
    } finally {
      await unit.close();
    }
  });
});

test('paging: from exclusive, to inclusive, limit, nonces, cursors; single message, latest and process routes', async () => {
  await withTempDir(async (dir) => {
    let clock = 1_750_000_000_000;
    const unit = await openUnit(dir, { now: () => (clock += 1000) });
    try {
      const pid = await spawnProcess(unit);
      const sent = [];
      for (let i = 0; i < 9; i++) sent.push(await send(unit, pid, `m${i}`));
      const all = (await get(unit, `/${pid}`)).body as PaginatedMessages;
      assert.equal(all.edges.length, 10, 'process-id is optional');
      const ts = all.edges.map((e) => e.cursor);

      const nonces = (page: PaginatedMessages): number[] => page.edges.map((e) => Number(tag(e.node.assignment.tags, 'Nonce')));
      let page = (await get(unit, `/${pid}?process-id=${pid}&from=${ts[2]}&to=${ts[5]}`)).body as PaginatedMessages;
      assert.deepEqual(nonces(page), [3, 4, 5]);
      assert.equal(page.page_info.has_next_page, false);
      page = (await get(unit, `/${pid}?from=${ts[2]}&limit=3`)).body;
      assert.deepEqual(nonces(page), [3, 4, 5]);
      assert.equal(page.page_info.has_next_page, true);
      page = (await get(unit, `/${pid}?from=${ts[6]}&limit=3`)).body;
      assert.deepEqual(nonces(page), [7, 8, 9]);
      assert.equal(page.page_info.has_next_page, false, 'exactly the last ones: no next page');
      page = (await get(unit, `/${pid}?to=${ts[0]}`)).body;
      assert.deepEqual(nonces(page), [0], 'without from, the process itself is the first edge');
      page = (await get(unit, `/${pid}?from-nonce=4&to-nonce=6`)).body;
      assert.deepEqual(nonces(page), [5, 6]);
      assert.deepEqual(page.edges.map((e) => e.cursor), ['5', '6'], 'nonce cursors in nonce mode');
      assert.equal(((await get(unit, `/${pid}?limit=5000`)).body as PaginatedMessages).edges.length, 10, 'a large limit is capped, not refused');
      page = (await get(unit, `/${pid}?from-nonce=-1&limit=2`)).body;
      assert.deepEqual(nonces(page), [0, 1]);
      // The domain API takes numbers as well as strings.
      assert.deepEqual(nonces((await unit.su.messages(pid, { from: Number(ts[7]) }))!), [8, 9]);
      assert.deepEqual(nonces((await unit.su.messages(pid, { fromNonce: 7, toNonce: '8' }))!), [8]);

      // Walking the cursor with limit 2 visits each slot once.
      const walked: number[] = [];
      let from = '';
      for (let guard = 0; guard < 20; guard++) {
        page = (await get(unit, `/${pid}?limit=2${from ? `&from=${from}` : ''}`)).body;
        walked.push(...nonces(page));
        if (!page.page_info.has_next_page) break;
        from = page.edges.at(-1)!.cursor;
      }
      assert.deepEqual(walked, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);

      const one = await get(unit, `/${sent[3].id}?process-id=${pid}`);
      assert.equal(one.status, 200);
      assert.equal(one.body.message.id, sent[3].id);
      assert.equal(tag(one.body.assignment.tags, 'Nonce'), '4');
      assert.deepEqual((await get(unit, `/${sent[3].id}`)).body, one.body, 'found without process-id too');
      assert.deepEqual(await unit.su.message(sent[3].id, pid), one.body);

      const latest = await get(unit, `/${pid}/latest`);
      assert.equal(latest.status, 200);
      assert.equal(latest.body.message.id, sent[8].id);
      assert.equal(tag(latest.body.assignment.tags, 'Nonce'), '9');

      const proc = await get(unit, `/processes/${pid}`);
      assert.equal(proc.status, 200);
      assert.deepEqual(Object.keys(proc.body).sort(), ['anchor', 'block', 'data', 'owner', 'process_id', 'signature', 'tags', 'target', 'timestamp']);
      assert.equal(proc.body.process_id, pid);
      assert.equal(proc.body.timestamp, Number(ts[0]));
      assert.equal(proc.body.block, String(Math.floor((Number(ts[0]) - 1_700_000_000_000) / 120_000)).padStart(12, '0'));
      assert.equal(proc.body.data, 'process data');
      assert.equal(proc.body.owner.address, walletAddress((await keys).client));
      assert.equal(tag(proc.body.tags, 'Module'), MODULE);
      assert.equal(proc.body.target, null);
      assert.equal(proc.body.anchor, null);
      assert.deepEqual(await unit.su.process(pid), proc.body);

      const t = (await get(unit, `/timestamp?process-id=${pid}`)).body;
      assert.ok(Number(t.timestamp) >= Number(ts[9]), 'the timestamp is never behind the log');
    } finally {
      await unit.close();
    }
  });
});

test('timestamps never go back, even when the clock does', async () => {
  await withTempDir(async (dir) => {
    let clock = 1_760_000_000_000;
    const unit = await openUnit(dir, { now: () => clock });
    try {
      const pid = await spawnProcess(unit);
      const a = await send(unit, pid, 'a');
      const b = await send(unit, pid, 'b'); // same clock reading
      clock -= 60_000;
      const c = await send(unit, pid, 'c');
      clock += 120_000;
      const d = await send(unit, pid, 'd');
      assert.deepEqual([a.timestamp, b.timestamp, c.timestamp, d.timestamp], [1_760_000_000_001, 1_760_000_000_002, 1_760_000_000_003, 1_760_000_060_000]);
      await checkLog(unit, pid, await allMessages(unit, pid));
    } finally {
      await unit.close();
    }
  });
});

test('a message posted again keeps its slot, concurrent posts get distinct consecutive slots', async () => {
  await withTempDir(async (dir) => {
    const unit = await openUnit(dir);
    try {
      const pid = await spawnProcess(unit);
      const m = await messageItem(pid, 'once');
      const first = await post(unit, m.raw);
      const again = await Promise.all(Array.from({ length: 5 }, () => post(unit, m.raw)));
      for (const r of again) assert.deepEqual(r.body, first.body);
      const items = await Promise.all(Array.from({ length: 60 }, (_, i) => messageItem(pid, `burst ${i}`)));
      // Each item twice, all at once: 60 new slots, no more.
      const replies = await Promise.all([...items, ...items].map((item) => post(unit, item.raw)));
      for (const r of replies) assert.equal(r.status, 200, JSON.stringify(r.body));
      const nodes = await allMessages(unit, pid);
      assert.equal(nodes.length, 62);
      const ids = nodes.map((n) => n.message!.id);
      assert.equal(new Set(ids).size, 62);
      for (const item of items) assert.ok(ids.includes(item.id));
      assert.equal(ids.filter((id) => id === m.id).length, 1);
      await checkLog(unit, pid, nodes);
      // The Process item posted again is slot 0 again.
      const respawn = await post(unit, (await unit.store.get(pid))!.raw);
      assert.deepEqual(respawn.body, { timestamp: Number(tag(nodes[0].assignment.tags, 'Timestamp')), id: pid });
      const dup = await unit.su.post(m.raw);
      assert.equal(dup.duplicate, true);
      assert.equal(dup.nonce, 1);
    } finally {
      await unit.close();
    }
  });
});

test('assign puts a stored item on another log as an assignment only, once', async () => {
  await withTempDir(async (dir) => {
    const unit = await openUnit(dir);
    try {
      const a = await spawnProcess(unit);
      const b = await spawnProcess(unit);
      const sent = await send(unit, a, 'for a, and b too');
      const r = await post(unit, new Uint8Array(0), `?process-id=${b}&assign=${sent.id}&exclude=Data,Anchor`);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(Object.keys(r.body).sort(), ['id', 'timestamp']);
      const nodes = await allMessages(unit, b);
      assert.equal(nodes.length, 2);
      const node = nodes[1];
      assert.equal(node.message, null, 'as AO: an assignment has no message inline');
      assert.equal(node.assignment.id, r.body.id);
      assert.equal(tag(node.assignment.tags, 'Message'), sent.id);
      assert.equal(tag(node.assignment.tags, 'Exclude'), 'Data,Anchor');
      assert.equal(tag(node.assignment.tags, 'Timestamp'), String(r.body.timestamp));
      await checkLog(unit, b, nodes);
      const again = await post(unit, new Uint8Array(0), `?process-id=${b}&assign=${sent.id}`);
      assert.deepEqual(again.body, r.body, 'assigning again changes nothing');
      const viaApi = await unit.su.assign(b, sent.id);
      assert.equal(viaApi.assignment, r.body.id);
      assert.equal(viaApi.duplicate, true);
      assert.equal((await get(unit, `/${sent.id}?process-id=${b}`)).body.assignment.id, r.body.id);
      assert.equal((await get(unit, `/${sent.id}?process-id=${a}`)).body.message.id, sent.id);
      // An item that was only uploaded to the store (a module, say) can be assigned too.
      const loose = await messageItem(b, 'stored elsewhere', [{ name: 'Type', value: 'Note' }]);
      await unit.store.put(loose.raw);
      const r2 = await post(unit, new Uint8Array(0), `?process-id=${b}&assign=${loose.id}&base-layer`);
      assert.equal(r2.status, 200);
      assert.equal((await allMessages(unit, b)).length, 3);
    } finally {
      await unit.close();
    }
  });
});

test('the Scheduler-Location record is published once per URL', async () => {
  await withTempDir(async (dir) => {
    const records = async (unit: Unit) =>
      (await unit.store.query({ owners: [unit.su.address], tags: [{ name: 'Data-Protocol', values: ['ao'] }, { name: 'Type', values: ['Scheduler-Location'] }], first: 10 })).edges.map((e) => e.node);
    let unit = await openUnit(dir);
    let found = await records(unit);
    assert.equal(found.length, 1);
    assert.equal(tag(found[0].tags, 'Url'), PUBLIC_URL);
    assert.match(tag(found[0].tags, 'Time-To-Live') ?? '', /^\d+$/);
    assert.equal(found[0].address, walletAddress(unit.wallet));
    await unit.close();
    unit = await openUnit(dir);
    assert.equal((await records(unit)).length, 1, 'same URL: no new record');
    await unit.close();
    unit = await openUnit(dir, { url: 'http://elsewhere.test' });
    found = await records(unit);
    assert.equal(found.length, 2);
    assert.equal(tag(found[0].tags, 'Url'), 'http://elsewhere.test', 'the newest record comes first');
    await unit.close();
    unit = await openUnit(dir);
    assert.equal(tag((await records(unit))[0].tags, 'Url'), PUBLIC_URL, 'moving back makes the first URL current again');
    await unit.close();
  });
});

test('bad input gets a 4xx JSON error and changes nothing', async () => {
  await withTempDir(async (dir) => {
    const unit = await openUnit(dir);
    try {
      const pid = await spawnProcess(unit);
      const ok = await messageItem(pid, 'fine');
      const forged = Buffer.from(ok.raw);
      forged[forged.length - 1] ^= 1;
      const other = (await generateWallet('ed25519')) satisfies Wallet;
      const foreign = await createItem('x', walletSigner(other), {
        tags: [
          { name: 'Data-Protocol', value: 'ao' },
          { name: 'Type', value: 'Process' },
          { name: 'Module', value: MODULE },
          { name: 'Scheduler', value: walletAddress(other) },
        ],
      });
      const unknownProcess = 'U'.repeat(43);
      const cases: [string, () => Promise<Reply>, number][] = [
        ['empty body', () => post(unit, new Uint8Array(0)), 400],
        ['not a data item', () => post(unit, Buffer.from('hello, scheduler')), 400],
        ['forged data', () => post(unit, forged), 400],
        ['oversized body', () => post(unit, Buffer.alloc(16 * 1024 * 1024 + 1)), 413],
        ['no Type tag', async () => post(unit, (await messageItem(pid, 'x', [])).raw), 400],
        ['wrong Type', async () => post(unit, (await messageItem(pid, 'x', [{ name: 'Type', value: 'Module' }])).raw), 400],
        ['Message without target', async () => post(unit, (await createItem('x', walletSigner((await keys).client), { tags: [{ name: 'Type', value: 'Message' }] })).raw), 400],
        ['Message to an unknown process', async () => post(unit, (await messageItem(unknownProcess, 'x')).raw), 404],
        ['Process for another scheduler', () => post(unit, foreign.raw), 400],
        ['Process without Module', async () => post(unit, (await createItem('x', walletSigner((await keys).client), { tags: [{ name: 'Type', value: 'Process' }, { name: 'Scheduler', value: unit.su.address }] })).raw), 400],
        ['assign without process-id', () => post(unit, new Uint8Array(0), `?assign=${ok.id}`), 400],
        ['process-id without assign', () => post(unit, new Uint8Array(0), `?process-id=${pid}`), 400],
        ['assign a malformed id', () => post(unit, new Uint8Array(0), `?process-id=${pid}&assign=short`), 400],
        ['assign to an unknown process', () => post(unit, new Uint8Array(0), `?process-id=${unknownProcess}&assign=${pid}`), 404],
        ['assign an item not in the store', () => post(unit, new Uint8Array(0), `?process-id=${pid}&assign=${'Z'.repeat(43)}`), 404],
        ['assign with a bad exclude', () => post(unit, new Uint8Array(0), `?process-id=${pid}&assign=${pid}&exclude=Data,,x`), 400],
        ['assign twice in one query', () => post(unit, new Uint8Array(0), `?process-id=${pid}&assign=${pid}&assign=${pid}`), 400],
        ['limit not a number', () => get(unit, `/${pid}?limit=ten`), 400],
        ['limit 0', () => get(unit, `/${pid}?limit=0`), 400],
        ['fractional from', () => get(unit, `/${pid}?from=1.5`), 400],
        ['huge to', () => get(unit, `/${pid}?to=99999999999999999999`), 400],
        ['from with from-nonce', () => get(unit, `/${pid}?from=1&from-nonce=1`), 400],
        ['from twice', () => get(unit, `/${pid}?from=1&from=2`), 400],
        ['unknown id', () => get(unit, `/${unknownProcess}`), 404],
        ['malformed id', () => get(unit, '/not-an-id'), 400],
        ['message not in that log', () => get(unit, `/${pid}?process-id=${unknownProcess}`), 404],
        ['unknown process', () => get(unit, `/processes/${unknownProcess}`), 404],
        ['malformed process id', () => get(unit, '/processes/x'), 400],
        ['latest of an unknown process', () => get(unit, `/${unknownProcess}/latest`), 404],
        ['unknown route', () => call(unit, 'DELETE', `/${pid}`), 404],
        ['bad percent-encoding', () => get(unit, '/%E0%A4%A'), 400],
      ];
      for (const [name, run, status] of cases) {
        const r = await run();
        assert.equal(r.status, status, `${name}: ${JSON.stringify(r.body)}`);
        assert.match(r.type, /application\/json/, name);
        assert.equal(typeof r.body?.error, 'string', name);
        assert.ok(!r.body.error.includes('\n'), name);
      }
      const nodes = await allMessages(unit, pid);
      assert.equal(nodes.length, 1, 'nothing was scheduled');
      await assert.rejects(unit.su.post(forged), (e: Error & { status?: number }) => e.status === 400);
      await assert.rejects(unit.su.messages(pid, { limit: -1 }), (e: Error & { status?: number }) => e.status === 400);
    } finally {
      await unit.close();
    }
  });
});

test('the size is checked before anything else, the cheap checks before the signature, all before anything is stored', async () => {
  await withTempDir(async (dir) => {
    // A server that reads bodies past the item limit: the scheduler itself must still refuse them first.
    const unit = await openUnit(dir, { bodyLimit: MAX_ITEM_BYTES + 1024 * 1024 });
    try {
      const pid = await spawnProcess(unit);
      const huge = await messageItem(pid, 'x'.repeat(MAX_ITEM_BYTES));
      const forgedHuge = Buffer.from(huge.raw);
      forgedHuge[forgedHuge.length - 1] ^= 1;
      for (const [name, body] of [['a valid item', huge.raw], ['a forged item', forgedHuge], ['garbage', Buffer.alloc(MAX_ITEM_BYTES + 1, 0xab)]] as const) {
        const r = await post(unit, body);
        assert.equal(r.status, 413, `${name}: ${JSON.stringify(r.body)}`);
        assert.match(r.body.error, new RegExp(`at most ${MAX_ITEM_BYTES}`), name);
      }
      assert.equal(await unit.store.has(huge.id), false);
      // A forged item is refused for what its header says before its signature is looked at.
      const forge = (item: Item): Buffer => {
        const raw = Buffer.from(item.raw);
        raw[raw.length - 1] ^= 1;
        return raw;
      };
      const toNowhere = await messageItem('U'.repeat(43), 'x');
      assert.equal((await post(unit, forge(toNowhere))).status, 404);
      const other = await generateWallet('ed25519');
      const elsewhere = await createItem('x', walletSigner(other), {
        tags: [{ name: 'Type', value: 'Process' }, { name: 'Module', value: MODULE }, { name: 'Scheduler', value: walletAddress(other) }],
      });
      assert.match((await post(unit, forge(elsewhere))).body.error, /Scheduler tag/);
      // What passes those is verified before the log or the store sees it.
      const fine = await messageItem(pid, 'fine');
      const forged = await post(unit, forge(fine));
      assert.equal(forged.status, 400);
      assert.match(forged.body.error, /bad signature/);
      assert.equal(await unit.store.has(fine.id), false);
      assert.equal((await allMessages(unit, pid)).length, 1);
      assert.equal((await post(unit, fine.raw)).status, 200);
    } finally {
      await unit.close();
    }
  });
});

test('a restart continues the nonces, timestamps and hash chain', async () => {
  await withTempDir(async (dir) => {
    let clock = 1_770_000_000_000;
    let unit = await openUnit(dir, { now: () => clock });
    const pid = await spawnProcess(unit);
    for (let i = 0; i < 3; i++) await send(unit, pid, `before ${i}`);
    const last = (await unit.su.latest(pid))!;
    await unit.close();
    clock -= 3_600_000; // the machine's clock went back an hour while it was down
    unit = await openUnit(dir, { now: () => clock });
    try {
      assert.deepEqual(await unit.su.latest(pid), last);
      const next = await send(unit, pid, 'after');
      assert.equal(next.timestamp, Number(tag(last.assignment.tags, 'Timestamp')) + 1);
      const dup = await unit.su.post((await unit.store.get(pid))!.raw);
      assert.equal(dup.duplicate, true);
      const nodes = await allMessages(unit, pid);
      assert.equal(nodes.length, 5);
      await checkLog(unit, pid, nodes);
      await assert.rejects((async () => {
        await unit.su.close();
        return unit.su.messages(pid);
      })(), (e: Error & { status?: number }) => e.status === 503);
    } finally {
      await unit.close();
    }
  });
});

/** A store whose next `n` puts of items of type `type` fail as a full disk would (`fail(n)`). */
function failingStore(inner: Store, type: string): { store: Store; fail(n: number): void } {
  let failures = 0;
  const store: Store = {
    ...inner,
    async put(raw) {
      if (failures > 0 && tag(parseItem(Buffer.from(raw)).tags, 'Type') === type) {
        failures--;
        throw new Error('disk full');
      }
      return inner.put(raw);
    },
  };
  return { store, fail: (n) => void (failures = n) };
}

test('an assignment the store failed to take is published before its slot or any later one is acknowledged', async () => {
  await withTempDir(async (dir) => {
    const { su: wallet } = await keys;
    const inner = openSqliteStore(join(dir, 'store'));
    const { store, fail } = failingStore(inner, 'Assignment');
    let su = openScheduler({ dir: join(dir, 'su'), store, wallet, url: PUBLIC_URL });
    const server = await startScheduler(su, { port: 0 });
    const unit: Unit = { store, su, server, wallet, close: async () => undefined };
    const pid = await spawnProcess(unit);
    const [m1, m2, m3, m4] = await Promise.all(['one', 'two', 'three', 'four'].map((d) => messageItem(pid, d)));
    fail(1);
    const failed = await post(unit, m1.raw);
    assert.equal(failed.status, 500);
    assert.deepEqual(failed.body, { error: 'internal error' });
    const slot1 = (await su.message(m1.id, pid))!.assignment.id;
    assert.equal(await store.has(slot1), false, 'committed, not yet published');
    assert.deepEqual((await su.messages(pid))!.edges.map((e) => e.node.message?.id), [pid], 'and not in the log a CU reads until it is');
    const retry = await su.post(m1.raw);
    assert.equal(retry.duplicate, true);
    assert.equal(retry.assignment, slot1, 'the retry gets the committed slot, not a new one');
    assert.equal(await store.has(slot1), true, 'and is answered only once it is published');
    fail(1);
    await assert.rejects(su.post(m2.raw), /disk full/);
    const slot2 = (await su.message(m2.id, pid))!.assignment.id;
    await su.post(m3.raw);
    assert.equal(await store.has(slot2), true, 'the next slot publishes the one before it first');
    fail(1);
    await assert.rejects(su.post(m4.raw), /disk full/);
    const slot4 = (await su.message(m4.id, pid))!.assignment.id;
    await server.close();
    await su.close();
    su = openScheduler({ dir: join(dir, 'su'), store: inner, wallet, url: PUBLIC_URL });
    await su.ready;
    assert.equal(await inner.has(slot4), true, 'reopening publishes it');
    await checkLog({ ...unit, su, store: inner }, pid, (await su.messages(pid))!.edges.map((e) => e.node));
    await su.close();
    await inner.close();
  });
});

test('kill -9 during a burst of 1,000 posts loses no acknowledged message and breaks no chain', { timeout: 60_000 }, async () => {
  await withTempDir(async (dir) => {
    const walletPath = join(dir, 'su-wallet.json');
    writeWallet(walletPath, (await keys).su);
    const child = spawn(process.execPath, [join(projectRoot, 'dist', 'tests', 'ao', 'fixtures', 'su-burst.js'), dir, walletPath, '1000'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines: string[] = [];
    let buffer = '';
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (chunk: Buffer) => {
        buffer += chunk.toString();
        const parts = buffer.split('\n');
        buffer = parts.pop()!;
        lines.push(...parts);
        if (lines.length > 250 && !child.killed) child.kill('SIGKILL');
      });
      child.on('exit', () => resolve());
    });
    assert.match(lines[0], /^process [A-Za-z0-9_-]{43}$/);
    const pid = lines[0].slice('process '.length);
    const acknowledged = lines.slice(1);
    assert.ok(acknowledged.length >= 250 && acknowledged.length < 1000, `killed mid-burst after ${acknowledged.length}`);
    const unit = await openUnit(dir);
    try {
      const nodes = await allMessages(unit, pid);
      const ids = nodes.map((n) => n.message?.id);
      assert.equal(ids[0], pid);
      assert.equal(new Set(ids).size, ids.length, 'no message twice');
      const inLog = new Set(ids);
      for (const id of acknowledged) assert.ok(inLog.has(id), `acknowledged message ${id} is in the log`);
      assert.ok(nodes.length - 1 - acknowledged.length <= 4, 'at most the in-flight posts beyond those acknowledged');
      await checkLog(unit, pid, nodes);
      const next = await send(unit, pid, 'after the crash');
      assert.equal((await unit.su.message(next.id, pid))!.assignment.tags.find((t) => t.name === 'Nonce')!.value, String(nodes.length));
    } finally {
      await unit.close();
    }
  });
});

test('group commit: posts that arrive together share one transaction, each answered once durable, slots consecutive per process', async () => {
  await withTempDir(async (dir) => {
    const unit = await openUnit(dir);
    try {
      const pids = [await spawnProcess(unit), await spawnProcess(unit), await spawnProcess(unit)];
      const items = await Promise.all(Array.from({ length: 90 }, (_, i) => messageItem(pids[i % 3], `together ${i}`)));
      const before = unit.su.stats();
      // All at once, each twice: 90 new slots, in few commits.
      const slots = await Promise.all([...items, ...items].map((item) => unit.su.post(item.raw)));
      const after = unit.su.stats();
      assert.equal(after.slots - before.slots, 90);
      assert.ok(after.commits - before.commits <= 10, `${after.commits - before.commits} commits for 90 slots made together`);
      for (const [i, item] of items.entries()) {
        assert.equal(slots[i].message, item.id);
        assert.equal(slots[i + 90].nonce, slots[i].nonce, 'the second post of an item gets the slot of the first');
        assert.ok(await unit.store.has(slots[i].assignment), 'answered only once its assignment is stored');
      }
      for (const pid of pids) {
        const nodes = await allMessages(unit, pid);
        assert.equal(nodes.length, 31);
        await checkLog(unit, pid, nodes);
        // Per process, the order of the requests is the order of the slots.
        const sent = items.filter((_, i) => pids[i % 3] === pid).map((m) => m.id);
        assert.deepEqual(nodes.slice(1).map((n) => n.message!.id), sent);
      }
    } finally {
      await unit.close();
    }
  });
  // A restart resumes every chain where the group commits left it.
  await withTempDir(async (dir) => {
    let unit = await openUnit(dir);
    const pid = await spawnProcess(unit);
    await Promise.all(Array.from({ length: 20 }, async (_, i) => unit.su.post((await messageItem(pid, `before ${i}`)).raw)));
    await unit.close();
    unit = await openUnit(dir);
    try {
      await Promise.all(Array.from({ length: 20 }, async (_, i) => unit.su.post((await messageItem(pid, `after ${i}`)).raw)));
      const nodes = await allMessages(unit, pid);
      assert.equal(nodes.length, 41);
      await checkLog(unit, pid, nodes);
    } finally {
      await unit.close();
    }
  });
});

test('a message whose assignment was stored but not itself (a failure between the two) is stored before its slot shows, on retry and on reopening', async () => {
  await withTempDir(async (dir) => {
    const { su: wallet } = await keys;
    const inner = openSqliteStore(join(dir, 'store'));
    const { store, fail } = failingStore(inner, 'Message');
    let su = openScheduler({ dir: join(dir, 'su'), store, wallet, url: PUBLIC_URL });
    const server = await startScheduler(su, { port: 0 });
    const unit: Unit = { store, su, server, wallet, close: async () => undefined };
    const pid = await spawnProcess(unit);
    const [m1, m2] = await Promise.all(['one', 'two'].map((d) => messageItem(pid, d)));
    fail(1);
    await assert.rejects(su.post(m1.raw), /disk full/);
    const slot1 = (await su.message(m1.id, pid))!.assignment.id;
    assert.equal(await inner.has(slot1), true, 'the assignment went in');
    assert.equal(await inner.has(m1.id), false, 'the message did not');
    assert.deepEqual((await su.messages(pid))!.edges.map((e) => e.node.message?.id), [pid], 'so the slot is not in the log a CU reads');
    const retry = await su.post(m1.raw);
    assert.equal(retry.assignment, slot1, 'a retry gets the committed slot');
    assert.equal(await inner.has(m1.id), true, 'and is answered once the message is stored');
    fail(1);
    await assert.rejects(su.post(m2.raw), /disk full/);
    await server.close();
    await su.close();
    su = openScheduler({ dir: join(dir, 'su'), store: inner, wallet, url: PUBLIC_URL });
    await su.ready;
    assert.equal(await inner.has(m2.id), true, 'reopening stores it');
    const nodes = (await su.messages(pid))!.edges.map((e) => e.node);
    assert.deepEqual(nodes.map((n) => n.message?.id), [pid, m1.id, m2.id]);
    await checkLog({ ...unit, su, store: inner }, pid, nodes);
    await su.close();
    await inner.close();
  });
});
