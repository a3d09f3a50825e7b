// The embedded units' HyperBEAM-style interface, driven by the unmodified @permaweb/aoconnect 0.0.98
// in mainnet mode (connect({ MODE: 'mainnet', URL, signer })), with an Ed25519 and an Arweave RSA
// signer; then the attacks: forged, tampered, mis-targeted and oversized requests, refused with a
// 4xx JSON error before anything is stored.
import assert from 'node:assert/strict';
import { createPrivateKey, randomBytes, sign } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect, createSigner } from '@permaweb/aoconnect';
import { verifyAttestation, type Result } from '../../src/ao/cu.js';
import { publishModule } from '../../src/ao/modules.js';
import { MAX_ITEM_BYTES } from '../../src/ao/su.js';
import { startUnits, type RunningUnits } from '../../src/ao/units.js';
import { createItem, tagValue, type Tag } from '../../src/store/items.js';
import { generateWallet, ownerKey, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { PINGPONG } from './fixtures/processes.js';

const COUNTER = `
export function handle(state, msg, env) {
  const s = state ?? { count: 0 };
  const action = (msg.Tags.find((t) => t.name === 'Action') || {}).value;
  if (action === 'Inc') { s.count += Number(msg.Data || 1); return { state: s, Output: { count: s.count, from: msg.From } }; }
  if (action === 'Get') return { state: s, Output: { count: s.count, from: msg.From } };
  if (action === 'Note') return { state: s, Output: (msg.Tags.find((t) => t.name === 'Note') || {}).value };
  return { state: s, Output: 'booted' };
}`;


type Create = (input: { type: number; publicKey: Buffer; alg: string; passthrough?: boolean }) => Promise<Uint8Array | { data: string | Uint8Array; tags: Tag[]; target?: string; anchor?: string }>;

/**
 * An Ed25519 signer in aoconnect's mainnet form (as its own createSigner is for RSA): it asks
 * aoconnect to build the bytes (an ANS-104 item of signature type 2, or an HTTP signature base) and
 * signs them, so aoconnect's own item construction is what reaches the node.
 */
function ed25519Signer(wallet: Wallet) {
  if (wallet.type !== 'ed25519') throw new Error('an Ed25519 wallet');
  const key = createPrivateKey({ key: { ...wallet.jwk }, format: 'jwk' });
  const publicKey = ownerKey(wallet);
  // One key, one algorithm name for both kinds (an ANS-104 item of type 2, an httpsig base).
  return async (create: Create) => {
    const bytes = await create({ type: 2, publicKey, alg: 'ed25519' });
    return { signature: sign(null, Buffer.from(bytes as Uint8Array), key), address: walletAddress(wallet) };
  };
}

/** A malicious client: it signs the item aoconnect asks for, then changes it (aoconnect sends a signer's {id, raw} as they are). */
function tamperingSigner(wallet: Wallet, tamper: (raw: Buffer) => Buffer) {
  return async (create: Create) => {
    const { data, tags, target, anchor } = (await create({ type: 2, publicKey: ownerKey(wallet), alg: 'ed25519', passthrough: true })) as { data: string; tags: Tag[]; target?: string; anchor?: string };
    const item = await createItem(data ?? '', walletSigner(wallet), { tags, target: target || undefined, anchor: anchor || undefined });
    return { id: item.id, raw: tamper(Buffer.from(item.raw)) };
  };
}

type Reply = { Output: any; Error?: unknown; Messages: unknown[]; Attestation?: string };
interface MainnetAo {
  spawn(a: { module: string; tags?: Tag[]; authority?: string; data?: string }): Promise<string>;
  message(a: { process: string; tags?: Tag[]; data?: string; returnMessageId?: boolean; returnAssignmentSlot?: boolean; opts?: { fullResponse?: boolean } }): Promise<any>;
  result(a: { process: string; slot?: number | string; message?: string }): Promise<Reply>;
  results(a: { process: string }): Promise<{ edges: { cursor: string; node: Reply }[] }>;
  dryrun(a: { process: string; tags?: Tag[]; data?: string }): Promise<Reply>;
  request(a: Record<string, unknown>): Promise<Response>;
}

const mainnet = (url: string, signer: unknown): MainnetAo => connect({ MODE: 'mainnet', URL: url, signer } as never) as unknown as MainnetAo;

/** A request made as aoconnect makes its ans104 ones. */
const postItem = (url: string, raw: Uint8Array): Promise<Response> =>
  fetch(url, { method: 'POST', headers: { 'content-type': 'application/ans104', 'codec-device': 'ans104@1.0' }, body: raw });

describe('the HyperBEAM interface with aoconnect in mainnet mode', { timeout: 120_000 }, () => {
  let dir: string;
  let units: RunningUnits;
  let hb: string;
  let ed: Wallet;
  let rsa: Wallet;
  let counter: string;
  let pingpong: string;
  const head = async (pid: string): Promise<number> => Number(tagValue((await units.scheduler.latest(pid))!.assignment, 'Nonce'));

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'verity-mainnet-'));
    units = await startUnits({ dir });
    hb = units.urls.hyperbeam;
    [ed, rsa] = await Promise.all([generateWallet('ed25519'), generateWallet('arweave')]);
    counter = await publishModule(units.store, walletSigner(ed), COUNTER, 'counter');
    pingpong = await publishModule(units.store, walletSigner(ed), PINGPONG, 'pingpong');
  });
  after(async () => {
    await units?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const kind of ['ed25519', 'arweave'] as const) {
    test(`spawn, message, result, results, dryrun and request with an ${kind} signer`, { timeout: 60_000 }, async () => {
      const wallet = kind === 'ed25519' ? ed : rsa;
      const signer = kind === 'ed25519' ? ed25519Signer(ed) : createSigner(rsa.type === 'arweave' ? rsa.jwk : undefined);
      const ao = mainnet(hb, signer);
      const from = walletAddress(wallet);
      const process = await ao.spawn({ module: counter, tags: [{ name: 'Name', value: `counter-${kind}` }] });
      assert.match(process, /^[A-Za-z0-9_-]{43}$/);
      assert.equal(tagValue((await units.scheduler.process(process))!, 'Scheduler'), units.scheduler.address, 'spawned on the scheduler /~meta@1.0/info/address named');

      // message: the slot by default, the id, or both.
      assert.equal(await ao.message({ process, tags: [{ name: 'Action', value: 'Inc' }], data: '1' }), 1);
      const id = await ao.message({ process, tags: [{ name: 'Action', value: 'Inc' }], data: '2', returnMessageId: true });
      assert.match(id, /^[A-Za-z0-9_-]{43}$/);
      const both = await ao.message({ process, tags: [{ name: 'Action', value: 'Inc' }], data: '3', returnMessageId: true, returnAssignmentSlot: true });
      assert.equal(both.slot, 3);
      assert.equal(tagValue((await units.scheduler.message(both.id, process))!.assignment, 'Nonce'), '3', 'acknowledged means in the SU log');

      // push-mode sync (HyperBEAM's default) answers with the result: aoconnect's fullResponse reads it.
      const full = await ao.message({ process, tags: [{ name: 'Action', value: 'Get' }], data: 'full', opts: { fullResponse: true } });
      assert.deepEqual(full.Output, { count: 6, from });
      assert.equal(await ao.message({ process, tags: [{ name: 'Action', value: 'Get' }, { name: 'push-mode', value: 'async' }], data: 'async' }), 5);
      const last = await ao.result({ process, slot: both.slot });
      assert.deepEqual(last.Output, { count: 6, from });
      assert.deepEqual((await ao.result({ process, message: id })).Output, { count: 3, from }, 'a result by message id');
      assert.deepEqual((await ao.result({ process, slot: 0 })).Output, 'booted');
      // The CU's signature travels in the result; it covers exactly what the CU computed.
      const attestation = await verifyAttestation((await units.compute.result(process, both.id)) as Result);
      assert.equal(last.Attestation, (await units.compute.result(process, both.id)).Attestation);
      assert.equal(attestation.nonce, 3);

      const all = await ao.results({ process });
      assert.equal(all.edges.length, 1);
      assert.equal(all.edges[0].cursor, '5');
      assert.deepEqual(all.edges[0].node.Output, { count: 6, from });

      const dry = await ao.dryrun({ process, tags: [{ name: 'Action', value: 'Get' }] });
      assert.deepEqual(dry.Output, { count: 6, from }, 'a dry run sees the state, and its Owner is the signer');
      assert.equal(await head(process), 5, 'a dry run adds nothing to the log');
      // Its tags travel in the path (aoconnect writes them unencoded, so a value cannot hold & or =):
      // a long one, with characters fetch percent-encodes, arrives whole.
      const note = `a note, ${'x'.repeat(400)} ✓ 100%25`;
      const echoed = await ao.dryrun({ process, tags: [{ name: 'Action', value: 'Note' }, { name: 'Note', value: note }] });
      assert.equal(echoed.Output, note.replace('%25', '%'));

      // request: aoconnect's raw call, signed by default with an HTTP message signature (httpsig).
      const slot = await ao.request({ path: `/${process}~process@1.0/slot`, method: 'GET' });
      assert.equal(slot.status, 200);
      const slotMessage = (await slot.json()) as Record<string, unknown>;
      assert.equal(slotMessage.process, process);
      assert.equal(slotMessage.current, 5);
      const now = await ao.request({ path: `/${process}~process@1.0/now`, method: 'GET' });
      const state = (await now.json()) as { 'at-slot': number; state: { count: number } };
      assert.equal(state['at-slot'], 5);
      assert.equal(state.state.count, 6);
      const viaItem = await ao.request({ path: `/${process}~process@1.0/slot/current`, 'signing-format': 'ans104', target: process });
      assert.equal(await viaItem.text(), '5');
    });
  }

  test('unsigned reads: /~meta@1.0/info, /slot, /slot/current, /now, /compute&slot=', async () => {
    const ao = mainnet(hb, ed25519Signer(ed));
    const process = await ao.spawn({ module: counter, tags: [{ name: 'Name', value: 'counter-1' }] });
    await ao.message({ process, tags: [{ name: 'Action', value: 'Inc' }], data: '5' });
    assert.equal(await (await fetch(`${hb}/~meta@1.0/info/address`)).text(), units.scheduler.address);
    const info = (await (await fetch(`${hb}/~meta@1.0/info`)).json()) as Record<string, string>;
    assert.equal(info.authority, units.messenger.address);
    assert.equal(await (await fetch(`${hb}/${process}/slot/current`)).text(), '1');
    const slot = (await (await fetch(`${hb}/${process}~process@1.0/slot`)).json()) as Record<string, unknown>;
    assert.equal(slot.current, 1);
    assert.equal(slot.process, process);
    const now = (await (await fetch(`${hb}/${process}~process@1.0/now`)).json()) as { 'at-slot': number; 'state-hash': string; state: unknown };
    assert.deepEqual(now.state, { count: 5 });
    assert.equal(now['state-hash'], (await units.compute.state(process)).stateHash);
    const computed = (await (await fetch(`${hb}/${process}~process@1.0/compute&slot=1`)).json()) as { slot: number; raw: { Output: unknown } };
    assert.equal(computed.slot, 1);
    assert.deepEqual(computed.raw.Output, { count: 5, from: walletAddress(ed) });
    const ahead = await fetch(`${hb}/${process}~process@1.0/compute/results=9`);
    assert.equal(ahead.status, 404);
    assert.match(((await ahead.json()) as { error: string }).error, /not assigned yet/);
  });

  test('a message pushed over the interface has its outbox delivered by the MU, as one sent to the MU', async () => {
    const ao = mainnet(hb, ed25519Signer(ed));
    const { authority } = (await (await fetch(`${hb}/~meta@1.0/info`)).json()) as { authority: string };
    const a = await ao.spawn({ module: pingpong, authority, tags: [{ name: 'Name', value: 'a' }] });
    const b = await ao.spawn({ module: pingpong, authority, tags: [{ name: 'Name', value: 'b' }] });
    await ao.message({ process: a, tags: [{ name: 'Action', value: 'Ping' }, { name: 'N', value: '1' }, { name: 'Limit', value: '6' }, { name: 'Peer', value: b }] });
    await units.messenger.idle();
    assert.deepEqual(((await units.compute.state(a)).state as { seen: number[] }).seen, [1, 3, 5]);
    assert.deepEqual(((await units.compute.state(b)).state as { seen: number[] }).seen, [2, 4, 6]);
    const pushed = (await ao.result({ process: a, slot: 1 })).Messages;
    assert.equal(pushed.length, 1, 'the result carries the outbox the MU delivered');
  });

  test('a tampered, a forged, a mis-targeted and a misrouted push are refused with 4xx JSON; nothing is stored', async () => {
    const ao = mainnet(hb, ed25519Signer(ed));
    // Distinct tags: Ed25519 signatures are deterministic, so two identical spawns are one process.
    const process = await ao.spawn({ module: counter, tags: [{ name: 'Name', value: 'counter-2' }] });
    const other = await ao.spawn({ module: counter, tags: [{ name: 'Name', value: 'counter-3' }] });
    const before = [await head(process), await head(other)];
    const tags = [{ name: 'Data-Protocol', value: 'ao' }, { name: 'Variant', value: 'ao.N.1' }, { name: 'Type', value: 'Message' }, { name: 'Action', value: 'Inc' }];
    const message = (data: string, target = process, by = ed) => createItem(data, walletSigner(by), { target, tags });
    const refused = async (response: Response, status: number, reason: RegExp): Promise<void> => {
      assert.equal(response.status, status);
      assert.match(response.headers.get('content-type') ?? '', /application\/json/);
      assert.match(((await response.json()) as { error: string }).error, reason);
    };

    // Tampered: bytes changed after signing (the last byte of the data: 7 → 9).
    const honest = await message('7');
    const tampered = Buffer.from(honest.raw);
    tampered[tampered.length - 1] = '9'.charCodeAt(0);
    await refused(await postItem(`${hb}/${process}~process@1.0/push`, tampered), 400, /bad signature/);
    // The same attack through aoconnect itself: its signer hands back altered bytes.
    const evil = mainnet(hb, tamperingSigner(ed, (raw) => Buffer.concat([raw.subarray(0, raw.length - 1), Buffer.from('9')])));
    await assert.rejects(evil.message({ process, tags: [{ name: 'Action', value: 'Inc' }], data: '8' }), /Error sending message/);
    // Forged: signed by one key, claiming another owner (the Ed25519 owner is the 32 bytes after the 64-byte signature).
    const forged = Buffer.from(honest.raw);
    ownerKey(await generateWallet('ed25519')).copy(forged, 66);
    await refused(await postItem(`${hb}/${process}~process@1.0/push`, forged), 400, /bad signature/);
    // A valid item for one process pushed to another: the path is not signed, the Target is.
    await refused(await postItem(`${hb}/${other}~process@1.0/push`, (await message('1', process)).raw), 400, /Target .* is not the process in the path/);
    // A valid item for a process that does not exist here.
    const nowhere = randomBytes(32).toString('base64url');
    await refused(await postItem(`${hb}/${nowhere}~process@1.0/push`, (await message('1', nowhere)).raw), 404, /no process/);
    // A Process item pushed to a process, and one naming another scheduler.
    const processTags = [{ name: 'Data-Protocol', value: 'ao' }, { name: 'Type', value: 'Process' }, { name: 'Module', value: counter }];
    await refused(await postItem(`${hb}/${process}~process@1.0/push`, (await createItem('', walletSigner(ed), { tags: [...processTags, { name: 'Scheduler', value: units.scheduler.address }] })).raw), 400, /spawned with POST \/push/);
    const elsewhere = await createItem('', walletSigner(ed), { tags: [...processTags, { name: 'Scheduler', value: walletAddress(rsa) }] });
    await refused(await postItem(`${hb}/push`, elsewhere.raw), 400, /Scheduler tag must be this node's scheduler/);
    // A valid item with a bogus HTTP signature beside it: every signature a request carries must hold.
    const doubled = await fetch(`${hb}/${process}~process@1.0/push`, { method: 'POST', headers: { 'codec-device': 'ans104@1.0', 'signature-input': 'sig=("codec-device");alg="ed25519";keyid="' + ownerKey(ed).toString('base64url') + '"', signature: 'sig=:' + Buffer.alloc(64).toString('base64') + ':' }, body: (await message('2')).raw });
    await refused(doubled, 400, /bad signature: the HTTP message signature/);
    // Not an item at all, and an empty ans104 body.
    await refused(await postItem(`${hb}/${process}~process@1.0/push`, Buffer.from('not a data item')), 400, /unsupported signature type|truncated/);
    await refused(await fetch(`${hb}/${process}~process@1.0/push`, { method: 'POST', headers: { 'codec-device': 'ans104@1.0' } }), 400, /body is empty/);
    // A push signed with an HTTP message signature: refused, it could not be stored as an item.
    await refused(await ao.request({ path: `/${process}~process@1.0/push`, method: 'POST', Action: 'Inc' }), 400, /ANS-104 data items only/);

    assert.deepEqual([await head(process), await head(other)], before, 'no log grew');
    for (const id of [honest.id, elsewhere.id]) assert.equal(await units.store.has(id), false, `item ${id} was not stored`);
    // The honest item itself is accepted afterwards: the refusals were about the changes. Sent
    // again, it gets its slot back and is not scheduled twice.
    for (let i = 0; i < 2; i++) assert.equal(((await (await postItem(`${hb}/${process}~process@1.0/push`, honest.raw)).json()) as { slot: number }).slot, before[0] + 1);
    assert.equal(await head(process), before[0] + 1);
  });

  test('an oversized body is refused with 413 before it is read; a tampered HTTP signature is refused', async () => {
    const ao = mainnet(hb, createSigner(rsa.type === 'arweave' ? rsa.jwk : undefined));
    const process = await ao.spawn({ module: counter, tags: [{ name: 'Name', value: 'counter-4' }] });
    const before = await head(process);
    const big = await postItem(`${hb}/${process}~process@1.0/push`, Buffer.alloc(MAX_ITEM_BYTES + 1, 1));
    assert.equal(big.status, 413);
    assert.match(((await big.json()) as { error: string }).error, /too large|body/i);
    // Content-Length alone decides: the answer comes while 17 MiB are still to be sent.
    const { port } = new URL(hb);
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: `/${process}~process@1.0/push`, headers: { 'content-type': 'application/ans104', 'codec-device': 'ans104@1.0', 'content-length': String(17 * 2 ** 20) } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
        req.destroy();
      });
      req.on('error', (e) => ((e as NodeJS.ErrnoException).code === 'ECONNRESET' ? undefined : reject(e)));
      req.write(Buffer.alloc(16, 1));
      setTimeout(() => reject(new Error('no answer within 5 s: the body was being waited for')), 5_000).unref();
    });
    assert.equal(status, 413);
    assert.equal(await head(process), before);

    // An httpsig request whose signed header is changed on the way: a man in the middle is caught.
    const realFetch = globalThis.fetch;
    globalThis.fetch = (async (url: string, init: RequestInit & { headers: Record<string, string> }) => realFetch(url, { ...init, headers: { ...init.headers, 'x-note': 'changed' } })) as typeof fetch;
    let changed: Response;
    try {
      changed = await ao.request({ path: `/${process}~process@1.0/slot`, method: 'GET', 'x-note': 'original' });
    } finally {
      globalThis.fetch = realFetch;
    }
    assert.equal(changed.status, 400);
    assert.match(((await changed.json()) as { error: string }).error, /bad signature: the HTTP message signature/);
    // A read's signed item naming another process is refused too.
    const other = await ao.spawn({ module: counter, tags: [{ name: 'Name', value: 'counter-5' }] });
    const misread = await ao.request({ path: `/${process}~process@1.0/slot/current`, 'signing-format': 'ans104', target: other });
    assert.equal(misread.status, 400);
  });

  test('seeded garbage at every route: a 4xx JSON error or an answer, never a 5xx', { timeout: 60_000 }, async () => {
    const ao = mainnet(hb, ed25519Signer(ed));
    const process = await ao.spawn({ module: counter, tags: [{ name: 'Name', value: 'garbage' }] });
    const valid = (await createItem('1', walletSigner(ed), { target: process, tags: [{ name: 'Data-Protocol', value: 'ao' }, { name: 'Type', value: 'Message' }, { name: 'Action', value: 'Inc' }] })).raw;
    let seed = 7;
    const next = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    const paths = ['/push', `/${process}~process@1.0/push`, `/${process}/compute/results=1`, `/${process}/slot/current`, `/${process}~process@1.0/now`, `/${process}~process@1.0/as=execution/compute&Action=Get`, '/~meta@1.0/info', `/${process}~process@1.0/compute&slot=0`, '/%zz', `/${process}/push?x=%`];
    const before = await head(process);
    for (let i = 0; i < 200; i++) {
      const body = Buffer.from(valid);
      // Flip one to four bytes anywhere (header, signature, owner, tags, data), or cut the item short.
      for (let k = 0; k <= next(4); k++) body[next(body.length)] ^= 1 + next(255);
      const sent = next(5) === 0 ? body.subarray(0, next(body.length)) : body;
      const headers: Record<string, string> = next(2) ? { 'codec-device': 'ans104@1.0' } : next(2) ? { 'signature-input': 'sig=("a");alg="ed25519";keyid="AAAA"', signature: 'sig=:AAAA:' } : {};
      const response = await fetch(`${hb}${paths[next(paths.length)]}`, { method: 'POST', headers, body: sent });
      const text = await response.text();
      assert.ok(response.status < 500, `${response.status}: ${text}`);
      if (response.status >= 400) assert.equal(typeof (JSON.parse(text) as { error: unknown }).error, 'string');
    }
    assert.equal(await head(process), before, 'no mutated item was scheduled');
  });
});
