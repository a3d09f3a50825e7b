// The Messenger Unit over real HTTP on 127.0.0.1. Most tests run it against `aoStub`: two small
// real HTTP servers that speak AO's SU and CU APIs (research/ao.md §2b, §2c) — the SU verifies and
// logs items and answers a repeated id with its first assignment; the CU answers GET /result from a
// per-process script — so that failures, delays and crashes can be staged and every byte checked.
// The last test runs it against the real SU (su.ts), CU (cu.ts) and locator (locate.ts).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fastify, type FastifyInstance } from 'fastify';
import { openComputeUnit, startComputeUnit } from '../../src/ao/cu.js';
import { locator } from '../../src/ao/locate.js';
import { publishModule } from '../../src/ao/modules.js';
import { openScheduler, startScheduler } from '../../src/ao/su.js';
import { freePort } from '../../src/ao/units.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import { openMessenger, startMessenger, type Messenger, type MessengerOptions } from '../../src/ao/mu.js';
import type { Outcome } from '../../src/ao/runtime.js';
import { createItem, tagValue, verifyItem, type Item, type Tag } from '../../src/store/items.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';

const MODULE = 'M'.repeat(43);
const OTHER_MODULE = 'N'.repeat(43);
const AO = [
  { name: 'Data-Protocol', value: 'ao' },
  { name: 'Variant', value: 'ao.TN.1' },
];

type Script = (message: Item, processId: string) => Partial<Outcome>;

interface Stub {
  su: string;
  cu: string;
  suAddress: string;
  /** Each process's log: items in slot order (the process itself first). */
  logs: Map<string, Item[]>;
  /** Every id POSTed to the SU, repeats included. */
  posts: string[];
  assignments: { process: string; message: string; id: string }[];
  /** `${pid}:${msg}` of every GET /result, 202s included. */
  results: string[];
  scripts: Map<string, Script>;
  /** GET /result answers 202 this many more times for `${pid}:${msg}` (or '*': all). */
  busy: Map<string, number>;
  /** Processes the SU refuses messages for (400). */
  refuse: Set<string>;
  /** A POST / whose item matches is logged, then its reply waits for `release`. */
  hold: { match: (item: Item) => boolean; reached: () => void; release: Promise<void> } | null;
  close(): Promise<void>;
}

async function listen(app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' });
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
}

