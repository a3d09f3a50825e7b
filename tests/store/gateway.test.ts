// The gateway over real HTTP against a real embedded store: uploads, raw bytes and data, the GraphQL
// queries aoconnect and the CU send, filters and paging both ways; then fuzzed uploads, GraphQL
// bodies and paths, which must never get a 5xx or a dropped connection, nor disturb stored items.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { startGateway, type RunningGateway } from '../../src/store/gateway.js';
import { createItem, type Item } from '../../src/store/items.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { generateWallet, ownerKey, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';

interface Response {
  status: number;
  type: string;
  body: Buffer;
}

let dir: string;
let store: Store;
let gateway: RunningGateway;
let small: RunningGateway;
let alice: Wallet;
let bob: Wallet;
let carol: Wallet;
let messages: Item[];
let module: Item;
let odd: Item;
/** Every item the store holds, in upload order. */
const stored: Item[] = [];
const uploads: { path: string; status: number; body: unknown }[] = [];

const agent = new Agent({ keepAlive: true });

/** One HTTP request with the path sent as written (no URL normalisation); rejects if the connection drops. */
function call(base: RunningGateway, method: string, path: string, body?: Uint8Array | string, headers: Record<string, string> = {}): Promise<Response> {
  const { hostname, port } = new URL(base.url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ hostname, port, path, method, headers, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] ?? '', body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const get = (path: string): Promise<Response> => call(gateway, 'GET', path);
const post = (path: string, body: Uint8Array | string, type = 'application/octet-stream'): Promise<Response> => call(gateway, 'POST', path, body, { 'content-type': type });
const json = (r: Response): any => JSON.parse(r.body.toString('utf8'));

async function gql(query: string, variables?: Record<string, unknown>): Promise<any> {
  const r = await post('/graphql', JSON.stringify({ query, variables }), 'application/json');
  assert.equal(r.status, 200, r.body.toString());
  return json(r);
}

async function ids(args: string, variables?: Record<string, unknown>): Promise<string[]> {
  const types: Record<string, string> = { i: '[ID!]', o: '[String!]', r: '[String!]', t: '[TagFilter!]' };
  const vars = variables ? `(${Object.keys(variables).map((k) => `$${k}: ${types[k]}`).join(', ')})` : '';
  const res = await gql(`query${vars} { transactions(${args}, first: 100) { edges { node { id } } } }`, variables);
  assert.equal(res.errors, undefined, JSON.stringify(res.errors));
  return res.data.transactions.edges.map((e: any) => e.node.id);
}

const idsOf = (items: Item[]): string[] => items.map((i) => i.id);
const newestFirst = (items: Item[]): string[] => idsOf(items).reverse();

/** Checks the error shape every failure must have. */
function assertError(r: Response, status: number, code?: string): void {
  assert.equal(r.status, status, r.body.toString());
  assert.match(r.type, /^application\/json/);
  const body = json(r);
  assert.equal(typeof body.error, 'string');
  assert.equal(typeof body.message, 'string');
  assert.ok(!body.message.includes('\n'));
  if (code) assert.equal(body.error, code);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'verity-gateway-'));
  store = openSqliteStore(dir);
  gateway = await startGateway(store, { port: 0 });
  small = await startGateway(store, { port: 0, bodyLimit: 2048 });
  [alice, bob, carol] = [await generateWallet('ed25519'), await generateWallet('ed25519'), await generateWallet('arweave')];
  messages = [];
  for (let i = 0; i < 6; i++) {
    const tags = [
      { name: 'Data-Protocol', value: 'ao' },
      { name: 'Type', value: 'Message' },
      { name: 'Index', value: String(i) },
      { name: 'Kind', value: i % 2 ? 'odd' : 'even' },
      { name: 'Content-Type', value: 'text/plain; charset=utf-8' },
    ];
    // The first three are for bob; only the first has an anchor.
    const options = { tags, ...(i < 3 ? { target: walletAddress(bob) } : {}), ...(i === 0 ? { anchor: 'a'.repeat(32) } : {}) };
    messages.push(await createItem(`message ${i}`, walletSigner(alice), options));
  }
  const moduleTags = [
    { name: 'Data-Protocol', value: 'ao' },
    { name: 'Type', value: 'Module' },
    { name: 'Module-Format', value: 'wasm64-unknown-emscripten-draft_2024_02_15' },
    { name: 'Input-Encoding', value: 'JSON-1' },
    { name: 'Output-Encoding', value: 'JSON-1' },
    { name: 'Content-Type', value: 'application/wasm' },
  ];
  module = await createItem(Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 7) & 255)), walletSigner(carol), { tags: moduleTags });
  // A Content-Type no header can carry: it must be served as octet-stream, not break the reply.
  odd = await createItem(Buffer.from([0, 1, 2, 255]), walletSigner(bob), { tags: [{ name: 'Content-Type', value: 'text/html\r\nX-Evil: 1' }] });
  for (const [i, item] of [...messages, module, odd].entries()) {
    const path = i % 2 ? '/' : '/tx';
    const r = await post(path, item.raw);
    uploads.push({ path, status: r.status, body: json(r) });
    stored.push(item);
  }
});

