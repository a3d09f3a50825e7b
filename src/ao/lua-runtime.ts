// The Lua process runtime: a process whose module has Module-Format verity-lua/1 is Lua 5.4 source
// (wasmoon: the reference Lua interpreter compiled to WebAssembly), run on top of the aos library
// (lua/aos.lua) as aos processes are. Each process gets a WebAssembly instance of its own, and its
// state is that instance's memory — kept in place between messages, checkpointed as a memory image
// (as AO's own CUs keep and snapshot a process's WebAssembly memory). Every CU gets the same result,
// the same gas and the same limit hits: no clock (the string-hash seed is fixed, os.time is the
// message's Timestamp), math.random seeded from the message, no io/os/debug/package, a memory limit
// counted by Lua's own allocator, and a compute limit counted in VM instructions (docs/lua.md).
//
// A message that fails must leave the process as it was. Lua has no undo log, so the VM keeps a
// base image of its memory and the messages kept since (at most BASE_EVERY, or BASE_BYTES of them):
// a failure puts the base image back and replays those messages, which succeed again since the VM
// is deterministic. A kept message costs what it does; the memory copy is paid once per
// BASE_EVERY kept messages, on a failure, and twice per dry-run.
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { LuaFactory } from 'wasmoon';
import { HostError, HostUnavailable, outboxFault, type HostCall, type Outcome, type ProcessMessage, type ProcessSpec } from './runtime.js';

/** The Module-Format tag of Lua process modules. */
export const LUA_MODULE_FORMAT = 'verity-lua/1';

/** The Format of a Lua process's checkpoint (its memory image). */
const IMAGE_FORMAT = 'verity-lua-memory/1';

/** One tick of the compute limit (the Compute-Limit tag counts ticks, as for JavaScript modules). */
export const INSTRUCTIONS_PER_TICK = 10_000;

/** Bytes of memory a process's allocation may take per instruction charged (docs/lua.md "Limits and attacks"). */
const BYTES_PER_INSTRUCTION = 256;

/**
 * A new base image after this many kept messages, this many bytes of them, or this many ticks of
 * their work: what a failure replays is bounded (without the ticks bound, one failing message
 * after 63 kept ones at the compute limit would cost the CU 63 messages' work).
 */
const BASE_EVERY = 64;
const BASE_BYTES = 8 * 2 ** 20;
const BASE_TICKS = 1_000;

const PAGE = 65_536;
const LUA_REGISTRYINDEX = -1_001_000;
const LUA_OK = 0;
const LUA_YIELD = 1;
const LUA_TNUMBER = 3;
const LUA_TSTRING = 4;
const LUA_TYPES = ['nil', 'boolean', 'light userdata', 'number', 'string', 'table', 'function', 'userdata', 'thread'];
const LUA_MASKCOUNT = 8;

/**
 * The library every Lua process runs on (over the runtime's own prelude): aos, then the `llama`
 * module that `require('llama')` gives (its host functions only for a module declaring the Llama
 * extension), then the metered string.find / match / gmatch / gsub the process gets (patterns.lua).
 */
const LIBRARY_FILES = ['aos', 'llama', 'patterns'] as const;
let library: { name: string; source: string }[] | null = null;
const libraryFiles = (): { name: string; source: string }[] =>
  (library ??= LIBRARY_FILES.map((name) => ({ name: `=${name}`, source: readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), 'utf8') })));

/**
 * Runs before the library: closes what a process may not reach and adds the host-call bridge.
 * `__verity_host(name, argument)` yields a request marked with HOST to the runtime, which answers
 * it; a coroutine of the process that makes one passes it up (coroutine.resume is wrapped) so a
 * host call works at any depth of coroutines. It returns HOST for the runtime to recognise.
 */
