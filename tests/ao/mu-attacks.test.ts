// The Messenger Unit under attack: each test replays a finding of the adversarial review against
// the real MU, the real SU (su.ts) and locator (locate.ts) on 127.0.0.1, with either the real CU or
// a scripted one (a CU that, unlike ours, does not refuse an undeliverable outbox). An attacker's SU
// is a tiny HTTP server whose Scheduler-Location and process items the attacker put in the store,
// as anyone can on Arweave. Retry settings are small so that every test ends in a few seconds.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { openComputeUnit, startComputeUnit } from '../../src/ao/cu.js';
import { locator } from '../../src/ao/locate.js';
import { publishModule } from '../../src/ao/modules.js';
import { MESSENGER_DEFAULTS, MessengerError, openMessenger, startMessenger, type Messenger, type MessengerOptions } from '../../src/ao/mu.js';
import {
  MAX_ITEM_BYTES,
  MAX_TAG_BYTES,
  MU_ADDED_TAGS,
  outboxProblem,
  outboxTags,
  paddedAnchor,
  tagBytes,
  utf8Bytes,
  type OutboxTag,
} from '../../src/ao/outbox.js';
import { MAX_ITEM_BYTES as SU_MAX_ITEM_BYTES, openScheduler, startScheduler } from '../../src/ao/su.js';
import { freePort } from '../../src/ao/units.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { ItemError, createItem, tagValue, type Item, type Tag } from '../../src/store/items.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { AMPLIFIER } from './attackers.js';

const AO = [
  { name: 'Data-Protocol', value: 'ao' },
  { name: 'Variant', value: 'ao.TN.1' },
];
const TIMEOUT = { timeout: 60_000 };

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A message as the SU's log shows it. */
interface Scheduled {
  tags: Tag[];
  data: string;
}

/** What a scripted CU answers for a message (the item as the store holds it) to a process. */
type Script = (processId: string, message: Item) => { Messages?: unknown[]; Spawns?: unknown[] } | undefined;

interface Stack {
  store: Store;
  mu: Messenger;
  muUrl: string;
  suAddress: string;
  user: Wallet;
  lines: string[];
  /** A process on the real SU, spawned through the MU, trusting it (Authority) for From-Process. */
  spawn(name: string, module?: string): Promise<string>;
  send(target: string, tags: Tag[], data?: string): Promise<Item>;
  /** What the real SU scheduled for a process, after its own item: the MU's pushes and the client's messages. */
  log(processId: string): Promise<Scheduled[]>;
  close(): Promise<void>;
}

async function stack(options: { cu: 'real' | Script; mu?: Partial<MessengerOptions> }): Promise<Stack> {
  const dir = mkdtempSync(join(tmpdir(), 'verity-mu-attacks-'));
  dirs.push(dir);
  const store = openSqliteStore(join(dir, 'store'));
  const suPort = await freePort();
  const su = openScheduler({ dir: join(dir, 'su'), store, wallet: await generateWallet('ed25519'), url: `http://127.0.0.1:${suPort}` });
  const suServer = await startScheduler(su, { port: suPort });
  await su.ready;
  const locate = locator(store);
  const script = options.cu;
  const compute = script === 'real' ? await openComputeUnit({ dir: join(dir, 'cu'), store, wallet: await generateWallet('ed25519'), scheduler: locate }) : null;
  const cuServer = compute ? await startComputeUnit(compute, { port: 0 }) : await scriptedCu(store, script as Script);
  const lines: string[] = [];
  const mu = openMessenger({
    dir: join(dir, 'mu'),
    wallet: await generateWallet('ed25519'),
    scheduler: locate,
    cu: cuServer.url,
    retry: { attempts: 3, baseMs: 10, maxMs: 50 },
    log: (line) => lines.push(line),
    ...options.mu,
  });
  const muServer = await startMessenger(mu, { port: 0 });
  const user = await generateWallet('ed25519');
  const post = async (raw: Uint8Array): Promise<void> => {
    const res = await fetch(`${muServer.url}/`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: raw });
    assert.equal(res.status, 202, await res.text());
  };
  const someModule = 'M'.repeat(43);
  return {
    store,
    mu,
    muUrl: muServer.url,
    suAddress: su.address,
    user,
    lines,
    async spawn(name, module = someModule) {
      const p = await createItem(name, walletSigner(user), {
        tags: [...AO, { name: 'Type', value: 'Process' }, { name: 'Module', value: module }, { name: 'Scheduler', value: su.address }, { name: 'Name', value: name }, { name: 'Authority', value: mu.address }],
      });
      await post(p.raw);
      return p.id;
    },
    async send(target, tags, data = '') {
      const m = await createItem(data, walletSigner(user), { target, tags: [...AO, { name: 'Type', value: 'Message' }, ...tags] });
      await post(m.raw);
      return m;
    },
    async log(processId) {
      return (await su.messages(processId, { limit: 1000 }))!.edges.slice(1).map((e) => ({ tags: e.node.message!.tags, data: e.node.message!.data ?? '' }));
    },
    async close() {
      await muServer.close();
      await mu.close();
      await cuServer.close();
      await compute?.close();
      await suServer.close();
      await su.close();
      await store.close();
    },
  };
}