after(async () => {
  await small?.close();
  await gateway?.close();
  await store?.close();
  agent.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('uploads to /tx and / are stored and served byte for byte', async () => {
  assert.deepEqual(
    uploads.map((u) => u.status),
    stored.map(() => 200),
  );
  assert.deepEqual(
    uploads.map((u) => u.body),
    stored.map((i) => ({ id: i.id, duplicate: false })),
  );
  for (const item of stored) {
    const raw = await get(`/raw/${item.id}`);
    assert.equal(raw.status, 200);
    assert.equal(raw.type, 'application/octet-stream');
    assert.deepEqual(raw.body, item.raw);
    for (const path of [`/${item.id}`, `/tx/${item.id}/data`]) {
      const data = await get(path);
      assert.equal(data.status, 200);
      assert.deepEqual(data.body, item.data);
    }
  }
  assert.equal((await get(`/${messages[0].id}`)).type, 'text/plain; charset=utf-8');
  assert.equal((await get(`/${module.id}`)).type, 'application/wasm');
  const bad = await get(`/${odd.id}`);
  assert.equal(bad.type, 'application/octet-stream');
  assert.deepEqual(bad.body, Buffer.from([0, 1, 2, 255]));
});

test('a duplicate upload changes nothing', async () => {
  for (const path of ['/tx', '/']) {
    const r = await post(path, module.raw);
    assert.equal(r.status, 200);
    assert.deepEqual(json(r), { id: module.id, duplicate: true });
  }
  assert.deepEqual(await ids('owners: $o', { o: [walletAddress(carol)] }), [module.id]);
});

test('unknown ids are 404, malformed ids 400, bad uploads and bodies 4xx, all JSON', async () => {
  const unknown = 'A'.repeat(43);
  for (const path of [`/raw/${unknown}`, `/${unknown}`, `/tx/${unknown}/data`]) assertError(await get(path), 404, 'not-found');
  for (const path of ['/raw/short', '/raw/' + 'A'.repeat(44), '/not-an-id', `/tx/${'A'.repeat(42)}!/data`]) assertError(await get(path), 400, 'bad-id');
  assertError(await get('/raw/%zz'), 400);
  assertError(await call(gateway, 'DELETE', '/tx'), 404, 'not-found');
  assertError(await post('/tx', ''), 400, 'bad-item');
  assertError(await post('/tx', module.raw.subarray(0, 600)), 400, 'bad-item');
  // arbundles' Avro reader loops forever on a huge tag count with a negative length: refused up front.
  const looping = Buffer.from(messages[1].raw);
  looping.set([0xfe, 0xff, 0xff, 0x0f, 0x01, 0x00], tagCountsAt(messages[1]) + 16);
  assertError(await post('/tx', looping), 400, 'bad-item');
  const forged = Buffer.from(messages[1].raw);
  forged[forged.length - 1] ^= 1;
  assertError(await post('/tx', forged), 400, 'bad-item');
  assertError(await call(small, 'POST', '/tx', Buffer.alloc(4096), { 'content-type': 'application/octet-stream' }), 413, 'too-large');
  assertError(await call(small, 'POST', '/graphql', JSON.stringify({ query: `{ ${' '.repeat(4096)} }` }), { 'content-type': 'application/json' }), 413, 'too-large');
  assertError(await post('/graphql', '{"query":', 'application/json'), 400, 'bad-json');
  assertError(await post('/graphql', '{"variables":{}}', 'application/json'), 400, 'bad-request');
  assertError(await post('/graphql', '[1]', 'application/json'), 400, 'bad-request');
  const info = json(await get('/info'));
  assert.equal(info.network, 'verity.local');
  assert.deepEqual(json(await get('/')), info);
});

test('GraphQL filters: ids, owners, recipients, tags (AND across filters, OR across values)', async () => {
  assert.deepEqual(await ids('ids: $i', { i: [messages[0].id, odd.id, 'A'.repeat(43)] }), [odd.id, messages[0].id]);
  assert.deepEqual(await ids('owners: $o', { o: [walletAddress(alice)] }), newestFirst(messages));
  assert.deepEqual(await ids('owners: $o', { o: [walletAddress(bob), walletAddress(carol)] }), [odd.id, module.id]);
  assert.deepEqual(await ids('recipients: $r', { r: [walletAddress(bob)] }), newestFirst(messages.slice(0, 3)));
  const t = (filters: [string, string[]][]) => ({ t: filters.map(([name, values]) => ({ name, values })) });
  assert.deepEqual(await ids('tags: $t', t([['Kind', ['odd']]])), newestFirst([messages[1], messages[3], messages[5]]));
  assert.deepEqual(await ids('tags: $t', t([['Kind', ['odd']], ['Index', ['1', '2', '3']]])), newestFirst([messages[1], messages[3]]));
  assert.deepEqual(await ids('tags: $t', t([['Data-Protocol', ['ao']], ['Type', ['Message', 'Module']]])), newestFirst([...messages, module]));
  assert.deepEqual(await ids('tags: $t', t([['Type', ['Process']]])), []);
  // Filters of different kinds combine with AND too.
  assert.deepEqual(await ids('recipients: $r, tags: $t', { r: [walletAddress(bob)], ...t([['Kind', ['even']]]) }), newestFirst([messages[0], messages[2]]));
  const literal = await gql(`{ transactions(owners: ["${walletAddress(alice)}"], tags: [{ name: "Index", values: ["4"] }]) { edges { node { id recipient } } } }`);
  assert.deepEqual(literal.data.transactions.edges, [{ node: { id: messages[4].id, recipient: '' } }]);
});

test('GraphQL paging with first and after, both sort orders', async () => {
  for (const sort of ['HEIGHT_ASC', 'HEIGHT_DESC']) {
    const seen: string[] = [];
    let after: string | null = null;
    let pages = 0;
    for (;;) {
      const res = await gql(
        'query($o: [String!], $after: String, $sort: SortOrder) { transactions(owners: $o, first: 4, after: $after, sort: $sort) { pageInfo { hasNextPage } edges { cursor node { id } } } }',
        { o: [walletAddress(alice)], after, sort },
      );
      const { pageInfo, edges } = res.data.transactions;
      seen.push(...edges.map((e: any) => e.node.id));
      pages++;
      if (!pageInfo.hasNextPage) break;
      after = edges[edges.length - 1].cursor;
    }
    assert.equal(pages, 2);
    assert.deepEqual(seen, sort === 'HEIGHT_ASC' ? idsOf(messages) : newestFirst(messages));
  }
  // The default order is newest first; pages past the end are empty.
  const all = await gql('{ transactions(first: 100) { pageInfo { hasNextPage } edges { cursor node { id } } } }');
  assert.deepEqual(all.data.transactions.edges.map((e: any) => e.node.id), newestFirst(stored));
  const last = all.data.transactions.edges.at(-1).cursor;
  assert.deepEqual((await gql(`{ transactions(after: "${last}") { pageInfo { hasNextPage } edges { cursor } } }`)).data, { transactions: { pageInfo: { hasNextPage: false }, edges: [] } });
  // An oversized page is clamped, as gateways do.
  assert.equal((await gql('{ transactions(first: 1000) { edges { cursor } } }')).data.transactions.edges.length, stored.length);
});

test('the exact query aoconnect sends to check a module', async () => {
  const res = await gql(
    'query GetTransactions($transactionIds:[ID!]!){ transactions(ids:$transactionIds){ edges{ node{ owner{address} tags{name value} block{id height timestamp} } } } }',
    { transactionIds: [module.id] },
  );
  assert.deepEqual(res, { data: { transactions: { edges: [{ node: { owner: { address: walletAddress(carol) }, tags: module.tags, block: null } }] } } });
});

test('the query the CU sends to load messages and modules', async () => {
  const query = `query { transactions(ids: ["${messages[0].id}", "${module.id}"]) { edges { node { id signature anchor owner { address key } tags { name value } recipient } } } }`;
  const res = await gql(query);
  assert.deepEqual(res.data.transactions.edges, [
    { node: { id: module.id, signature: module.signature, anchor: null, owner: { address: walletAddress(carol), key: ownerKey(carol).toString('base64url') }, tags: module.tags, recipient: '' } },
    { node: { id: messages[0].id, signature: messages[0].signature, anchor: 'a'.repeat(32), owner: { address: walletAddress(alice), key: ownerKey(alice).toString('base64url') }, tags: messages[0].tags, recipient: walletAddress(bob) } },
  ]);
  // The CU builds its query with @skip; graphql-js applies it.
  const skipped = await gql('query($s: Boolean!, $i: [ID!]) { transactions(ids: $i) { edges { node { id anchor @skip(if: $s) } } } }', { s: true, i: [module.id] });
  assert.deepEqual(skipped.data.transactions.edges, [{ node: { id: module.id } }]);
});

test('transaction(id) and the remaining Transaction fields', async () => {
  const res = await gql(`{ transaction(id: "${messages[2].id}") { id recipient fee { winston ar } quantity { winston } data { size type } block { id } parent { id } bundledIn { id } } }`);
  assert.deepEqual(res.data.transaction, {
    id: messages[2].id,
    recipient: walletAddress(bob),
    fee: { winston: '0', ar: '0.000000000000' },
    quantity: { winston: '0' },
    data: { size: String(messages[2].data.length), type: 'text/plain; charset=utf-8' },
    block: null,
    parent: null,
    bundledIn: null,
  });
  assert.deepEqual((await gql(`{ transaction(id: "${'B'.repeat(43)}") { id } }`)).data, { transaction: null });
});

test('bad GraphQL gets errors, not exceptions: unknown fields, store refusals, oversized documents', async () => {
  const unknown = await gql('{ transactions { edges { node { id secret } } } }');
  assert.equal(unknown.data, undefined);
  assert.match(unknown.errors[0].message, /Cannot query field "secret"/);
  assert.match((await gql('{ transactions(block: { min: 1 }) { edges { cursor } } }')).errors[0].message, /Unknown argument "block"/);
  const refused = await gql('{ transactions(first: 0) { edges { cursor } } }');
  assert.equal(refused.data, null);
  assert.match(refused.errors[0].message, /first must be/);
  assert.match((await gql('{ transactions(after: "nonsense") { edges { cursor } } }')).errors[0].message, /bad cursor/);
  assert.match((await gql('query($i: [ID!]) { transactions(ids: $i) { edges { cursor } } }', { i: ['x', {}] })).errors[0].message, /invalid value/);
  assert.match((await gql('{ transactions { edges { cursor } }')).errors[0].message, /Syntax Error/);
  let deep = 'id';
  for (let i = 0; i < 20; i++) deep = `node { ${deep} }`;
  assert.match((await gql(`{ transactions { edges { ${deep} } } }`)).errors[0].message, /deeper/);
  assert.match((await gql(`{ transactions { edges { node { ${'id '.repeat(2500)} } } } }`)).errors[0].message, /more than 2000 fields/);
  const many = `{ ${Array.from({ length: 17 }, (_, i) => `a${i}: transactions { edges { cursor } }`).join(' ')} }`;
  assert.match((await gql(many)).errors[0].message, /more than 16 root fields/);
  assert.match((await gql(`{ transactions(ids: [${'"x" '.repeat(4500)}]) { edges { cursor } } }`)).errors[0].message, /tokens/);
  const fragments = Array.from({ length: 20 }, (_, i) => `fragment F${i} on TransactionConnection { ...F${i + 1} ...F${i + 1} }`).join(' ');
  const bomb = `{ transactions { ...F0 } } ${fragments} fragment F20 on TransactionConnection { pageInfo { hasNextPage } }`;
  assert.match((await gql(bomb)).errors[0].message, /more than 2000 fields/);
  const values = Array.from({ length: 10_001 }, (_, i) => String(i));
  assert.match((await gql('query($t: [TagFilter!]) { transactions(tags: $t) { edges { cursor } } }', { t: [{ name: 'Index', values }] })).errors[0].message, /at most 10000/);
  assert.match((await gql('{ transactions(owners: []) { edges { cursor } } }' + ' '.repeat(100_001))).errors[0].message, /characters/);
});

// Mutations of valid items: each keeps the item's length roughly but breaks a field or the signature.
type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'splice'; at: number; bytes: Uint8Array }
  | { kind: 'random'; bytes: Uint8Array }
  | { kind: 'length'; field: 0 | 8; value: bigint }
  | { kind: 'sigtype'; value: number }
  | { kind: 'tags'; at: number; bytes: Uint8Array };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('splice' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
  fc.record({ kind: fc.constant('random' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 2000 }) }),
  fc.record({ kind: fc.constant('length' as const), field: fc.constantFrom(0 as const, 8 as const), value: fc.oneof(fc.bigInt({ min: 0n, max: 5000n }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })) }),
  fc.record({ kind: fc.constant('sigtype' as const), value: fc.integer({ min: 0, max: 65535 }) }),
  // Varint-looking bytes over the Avro tag block: negative lengths and huge counts live here.
  fc.record({ kind: fc.constant('tags' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 6 }).map((b) => b.map((x, i) => (i < b.length - 1 ? x | 0x80 : x & 0x7f))) }),
);