const PRELUDE = `
local yield, resume, create, status = coroutine.yield, coroutine.resume, coroutine.create, coroutine.status
local pack, unpack, select, error = table.pack, table.unpack, select, error
local HOST = setmetatable({}, { __metatable = false })
local load_text = load
-- Only text chunks: Lua does not check bytecode, and a crafted chunk could corrupt the VM.
load = function(chunk, name, mode, ...)
  if select('#', ...) > 0 then return load_text(chunk, name, 't', ...) end
  return load_text(chunk, name, 't')
end
dofile, loadfile, warn, string.dump = nil, nil, nil, nil
-- Past the compute limit nothing catches: a pcall loop around a refused allocation (which makes Lua
-- collect everything first) or a limit error would otherwise run on until the next count.
local over, rawpcall, rawxpcall = __verity_charge, pcall, xpcall
local function passed(ok, ...)
  if not ok and over(0) then error((...), 0) end
  return ok, ...
end
pcall = function(f, ...) return passed(rawpcall(f, ...)) end
xpcall = function(f, handler, ...) return passed(rawxpcall(f, handler, ...)) end
function __verity_host(name, argument)
  local ok, value = yield(HOST, name, argument)
  if not ok then error(value, 2) end
  return value
end
local function relay(co, r)
  while r[1] and r[2] == HOST and status(co) == 'suspended' do
    r = pack(resume(co, yield(HOST, r[3], r[4])))
  end
  return unpack(r, 1, r.n)
end
coroutine.resume = function(co, ...) return passed(relay(co, pack(resume(co, ...)))) end
coroutine.wrap = function(f)
  local co = create(f)
  return function(...)
    local r = pack(coroutine.resume(co, ...))
    if not r[1] then error(r[2], 2) end
    return unpack(r, 2, r.n)
  end
end
return HOST
`;

/** The parts of wasmoon's Emscripten module used here: raw exports, pointers in and out. */
interface LuaModule {
  HEAPU8: Uint8Array;
  HEAP32: Int32Array;
  addFunction(fn: (...args: number[]) => number | void, signature: string): number;
  _malloc(size: number): number;
  _free(pointer: number): void;
  _realloc(pointer: number, size: number): number;
  _lua_newstate(alloc: number, ud: number): number;
  _lua_newthread(L: number): number;
  _lua_gettop(L: number): number;
  _lua_settop(L: number, index: number): void;
  _lua_type(L: number, index: number): number;
  _lua_pushlstring(L: number, s: number, len: number): number;
  _lua_pushboolean(L: number, b: number): void;
  _lua_pushcclosure(L: number, fn: number, n: number): void;
  _lua_tointegerx(L: number, index: number, isnum: number): bigint;
  _lua_tolstring(L: number, index: number, len: number): number;
  _luaL_loadbufferx(L: number, buffer: number, size: number, name: number, mode: number): number;
  _lua_pcallk(L: number, nargs: number, nresults: number, errfunc: number, ctx: number, k: number): number;
  _lua_resume(L: number, from: number, nargs: number, nresults: number): number;
  _lua_getglobal(L: number, name: number): number;
  _lua_setglobal(L: number, name: number): void;
  _lua_getfield(L: number, index: number, name: number): number;
  _lua_setfield(L: number, index: number, name: number): void;
  _lua_rawequal(L: number, a: number, b: number): number;
  _lua_sethook(L: number, hook: number, mask: number, count: number): void;
  _lua_gethookcount(L: number): number;
  _lua_error(L: number): number;
  _luaopen_base(L: number): number;
  _luaopen_table(L: number): number;
  _luaopen_string(L: number): number;
  _luaopen_math(L: number): number;
  _luaopen_utf8(L: number): number;
  _luaopen_coroutine(L: number): number;
}

/**
 * Lua's string hashes (and so `pairs` order) and math.random's first seed mix in time(NULL), which
 * Emscripten reads from Date.now: held at 0 while a state is made, every CU makes the same one.
 */
function atTimeZero<T>(work: () => T): T {
  const now = Date.now;
  Date.now = () => 0;
  try {
    return work();
  } finally {
    Date.now = now;
  }
}