/** The SU and CU, played by two real HTTP servers over one shared state. */
async function aoStub(): Promise<Stub> {
  const suWallet = await generateWallet('ed25519');
  const byId = new Map<string, { item: Item; process: string }>();
  const stub = {
    suAddress: walletAddress(suWallet),
    logs: new Map<string, Item[]>(),
    posts: [] as string[],
    assignments: [] as Stub['assignments'],
    results: [] as string[],
    scripts: new Map<string, Script>(),
    busy: new Map<string, number>(),
    refuse: new Set<string>(),
    hold: null as Stub['hold'],
  };

  const su = fastify({ logger: false });
  su.removeAllContentTypeParsers();
  su.addContentTypeParser('*', { parseAs: 'buffer' }, (_r, body, done) => done(null, body));
  su.get('/', async () => ({ timestamp: Date.now(), address: stub.suAddress }));
  su.get<{ Params: { pid: string } }>('/processes/:pid', async (request, reply) => {
    const log = stub.logs.get(request.params.pid);
    if (!log) return reply.code(404).send({ error: 'Process not found' });
    const p = log[0];
    return { process_id: p.id, block: '000000000001', owner: { address: p.address, key: p.owner }, tags: p.tags, timestamp: 0, data: p.data.toString(), anchor: p.anchor, signature: p.signature, target: p.target };
  });
  su.post<{ Querystring: { 'process-id'?: string; assign?: string } }>('/', async (request, reply) => {
    const { 'process-id': pid, assign } = request.query;
    if (pid || assign) {
      if (!pid || !assign || !stub.logs.has(pid)) return reply.code(400).send({ error: 'bad assignment' });
      const known = stub.assignments.find((a) => a.process === pid && a.message === assign);
      if (known) return { timestamp: Date.now(), id: known.id };
      const id = `A${String(stub.assignments.length).padStart(42, '0')}`;
      stub.assignments.push({ process: pid, message: assign, id });
      return { timestamp: Date.now(), id };
    }
    let item: Item;
    try {
      item = await verifyItem(request.body as Buffer);
    } catch (e) {
      return reply.code(400).send({ error: (e as Error).message });
    }
    stub.posts.push(item.id);
    const type = tagValue(item, 'Type');
    const process = type === 'Process' ? item.id : type === 'Message' ? item.target : null;
    if (!process) return reply.code(400).send({ error: 'Type must be Process or Message' });
    if (byId.has(item.id)) return { timestamp: Date.now(), id: item.id }; // idempotent, like AO's SU
    if (type === 'Message' && (!stub.logs.has(process) || stub.refuse.has(process))) return reply.code(400).send({ error: `Process ${process} not found` });
    byId.set(item.id, { item, process });
    if (type === 'Process') stub.logs.set(process, []);
    stub.logs.get(process)!.push(item);
    const hold = stub.hold;
    if (hold?.match(item)) {
      hold.reached();
      await hold.release;
    }
    return { timestamp: Date.now(), id: item.id };
  });

  const cu = fastify({ logger: false });
  cu.get<{ Params: { id: string }; Querystring: { 'process-id'?: string } }>('/result/:id', async (request, reply) => {
    const pid = request.query['process-id'] ?? '';
    const key = `${pid}:${request.params.id}`;
    stub.results.push(key);
    const busy = stub.busy.get(key) ?? stub.busy.get('*') ?? 0;
    if (busy > 0) {
      if (stub.busy.has(key)) stub.busy.set(key, busy - 1);
      return reply.code(202).send({ message: `Evaluation of process ${pid} is in progress.` });
    }
    const known = byId.get(request.params.id);
    const assigned = stub.assignments.some((a) => a.process === pid && a.message === request.params.id);
    if (!known || (known.process !== pid && !assigned)) return reply.code(404).send({ error: 'message not found' });
    const out = stub.scripts.get(pid)?.(known.item, pid) ?? {};
    return { Messages: [], Spawns: [], Assignments: [], Output: '', GasUsed: 0, ...out };
  });

  const suUrl = await listen(su);
  const cuUrl = await listen(cu);
  return Object.assign(stub, {
    su: suUrl,
    cu: cuUrl,
    async close() {
      await Promise.all([su.close(), cu.close()]);
    },
  });
}

interface Net {
  stub: Stub;
  mu: Messenger;
  url: string;
  dir: string;
  user: Wallet;
  lines: string[];
  reopen(extra?: Partial<MessengerOptions>): Promise<void>;
  close(): Promise<void>;
}

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

let muWallet: Wallet;

async function net(extra: Partial<MessengerOptions> = {}): Promise<Net> {
  muWallet ??= await generateWallet('ed25519');
  const stub = await aoStub();
  const dir = mkdtempSync(join(tmpdir(), 'verity-mu-'));
  dirs.push(dir);
  const lines: string[] = [];
  const n = { stub, dir, lines, user: await generateWallet('ed25519') } as Net;
  let server: { url: string; close(): Promise<void> } | null = null;
  n.reopen = async (more = {}) => {
    n.mu = openMessenger({
      dir,
      wallet: muWallet,
      scheduler: async () => stub.su,
      cu: stub.cu,
      retry: { attempts: 6, baseMs: 10 },
      log: (line) => lines.push(line),
      ...extra,
      ...more,
    });
    server = await startMessenger(n.mu, { port: 0 });
    n.url = server.url;
  };
  n.close = async () => {
    await server?.close();
    await n.mu.close();
  };
  await n.reopen();
  return n;
}

async function post(url: string, body?: Uint8Array, path = '/'): Promise<{ status: number; body: any }> {
  const res = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // text reply
  }
  return { status: res.status, body: parsed };
}

/** Spawns a process through the MU (as aoconnect's spawn does) and gives the stub CU its script. */
async function spawnProcess(n: Net, name: string, script?: Script): Promise<string> {
  const item = await createItem('process', walletSigner(n.user), {
    tags: [...AO, { name: 'Type', value: 'Process' }, { name: 'Module', value: MODULE }, { name: 'Scheduler', value: n.stub.suAddress }, { name: 'Name', value: name }],
  });
  if (script) n.stub.scripts.set(item.id, script);
  const r = await post(n.url, item.raw);
  assert.equal(r.status, 202, JSON.stringify(r.body));
  assert.deepEqual(r.body, { message: 'Processing DataItem', id: item.id });
  return item.id;
}

