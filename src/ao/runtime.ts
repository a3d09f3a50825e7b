// The process runtime: a process module is JavaScript (compiled from TypeScript) exporting
// `handle(state, message, env)`. The CU runs each process in a QuickJS VM of its own (compiled to
// WebAssembly) that keeps the process's state in place between messages, so every CU gets the
// same result, the same gas and the same limit hits at a cost that does not grow with the state:
// no clock, no randomness, no timers, no network, no filesystem; a memory limit and a compute
// limit counted in interpreter ticks (deterministic, unlike a wall-clock timeout). An error or a
// limit hit undoes the message's writes and returns `Error`.
import variant from '@jitl/quickjs-wasmfile-release-asyncify';
import {
  newQuickJSAsyncWASMModuleFromVariant, type QuickJSAsyncContext, type QuickJSAsyncRuntime, type QuickJSAsyncVariant, type QuickJSAsyncWASMModule, type QuickJSContext,
  type QuickJSHandle,
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
   * A refusal throws a HostError carrying its price. `budget`, where the runtime gives it, is the
   * ticks left to the message: a call that would cost more can refuse before doing the work.
   */
  priced?: (argument: string, budget?: number) => Promise<{ value: string; ticks: number }>;
}
export type Extensions = Record<string, Extension>;

/**
 * The Extension tag a module carries to be given the CU's host functions (AO's modules name theirs
 * the same way, e.g. `Extension: WeaveDrive`); other processes get no `host` at all.
 */
export const HOST_EXTENSION = 'Verity-Host';

/**
 * The Extension tag of a Lua module that generates text inside its evaluation (aos-llama:
 * `require('llama')`, src/processes/llama.ts), and the host functions it is given.
 */
export const LLAMA_EXTENSION = 'Llama';
export const LLAMA_EXTENSION_NAMES = ['llama.info', 'llama.encode', 'llama.generate'] as const;

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
export type HostCall = (name: string, argument: string, budget?: number) => Promise<{ value: string; ticks: number }>;

/**
 * Calls an extension and prices it. HostUnavailable passes through (nothing is evaluated); any
 * other failure is a HostError with its price, which the process sees as a thrown Error.
 */