/**
 * Emscripten's libc copies an environment into the instance's memory at start-up, by default with
 * the program's path and the host's language in it: their lengths would move every later
 * allocation, the Lua state's address among them, which Lua mixes into its string-hash seed. The
 * same strings in every instance keep the memory the same on every CU.
 */
const FIXED_ENVIRONMENT = { USER: 'process', LOGNAME: 'process', PATH: '/', PWD: '/', HOME: '/', LANG: 'C.UTF-8', _: 'verity-lua' };

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const sha256hex = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/** The memory up to its last page that is not all zero: what the state is (the rest was never written, or was put back to zero). */
function usedLength(heap: Uint8Array): number {
  const words = new Uint32Array(heap.buffer, heap.byteOffset, heap.length >> 2);
  let i = words.length - 1;
  while (i >= 0 && words[i] === 0) i--;
  return Math.ceil(((i + 1) * 4) / PAGE) * PAGE;
}

const isMemoryFault = (why: string): boolean => /not enough memory/.test(why);

/**
 * A Lua process's VM. One WebAssembly instance per process; one message at a time (the evaluator
 * thread runs its jobs in turn). The interface is ProcessVM's (runtime.ts), so the CU's evaluator
 * threads hold either kind.
 */
export class LuaVM {
  private instructions = 0;
  private counting = false;
  private used = 0;
  private unavailable: HostUnavailable | null = null;
  /** Why the allocator last refused a block in this message. */
  private refused: 'memory' | 'compute' | null = null;
  private L = 0;
  private scratch = 0;
  private hook = 0;
  private host!: HostCall;
  private names = new Map<string, number>();
  /** Why the module cannot run at all; every message fails with it. */
  private loadError: string | null = null;
  private base: { bytes: Uint8Array; used: number } | null = null;
  private sinceBase: ProcessMessage[] = [];
  private sinceBaseBytes = 0;
  private sinceBaseTicks = 0;

  private constructor(
    private readonly spec: ProcessSpec,
    private readonly m: LuaModule,
  ) {}

  /** A VM for `spec`: a fresh process when `state` is 'null', else the memory image of a checkpoint. */
  static async open(spec: ProcessSpec, state: string, host: HostCall): Promise<LuaVM> {
    const lua = await new LuaFactory(undefined, FIXED_ENVIRONMENT).getLuaModule();
    const vm = new LuaVM(spec, lua.module as unknown as LuaModule);
    vm.host = host;
    vm.start();
    if (state !== 'null') vm.restoreImage(state);
    vm.takeBase();
    return vm;
  }

  private get limit(): number {
    return this.spec.limits.compute * INSTRUCTIONS_PER_TICK;
  }