async function message(n: Net, target: string, action: string, data = 'hello'): Promise<Item> {
  return createItem(data, walletSigner(n.user), { target, tags: [...AO, { name: 'Type', value: 'Message' }, { name: 'Action', value: action }] });
}

async function send(n: Net, target: string, action: string, data?: string): Promise<string> {
  const item = await message(n, target, action, data);
  const r = await post(n.url, item.raw);
  assert.equal(r.status, 202, JSON.stringify(r.body));
  assert.deepEqual(r.body, { message: 'Processing DataItem', id: item.id });
  return item.id;
}

const pushed = (n: Net, pid: string): Item[] => n.stub.logs.get(pid)!.filter((i) => i.address === n.mu.address);
const action = (m: Item): string | undefined => tagValue(m, 'Action');

test('GET / and monitor', async () => {
  const n = await net();
  try {
    const root = await fetch(`${n.url}/`);
    assert.equal(root.status, 200);
    assert.equal(await root.text(), 'ao messenger unit');
    const pid = 'P'.repeat(43);
    const on = await post(n.url, undefined, `/monitor/${pid}`);
    assert.equal(on.status, 200);
    assert.match(on.body.message, /cron is not implemented/);
    assert.deepEqual(n.mu.monitors(), [pid]);
    const off = await fetch(`${n.url}/monitor/${pid}`, { method: 'DELETE' });
    assert.equal(off.status, 200);
    assert.deepEqual(n.mu.monitors(), []);
    assert.equal((await post(n.url, undefined, '/monitor/short')).status, 400);
  } finally {
    await n.close();
    await n.stub.close();
  }
});

test('bad items and bad requests get 4xx JSON', async () => {
  const n = await net();
  try {
    const pid = await spawnProcess(n, 'target');
    const good = await message(n, pid, 'Ping');
    const tampered = Buffer.from(good.raw);
    tampered[tampered.length - 1] ^= 1;
    const signer = walletSigner(n.user);
    const noProtocol = await createItem('x', signer, { target: pid, tags: [{ name: 'Type', value: 'Message' }] });
    const module = await createItem('x', signer, { tags: [...AO, { name: 'Type', value: 'Module' }] });
    const noTarget = await createItem('x', signer, { tags: [...AO, { name: 'Type', value: 'Message' }] });
    const unknown = await message(n, 'U'.repeat(43), 'Ping');
    const cases: [string, Uint8Array | undefined, string, RegExp][] = [
      ['empty', undefined, '/', /empty body/],
      ['garbage', Buffer.from('not a data item'), '/', /unsupported signature type|truncated/],
      ['tampered', tampered, '/', /bad signature/],
      ['no Data-Protocol', noProtocol.raw, '/', /Data-Protocol=ao/],
      ['Type=Module', module.raw, '/', /Process or Message/],
      ['no target', noTarget.raw, '/', /needs a target/],
      ['unknown process (the SU says 400)', unknown.raw, '/', /not found/],
      ['assign without assign', undefined, `/?process-id=${pid}`, /both process-id and assign/],
      ['assign with a bad id', undefined, `/?process-id=${pid}&assign=nope`, /43 base64url/],
    ];
    for (const [what, body, path, why] of cases) {
      const r = await post(n.url, body, path);
      assert.equal(r.status, 400, `${what}: ${JSON.stringify(r.body)}`);
      assert.match(r.body.error, why, what);
    }
    assert.equal((await fetch(`${n.url}/nowhere`)).status, 404);
    await n.mu.idle();
    assert.deepEqual(n.stub.logs.get(pid)!.length, 1, 'nothing bad reached the SU');
  } finally {
    await n.close();
    await n.stub.close();
  }
});

