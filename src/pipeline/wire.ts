// The wire between the stages of a pipeline: each stage serves `POST /pipe` on its own address and
// posts the channel's signed items (channel.ts) straight to its neighbours — no one in between.
// The server is a stranger's door: a body over the bound is refused by its Content-Length before it
// is read (and cut off if it lies), a slow sender is let go, and what arrives goes to the stage's
// inbox, which decides what it is. A sender posts to each peer one item at a time, in order, so
// the receiver's in-order check never sees a reorder the network made.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { ChannelError } from './channel.js';

export interface WireServer {
  /** Where peers post: http://host:port/pipe */
  url: string;
  close(): Promise<void>;
}

/**
 * Serves `POST /pipe` on host:port (0: any free port); `take` gets each body (a signed item, not
 * yet checked). Bodies are at most `maxBytes`; a request must arrive within `receiveMs`.
 */
export async function startWireServer(host: string, port: number, maxBytes: number, take: (raw: Uint8Array) => boolean | void, receiveMs = 10_000): Promise<WireServer> {
  const server: Server = createServer({ requestTimeout: receiveMs, headersTimeout: receiveMs, connectionsCheckingInterval: 250 }, (req: IncomingMessage, res: ServerResponse) => {
    if (req.method !== 'POST' || req.url !== '/pipe') return answerPipe(res, 404, 'POST /pipe');
    takeBody(req, res, maxBytes, take);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as { port: number };
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${address.port}/pipe`,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A JSON answer to a pipe post; an error closes the connection. */
export function answerPipe(res: ServerResponse, status: number, error?: string): void {
  res.writeHead(status, { 'content-type': 'application/json', connection: error ? 'close' : 'keep-alive' }).end(error ? JSON.stringify({ error }) : '{}');
}

/**
 * Reads a posted item of at most `maxBytes` (refused by its Content-Length before it is read, cut
 * off if it lies) and hands it to `take`, then answers 200.
 */
export function takeBody(req: IncomingMessage, res: ServerResponse, maxBytes: number, take: (raw: Uint8Array) => boolean | void): void {
  const declared = Number(req.headers['content-length']);
  if (!Number.isSafeInteger(declared) || declared < 0) return answerPipe(res, 411, 'a Content-Length is required');
  if (declared > maxBytes) return answerPipe(res, 413, `a body of at most ${maxBytes} bytes`);
  // Kept as it comes (a sender that declares much and sends little holds only what it sent).
  const chunks: Buffer[] = [];
  let at = 0;
  req.on('data', (chunk: Buffer) => {
    if (at + chunk.byteLength > declared) {
      req.destroy();
      return;
    }
    chunks.push(chunk);
    at += chunk.byteLength;
  });
  req.on('end', () => {
    if (at !== declared) return answerPipe(res, 400, 'the body is shorter than its Content-Length');
    if (take(new Uint8Array(Buffer.concat(chunks, at))) === false) return answerPipe(res, 503, 'busy: post it again');
    answerPipe(res, 200);
  });
  req.on('error', () => {});
}

/**
 * Posts items to one peer, one at a time and in order (the next waits for the previous one's
 * answer). A refusal or an unreachable peer is reported to `failed` once; items after it are dropped.
 */
export function wireSender(url: string, failed: (e: Error) => void, timeoutMs = 30_000, notYet?: { untilMs: number; retryMs: number }): (raw: Uint8Array) => void {
  let queue: Promise<void> = Promise.resolve();
  let broken = false;
  return (raw) => {
    queue = queue.then(async () => {
      if (broken) return;
      try {
        for (;;) {
          const res = await fetch(url, { method: 'POST', body: raw, headers: { 'content-type': 'application/octet-stream' }, signal: AbortSignal.timeout(timeoutMs), redirect: 'error' });
          const text = await res.text();
          // A peer that has not taken its stage yet answers 404, a busy one 503: with `notYet`,
          // asked again until then.
          if ((res.status === 404 || res.status === 503) && notYet && Date.now() + notYet.retryMs < notYet.untilMs) {
            await new Promise((resolve) => setTimeout(resolve, notYet.retryMs));
            continue;
          }
          if (!res.ok) throw new ChannelError(`${url} refused an item (${res.status}): ${text.slice(0, 200)}`);
          break;
        }
      } catch (e) {
        broken = true;
        failed(e instanceof Error ? e : new Error(String(e)));
      }
    });
  };
}
