// The units as separate processes (`verity gateway|su|cu|mu`, sharing one store folder), killed with
// SIGKILL at random points while 1,000 messages flow through them: no acknowledged message is lost,
// and every outbox message reaches its target's SU log exactly once. (The gateway-only wiring is
// exercised by tests/network/separate.test.ts.)
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { test } from 'node:test';
import { publishModule } from '../../src/ao/modules.js';
import { freePort } from '../../src/ao/units.js';
import { createItem, tagValue, type Tag } from '../../src/store/items.js';
import { openGatewayStore } from '../../src/store/gateway-store.js';
import { generateWallet, walletSigner } from '../../src/store/wallet.js';
import { pool, serveCli, withTempDir, type ServingCli } from '../helpers.js';

const MESSAGES = 1000;

// A forwards every Work message to the sink named in it; the sink counts what it receives.
const FORWARD = `
export function handle(state, msg) {
  const tag = (n) => (msg.Tags.find((t) => t.name === n) || {}).value;
  if (tag('Action') !== 'Work') return { state: state ?? {}, Output: 'booted' };
  return { state: state ?? {}, Output: tag('N'), Messages: [{ Target: tag('Sink'), Tags: [{ name: 'Action', value: 'Record' }, { name: 'N', value: tag('N') }] }] };
}`;
const SINK = `
export function handle(state, msg) {
  const s = state ?? { count: 0, seen: {} };
  const n = (msg.Tags.find((t) => t.name === 'N') || {}).value;
  if (n === undefined) return { state: s, Output: 'booted' };
  s.count += 1;
  s.seen[n] = (s.seen[n] || 0) + 1;
  return { state: s, Output: s.count };
}`;

/** A small seeded generator: the kill schedule is random but repeatable. */
function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const AO = (type: string): Tag[] => [{ name: 'Data-Protocol', value: 'ao' }, { name: 'Variant', value: 'ao.TN.1' }, { name: 'Type', value: type }];

/** POSTs the same signed bytes until a unit acknowledges them (a retry never creates a new message). */
async function deliver(url: string, raw: Uint8Array, deadline: number): Promise<{ id: string }> {
  for (;;) {
    try {
      const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: raw });
      const body = (await res.json()) as { id?: string; error?: string };
      if (res.ok && body.id) return { id: body.id };
      if (res.status >= 400 && res.status < 500) throw new Error(`refused: ${res.status} ${body.error}`);
    } catch (e) {
      if ((e as Error).message.startsWith('refused')) throw e;
    }
    if (Date.now() > deadline) throw new Error(`${url} never acknowledged`);
    await sleep(100);
  }
}

interface LogSlot {
  assignment: { id: string; tags: Tag[] };
  message: { id: string; tags: Tag[] } | null;
}

async function slots(su: string, pid: string): Promise<LogSlot[]> {
  const nodes: LogSlot[] = [];
  let from: string | undefined;
  for (;;) {
    const res = await fetch(`${su}/${pid}?limit=1000${from === undefined ? '' : `&from=${from}`}`);
    const page = (await res.json()) as { page_info: { has_next_page: boolean }; edges: { cursor: string; node: LogSlot }[] };
    nodes.push(...page.edges.map((e) => e.node));
    if (!page.page_info.has_next_page) return nodes;
    from = page.edges.at(-1)!.cursor;
  }
}