/** A CU that answers GET /result from a script over the message as the store holds it. */
async function scriptedCu(store: Store, script: Script): Promise<{ url: string; close(): Promise<void> }> {
  return httpServer(async (request, respond) => {
    const url = new URL(request.url ?? '/', 'http://x');
    const id = url.pathname.split('/')[2] ?? '';
    const item = url.pathname.startsWith('/result/') ? await store.get(id) : null;
    if (!item) return respond(404, { error: 'not found' });
    const out = script(url.searchParams.get('process-id') ?? '', item) ?? {};
    respond(200, { Messages: [], Spawns: [], Assignments: [], Output: '', GasUsed: 0, ...out });
  });
}

type Handler = (request: IncomingMessage & { body: Buffer }, respond: (status: number, body: unknown) => void) => Promise<void> | void;

async function httpServer(handler: Handler): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = [];
    request.on('data', (c: Buffer) => chunks.push(c));
    request.on('end', () => {
      const respond = (status: number, body: unknown): void => {
        if (response.writableEnded) return;
        response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      };
      Promise.resolve(handler(Object.assign(request, { body: Buffer.concat(chunks) }), respond)).catch((e: Error) => respond(500, { error: e.message }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * An SU of the attacker's at `url`: its wallet's Scheduler-Location record and a process on it,
 * both put in the store by the attacker, so the real locator sends the MU there.
 */
async function attackerProcess(store: Store, url: string): Promise<string> {
  const wallet = await generateWallet('ed25519');
  const location = await createItem('', walletSigner(wallet), {
    tags: [...AO.slice(0, 1), { name: 'Type', value: 'Scheduler-Location' }, { name: 'Url', value: url }, { name: 'Time-To-Live', value: '3600000' }],
  });
  await store.put(location.raw);
  const process = await createItem('attacker', walletSigner(wallet), {
    tags: [...AO, { name: 'Type', value: 'Process' }, { name: 'Module', value: 'M'.repeat(43) }, { name: 'Scheduler', value: walletAddress(wallet) }],
  });
  await store.put(process.raw);
  return process.id;
}

const action = (m: Pick<Item, 'tags'>): string | undefined => tagValue(m, 'Action');
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
/** Polls until `check` holds; the test's own timeout bounds it. */
async function until(check: () => Promise<boolean> | boolean): Promise<void> {
  while (!(await check())) await sleep(10);
}

/** A Credit-Notice whose own tags fit ANS-104 but come to exactly `total` bytes once the MU adds its tags. */
function creditNotice(total: number): OutboxTag[] {
  const base = (pad: string): OutboxTag[] => [
    { name: 'Action', value: 'Credit-Notice' },
    { name: 'Sender', value: 'S'.repeat(43) },
    { name: 'Quantity', value: '1' },
    { name: 'X-Note', value: pad },
    { name: 'X-Memo', value: 'm'.repeat(1000) },
  ];
  const ids = { 'from-process': 'A'.repeat(43), 'from-module': 'A'.repeat(43), 'pushed-for': 'A'.repeat(43) };
  for (let n = 3000; n > 0; n--) {
    const tags = base('n'.repeat(n));
    if (tagBytes(outboxTags('message', tags, ids)) === total) return tags;
  }
  throw new Error(`no pad makes ${total} bytes`);
}

test('(finding 1) an outbox message whose tags fit alone but not with the MU tags fails with its reason and blocks no one', TIMEOUT, async () => {
  const notice = creditNotice(4120);
  // It fits alone: a process may well build it.
  assert.ok(tagBytes(notice) <= MAX_TAG_BYTES, `${tagBytes(notice)} bytes alone`);
  let token = '';
  let coordinator = '';
  let other = '';
  const net = await stack({
    cu: (pid, m) => {
      if (pid !== token) return undefined;
      if (action(m) === 'Transfer')
        return {
          Messages: [
            { Target: coordinator, Tags: notice },
            { Target: coordinator, Data: 'after', Tags: [{ name: 'Action', value: 'After' }] },
            { Target: other, Tags: [{ name: 'Action', value: 'Debit-Notice' }] },
          ],
        };
      if (action(m) === 'Again') return { Messages: [{ Target: coordinator, Tags: [{ name: 'Action', value: 'Hello' }] }] };
      return undefined;
    },
  });
  try {
    token = await net.spawn('token');
    coordinator = await net.spawn('coordinator');
    other = await net.spawn('other');
    const transfer = await net.send(token, [{ name: 'Action', value: 'Transfer' }]);
    await net.send(token, [{ name: 'Action', value: 'Again' }]);
    await net.mu.idle();

    const row = net.mu.jobs().find((j) => j.key === `push:${token}:${transfer.id}:0`)!;
    assert.equal(row.state, 'failed');
    assert.equal(row.attempts, 1, 'tried once, not retried');
    const problem = outboxProblem('message', { Target: coordinator, Tags: notice });
    assert.equal(problem, 'with the 6 tags the MU adds: 4120 bytes of tags, at most 4096');
    assert.ok(row.reason!.includes(problem!), row.reason!);
    assert.ok(net.lines.some((l) => l.includes(row.key) && l.includes('4120 bytes')), net.lines.join('\n'));
    // The rest of the queue went on: the coordinator's later deliveries in order, the other target too.
    assert.deepEqual((await net.log(coordinator)).map(action), ['After', 'Hello']);
    assert.deepEqual((await net.log(other)).map(action), ['Debit-Notice']);
    assert.ok(net.mu.jobs().every((j) => j.state === 'done' || j.key === row.key), JSON.stringify(net.mu.jobs()));

    // Building it anyway is an ItemError (arbundles' own "Too many tag bytes" is a plain Error).
    const tags = outboxTags('message', notice, { 'from-process': token, 'from-module': 'M'.repeat(43), 'pushed-for': transfer.id });
    await assert.rejects(createItem('', walletSigner(net.user), { target: coordinator, anchor: paddedAnchor('1'), tags }), (e) => e instanceof ItemError && /4120 > 4096/.test(e.message));
  } finally {
    await net.close();
  }
});

test('(finding 1) an SU of the attacker that hangs, then answers 500, holds up only its own process, and its rows end failed', TIMEOUT, async () => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let posts = 0;
  const attacker = await httpServer(async (_request, respond) => {
    if (++posts === 1) await released; // the first delivery hangs
    respond(500, { error: 'internal error' });
  });
  let a = '';
  let b = '';
  let x = '';
  const net = await stack({
    cu: (pid, m) => {
      if (pid !== a) return undefined;
      if (action(m) === 'Go')
        return {
          Messages: [
            { Target: x, Data: 'one', Tags: [{ name: 'Action', value: 'Note' }] },
            { Target: x, Data: 'two', Tags: [{ name: 'Action', value: 'Note' }] },
            { Target: b, Data: 'three', Tags: [{ name: 'Action', value: 'Note' }] },
          ],
        };
      if (action(m) === 'More') return { Messages: [{ Target: b, Data: 'four', Tags: [{ name: 'Action', value: 'Note' }] }] };
      return undefined;
    },
    // No cap on tries (the default): the age bound alone must end it.
    mu: { concurrency: 2, retry: { baseMs: 10, maxMs: 20, maxAgeMs: 200 } },
  });
  try {
    x = await attackerProcess(net.store, attacker.url);
    a = await net.spawn('a');
    b = await net.spawn('b');
    const go = await net.send(a, [{ name: 'Action', value: 'Go' }]);
    await net.send(a, [{ name: 'Action', value: 'More' }]);
    // Both deliveries to b land while the first one to x is still unanswered.
    await until(async () => (await net.log(b)).length === 2);
    assert.deepEqual((await net.log(b)).map((m) => m.data), ['three', 'four']);
    assert.equal(posts, 1, 'x holds one request; its second message waits behind it, in order');
    const toX = (k: number) => net.mu.jobs().find((j) => j.key === `push:${a}:${go.id}:${k}`)!;
    assert.equal(toX(0).state, 'pending');
    release();
    await net.mu.idle();
    // Bounded: retried until it had been failing for retry.maxAgeMs, then failed with the last answer.
    for (const k of [0, 1]) {
      assert.equal(toX(k).state, 'failed');
      assert.match(toX(k).reason!, /^gave up after \d+ tries in [\d.]+ s \(retry.maxAgeMs 200\): SU of .*: 500 internal error$/);
      assert.ok(toX(k).attempts >= 2);
    }
  } finally {
    await net.close();
    await attacker.close();
  }
});

test('(finding 1) processes on an SU that never answers take at most half the slots with their retries', TIMEOUT, async () => {
  const hung = await httpServer(() => new Promise<void>(() => undefined)); // never answers; close() drops the sockets
  let a = '';
  let b = '';
  const xs: string[] = [];
  const net = await stack({
    cu: (pid, m) => (pid === a && action(m) === 'Go' ? { Messages: [...xs.map((x) => ({ Target: x, Tags: [{ name: 'Action', value: 'Note' }] })), { Target: b, Tags: [{ name: 'Action', value: 'Note' }] }] } : undefined),
    // Two slots; each try to the hung SU ends at the 150 ms timeout and is due again 1 ms later.
    mu: { concurrency: 2, timeoutMs: 150, retry: { attempts: 40, baseMs: 1, maxMs: 1 } },
  });
  try {
    for (let i = 0; i < 6; i++) xs.push(await attackerProcess(net.store, hung.url));
    a = await net.spawn('a');
    b = await net.spawn('b');
    await net.send(a, [{ name: 'Action', value: 'Go' }]);
    // Without the share, the six rows to x (queued first, and always due again when a slot frees)
    // would hold both slots until each had made its 40 tries.
    const pushes = (): string[] => net.mu.jobs().filter((j) => j.kind === 'push').map((j) => j.state);
    await until(() => pushes()[6] === 'done');
    assert.deepEqual(pushes(), [...xs.map(() => 'pending'), 'done'], 'b was delivered while the rows to x were still being retried');
    assert.equal((await net.log(b)).length, 1);
  } finally {
    await net.close();
    await hung.close();
  }
});

test("(finding 1) a sender whose SU answers 500 for its own record cannot stall the lanes of the processes it writes to", TIMEOUT, async () => {
  // The attacker's SU takes an assignment (so the MU cranks the message on its process) but
  // answers 500 for the process record, which the MU needs for From-Module.
  let records = 0;
  const attacker = await httpServer(async (request, respond) => {
    const url = new URL(request.url ?? '/', 'http://x');
    if (request.method === 'POST' && url.searchParams.has('assign')) return respond(200, { timestamp: 1, id: 'Z'.repeat(42) + 'A' });
    if (url.pathname.startsWith('/processes/')) records++;
    respond(500, { error: 'internal error' });
  });
  let a = '';
  let c = '';
  let x = '';
  const net = await stack({
    cu: (pid, m) => {
      if (pid === x) return { Messages: [{ Target: c, Tags: [{ name: 'Action', value: 'From-X' }] }] };
      if (pid === a && action(m) === 'Go') return { Messages: [{ Target: c, Tags: [{ name: 'Action', value: 'From-A' }] }] };
      return undefined;
    },
  });
  try {
    x = await attackerProcess(net.store, attacker.url);
    a = await net.spawn('a');
    c = await net.spawn('coordinator');
    const seed = await net.send(c, [{ name: 'Action', value: 'Seed' }]);
    const assigned = await fetch(`${net.muUrl}/?process-id=${x}&assign=${seed.id}`, { method: 'POST' });
    assert.equal(assigned.status, 202, await assigned.text());
    await net.send(a, [{ name: 'Action', value: 'Go' }]);
    await net.mu.idle();
    assert.deepEqual((await net.log(c)).map(action), ['Seed', 'From-A']);
    const crank = net.mu.jobs().find((j) => j.key === `crank:${x}:${seed.id}`)!;
    assert.equal(crank.state, 'failed');
    assert.match(crank.reason!, /^gave up after 3 tries in [\d.]+ s \(retry.attempts 3\): SU GET \/processes\/.*: 500/);
    assert.equal(records, 3);
    assert.ok(!net.mu.jobs().some((j) => j.key.startsWith(`push:${x}:`)), 'nothing of x was queued into the coordinator lane');
  } finally {
    await net.close();
    await attacker.close();
  }
});

test('(finding 4) two processes doubling (or just returning) each other\'s messages from one client message get a bounded number of slots', TIMEOUT, async () => {
  const budget = 12;
  const net = await stack({ cu: 'real', mu: { limits: { pushes: budget } } });
  try {
    const module = await publishModule(net.store, walletSigner(net.user), AMPLIFIER, 'amplifier');
    const p = await net.spawn('p', module);
    const q = await net.spawn('q', module);
    const serve = await net.send(p, [{ name: 'Action', value: 'Ball' }, { name: 'Copies', value: '2' }, { name: 'Peer', value: q }]);
    await net.mu.idle();

    // 2 + 4 + 8 would be 14: the budget stops the chain at 12 pushes, all Pushed-For the serve.
    const pushes = net.mu.jobs().filter((j) => j.kind === 'push' && j.root === serve.id);
    assert.equal(pushes.length, budget);
    assert.ok(pushes.every((j) => j.state === 'done' && j.root === serve.id));
    const slots = [...(await net.log(p)), ...(await net.log(q))].filter((m) => tagValue(m, 'Pushed-For') === serve.id);
    assert.equal(slots.length, budget);
    const capped = net.mu.jobs().filter((j) => j.kind === 'crank' && j.root === serve.id && j.state === 'failed');
    assert.ok(capped.length >= 1);
    for (const j of capped) assert.match(j.reason!, new RegExp(`^push budget ${budget} for Pushed-For ${serve.id} spent`));
    assert.equal(net.lines.filter((l) => l.includes('push budget')).length, 1, net.lines.join('\n'));

    // A plain ping-pong from another client message has a budget of its own, and stops at it too.
    const rally = await net.send(p, [{ name: 'Action', value: 'Ball' }, { name: 'Copies', value: '1' }, { name: 'Peer', value: q }]);
    await net.mu.idle();
    const rallied = net.mu.jobs().filter((j) => j.kind === 'push' && j.root === rally.id);
    assert.equal(rallied.length, budget);
    assert.ok(rallied.every((j) => j.state === 'done'));
    assert.ok(net.mu.jobs().some((j) => j.kind === 'crank' && j.root === rally.id && j.state === 'failed' && j.reason!.startsWith(`push budget ${budget} for Pushed-For ${rally.id}`)));
    assert.equal(net.lines.filter((l) => l.includes('push budget')).length, 2, 'logged once per client message');
  } finally {
    await net.close();
  }
});

test('(finding 4) the default limits bound a chain in depth and in total', () => {
  assert.deepEqual(MESSENGER_DEFAULTS.limits, { depth: 128, fanout: 256, pushes: 1024 });
  assert.equal(MESSENGER_DEFAULTS.retry.maxAgeMs, 24 * 60 * 60 * 1000);
  assert.equal(MESSENGER_DEFAULTS.maxItemBytes, SU_MAX_ITEM_BYTES);
  assert.equal(MAX_ITEM_BYTES, SU_MAX_ITEM_BYTES, "outbox.ts's copy of the SU's limit");
});

test('(finding 7) no busy loop and no TimeoutOverflowWarning while a submit is in flight or a retry is far off', TIMEOUT, async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error): void => {
    if (w.name === 'TimeoutOverflowWarning') warnings.push(w.message);
  };
  process.on('warning', onWarning);
  let reached!: () => void;
  const held = new Promise<void>((resolve) => (reached = resolve));
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const slow = await httpServer(async (_request, respond) => {
    reached();
    await released;
    respond(200, { timestamp: 1, id: 'x' });
  });
  const failing = await httpServer((_request, respond) => respond(500, { error: 'down' }));
  // A retry due in 2^33 ms (about 100 days) must not overflow the timer.
  const net = await stack({ cu: () => undefined, mu: { retry: { baseMs: 2 ** 33, maxMs: 2 ** 40 } } });
  try {
    const down = await attackerProcess(net.store, failing.url);
    const away = await createItem('x', walletSigner(net.user), { target: down, tags: [...AO, { name: 'Type', value: 'Message' }] });
    const refused = await fetch(`${net.muUrl}/`, { method: 'POST', body: away.raw });
    assert.equal(refused.status, 502, 'three quick tries, then the client hears the SU is away');
    assert.equal(net.mu.jobs().find((j) => j.key === `forward:${away.id}`)!.state, 'pending', 'kept for the background');

    const target = await attackerProcess(net.store, slow.url);
    const item = await createItem('y', walletSigner(net.user), { target, tags: [...AO, { name: 'Type', value: 'Message' }] });
    const submitted = fetch(`${net.muUrl}/`, { method: 'POST', body: item.raw });
    await held;
    const before = net.mu.stats();
    await sleep(300); // a 1 ms loop would run ~300 times here
    const during = net.mu.stats();
    assert.ok(during.pumps - before.pumps <= 2, `${during.pumps - before.pumps} pumps while one submit was in flight`);
    assert.ok(during.timersArmed - before.timersArmed <= 1, `${during.timersArmed - before.timersArmed} timers armed`);
    release();
    assert.equal((await submitted).status, 202);
    await sleep(20); // a warning is emitted on the next tick
    assert.deepEqual(warnings, []);
  } finally {
    process.off('warning', onWarning);
    await net.close();
    await slow.close();
    await failing.close();
  }
});

test('size before work: an oversized body is 413 before its signature is checked, over HTTP and in submit()', TIMEOUT, async () => {
  const net = await stack({ cu: () => undefined, mu: { maxItemBytes: 2048 } });
  try {
    assert.equal(net.mu.maxItemBytes, 2048);
    const garbage = Buffer.alloc(4096, 7);
    await assert.rejects(net.mu.submit(garbage), (e) => e instanceof MessengerError && e.status === 413 && /4096 bytes, at most 2048/.test(e.message));
    // Under the limit the same bytes are read, and refused for what they are.
    await assert.rejects(net.mu.submit(garbage.subarray(0, 1000)), (e) => e instanceof MessengerError && e.status === 400);
    const big = await createItem('z'.repeat(3000), walletSigner(net.user), { target: 'A'.repeat(43), tags: [...AO, { name: 'Type', value: 'Message' }] });
    for (const body of [garbage, big.raw]) {
      const res = await fetch(`${net.muUrl}/`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body });
      assert.equal(res.status, 413);
      assert.equal(typeof ((await res.json()) as { error?: unknown }).error, 'string');
    }
  } finally {
    await net.close();
  }
});

