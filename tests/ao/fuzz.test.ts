// The embedded SU, CU and MU under garbage, over real HTTP on loopback: mutated, truncated and
// oversized items, items with lying header lengths, odd query strings, random ids and paging
// parameters, dry-run bodies of weird JSON, validly signed items with odd tags, processes of
// modules that fail every way a module can, and requests that are not quite HTTP. Every answer
// must be a 2xx or 4xx JSON one (or a 503), never a 5xx otherwise, never a dropped connection;
// afterwards the units must still carry a message end to end. The inputs come from a seeded
// xorshift generator: a failure names its seed and case, so it replays exactly.
import assert from 'node:assert/strict';
import { Agent, request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { test, type TestContext } from 'node:test';
import { aoClient } from '../../src/ao/client.js';
import { moduleTags, publishModule } from '../../src/ao/modules.js';
import { MAX_ITEM_BYTES } from '../../src/ao/su.js';
import { startUnits, type RunningUnits } from '../../src/ao/units.js';
import { createItem, type Item, type Tag } from '../../src/store/items.js';
import { generateWallet, walletSigner } from '../../src/store/wallet.js';
import { withTempDir } from '../helpers.js';

const SEED = 0x5eed_2024;

// Counts the messages addressed to it; anything else (assignments of other items) it ignores.
const ECHO = `
export function handle(state, msg, env) {
  const s = state ?? { count: 0 };
  const action = (msg.Tags.find((t) => t.name === 'Action') || {}).value;
  if (msg.Target !== env.Process.Id || action !== 'Echo') return { state: s, Output: 'ignored' };
  s.count += 1;
  return { state: s, Output: { count: s.count, data: msg.Data } };
}`;

/** xorshift32: small, fast, and the same sequence on every machine. */
function xorshift(seed: number) {
  let x = seed >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const int = (n: number): number => next() % n;
  return {
    int,
    pick: <T>(list: readonly T[]): T => list[int(list.length)],
    bytes: (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => next() & 255)),
    chance: (p: number): boolean => next() / 2 ** 32 < p,
  };
}
type Rng = ReturnType<typeof xorshift>;

interface Answer {
  status: number;
  type: string;
  body: Buffer;
}

const agent = new Agent({ keepAlive: true, maxSockets: 8 });

/** One request with the path sent as written; rejects when the connection drops. */
function call(base: string, method: string, path: string, body?: Uint8Array | string, headers: Record<string, string> = {}): Promise<Answer> {
  const { hostname, port } = new URL(base);
  // Node sends a GET's or DELETE's body with no length at all, which the server reads as the next request: say it.
  const length: Record<string, string> = body === undefined ? {} : { 'content-length': String(Buffer.byteLength(body)) };
  return new Promise((resolve, reject) => {
    const req = httpRequest({ hostname, port, path, method, headers: { ...length, ...headers }, agent, timeout: 20_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] ?? '', body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('no answer in 20 s')));
    req.on('error', reject);
    req.end(body);
  });
}

/** Enough to replay a case by hand: the route, and the body's length and first bytes. */
function describeCase(unit: string, method: string, path: string, body: Uint8Array | string | undefined, what: string): string {
  const bytes = body === undefined ? Buffer.alloc(0) : Buffer.from(body);
  const head = bytes.subarray(0, 96);
  return `${unit} ${method} ${path} (${what}; ${bytes.length} bytes, starting ${head.toString('base64')})`;
}

// How often each status came back per fuzz test: the fuzzing must reach the handlers, not stop at the router.
const statuses = new Map<number, number>();

/** 2xx or 4xx (or 503), JSON with an `error` string when it is an error. */
function assertSane(r: Answer, repro: string, options: { textOk?: boolean } = {}): void {
  statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
  assert.ok((r.status >= 200 && r.status < 500) || r.status === 503, `status ${r.status} for ${repro}: ${r.body.toString().slice(0, 300)}`);
  if (r.status >= 200 && r.status < 300 && options.textOk) return;
  assert.match(r.type, /^application\/json/, `content type ${r.type} for ${repro}`);
  const text = r.body.toString('utf8');
  let parsed: unknown;
  assert.doesNotThrow(() => (parsed = text === '' ? undefined : JSON.parse(text)), `not JSON for ${repro}: ${text.slice(0, 200)}`);
  if (r.status >= 400) assert.equal(typeof (parsed as { error?: unknown })?.error, 'string', `no error string for ${repro}: ${text.slice(0, 200)}`);
}