test('a message is forwarded, then its outbox is pushed with the MU tags, recursively', async () => {
  const n = await net();
  try {
    const b = await spawnProcess(n, 'b', (m) => (action(m) === 'Pong' ? { Messages: [{ Target: tagValue(m, 'From-Process')!, Tags: [{ name: 'Action', value: 'Thanks' }] }] } : {}));
    const a = await spawnProcess(n, 'a', (m) =>
      action(m) === 'Ping'
        ? {
            Messages: [
              {
                Target: b,
                Anchor: '7',
                Data: 'hi',
                Tags: [
                  { name: 'Action', value: 'Pong' },
                  { name: 'Data-Protocol', value: 'forged' },
                  { name: 'Type', value: 'Forged' },
                  { name: 'From-Process', value: 'forged' },
                  { name: 'From-Module', value: 'forged' },
                  { name: 'Assignments', value: 'forged' },
                  { name: 'Custom', value: '1' },
                ],
              },
              { Target: b, Tags: [{ name: 'Action', value: 'Pong' }] },
            ],
          }
        : {},
    );
    const id = await send(n, a, 'Ping');
    // 202 came after the SU accepted: it is in the log already.
    assert.ok(n.stub.logs.get(a)!.some((i) => i.id === id));
    await n.mu.idle();

    const toB = pushed(n, b);
    assert.equal(toB.length, 2);
    const [first, second] = toB;
    assert.deepEqual(first.tags, [
      { name: 'Action', value: 'Pong' },
      { name: 'Custom', value: '1' },
      { name: 'Data-Protocol', value: 'ao' },
      { name: 'Type', value: 'Message' },
      { name: 'Variant', value: 'ao.TN.1' },
      { name: 'From-Process', value: a },
      { name: 'From-Module', value: MODULE },
      { name: 'Pushed-For', value: id },
    ]);
    assert.equal(first.target, b);
    assert.equal(first.anchor, `${'0'.repeat(31)}7`);
    assert.equal(first.data.toString(), 'hi');
    assert.equal(first.address, n.mu.address);
    assert.equal(second.anchor!.length, 32, 'no Anchor: a derived one keeps equal messages distinct');
    assert.notEqual(second.anchor, first.anchor);
    // b's replies to both were cranked in turn, still Pushed-For the client's message.
    const toA = pushed(n, a);
    assert.deepEqual(toA.map(action), ['Thanks', 'Thanks']);
    for (const m of toA) {
      assert.equal(tagValue(m, 'Pushed-For'), id);
      assert.equal(tagValue(m, 'From-Process'), b);
    }
    const jobs = n.mu.jobs();
    assert.ok(jobs.every((j) => j.state === 'done'), JSON.stringify(jobs));
    assert.deepEqual(jobs.filter((j) => j.kind === 'push').map((j) => j.itemId), [...toB, ...toA].map((m) => m.id));
    assert.ok(n.stub.results.includes(`${a}:${id}`) && n.stub.results.includes(`${b}:${first.id}`) && n.stub.results.includes(`${a}:${toA[1].id}`));
    assert.equal(new Set(n.stub.posts).size, n.stub.posts.length, 'each id sent once');
  } finally {
    await n.close();
    await n.stub.close();
  }
});

test('spawns become Process items on the parent scheduler; their boot result is cranked', async () => {
  const n = await net();
  try {
    const parent = await spawnProcess(n, 'parent', (m) =>
      action(m) === 'Spawn'
        ? {
            Spawns: [
              { Data: 'child one', Tags: [{ name: 'Name', value: 'one' }, { name: 'Type', value: 'Forged' }] },
              { Tags: [{ name: 'Name', value: 'two' }, { name: 'Module', value: OTHER_MODULE }], Anchor: '3' },
            ],
          }
        : {},
    );
    const id = await send(n, parent, 'Spawn');
    await n.mu.idle();
    const children = [...n.stub.logs.values()].map((log) => log[0]).filter((p) => p.address === n.mu.address);
    assert.equal(children.length, 2);
    const [one, two] = children;
    assert.deepEqual(one.tags, [
      { name: 'Name', value: 'one' },
      { name: 'Data-Protocol', value: 'ao' },
      { name: 'Type', value: 'Process' },
      { name: 'Variant', value: 'ao.TN.1' },
      { name: 'From-Process', value: parent },
      { name: 'Pushed-For', value: id },
      { name: 'Scheduler', value: n.stub.suAddress },
      { name: 'Module', value: MODULE },
    ]);
    assert.equal(one.target, null);
    assert.equal(one.data.toString(), 'child one');
    assert.equal(tagValue(two, 'Module'), OTHER_MODULE);
    assert.equal(two.anchor, `${'0'.repeat(31)}3`);
    for (const c of children) assert.ok(n.stub.results.includes(`${c.id}:${c.id}`), 'boot result cranked');
  } finally {
    await n.close();
    await n.stub.close();
  }
});