test('(finding 6) anonymous storage through the MU: a signer past its quota gets 429 with Retry-After; others are served', TIMEOUT, async () => {
  const net = await stack({ cu: () => undefined, mu: { uploads: { signerBytes: 8 * 1024, windowMs: 60_000 } } });
  try {
    const process = await net.spawn('quota-target');
    const message = (signer: Wallet, n: number) =>
      createItem('q'.repeat(3000), walletSigner(signer), { target: process, anchor: String(n).padStart(32, '0'), tags: [...AO, { name: 'Type', value: 'Message' }] });
    const post = (raw: Uint8Array) => fetch(`${net.muUrl}/`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: raw });
    const statuses: number[] = [];
    let refused: Response | null = null;
    for (let n = 0; n < 5; n++) {
      const res = await post((await message(net.user, n)).raw);
      statuses.push(res.status);
      if (res.status === 429) refused = res;
      else await res.body?.cancel();
    }
    // About 3 KiB each: two fit in 8 KiB, the third does not.
    assert.deepEqual(statuses, [202, 202, 429, 429, 429]);
    assert.ok(Number(refused!.headers.get('retry-after')) > 0);
    assert.match(((await refused!.json()) as { error: string }).error, /signer-bytes|signer .* has/);
    // Another signer is not held up by the first one's quota.
    const other = await generateWallet('ed25519');
    assert.equal((await post((await message(other, 0)).raw)).status, 202);
  } finally {
    await net.close();
  }
});