/** Where the tag count and tag byte length sit in an item. */
function tagCountsAt(item: Item): number {
  const [sig, owner] = item.signatureType === 1 ? [512, 512] : [64, 32];
  return 2 + sig + owner + (item.target ? 33 : 1) + (item.anchor ? 33 : 1);
}

function mutate(item: Item, m: Mutation): Buffer {
  const raw = Buffer.from(item.raw);
  switch (m.kind) {
    case 'flip':
      raw[m.at % raw.length] ^= 1 << m.bit;
      return raw;
    case 'truncate':
      return raw.subarray(0, m.at % raw.length);
    case 'splice':
      return Buffer.concat([raw.subarray(0, m.at % raw.length), m.bytes, raw.subarray(m.at % raw.length)]);
    case 'random':
      return Buffer.from(m.bytes);
    case 'length':
      raw.writeBigUInt64LE(m.value, tagCountsAt(item) + m.field);
      return raw;
    case 'sigtype':
      raw.writeUInt16LE(m.value, 0);
      return raw;
    case 'tags': {
      const start = tagCountsAt(item) + 16;
      const size = Number(raw.readBigUInt64LE(start - 8));
      const offset = start + (m.at % Math.max(size, 1));
      raw.set(m.bytes.subarray(0, raw.length - offset), offset);
      return raw;
    }
  }
}

