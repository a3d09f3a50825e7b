// The HyperBEAM interface's pure rules: paths → routes, the signing form a request declares, what
// a pushed item may do, and RFC 9421 HTTP signatures checked on requests the real aoconnect signed.
import assert from 'node:assert/strict';
import { createPrivateKey, randomBytes, sign } from 'node:crypto';
import { describe, test } from 'node:test';
import { connect, createSigner } from '@permaweb/aoconnect';
import fastify from 'fastify';
import { HttpSigError, verifyHttpSignature, type SignedRequest } from '../../src/ao/hyperbeam/httpsig.js';
import { MAX_PATH_BYTES, PathError, routeOf } from '../../src/ao/hyperbeam/paths.js';
import { RuleError, dryRunTags, outboxOf, pushPlan, signingOf } from '../../src/ao/hyperbeam/rules.js';
import { generateWallet, ownerKey, walletAddress } from '../../src/store/wallet.js';

const pid = randomBytes(32).toString('base64url');
const mid = randomBytes(32).toString('base64url');

describe('routeOf: HyperBEAM paths', () => {
  test('the paths aoconnect 0.0.98 mainnet mode uses, and the reads next to them', () => {
    assert.deepEqual(routeOf('GET', '/~meta@1.0/info/address'), { kind: 'meta-address' });
    assert.deepEqual(routeOf('GET', '/~meta@1.0/info'), { kind: 'meta-info' });
    assert.deepEqual(routeOf('POST', '/push'), { kind: 'push' });
    assert.deepEqual(routeOf('POST', `/${pid}~process@1.0/push`), { kind: 'push', process: pid });
    assert.deepEqual(routeOf('POST', `/${pid}~process@1.0/compute/results=7`), { kind: 'result', process: pid, of: { slot: 7 } });
    assert.deepEqual(routeOf('POST', `/${pid}~process@1.0/compute/results=${mid}`), { kind: 'result', process: pid, of: { message: mid } });
    assert.deepEqual(routeOf('POST', `/${pid}/compute/results=0`), { kind: 'result', process: pid, of: { slot: 0 } });
    assert.deepEqual(routeOf('GET', `/${pid}~process@1.0/compute&slot=3`), { kind: 'result', process: pid, of: { slot: 3 } });
    assert.deepEqual(routeOf('GET', `/${pid}~process@1.0/compute?slot=3`), { kind: 'result', process: pid, of: { slot: 3 } });
    assert.deepEqual(routeOf('POST', `/${pid}/slot/current`), { kind: 'slot', process: pid, current: true });
    assert.deepEqual(routeOf('GET', `/${pid}~process@1.0/slot`), { kind: 'slot', process: pid, current: false });
    assert.deepEqual(routeOf('GET', `/${pid}~process@1.0/now`), { kind: 'now', process: pid });
    assert.deepEqual(routeOf('GET', `/${pid}~process@1.0`), { kind: 'process', process: pid });
    assert.deepEqual(routeOf('POST', `/${pid}~process@1.0/as=execution/compute&Action=Balance&Target=a%20b`), {
      kind: 'dryrun',
      process: pid,
      tags: [{ name: 'Action', value: 'Balance' }, { name: 'Target', value: 'a b' }],
    });
  });

  test('everything else is a refusal with a status, never a throw of another kind', () => {
    const refusals: [string, string, number][] = [
      ['GET', '/', 404],
      ['DELETE', `/${pid}/now`, 405],
      ['GET', '/push', 405],
      ['GET', `/${pid}~process@1.0/push`, 405],
      ['GET', `/${pid}~wasm-64@1.0/now`, 404],
      ['GET', '/not-an-id/now', 404],
      ['GET', `/${pid}/compute/results=x`, 400],
      ['GET', `/${pid}/compute&slot=${mid}`, 400],
      ['GET', `/${pid}/compute`, 400],
      ['GET', `/${pid}/now&a=b`, 400],
      ['GET', `/${pid}/as=execution/compute&noequals`, 400],
      ['GET', `/${pid}/as=execution/compute&A=%E0%A4%A`, 400],
      ['GET', `/${pid}/as=execution/compute&=v`, 400],
      ['GET', `/${pid}/a/b/c/d/e/f/g/h/i`, 404],
      ['GET', `/${pid}/${'x'.repeat(MAX_PATH_BYTES)}`, 414],
      ['GET', `/${pid}/as=execution/compute${'&A=1'.repeat(129)}`, 400],
      ['GET', `/${pid}/as=execution/compute&A=${'v'.repeat(3073)}`, 400],
    ];
    for (const [method, path, status] of refusals) {
      assert.throws(() => routeOf(method, path), (e) => e instanceof PathError && e.status === status, `${method} ${path.slice(0, 80)}`);
    }
  });

  test('seeded garbage paths: a route or a PathError, nothing else', () => {
    let seed = 1;
    const next = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    const alphabet = ['/', '~', '@', '=', '&', '?', '%', '%2', '%E0', 'compute', 'results', 'slot', 'current', 'now', 'push', 'as', 'execution', pid, 'process@1.0', '1', '-', '\u00e9', ' '];
    for (let i = 0; i < 5000; i++) {
      const path = '/' + Array.from({ length: 1 + next(12) }, () => alphabet[next(alphabet.length)]).join('');
      try {
        routeOf(next(2) ? 'GET' : 'POST', path);
      } catch (e) {
        assert.ok(e instanceof PathError && e.status >= 400 && e.status < 500, `${path}: ${(e as Error).message}`);
      }
    }
  });
});