test('assignments from an outbox and from POST /?process-id&assign', async () => {
  const n = await net();
  try {
    const b = await spawnProcess(n, 'b');
    const c = await spawnProcess(n, 'c');
    const x = await spawnProcess(n, 'x', (m) => (action(m) === 'Share' ? { Assignments: [{ Processes: [b, c], Message: m.id }] } : {}));
    const id = await send(n, x, 'Share');
    await n.mu.idle();
    assert.deepEqual(n.stub.assignments.map((a) => [a.process, a.message]), [[b, id], [c, id]]);
    assert.ok(n.stub.results.includes(`${b}:${id}`) && n.stub.results.includes(`${c}:${id}`), 'assigned message cranked on each process');
    const jobs = n.mu.jobs().filter((j) => j.kind === 'assign');
    assert.deepEqual(jobs.map((j) => j.itemId), n.stub.assignments.map((a) => a.id));

    const direct = await post(n.url, undefined, `/?process-id=${x}&assign=${n.stub.logs.get(b)![0].id}`);
    assert.equal(direct.status, 202);
    assert.deepEqual(direct.body, { message: 'Processing Assignment', id: n.stub.assignments[2].id });
    await n.mu.idle();
  } finally {
    await n.close();
    await n.stub.close();
  }
});

test('ping-pong stops at the depth cap with a log line', async () => {
  const n = await net({ limits: { depth: 3 } });
  try {
    const bounce = (m: Item, pid: string): Partial<Outcome> => ({ Messages: [{ Target: tagValue(m, 'From-Process') ?? tagValue(m, 'Reply-To')!, Tags: [{ name: 'Action', value: 'Ball' }, { name: 'Reply-To', value: pid }] }] });
    const p = await spawnProcess(n, 'p', (m, pid) => (m.id === pid ? {} : bounce(m, pid)));
    const q = await spawnProcess(n, 'q', (m, pid) => (m.id === pid ? {} : bounce(m, pid)));
    const serve = await createItem('ball', walletSigner(n.user), { target: p, tags: [...AO, { name: 'Type', value: 'Message' }, { name: 'Reply-To', value: q }] });
    assert.equal((await post(n.url, serve.raw)).status, 202);
    await n.mu.idle();
    assert.equal(pushed(n, p).length + pushed(n, q).length, 3);
    assert.equal(n.lines.filter((l) => l.includes('depth cap 3')).length, 1, n.lines.join('\n'));
    assert.ok(n.mu.jobs().some((j) => j.kind === 'crank' && j.depth === 3 && j.state === 'failed' && /^depth cap 3: 1 outbox entries/.test(j.reason ?? '')));
  } finally {
    await n.close();
    await n.stub.close();
  }
});

test('a result with more outbox entries than the fan-out cap pushes the first ones and says so', async () => {
  const n = await net({ limits: { fanout: 2 } });
  try {
    const sink = await spawnProcess(n, 'sink');
    const wide = await spawnProcess(n, 'wide', (m) => (action(m) === 'Go' ? { Messages: [0, 1, 2].map((i) => ({ Target: sink, Data: `w${i}`, Tags: [] })) } : {}));
    await send(n, wide, 'Go');
    await n.mu.idle();
    assert.deepEqual(pushed(n, sink).map((m) => m.data.toString()), ['w0', 'w1']);
    assert.equal(n.lines.filter((l) => l.includes('fan-out cap 2: 1 of 3')).length, 1, n.lines.join('\n'));
    // Recorded as failed with the cap's reason; the allowed entries went, and nothing is retried.
    const crank = n.mu.jobs().find((j) => j.kind === 'crank' && j.reason?.startsWith('fan-out cap'))!;
    assert.equal(crank.state, 'failed');
    assert.equal(crank.attempts, 1);
  } finally {
    await n.close();
    await n.stub.close();
  }
});