/** A 2xx or 4xx JSON answer with the shape its status promises. */
function assertSane(r: Response): void {
  assert.ok(r.status >= 200 && r.status < 500, `status ${r.status}: ${r.body.toString().slice(0, 200)}`);
  if (r.status >= 400) assertError(r, r.status);
}

test('fuzz: mutated items posted to /tx and / get 200 or 400 JSON', async (t) => {
  // arweave-js warns on every failed RSA verification; forged RSA items are the point here.
  const warn = console.warn;
  t.after(() => {
    console.warn = warn;
  });
  console.warn = (...args: unknown[]) => {
    if (!String(args[0]).startsWith('Transaction Verification Failed')) warn(...args);
  };
  const types = fc.constantFrom('application/octet-stream', 'application/json', 'text/plain', 'multipart/form-data; boundary=x', 'application/x-www-form-urlencoded');
  await fc.assert(
    fc.asyncProperty(fc.nat(), mutationArb, fc.constantFrom('/tx', '/'), types, async (which, m, path, type) => {
      const item = stored[which % stored.length];
      const r = await post(path, mutate(item, m), type);
      assertSane(r);
      assert.match(r.type, /^application\/json/);
      if (r.status === 200) {
        const { id, duplicate } = json(r);
        assert.equal(typeof id, 'string');
        assert.equal(typeof duplicate, 'boolean');
      } else {
        assert.equal(r.status, 400);
      }
    }),
    { numRuns: 300 },
  );
});

