// The AO units together, driven by the unmodified @permaweb/aoconnect client in legacy mode.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { AddressInfo } from 'node:net';
import { connect, createDataItemSigner } from '@permaweb/aoconnect';
import fastify from 'fastify';
import { openComputeUnit, verifyAttestation, type Result } from '../../src/ao/cu.js';
import { publishModule } from '../../src/ao/modules.js';
import { startUnits, unitWallet, type RunningUnits } from '../../src/ao/units.js';
import { createItem, tagValue, type Tag } from '../../src/store/items.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { PINGPONG } from './fixtures/processes.js';

const COUNTER = `
export function handle(state, msg, env) {
  const s = state ?? { count: 0, owner: env.Process.Owner };
  const action = (msg.Tags.find((t) => t.name === 'Action') || {}).value;
  if (action === 'Inc') { s.count += Number(msg.Data || 1); return { state: s, Output: { count: s.count, from: msg.From } }; }
  if (action === 'Get') return { state: s, Output: { count: s.count } };
  if (action === 'Where') return { state: s, Output: { target: msg.Target } };
  if (action === 'Now') return { state: s, Output: Date.now() };
  if (action === 'Rand') return { state: s, Output: Math.random() };
  if (action === 'Later') { setTimeout(() => {}, 1); return { state: s }; }
  if (action === 'Spin') { s.count = -1; for (;;); }
  if (action === 'Fail') throw new Error('asked to fail');
  return { state: s, Output: 'booted' };
}`;


/** An aoconnect signer for an Ed25519 wallet: aoconnect accepts a signer that returns the signed item. */
function ed25519Signer(wallet: Wallet) {
  return async (create: (a: { passthrough: true }) => Promise<{ data: string | Uint8Array; tags: Tag[]; target?: string; anchor?: string }>) => {
    const { data, tags, target, anchor } = await create({ passthrough: true });
    const item = await createItem(data ?? '', walletSigner(wallet), { tags, target: target || undefined, anchor: anchor || undefined });
    return { id: item.id, raw: item.raw };
  };
}

/** The part of aoconnect's legacy API used here; its own typings cover the mainnet variant and omit the CU's Attestation. */
type ResultReply = { Output: any; Error?: unknown; Attestation?: unknown };
interface LegacyAo {
  spawn(a: { module: string; scheduler: string; signer: unknown; tags?: Tag[] }): Promise<string>;
  message(a: { process: string; signer: unknown; tags?: Tag[]; data?: string }): Promise<string>;
  result(a: { process: string; message: string }): Promise<ResultReply>;
  results(a: { process: string; sort?: 'ASC' | 'DESC'; limit?: number }): Promise<{ edges: { node: ResultReply }[] }>;
  dryrun(a: { process: string; tags?: Tag[]; data?: string }): Promise<ResultReply>;
  assign(a: { process: string; message: string }): Promise<string>;
}

const AO = (type: string): Tag[] => [{ name: 'Data-Protocol', value: 'ao' }, { name: 'Variant', value: 'ao.TN.1' }, { name: 'Type', value: type }];

