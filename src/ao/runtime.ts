// The process runtime: a process module is JavaScript (compiled from TypeScript) exporting
// `handle(state, message, env)`. The CU runs it in QuickJS (compiled to WebAssembly), a fresh
// runtime per message, so every CU gets the same result, the same gas and the same limit hits: no
// clock, no randomness, no timers, no network, no filesystem; a memory limit and a compute limit
// counted in interpreter ticks (deterministic, unlike a wall-clock timeout). An error or a limit
// hit leaves the state as it was and returns `Error`.
import variant from '@jitl/quickjs-wasmfile-release-asyncify';
import {
  newQuickJSAsyncWASMModuleFromVariant, type QuickJSAsyncVariant, type QuickJSAsyncWASMModule, type QuickJSContext, type QuickJSHandle,
} from 'quickjs-emscripten-core';
import { outboxProblem } from './outbox.js';

/** The Module-Format tag of Verity process modules. */
export const MODULE_FORMAT = 'verity-js/1';

export interface Tag {
  name: string;
  value: string;
}

/** A message as a process sees it (AO's CU message object). */
export interface ProcessMessage {
  Id: string;
  Signature?: string;
  Data: string;
  Owner: string;
  Anchor?: string | null;
  /** The From-Process tag when a process sent it, else the owner. */
  From: string;
  'Forwarded-By'?: string;
  Tags: Tag[];
  Target: string;
  Epoch?: number;
  Nonce: number;
  Timestamp: number;
  'Block-Height': number;
  'Hash-Chain'?: string;
  Cron: boolean;
  'Read-Only'?: boolean;
}

export interface ProcessEnv {
  Process: { Id: string; Owner: string; Tags: Tag[] };
  Module: { Id: string; Owner: string; Tags: Tag[] };
}

export interface OutboxMessage {
  Target: string;
  Data?: string;
  Anchor?: string;
  Tags: Tag[];
}

export interface Outcome {
  Messages: OutboxMessage[];
  Spawns: { Data?: string; Anchor?: string; Tags: Tag[] }[];
  Assignments: { Processes: string[]; Message: string }[];
  Output: unknown;
  Error?: string;
  GasUsed: number;
}

export interface Evaluation extends Outcome {
  /** The new state (the old one when the message failed). */
  state: unknown;
}

export interface Limits {
  /** Bytes of QuickJS heap. */
  memory: number;
  /** Interrupt ticks (one every ~10,000 interpreter steps). */
  compute: number;
}

/**
 * The CU's caps. What a tick costs depends on the code: on the 2-core development machine a bare
 * `for (;;);` runs 1,000 ticks in 0.5 s, a loop of calls and property writes in 6.9 s — so the
 * compute cap's worst case is seconds, and only on its own evaluator thread. The coordinator's
 * messages use 3–5 ticks in the test suite (its sweep over every open task included).
 */
export const DEFAULT_LIMITS: Limits = { memory: 256 * 2 ** 20, compute: 1_000 };

/**
 * A host function a CU offers to processes (AO's extensions, like WeaveDrive): string in, string
 * out, and the same answer on every CU — it reads content-addressed data or computes. A process
 * calls it synchronously (`host.name(argument)`); the host side may be async (QuickJS is
 * asyncified). Its work is charged against the process's compute limit in the same ticks:
 * `ticks(argument, result)` (deterministic: sizes, never time), or HOST_CALL_TICKS by default.
 */
export interface Extension {
  (argument: string): string | Promise<string>;
  /** `result` is undefined when the call threw: refused work is paid for too. */
  ticks?: (argument: string, result?: string) => number;
  /**
   * The call with its whole price, for a host function whose work its argument and result do not
   * show (a model header it parsed on the way); used instead of calling and `ticks` when present.
   * A refusal throws a HostError carrying its price.
   */
  priced?: (argument: string) => Promise<{ value: string; ticks: number }>;
}
export type Extensions = Record<string, Extension>;

/**
 * The Extension tag a module carries to be given the CU's host functions (AO's modules name theirs
 * the same way, e.g. `Extension: WeaveDrive`); other processes get no `host` at all.
 */
export const HOST_EXTENSION = 'Verity-Host';

/** The default cost of a host call: one tick, plus one per 4 KiB in and out. */
export const HOST_CALL_TICKS = (argument: string, result = ''): number => 1 + Math.ceil((argument.length + result.length) / 4096);

/** A host function's refusal, with the ticks it cost (a refusal that cost nothing could be looped for free). */
export class HostError extends Error {
  constructor(
    message: string,
    readonly ticks: number,
  ) {
    super(message);
    this.name = 'HostError';
  }
}

/**
 * How a runtime reaches its host functions: by name, answering the result and the ticks it costs.
 * In this thread it calls the Extensions; in an evaluator thread it asks the CU's thread.
 */
export type HostCall = (name: string, argument: string) => Promise<{ value: string; ticks: number }>;

/**
 * Calls an extension and prices it. HostUnavailable passes through (nothing is evaluated); any
 * other failure is a HostError with its price, which the process sees as a thrown Error.
 */