test('fuzz: garbage GraphQL bodies get 200 (data or errors) or 400 JSON', async () => {
  const token = fc.constantFrom(
    '{', '}', '(', ')', '[', ']', ':', '!', '$v', '...', '=', '@skip(if: true)', 'query', 'fragment', 'on', 'Transaction', 'TransactionConnection',
    'transactions', 'transaction', 'edges', 'node', 'cursor', 'id', 'ids', 'owners', 'recipients', 'tags', 'name', 'value', 'values', 'first',
    'after', 'sort', 'HEIGHT_ASC', '100', '-1', '2147483648', '"x"', '""', 'null', 'true', 'owner', 'address', 'key', 'block', 'pageInfo',
    'hasNextPage', '__typename', '__schema', 'types', 'ID', 'String', 'Int', '#',
  );
  const text = fc.array(token, { maxLength: 60 }).map((t) => t.join(' '));
  const templates = [
    'query($v: [ID!]) { transactions(ids: $v) { edges { node { id } } } }',
    'query($v: Int) { transactions(first: $v) { edges { cursor } } }',
    'query($v: String) { transactions(after: $v) { edges { cursor } } }',
    'query($v: [TagFilter!]) { transactions(tags: $v) { edges { node { tags { name value } } } } }',
    'query($v: SortOrder) { transactions(sort: $v) { edges { cursor } } }',
    'query($v: ID!) { transaction(id: $v) { id } }',
  ];
  const body = fc.oneof(
    text.map((query) => JSON.stringify({ query })),
    fc.record({ query: fc.constantFrom(...templates), variables: fc.record({ v: fc.jsonValue() }) }).map((b) => JSON.stringify(b)),
    fc.record({ query: fc.oneof(text, fc.jsonValue()), variables: fc.jsonValue(), operationName: fc.jsonValue() }, { requiredKeys: [] }).map((b) => JSON.stringify(b)),
    fc.jsonValue().map((v) => JSON.stringify(v)),
    fc.string({ maxLength: 200 }),
    fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
  );
  await fc.assert(
    fc.asyncProperty(body, fc.constantFrom('application/json', 'text/plain', 'application/octet-stream'), async (b, type) => {
      const r = await post('/graphql', b, type);
      assertSane(r);
      assert.match(r.type, /^application\/json/);
      if (r.status === 200) {
        const res = json(r);
        assert.ok('data' in res || Array.isArray(res.errors), r.body.toString());
      } else {
        assert.equal(r.status, 400);
      }
    }),
    { numRuns: 300 },
  );
});

