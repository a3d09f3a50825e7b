// The gateway over real HTTP against a real embedded store: uploads, raw bytes and data, the GraphQL
// queries aoconnect and the CU send, filters and paging both ways; then fuzzed uploads, GraphQL
// bodies and paths, which must never get a 5xx or a dropped connection, nor disturb stored items;
// then the upload policy: its pure rules, and the anonymous-storage attack it stops.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { loadModel } from '../../src/engine/index.js';
import { openGatewayStore } from '../../src/store/gateway-store.js';
import {
  DEFAULT_UPLOAD_POLICY, startGateway, uploadDecision, uploadPolicy, withUsage, type RunningGateway, type UploadPolicy, type UsageWindow,
} from '../../src/store/gateway.js';
import { createItem, type Item } from '../../src/store/items.js';
import { fetchModel, listModels, publishModel } from '../../src/store/models.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { generateWallet, ownerKey, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { stories260K, tok512, withTempDir } from '../helpers.js';

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

// The upload policy's rules, apart from HTTP: a one-minute window in 5 s buckets.
const POLICY: UploadPolicy = uploadPolicy({ windowMs: 60_000, signerBytes: 1000, signerItems: 3, globalBytes: 2500, maxItemBytes: 600, maxTrackedSigners: 4 });
const T0 = 1_800_000_000_000; // a bucket boundary: T0 is a multiple of 5,000
const used = (window: UsageWindow, at: number, bytes: number, items = 1): UsageWindow => withUsage(window, POLICY, at, { at, bytes, items });

test('upload policy: defaults, and a nonsensical policy is refused', () => {
  assert.deepEqual(uploadPolicy(), { ...DEFAULT_UPLOAD_POLICY });
  assert.deepEqual(uploadPolicy({ signerBytes: undefined, windowMs: 1000 }), { ...DEFAULT_UPLOAD_POLICY, windowMs: 1000 });
  // The defaults: the bundled model (~1 MB) and the units' rate fit; one signer cannot store GBs.
  assert.equal(DEFAULT_UPLOAD_POLICY.maxItemBytes, 16 * 2 ** 20);
  assert.ok(DEFAULT_UPLOAD_POLICY.signerBytes <= 2 ** 30 && DEFAULT_UPLOAD_POLICY.signerBytes >= 64 * 2 ** 20);
  assert.ok(DEFAULT_UPLOAD_POLICY.globalBytes >= DEFAULT_UPLOAD_POLICY.signerBytes);
  for (const bad of [{ windowMs: 0 }, { signerBytes: -1 }, { signerItems: 1.5 }, { globalBytes: Number.NaN }, { maxTrackedSigners: Infinity }]) {
    assert.throws(() => uploadPolicy(bad), RangeError, JSON.stringify(bad));
  }
  assert.throws(() => uploadPolicy({ unlimitedSigners: ['not-an-address'] }), TypeError);
});

test('upload policy: usage windows merge uploads per bucket, expire whole buckets, give back, stay short', () => {
  let w: UsageWindow = [];
  w = used(w, T0, 100);
  w = used(w, T0 + 4_999, 50);
  w = used(w, T0 + 5_000, 10);
  assert.deepEqual(w, [{ start: T0, bytes: 150, items: 2 }, { start: T0 + 5_000, bytes: 10, items: 1 }]);
  // Given back into the bucket it was taken from; an emptied bucket goes.
  w = withUsage(w, POLICY, T0 + 6_000, { at: T0 + 5_000, bytes: -10, items: -1 });
  assert.deepEqual(w, [{ start: T0, bytes: 150, items: 2 }]);
  // A bucket counts until a whole window has passed since its end, then it is dropped.
  assert.deepEqual(withUsage(w, POLICY, T0 + 64_999, { at: T0 + 64_999, bytes: 0, items: 0 }), w);
  assert.deepEqual(withUsage(w, POLICY, T0 + 65_000, { at: T0 + 65_000, bytes: 0, items: 0 }), []);
  // Giving back into a bucket already expired changes nothing.
  assert.deepEqual(withUsage([], POLICY, T0 + 70_000, { at: T0, bytes: -150, items: -2 }), []);
  // An upload every second for ten minutes: the window holds at most 14 buckets.
  let busy: UsageWindow = [];
  for (let t = 0; t < 600; t++) {
    busy = used(busy, T0 + t * 1000, 1);
    assert.ok(busy.length <= 14, `${busy.length} buckets at ${t} s`);
  }
  assert.deepEqual(busy.map((b) => b.start), [...busy.map((b) => b.start)].sort((a, b) => a - b));
});