  /**
   * Makes the state: every step in the same order on every CU, so that the pointers held here (the
   * state, the scratch words, the C strings, the functions' table slots) are the same in every
   * instance, and a memory image taken in one fits another.
   */
  private start(): void {
    const m = this.m;
    const alloc = m.addFunction((_ud, pointer, oldSize, newSize) => this.allocate(pointer, oldSize, newSize), 'iiiii');
    this.hook = m.addFunction((L) => this.onCount(L), 'vii');
    const charge = m.addFunction((L) => this.onCharge(L), 'ii');
    this.L = atTimeZero(() => m._lua_newstate(alloc, 0));
    if (!this.L) throw new Error('the Lua state could not be made');
    this.scratch = m._malloc(16);
    for (const name of ['_G', 'table', 'string', 'math', 'utf8', 'coroutine', '__verity_handle', '__verity_charge', 'verity.host', 'verity.thread', 't', '=prelude', '=aos', '=llama', '=patterns', '=process']) {
      const bytes = encoder.encode(`${name}\0`);
      const p = m._malloc(bytes.length);
      m.HEAPU8.set(bytes, p);
      this.names.set(name, p);
    }
    const L = this.L;
    atTimeZero(() => {
      m._luaopen_base(L);
      m._lua_settop(L, 0);
      const libs = [['table', m._luaopen_table], ['string', m._luaopen_string], ['math', m._luaopen_math], ['utf8', m._luaopen_utf8], ['coroutine', m._luaopen_coroutine]] as const;
      for (const [name, open] of libs) {
        open.call(m, L);
        m._lua_setglobal(L, this.name(name));
      }
      m._lua_pushcclosure(L, charge, 0);
      m._lua_setglobal(L, this.name('__verity_charge'));
    });
    m._lua_sethook(L, this.hook, LUA_MASKCOUNT, INSTRUCTIONS_PER_TICK);
    // The runtime's own code loads uncounted: a module's tiny limits must not keep it from loading.
    this.counting = false;
    try {
      const prelude = this.runChunk(PRELUDE, '=prelude', 1);
      if (prelude) throw new Error(`the Lua prelude does not load: ${prelude}`);
      m._lua_setfield(L, LUA_REGISTRYINDEX, this.name('verity.host'));
      for (const file of libraryFiles()) {
        const why = this.runChunk(file.source, file.name, 0);
        if (why) throw new Error(`the Lua library ${file.name.slice(1)} does not load: ${why}`);
      }
      this.instructions = 0;
      this.counting = true;
      const module = this.runChunk(this.spec.source, '=process', 0);
      if (module) this.loadError = `the module does not load: ${module}`;
    } finally {
      this.counting = false;
    }
  }

  private name(text: string): number {
    const p = this.names.get(text);
    if (p === undefined) throw new Error(`no C string for ${text}`);
    return p;
  }

  /** Lua's allocator: the memory limit counts what Lua holds, the same on every CU. */
  private allocate(pointer: number, oldSize: number, newSize: number): number {
    const m = this.m;
    if (newSize === 0) {
      if (pointer) {
        this.used -= oldSize;
        m._free(pointer);
      }
      return 0;
    }
    const delta = pointer ? newSize - oldSize : newSize;
    if (delta > 0 && this.counting) {
      // C work that makes memory (string.rep, table.concat, gsub's result…) is priced by the bytes
      // it makes; a refused block, by what Lua holds (it collects all of it before giving up).
      this.instructions += Math.ceil(delta / BYTES_PER_INSTRUCTION);
      if (this.used + delta > this.spec.limits.memory) {
        this.instructions += Math.ceil(this.used / BYTES_PER_INSTRUCTION);
        this.refused = 'memory';
        return 0;
      }
      if (this.instructions > this.limit) {
        this.refused = 'compute';
        return 0;
      }
    }
    const moved = m._realloc(pointer, newSize);
    if (moved) this.used += delta;
    return moved;
  }

  /**
   * The count hook, every INSTRUCTIONS_PER_TICK instructions of a thread. Past the limit it raises
   * an error and then fires on every instruction, so that a process catching the error with pcall
   * gets no further than its next instruction outside the pcall.
   */
  private onCount(L: number): void {
    const m = this.m;
    const count = m._lua_gethookcount(L);
    this.instructions += count;
    if (this.counting && this.instructions > this.limit) {
      if (count !== 1) m._lua_sethook(L, this.hook, LUA_MASKCOUNT, 1);
      this.pushString(L, `compute limit: more than ${this.spec.limits.compute} ticks`);
      m._lua_error(L);
    } else if (count !== INSTRUCTIONS_PER_TICK) m._lua_sethook(L, this.hook, LUA_MASKCOUNT, INSTRUCTIONS_PER_TICK);
  }

