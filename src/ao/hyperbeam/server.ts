// The HyperBEAM-style node interface, wired: one HTTP port in front of the embedded units that the
// unmodified aoconnect 0.0.98 drives in mainnet mode (`connect({ MODE: 'mainnet', URL, signer })`).
// Each request is routed by paths.ts, its signature verified (an ANS-104 item with verifyItem, an
// HTTP message signature with httpsig.ts) before anything is stored or evaluated, judged by
// rules.ts, then handed to the units through their in-process interfaces: a push goes through the
// Messenger's submit exactly like a message POSTed to the MU (the SU commits it before the answer;
// its outbox is cranked by the MU's queue), reads go to the Scheduler and the Compute Unit.
import { fastify, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { ItemError, parseItem, verifyItem, type Item } from '../../store/items.js';
import { listen, type Listening } from '../../store/listen.js';
import { ComputeError, type ComputeUnit } from '../cu.js';
import { LocateError } from '../locate.js';
import { MessengerError, type Messenger } from '../mu.js';
import { oneLine } from '../protocol.js';
import { HostUnavailable } from '../runtime.js';
import { MAX_ITEM_BYTES, SchedulerError, type Scheduler } from '../su.js';
import { HttpSigError, verifyHttpSignature, type HttpSignature } from './httpsig.js';
import { PathError, routeOf, type Route } from './paths.js';
import { RuleError, assignmentPlace, checkReadTarget, dryRunTags, pushPlan, resultsMessage, signingOf, slotMessage, type AoResult } from './rules.js';

export interface HyperbeamUnits {
  scheduler: Scheduler;
  compute: ComputeUnit;
  messenger: Messenger;
}

export interface HyperbeamOptions {
  /** Largest request body (a signed item): 413 past it, before it is read further. Default MAX_ITEM_BYTES. */
  maxItemBytes?: number;
}

/** A refusal: the HTTP status and the reason. */
class Refused extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** What signed the request, once verified. */
type Signed = { by: 'ans104'; item: Item } | { by: 'httpsig'; signature: HttpSignature } | { by: 'none' };

const processOf = (route: Route): string | undefined => ('process' in route ? route.process : undefined);

export function createHyperbeamApp(units: HyperbeamUnits, options: HyperbeamOptions = {}): FastifyInstance {
  const { scheduler, compute, messenger } = units;
  const maxItemBytes = options.maxItemBytes ?? MAX_ITEM_BYTES;
  const fail = (reply: FastifyReply, status: number, error: string): FastifyReply => reply.code(status).type('application/json; charset=utf-8').send({ error: oneLine(error) });
  const app = fastify({
    logger: false,
    // Checked against Content-Length before a byte of the body is read, and while it streams.
    bodyLimit: maxItemBytes,
    frameworkErrors: (error, _request, reply) => fail(reply, 400, error.message),
  });
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
  app.setErrorHandler((error, _request, reply) => {
    if (error instanceof LocateError) return fail(reply, 404, error.message);
    // A host extension could not read its data now: nothing was evaluated; ask again later.
    if (error instanceof HostUnavailable) return fail(reply, 503, error.message);
    // The units' own refusals and their being at a bound (4xx, 502, 503) pass on as they said them.
    if (error instanceof SchedulerError || error instanceof MessengerError || error instanceof ComputeError) {
      if (error instanceof MessengerError && error.retryAfterSeconds !== undefined) reply.header('retry-after', String(error.retryAfterSeconds));
      if (error.status !== 500) return fail(reply, error.status, error.message);
    }
    // Fastify's own (413 body too large, 415, 400 bad request line).
    const status = (error as { statusCode?: number }).statusCode;
    if (typeof status === 'number' && status >= 400 && status < 500) return fail(reply, status, (error as Error).message);
    process.stderr.write(`hyperbeam: internal error: ${(error as Error).stack ?? String(error)}\n`);
    return fail(reply, 500, 'internal error');
  });

  /** The log's head of a process scheduled here, or a 404. */
  async function head(process: string): Promise<ReturnType<typeof assignmentPlace>> {
    const latest = await scheduler.latest(process);
    if (!latest) throw new Refused(404, `no process ${process} is scheduled here`);
    return assignmentPlace(latest.assignment);
  }

  /** Verifies how the request is signed; the item's structure and Target are judged before its signature. */
  async function verified(request: FastifyRequest, route: Route, body: Buffer): Promise<Signed> {
    const header = (name: string): string | undefined => {
      const v = request.headers[name];
      return Array.isArray(v) ? v.join(', ') : v;
    };
    const signing = signingOf({ codecDevice: header('codec-device'), contentType: header('content-type'), signatureInput: header('signature-input') !== undefined }, body.length);
    if (signing === 'httpsig') {
      if (route.kind === 'push') throw new Refused(400, 'a push is stored for good, and this node stores signed ANS-104 data items only: send it with signing-format ans104 (aoconnect\'s message and spawn do)');
      const signature = verifyHttpSignature({ method: request.method, target: request.url, headers: request.headers, body });
      return signature ? { by: 'httpsig', signature } : { by: 'none' };
    }
    if (signing === 'none') {
      if (route.kind === 'push') throw new Refused(400, 'push needs a signed ANS-104 data item as the body');
      return { by: 'none' };
    }
    // Every signature a request carries must hold, the HTTP one too when an item is the body.
    if (header('signature-input') !== undefined || header('signature') !== undefined) verifyHttpSignature({ method: request.method, target: request.url, headers: request.headers, body });
    let item: Item;
    try {
      item = parseItem(body);
    } catch (e) {
      if (e instanceof ItemError) throw new Refused(400, e.message);
      throw e;
    }
    if (route.kind === 'push') {
      const plan = pushPlan(route, item, scheduler.address);
      if (plan.type === 'Message') await head(plan.process);
    } else {
      checkReadTarget(processOf(route), item);
      const process = processOf(route);
      if (process !== undefined) await head(process);
    }
    try {
      return { by: 'ans104', item: await verifyItem(item.raw) };
    } catch (e) {
      if (e instanceof ItemError) throw new Refused(400, e.message);
      throw e;
    }
  }

  /** The id of the message at `slot` of the log (slot 0: the process itself). */
  async function messageAt(process: string, slot: number): Promise<string> {
    const current = (await head(process)).nonce;
    if (slot > current) throw new Refused(404, `slot ${slot} of ${process} is not assigned yet: the log ends at ${current}`);
    const page = await scheduler.messages(process, { fromNonce: slot - 1, toNonce: slot, limit: 1 });
    const edge = page?.edges[0];
    const message = edge ? assignmentPlace(edge.node.assignment).message : undefined;
    if (!message) throw new Refused(404, `slot ${slot} of ${process} is not in the log`);
    return message;
  }

  async function serve(request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const route = routeOf(request.method, request.url);
    const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
    const signed = await verified(request, route, body);
    switch (route.kind) {
      case 'meta-address':
        return reply.type('text/plain; charset=utf-8').send(scheduler.address);
      case 'meta-info':
        return {
          address: scheduler.address,
          scheduler: scheduler.address,
          // The wallet that signs messages one process sends another (the MU's): a process names it
          // in its Authority tags to trust their From-Process (aoconnect's spawn takes `authority`).
          authority: messenger.address,
          compute: compute.address,
          'signing-formats': ['ans104', 'httpsig (reads only)'],
        };
      case 'push': {
        if (signed.by !== 'ans104') throw new Refused(400, 'push needs a signed ANS-104 data item as the body');
        const plan = pushPlan(route, signed.item, scheduler.address);
        // The MU's own path: quotas, the SU's commit before the answer, the outbox cranked after it.
        const { id } = await messenger.submit(signed.item.raw);
        const slot = plan.type === 'Process' ? 0 : await slotOf(plan.process, id);
        reply.header('process', plan.process).header('slot', String(slot)).header('id', id);
        if (plan.mode === 'async') return { slot, id, process: plan.process };
        // The message is in the log whatever happens now: a result the CU cannot give yet is said
        // in the answer, not made a failure of the push (the same push again gets the same slot).
        try {
          const result = await compute.result(plan.process, id);
          return { ...resultsMessage(plan.process, { slot, message: id }, result as unknown as AoResult), id };
        } catch (e) {
          return { slot, id, process: plan.process, 'result-error': oneLine((e as Error).message) };
        }
      }
      case 'result': {
        const at = 'slot' in route.of ? { slot: route.of.slot, message: await messageAt(route.process, route.of.slot) } : { slot: await slotOf(route.process, route.of.message), message: route.of.message };
        const result = await compute.result(route.process, at.message);
        return resultsMessage(route.process, at, result as unknown as AoResult);
      }
      case 'slot': {
        const place = await head(route.process);
        if (route.current) return reply.type('text/plain; charset=utf-8').send(String(place.nonce));
        return slotMessage(route.process, place);
      }
      case 'now': {
        await head(route.process);
        const s = await compute.state(route.process);
        return { process: route.process, 'at-slot': s.nonce, timestamp: s.timestamp, 'block-height': s.blockHeight, 'state-hash': s.stateHash, state: s.state ?? null };
      }
      case 'dryrun': {
        await head(route.process);
        const item = signed.by === 'ans104' ? signed.item : null;
        const owner = item?.address ?? (signed.by === 'httpsig' ? signed.signature.address : undefined);
        const outcome = await compute.dryRun(route.process, {
          Id: item?.id,
          Owner: owner,
          Data: item ? item.data.toString('utf8') : undefined,
          Anchor: item?.anchor ?? undefined,
          Tags: dryRunTags(route.tags, item),
        });
        return resultsMessage(route.process, null, outcome as unknown as AoResult);
      }
      case 'process': {
        const info = await scheduler.process(route.process);
        if (!info) throw new Refused(404, `no process ${route.process} is scheduled here`);
        return info;
      }
    }
  }

  /** The slot a message holds in a process's log. */
  async function slotOf(process: string, message: string): Promise<number> {
    const found = await scheduler.message(message, process);
    if (!found) throw new Refused(404, `message ${message} is not in the log of ${process}`);
    return assignmentPlace(found.assignment).nonce;
  }

  const handle = async (request: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
    try {
      return await serve(request, reply);
    } catch (e) {
      if (e instanceof Refused || e instanceof RuleError || e instanceof PathError) return fail(reply, e.status, e.message);
      if (e instanceof HttpSigError) return fail(reply, 400, e.message);
      throw e;
    }
  };
  // One route for every path: paths.ts is the router (HyperBEAM's paths do not fit a route table).
  app.all('*', handle);
  return app;
}

/** Serves the HyperBEAM interface on host:port (port 0: any free port). */
export async function startHyperbeam(units: HyperbeamUnits, options: HyperbeamOptions & { port: number; host?: string }): Promise<Listening> {
  return listen(createHyperbeamApp(units, options), options.port, options.host);
}