test('a CU answering 202 is retried with backoff; an SU 4xx is recorded as failed', async () => {
  const n = await net();
  try {
    const sink = await spawnProcess(n, 'sink');
    const refused = await spawnProcess(n, 'refused');
    n.stub.refuse.add(refused);
    const a = await spawnProcess(n, 'a', (m) =>
      action(m) === 'Go'
        ? {
            Messages: [
              { Target: refused, Tags: [{ name: 'Action', value: 'Nope' }] },
              { Target: sink, Tags: [{ name: 'Action', value: 'Yes' }] },
            ],
          }
        : {},
    );
    const go = await message(n, a, 'Go');
    n.stub.busy.set(`${a}:${go.id}`, 3);
    assert.equal((await post(n.url, go.raw)).status, 202);
    await n.mu.idle();
    assert.equal(n.stub.results.filter((k) => k === `${a}:${go.id}`).length, 4, 'three 202s, then the result');
    assert.deepEqual(pushed(n, sink).map(action), ['Yes']);
    const crank = n.mu.jobs().find((j) => j.key === `crank:${a}:${go.id}`)!;
    assert.equal(crank.state, 'done');
    assert.equal(crank.attempts, 4);
    const failed = n.mu.jobs().find((j) => j.key === `push:${a}:${go.id}:0`)!;
    assert.equal(failed.state, 'failed');
    assert.equal(failed.attempts, 1, 'a 4xx is not retried');
    assert.match(failed.reason!, /400 .*not found/);
    assert.ok(n.lines.some((l) => l.includes(failed.key) && l.includes('failed')));
  } finally {
    await n.close();
    await n.stub.close();
  }
});

test('crash-resume: work queued at close is finished on reopen, each outbox message reaching the SU once', async () => {
  const n = await net({ retry: { attempts: 50, baseMs: 20, maxMs: 200 } });
  try {
    const b = await spawnProcess(n, 'b');
    const fan = await spawnProcess(n, 'fan', (m) =>
      action(m) === 'Fan' ? { Messages: [0, 1, 2].map((i) => ({ Target: b, Data: `m${i}`, Tags: [{ name: 'Action', value: 'Part' }] })) } : {},
    );
    const slow = await spawnProcess(n, 'slow', (m) => (action(m) === 'Later' ? { Messages: [{ Target: b, Data: 'late', Tags: [{ name: 'Action', value: 'Part' }] }] } : {}));
    await n.mu.idle();

    // The SU logs m1, and the MU is closed before it hears back: "accepted, not yet marked done".
    let reached!: () => void;
    const held = new Promise<void>((resolve) => (reached = resolve));
    let release!: () => void;
    n.stub.hold = { match: (item) => item.data.toString() === 'm1', reached, release: new Promise<void>((resolve) => (release = resolve)) };
    const later = await message(n, slow, 'Later');
    n.stub.busy.set(`${slow}:${later.id}`, 1000); // its crank sits in backoff
    assert.equal((await post(n.url, later.raw)).status, 202);
    await send(n, fan, 'Fan');
    await held;
    await n.close();
    release();
    n.stub.hold = null;

    n.stub.busy.clear();
    await n.reopen();
    const queued = n.mu.jobs().filter((j) => j.state === 'pending');
    assert.ok(queued.some((j) => j.key === `crank:${slow}:${later.id}`), 'the backed-off crank survived');
    const m1 = queued.find((j) => j.key.startsWith(`push:${fan}:`) && j.key.endsWith(':1'))!;
    assert.ok(m1.itemId, 'the built item id was recorded before sending');
    await n.mu.idle();

    const parts = pushed(n, b);
    assert.deepEqual(parts.map((m) => m.data.toString()).sort(), ['late', 'm0', 'm1', 'm2']);
    assert.deepEqual(parts.filter((m) => m.data.toString().startsWith('m')).map((m) => m.data.toString()), ['m0', 'm1', 'm2'], 'in outbox order');
    assert.equal(new Set(parts.map((m) => m.id)).size, parts.length, 'the SU holds each id once');
    assert.equal(parts.find((m) => m.data.toString() === 'm1')!.id, m1.itemId, 'the re-sent item is the same item');
    const sent = (id: string): number => n.stub.posts.filter((p) => p === id).length;
    assert.equal(sent(m1.itemId!), 2, 'm1 was sent again after the restart and the SU kept one');
    for (const m of parts.filter((p) => p.id !== m1.itemId)) assert.equal(sent(m.id), 1);
    assert.ok(n.mu.jobs().every((j) => j.state === 'done'));
  } finally {
    await n.close();
    await n.stub.close();
  }
});

