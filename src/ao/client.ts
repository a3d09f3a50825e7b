// A small AO client over the legacy HTTP protocol: sign a message, hand it to the MU, read its
// result from the CU, dry-run. The node and the SDK use it; dApps may as well use aoconnect, which
// speaks the same protocol (tests/ao/units.test.ts).
import { randomBytes } from 'node:crypto';
import { createItem, type Item, type Tag } from '../store/items.js';
import { walletSigner, type Wallet } from '../store/wallet.js';
import type { Result } from './cu.js';
import { VerityError } from '../errors.js';

export class AoClientError extends VerityError {
  constructor(
    message: string,
    readonly status = 0,
  ) {
    super(message);
    this.name = 'AoClientError';
  }

  /** A unit that did not answer, or answered garbage: the gateway's fault, not the caller's. */
  override get httpStatus(): number {
    return 502;
  }
}

export interface MessageInput {
  tags: Tag[];
  data?: string;
}

export type DryRunResult = Omit<Result, 'Attestation'>;

export interface ResultsPage {
  pageInfo: { hasNextPage: boolean };
  edges: { cursor: string; node: Result }[];
}

export interface AoClient {
  /** Signs a message to `process` without sending it (to keep its bytes before they leave). */
  sign(process: string, input: MessageInput): Promise<Item>;
  /** Hands signed bytes to the MU; sending the same bytes again is harmless (same id, same slot). */
  send(raw: Uint8Array): Promise<string>;
  /** sign + send. */
  message(process: string, input: MessageInput): Promise<string>;
  result(process: string, message: string): Promise<Result>;
  /**
   * Results after `from` in slot order; with `wait` the CU answers as soon as one exists (or empty
   * when the time is up), so following a process needs no polling loop.
   */
  results(process: string, query: { from?: string; limit?: number; wait?: number; signal?: AbortSignal; after?: string }): Promise<ResultsPage>;
  /** The cursor of the process's newest result (undefined when it has none yet). */
  latest(process: string): Promise<string | undefined>;
  dryRun(process: string, input: MessageInput & { from?: string }): Promise<DryRunResult>;
  /** Spawns a process from a module on the scheduler with address `scheduler`. */
  spawn(module: string, scheduler: string, input: MessageInput): Promise<string>;
}

const AO_TAGS = (type: 'Message' | 'Process'): Tag[] => [
  { name: 'Data-Protocol', value: 'ao' },
  { name: 'Variant', value: 'ao.TN.1' },
  { name: 'Type', value: type },
];

async function json<T>(res: Response, what: string): Promise<T> {
  const body = (await res.json().catch(() => null)) as (T & { error?: string }) | null;
  if (!res.ok || body === null) throw new AoClientError(`${what}: ${res.status} ${body?.error ?? res.statusText}`, res.status);
  return body;
}

/** Answers that mean "not now": a unit at a bound (a full queue, a quota) or a store out of reach. */
const BUSY = new Set([429, 503]);
const BUSY_TRIES = 6;

/**
 * One HTTP request, asked again (a few times, with backoff or the unit's Retry-After) while the
 * unit says it is busy or the connection fails; every call here is safe to repeat (reads, and
 * signed bytes the MU and SU take once).
 */