test('upload policy: uploadDecision allows, refuses with 413 or 429, and says when a quota frees up', () => {
  const signer = 'S'.repeat(43);
  const decide = (signerWindow: UsageWindow, global: UsageWindow, bytes: number, now: number, policy = POLICY) => uploadDecision(policy, { signer: signerWindow, global }, { bytes, signer }, now);
  assert.deepEqual(decide([], [], 600, T0), { allowed: true, counted: true });
  const oversized = decide([], [], 601, T0);
  assert.equal(oversized.allowed, false);
  assert.deepEqual(oversized.allowed === false && [oversized.status, oversized.quota, oversized.limit], [413, 'item-bytes', 600]);
  // An item bigger than a whole quota can never fit: 413, not a 429 to wait out.
  const tight = uploadPolicy({ ...POLICY, signerBytes: 500 });
  const never = decide([], [], 550, T0, tight);
  assert.deepEqual(never.allowed === false && [never.status, never.quota], [413, 'signer-bytes']);

  // Bytes: 400 at T0, 400 at T0+10 s; 300 more does not fit until the first bucket expires (T0 + 65 s).
  const twoBuckets = used(used([], T0, 400), T0 + 10_000, 400);
  const overBytes = decide(twoBuckets, twoBuckets, 300, T0 + 20_000);
  assert.equal(overBytes.allowed, false);
  if (overBytes.allowed === false && overBytes.status === 429) {
    assert.deepEqual(
      { quota: overBytes.quota, limit: overBytes.limit, used: overBytes.used, resetsAt: overBytes.resetsAt, retry: overBytes.retryAfterSeconds },
      { quota: 'signer-bytes', limit: 1000, used: 800, resetsAt: T0 + 65_000, retry: 45 },
    );
    assert.match(overBytes.message, /signer-bytes quota: signer S{43} has stored 800 of 1000 bytes in the last 60 s; this item fits again at .*\(retry after 45 s\)/);
  } else assert.fail(JSON.stringify(overBytes));
  assert.equal(decide(twoBuckets, twoBuckets, 300, T0 + 64_999).allowed, false);
  assert.equal(decide(twoBuckets, twoBuckets, 300, T0 + 65_000).allowed, true);
  // With 300 then 600 stored, 500 more needs both buckets gone: the second one's expiry.
  const unequal = used(used([], T0, 300), T0 + 10_000, 600);
  const both = decide(unequal, unequal, 500, T0 + 20_000);
  assert.equal(both.allowed === false && both.status === 429 && both.resetsAt, T0 + 75_000);

  // Items: three small uploads, the fourth waits for the oldest.
  const three = used(used(used([], T0, 1), T0 + 5_000, 1), T0 + 10_000, 1);
  const overItems = decide(three, three, 1, T0 + 11_000);
  assert.deepEqual(overItems.allowed === false && overItems.status === 429 && [overItems.quota, overItems.used, overItems.resetsAt], ['signer-items', 3, T0 + 65_000]);

  // The global quota binds a signer with nothing stored: other signers filled it.
  const everyone = used(used([], T0, 2000), T0 + 30_000, 400);
  const overGlobal = decide([], everyone, 200, T0 + 31_000);
  assert.deepEqual(overGlobal.allowed === false && overGlobal.status === 429 && [overGlobal.quota, overGlobal.used, overGlobal.resetsAt], ['global-bytes', 2400, T0 + 65_000]);
  assert.match(overGlobal.allowed === false ? overGlobal.message : '', /^global-bytes quota: all signers together have stored 2400 of 2500 bytes/);
  // Over two quotas: the answer names the one that frees up last, so a retry then can succeed.
  const lateGlobal = used(used([], T0, 100), T0 + 50_000, 2300);
  const overTwo = decide(three, lateGlobal, 300, T0 + 51_000);
  assert.deepEqual(overTwo.allowed === false && overTwo.status === 429 && [overTwo.quota, overTwo.resetsAt], ['global-bytes', T0 + 115_000]);

  // An unlimited signer is neither refused nor counted, but still held to the item size.
  const trusted = uploadPolicy({ ...POLICY, unlimitedSigners: [signer] });
  assert.deepEqual(decide(twoBuckets, everyone, 600, T0 + 31_000, trusted), { allowed: true, counted: false });
  assert.equal(decide([], [], 601, T0, trusted).allowed, false);
});

