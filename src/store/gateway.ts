// The gateway HTTP server: the part of an Arweave gateway's API that AO tools and arweave-js use
// (GraphQL, raw items, item data, uploads, network info), served from a Store. Everything a client
// sends is untrusted: bad input gets a one-line JSON error with a 4xx status, never a 5xx, and an
// unexpected failure a bare 500 with no internals. Uploads are held to an UploadPolicy (an item size
// limit, per-signer and global quotas per rolling window), because what is stored stays forever.
import { listen, type Listening } from './listen.js';
import { fastify, type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { executeGraphql } from './graphql.js';
import { ITEM_ID, ItemError, parseItem, type Item } from './items.js';
import type { Store } from './store.js';

export const DEFAULT_BODY_LIMIT = 16 * 1024 * 1024;

/**
 * Who may store how much through POST /tx and POST /. Storage is permanent and the gateway takes
 * items from anyone, so without this one client could fill the disk at line rate. Every check here
 * runs before the item's signature is verified and before anything is stored: the size on the raw
 * body, the quotas on the owner address read from the item's header.
 */
export interface UploadPolicy {
  /** Largest item in bytes: a bigger upload is a 413 before it is parsed (16 MiB, as the SU). */
  maxItemBytes: number;
  /** The rolling window the quotas count over, in ms (an hour). */
  windowMs: number;
  /** Bytes one owner address may store per window (256 MiB). */
  signerBytes: number;
  /** Items one owner address may store per window (250,000: about 70 a second, the units' top rate). */
  signerItems: number;
  /** Bytes all signers together may store per window (2 GiB): keys are free to make, so a fresh key per item stops here. */
  globalBytes: number;
  /**
   * Owner addresses no quota applies to (a deployment's own SU, CU and MU wallets, say): they are
   * neither refused nor counted. The item size limit still applies.
   */
  unlimitedSigners: readonly string[];
  /** Signers whose usage is remembered (10,000); past it the least recently active one is forgotten. */
  maxTrackedSigners: number;
}

export const DEFAULT_UPLOAD_POLICY: Readonly<UploadPolicy> = Object.freeze({
  maxItemBytes: 16 * 2 ** 20,
  windowMs: 60 * 60 * 1000,
  signerBytes: 256 * 2 ** 20,
  signerItems: 250_000,
  globalBytes: 2 * 2 ** 30,
  unlimitedSigners: Object.freeze([]),
  maxTrackedSigners: 10_000,
});

export interface GatewayOptions {
  /** Largest request body in bytes (uploads and GraphQL); 16 MiB by default. Uploads are also held to `uploads.maxItemBytes`. */
  bodyLimit?: number;
  /** The upload policy; what is left out is DEFAULT_UPLOAD_POLICY's. */
  uploads?: Partial<UploadPolicy>;
  /** The clock the quota windows run on, in ms (tests move it). */
  now?: () => number;
  logger?: boolean;
}

export type RunningGateway = Listening;

/** The policy `options.uploads` asks for, over the defaults; a nonsensical one is refused at start. */
export function uploadPolicy(options: Partial<UploadPolicy> = {}): UploadPolicy {
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<UploadPolicy>;
  const policy: UploadPolicy = { ...DEFAULT_UPLOAD_POLICY, ...given };
  for (const name of ['maxItemBytes', 'windowMs', 'signerBytes', 'signerItems', 'globalBytes', 'maxTrackedSigners'] as const) {
    const value = policy[name];
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`uploads.${name} must be a positive integer, not ${String(value)}`);
  }
  if (!Array.isArray(policy.unlimitedSigners) || !policy.unlimitedSigners.every((a) => typeof a === 'string' && ITEM_ID.test(a))) {
    throw new TypeError('uploads.unlimitedSigners must be a list of owner addresses (43 base64url characters)');
  }
  return policy;
}

// A quota window is a short list of buckets, each holding the uploads of one twelfth of windowMs.
// A bucket counts until a whole window has passed since it ended, so an upload counts for at least
// windowMs (the quota holds in every window of that length) and at most one bucket longer, and a
// signer's memory is at most 14 buckets however much it sends.
const BUCKETS_PER_WINDOW = 12;

/** The uploads that began in [start, start + the bucket length). */
export interface UsageBucket {
  readonly start: number;
  readonly bytes: number;
  readonly items: number;
}

/** Buckets, oldest first. */
export type UsageWindow = readonly UsageBucket[];

/** What one uploader and everyone together stored lately. */
export interface UploadUsage {
  signer: UsageWindow;
  global: UsageWindow;
}

export type QuotaName = 'signer-items' | 'signer-bytes' | 'global-bytes';