test('fuzz: random paths under /raw/, / and /tx/…/data get 2xx or 4xx', async () => {
  const known = fc.constantFrom(...stored.map((i) => i.id));
  const segment = fc.oneof(
    fc.string({ unit: 'grapheme', maxLength: 60 }).map(encodeURIComponent),
    fc.string({ unit: fc.constantFrom(...'aZ09-_%./?#&=+~!$:@;,*()\'"'), maxLength: 120 }),
    fc.string({ unit: fc.constantFrom(...'ABCxyz019-_'), minLength: 42, maxLength: 44 }),
    known,
  );
  const shape = fc.constantFrom((s: string) => `/raw/${s}`, (s: string) => `/${s}`, (s: string) => `/tx/${s}/data`);
  await fc.assert(
    fc.asyncProperty(segment, shape, async (s, at) => {
      const r = await get(at(s));
      assertSane(r);
    }),
    { numRuns: 300 },
  );
});

test('after the fuzzing every stored item is still served intact', async () => {
  for (const item of stored) {
    assert.deepEqual((await get(`/raw/${item.id}`)).body, item.raw);
    assert.deepEqual((await store.get(item.id))?.raw, item.raw);
  }
  assert.deepEqual(await ids('owners: $o', { o: [walletAddress(alice)] }), newestFirst(messages));
});