describe('signing and push rules', () => {
  test('signingOf: what the headers declare', () => {
    assert.equal(signingOf({ codecDevice: 'ans104@1.0' }, 10), 'ans104');
    assert.equal(signingOf({ contentType: 'application/ans104' }, 10), 'ans104');
    assert.equal(signingOf({ signatureInput: true }, 0), 'httpsig');
    assert.equal(signingOf({}, 0), 'none');
    assert.equal(signingOf({}, 5), 'ans104');
    assert.throws(() => signingOf({ codecDevice: 'ans104@1.0' }, 0), (e) => e instanceof RuleError && e.status === 400);
    assert.throws(() => signingOf({ codecDevice: 'json@1.0' }, 5), (e) => e instanceof RuleError && e.status === 415);
  });

  test('pushPlan: a Process only through /push and with this scheduler; a Message only to its own Target', () => {
    const su = randomBytes(32).toString('base64url');
    const process = { id: pid, target: null, tags: [{ name: 'Type', value: 'Process' }, { name: 'Scheduler', value: su }, { name: 'Module', value: mid }] };
    assert.deepEqual(pushPlan({ kind: 'push' }, process, su), { type: 'Process', process: pid, mode: 'async' });
    assert.throws(() => pushPlan({ kind: 'push', process: pid }, process, su), /spawned with POST \/push/);
    assert.throws(() => pushPlan({ kind: 'push' }, process, mid), /Scheduler tag must be/);
    assert.throws(() => pushPlan({ kind: 'push' }, { ...process, tags: process.tags.filter((t) => t.name !== 'Module') }, su), /Module tag/);
    const message = { id: mid, target: pid, tags: [{ name: 'Type', value: 'Message' }] };
    assert.deepEqual(pushPlan({ kind: 'push', process: pid }, message, su), { type: 'Message', process: pid, mode: 'sync' });
    assert.deepEqual(pushPlan({ kind: 'push' }, { ...message, tags: [...message.tags, { name: 'push-mode', value: 'async' }] }, su), { type: 'Message', process: pid, mode: 'async' });
    assert.throws(() => pushPlan({ kind: 'push' }, { ...message, tags: [...message.tags, { name: 'push-mode', value: 'later' }] }, su), /push-mode is sync or async/);
    assert.throws(() => pushPlan({ kind: 'push', process: mid }, message, su), /is not the process in the path/);
    assert.throws(() => pushPlan({ kind: 'push', process: pid }, { ...message, target: null }, su), /needs a Target/);
    assert.throws(() => pushPlan({ kind: 'push', process: pid }, { ...message, tags: [{ name: 'Type', value: 'Assignment' }] }, su), /must be Process or Message/);
  });

  test('a dry run keeps the path tags first and drops the transport tags; the outbox is keyed from 1', () => {
    const tags = dryRunTags([{ name: 'Action', value: 'Get' }], { tags: [{ name: 'signing-format', value: 'ans104' }, { name: 'Require-Codec', value: 'application/json' }, { name: 'Data-Protocol', value: 'ao' }] });
    assert.deepEqual(tags, [{ name: 'Action', value: 'Get' }, { name: 'Data-Protocol', value: 'ao' }]);
    assert.deepEqual(outboxOf([{ Target: pid, Data: 'd', Tags: [{ name: 'Action', value: 'Credit-Notice' }] }]), { 1: { Action: 'Credit-Notice', target: pid, data: 'd' } });
  });
});

/** Requests exactly as aoconnect's mainnet `request` signs and sends them, caught by a loopback server. */
async function capture(make: (url: string) => Promise<unknown>): Promise<SignedRequest> {
  const app = fastify();
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_r, body, done) => done(null, body));
  let caught: SignedRequest | undefined;
  app.all('*', async (request) => {
    caught = { method: request.method, target: request.url, headers: { ...request.headers }, body: Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0) };
    return {};
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  try {
    const { port } = app.server.address() as { port: number };
    await make(`http://127.0.0.1:${port}`);
  } finally {
    await app.close();
  }
  return caught!;
}