export type UploadDecision =
  /** `counted` is false for an unlimited signer: nothing is recorded for it. */
  | { allowed: true; counted: boolean }
  /** Larger than the item limit, or than a whole quota: no wait makes it fit. */
  | { allowed: false; status: 413; quota: 'item-bytes' | QuotaName; limit: number; message: string }
  /** Over a quota now: it fits again at `resetsAt` (ms), if nothing else is stored meanwhile. */
  | { allowed: false; status: 429; quota: QuotaName; limit: number; used: number; windowMs: number; resetsAt: number; retryAfterSeconds: number; message: string };

const bucketMs = (policy: UploadPolicy): number => Math.max(1, Math.ceil(policy.windowMs / BUCKETS_PER_WINDOW));
const expiryOf = (bucket: UsageBucket, policy: UploadPolicy): number => bucket.start + bucketMs(policy) + policy.windowMs;
const live = (window: UsageWindow, policy: UploadPolicy, now: number): UsageWindow => window.filter((b) => expiryOf(b, policy) > now);

/** The window with `change` added to the bucket of `change.at` (negative: an upload given back), expired buckets dropped. */
export function withUsage(window: UsageWindow, policy: UploadPolicy, now: number, change: { at: number; bytes: number; items: number }): UsageWindow {
  const start = Math.floor(change.at / bucketMs(policy)) * bucketMs(policy);
  const buckets = live(window, policy, now).slice();
  const i = buckets.findIndex((b) => b.start >= start);
  if (i >= 0 && buckets[i].start === start) {
    const b = buckets[i];
    buckets[i] = { start, bytes: b.bytes + change.bytes, items: b.items + change.items };
  } else if (change.bytes > 0 || change.items > 0) {
    const fresh = { start, bytes: change.bytes, items: change.items };
    if (expiryOf(fresh, policy) > now) buckets.splice(i < 0 ? buckets.length : i, 0, fresh);
  }
  return buckets.filter((b) => b.bytes > 0 || b.items > 0);
}

type Refusal = Extract<UploadDecision, { allowed: false }>;

const tooLarge = (bytes: number, quota: 'item-bytes' | QuotaName, limit: number, what: string): Refusal => ({
  allowed: false,
  status: 413,
  quota,
  limit,
  message: `the item is ${bytes} bytes, more than ${what} (${limit} bytes)`,
});

/** The 413 for an item over maxItemBytes, or null: all that can be known from the length alone. */
export const sizeRefusal = (policy: UploadPolicy, bytes: number): Refusal | null =>
  bytes > policy.maxItemBytes ? tooLarge(bytes, 'item-bytes', policy.maxItemBytes, 'the largest item this gateway takes') : null;

/**
 * Whether an upload of `item.bytes` by `item.signer` may be stored now. Pure: the caller records
 * an allowed, counted upload (withUsage) before it stores it, and gives it back if it was not stored.
 */
export function uploadDecision(policy: UploadPolicy, usage: UploadUsage, item: { bytes: number; signer: string }, now: number): UploadDecision {
  const oversized = sizeRefusal(policy, item.bytes);
  if (oversized) return oversized;
  if (policy.unlimitedSigners.includes(item.signer)) return { allowed: true, counted: false };
  if (item.bytes > policy.signerBytes) return tooLarge(item.bytes, 'signer-bytes', policy.signerBytes, 'one signer may store in a window');
  if (item.bytes > policy.globalBytes) return tooLarge(item.bytes, 'global-bytes', policy.globalBytes, 'this gateway stores in a window');
  const quotas = [
    { quota: 'signer-items' as const, window: usage.signer, unit: 'items' as const, need: 1, limit: policy.signerItems },
    { quota: 'signer-bytes' as const, window: usage.signer, unit: 'bytes' as const, need: item.bytes, limit: policy.signerBytes },
    { quota: 'global-bytes' as const, window: usage.global, unit: 'bytes' as const, need: item.bytes, limit: policy.globalBytes },
  ];
  let refusal: Extract<Refusal, { status: 429 }> | null = null;
  for (const q of quotas) {
    const buckets = live(q.window, policy, now);
    const used = buckets.reduce((n, b) => n + b[q.unit], 0);
    if (used + q.need <= q.limit) continue;
    // The upload fits once enough of the oldest buckets have expired; need ≤ limit, so some time does.
    let left = used;
    let resetsAt = now;
    for (const b of buckets) {
      left -= b[q.unit];
      resetsAt = expiryOf(b, policy);
      if (left + q.need <= q.limit) break;
    }
    // When several quotas are over, the one that frees up last says when to come back.
    if (refusal && refusal.resetsAt >= resetsAt) continue;
    const retryAfterSeconds = Math.max(1, Math.ceil((resetsAt - now) / 1000));
    const who = q.quota === 'global-bytes' ? 'all signers together have' : `signer ${item.signer} has`;
    refusal = {
      allowed: false,
      status: 429,
      quota: q.quota,
      limit: q.limit,
      used,
      windowMs: policy.windowMs,
      resetsAt,
      retryAfterSeconds,
      message: `${q.quota} quota: ${who} stored ${used} of ${q.limit} ${q.unit} in the last ${policy.windowMs / 1000} s; this item fits again at ${new Date(resetsAt).toISOString()} (retry after ${retryAfterSeconds} s)`,
    };
  }
  return refusal ?? { allowed: true, counted: true };
}

