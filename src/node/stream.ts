// The token stream of the leases a node is generating (docs/api.md "Streaming"): an HTTP server
// on the node, `GET /stream/<task>`, server-sent events of `{ index, token, text }` as each token
// is sampled, then an `end` event. What it serves is a preview from this node, checked by no one:
// the API compares it with the result the coordinator records. Bounded: one stream per lease,
// a cap on listeners (per task and in all), events kept only while the lease is live (and a short
// while after the run ends, for a listener that comes late), an idle timeout per listener once the
// run started. A lease waiting behind others is announced (`expect`) so that a listener can come
// as soon as the lease is drawn and wait for its first token, however long the queue.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { TextDecoder } from 'node:util';
import { printableBytes, type Model } from '../engine/index.js';
import { decodePiece } from '../engine/tokenizer.js';
import { answerPipe, takeBody } from '../pipeline/wire.js';

export interface StreamLimits {
  /** Listeners of one task's stream. */
  listenersPerTask: number;
  /** Listeners in all. */
  listeners: number;
  /** Streams kept at once (leases being generated, and ended ones in their grace period). */
  streams: number;
  /** A listener that got no event for this long is ended. */
  idleMs: number;
  /** How long an ended run's events are kept for a listener that comes late (at most to the lease's end). */
  keepMs: number;
}

export const DEFAULT_STREAM_LIMITS: StreamLimits = { listenersPerTask: 4, listeners: 256, streams: 256, idleMs: 30_000, keepMs: 30_000 };

export interface TokenEvent {
  index: number;
  token: number;
  text: string;
}

interface Entry {
  leaseEnd: number;
  events: TokenEvent[];
  /** The run began (open); before, the lease waits in the node's queue. */
  started: boolean;
  ended: boolean;
  listeners: Set<ServerResponse>;
  decoder: TextDecoder;
  model: Model;
  timer?: NodeJS.Timeout;
}

export interface TokenStreams {
  /** Where the server listens (http://host:port). */
  url: string;
  /** A lease was taken but waits for its turn: listeners may come now; its events start with open. */
  expect(task: string, leaseEnd: number, model: Model): void;
  /** A lease's run starts: its stream opens (again, if it ran before: the events start over). */
  open(task: string, leaseEnd: number, model: Model): void;
  /** A token sampled for the task after `prev` (the token before it); ignored unless its stream is open and running. */
  token(task: string, token: number, prev: number): void;
  /** The run ended (with a claim or not): listeners get the end event. */
  end(task: string): void;
  /**
   * A pipeline stage of the task runs here: `POST /pipe/<task>` bodies of at most `maxBytes` go to
   * `take` (its inbox checks them) until unpipe. Until then a post gets 404, which the sender
   * retries while its lease runs (wire.ts): a stage may start before its neighbour took its lease.
   */
  pipe(task: string, maxBytes: number, take: (raw: Uint8Array) => boolean): void;
  unpipe(task: string): void;
  close(): Promise<void>;
}

const TASK_ID = /^[A-Za-z0-9_-]{43}$/;
const sse = (event: string | null, data: unknown): string => `${event ? `event: ${event}\n` : ''}data: ${JSON.stringify(data)}\n\n`;