describe('the AO units with aoconnect', { timeout: 120_000 }, () => {
  let dir: string;
  let units: RunningUnits;
  let ao: LegacyAo;
  let ed: Wallet;
  let rsa: Wallet;
  let counter: string;
  let pingpong: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'verity-units-'));
    units = await startUnits({ dir });
    ao = connect({ MODE: 'legacy', MU_URL: units.urls.mu, CU_URL: units.urls.cu, GATEWAY_URL: units.urls.gateway }) as unknown as LegacyAo;
    [ed, rsa] = await Promise.all([generateWallet('ed25519'), generateWallet('arweave')]);
    counter = await publishModule(units.store, walletSigner(ed), COUNTER, 'counter');
    pingpong = await publishModule(units.store, walletSigner(ed), PINGPONG, 'pingpong');
  });
  after(async () => {
    await units?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const kind of ['ed25519', 'arweave'] as const) {
    test(`spawn, message, result, results and dryrun with an ${kind} signer`, async () => {
      const wallet = kind === 'ed25519' ? ed : rsa;
      const signer = kind === 'ed25519' ? ed25519Signer(wallet) : createDataItemSigner(rsa.type === 'arweave' ? rsa.jwk : undefined);
      const process = await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer, tags: [{ name: 'Name', value: `counter-${kind}` }] });
      const sent: string[] = [];
      for (const n of [1, 2, 3]) sent.push(await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: String(n) }));
      const last = await ao.result({ process, message: sent[2] });
      assert.deepEqual(last.Output, { count: 6, from: walletAddress(wallet) });
      const attestation = await verifyAttestation(last as unknown as Result);
      assert.deepEqual(attestation, { address: units.compute.address, process, message: sent[2], nonce: 3, resultsChain: attestation.resultsChain });
      assert.equal(attestation.resultsChain, (await units.compute.state(process)).resultsChain);
      const altered = { ...last, Output: { count: 7, from: walletAddress(wallet) } } as unknown as Result;
      await assert.rejects(verifyAttestation(altered), /another output/);
      const all = await ao.results({ process, sort: 'ASC', limit: 10 });
      assert.deepEqual(all.edges.map((e: { node: { Output: unknown } }) => e.node.Output), ['booted', { count: 1, from: walletAddress(wallet) }, { count: 3, from: walletAddress(wallet) }, { count: 6, from: walletAddress(wallet) }]);
      const dry = await ao.dryrun({ process, tags: [{ name: 'Action', value: 'Get' }] });
      assert.deepEqual(dry.Output, { count: 6 });
      // A dry run changes nothing.
      assert.deepEqual((await ao.dryrun({ process, tags: [{ name: 'Action', value: 'Get' }] })).Output, { count: 6 });
      const failed = await ao.result({ process, message: await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Fail' }] }) });
      assert.match(String(failed.Error), /asked to fail/);
      assert.deepEqual((await ao.dryrun({ process, tags: [{ name: 'Action', value: 'Get' }] })).Output, { count: 6 }, 'the failed message rolled back');
    });
  }

  test('a process using a forbidden global or running past its compute limit fails with a clear error; its state is untouched', async () => {
    const signer = ed25519Signer(ed);
    const limited = await publishModule(units.store, walletSigner(ed), COUNTER, 'counter-limited', { limits: { memory: 16 * 2 ** 20, compute: 50 } });
    const process = await ao.spawn({ module: limited, scheduler: units.scheduler.address, signer });
    await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: '7' });
    const cases: [string, RegExp][] = [
      ['Now', /Date is not available in a process: a process has no clock/],
      ['Rand', /Math.random is not available in a process/],
      ['Later', /setTimeout is not available in a process/],
      ['Spin', /compute limit: more than 50 ticks/],
    ];
    for (const [action, error] of cases) {
      const r = await ao.result({ process, message: await ao.message({ process, signer, tags: [{ name: 'Action', value: action }] }) });
      assert.match(String(r.Error), error, action);
    }
    assert.deepEqual((await ao.dryrun({ process, tags: [{ name: 'Action', value: 'Get' }] })).Output, { count: 7 });
  });

  test('a From-Process tag names the sender only when an Authority of the process signed the message', async () => {
    const signer = ed25519Signer(ed);
    const process = await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer, tags: [{ name: 'Authority', value: walletAddress(rsa) }] });
    const forged = await ao.result({ process, message: await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }, { name: 'From-Process', value: counter }], data: '1' }) });
    assert.deepEqual(forged.Output, { count: 1, from: walletAddress(ed) });
    const rsaSigner = createDataItemSigner(rsa.type === 'arweave' ? rsa.jwk : undefined);
    const vouched = await ao.result({ process, message: await ao.message({ process, signer: rsaSigner, tags: [{ name: 'Action', value: 'Inc' }, { name: 'From-Process', value: counter }], data: '1' }) });
    assert.deepEqual(vouched.Output, { count: 2, from: counter });
  });

  test('an item assigned from another process\'s log reaches the process with its own Target', async () => {
    const signer = ed25519Signer(ed);
    const a = await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer });
    const b = await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer });
    const message = await ao.message({ process: a, signer, tags: [{ name: 'Action', value: 'Where' }] });
    assert.deepEqual((await ao.result({ process: a, message })).Output, { target: a });
    await ao.assign({ process: b, message });
    assert.deepEqual((await ao.result({ process: b, message })).Output, { target: a });
  });

  test('ping-pong: two processes message each other through the MU for 100 rounds; logs ordered, hash chains valid', async () => {
    const signer = ed25519Signer(ed);
    // Each trusts the MU to say which process a pushed message comes from.
    const authority = { name: 'Authority', value: units.messenger.address };
    const a = await ao.spawn({ module: pingpong, scheduler: units.scheduler.address, signer, tags: [{ name: 'Name', value: 'a' }, authority] });
    const b = await ao.spawn({ module: pingpong, scheduler: units.scheduler.address, signer, tags: [{ name: 'Name', value: 'b' }, authority] });
    await ao.message({ process: a, signer, tags: [{ name: 'Action', value: 'Ping' }, { name: 'N', value: '1' }, { name: 'Limit', value: '100' }, { name: 'Peer', value: b }] });
    await units.messenger.idle();
    for (const [pid, parity] of [[a, 1], [b, 0]] as const) {
      const page = (await units.scheduler.messages(pid, { limit: 1000 }))!;
      const nodes = page.edges.map((e) => e.node);
      const ns = nodes.slice(1).map((n) => Number(tagValue(n.message!, 'N')));
      assert.deepEqual(ns, Array.from({ length: 50 }, (_, i) => 2 * i + (parity === 1 ? 1 : 2)), `log of ${pid === a ? 'a' : 'b'}`);
      // The hash chain, recomputed independently.
      let chain = createHash('sha256').update(Buffer.from(pid, 'base64url')).digest('base64url');
      nodes.forEach((n, i) => {
        assert.equal(tagValue(n.assignment, 'Nonce'), String(i));
        assert.equal(tagValue(n.assignment, 'Hash-Chain'), chain);
        chain = createHash('sha256').update(Buffer.from(n.assignment.id, 'base64url')).update(Buffer.from(chain, 'base64url')).digest('base64url');
      });
    }
    const state = (await units.compute.state(b)).state as { seen: number[] };
    assert.equal(state.seen.length, 50);
  });

  test('a CU that keeps one VM loaded unloads the other process and reloads it from its checkpoint and the log, agreeing throughout', async () => {
    const signer = ed25519Signer(ed);
    const processes = [await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer }), await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer })];
    const small = await openComputeUnit({ dir: join(dir, 'cu-small'), store: units.store, wallet: await unitWallet(join(dir, 'wallets'), 'cu-small'), scheduler: units.locate, checkpointEvery: 4, maxLoaded: 1 });
    try {
      for (let round = 0; round < 6; round++) {
        for (const [k, process] of processes.entries()) {
          await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: String(10 * round + k + 1) });
          const mine = await small.state(process);
          const reference = await units.compute.state(process);
          assert.deepEqual(mine, reference, `round ${round}, process ${k}`);
        }
      }
      // 2 boots and 12 messages, plus what each reload evaluated again since its checkpoint.
      assert.ok(small.evaluated() > 14, `the processes were unloaded and reloaded (${small.evaluated()} evaluations)`);
    } finally {
      await small.close();
    }
  });

  test('readers of a process\'s results share the CU\'s reads of the SU, and the HTTP page is the same page as results()', async () => {
    const signer = ed25519Signer(ed);
    const process = await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer });
    for (let i = 0; i < 5; i++) await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: String(i) });
    let suReads = 0;
    const counting: typeof fetch = (input, init) => {
      suReads += 1;
      return fetch(input, init);
    };
    const reader = await openComputeUnit({ dir: join(dir, 'cu-readers'), store: units.store, wallet: await unitWallet(join(dir, 'wallets'), 'cu-readers'), scheduler: units.locate, fetch: counting });
    try {
      await reader.results(process, { limit: 100 });
      suReads = 0;
      // 32 readers at once: one catch-up queued behind another serves them all (not one SU read each).
      const pages = await Promise.all(Array.from({ length: 32 }, () => reader.results(process, { limit: 100 })));
      assert.ok(suReads <= 4, `${suReads} SU reads for 32 readers`);
      for (const page of pages) assert.equal(page.edges.length, 6);
      assert.deepEqual(JSON.parse(await reader.resultsJson(process, { limit: 100 })), pages[0]);
      assert.deepEqual(JSON.parse(await reader.resultsJson(process, { limit: 2, from: pages[0].edges[1].cursor })), await reader.results(process, { limit: 2, from: pages[0].edges[1].cursor }));
    } finally {
      await reader.close();
    }
  });

  test('two CUs over the same log agree on every state hash; a restarted CU resumes from its checkpoint and agrees', async () => {
    const signer = ed25519Signer(ed);
    const process = await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer });
    for (let i = 0; i < 20; i++) await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: String(i) });
    const reference = await units.compute.state(process);
    const second = await openComputeUnit({ dir: join(dir, 'cu-2'), store: units.store, wallet: await unitWallet(join(dir, 'wallets'), 'cu-2'), scheduler: units.locate, checkpointEvery: 8 });
    assert.deepEqual(await second.state(process), reference);
    // Every slot's state hash, as each CU signed it.
    const stateHashes = async (cu: { results: typeof second.results }): Promise<string[]> =>
      Promise.all((await cu.results(process, { limit: 100 })).edges.map(async (e) => (await verifyAttestation(e.node)).resultsChain));
    const mine = await stateHashes(second);
    assert.equal(mine.length, 21);
    assert.deepEqual(mine, await stateHashes(units.compute));
    await second.checkpoint();
    await second.close();
    // Distinct data: Ed25519 signatures are deterministic, so an identical message would be the same item, scheduled once.
    for (let i = 0; i < 5; i++) await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: String(100 + i) });
    const resumed = await openComputeUnit({ dir: join(dir, 'cu-2'), store: units.store, wallet: await unitWallet(join(dir, 'wallets'), 'cu-2'), scheduler: units.locate, checkpointEvery: 8 });
    assert.deepEqual(await resumed.state(process), await units.compute.state(process));
    assert.equal(resumed.evaluated(), 5, `the restarted CU evaluated only the messages after its checkpoint, not ${resumed.evaluated()}`);
    await resumed.close();
  });

  test('a CU reads each slot\'s assignment and message from the store and refuses one its scheduler did not sign', async () => {
    const signer = ed25519Signer(ed);
    const process = await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer });
    await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: '2' });
    // A unit between the CU and the SU swaps slot 1's assignment for a copy signed by someone else.
    const page = (await (await fetch(`${units.urls.su}/${process}?process-id=${process}&limit=100`)).json()) as { edges: { node: { assignment: { id: string; tags: Tag[] } } }[] };
    const real = (await units.store.get(page.edges[1].node.assignment.id))!;
    const forged = await createItem('', walletSigner(rsa), { tags: real.tags });
    await units.store.put(forged.raw);
    page.edges[1].node.assignment.id = forged.id;
    const rogue = fastify();
    rogue.get('/*', async () => page);
    await rogue.listen({ port: 0, host: '127.0.0.1' });
    const url = `http://127.0.0.1:${(rogue.server.address() as AddressInfo).port}`;
    const cu = await openComputeUnit({ dir: join(dir, 'cu-rogue'), store: units.store, wallet: await unitWallet(join(dir, 'wallets'), 'cu-rogue'), scheduler: async () => url });
    try {
      await assert.rejects(cu.state(process), /not signed by the scheduler/);
    } finally {
      await cu.close();
      await rogue.close();
    }
  });

  test('GET /results with wait answers as soon as the next result is stored, and empty when the time is up', async () => {
    const signer = ed25519Signer(ed);
    const process = await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer });
    const latest = async (): Promise<string> => {
      const page = (await (await fetch(`${units.urls.cu}/results/${process}?sort=DESC&limit=1`)).json()) as { edges: { cursor: string }[] };
      return page.edges[0].cursor;
    };
    const from = await latest();
    const started = Date.now();
    const waiting = fetch(`${units.urls.cu}/results/${process}?from=${from}&wait=20000`).then((r) => r.json() as Promise<{ edges: { node: { Output: unknown } }[] }>);
    await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: '5' });
    const page = await waiting;
    assert.deepEqual(page.edges.map((e) => e.node.Output), [{ count: 5, from: walletAddress(ed) }]);
    assert.ok(Date.now() - started < 15_000, 'answered when the result came, not at the deadline');
    const empty = (await (await fetch(`${units.urls.cu}/results/${process}?from=${await latest()}&wait=200`)).json()) as { edges: unknown[] };
    assert.deepEqual(empty.edges, []);
    assert.equal((await fetch(`${units.urls.cu}/results/${process}?wait=forever`)).status, 400);
  });

  test('GET /results?after=<message> pages from the slot after that message; an unknown or malformed id is 4xx', async () => {
    const signer = ed25519Signer(ed);
    const process = await ao.spawn({ module: counter, scheduler: units.scheduler.address, signer });
    const first = await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: '1' });
    await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: '2' });
    await ao.message({ process, signer, tags: [{ name: 'Action', value: 'Inc' }], data: '3' });
    const page = (await (await fetch(`${units.urls.cu}/results/${process}?after=${first}&limit=1`)).json()) as { edges: { node: { Output: { count: number } } }[]; pageInfo: { hasNextPage: boolean } };
    assert.deepEqual(page.edges.map((e) => e.node.Output.count), [3], 'the slot after the first Inc (count 1 + 2)');
    assert.equal(page.pageInfo.hasNextPage, true);
    assert.equal((await fetch(`${units.urls.cu}/results/${process}?after=${'A'.repeat(43)}`)).status, 404);
    assert.equal((await fetch(`${units.urls.cu}/results/${process}?after=not-an-id`)).status, 400);
  });

  test('bad input gets 4xx JSON: unsigned, forged, oversized, wrongly tagged items and unknown processes', async () => {
    const { mu, cu, su } = units.urls;
    const post = async (url: string, body: Uint8Array): Promise<{ status: number; json: unknown }> => {
      const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body });
      return { status: res.status, json: await res.json().catch(() => null) };
    };
    const good = await createItem('x', walletSigner(ed), { target: counter, tags: [...AO('Message'), { name: 'Action', value: 'Inc' }] });
    const forged = Buffer.from(good.raw);
    forged[forged.length - 1] ^= 1;
    const unsigned = Buffer.from(good.raw);
    unsigned.fill(0, 2, 66);
    const noType = await createItem('x', walletSigner(ed), { target: counter, tags: [{ name: 'Data-Protocol', value: 'ao' }] });
    const unknownProcess = await createItem('x', walletSigner(ed), { target: Buffer.alloc(32, 9).toString('base64url'), tags: AO('Message') });
    for (const url of [mu, su]) {
      for (const [label, body] of [['forged', forged], ['unsigned', unsigned], ['wrong tags', noType.raw], ['unknown process', unknownProcess.raw], ['garbage', Buffer.from('hello')]] as const) {
        const r = await post(url, body);
        assert.ok(r.status >= 400 && r.status < 500 && typeof (r.json as { error?: unknown })?.error === 'string', `${url} ${label}: ${r.status} ${JSON.stringify(r.json)}`);
      }
      const big = await post(url, Buffer.alloc(17 * 2 ** 20));
      assert.equal(big.status, 413, `${url} oversized`);
    }
    const unknown = Buffer.alloc(32, 5).toString('base64url');
    for (const path of [`/result/${unknown}?process-id=${unknown}`, `/results/not-an-id`, `/state/${unknown}`, `/result/x`]) {
      const res = await fetch(`${cu}${path}`);
      assert.ok(res.status >= 400 && res.status < 500, `${path}: ${res.status}`);
      assert.equal(typeof ((await res.json()) as { error?: unknown }).error, 'string');
    }
  });
});
