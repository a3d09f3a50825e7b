// Attacks on the API's relay of a node's token stream (api.ts relayNodeStream) and on
// `verity verify`'s receipt files (commands/verify.ts): what a node that registered a hostile
// Stream-Url, or a hostile receipt file, can make the API or the verifier do. Real HTTP on 127.0.0.1.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { relayNodeStream } from '../../src/client/api.js';
import { readReceiptFile } from '../../src/client/commands/verify.js';
import { withTempDir } from '../helpers.js';

async function hostile(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    url,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const TASK = 'T'.repeat(43);
const LIMITS = { events: 10, chars: 100, lineBytes: 1024, connectMs: 2_000 };

test('a node stream of comments and blank lines (no events) is cut off by the bytes it sent, not held until the request ends', { timeout: 30_000 }, async () => {
  let sent = 0;
  let open = true;
  const node = await hostile((req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    // 16 KiB of SSE comments at a time, for as long as the API reads: none is a token event.
    const chunk = `${': keep-alive\n\n'.repeat(1170)}`;
    const pump = (): void => {
      while (open && !res.destroyed && res.write(chunk)) sent += chunk.length;
      if (open && !res.destroyed) res.once('drain', pump);
    };
    req.socket.on('close', () => (open = false));
    pump();
  });
  // The request's own end (the coordinator's final answer) comes only as a backstop, much later.
  const backstop = new AbortController();
  const timer = setTimeout(() => backstop.abort(), 5_000);
  try {
    const ended = await relayNodeStream(node.url, TASK, () => assert.fail('no text'), backstop.signal, LIMITS);
    assert.equal(ended, false);
    assert.equal(backstop.signal.aborted, false, `the relay read ${sent} bytes of nothing until the request ended`);
  } finally {
    clearTimeout(timer);
    open = false;
    await node.close();
  }
});

test('a Stream-Url with a query or a fragment cannot point the relay at another path than /stream/<task>', { timeout: 30_000 }, async () => {
  const seen: string[] = [];
  const internal = await hostile((req, res) => {
    seen.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'text/event-stream' }).end('event: end\ndata: {}\n\n');
  });
  try {
    for (const url of [`${internal.url}/admin/drop?all=1&x=`, `${internal.url}/admin/drop#`, `${internal.url}/a?`]) {
      await relayNodeStream(url, TASK, () => {}, new AbortController().signal, LIMITS);
    }
    // A path prefix is the node's to choose (a reverse proxy); the request still ends in /stream/<task>.
    assert.equal(await relayNodeStream(`${internal.url}/verity`, TASK, () => {}, new AbortController().signal, LIMITS), true);
    for (const path of seen) assert.match(path, new RegExp(`^(/[^?#]*)?/stream/${TASK}$`), `the relay asked the internal service for ${path}`);
    assert.ok(seen.includes(`/verity/stream/${TASK}`));
  } finally {
    await internal.close();
  }
});

test('an API answer file whose shown text is not its verity.full_text (cut at a stop) is not a receipt of that text', () =>
  withTempDir(async (dir) => {
    const receipt = { task: TASK, node: 'N'.repeat(43), model: 'a'.repeat(64), commitment: 'b'.repeat(64), traceRoot: 'c'.repeat(64), trace: 'D'.repeat(43) };
    const write = (name: string, doc: unknown): string => {
      const path = join(dir, name);
      writeFileSync(path, JSON.stringify(doc));
      return path;
    };
    // Honest: the text shown is the full text cut at a stop sequence.
    const honest = write('honest.json', { choices: [{ index: 0, text: 'Once upon', finish_reason: 'stop' }], verity: { task: TASK, receipt, full_text: 'Once upon a time' } });
    assert.equal(readReceiptFile(honest).text, 'Once upon a time');
    const chat = write('chat.json', { choices: [{ index: 0, message: { role: 'assistant', content: 'Once upon a time' } }], verity: { task: TASK, receipt } });
    assert.equal(readReceiptFile(chat).text, 'Once upon a time');
    // Forged: the text a reader sees was never generated; the real text rides along in full_text.
    const forged = write('forged.json', { choices: [{ index: 0, text: 'Send 100 tokens to Mallory', finish_reason: 'stop' }], verity: { task: TASK, receipt, full_text: 'Once upon a time' } });
    assert.throws(() => readReceiptFile(forged), /full_text/);
    const forgedChat = write('forged-chat.json', { choices: [{ index: 0, message: { role: 'assistant', content: 'Mallory' } }], verity: { task: TASK, receipt, full_text: 'Once upon a time' } });
    assert.throws(() => readReceiptFile(forgedChat), /full_text/);
    // Wrong types and odd ids are refused as not a receipt, not a crash later on.
    for (const [name, doc] of [
      ['nulls.json', { choices: [null], verity: null }],
      ['array.json', { choices: 'x', verity: [] }],
      ['model.json', { task: TASK, text: 'x', receipt: { ...receipt, model: '../../../../tmp/x' } }],
      ['task.json', { text: 'x', receipt: { ...receipt, task: { a: 1 } } }],
    ] as const)
      assert.throws(() => readReceiptFile(write(name, doc)), /not a receipt/, name);
  }));

test('a client answered 408 that never closes its end does not keep the server\'s socket (file descriptors) open', { timeout: 30_000, skip: process.platform !== 'linux' && 'counts /proc/self/fd' }, async () => {
  const { Socket } = await import('node:net');
  const { readdirSync } = await import('node:fs');
  const { startApi } = await import('../../src/client/api.js');
  const { generateWallet } = await import('../../src/store/wallet.js');
  const api = await startApi({ mu: 'http://127.0.0.1:1', cu: 'http://127.0.0.1:1', coordinator: 'c'.repeat(43), wallet: await generateWallet('ed25519'), keys: new Map([['sk-halfopen-key', await generateWallet('ed25519')]]), limits: { receiveMs: 300 } });
  const fds = (): number => readdirSync('/proc/self/fd').length;
  const sockets: InstanceType<typeof Socket>[] = [];
  try {
    const port = Number(new URL(api.url).port);
    const before = fds();
    const N = 20;
    // Each connects, sends nothing, reads its 408 and the server's end, and keeps its own end open.
    await Promise.all(
      Array.from({ length: N }, () =>
        new Promise<void>((resolve) => {
          const s = new Socket({ allowHalfOpen: true });
          sockets.push(s);
          let got = '';
          s.on('error', () => {});
          s.on('data', (d) => (got += d.toString()));
          s.on('end', () => {
            assert.match(got, /^HTTP\/1\.1 408 /);
            resolve();
          });
          s.connect(port, '127.0.0.1');
        }),
      ),
    );
    // The server lets go of its side: only the N client sockets of this process stay open.
    let now = fds();
    for (let i = 0; i < 50 && now - before > N; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      now = fds();
    }
    assert.ok(now - before <= N, `${now - before - N} server sockets still open after their 408`);
  } finally {
    for (const s of sockets) s.destroy();
    await api.close();
  }
});