async function request(url: string, init: RequestInit | undefined, what: string): Promise<Response> {
  for (let attempt = 1; ; attempt++) {
    let res: Response;
    try {
      res = await fetch(url, init);
    } catch (e) {
      if (init?.signal?.aborted) throw e;
      // A connection the unit closed as it was reused (keep-alive) fails at once: ask again.
      if (attempt < BUSY_TRIES) {
        await sleep(100 * attempt);
        continue;
      }
      throw new AoClientError(`${what}: cannot reach ${new URL(url).origin}: ${(e as Error).message}`);
    }
    if (!BUSY.has(res.status) || attempt === BUSY_TRIES || init?.signal?.aborted) return res;
    await res.body?.cancel();
    const after = Number(res.headers.get('retry-after'));
    await sleep(Number.isFinite(after) && after > 0 ? Math.min(after * 1000, 2000) : 100 * 2 ** attempt);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export function aoClient(options: { mu: string; cu: string; wallet: Wallet }): AoClient {
  const mu = options.mu.replace(/\/+$/, '');
  const cu = options.cu.replace(/\/+$/, '');
  const signer = walletSigner(options.wallet);
  // A fresh anchor per message: Ed25519 signatures are deterministic, and two identical messages
  // (two heartbeats) must stay two messages.
  const anchor = (): string => randomBytes(24).toString('base64url');
  const client: AoClient = {
    sign: (process, input) => createItem(input.data ?? '', signer, { target: process, anchor: anchor(), tags: [...AO_TAGS('Message'), ...input.tags] }),
    async send(raw) {
      const res = await request(`${mu}/`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: raw }, 'MU');
      return (await json<{ id: string }>(res, 'MU')).id;
    },
    async message(process, input) {
      return client.send((await client.sign(process, input)).raw);
    },
    async result(process, message) {
      const res = await request(`${cu}/result/${message}?process-id=${process}`, undefined, 'CU result');
      return json<Result>(res, 'CU result');
    },
    async results(process, query) {
      const params = new URLSearchParams({ sort: 'ASC', limit: String(query.limit ?? 100) });
      if (query.from !== undefined) params.set('from', query.from);
      else if (query.after !== undefined) params.set('after', query.after);
      if (query.wait !== undefined) params.set('wait', String(Math.round(query.wait)));
      const res = await request(`${cu}/results/${process}?${params}`, { signal: query.signal }, 'CU results');
      return json<ResultsPage>(res, 'CU results');
    },
    async latest(process) {
      const res = await request(`${cu}/results/${process}?sort=DESC&limit=1`, undefined, 'CU results');
      return (await json<ResultsPage>(res, 'CU results')).edges[0]?.cursor;
    },
    async dryRun(process, input) {
      const body = JSON.stringify({ Id: '0', Owner: input.from ?? '', Target: process, Tags: input.tags, Data: input.data ?? '' });
      const res = await request(`${cu}/dry-run?process-id=${process}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }, 'CU dry-run');
      return json<DryRunResult>(res, 'CU dry-run');
    },
    async spawn(module, scheduler, input) {
      const tags = [...AO_TAGS('Process'), { name: 'Module', value: module }, { name: 'Scheduler', value: scheduler }, ...input.tags];
      const item = await createItem(input.data ?? '', signer, { anchor: anchor(), tags });
      return client.send(item.raw);
    },
  };
  return client;
}

/** A process's refusal (its Code and Message tags), or an answer that did not come. */
export class RefusedError extends VerityError {
  constructor(
    override readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = 'RefusedError';
  }
}

/** A message's tags as name → value (a repeated name: its last value). */
export const tagMap = (m: { Tags: { name: string; value: string }[] }): Record<string, string> => Object.fromEntries(m.Tags.map((t) => [t.name, t.value])) as Record<string, string>;

/** The reply with `action` in a result or dry run, or a RefusedError with the Code/Message it carries instead. */
export function expectReply(result: Pick<Result, 'Messages' | 'Error'>, action: string): { tags: Record<string, string>; data: string } {
  if (result.Error) throw new RefusedError(500, `the process failed: ${String(result.Error)}`);
  const ok = replyOf(result, action);
  if (ok) return ok;
  for (const m of result.Messages) {
    const tags = tagMap(m);
    if (tags.Code) throw new RefusedError(Number(tags.Code), `${tags.Action}: ${tags.Message ?? 'refused'}`);
  }
  throw new RefusedError(500, `no ${action} in the answer`);
}

/**
 * Follows a process's results from `from` (a cursor taken before the message that will cause it)
 * until one holds a message to `target` with `action` that `match` accepts.
 */
export async function waitForMessage(
  ao: AoClient, process: string, want: { from: string | undefined; target: string; action: string; match: (tags: Record<string, string>) => boolean; timeoutMs: number },
): Promise<{ tags: Record<string, string>; data: string }> {
  const deadline = Date.now() + want.timeoutMs;
  let cursor = want.from;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw new RefusedError(504, `no ${want.action} from ${process} within ${want.timeoutMs} ms`);
    const page = await ao.results(process, { from: cursor, wait: Math.min(left, 10_000) });
    cursor = page.edges.at(-1)?.cursor ?? cursor;
    const found = messagesTo(page, want.target, want.action).find((m) => want.match(m.tags));
    if (found) return found;
  }
}

/** The outbox messages of a page of results addressed to `target` with this Action, in slot order. */
export function messagesTo(page: ResultsPage, target: string, action: string): { tags: Record<string, string>; data: string }[] {
  const found: { tags: Record<string, string>; data: string }[] = [];
  for (const { node } of page.edges) {
    for (const m of node.Messages) {
      if (m.Target !== target) continue;
      const tags = tagMap(m);
      if (tags.Action === action) found.push({ tags, data: m.Data ?? '' });
    }
  }
  return found;
}

/** The first outbox message of a result (or dry run) with this Action, as name → value. */
export function replyOf(result: Pick<Result, 'Messages'>, action: string): { tags: Record<string, string>; data: string } | null {
  for (const m of result.Messages) {
    const tags = tagMap(m);
    if (tags.Action === action) return { tags, data: m.Data ?? '' };
  }
  return null;
}
