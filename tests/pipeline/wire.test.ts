// The wire between stages (pipeline/wire.ts): items posted straight to a peer arrive whole and in
// order; what a stranger posts instead is refused by its size or shape before it is read.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { test } from 'node:test';
import { startWireServer, wireSender } from '../../src/pipeline/wire.js';

/** Writes `text` on a raw connection (and ends its side when `end`); resolves with all the server sent before it closed. */
function rawReply(port: number, text: string, end: boolean): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let reply = '';
    s.on('data', (d) => (reply += d.toString()));
    s.on('close', () => resolve(reply));
    s.on('error', () => resolve(reply));
    s.write(text);
    if (end) s.end();
  });
}

test('the wire: in-order delivery, refusals by size and shape, a slow sender let go, a dead peer reported once', { timeout: 30_000 }, async () => {
  const got: Uint8Array[] = [];
  const server = await startWireServer('127.0.0.1', 0, 1024, (raw) => void got.push(raw), 500);
  try {
    const failures: Error[] = [];
    const send = wireSender(server.url, (e) => failures.push(e));
    const items = Array.from({ length: 50 }, (_, i) => Uint8Array.from({ length: 1 + (i % 7) * 100 }, (_, k) => (i + k) & 255));
    for (const item of items) send(item);
    for (let i = 0; i < 200 && got.length < items.length; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(got, items, 'every item, whole and in order');
    assert.deepEqual(failures, []);

    const post = (body: Uint8Array | string, path = '/pipe', method = 'POST') => fetch(server.url.replace('/pipe', path), { method, body: method === 'GET' ? undefined : body });
    assert.equal((await post(new Uint8Array(1025))).status, 413, 'over the bound: refused by its length');
    assert.equal((await post('x', '/other')).status, 404);
    assert.equal((await fetch(server.url)).status, 404, 'GET');
    // A Content-Length that lies (more bytes than declared): cut off, nothing taken.
    const before = got.length;
    const port = Number(new URL(server.url).port);
    const lied = await rawReply(port, `POST /pipe HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n${'y'.repeat(10)}`, true);
    assert.match(lied, /^HTTP\/1\.1 200/, 'exactly the declared bytes are one item');
    assert.equal(got.length, before + 1);
    // A sender that declares 100 bytes and sends 3: let go at the receive limit, nothing taken.
    const slow = await rawReply(port, 'POST /pipe HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc', false);
    assert.match(slow, /408|^$/, 'timed out');
    assert.equal(got.length, before + 1);

    // A peer that is not there: reported once, later items dropped.
    const deadFailures: Error[] = [];
    const dead = wireSender('http://127.0.0.1:1/pipe', (e) => deadFailures.push(e), 2_000);
    dead(new Uint8Array(4));
    dead(new Uint8Array(4));
    for (let i = 0; i < 100 && deadFailures.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(deadFailures.length, 1);
  } finally {
    await server.close();
  }
});