  /**
   * `__verity_charge(n)` (for the prelude and patterns.lua, which take it from the globals): n more
   * instructions, for work done in C that the count hook does not see; true when past the limit,
   * and then the hook fires on the thread's next instruction, which raises the error.
   */
  private onCharge(L: number): number {
    const n = Number(this.m._lua_tointegerx(L, 1, 0));
    if (n > 0) this.instructions += n;
    const over = this.counting && this.instructions > this.limit;
    if (over) this.m._lua_sethook(L, this.hook, LUA_MASKCOUNT, 1);
    this.m._lua_pushboolean(L, over ? 1 : 0);
    return 1;
  }

  private pushString(L: number, text: string): void {
    const m = this.m;
    const bytes = encoder.encode(text);
    const p = m._malloc(bytes.length + 1);
    try {
      m.HEAPU8.set(bytes, p);
      m._lua_pushlstring(L, p, bytes.length);
    } finally {
      m._free(p);
    }
  }

  /** A string (or number) on a thread's stack; any other value described by its type (no metamethod runs here). */
  private readString(L: number, index: number): string {
    const m = this.m;
    const type = m._lua_type(L, index);
    if (type !== LUA_TSTRING && type !== LUA_TNUMBER) return `(a ${LUA_TYPES[type] ?? 'strange'} value)`;
    const p = m._lua_tolstring(L, index, this.scratch);
    if (!p) return '';
    const length = m.HEAP32[this.scratch >> 2] >>> 0;
    return decoder.decode(m.HEAPU8.subarray(p, p + length));
  }

  /** Loads and runs a chunk on the main thread; null when it ran, else why not. */
  private runChunk(source: string, chunkName: string, results: number): string | null {
    const m = this.m;
    const L = this.L;
    const bytes = encoder.encode(source);
    const p = m._malloc(bytes.length + 1);
    let status: number;
    try {
      m.HEAPU8.set(bytes, p);
      status = m._luaL_loadbufferx(L, p, bytes.length, this.name(chunkName), this.name('t'));
    } finally {
      m._free(p);
    }
    if (status === LUA_OK) status = m._lua_pcallk(L, 0, results, 0, 0, 0);
    if (status === LUA_OK) return null;
    const why = this.readString(L, -1);
    m._lua_settop(L, 0);
    return this.instructions > this.limit ? `compute limit: more than ${this.spec.limits.compute} ticks` : why;
  }

  /**
   * Runs `__verity_handle(message, env)` in a new thread, answering its host calls. The outcome as
   * the library wrote it (JSON), or why it failed.
   */
  private async call(message: ProcessMessage): Promise<{ json: string } | { error: string }> {
    const m = this.m;
    const L = this.L;
    m._lua_settop(L, 0);
    m._lua_sethook(L, this.hook, LUA_MASKCOUNT, INSTRUCTIONS_PER_TICK);
    const T = m._lua_newthread(L);
    m._lua_setfield(L, LUA_REGISTRYINDEX, this.name('verity.thread'));
    m._lua_getglobal(T, this.name('__verity_handle'));
    this.pushString(T, JSON.stringify(message));
    this.pushString(T, JSON.stringify(this.spec.env));
    let args = 2;
    for (;;) {
      const status = m._lua_resume(T, L, args, this.scratch);
      const results = m.HEAP32[this.scratch >> 2];
      if (status === LUA_OK) {
        if (results < 1 || m._lua_type(T, -1) !== LUA_TSTRING) return { error: '__verity_handle returned no outcome' };
        return { json: this.readString(T, -1) };
      }
      if (status !== LUA_YIELD) {
        const why = this.readString(T, -1);
        if (isMemoryFault(why) && this.refused === 'memory') return { error: `memory limit: ${why}` };
        return { error: this.instructions > this.limit ? `compute limit: more than ${this.spec.limits.compute} ticks` : isMemoryFault(why) ? `memory limit: ${why}` : why };
      }
      if (results !== 3 || !this.isHostMark(T, -3)) return { error: 'a process may yield only inside a coroutine of its own' };
      const name = this.readString(T, -2);
      const argument = this.readString(T, -1);
      m._lua_settop(T, -4);
      const answer = await this.callHost(name, argument);
      m._lua_pushboolean(T, 'value' in answer ? 1 : 0);
      this.pushString(T, 'value' in answer ? answer.value : answer.error);
      args = 2;
    }
  }

