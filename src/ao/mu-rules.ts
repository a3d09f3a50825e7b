// The Messenger Unit's rules, apart from its storage (the SQLite queue) and wiring (HTTP): which
// outbox entries of a result become which units of work (pushes, spawns, assignments) and which
// are cut by the crank limits, with the reasons; when a failed unit of work is tried again or given
// up; and when the crank loop's timer should fire. Pure functions of their arguments: the clock and
// everything read from other units are passed in.

/** Node's setTimeout takes at most 2^31 − 1 ms (longer is a TimeoutOverflowWarning and 1 ms). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export type JobKind = 'forward' | 'crank' | 'push' | 'spawn' | 'assign';

/** A unit of work to queue. */
export interface NewJob {
  kind: JobKind;
  key: string;
  /** Deliveries into one process keep their order: the rows of one lane run one at a time, in order. */
  lane: string | null;
  payload: unknown;
  depth: number;
  root: string;
}

export interface CrankPayload {
  message: string;
  process: string;
  /** The client's message (or assigned message) the chain started from: Pushed-For. */
  root: string;
}

export interface PushPayload {
  from: string;
  root: string;
  entry: unknown;
  /**
   * The sender's Module tag (From-Module) and Scheduler tag, read when its result was cranked: a
   * push then needs nothing from the sender's SU, so an SU that stops answering for its own
   * processes cannot stall the lanes of the processes they write to. Absent in rows queued by
   * earlier versions: read then.
   */
  module?: string | null;
  scheduler?: string | null;
}

export interface AssignPayload {
  process: string;
  message: string;
  root: string;
}

/** A crank limit that was hit. */
export interface Cap {
  name: 'depth cap' | 'fan-out cap' | 'push budget';
  reason: string;
}

export const crankJob = (message: string, process: string, root: string, depth: number): NewJob => ({
  kind: 'crank',
  key: `crank:${process}:${message}`,
  // One crank per process at a time: the CU evaluates a process one message at a time anyway, so
  // a process whose messages are slow to evaluate (at its compute limit) holds one slot, not all.
  lane: `crank:${process}`,
  payload: { message, process, root } satisfies CrankPayload,
  depth,
  root,
});

/** The three outbox lists of a CU result, or why the result is not one. */
export function outboxLists(result: unknown): { messages: unknown[]; spawns: unknown[]; assignments: unknown[] } | string {
  if (result === null || typeof result !== 'object') return 'the CU result is not a JSON object';
  const r = result as { Messages?: unknown; Spawns?: unknown; Assignments?: unknown };
  const lists: unknown[][] = [];
  for (const [name, v] of [['Messages', r.Messages], ['Spawns', r.Spawns], ['Assignments', r.Assignments]] as const) {
    if (v === undefined || v === null) lists.push([]);
    else if (!Array.isArray(v)) return `the CU result's ${name} is not a list`;
    else lists.push(v);
  }
  return { messages: lists[0], spawns: lists[1], assignments: lists[2] };
}

export interface CrankContext {
  /** The message whose result this is, its process, and the client's message the chain started from. */
  message: string;
  process: string;
  root: string;
  /** Hops from the client's message to this one. */
  depth: number;
  /** The sender's Module and Scheduler tags (null: it has none, or nothing is pushed or spawned). */
  module: string | null;
  scheduler: string | null;
  limits: { depth: number; fanout: number };
}

export interface Plan {
  children: NewJob[];
  /** Limits this result hit: the crank is recorded failed with these reasons, its allowed children still go. */
  capped: Cap[];
  /** Entries that were skipped, with why (logged). */
  skipped: string[];
}

/** Whether a result's outbox needs the sender's tags (a push or spawn carries From-Module). */
export const needsSenderTags = (lists: { messages: unknown[]; spawns: unknown[] }): boolean => lists.messages.length + lists.spawns.length > 0;

/**
 * Which outbox entries become which units of work, one hop further from the client's message:
 * each message a push (in its target's lane), each spawn a spawn, each assignment one per process
 * it names; nothing past the depth cap, no more than `fanout` of them.
 */