/** A signed item of about `bytes` bytes (Ed25519 adds ~140 bytes of header and tags). */
const sized = (wallet: Wallet, bytes: number, n: number): Promise<Item> => createItem(Buffer.alloc(bytes, n & 255), walletSigner(wallet), { tags: [{ name: 'N', value: String(n) }] });

/** POSTs raw bytes to /tx of a gateway: status, Retry-After and JSON body. */
async function upload(to: RunningGateway, raw: Uint8Array): Promise<{ status: number; retryAfter: string | undefined; body: any }> {
  const { hostname, port } = new URL(to.url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ hostname, port, path: '/tx', method: 'POST', headers: { 'content-type': 'application/octet-stream' }, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        assert.match(res.headers['content-type'] ?? '', /^application\/json/);
        const header = res.headers['retry-after'];
        resolve({ status: res.statusCode ?? 0, retryAfter: Array.isArray(header) ? header[0] : header, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(raw);
  });
}

test('regression: anonymous storage is bounded per signer and in all; oversized items are refused unread; stored items stay intact', { timeout: 30_000 }, async () => {
  await withTempDir(async (dir) => {
    let clock = T0;
    const quotaStore = openSqliteStore(dir);
    const policy = { windowMs: 60_000, signerBytes: 10_000, signerItems: 50, globalBytes: 30_000, maxItemBytes: 4_000, maxTrackedSigners: 1000 };
    const limited = await startGateway(quotaStore, { port: 0, uploads: policy, now: () => clock });
    const kept: Item[] = [];
    try {
      const mallory = await generateWallet('ed25519');
      // Forged and malformed items by mallory are refused and cost it nothing.
      for (let i = 0; i < 5; i++) {
        const forged = Buffer.from((await sized(mallory, 1800, 1000 + i)).raw);
        forged[forged.length - 1] ^= 1;
        assert.equal((await upload(limited, forged)).status, 400);
      }
      // 1,800 bytes of data make ~1,950-byte items: five fit in 10,000 bytes, the sixth does not.
      const items = await Promise.all(Array.from({ length: 8 }, (_, i) => sized(mallory, 1800, i)));
      for (const item of items.slice(0, 5)) {
        const r = await upload(limited, item.raw);
        assert.equal(r.status, 200, JSON.stringify(r.body));
        kept.push(item);
      }
      const usedBytes = items.slice(0, 5).reduce((n, i) => n + i.raw.length, 0);
      const refused = await upload(limited, items[5].raw);
      assert.equal(refused.status, 429, JSON.stringify(refused.body));
      assert.deepEqual(
        { error: refused.body.error, quota: refused.body.quota, limit: refused.body.limit, used: refused.body.used, windowMs: refused.body.windowMs, resetsAt: refused.body.resetsAt },
        { error: 'over-quota', quota: 'signer-bytes', limit: 10_000, used: usedBytes, windowMs: 60_000, resetsAt: T0 + 65_000 },
      );
      assert.equal(refused.retryAfter, '65');
      assert.equal(refused.body.retryAfterSeconds, 65);
      assert.match(refused.body.message, new RegExp(`^signer-bytes quota: signer ${walletAddress(mallory)} has stored`));
      assert.equal(await quotaStore.has(items[5].id), false);
      // An item already stored costs nothing: a duplicate is still answered, and counted nowhere.
      assert.deepEqual((await upload(limited, items[0].raw)).body, { id: items[0].id, duplicate: true });
      assert.equal((await upload(limited, items[6].raw)).body.used, usedBytes);

      // Concurrent uploads by one fresh signer cannot all pass one check: exactly five are stored.
      const burst = await generateWallet('ed25519');
      const burstItems = await Promise.all(Array.from({ length: 12 }, (_, i) => sized(burst, 1800, i)));
      const answers = await Promise.all(burstItems.map((i) => upload(limited, i.raw)));
      assert.deepEqual(answers.map((a) => a.status).sort(), [...Array(5).fill(200), ...Array(7).fill(429)]);
      kept.push(...burstItems.filter((_, i) => answers[i].status === 200));

      // Fresh keys get around the per-signer quota, not the global one: ~30,000 bytes in all.
      const minted: number[] = [];
      for (let k = 0; k < 6; k++) {
        const fresh = await generateWallet('ed25519');
        for (let i = 0; i < 2; i++) {
          const item = await sized(fresh, 1800, 100 + k * 2 + i);
          const r = await upload(limited, item.raw);
          minted.push(r.status);
          if (r.status === 200) kept.push(item);
          else assert.equal(r.body.quota, 'global-bytes', JSON.stringify(r.body));
        }
      }
      assert.deepEqual(minted, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
      assert.ok(kept.reduce((n, i) => n + i.raw.length, 0) <= 30_000);

      // Oversized: 413 before anything is parsed or verified: garbage and a forged item alike, unstored.
      const big = await sized(mallory, 4_500, 7);
      const forgedBig = Buffer.from(big.raw);
      forgedBig[forgedBig.length - 1] ^= 1;
      for (const body of [Buffer.alloc(4_001, 0xab), forgedBig, big.raw]) {
        const r = await upload(limited, body);
        assert.equal(r.status, 413, JSON.stringify(r.body));
        assert.deepEqual([r.body.error, r.body.quota, r.body.limit], ['too-large', 'item-bytes', 4_000]);
      }
      assert.equal(await quotaStore.has(big.id), false);

      // Once the window has passed, mallory may store again: exactly when the answer said.
      clock = T0 + 64_999;
      assert.equal((await upload(limited, items[5].raw)).status, 429);
      clock = T0 + 65_000;
      assert.equal((await upload(limited, items[5].raw)).status, 200);
      kept.push(items[5]);

      // Every acknowledged item is served intact; nothing refused was stored.
      for (const item of kept) {
        const raw = await call(limited, 'GET', `/raw/${item.id}`);
        assert.equal(raw.status, 200);
        assert.deepEqual(raw.body, item.raw);
      }
      for (const item of [items[7], ...burstItems.filter((_, i) => answers[i].status !== 200)]) assert.equal(await quotaStore.has(item.id), false);
    } finally {
      await limited.close();
      await quotaStore.close();
    }
  });
});

test('the gateway remembers a bounded number of signers; an unlimited signer is never refused nor counted', { timeout: 30_000 }, async () => {
  await withTempDir(async (dir) => {
    const quotaStore = openSqliteStore(dir);
    const [x, y, z, unit] = await Promise.all([generateWallet('ed25519'), generateWallet('ed25519'), generateWallet('ed25519'), generateWallet('ed25519')]);
    const uploads = { signerItems: 2, globalBytes: 100_000, maxTrackedSigners: 2, unlimitedSigners: [walletAddress(unit)] };
    const gw = await startGateway(quotaStore, { port: 0, uploads });
    try {
      for (let i = 0; i < 2; i++) assert.equal((await upload(gw, (await sized(x, 10, i)).raw)).status, 200);
      assert.equal((await upload(gw, (await sized(x, 10, 2)).raw)).body.quota, 'signer-items');
      // Two other signers push x out of memory: it starts afresh (the global quota still counts it).
      assert.equal((await upload(gw, (await sized(y, 10, 0)).raw)).status, 200);
      assert.equal((await upload(gw, (await sized(z, 10, 0)).raw)).status, 200);
      assert.equal((await upload(gw, (await sized(x, 10, 2)).raw)).status, 200);
      // The unit's wallet stores past every quota, and leaves the global one untouched for others.
      for (let i = 0; i < 5; i++) assert.equal((await upload(gw, (await sized(unit, 30_000, i)).raw)).status, 200);
      assert.equal((await upload(gw, (await sized(y, 10, 1)).raw)).status, 200);
    } finally {
      await gw.close();
      await quotaStore.close();
    }
  });
});

test('under the default policy, a model publishes through the gateway and a node-like burst of small items is never refused', { timeout: 60_000 }, async () => {
  await withTempDir(async (dir) => {
    const modelStore = openSqliteStore(join(dir, 'store'));
    const gw = await startGateway(modelStore, { port: 0 });
    const remote = openGatewayStore(gw.url);
    try {
      const publisher = await generateWallet('ed25519');
      const model = loadModel(stories260K, { tokenizer: tok512 });
      const published = await publishModel(remote, walletSigner(publisher), model, 'stories260K');
      assert.ok(published.bytes > 900_000, `${published.bytes} bytes`);
      assert.deepEqual((await listModels(remote)).map((m) => m.modelId), [published.modelId]);
      const path = await fetchModel(remote, published.modelId, join(dir, 'cache'));
      assert.ok(path.endsWith('.gguf'));
      // Messages and traces, as the units and a node send them: many small, some of a few hundred KB.
      const node = await generateWallet('ed25519');
      const burst = await Promise.all(Array.from({ length: 200 }, (_, i) => sized(node, i % 50 === 0 ? 300_000 : 200, i)));
      const answers = await Promise.all(burst.map((item) => remote.put(item.raw)));
      assert.deepEqual(answers.map((a) => a.id), burst.map((i) => i.id));
    } finally {
      await remote.close();
      await gw.close();
      await modelStore.close();
    }
  });
});