/** One fuzz request: its answer must be sane, and a dropped connection fails with the case that caused it. */
async function probe(base: string, unit: string, method: string, path: string, body: Uint8Array | string | undefined, headers: Record<string, string>, what: string, options: { textOk?: boolean } = {}): Promise<Answer> {
  const repro = describeCase(unit, method, path, body, what);
  let r: Answer;
  try {
    r = await call(base, method, path, body, headers);
  } catch (e) {
    throw new Error(`${(e as Error).message} for ${repro}`);
  }
  assertSane(r, repro, options);
  return r;
}

/** Sends bytes that are not quite HTTP on a fresh connection; resolves with whatever came back once the server closes it. */
function rawExchange(base: string, text: string): Promise<string> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => socket.write(text));
    let answer = '';
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer in 10 s')));
    socket.on('data', (d: Buffer) => (answer += d.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => resolve(answer));
  });
}

/** Where the tag count and tag byte length sit in an item. */
function tagCountsAt(item: Item): number {
  const [sig, owner] = item.signatureType === 1 ? [512, 512] : [64, 32];
  return 2 + sig + owner + (item.target ? 33 : 1) + (item.anchor ? 33 : 1);
}

/** A mutated copy of a valid item, and what was done to it; never the item itself (a header field set to its own value). */
function mutate(rng: Rng, item: Item): { raw: Buffer; what: string } {
  const mutated = mutateOnce(rng, item);
  if (!mutated.raw.equals(item.raw)) return mutated;
  const raw = Buffer.from(item.raw);
  raw[raw.length - 1] ^= 0x80;
  return { raw, what: `${mutated.what}, then the last bit flipped` };
}

function mutateOnce(rng: Rng, item: Item): { raw: Buffer; what: string } {
  const raw = Buffer.from(item.raw);
  const at = rng.int(raw.length);
  switch (rng.int(9)) {
    case 0: {
      const bit = rng.int(8);
      raw[at] ^= 1 << bit;
      return { raw, what: `bit ${bit} of byte ${at} flipped` };
    }
    case 1:
      return { raw: raw.subarray(0, at), what: `truncated to ${at}` };
    case 2: {
      const bytes = rng.bytes(1 + rng.int(64));
      return { raw: Buffer.concat([raw.subarray(0, at), bytes, raw.subarray(at)]), what: `${bytes.length} bytes spliced in at ${at}` };
    }
    case 3:
      return { raw: rng.bytes(1 + rng.int(2000)), what: 'random bytes' };
    case 4: {
      // Header lengths that lie: huge or slightly-off tag counts and tag byte lengths.
      const field = rng.pick([0, 8]);
      const value = rng.pick([0n, 1n, 127n, 129n, 4096n, 4097n, BigInt(raw.length), 2n ** 32n, 2n ** 63n, 2n ** 64n - 1n, BigInt(rng.int(10_000))]);
      raw.writeBigUInt64LE(value, tagCountsAt(item) + field);
      return { raw, what: `tag ${field ? 'bytes' : 'count'} set to ${value}` };
    }
    case 5: {
      const value = rng.pick([0, 1, 2, 3, 4, 5, 65535, rng.int(65536)]);
      raw.writeUInt16LE(value, 0);
      return { raw, what: `signature type ${value}` };
    }
    case 6: {
      // Varint-looking bytes over the Avro tag block: negative lengths and huge counts live here.
      const start = tagCountsAt(item) + 16;
      const size = Number(raw.readBigUInt64LE(start - 8));
      const offset = start + rng.int(Math.max(size, 1));
      const bytes = rng.bytes(1 + rng.int(6)).map((b, i, all) => (i < all.length - 1 ? b | 0x80 : b & 0x7f));
      raw.set(bytes.subarray(0, Math.max(0, raw.length - offset)), offset);
      return { raw, what: `avro bytes ${Buffer.from(bytes).toString('hex')} at ${offset}` };
    }
    case 7: {
      // The target or anchor flag set to something else, or flipped on with nothing behind it.
      const flagAt = 2 + (item.signatureType === 1 ? 1024 : 96);
      const flag = rng.pick([0, 1, 2, 255]);
      raw[flagAt] = flag;
      return { raw, what: `target flag ${flag}` };
    }
    default:
      return { raw: Buffer.concat([raw, rng.bytes(1 + rng.int(32))]), what: 'bytes appended' };
  }
}