  private isHostMark(T: number, index: number): boolean {
    const m = this.m;
    m._lua_getfield(T, LUA_REGISTRYINDEX, this.name('verity.host'));
    const same = m._lua_rawequal(T, index - 1, -1) === 1;
    m._lua_settop(T, -2);
    return same;
  }

  /** A host call, metered in the same instructions as the process's own work. */
  private async callHost(name: string, argument: string): Promise<{ value: string } | { error: string }> {
    const over = `compute limit: more than ${this.spec.limits.compute} ticks`;
    if (this.instructions > this.limit) return { error: over };
    try {
      const { value, ticks } = await this.host(name, argument, Math.floor((this.limit - this.instructions) / INSTRUCTIONS_PER_TICK));
      this.instructions += ticks * INSTRUCTIONS_PER_TICK;
      return this.instructions > this.limit ? { error: over } : { value };
    } catch (e) {
      if (e instanceof HostUnavailable) this.unavailable ??= e;
      this.instructions += (e instanceof HostError ? e.ticks : 1) * INSTRUCTIONS_PER_TICK;
      return { error: `host.${name}: ${(e as Error).message}` };
    }
  }

  /** One message; anything it did undone unless it succeeded and is to be kept. */
  private async run(message: ProcessMessage): Promise<Outcome> {
    const failed = (why: string): Outcome => ({ Messages: [], Spawns: [], Assignments: [], Output: null, Error: why, GasUsed: this.gas() });
    if (this.loadError !== null) return failed(this.loadError);
    this.instructions = 0;
    this.unavailable = null;
    this.refused = null;
    this.counting = true;
    let answer: { json: string } | { error: string };
    try {
      answer = await this.call(message);
    } catch (e) {
      // A trap of the WebAssembly instance (its stack, an abort): the memory may be half-written,
      // and is put back by the caller as for any failure.
      answer = { error: `the process trapped: ${(e as Error).message}` };
    } finally {
      this.counting = false;
      this.m._lua_settop(this.L, 0);
    }
    if (this.unavailable) throw this.unavailable;
    if ('error' in answer) return failed(answer.error);
    let out: Omit<Outcome, 'GasUsed'>;
    try {
      out = JSON.parse(answer.json) as Omit<Outcome, 'GasUsed'>;
    } catch {
      return failed('the outcome is not JSON');
    }
    if (out === null || typeof out !== 'object') return failed('the outcome is not an object');
    if (typeof out.Error === 'string') return failed(out.Error);
    const outcome = { Messages: out.Messages ?? [], Spawns: out.Spawns ?? [], Assignments: out.Assignments ?? [], Output: out.Output ?? null };
    const undeliverable = outboxFault(outcome);
    return undeliverable ? failed(undeliverable) : { ...outcome, GasUsed: this.gas() };
  }

  private gas(): number {
    return Math.max(1, Math.ceil(this.instructions / INSTRUCTIONS_PER_TICK));
  }

  /** Evaluates a message of the log: kept when it succeeds, undone when not. */
  async apply(message: ProcessMessage): Promise<{ outcome: Outcome; vm: LuaVM }> {
    let outcome: Outcome;
    try {
      outcome = await this.run(message);
    } catch (e) {
      await this.rollback();
      throw e;
    }
    if (outcome.Error !== undefined) await this.rollback();
    else this.kept(message, outcome.GasUsed);
    return { outcome, vm: this };
  }

  /** Evaluates a message without keeping anything (a dry-run): two memory copies. */
  async dryRun(message: ProcessMessage): Promise<Outcome> {
    if (this.sinceBase.length > 0) this.takeBase();
    try {
      return await this.run(message);
    } finally {
      this.restoreBase();
    }
  }