export function hostCallOf(extensions: Extensions): HostCall {
  return async (name, argument) => {
    const fn = Object.hasOwn(extensions, name) ? extensions[name] : undefined;
    if (!fn) throw new HostError(`no host function ${name}`, 1);
    const valid = (ticks: number): number => (Number.isSafeInteger(ticks) && ticks > 0 ? ticks : 1);
    const price = (result?: string): number => valid((fn.ticks ?? HOST_CALL_TICKS)(argument, result));
    if (fn.priced) {
      let answer: { value: string; ticks: number };
      try {
        answer = await fn.priced(argument);
      } catch (e) {
        if (e instanceof HostUnavailable || e instanceof HostError) throw e;
        throw new HostError((e as Error).message, 1);
      }
      if (typeof answer?.value !== 'string') throw new HostError(`host.${name} answered ${typeof answer?.value}, not a string`, valid(answer?.ticks));
      return { value: answer.value, ticks: valid(answer.ticks) };
    }
    let value: string;
    try {
      value = await fn(argument);
    } catch (e) {
      if (e instanceof HostUnavailable) throw e;
      throw new HostError((e as Error).message, price());
    }
    if (typeof value !== 'string') throw new HostError(`host.${name} answered ${typeof value}, not a string`, price());
    return { value, ticks: price(value) };
  };
}

let quickjs: QuickJSAsyncWASMModule | null = null;

/** Loads QuickJS once per thread. */
export async function loadRuntime(): Promise<void> {
  if (quickjs) return;
  quickjs = await newQuickJSAsyncWASMModuleFromVariant(variant as unknown as QuickJSAsyncVariant);
  // quickjs-emscripten 0.32's asyncified runtime forgets its callbacks *before* freeing the runtime
  // (the sync one does it after), so host functions the final GC frees find no runtime and throw.
  // Forgetting them a moment later restores the sync variant's order.
  const callbacks = (quickjs as unknown as { callbacks: { deleteRuntime(rt: number): void } }).callbacks;
  const forget = callbacks.deleteRuntime.bind(callbacks);
  callbacks.deleteRuntime = (rt) => void Promise.resolve().then(() => forget(rt));
}

// What a process may not use, with the reason it gets.
const FORBIDDEN: Record<string, string> = {
  Date: 'a process has no clock: use the message Timestamp',
  setTimeout: 'a process has no timers',
  setInterval: 'a process has no timers',
  setImmediate: 'a process has no timers',
  queueMicrotask: 'a process runs synchronously',
  fetch: 'a process has no network',
};

const PRELUDE = `(() => {
  for (const [name, why] of Object.entries(${JSON.stringify(FORBIDDEN)})) {
    const blocked = function () { throw new Error(name + ' is not available in a process: ' + why); };
    for (const member of ['now', 'parse', 'UTC']) blocked[member] = blocked; // Date.now() too
    Object.defineProperty(globalThis, name, { value: blocked, writable: false, configurable: false });
  }
  Object.defineProperty(Math, 'random', {
    value: function () { throw new Error('Math.random is not available in a process: draw randomness from the message (its Hash-Chain)'); },
    writable: false, configurable: false,
  });
})();`;

const CALL = `(ns, input) => {
  if (typeof ns.handle !== 'function') throw new Error('the module does not export handle(state, message, env)');
  const [state, message, env] = JSON.parse(input);
  const out = ns.handle(state, message, env);
  if (out === null || typeof out !== 'object') throw new Error('handle must return an object { state, Messages?, Spawns?, Assignments?, Output? }');
  if (typeof out.then === 'function') throw new Error('handle must return synchronously, not a Promise');
  return JSON.stringify({
    state: out.state === undefined ? null : out.state,
    Messages: out.Messages ?? [], Spawns: out.Spawns ?? [], Assignments: out.Assignments ?? [],
    Output: out.Output ?? null,
  });
}`;

const ANY_ID = 'A'.repeat(43);

/**
 * Why a result's outbox can never be delivered, or null. Such a result is an Error and its state is
 * not kept: a Transfer whose Credit-Notice no MU can push fails whole, rather than debiting one
 * account and crediting none.
 */
function outboxFault(out: Pick<Outcome, 'Messages' | 'Spawns' | 'Assignments'>): string | null {
  const lists = [['message', out.Messages], ['spawn', out.Spawns]] as const;
  for (const [kind, list] of lists) {
    if (!Array.isArray(list)) return `the result's ${kind === 'message' ? 'Messages' : 'Spawns'} must be a list`;
    for (let i = 0; i < list.length; i++) {
      // A Target that names no process is not a fault: the MU records such a message as not
      // delivered and it stays readable in this result, as a message to a wallet does.
      const entry = list[i] as { Target?: unknown } | null;
      const problem = outboxProblem(kind, typeof entry?.Target === 'string' ? { ...entry, Target: ANY_ID } : entry);
      if (problem) return `outbox ${kind} ${i} can never be delivered (${problem}): nothing was kept`;
    }
  }
  if (!Array.isArray(out.Assignments)) return "the result's Assignments must be a list";
  return null;
}