test('an Arweave (RSA) wallet is refused', async () => {
  // RSA-PSS signatures are salted: a re-sent outbox item would get a new id and be scheduled twice.
  const rsa = { type: 'arweave', jwk: {} } as unknown as Wallet;
  assert.throws(() => openMessenger({ dir: join(tmpdir(), 'verity-mu-never'), wallet: rsa, scheduler: async () => '', cu: '' }), /Ed25519/);
});

const PINGPONG = `
const tag = (m, name) => (m.Tags.find((t) => t.name === name) || {}).value;
export function handle(state, m) {
  const seen = ((state && state.seen) || 0) + 1;
  switch (tag(m, 'Action')) {
    case 'Ping': return { state: { seen }, Messages: [{ Target: tag(m, 'Peer'), Data: 'pong?', Tags: [{ name: 'Action', value: 'Pong' }] }] };
    case 'Pong': return { state: { seen }, Messages: [{ Target: m.From, Anchor: '1', Tags: [{ name: 'Action', value: 'Thanks' }] }] };
    case 'Make': return { state: { seen }, Spawns: [{ Data: 'kid', Tags: [{ name: 'Name', value: 'kid' }] }] };
    default: return { state: { seen }, Output: tag(m, 'Action') || 'boot' };
  }
}`;

/** Plays PINGPONG's logic as a CU would, reading each message from the real SU over HTTP. */
async function scriptedCu(suUrl: string): Promise<{ url: string; close(): Promise<void> }> {
  const app = fastify({ logger: false });
  app.get<{ Params: { id: string }; Querystring: { 'process-id': string } }>('/result/:id', async (request, reply) => {
    const pid = request.query['process-id'];
    const res = await fetch(request.params.id === pid ? `${suUrl}/processes/${pid}` : `${suUrl}/${request.params.id}?process-id=${pid}`);
    if (!res.ok) return reply.code(404).send({ error: 'not on the SU' });
    const body = (await res.json()) as { message?: { tags: Tag[]; owner: { address: string } } };
    const m = body.message ?? { tags: [], owner: { address: '' } };
    const tag = (name: string): string | undefined => m.tags.find((t) => t.name === name)?.value;
    const out = { Messages: [] as unknown[], Spawns: [] as unknown[], Assignments: [], Output: tag('Action') ?? 'boot', GasUsed: 0 };
    if (tag('Action') === 'Ping') out.Messages.push({ Target: tag('Peer'), Data: 'pong?', Tags: [{ name: 'Action', value: 'Pong' }] });
    if (tag('Action') === 'Pong') out.Messages.push({ Target: tag('From-Process') ?? m.owner.address, Anchor: '1', Tags: [{ name: 'Action', value: 'Thanks' }] });
    if (tag('Action') === 'Make') out.Spawns.push({ Data: 'kid', Tags: [{ name: 'Name', value: 'kid' }] });
    return out;
  });
  return { url: await listen(app), close: () => app.close() };
}