test('outboxProblem agrees with building the item, at every limit', TIMEOUT, async () => {
  const signer = walletSigner(await generateWallet('ed25519'));
  const id = 'A'.repeat(43);
  const ids = { 'from-process': id, 'from-module': id, 'pushed-for': id, scheduler: id, module: id };
  const t = (name: string, value: string): OutboxTag => ({ name, value });
  const fill = (bytes: number): OutboxTag[] => {
    // Tags whose list, with the MU's, comes to `bytes` exactly (multi-byte characters included).
    for (let n = 3000; n > 0; n--) {
      const own = [t('Note', 'é'.repeat(Math.floor(n / 2)) + 'x'.repeat(n % 2)), t('Pad', 'p'.repeat(900))];
      if (tagBytes(outboxTags('message', own, ids)) === bytes) return own;
    }
    throw new Error(`cannot make ${bytes}`);
  };
  const cases: { what: string; kind: 'message' | 'spawn'; entry: Record<string, unknown>; ok: boolean }[] = [
    { what: 'plain', kind: 'message', entry: { Target: id, Tags: [t('Action', 'Hi')] }, ok: true },
    { what: 'tag bytes at the limit', kind: 'message', entry: { Target: id, Tags: fill(MAX_TAG_BYTES) }, ok: true },
    { what: 'one byte past it', kind: 'message', entry: { Target: id, Tags: fill(MAX_TAG_BYTES + 1) }, ok: false },
    { what: '122 tags + 6', kind: 'message', entry: { Target: id, Tags: Array.from({ length: 122 }, (_, i) => t(`T${i}`, 'v')) }, ok: true },
    { what: '123 tags + 6', kind: 'message', entry: { Target: id, Tags: Array.from({ length: 123 }, (_, i) => t(`T${i}`, 'v')) }, ok: false },
    { what: 'a value of 3072 bytes', kind: 'message', entry: { Target: id, Tags: [t('V', 'v'.repeat(3072))] }, ok: true },
    { what: 'a value of 3073 bytes', kind: 'message', entry: { Target: id, Tags: [t('V', 'v'.repeat(3073))] }, ok: false },
    { what: 'an empty value', kind: 'message', entry: { Target: id, Tags: [t('V', '')] }, ok: false },
    { what: 'an empty reserved tag (dropped)', kind: 'message', entry: { Target: id, Tags: [t('Type', '')] }, ok: true },
    { what: 'a 32-byte anchor', kind: 'message', entry: { Target: id, Anchor: 'é'.repeat(16) }, ok: true },
    { what: 'a 33-byte anchor', kind: 'message', entry: { Target: id, Anchor: 'a'.repeat(33) }, ok: false },
    { what: 'a non-canonical Target', kind: 'message', entry: { Target: 'P'.repeat(43) }, ok: false },
    { what: 'a spawn with its own long Module', kind: 'spawn', entry: { Tags: [t('Module', 'm'.repeat(3072)), t('Pad', 'p'.repeat(1000))] }, ok: false },
    { what: 'a spawn', kind: 'spawn', entry: { Data: { any: 'json' }, Tags: [t('Name', 'kid')] }, ok: true },
  ];
  for (const c of cases) {
    const problem = outboxProblem(c.kind, c.entry, c.kind === 'spawn' ? { 'from-process': id, 'pushed-for': id, scheduler: id } : {});
    assert.equal(problem === null, c.ok, `${c.what}: ${problem}`);
    const own = (c.entry.Tags ?? []) as OutboxTag[];
    const module = c.kind === 'spawn' ? (own.find((x) => x.name === 'Module')?.value ?? id) : id;
    const anchor = typeof c.entry.Anchor === 'string' && utf8Bytes(c.entry.Anchor) <= 32 ? paddedAnchor(c.entry.Anchor) : typeof c.entry.Anchor === 'string' ? c.entry.Anchor : paddedAnchor('1');
    const building = createItem(JSON.stringify(c.entry.Data ?? ''), signer, {
      target: c.kind === 'message' ? (c.entry.Target as string) : undefined,
      anchor,
      tags: outboxTags(c.kind, own, { ...ids, module }),
    });
    if (c.ok) await building;
    else await assert.rejects(building, ItemError, c.what);
  }
  // Shapes that cannot even be put to createItem.
  for (const entry of [null, 7, [], { Target: id, Tags: 'Action=Hi' }, { Target: id, Tags: [{ name: 'A', value: 1 }] }, { Target: id, Anchor: 5 }, { Tags: [] }]) {
    assert.notEqual(outboxProblem('message', entry), null, JSON.stringify(entry));
  }
  assert.equal(outboxProblem('message', { Target: id, Data: 'd'.repeat(MAX_ITEM_BYTES) }), `the item would be ${MAX_ITEM_BYTES + 2 + 64 + 32 + 33 + 33 + 16 + tagBytes(outboxTags('message', [], ids))} bytes, at most ${MAX_ITEM_BYTES}`);
  assert.deepEqual(MU_ADDED_TAGS.message.map((x) => x.name), ['Data-Protocol', 'Type', 'Variant', 'From-Process', 'From-Module', 'Pushed-For']);
});