  private kept(message: ProcessMessage, ticks: number): void {
    this.sinceBase.push(message);
    this.sinceBaseBytes += message.Data.length + 1024;
    this.sinceBaseTicks += ticks;
    if (this.sinceBase.length >= BASE_EVERY || this.sinceBaseBytes >= BASE_BYTES || this.sinceBaseTicks >= BASE_TICKS) this.takeBase();
  }

  private takeBase(): void {
    const heap = this.m.HEAPU8;
    if (this.base && this.base.bytes.length === heap.length) this.base.bytes.set(heap);
    else this.base = { bytes: heap.slice(), used: 0 };
    this.base.used = this.used;
    this.sinceBase = [];
    this.sinceBaseBytes = 0;
    this.sinceBaseTicks = 0;
  }

  private restoreBase(): void {
    const base = this.base!;
    this.fitMemory(base.bytes.length);
    const heap = this.m.HEAPU8;
    heap.set(base.bytes);
    heap.fill(0, base.bytes.length);
    this.used = base.used;
  }

  /**
   * Grows the instance's memory (through Emscripten, which keeps its views) to hold `length` bytes:
   * blocks are taken until it does (each may partly fit in free space), then given back — the
   * image written next overwrites the allocator's record of them anyway.
   */
  private fitMemory(length: number): void {
    const m = this.m;
    const taken: number[] = [];
    try {
      while (m.HEAPU8.length < length) {
        const p = m._malloc(length - m.HEAPU8.length + PAGE);
        if (!p) throw new Error('the CU could not grow a Lua process memory');
        taken.push(p);
      }
    } finally {
      for (const p of taken) m._free(p);
    }
  }

  /** Back to the base image, and the kept messages since it again. */
  private async rollback(): Promise<void> {
    const replay = this.sinceBase;
    this.restoreBase();
    for (const message of replay) {
      const outcome = await this.run(message);
      if (outcome.Error !== undefined) throw new Error(`replaying message ${message.Id} of a Lua process failed (${outcome.Error}): the runtime is not deterministic`);
    }
    if (replay.length > 0) this.takeBase();
  }

  /**
   * The memory image (the checkpoint): the pages that are not all zero, base64, with what this
   * side holds of the state (the allocator's count) and the pointers the image must be opened with.
   */
  async state(): Promise<string> {
    const heap = this.m.HEAPU8;
    const length = usedLength(heap);
    const pages: string[] = [];
    for (let at = 0; at < length; at += PAGE) {
      const page = heap.subarray(at, at + PAGE);
      if (page.some((b) => b !== 0)) pages.push(`[${at / PAGE},"${Buffer.from(page).toString('base64')}"]`);
    }
    const hash = sha256hex(heap.subarray(0, length));
    return `{"Format":"${IMAGE_FORMAT}","MemoryHash":"${hash}","Used":${this.used},"State":${this.L},"Scratch":${this.scratch},"Length":${length},"Pages":[${pages.join(',')}]}`;
  }

  private restoreImage(text: string): void {
    const image = JSON.parse(text) as { Format?: string; MemoryHash: string; Used: number; State: number; Scratch: number; Length: number; Pages: [number, string][] };
    if (image.Format !== IMAGE_FORMAT) throw new Error(`not a Lua memory image: ${String(image.Format)}`);
    if (image.State !== this.L || image.Scratch !== this.scratch) throw new Error('the memory image was made by another build of the Lua runtime');
    this.fitMemory(image.Length);
    const heap = this.m.HEAPU8;
    heap.fill(0);
    for (const [index, data] of image.Pages) heap.set(Buffer.from(data, 'base64'), index * PAGE);
    if (sha256hex(heap.subarray(0, image.Length)) !== image.MemoryHash) throw new Error('the memory image does not match its hash');
    this.used = image.Used;
  }

  dispose(): void {
    this.base = null;
    this.sinceBase = [];
    // The instance is garbage once nothing holds it: its memory goes with it.
  }
}