function errorText(ctx: QuickJSContext, handle: QuickJSHandle): string {
  const e = ctx.dump(handle) as { name?: string; message?: string } | string;
  if (typeof e === 'object' && e !== null) return `${e.name ?? 'Error'}: ${e.message ?? ''}`;
  return String(e);
}

/**
 * Thrown by an extension whose data cannot be had right now (a store out of reach): the message is
 * not evaluated at all — evaluate() rethrows it — since a CU that answered "failed" here would part
 * from one whose store answered. The CU tries again later.
 */
export class HostUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HostUnavailable';
  }
}

// One evaluation at a time per QuickJS module: an asyncified module holds at most one suspended
// call, so two processes waiting on host functions at once would corrupt it.
let turn: Promise<unknown> = Promise.resolve();

/**
 * Runs `handle(state, message, env)` of a module in this thread (tests, tools; the CU evaluates in
 * its evaluator threads, evaluator.ts). Never throws for anything the module does: its errors (and
 * limit hits) come back in `Error` with the state unchanged.
 */
export function evaluate(
  source: string, state: unknown, message: ProcessMessage, env: ProcessEnv, limits: Limits = DEFAULT_LIMITS, extensions: Extensions = {},
): Promise<Evaluation> {
  const mine = turn.then(() => evaluateWith(source, state, message, env, limits, Object.keys(extensions), hostCallOf(extensions)));
  turn = mine.catch(() => undefined);
  return mine;
}

/**
 * Runs `handle(state, message, env)` with `host.<name>` for each of `hostNames`, reached through
 * `host`. The caller runs one at a time per thread (see `turn`).
 */
export async function evaluateWith(
  source: string, state: unknown, message: ProcessMessage, env: ProcessEnv, limits: Limits, hostNames: string[], host: HostCall,
): Promise<Evaluation> {
  if (!quickjs) throw new Error('call loadRuntime() before evaluate()');
  let unavailable: HostUnavailable | null = null;
  const runtime = quickjs.newRuntime();
  let ticks = 0;
  const overLimit = (): boolean => ticks > limits.compute;
  runtime.setMemoryLimit(limits.memory);
  runtime.setMaxStackSize(1 << 20);
  runtime.setInterruptHandler(() => ++ticks > limits.compute);
  const ctx = runtime.newContext();
  const failed = (why: string): Evaluation => ({ state, Messages: [], Spawns: [], Assignments: [], Output: null, Error: why, GasUsed: ticks });
  const handles: QuickJSHandle[] = [];
  const keep = <T extends QuickJSHandle>(h: T): T => {
    handles.push(h);
    return h;
  };
  try {
    if (hostNames.length > 0) {
      const hostObject = keep(ctx.newObject());
      for (const name of hostNames) {
        const f = keep(
          ctx.newAsyncifiedFunction(name, async (arg) => {
            // Host work is metered like the process's own: a call past the limit is not made.
            if (overLimit()) return { error: ctx.newError(`compute limit: more than ${limits.compute} ticks`) };
            const text = ctx.getString(arg);
            try {
              const { value, ticks: cost } = await host(name, text);
              ticks += cost;
              if (overLimit()) return { error: ctx.newError(`compute limit: more than ${limits.compute} ticks`) };
              return ctx.newString(value);
            } catch (e) {
              if (e instanceof HostUnavailable) unavailable ??= e;
              ticks += e instanceof HostError ? e.ticks : 1;
              return { error: ctx.newError(`host.${name}: ${(e as Error).message}`) };
            }
          }),
        );
        ctx.setProp(hostObject, name, f);
      }
      ctx.setProp(ctx.global, 'host', hostObject);
    }
    const prelude = ctx.evalCode(PRELUDE, 'prelude.js');
    if (prelude.error) return failed(errorText(ctx, keep(prelude.error)));
    keep(prelude.value);
    const module = ctx.evalCode(source, 'process.js', { type: 'module' });
    if (module.error) return failed(`the module does not load: ${errorText(ctx, keep(module.error))}`);
    const ns = keep(module.value);
    // Called through an async eval so that host functions may suspend it.
    ctx.setProp(ctx.global, '__process', ns);
    ctx.setProp(ctx.global, '__input', keep(ctx.newString(JSON.stringify([state, message, env]))));
    const result = await ctx.evalCodeAsync(`(${CALL})(__process, __input)`, 'call.js');
    if (unavailable) throw unavailable;
    if (result.error) {
      const why = errorText(ctx, keep(result.error));
      return failed(overLimit() ? `compute limit: more than ${limits.compute} ticks` : why);
    }
    const out = JSON.parse(ctx.getString(keep(result.value))) as Omit<Evaluation, 'GasUsed'>;
    const undeliverable = outboxFault(out);
    if (undeliverable) return failed(undeliverable);
    return { ...out, GasUsed: ticks };
  } catch (e) {
    // QuickJS itself ran out of memory (a deterministic outcome); anything else is not the process's doing.
    if (e instanceof HostUnavailable || !/memory/i.test((e as Error).message)) throw e;
    return failed(`memory limit: ${(e as Error).message}`);
  } finally {
    for (const h of handles.reverse()) if (h.alive) h.dispose();
    ctx.dispose();
    runtime.dispose();
  }
}