describe('verifyHttpSignature on requests aoconnect signed', { timeout: 60_000 }, () => {
  test('a real rsa-pss-sha512 signature verifies and names the signer; every change to it is refused with the reason', async () => {
    const rsa = await generateWallet('arweave');
    if (rsa.type !== 'arweave') throw new Error('an RSA wallet');
    const request = await capture((url) => (connect({ MODE: 'mainnet', URL: url, signer: createSigner(rsa.jwk) } as never) as unknown as { request(a: object): Promise<Response> }).request({ path: `/${pid}~process@1.0/slot`, method: 'GET', 'x-note': 'kept' }));
    const signed = verifyHttpSignature(request)!;
    assert.equal(signed.address, walletAddress(rsa));
    assert.equal(signed.alg, 'rsa-pss-sha512');
    assert.ok(signed.components.includes('x-note'));

    const refused = (change: (r: SignedRequest) => SignedRequest, reason: RegExp): void =>
      assert.throws(() => verifyHttpSignature(change(structuredClone(request))), (e) => e instanceof HttpSigError && reason.test(e.message), String(reason));
    const input = String(request.headers['signature-input']);
    refused((r) => ({ ...r, headers: { ...r.headers, 'x-note': 'changed' } }), /bad signature/);
    refused((r) => ({ ...r, headers: { ...r.headers, 'x-note': undefined } }), /signed header x-note is not in the request/);
    refused((r) => ({ ...r, headers: { ...r.headers, signature: undefined } }), /needs both Signature and Signature-Input/);
    refused((r) => ({ ...r, headers: { ...r.headers, 'signature-input': input.replace('"x-note"', '"x-note";sf') } }), /component parameters/);
    refused((r) => ({ ...r, headers: { ...r.headers, 'signature-input': input.replace('alg="rsa-pss-sha512"', 'alg="hmac-sha256"') } }), /not supported/);
    refused((r) => ({ ...r, headers: { ...r.headers, 'signature-input': input.replace('alg="rsa-pss-sha512"', 'alg="ed25519"') } }), /32-byte public key/);
    refused((r) => ({ ...r, headers: { ...r.headers, 'signature-input': `${input};expires=1` } }), /expired/);
    refused((r) => ({ ...r, headers: { ...r.headers, 'signature-input': `${input}, other=("x-note")` } }), /Signature-Input|one signature/);
    refused((r) => ({ ...r, headers: { ...r.headers, 'signature-input': input.replace('"x-note"', '"@target-uri"') } }), /@target-uri is not supported/);
    refused((r) => ({ ...r, headers: { ...r.headers, signature: String(r.headers.signature).replace(/^[^=]+=/, 'other=') } }), /name different signatures/);
    // A signature over a key that is not the one named: the keyid is the key.
    const other = await generateWallet('arweave');
    if (other.type !== 'arweave') throw new Error('an RSA wallet');
    refused((r) => ({ ...r, headers: { ...r.headers, 'signature-input': input.replace(/keyid="[^"]+"/, `keyid="${other.jwk.n}"`) } }), /bad signature/);
    assert.equal(verifyHttpSignature({ ...request, headers: { host: 'x' } }), null, 'no signature headers: an unsigned request');
  });

  test('an ed25519 signature (keyid: the 32-byte key) verifies and names the signer', async () => {
    const ed = await generateWallet('ed25519');
    if (ed.type !== 'ed25519') throw new Error('an Ed25519 wallet');
    const key = createPrivateKey({ key: { ...ed.jwk }, format: 'jwk' });
    const signer = async (create: (a: { type: number; publicKey: Buffer; alg: string }) => Promise<Uint8Array>) => ({
      signature: sign(null, await create({ type: 2, publicKey: ownerKey(ed), alg: 'ed25519' }), key),
      address: walletAddress(ed),
    });
    const request = await capture((url) => (connect({ MODE: 'mainnet', URL: url, signer } as never) as unknown as { request(a: object): Promise<Response> }).request({ path: `/${pid}/now`, method: 'GET' }));
    assert.deepEqual(verifyHttpSignature(request), { owner: ed.jwk.x, address: walletAddress(ed), alg: 'ed25519', components: ['signing-format'] });
    const forged = String(request.headers.signature).replace(/:(.)/, (_m, c: string) => `:${c === 'A' ? 'B' : 'A'}`);
    assert.throws(() => verifyHttpSignature({ ...request, headers: { ...request.headers, signature: forged } }), /bad signature/);
  });

  test('the signed Content-Digest binds a body when one is sent', async () => {
    const rsa = await generateWallet('arweave');
    if (rsa.type !== 'arweave') throw new Error('an RSA wallet');
    // ao-core-libs puts a multi-line field in the body, signs its Content-Digest, and (0.0.9) sends no body.
    const request = await capture((url) => (connect({ MODE: 'mainnet', URL: url, signer: createSigner(rsa.jwk) } as never) as unknown as { request(a: object): Promise<Response> }).request({ path: '/x', method: 'POST', data: 'line one\nline two' }));
    assert.ok(String(request.headers['signature-input']).includes('"content-digest"'));
    assert.equal(verifyHttpSignature(request)!.address, walletAddress(rsa));
    assert.equal(verifyHttpSignature({ ...request, body: Buffer.from('line one\nline two') })!.address, walletAddress(rsa));
    assert.throws(() => verifyHttpSignature({ ...request, body: Buffer.from('another body') }), /does not match the signed Content-Digest/);
  });
});