export function planOutbox(lists: { messages: unknown[]; spawns: unknown[]; assignments: unknown[] }, ctx: CrankContext): Plan {
  const { message, process: pid, root, module, scheduler } = ctx;
  const total = lists.messages.length + lists.spawns.length + lists.assignments.length;
  if (total === 0) return { children: [], capped: [], skipped: [] };
  if (ctx.depth >= ctx.limits.depth) {
    const outbox = `${total} outbox entries of ${message} (process ${pid}, Pushed-For ${root})`;
    return { children: [], capped: [{ name: 'depth cap', reason: `depth cap ${ctx.limits.depth}: ${outbox} not pushed` }], skipped: [] };
  }
  const depth = ctx.depth + 1;
  const children: NewJob[] = [];
  const skipped: string[] = [];
  for (const [k, entry] of lists.messages.entries()) {
    const target = (entry as { Target?: unknown } | null)?.Target;
    const lane = typeof target === 'string' ? target : null;
    children.push({ kind: 'push', key: `push:${pid}:${message}:${k}`, lane, payload: { from: pid, root, entry, module } satisfies PushPayload, depth, root });
  }
  for (const [k, entry] of lists.spawns.entries()) {
    children.push({ kind: 'spawn', key: `spawn:${pid}:${message}:${k}`, lane: null, payload: { from: pid, root, entry, module, scheduler } satisfies PushPayload, depth, root });
  }
  for (const [k, entry] of lists.assignments.entries()) {
    const { Processes, Message } = (entry ?? {}) as { Processes?: unknown; Message?: unknown };
    if (!Array.isArray(Processes) || typeof Message !== 'string') {
      skipped.push(`${pid} result of ${message}: assignment ${k} is not {Processes: [ids], Message: id}; skipped`);
      continue;
    }
    for (const [j, target] of Processes.entries()) {
      const process = String(target);
      children.push({ kind: 'assign', key: `assign:${pid}:${message}:${k}:${j}`, lane: process, payload: { process, message: Message, root } satisfies AssignPayload, depth, root });
    }
  }
  if (children.length > ctx.limits.fanout) {
    const reason = `fan-out cap ${ctx.limits.fanout}: ${children.length - ctx.limits.fanout} of ${children.length} outbox entries of ${message} (process ${pid}) not pushed`;
    return { children: children.slice(0, ctx.limits.fanout), capped: [{ name: 'fan-out cap', reason }], skipped };
  }
  return { children, capped: [], skipped };
}

/**
 * The push budget: a client message's chain may queue at most `budget` pushes, spawns and
 * assignments in all; `spent` are queued already. What fits goes, the rest is cut with a reason.
 */
export function withinBudget(children: NewJob[], spent: number, budget: number, what: string): { children: NewJob[]; cap: Cap | null } {
  const left = Math.max(0, budget - spent);
  if (children.length <= left) return { children, cap: null };
  const root = children[0].root;
  return {
    children: children.slice(0, left),
    cap: { name: 'push budget', reason: `push budget ${budget} for Pushed-For ${root} spent: ${children.length - left} of ${children.length} outbox entries of ${what} not pushed` },
  };
}

/** An HTTP status that says the same request will never pass: 4xx, less timeouts and rate limits. */
export const refusesForGood = (status: number): boolean => status >= 400 && status < 500 && status !== 408 && status !== 425 && status !== 429;

/** Exponential backoff after the n-th failure (n ≥ 1). */
export const backoff = (tries: number, baseMs: number, maxMs: number): number => Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(tries, 1) - 1, 30));

export interface RetryPolicy {
  attempts: number;
  baseMs: number;
  maxMs: number;
  maxAgeMs: number;
}

/**
 * What becomes of a unit of work that failed its `tries`-th try at `now`, failing since `since`:
 * failed for good (permanent, or out of tries or time) with the reason, or due again at `at`.
 */
export function afterFailure(policy: RetryPolicy, failure: { tries: number; since: number; now: number; permanent: boolean; why: string }): { failed: string } | { at: number } {
  const { tries, since, now, permanent, why } = failure;
  if (permanent) return { failed: why };
  if (tries >= policy.attempts || now - since >= policy.maxAgeMs) {
    const bound = tries >= policy.attempts ? `retry.attempts ${policy.attempts}` : `retry.maxAgeMs ${policy.maxAgeMs}`;
    return { failed: `gave up after ${tries} tries in ${((now - since) / 1000).toFixed(1)} s (${bound}): ${why}` };
  }
  return { at: now + backoff(tries, policy.baseMs, policy.maxMs) };
}

/**
 * How long the crank loop's timer waits for the next row due at `at` (ms), at `now`; null: arm
 * none (nothing due later, or a time that is no time). Never more than Node's 2^31 − 1 ms (a longer
 * delay becomes 1 ms and a TimeoutOverflowWarning: a loop), never less than 1 ms; a row due past
 * that is looked at again when the timer fires.
 */
export function timerDelay(at: number | null, now: number): number | null {
  if (at === null || !Number.isFinite(at) || !Number.isFinite(now)) return null;
  return Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(at - now)));
}