/** An id-shaped or not-quite-id-shaped path segment or parameter. */
function idLike(rng: Rng, known: string[]): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const chars = (n: number, from = alphabet): string => Array.from({ length: n }, () => from[rng.int(from.length)]).join('');
  switch (rng.int(8)) {
    case 0:
    case 1:
      return rng.pick(known);
    case 2:
      return chars(43);
    case 3:
      return chars(rng.pick([0, 1, 42, 44, 86]));
    case 4:
      return chars(1 + rng.int(60), "aZ09-_%./?#&=+~!$:@;,*()'");
    case 5:
      return encodeURIComponent(String.fromCodePoint(...Array.from({ length: 1 + rng.int(8) }, () => rng.pick([0x41, 0xe9, 0x4e2d, 0x1f600, 0x0, 0x7f, 0x2028]))));
    case 6:
      return rng.pick(['%', '%zz', '%E0%A4%A', '..', '.', '%2F', '%00', 'null', 'undefined', '__proto__', 'constructor']);
    default:
      return rng.pick(known).slice(0, 42) + rng.pick(['', '=', '!', 'A', '%41']);
  }
}

/** A query-parameter value: numbers of every kind, cursors that decode to odd JSON, junk. */
function paramLike(rng: Rng, known: string[]): string {
  const cursor = (v: unknown): string => Buffer.from(JSON.stringify({ nonce: v })).toString('base64url');
  switch (rng.int(6)) {
    case 0:
      return String(rng.int(10));
    case 1:
      return rng.pick(['-1', '0', '1.5', '1e3', '99999999999999999999', '9007199254740993', 'NaN', 'Infinity', '0x10', '%201', '', '+1', '%D9%A1']);
    case 2:
      return cursor(rng.pick([0, 1, -1, 1.5, 1e300, 2 ** 53, null, '1', [], {}]));
    case 3:
      return rng.pick(['ASC', 'DESC', 'asc', 'RANDOM', '']);
    case 4:
      return encodeURIComponent(rng.bytes(1 + rng.int(12)).toString('latin1'));
    default:
      return idLike(rng, known);
  }
}

function queryOf(rng: Rng, names: string[], known: string[]): string {
  const parts: string[] = [];
  for (const name of names) if (rng.chance(0.5)) parts.push(`${name}=${paramLike(rng, known)}`);
  if (rng.chance(0.15)) parts.push(`${rng.pick(names)}=${paramLike(rng, known)}`); // a repeated parameter
  if (rng.chance(0.1)) parts.push(rng.pick(['&', '=', '==', 'x', '%zz=1', '__proto__[a]=1']));
  return parts.length ? `?${parts.join('&')}` : '';
}

/** A dry-run body: a plausible message with odd fields, or JSON (or not JSON) of any shape. */
function dryRunBody(rng: Rng, pid: string): { body: string; what: string } {
  const weirdValue = (): unknown =>
    rng.pick<() => unknown>([
      () => null,
      () => 0,
      () => -1e308,
      () => true,
      () => '',
      () => 'x'.repeat(rng.int(5000)),
      () => ({}),
      () => [],
      () => [{ name: 'Action', value: 'Echo' }],
      () => [{ name: 1, value: {} }],
      () => Array.from({ length: rng.int(300) }, (_, i) => ({ name: `T${i}`, value: 'v' })),
      () => [{ name: 'Action', value: 'x'.repeat(10_000) }],
      () => ({ name: 'Action', value: 'Echo' }),
      () => '\u0000\ud800',
    ])();
  switch (rng.int(6)) {
    case 0:
    case 1: {
      const message: Record<string, unknown> = { Id: '0', Owner: 'o', Target: pid, Tags: [{ name: 'Action', value: 'Echo' }], Data: 'hi' };
      for (const field of ['Id', 'Owner', 'Target', 'Tags', 'Data', 'Anchor', 'From', 'Extra']) if (rng.chance(0.3)) message[field] = weirdValue();
      return { body: JSON.stringify(message), what: 'a message with odd fields' };
    }
    case 2:
      return { body: JSON.stringify(weirdValue()), what: 'a JSON value' };
    case 3: {
      const depth = rng.pick([10, 1000, 100_000]);
      return { body: `${'['.repeat(depth)}${']'.repeat(depth)}`, what: `arrays ${depth} deep` };
    }
    case 4:
      return { body: rng.pick(['{', '{"Tags":', 'nul', '{"__proto__":{"x":1}}', '{"constructor":{"prototype":{}}}', '{"Tags":[{"name":"a","value":"b"}],"Tags":1}', '']), what: 'broken or hostile JSON' };
    default:
      return { body: rng.bytes(rng.int(200)).toString('latin1'), what: 'random bytes' };
  }
}

