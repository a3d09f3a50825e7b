// Requests between units that run in one process (the embedded devnet, `verity units`) go straight
// to the other unit's HTTP app (Fastify's inject: the same routes, checks and answers as over a
// socket) instead of through a socket, undici and an HTTP parser on both sides. Units in other
// processes, and every unit's own clients, still use real HTTP.
import type { FastifyInstance } from 'fastify';

export type Fetch = typeof fetch;

/** Statuses whose response has no body (the Response constructor refuses one). */
const NO_BODY = new Set([101, 204, 205, 304]);

/** `work`, or the signal's reason once it aborts first (its listener removed either way). */
async function abortable<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  let onAbort!: () => void;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([work, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/**
 * A fetch that serves URLs of `apps` (origin → app, filled in as the units start listening) in
 * process, and every other URL with the global fetch.
 */
export function inProcessFetch(apps: Map<string, FastifyInstance>): Fetch {
  return async (input, init) => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
    const app = apps.get(url.origin);
    if (!app) return fetch(input, init);
    const signal = init?.signal;
    signal?.throwIfAborted();
    const body = init?.body;
    if (body !== undefined && body !== null && !(body instanceof Uint8Array) && typeof body !== 'string') throw new TypeError('in-process requests take a string or bytes as body');
    const headers = Object.fromEntries(new Headers(init?.headers).entries());
    const injected = app.inject({ method: (init?.method ?? 'GET') as 'GET', url: `${url.pathname}${url.search}`, headers, payload: body ?? undefined });
    const res = signal ? await abortable(injected, signal) : await injected;
    const out = new Headers();
    for (const [name, value] of Object.entries(res.headers)) {
      if (value === undefined) continue;
      for (const v of Array.isArray(value) ? value : [value]) out.append(name, String(v));
    }
    return new Response(NO_BODY.has(res.statusCode) ? null : res.rawPayload, { status: res.statusCode, headers: out });
  };
}