/** The gateway's memory of recent uploads: per signer (bounded, least recently active first) and in all. */
/** What each signer (and all together) stored in the window: bounded (maxTrackedSigners), in memory. The MU keeps one too. */
export function uploadLedger(policy: UploadPolicy) {
  const signers = new Map<string, UsageWindow>();
  let global: UsageWindow = [];
  return {
    usage: (signer: string): UploadUsage => ({ signer: signers.get(signer) ?? [], global }),
    change(signer: string, now: number, change: { at: number; bytes: number; items: number }): void {
      global = withUsage(global, policy, now, change);
      const window = withUsage(signers.get(signer) ?? [], policy, now, change);
      // Re-inserted, so that the Map's first key is always the least recently active signer.
      signers.delete(signer);
      if (window.length) signers.set(signer, window);
      // Forgetting a signer only lets it start afresh: the global quota still bounds what it stores.
      while (signers.size > policy.maxTrackedSigners) signers.delete(signers.keys().next().value as string);
    },
  };
}

// What arweave-js's `network.getInfo()` reads; a local store has no blocks.
const INFO = { network: 'verity.local', version: 1, release: 1, height: 0, current: '', blocks: 0, peers: 0, queue_length: 0, node_state_latency: 0 };

const CODES: Record<number, string> = { 400: 'bad-request', 404: 'not-found', 405: 'method-not-allowed', 413: 'too-large', 415: 'unsupported-media-type' };

// Messages may echo client input (a URL, a header): keep them to one short line.
const oneLine = (message: string): string => message.replace(/\s+/g, ' ').trim().slice(0, 300);

function fail(reply: FastifyReply, status: number, error: string, message: string): FastifyReply {
  return reply.code(status).type('application/json; charset=utf-8').send({ error, message: oneLine(message) });
}

// A tag value is arbitrary UTF-8; only a plain printable one can go into a header as it is.
const CONTENT_TYPE = /^[\x21-\x7e][\x20-\x7e]{0,255}$/;

