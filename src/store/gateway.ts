// The gateway HTTP server: the part of an Arweave gateway's API that AO tools and arweave-js use
// (GraphQL, raw items, item data, uploads, network info), served from a Store. Everything a client
// sends is untrusted: bad input gets a one-line JSON error with a 4xx status, never a 5xx, and an
// unexpected failure a bare 500 with no internals.
import { listen, type Listening } from './listen.js';
import { fastify, type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { executeGraphql } from './graphql.js';
import { ITEM_ID, ItemError, type Item } from './items.js';
import type { Store } from './store.js';

export const DEFAULT_BODY_LIMIT = 16 * 1024 * 1024;

export interface GatewayOptions {
  /** Largest request body in bytes (uploads and GraphQL); 16 MiB by default. */
  bodyLimit?: number;
  logger?: boolean;
}

export type RunningGateway = Listening;


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
  const app = fastify({
    bodyLimit: options.bodyLimit ?? DEFAULT_BODY_LIMIT,
    logger: options.logger ?? false,
    // A path the router cannot read (bad percent-encoding, an over-long segment) is a 400 too.
    frameworkErrors: (error, _request, reply) => fail(reply, 400, 'bad-url', error.message),
  });

  // Every body is read as bytes: uploads come with any content type (or none), and GraphQL JSON is
  // parsed here so that a bad body gets this server's error shape.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));

  app.setErrorHandler((error: FastifyError, request, reply) => {
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

  async function upload(body: unknown, reply: FastifyReply): Promise<FastifyReply> {
    const raw = bodyOf(body);
    if (raw.length === 0) return fail(reply, 400, 'bad-item', 'empty body: send a signed ANS-104 data item');
    try {
      return reply.send(await store.put(raw));
    } catch (e) {
      if (e instanceof ItemError) return fail(reply, 400, 'bad-item', e.message);
      throw e;
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

  app.post('/tx', (request, reply) => upload(request.body, reply));
  app.post('/', (request, reply) => upload(request.body, reply));

  return app;
}

/** Starts a gateway on host:port (port 0: any free port); `url` is where clients reach it. */
export async function startGateway(store: Store, options: GatewayOptions & { port: number; host?: string }): Promise<RunningGateway> {
  return listen(createGateway(store, options), options.port, options.host);
}