test('kill -9 of the SU, CU or MU during a 1,000-message run loses nothing and delivers every outbox message exactly once', { timeout: 300_000 }, (t) =>
  withTempDir(async (dir) => {
    const random = mulberry32(20261122);
    const ports = { gateway: await freePort(), su: await freePort(), cu: await freePort(), mu: await freePort() };
    const url = (unit: keyof typeof ports): string => `http://127.0.0.1:${ports[unit]}`;
    const gateway = await serveCli(['gateway', '--store', join(dir, 'store'), '--port', String(ports.gateway)]);
    const args = {
      su: ['su', '--store', join(dir, 'store'), '--dir', join(dir, 'su'), '--port', String(ports.su)],
      cu: ['cu', '--store', join(dir, 'store'), '--dir', join(dir, 'cu'), '--port', String(ports.cu)],
      mu: ['mu', '--store', join(dir, 'store'), '--dir', join(dir, 'mu'), '--port', String(ports.mu), '--cu', url('cu')],
    };
    const units: Record<'su' | 'cu' | 'mu', ServingCli> = { su: await serveCli(args.su), cu: await serveCli(args.cu), mu: await serveCli(args.mu) };
    const kills = { su: 0, cu: 0, mu: 0 };
    try {
      const store = openGatewayStore(url('gateway'));
      const wallet = await generateWallet('ed25519');
      const signer = walletSigner(wallet);
      const scheduler = units.su.info.address;
      const spawnProcess = async (source: string, name: string): Promise<string> => {
        const module = await publishModule(store, signer, source, name);
        const item = await createItem('', signer, { tags: [...AO('Process'), { name: 'Module', value: module }, { name: 'Scheduler', value: scheduler }, { name: 'Name', value: name }] });
        return (await deliver(url('mu'), item.raw, Date.now() + 30_000)).id;
      };
      const forward = await spawnProcess(FORWARD, 'forward');
      const sink = await spawnProcess(SINK, 'sink');
      const items = await Promise.all(
        Array.from({ length: MESSAGES }, (_, n) =>
          createItem(String(n), signer, { target: forward, tags: [...AO('Message'), { name: 'Action', value: 'Work' }, { name: 'N', value: String(n) }, { name: 'Sink', value: sink }] }),
        ),
      );

      // Kill a random unit every 0.3–1.2 s while the messages go in, and once more while they drain.
      let sending = true;
      const killer = (async () => {
        let rounds = 0;
        while (sending || rounds < 3) {
          await sleep(300 + random() * 900);
          const unit = (['su', 'cu', 'mu'] as const)[Math.floor(random() * 3)];
          await units[unit].stop('SIGKILL');
          kills[unit] += 1;
          rounds += 1;
          units[unit] = await serveCli(args[unit]);
        }
      })();
      const started = Date.now();
      const deadline = started + 200_000;
      const acknowledged = await pool(items, 8, (item) => deliver(url('mu'), item.raw, deadline));
      sending = false;
      t.diagnostic(`acknowledged ${MESSAGES} in ${Date.now() - started} ms`);
      await killer;
      assert.deepEqual(
        acknowledged.map((a) => a.id),
        items.map((i) => i.id),
      );

      // Every outbox message reaches the sink's log: wait for the MU to drain its queue.
      let sinkLog = await slots(url('su'), sink);
      while (sinkLog.length < MESSAGES + 1 && Date.now() < deadline) {
        await sleep(250);
        sinkLog = await slots(url('su'), sink);
      }
      const forwardLog = await slots(url('su'), forward);
      t.diagnostic(`drained in ${Date.now() - started} ms; killed ${JSON.stringify(kills)}`);

      for (const [label, pid, log] of [['forward', forward, forwardLog], ['sink', sink, sinkLog]] as const) {
        assert.equal(log.length, MESSAGES + 1, `${label}: the process and ${MESSAGES} messages`);
        let chain = createHash('sha256').update(Buffer.from(pid, 'base64url')).digest('base64url');
        log.forEach((slot, i) => {
          assert.equal(tagValue(slot.assignment, 'Nonce'), String(i), `${label} slot ${i}`);
          assert.equal(tagValue(slot.assignment, 'Hash-Chain'), chain, `${label} chain at ${i}`);
          chain = createHash('sha256').update(Buffer.from(slot.assignment.id, 'base64url')).update(Buffer.from(chain, 'base64url')).digest('base64url');
        });
        const ns = log.slice(1).map((slot) => Number(tagValue(slot.message!, 'N')));
        assert.deepEqual([...ns].sort((a, b) => a - b), Array.from({ length: MESSAGES }, (_, n) => n), `${label}: each message exactly once`);
      }
      for (const slot of sinkLog.slice(1)) assert.equal(tagValue(slot.message!, 'From-Process'), forward);

      // The restarted CU evaluates the sink to the same count: nothing twice, nothing missing.
      const state = (await (await fetch(`${url('cu')}/state/${sink}`)).json()) as { count: number; seen: Record<string, number> };
      assert.equal(state.count, MESSAGES);
      assert.ok(Object.values(state.seen).every((c) => c === 1));
      assert.ok(kills.su + kills.cu + kills.mu >= 3, `killed ${JSON.stringify(kills)}`);
      // A unit's crash may be logged, but nothing failed for good.
      assert.doesNotMatch(units.mu.stderr(), /failed:/);
    } finally {
      await Promise.all(Object.values(units).map((u) => u.stop('SIGKILL')));
      await gateway.stop();
    }
  }),
);