export function createGateway(store: Store, options: GatewayOptions = {}): FastifyInstance {
  const policy = uploadPolicy(options.uploads);
  const clock = options.now ?? Date.now;
  const ledger = uploadLedger(policy);
  const bodyLimit = options.bodyLimit ?? DEFAULT_BODY_LIMIT;
  // An upload body is not read past the item limit: Fastify refuses a longer Content-Length before reading any of it.
  const uploadBodyLimit = Math.min(bodyLimit, policy.maxItemBytes);
  const app = fastify({
    bodyLimit,
    logger: options.logger ?? false,
    // A path the router cannot read (bad percent-encoding, an over-long segment) is a 400 too.
    frameworkErrors: (error, _request, reply) => fail(reply, 400, 'bad-url', error.message),
  });

  // Every body is read as bytes: uploads come with any content type (or none), and GraphQL JSON is
  // parsed here so that a bad body gets this server's error shape.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));

  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      const limit = request.routeOptions.bodyLimit ?? bodyLimit;
      const upload = request.method === 'POST' && (request.routeOptions.url === '/tx' || request.routeOptions.url === '/');
      return reply
        .code(413)
        .type('application/json; charset=utf-8')
        .send({ error: 'too-large', message: `the body is over ${limit} bytes, the most this route takes`, ...(upload ? { quota: 'item-bytes', limit } : {}) });
    }
    const status = error.statusCode ?? 500;
    if (status >= 400 && status < 500) return fail(reply, status, CODES[status] ?? 'bad-request', error.message);
    request.log.error(error);
    return fail(reply, 500, 'internal', 'internal error');
  });
  app.setNotFoundHandler((request, reply) => fail(reply, 404, 'not-found', `no route for ${request.method} ${request.url}`));

  const bodyOf = (body: unknown): Buffer => (Buffer.isBuffer(body) ? body : Buffer.alloc(0));

  /** The item, or null once the reply holds a 400 or 404. */
  async function itemFor(id: string, reply: FastifyReply): Promise<Item | null> {
    if (!ITEM_ID.test(id)) {
      fail(reply, 400, 'bad-id', 'an id is 43 base64url characters');
      return null;
    }
    const item = await store.get(id);
    if (!item) fail(reply, 404, 'not-found', `no item ${id}`);
    return item;
  }

  async function sendData(id: string, reply: FastifyReply): Promise<FastifyReply> {
    const item = await itemFor(id, reply);
    if (!item) return reply;
    const type = item.tags.find((t) => t.name === 'Content-Type')?.value;
    // nosniff: the data is whatever its uploader chose; the browser must take the declared type.
    return reply
      .type(type !== undefined && CONTENT_TYPE.test(type) ? type : 'application/octet-stream')
      .header('x-content-type-options', 'nosniff')
      .send(item.data);
  }

  function refuse(reply: FastifyReply, decision: Refusal): FastifyReply {
    const json = reply.type('application/json; charset=utf-8');
    if (decision.status === 413) return json.code(413).send({ error: 'too-large', message: oneLine(decision.message), quota: decision.quota, limit: decision.limit });
    const { quota, limit, used, windowMs, resetsAt, retryAfterSeconds } = decision;
    return json
      .code(429)
      .header('retry-after', String(retryAfterSeconds))
      .send({ error: 'over-quota', message: oneLine(decision.message), quota, limit, used, windowMs, resetsAt, retryAfterSeconds });
  }

  async function put(raw: Buffer, reply: FastifyReply): Promise<{ stored: boolean; reply: FastifyReply }> {
    try {
      const result = await store.put(raw);
      return { stored: !result.duplicate, reply: reply.send(result) };
    } catch (e) {
      if (e instanceof ItemError) return { stored: false, reply: fail(reply, 400, 'bad-item', e.message) };
      throw e;
    }
  }

  // Cheapest check first: the size (of the body alone), then the header's structure, then the
  // quotas of the owner it names; the signature is verified only by store.put, once all have passed.
  async function upload(body: unknown, reply: FastifyReply): Promise<FastifyReply> {
    const raw = bodyOf(body);
    if (raw.length === 0) return fail(reply, 400, 'bad-item', 'empty body: send a signed ANS-104 data item');
    const oversized = sizeRefusal(policy, raw.length);
    if (oversized) return refuse(reply, oversized);
    let header: Item;
    try {
      header = parseItem(raw);
    } catch (e) {
      if (e instanceof ItemError) return fail(reply, 400, 'bad-item', e.message);
      throw e;
    }
    // An item already stored takes no more room: it is answered (a duplicate) without being counted.
    if (await store.has(header.id)) return (await put(raw, reply)).reply;
    const signer = header.address;
    const now = clock();
    const decision = uploadDecision(policy, ledger.usage(signer), { bytes: raw.length, signer }, now);
    if (!decision.allowed) return refuse(reply, decision);
    if (!decision.counted) return (await put(raw, reply)).reply;
    // Recorded before the store is awaited, so that concurrent uploads cannot all pass one check;
    // given back when the item turns out forged, already stored, or the store fails.
    const counted = { at: now, bytes: raw.length, items: 1 };
    ledger.change(signer, now, counted);
    let stored = false;
    try {
      const done = await put(raw, reply);
      stored = done.stored;
      return done.reply;
    } finally {
      if (!stored) ledger.change(signer, clock(), { at: now, bytes: -counted.bytes, items: -counted.items });
    }
  }

  app.get('/', async () => INFO);
  app.get('/info', async () => INFO);

  app.post('/graphql', async (request, reply) => {
    let body: unknown;
    try {
      body = JSON.parse(bodyOf(request.body).toString('utf8'));
    } catch {
      return fail(reply, 400, 'bad-json', 'the body is not JSON');
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body) || typeof (body as { query?: unknown }).query !== 'string') {
      return fail(reply, 400, 'bad-request', 'the body must be {query, variables?, operationName?}');
    }
    const { query, variables, operationName } = body as Record<string, unknown>;
    return reply.send(await executeGraphql(store, { query, variables, operationName }));
  });
  // Without this, GET /graphql would be read as an item id.
  app.get('/graphql', async (_request, reply) => fail(reply, 405, 'method-not-allowed', 'POST a JSON body {query, variables?, operationName?}'));

  app.get<{ Params: { id: string } }>('/raw/:id', async (request, reply) => {
    const item = await itemFor(request.params.id, reply);
    return item ? reply.type('application/octet-stream').send(item.raw) : reply;
  });
  app.get<{ Params: { id: string } }>('/:id', (request, reply) => sendData(request.params.id, reply));
  // arweave-js reads data here.
  app.get<{ Params: { id: string } }>('/tx/:id/data', (request, reply) => sendData(request.params.id, reply));

  app.post('/tx', { bodyLimit: uploadBodyLimit }, (request, reply) => upload(request.body, reply));
  app.post('/', { bodyLimit: uploadBodyLimit }, (request, reply) => upload(request.body, reply));

  return app;
}

/** Starts a gateway on host:port (port 0: any free port); `url` is where clients reach it. */
export async function startGateway(store: Store, options: GatewayOptions & { port: number; host?: string }): Promise<RunningGateway> {
  return listen(createGateway(store, options), options.port, options.host);
}