export async function startTokenStreams(host: string, port: number, limits: Partial<StreamLimits> = {}): Promise<TokenStreams> {
  const lim: StreamLimits = { ...DEFAULT_STREAM_LIMITS, ...limits };
  const entries = new Map<string, Entry>();
  let listeners = 0;

  const drop = (task: string, entry: Entry): void => {
    if (entries.get(task) !== entry) return;
    clearTimeout(entry.timer);
    entries.delete(task);
    for (const res of entry.listeners) res.end();
  };
  /** The entry goes at the lease's end (a lease that ran out is no one's to stream). */
  const keepUntil = (task: string, entry: Entry, until: number): void => {
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => drop(task, entry), Math.max(0, Math.min(until - Date.now(), 2 ** 31 - 1)));
    entry.timer.unref();
  };
  const add = (task: string, leaseEnd: number, model: Model, started: boolean): void => {
    if (entries.size >= lim.streams) {
      // The oldest ended stream makes room; with none ended, this run is not streamed.
      const ended = [...entries].find(([, e]) => e.ended);
      if (!ended) return;
      drop(ended[0], ended[1]);
    }
    const entry: Entry = { leaseEnd, events: [], started, ended: false, listeners: new Set(), decoder: new TextDecoder('utf-8'), model };
    keepUntil(task, entry, leaseEnd);
    entries.set(task, entry);
  };
  const send = (entry: Entry, chunk: string): void => {
    for (const res of entry.listeners) res.write(chunk);
  };

  /** Pipeline stages running here, by task (bounded by the node's capacity: one per lease). */
  const pipes = new Map<string, { maxBytes: number; take: (raw: Uint8Array) => boolean }>();
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const pipe = /^\/pipe\/([A-Za-z0-9_-]{43})$/.exec(req.url ?? '');
    if (req.method === 'POST' && pipe) {
      const stage = pipes.get(pipe[1]);
      if (!stage) return answerPipe(res, 404, 'no pipeline stage of this task runs here');
      return takeBody(req, res, stage.maxBytes, stage.take);
    }
    const m = /^\/stream\/([^/?#]+)$/.exec((req.url ?? '').split('?')[0]);
    const plain = (status: number, message: string): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ error: message }));
    };
    if (req.method !== 'GET' || !m) return plain(404, 'GET /stream/<task>');
    const task = m[1];
    if (!TASK_ID.test(task)) return plain(400, 'a task id is 43 base64url characters');
    const entry = entries.get(task);
    if (!entry) return plain(404, 'no stream for this task here');
    if (entry.listeners.size >= lim.listenersPerTask || listeners >= lim.listeners) return plain(429, 'too many listeners');
    res.on('error', () => {});
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
    // Sent now, not with the first event: a listener of a queued lease would otherwise see no
    // headers until its run starts, and give up (the API's relay waits 5 s for them).
    res.flushHeaders();
    for (const e of entry.events) res.write(sse(null, e));
    if (entry.ended) return res.end(sse('end', { tokens: entry.events.length }));
    entry.listeners.add(res);
    listeners++;
    // Before the run starts, the wait is bounded by the lease (the entry goes at its end).
    let idle = setTimeout(() => res.end(), entry.started ? lim.idleMs : Math.max(lim.idleMs, entry.leaseEnd - Date.now()));
    const written = res.write.bind(res);
    res.write = ((chunk: string) => {
      clearTimeout(idle);
      idle = setTimeout(() => res.end(), lim.idleMs);
      return written(chunk);
    }) as typeof res.write;
    res.once('close', () => {
      clearTimeout(idle);
      if (entry.listeners.delete(res)) listeners--;
    });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  // Listeners and pipeline posts together: past this, connections are refused.
  server.maxConnections = 1024;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as { port: number };
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${address.port}`;

  return {
    url,
    expect(task, leaseEnd, model) {
      if (!entries.has(task)) add(task, leaseEnd, model, false);
    },
    open(task, leaseEnd, model) {
      const old = entries.get(task);
      if (old && !old.started && !old.ended) {
        // Expected: the listeners that came early stay for the run.
        old.started = true;
        old.model = model;
        keepUntil(task, old, (old.leaseEnd = leaseEnd));
        return;
      }
      if (old) drop(task, old);
      add(task, leaseEnd, model, true);
    },
    token(task, token, prev) {
      const entry = entries.get(task);
      if (!entry || !entry.started || entry.ended) return;
      const t = entry.model.tokenizer;
      if (!Number.isInteger(token) || token < 0 || token >= t.vocab.length) return;
      // As completionText decodes: BPE pieces joined before UTF-8 decoding (a streaming decoder
      // holds back a character split across tokens), SentencePiece's printable pieces.
      const bytes = t.kind === 'bpe' ? t.pieces[token] : printableBytes(decodePiece(t, prev, token));
      const event: TokenEvent = { index: entry.events.length, token, text: entry.decoder.decode(bytes, { stream: true }) };
      entry.events.push(event);
      send(entry, sse(null, event));
    },
    end(task) {
      const entry = entries.get(task);
      if (!entry || !entry.started || entry.ended) return;
      const rest = entry.decoder.decode();
      if (rest !== '') {
        const event: TokenEvent = { index: entry.events.length, token: -1, text: rest };
        entry.events.push(event);
        send(entry, sse(null, event));
      }
      entry.ended = true;
      const chunk = sse('end', { tokens: entry.events.length });
      for (const res of entry.listeners) res.end(chunk);
      keepUntil(task, entry, Math.min(Date.now() + lim.keepMs, entry.leaseEnd));
    },
    pipe(task, maxBytes, take) {
      pipes.set(task, { maxBytes, take });
    },
    unpipe(task) {
      pipes.delete(task);
    },
    async close() {
      pipes.clear();
      for (const [task, entry] of [...entries]) drop(task, entry);
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