test('fuzz: the SU, CU and MU answer garbage with 2xx/4xx JSON and still carry a message end to end', { timeout: 120_000 }, async (t) => {
  // arweave-js warns on every failed RSA verification; forged RSA items are the point here.
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    if (!String(args[0]).startsWith('Transaction Verification Failed')) warn(...args);
  };
  try {
    await withTempDir(async (dir) => {
      const units = await startUnits({ dir });
      try {
        await fuzzUnits(t, units);
      } finally {
        await units.close();
      }
    });
  } finally {
    console.warn = warn;
    agent.destroy();
  }
});

async function fuzzUnits(t: TestContext, units: RunningUnits): Promise<void> {
  const wallet = await generateWallet('ed25519');
  const rsa = await generateWallet('arweave');
  const ao = aoClient({ mu: units.urls.mu, cu: units.urls.cu, wallet });
  const moduleId = await publishModule(units.store, walletSigner(wallet), ECHO, 'echo');
  const pid = await ao.spawn(moduleId, units.scheduler.address, { tags: [{ name: 'Name', value: 'fuzzed' }] });
  const sent = await ao.message(pid, { tags: [{ name: 'Action', value: 'Echo' }], data: 'before' });
  assert.deepEqual((await ao.result(pid, sent)).Output, { count: 1, data: 'before' });
  const aoTags = (type: string): Tag[] => [{ name: 'Data-Protocol', value: 'ao' }, { name: 'Variant', value: 'ao.TN.1' }, { name: 'Type', value: type }];
  // Valid items of each shape the units take, signed and never sent as they are: the mutations' seeds.
  const templates = [
    await ao.sign(pid, { tags: [{ name: 'Action', value: 'Echo' }], data: 'template' }),
    await createItem('rsa', walletSigner(rsa), { target: pid, tags: [...aoTags('Message'), { name: 'Action', value: 'Echo' }] }),
    await createItem('', walletSigner(wallet), { tags: [...aoTags('Process'), { name: 'Module', value: moduleId }, { name: 'Scheduler', value: units.scheduler.address }, { name: 'Name', value: 'template' }] }),
    await createItem(Buffer.from([0, 1, 2]), walletSigner(wallet), { anchor: 'a'.repeat(32), tags: [{ name: 'Type', value: 'Message' }] }),
  ];
  const known = [pid, moduleId, sent, units.scheduler.address, ...templates.map((i) => i.id)];

  /** Mutated items (and a few odd queries) posted to the SU's or the MU's POST /. */
  async function postItems(unit: 'su' | 'mu', seed: number, cases: number): Promise<void> {
    const rng = xorshift(seed);
    const base = units.urls[unit];
    for (let i = 0; i < cases; i++) {
      const { raw, what } = mutate(rng, rng.pick(templates));
      // Now and then an assignment instead (AO's ?process-id=&assign=), of known ids or junk, with the body ignored.
      let query = '';
      if (rng.chance(0.2)) {
        const stored = [pid, moduleId, sent];
        query = `?process-id=${rng.chance(0.5) ? pid : idLike(rng, known)}&assign=${rng.chance(0.5) ? rng.pick(stored) : idLike(rng, known)}`;
        if (rng.chance(0.3)) query += `&exclude=${rng.pick(['Data', 'Data,Anchor', ',', 'a'.repeat(300), '%00', '', 'Data,,x'])}`;
        if (rng.chance(0.2)) query += '&base-layer';
      } else if (rng.chance(0.05)) query = queryOf(rng, ['process-id', 'assign', 'exclude', 'base-layer'], known);
      const type = rng.pick(['application/octet-stream', 'application/octet-stream', 'application/json', 'text/plain', 'multipart/form-data; boundary=x', '']);
      const headers: Record<string, string> = type ? { 'content-type': type } : {};
      await probe(base, unit, 'POST', `/${query}`, raw, headers, `seed ${seed} case ${i}: ${what}, content-type ${type || 'none'}`);
    }
    // An empty body, and one over the item limit.
    for (const raw of [Buffer.alloc(0), Buffer.alloc(MAX_ITEM_BYTES + 1, 7)]) {
      const r = await probe(base, unit, 'POST', '/', raw, { 'content-type': 'application/octet-stream' }, 'size edge');
      assert.equal(r.status, raw.length ? 413 : 400);
    }
  }

  /** Runs one fuzz test and checks that it saw at least these statuses. */
  async function fuzz(name: string, expected: number[], body: () => Promise<void>): Promise<void> {
    await t.test(name, async () => {
      statuses.clear();
      await body();
      const seen = [...statuses.keys()];
      for (const status of expected) assert.ok(seen.includes(status), `${name}: no ${status} among ${JSON.stringify(Object.fromEntries(statuses))}`);
    });
  }

  await fuzz('SU POST /: mutated, truncated and lying-header items, odd queries', [200, 400, 404, 413], () => postItems('su', SEED, 400));
  await fuzz('MU POST /: mutated, truncated and lying-header items, odd queries', [202, 400, 413], () => postItems('mu', SEED + 1, 400));

  await fuzz('SU GET routes with random ids and paging parameters', [200, 400, 404], async () => {
    const rng = xorshift(SEED + 2);
    for (let i = 0; i < 400; i++) {
      const id = idLike(rng, known);
      const [path, names] = rng.pick<[string, string[]]>([
        [`/${id}`, ['process-id', 'from', 'to', 'from-nonce', 'to-nonce', 'limit']],
        [`/processes/${id}`, []],
        [`/${id}/latest`, []],
        ['/timestamp', ['process-id']],
        ['/', []],
        [`/${id}/${idLike(rng, known)}`, []],
      ]);
      const full = path + queryOf(rng, names, known);
      await probe(units.urls.su, 'su', 'GET', full, undefined, {}, `seed ${SEED + 2} case ${i}`);
    }
  });

  await fuzz('CU GET routes with random ids and paging parameters', [200, 400, 404], async () => {
    const rng = xorshift(SEED + 3);
    for (let i = 0; i < 400; i++) {
      const id = idLike(rng, known);
      const [path, names] = rng.pick<[string, string[]]>([
        [`/result/${id}`, ['process-id']],
        [`/results/${id}`, ['from', 'to', 'sort', 'limit', 'after']],
        [`/state/${id}`, []],
        ['/', []],
        [`/results/${id}/${idLike(rng, known)}`, []],
      ]);
      let full = path + queryOf(rng, names, known);
      // A short wait only: a long one is a long poll, correct but slow.
      if (path.startsWith('/results/') && rng.chance(0.2)) full += `${full.includes('?') ? '&' : '?'}wait=${rng.pick(['0', '5', '20', 'x', '-1'])}`;
      await probe(units.urls.cu, 'cu', 'GET', full, undefined, {}, `seed ${SEED + 3} case ${i}`);
    }
  });

  await fuzz('CU POST /dry-run with weird JSON, odd process ids and content types', [200, 400, 415], async () => {
    const rng = xorshift(SEED + 4);
    for (let i = 0; i < 300; i++) {
      const { body, what } = dryRunBody(rng, pid);
      const target = rng.chance(0.7) ? pid : idLike(rng, known);
      const path = rng.chance(0.9) ? `/dry-run?process-id=${target}` : `/dry-run${queryOf(rng, ['process-id'], known)}`;
      const type = rng.pick(['application/json', 'application/json', 'application/json; charset=utf-8', 'text/plain', 'application/octet-stream', '']);
      const headers: Record<string, string> = type ? { 'content-type': type } : {};
      await probe(units.urls.cu, 'cu', 'POST', path, body, headers, `seed ${SEED + 4} case ${i}: ${what}, content-type ${type || 'none'}`);
    }
  });

  await fuzz('validly signed items with odd tags, targets and data, and processes of hostile modules', [200, 202, 400, 404], async () => {
    const rng = xorshift(SEED + 6);
    const signer = walletSigner(wallet);
    // Modules that fail every way a module can: the CU must answer each with a result (its Error) or a 4xx.
    const hostile = [
      ['syntax error', 'export function handle(state, msg) { return {', {}],
      ['no handle', 'export const x = 1;', {}],
      ['throws on load', 'throw new Error("at load");', {}],
      ['spins on load', 'for (;;) {}', { 'Compute-Limit': '100' }],
      ['returns junk', 'export function handle() { return 42; }', { 'Memory-Limit': '0-b', 'Compute-Limit': 'lots' }],
      ['returns a cycle', 'export function handle() { const s = {}; s.s = s; return { state: s }; }', { 'Memory-Limit': '99999999999999999999-b' }],
      ['bad outbox', 'export function handle(s) { return { state: s, Messages: [{ Target: 42, Tags: "x" }, null], Spawns: [1], Assignments: [{}] }; }', {}],
    ] as const;
    const spawned: string[] = [];
    for (const [name, source, overrides] of hostile) {
      const tags = moduleTags(name).map((t) => ({ name: t.name, value: (overrides as Record<string, string>)[t.name] ?? t.value }));
      const module = await createItem(source, signer, { tags });
      await units.store.put(module.raw);
      const process = await ao.spawn(module.id, units.scheduler.address, { tags: [{ name: 'Name', value: name }] });
      spawned.push(process);
      const message = await ao.message(process, { tags: [{ name: 'Action', value: 'Anything' }] });
      for (const path of [`/result/${process}?process-id=${process}`, `/result/${message}?process-id=${process}`, `/state/${process}`, `/results/${process}?limit=5`]) {
        await probe(units.urls.cu, 'cu', 'GET', path, undefined, {}, `hostile module: ${name}`);
      }
      await probe(units.urls.cu, 'cu', 'POST', `/dry-run?process-id=${process}`, JSON.stringify({ Tags: [{ name: 'Action', value: 'x' }] }), { 'content-type': 'application/json' }, `hostile module: ${name}`);
    }
    const names = ['Data-Protocol', 'Variant', 'Type', 'Module', 'Scheduler', 'Action', 'From-Process', 'Authority', 'Pushed-For', 'Content-Type', 'Memory-Limit', 'Compute-Limit', 'Nonce', 'Timestamp', 'Hash-Chain', 'Cron-Interval', 'Exclude', 'X'];
    const values = (): string =>
      rng.pick([
        'ao', 'ao.TN.1', 'Message', 'Process', 'Module', 'Assignment', 'Scheduler-Location', pid, moduleId, sent, units.scheduler.address, ...spawned,
        '0', '-1', '1e999', 'Inc', 'x'.repeat(3072), '\u0000', 'é中😀', 'A'.repeat(43),
      ]);
    for (let i = 0; i < 80; i++) {
      const tags: Tag[] = Array.from({ length: rng.int(8) }, () => ({ name: rng.pick(names), value: values() }));
      // Within ANS-104's 4,096 bytes of tags (a longer list cannot even be signed).
      while (tags.reduce((n, t) => n + Buffer.byteLength(t.name) + Buffer.byteLength(t.value) + 8, 0) > 3500) tags.pop();
      // Mostly shaped as AO's messages and spawns, so that they get past the type checks.
      if (rng.chance(0.7)) tags.unshift(...aoTags(rng.chance(0.7) ? 'Message' : 'Process'));
      if (rng.chance(0.3)) tags.push({ name: 'Scheduler', value: units.scheduler.address }, { name: 'Module', value: rng.pick([moduleId, sent, pid, 'M'.repeat(43)]) });
      const target = rng.pick([pid, pid, ...spawned, moduleId, rng.bytes(32).toString('base64url'), undefined]);
      const data = rng.pick(['', 'data', rng.bytes(rng.int(300)).toString('latin1'), '{"Action":"Echo"}']);
      const item = await createItem(data, signer, { target, tags, anchor: rng.bytes(16).toString('hex') });
      const unit = rng.pick(['mu', 'mu', 'su'] as const);
      const what = `seed ${SEED + 6} case ${i}: tags ${JSON.stringify(tags).slice(0, 400)}, target ${target}`;
      const r = await probe(units.urls[unit], unit, 'POST', '/', item.raw, { 'content-type': 'application/octet-stream' }, what);
      if (r.status >= 300) continue;
      const process = target ?? item.id;
      await probe(units.urls.cu, 'cu', 'GET', `/result/${item.id}?process-id=${process}`, undefined, {}, `the result of ${what}`);
    }
  });

  await fuzz('MU monitor routes and unknown routes on every unit', [200, 400, 404], async () => {
    const rng = xorshift(SEED + 5);
    for (let i = 0; i < 120; i++) {
      const id = idLike(rng, known);
      const [unit, method, path] = rng.pick<['su' | 'cu' | 'mu', string, string]>([
        ['mu', 'POST', `/monitor/${id}`],
        ['mu', 'DELETE', `/monitor/${id}`],
        ['mu', 'GET', `/${id}`],
        ['mu', 'PUT', '/'],
        ['su', 'DELETE', `/${id}`],
        ['su', 'PATCH', '/'],
        ['cu', 'DELETE', `/state/${id}`],
        ['cu', 'POST', `/result/${id}`],
      ]);
      const body = rng.chance(0.3) ? rng.bytes(rng.int(100)) : undefined;
      const headers: Record<string, string> = body ? { 'content-type': 'application/octet-stream' } : {};
      // The MU's only GET route is its plain-text banner at /.
      await probe(units.urls[unit], unit, method, path, body, headers, `seed ${SEED + 5} case ${i}`, { textOk: unit === 'mu' && method === 'GET' });
    }
  });

  await t.test('malformed HTTP: huge headers and URLs, bad request lines and lengths, get a 4xx JSON answer', async () => {
    const requests: [string, string][] = [
      ['a 20 KB header', `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\nConnection: close\r\n\r\n`],
      ['a 20 KB URL', `GET /${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`],
      ['no request line', 'FOO BAR\r\n\r\n'],
      ['a bad Content-Length', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n'],
      ['two lengths', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n'],
      ['a bad chunk', 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n'],
    ];
    for (const unit of ['su', 'cu', 'mu'] as const) {
      for (const [what, text] of requests) {
        const answer = await rawExchange(units.urls[unit], text);
        const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(answer)?.[1]);
        assert.ok(status >= 400 && status < 500, `${unit}, ${what}: ${JSON.stringify(answer.slice(0, 200))}`);
        // The first answer only: a unit with no such route answers 404 before the body's own error follows.
        const head = answer.slice(0, answer.indexOf('\r\n\r\n'));
        const length = Number(/^content-length: (\d+)$/im.exec(head)?.[1]);
        const body = answer.slice(head.length + 4, head.length + 4 + length);
        assert.equal(typeof (JSON.parse(body) as { error?: unknown }).error, 'string', `${unit}, ${what}: ${body.slice(0, 200)}`);
      }
    }
  });

  await t.test('afterwards a message still goes end to end, and the process counted only the real ones', async () => {
    assertSane(await call(units.urls.mu, 'GET', '/'), 'mu GET /', { textOk: true });
    const message = await ao.message(pid, { tags: [{ name: 'Action', value: 'Echo' }], data: 'after' });
    const result = await ao.result(pid, message);
    assert.equal(result.Error, undefined);
    // No mutated item got through (a mutation is never the item itself): two messages, two counts.
    assert.deepEqual(result.Output, { count: 2, data: 'after' });
    assert.deepEqual((await ao.dryRun(pid, { tags: [{ name: 'Action', value: 'Echo' }], data: 'dry' })).Output, { count: 3, data: 'dry' });
    const other = await ao.spawn(moduleId, units.scheduler.address, { tags: [{ name: 'Name', value: 'after the fuzz' }] });
    const first = await ao.message(other, { tags: [{ name: 'Action', value: 'Echo' }], data: 'one' });
    assert.deepEqual((await ao.result(other, first)).Output, { count: 1, data: 'one' });
  });
}