/** The MU between the real SU (su.ts) and locator (locate.ts), and the real CU (cu.ts) or a scripted one. */
async function realStack(realCu: boolean): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'verity-mu-real-'));
  dirs.push(dir);
  const store = openSqliteStore(join(dir, 'store'));
  const suWallet = await generateWallet('ed25519');
  const user = await generateWallet('ed25519');
  muWallet ??= await generateWallet('ed25519');
  // The SU publishes its URL in its Scheduler-Location record, so it needs its port first.
  const suPort = await freePort();
  const su = openScheduler({ dir: join(dir, 'su'), store, wallet: suWallet, url: `http://127.0.0.1:${suPort}` });
  const suServer = await startScheduler(su, { port: suPort });
  const locate = locator(store);
  const cu = realCu ? await openComputeUnit({ dir: join(dir, 'cu'), store, wallet: await generateWallet('ed25519'), scheduler: locate }) : null;
  const cuServer = cu ? await startComputeUnit(cu, { port: 0 }) : await scriptedCu(suServer.url);
  const lines: string[] = [];
  const mu = openMessenger({ dir: join(dir, 'mu'), wallet: muWallet, scheduler: locate, cu: cuServer.url, retry: { attempts: 6, baseMs: 20 }, log: (l) => lines.push(l) });
  const muServer = await startMessenger(mu, { port: 0 });
  try {
    const module = await publishModule(store, walletSigner(user), PINGPONG, 'pingpong');
    const spawnOne = async (name: string): Promise<string> => {
      const p = await createItem('', walletSigner(user), {
        // Authority: the process trusts this MU to say which process a pushed message comes from.
        tags: [...AO, { name: 'Type', value: 'Process' }, { name: 'Module', value: module }, { name: 'Scheduler', value: su.address }, { name: 'Name', value: name }, { name: 'Authority', value: mu.address }],
      });
      // A brand-new process is in no store yet: the MU finds its SU by the Scheduler tag.
      const r = await post(muServer.url, p.raw);
      assert.equal(r.status, 202, JSON.stringify(r.body));
      return p.id;
    };
    const a = await spawnOne('a');
    const b = await spawnOne('b');
    const ping = await createItem('ping', walletSigner(user), { target: a, tags: [...AO, { name: 'Type', value: 'Message' }, { name: 'Action', value: 'Ping' }, { name: 'Peer', value: b }] });
    assert.equal((await post(muServer.url, ping.raw)).status, 202);
    const make = await createItem('make', walletSigner(user), { target: a, tags: [...AO, { name: 'Type', value: 'Message' }, { name: 'Action', value: 'Make' }] });
    assert.equal((await post(muServer.url, make.raw)).status, 202);
    const nowhere = await createItem('x', walletSigner(user), { target: 'Q'.repeat(43), tags: [...AO, { name: 'Type', value: 'Message' }] });
    const refused = await post(muServer.url, nowhere.raw);
    assert.ok(refused.status >= 400 && refused.status < 500, JSON.stringify(refused));
    await mu.idle();
    assert.ok(mu.jobs().every((j) => j.state === 'done'), lines.join('\n'));

    const log = async (pid: string) => (await su.messages(pid, { limit: 100 }))!.edges.map((e) => e.node.message!);
    const [logA, logB] = [await log(a), await log(b)];
    assert.deepEqual(logB.map((m) => tagValue(m, 'Action') ?? 'process'), ['process', 'Pong']);
    const pong = logB[1];
    assert.equal(pong.owner.address, mu.address);
    assert.deepEqual(pong.tags.slice(1), [
      { name: 'Data-Protocol', value: 'ao' },
      { name: 'Type', value: 'Message' },
      { name: 'Variant', value: 'ao.TN.1' },
      { name: 'From-Process', value: a },
      { name: 'From-Module', value: module },
      { name: 'Pushed-For', value: ping.id },
    ]);
    assert.deepEqual(logA.map((m) => tagValue(m, 'Action') ?? 'process'), ['process', 'Ping', 'Make', 'Thanks']);
    assert.equal(logA[3].anchor, `${'0'.repeat(31)}1`);
    const thanks = (await (await fetch(`${cuServer.url}/result/${logA[3].id}?process-id=${a}`)).json()) as { Output: unknown };
    assert.equal(thanks.Output, 'Thanks', 'the CU evaluated the pushed reply');

    const kid = mu.jobs().find((j) => j.kind === 'spawn')!;
    const child = await su.process(kid.itemId!);
    assert.ok(child, 'the child is a process on the same SU');
    assert.equal(tagValue(child!, 'From-Process'), a);
    assert.equal(tagValue(child!, 'Scheduler'), su.address);
    assert.equal(tagValue(child!, 'Module'), module);
    assert.equal(tagValue(child!, 'Pushed-For'), make.id);
    const ids = [...logA, ...logB].map((m) => m.id);
    assert.equal(new Set(ids).size, ids.length);

    // Sent again (as after a crash), a pushed item gets its first slot back: still scheduled once.
    const again = await fetch(`${suServer.url}/`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: (await store.get(pong.id))!.raw });
    assert.equal(again.status, 200);
    assert.equal((await log(b)).length, 2);
  } finally {
    await muServer.close();
    await mu.close();
    await cuServer.close();
    await cu?.close();
    await suServer.close();
    await su.close();
    await store.close();
  }
}

test('against the real SU and locator (CU scripted): messages, replies and a spawn, each scheduled once', () => realStack(false));

test('against the real SU, CU and locator: the same, evaluated by the real process runtime', () => realStack(true));