export function hostCallOf(extensions: Extensions): HostCall {
  return async (name, argument, budget) => {
    const fn = Object.hasOwn(extensions, name) ? extensions[name] : undefined;
    if (!fn) throw new HostError(`no host function ${name}`, 1);
    const valid = (ticks: number): number => (Number.isSafeInteger(ticks) && ticks > 0 ? ticks : 1);
    const price = (result?: string): number => valid((fn.ticks ?? HOST_CALL_TICKS)(argument, result));
    if (fn.priced) {
      let answer: { value: string; ticks: number };
      try {
        answer = await fn.priced(argument, budget);
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
// Where QuickJS keeps a context's interrupt counter (see resetTicks), found by calibrate().
let counterOffset = -1;

/** Loads QuickJS once per thread. */
export async function loadRuntime(): Promise<void> {
  if (quickjs) return;
  const module = await newQuickJSAsyncWASMModuleFromVariant(variant as unknown as QuickJSAsyncVariant);
  // quickjs-emscripten 0.32's asyncified runtime forgets its callbacks *before* freeing the runtime
  // (the sync one does it after), so host functions the final GC frees find no runtime and throw.
  // Forgetting them a moment later restores the sync variant's order — unless a new runtime has
  // been given the same address meanwhile (a VM opened right after one is disposed), whose
  // callbacks must stay.
  const callbacks = (module as unknown as { callbacks: { runtimeCallbacks: Map<number, unknown>; deleteRuntime(rt: number): void } }).callbacks;
  callbacks.deleteRuntime = (rt) => {
    const disposed = callbacks.runtimeCallbacks.get(rt);
    void Promise.resolve().then(() => {
      if (callbacks.runtimeCallbacks.get(rt) === disposed) callbacks.runtimeCallbacks.delete(rt);
    });
  };
  counterOffset = calibrate(module);
  quickjs = module;
}

const contextPointer = (ctx: QuickJSContext): number => (ctx as unknown as { ctx: { value: number } }).ctx.value;

/**
 * QuickJS calls the interrupt handler (one tick) each time a context's counter of interpreter
 * steps runs out, then sets it to 10,000 again; a new context starts at 0, so its first step is a
 * tick. A process's VM now lives across messages, so the counter a message starts with would be
 * whatever the previous messages left — and a CU restored from a checkpoint would count a message
 * one tick more or less than one that ran from slot 0, and sign a different GasUsed. Setting the
 * counter to 0 before each message makes every message count its ticks as in a fresh context, on
 * every CU. The field's place in QuickJS's JSContext is not exported, so it is found here, once per
 * thread, and checked: the one 32-bit word that starts at 0, is 10,000 minus the steps after the
 * first tick, and brings on a tick when set to 0 again.
 */
function calibrate(module: QuickJSAsyncWASMModule): number {
  const runtime = module.newRuntime();
  let ticks = 0;
  runtime.setInterruptHandler(() => (ticks++, false));
  const ctx = runtime.newContext();
  try {
    const words = (): Int32Array => new Int32Array(module.getWasmMemory().buffer, contextPointer(ctx), 128);
    const before = Array.from(words());
    ctx.evalCode('for (let i = 0; i < 100; i++);').dispose();
    const after = words();
    const candidates = before.flatMap((v, i) => (v === 0 && after[i] > 9_000 && after[i] < 10_000 ? [i] : []));
    for (const index of candidates) {
      const was = ticks;
      words()[index] = 0;
      ctx.evalCode('0').dispose();
      if (ticks === was + 1 && words()[index] > 9_000) return index * 4;
    }
  } finally {
    ctx.dispose();
    runtime.dispose();
  }
  throw new Error('cannot find the interrupt counter of this QuickJS build: the CU cannot count ticks the same way on every machine');
}

function resetTicks(ctx: QuickJSContext): void {
  new Int32Array(quickjs!.getWasmMemory().buffer, contextPointer(ctx) + counterOffset, 1)[0] = 0;
}

// What a process may not use, with the reason it gets.
const FORBIDDEN: Record<string, string> = {
  Date: 'a process has no clock: use the message Timestamp',
  setTimeout: 'a process has no timers',
  setInterval: 'a process has no timers',
  setImmediate: 'a process has no timers',
  queueMicrotask: 'a process runs synchronously',
  fetch: 'a process has no network',
  // What they answer depends on when the collector ran, which depends on the VM's history.
  WeakRef: 'a process cannot observe garbage collection',
  FinalizationRegistry: 'a process cannot observe garbage collection',
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

/**
 * The VM's side of a process: its state, kept in the VM between messages, and the write journal
 * that rolls a failed message back. The process sees its state through proxies that note, before
 * each write, what the property was (an undo log); a message that fails has its writes undone in
 * reverse, one that succeeds drops the log. The cost is the writes a message makes, never the
 * state's size. Values written are stored unwrapped, so the state itself never holds a proxy the
 * process did not put there. Undoing must give the state back exactly, key order included (it
 * shows in every JSON of it): a named key deleted and put back would come last, so a message's
 * deletes of named keys only hide the key (the proxies answer as if it were gone) and happen when
 * the message is kept; a key deleted and then set again in one message moves for real, and its
 * object's key order is noted first so that undoing restores it (index keys have no such order).
 * An object made non-extensible through a proxy could not be undone, so that is refused. Not
 * reachable from the process: it lives in this closure, not on globalThis.
 */
const SUPPORT = `(() => {
  const targetOf = new WeakMap(), proxyOf = new WeakMap();
  let undo = null, root = null, next = null, env = '';
  // Named keys this message deleted, per object (still on it until commit).
  let deleted = null;
  const journaled = (v) => {
    if (v === null || typeof v !== 'object' || targetOf.has(v)) return v;
    let p = proxyOf.get(v);
    if (p === undefined) { p = new Proxy(v, handler); proxyOf.set(v, p); targetOf.set(p, v); }
    return p;
  };
  const bare = (v) => (v !== null && typeof v === 'object' && targetOf.has(v) ? targetOf.get(v) : v);
  // Undo-log entries that are not a property's old descriptor.
  const PROTOTYPE = {}, HIDDEN = {}, UNHIDDEN = {}, ORDER = {};
  const INDEX = /^(?:0|[1-9][0-9]{0,9})$/;
  const named = (t, k) => typeof k === 'string' && !Array.isArray(t) && !INDEX.test(k);
  const gone = (t, k) => deleted !== null && deleted.get(t)?.has(k) === true;
  const note = (t, k) => {
    if (undo === null) return;
    // Writing an array past its end moves its length without a write to 'length': note that too.
    if (Array.isArray(t) && typeof k === 'string' && k !== 'length' && +k >= t.length) undo.push(t, 'length', Reflect.getOwnPropertyDescriptor(t, 'length'));
    undo.push(t, k, Reflect.getOwnPropertyDescriptor(t, k));
  };
  // Shortening an array drops its elements past the new length without a write to each: note them.
  const noteLength = (t, k, length) => {
    if (undo === null || k !== 'length' || !Array.isArray(t)) return;
    const n = Number(length);
    for (let i = t.length - 1; i >= n && i >= 0; i--) undo.push(t, String(i), Reflect.getOwnPropertyDescriptor(t, String(i)));
  };
  // A hidden key written again: delete it for real (it then comes last, as in any object), after noting the order to restore.
  const revive = (t, k) => {
    if (!gone(t, k)) return;
    undo.push(t, ORDER, Reflect.ownKeys(t));
    note(t, k);
    Reflect.deleteProperty(t, k);
    deleted.get(t).delete(k);
    undo.push(t, UNHIDDEN, k);
  };
  const above = (t) => Reflect.getPrototypeOf(t);
  const handler = {
    get: (t, k) => (gone(t, k) ? (above(t) === null ? undefined : Reflect.get(above(t), k)) : journaled(Reflect.get(t, k))),
    has: (t, k) => (gone(t, k) ? above(t) !== null && Reflect.has(above(t), k) : Reflect.has(t, k)),
    ownKeys(t) {
      const keys = Reflect.ownKeys(t), hidden = deleted?.get(t);
      return hidden === undefined ? keys : keys.filter((k) => !hidden.has(k));
    },
    set(t, k, v, receiver) {
      if (receiver !== proxyOf.get(t)) return Reflect.set(t, k, v, receiver);
      revive(t, k);
      noteLength(t, k, v);
      note(t, k);
      return Reflect.set(t, k, bare(v));
    },
    defineProperty(t, k, d) {
      revive(t, k);
      if ('value' in d) noteLength(t, k, d.value);
      note(t, k);
      return Reflect.defineProperty(t, k, 'value' in d ? { ...d, value: bare(d.value) } : d);
    },
    deleteProperty(t, k) {
      if (undo === null || !named(t, k)) { note(t, k); return Reflect.deleteProperty(t, k); }
      if (gone(t, k)) return true;
      const d = Reflect.getOwnPropertyDescriptor(t, k);
      if (d === undefined) return true;
      if (!d.configurable) return false;
      deleted ??= new Map();
      if (!deleted.has(t)) deleted.set(t, new Set());
      deleted.get(t).add(k);
      undo.push(t, HIDDEN, k);
      return true;
    },
    getOwnPropertyDescriptor(t, k) {
      if (gone(t, k)) return undefined;
      const d = Reflect.getOwnPropertyDescriptor(t, k);
      if (d !== undefined && 'value' in d && (d.writable || d.configurable)) d.value = journaled(d.value);
      return d;
    },
    setPrototypeOf(t, p) { if (undo !== null) undo.push(t, PROTOTYPE, Reflect.getPrototypeOf(t)); return Reflect.setPrototypeOf(t, p); },
    preventExtensions: () => false,
  };
  const commit = () => {
    for (const [t, keys] of deleted ?? []) for (const k of keys) Reflect.deleteProperty(t, k);
    undo = null; deleted = null;
  };
  // Undoes the log back to \`mark\` (0: the whole message), newest first.
  const undoTo = (mark) => {
    const log = undo;
    for (let i = log.length - 3; i >= mark; i -= 3) {
      const t = log[i], k = log[i + 1], d = log[i + 2];
      if (k === PROTOTYPE) Reflect.setPrototypeOf(t, d);
      else if (k === HIDDEN) deleted.get(t).delete(d);
      else if (k === UNHIDDEN) deleted.get(t).add(d);
      else if (k === ORDER) {
        // Each named key again in the order it had (deleting and defining moves a key last).
        for (const key of d) {
          if (!named(t, key)) continue;
          const own = Reflect.getOwnPropertyDescriptor(t, key);
          if (own === undefined) continue;
          Reflect.deleteProperty(t, key);
          Reflect.defineProperty(t, key, own);
        }
      } else if (d === undefined) Reflect.deleteProperty(t, k);
      else Reflect.defineProperty(t, k, d);
    }
    log.length = mark;
  };
  const rollback = () => {
    try {
      if (undo !== null) undoTo(0);
    } finally {
      undo = null; deleted = null;
    }
  };
  // Savepoints for the process itself: \`journal.mark()\`, then \`journal.undo(mark)\` puts the state
  // back as it was at the mark, at the cost of the writes since — what a handler that must drop part
  // of its work (and keep the rest) would otherwise copy its whole state for.
  Object.defineProperty(globalThis, 'journal', {
    value: Object.freeze({
      mark: () => (undo === null ? 0 : undo.length),
      undo(mark) {
        if (undo === null) return;
        if (!Number.isInteger(mark) || mark < 0 || mark > undo.length || mark % 3 !== 0) throw new RangeError('journal.undo: not a mark of this message');
        undoTo(mark);
      },
    }),
  });
  return {
    open(stateText, envText) { root = JSON.parse(stateText); env = envText; },
    apply(ns, messageText) {
      if (typeof ns.handle !== 'function') throw new Error('the module does not export handle(state, message, env)');
      // A process calling its own entry again would start a second journal over the first.
      if (undo !== null) throw new Error('a message cannot be applied from inside one');
      undo = [];
      const out = ns.handle(journaled(root), JSON.parse(messageText), JSON.parse(env));
      if (out === null || typeof out !== 'object') throw new Error('handle must return an object { state, Messages?, Spawns?, Assignments?, Output? }');
      if (typeof out.then === 'function') throw new Error('handle must return synchronously, not a Promise');
      next = out.state === undefined ? null : bare(out.state);
      return JSON.stringify({ Messages: out.Messages ?? [], Spawns: out.Spawns ?? [], Assignments: out.Assignments ?? [], Output: out.Output ?? null });
    },
    commit() { root = next; next = null; commit(); },
    rollback() { rollback(); next = null; },
    state: () => JSON.stringify(root) ?? 'null',
  };
})()`;

const ANY_ID = 'A'.repeat(43);

/**
 * Why a result's outbox can never be delivered, or null. Such a result is an Error and its state is
 * not kept: a Transfer whose Credit-Notice no MU can push fails whole, rather than debiting one
 * account and crediting none.
 */
export function outboxFault(out: Pick<Outcome, 'Messages' | 'Spawns' | 'Assignments'>): string | null {
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

// One call into QuickJS at a time per thread: an asyncified module holds at most one suspended
// call, so two VMs waiting on host functions at once (or one running while another waits) would
// corrupt it. Every entry into a VM goes through here.
let turn: Promise<unknown> = Promise.resolve();
function exclusive<T>(work: () => Promise<T>): Promise<T> {
  const mine = turn.then(work);
  turn = mine.catch(() => undefined);
  return mine;
}

/**
 * What every process gets as the global `journal`: savepoints of its state within a message.
 * `undo(mark)` puts the state back as it was at `mark()`, at the cost of the writes since then.
 */
export interface Journal {
  mark(): number;
  undo(mark: number): void;
}

/** What a process VM is made of: its module, its environment, its caps and its host functions. */
export interface ProcessSpec {
  /** The module's language: JavaScript (Module-Format verity-js/1, the default) or Lua (verity-lua/1, lua-runtime.ts). */
  format?: 'js' | 'lua';
  source: string;
  env: ProcessEnv;
  limits: Limits;
  /** The host functions it is given (`host.<name>`), reached through `host`. */
  hostNames: string[];
}

const isMemoryFault = (why: string): boolean => /out of memory|memory limit/i.test(why);

/**
 * A process's VM: its module loaded once and its state kept in place between messages (in QuickJS,
 * compiled to WebAssembly, so every CU gets the same result, the same gas and the same limit hits:
 * no clock, no randomness, no timers, no network, no filesystem). A message costs what it does,
 * not what the state weighs: nothing is parsed or serialised but the message and the outcome.
 * A message that fails (throws, hits a limit, or leaves an outbox no MU could push) has its writes
 * undone (the journal in SUPPORT) and returns `Error`, the state as it was.
 *
 * What a VM's history could change, and why it does not: ticks are counted from a reset counter
 * (resetTicks); the memory a message may use could depend on garbage earlier messages left, so a
 * message that runs out of memory is decided again in a fresh VM holding only the state
 * (`apply`): a fresh VM is what every CU can rebuild, and one that has run longer holds at least
 * as much. The module's top level runs once per VM (after a restart, from a checkpoint, or when
 * the CU loads the process again), so a process must keep what it remembers in its state, never in
 * top-level variables that handle() changes — as AO processes keep theirs in globals that the
 * CU's memory snapshot holds.
 * One VM runs one message at a time (an asyncified QuickJS module holds one suspended call).
 */
export class ProcessVM {
  private ticks = 0;
  private counting = false;
  private unavailable: HostUnavailable | null = null;

  private constructor(
    private readonly spec: ProcessSpec,
    private readonly host: HostCall,
    private readonly runtime: QuickJSAsyncRuntime,
    private readonly ctx: QuickJSAsyncContext,
    private readonly handles: QuickJSHandle[],
    private readonly support: QuickJSHandle | null,
    private readonly ns: QuickJSHandle | null,
    /** Why the module cannot run at all; every message fails with it. */
    private readonly loadError: string | null,
  ) {}

  /** A VM for `spec` holding `state` (JSON; 'null' before the process's first message). */
  static open(spec: ProcessSpec, state: string, host: HostCall): Promise<ProcessVM> {
    return exclusive(() => ProcessVM.openNow(spec, state, host));
  }

  /** One message on `state` in a VM of its own, disposed after: the state after it, or `state` when it failed. */
  static once(spec: ProcessSpec, state: unknown, message: ProcessMessage, host: HostCall): Promise<Evaluation> {
    return exclusive(async () => {
      let vm = await ProcessVM.openNow(spec, JSON.stringify(state ?? null), host);
      try {
        const { outcome, vm: after } = await vm.applyNow(message);
        vm = after;
        return { ...outcome, state: outcome.Error === undefined ? (JSON.parse(vm.stateNow()) as unknown) : state };
      } finally {
        vm.dispose();
      }
    });
  }

  private static async openNow(spec: ProcessSpec, state: string, host: HostCall): Promise<ProcessVM> {
    if (!quickjs) throw new Error('call loadRuntime() before opening a process VM');
    const runtime = quickjs.newRuntime();
    runtime.setMaxStackSize(1 << 20);
    const ctx = runtime.newContext();
    const handles: QuickJSHandle[] = [];
    const keep = <T extends QuickJSHandle>(h: T): T => (handles.push(h), h);
    let vm: ProcessVM | null = null;
    const make = (support: QuickJSHandle | null, ns: QuickJSHandle | null, loadError: string | null): ProcessVM =>
      (vm = new ProcessVM(spec, host, runtime, ctx, handles, support, ns, loadError));
    runtime.setInterruptHandler(() => vm !== null && vm.counting && ++vm.ticks > spec.limits.compute);
    try {
      const support = keep(ctx.unwrapResult(ctx.evalCode(SUPPORT, 'support.js')));
      // The state is taken in with no memory cap (it was kept under it), the module under it.
      ctx.callMethod(support, 'open', [keep(ctx.newString(state)), keep(ctx.newString(JSON.stringify(spec.env)))]).unwrap().dispose();
      runtime.setMemoryLimit(spec.limits.memory);
      if (spec.hostNames.length > 0) {
        const hostObject = keep(ctx.newObject());
        for (const name of spec.hostNames) ctx.setProp(hostObject, name, keep(ctx.newAsyncifiedFunction(name, (arg) => vm!.callHost(name, ctx.getString(arg)))));
        ctx.setProp(ctx.global, 'host', hostObject);
      }
      const prelude = ctx.evalCode(PRELUDE, 'prelude.js');
      if (prelude.error) return make(support, null, errorText(ctx, keep(prelude.error)));
      keep(prelude.value);
      // The module's top level is compute-limited like a message, and counted from 0 each time.
      const loading = make(support, null, null);
      loading.begin();
      const module = ctx.evalCode(spec.source, 'process.js', { type: 'module' });
      loading.counting = false;
      if (module.error) {
        const why = loading.ticks > spec.limits.compute ? `compute limit: more than ${spec.limits.compute} ticks` : errorText(ctx, keep(module.error));
        return make(support, null, `the module does not load: ${why}`);
      }
      const ns = keep(module.value);
      if (spec.hostNames.length > 0) {
        // An asyncified call must start from an eval: one fixed entry, closed over the module.
        const define = keep(ctx.unwrapResult(ctx.evalCode(`(support, ns) => Object.defineProperty(globalThis, '__call', { value: (input) => support.apply(ns, input) })`)));
        ctx.unwrapResult(ctx.callFunction(define, ctx.undefined, support, ns)).dispose();
      }
      return make(support, ns, null);
    } catch (e) {
      for (const h of handles.reverse()) if (h.alive) h.dispose();
      ctx.dispose();
      runtime.dispose();
      if (e instanceof Error && isMemoryFault(e.message)) throw new Error(`the state does not fit in the process's memory: ${e.message}`);
      throw e;
    }
  }

  private begin(): void {
    this.ticks = 0;
    this.unavailable = null;
    resetTicks(this.ctx);
    this.counting = true;
  }

  private async callHost(name: string, argument: string): Promise<QuickJSHandle | { error: QuickJSHandle }> {
    const { ctx, spec } = this;
    const overLimit = (): boolean => this.ticks > spec.limits.compute;
    // Host work is metered like the process's own: a call past the limit is not made.
    if (overLimit()) return { error: ctx.newError(`compute limit: more than ${spec.limits.compute} ticks`) };
    try {
      const { value, ticks } = await this.host(name, argument);
      this.ticks += ticks;
      if (overLimit()) return { error: ctx.newError(`compute limit: more than ${spec.limits.compute} ticks`) };
      return ctx.newString(value);
    } catch (e) {
      if (e instanceof HostUnavailable) this.unavailable ??= e;
      this.ticks += e instanceof HostError ? e.ticks : 1;
      return { error: ctx.newError(`host.${name}: ${(e as Error).message}`) };
    }
  }

  /** Runs handle() on the message; kept when it succeeds (unless `readOnly`), undone when not. */
  private async run(message: ProcessMessage, readOnly: boolean): Promise<Outcome> {
    const { ctx, spec } = this;
    const failed = (why: string): Outcome => ({ Messages: [], Spawns: [], Assignments: [], Output: null, Error: why, GasUsed: this.ticks });
    if (this.loadError !== null || !this.ns || !this.support) return failed(this.loadError ?? 'the module does not load');
    const handles: QuickJSHandle[] = [];
    const keep = <T extends QuickJSHandle>(h: T): T => (handles.push(h), h);
    let outcome: Outcome | null = null;
    this.begin();
    try {
      const apply = keep(ctx.getProp(this.support, 'apply'));
      const input = keep(ctx.newString(JSON.stringify(message)));
      let result;
      if (spec.hostNames.length === 0) result = ctx.callFunction(apply, this.support, this.ns, input);
      else {
        // Through an async eval, so that host functions may suspend it.
        ctx.setProp(ctx.global, '__input', input);
        result = await ctx.evalCodeAsync('__call(__input)', 'call.js');
        ctx.setProp(ctx.global, '__input', ctx.undefined);
      }
      this.counting = false;
      if (this.unavailable) throw this.unavailable;
      if (result.error) {
        const why = errorText(ctx, keep(result.error));
        outcome = failed(this.ticks > spec.limits.compute ? `compute limit: more than ${spec.limits.compute} ticks` : isMemoryFault(why) ? `memory limit: ${why}` : why);
      } else {
        const out = JSON.parse(ctx.getString(keep(result.value))) as Omit<Outcome, 'GasUsed'>;
        const undeliverable = outboxFault(out);
        outcome = undeliverable ? failed(undeliverable) : { ...out, GasUsed: this.ticks };
      }
    } catch (e) {
      // QuickJS itself ran out of memory (a deterministic outcome); anything else is not the process's doing.
      if (e instanceof HostUnavailable || !isMemoryFault((e as Error).message)) {
        this.counting = false;
        this.settle(false);
        throw e;
      }
      outcome = failed(`memory limit: ${(e as Error).message}`);
    } finally {
      for (const h of handles.reverse()) if (h.alive) h.dispose();
    }
    this.settle(outcome.Error === undefined && !readOnly);
    return outcome;
  }

  /** Keeps or undoes the message's writes, with no cap: undoing must not fail for want of memory. */
  private settle(keep: boolean): void {
    this.counting = false;
    this.runtime.setMemoryLimit(-1);
    try {
      this.ctx.callMethod(this.support!, keep ? 'commit' : 'rollback', []).unwrap().dispose();
    } finally {
      this.runtime.setMemoryLimit(this.spec.limits.memory);
    }
  }

  /**
   * Evaluates a message of the log. A memory fault is decided again in a fresh VM holding only the
   * state (see the class comment); the VM to go on with is returned with the outcome.
   */
  apply(message: ProcessMessage): Promise<{ outcome: Outcome; vm: ProcessVM }> {
    return exclusive(() => this.applyNow(message));
  }

  private async applyNow(message: ProcessMessage): Promise<{ outcome: Outcome; vm: ProcessVM }> {
    const outcome = await this.run(message, false);
    if (outcome.Error === undefined || !outcome.Error.startsWith('memory limit')) return { outcome, vm: this };
    const fresh = await ProcessVM.openNow(this.spec, this.stateNow(), this.host);
    this.dispose();
    return { outcome: await fresh.run(message, false), vm: fresh };
  }

  /** Evaluates a message without keeping anything (a dry-run). */
  dryRun(message: ProcessMessage): Promise<Outcome> {
    return exclusive(() => this.run(message, true));
  }

  /** The state as JSON (for a checkpoint, or to read it). */
  state(): Promise<string> {
    return exclusive(async () => this.stateNow());
  }

  private stateNow(): string {
    this.runtime.setMemoryLimit(-1);
    try {
      const text = this.ctx.unwrapResult(this.ctx.callMethod(this.support!, 'state', []));
      try {
        return this.ctx.getString(text);
      } finally {
        text.dispose();
      }
    } finally {
      this.runtime.setMemoryLimit(this.spec.limits.memory);
    }
  }

  dispose(): void {
    for (const h of this.handles.reverse()) if (h.alive) h.dispose();
    this.handles.length = 0;
    if (this.ctx.alive) this.ctx.dispose();
    if (this.runtime.alive) this.runtime.dispose();
  }
}

/**
 * Runs `handle(state, message, env)` of a module once, in a VM of its own, in this thread (tests,
 * tools; the CU keeps each process's VM in an evaluator thread, evaluator.ts). Never throws for
 * anything the module does: its errors (and limit hits) come back in `Error` with the state unchanged.
 */
export function evaluate(
  source: string, state: unknown, message: ProcessMessage, env: ProcessEnv, limits: Limits = DEFAULT_LIMITS, extensions: Extensions = {},
): Promise<Evaluation> {
  return ProcessVM.once({ source, env, limits, hostNames: Object.keys(extensions) }, state, message, hostCallOf(extensions));
}
