// The Lua runtime under the aos library: a process's state is its WebAssembly memory, kept in place
// between messages. What must hold: a failed message (an error, a limit, a trap) leaves the process
// exactly as it was, and it keeps working; limits are hit the same way every time; a memory image
// opened in another instance goes on exactly as the original; and nothing a process can observe
// (pairs order above all) differs between two runtimes started separately.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { LuaVM } from '../../src/ao/lua-runtime.js';
import { hostCallOf, type Extensions, type Limits, type ProcessEnv, type ProcessMessage } from '../../src/ao/runtime.js';

// A process that speaks to the runtime directly (it replaces the library's entry point), so these
// tests see the runtime alone.
const SOURCE = `
Count = 0
Keep = {}
local function data(m) return m:match('"Data":"(.-)"') end
local function out(v) return '{"Output":' .. v .. '}' end
function __verity_handle(m, e)
  local d = data(m)
  Count = Count + 1
  Keep[#Keep + 1] = d
  if d == 'error' then error('boom') end
  if d == 'loop' then while true do end end
  if d == 'pcall-loop' then while true do pcall(function() while true do end end) end end
  if d == 'alloc' then local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end end
  if d == 'big-string' then local s = string.rep('x', 1 << 30) end
  if d == 'deep' then local function f(n) return 1 + f(n + 1) end return out(f(1)) end
  if d == 'deep-c' then local t = setmetatable({}, { __index = function(t, k) return t[k .. 'x'] end }) return out(#t.a) end
  if d == 'yield' then coroutine.yield(1) end
  if d == 'bytecode' then return out('"' .. tostring(load(string.char(27) .. 'Lua')) .. '"') end
  if d == 'host' then return out('"' .. __verity_host('echo', 'hi') .. '"') end
  if d == 'host-nested' then
    local co = coroutine.wrap(function() return coroutine.wrap(function() return __verity_host('echo', 'deep') end)() end)
    return out('"' .. co() .. '"')
  end
  if d == 'host-fail' then return out('"' .. select(2, pcall(__verity_host, 'fail', 'x')) .. '"') end
  if d == 'pairs' then
    local t = {} for i = 1, 50 do t['key' .. i] = i end
    local ks = {} for k in pairs(t) do ks[#ks + 1] = k end
    return out('"' .. table.concat(ks, ',') .. '"')
  end
  if d == 'random' then math.randomseed(42) return out(math.random(1, 1000000)) end
  if d == 'env' then return out('"' .. tostring(io) .. tostring(os.execute) .. tostring(debug) .. tostring(dofile) .. tostring(string.dump) .. '"') end
  return out(Count)
end
`;

const ID = 'P'.repeat(43);
const env: ProcessEnv = { Process: { Id: ID, Owner: 'owner', Tags: [] }, Module: { Id: 'M'.repeat(43), Owner: 'owner', Tags: [] } };
const limits: Limits = { memory: 32 * 2 ** 20, compute: 200 };
let nonce = 0;
const message = (data: string): ProcessMessage => ({
  Id: `m${nonce}`.padEnd(43, 'x'), Data: data, Owner: 'owner', From: 'owner', Tags: [], Target: ID,
  Nonce: nonce++, Timestamp: 1_700_000_000_000 + nonce, 'Block-Height': 1, Cron: false,
});
const extensions: Extensions = {
  echo: (argument) => argument,
  fail: () => {
    throw new Error('refused');
  },
};
const open = (state = 'null', source = SOURCE, caps = limits): Promise<LuaVM> =>
  LuaVM.open({ format: 'lua', source, env, limits: caps, hostNames: Object.keys(extensions) }, state, hostCallOf(extensions));
const send = async (vm: LuaVM, data: string) => (await vm.apply(message(data))).outcome;
const hashOf = async (vm: LuaVM): Promise<string> => (JSON.parse(await vm.state()) as { MemoryHash: string }).MemoryHash;

describe('the Lua runtime', { timeout: 120_000 }, () => {
  test('the state stays in the VM; a failed message leaves it exactly as it was, however many were kept since the base image', async () => {
    const vm = await open();
    for (let i = 1; i <= 70; i++) assert.equal((await send(vm, 'n')).Output, i);
    const before = await hashOf(vm);
    const failed = await send(vm, 'error');
    assert.match(failed.Error ?? '', /boom/);
    assert.equal(await hashOf(vm), before, 'the memory is byte for byte what it was');
    assert.equal((await send(vm, 'n')).Output, 71, 'the failed message counted nothing');
  });

  test('compute: an endless loop, even one that catches the limit with pcall, stops at the limit, with the same gas each time', async () => {
    const vm = await open();
    const one = await send(vm, 'loop');
    assert.match(one.Error ?? '', /compute limit/);
    const two = await send(vm, 'loop');
    assert.equal(two.GasUsed, one.GasUsed);
    assert.match((await send(vm, 'pcall-loop')).Error ?? '', /compute limit/);
    assert.equal((await send(vm, 'n')).Output, 1);
  });

  test('memory: a huge table or string hits the memory limit; deep recursion, deep C calls and a top-level yield are errors; the process keeps working', async () => {
    const vm = await open();
    assert.match((await send(vm, 'alloc')).Error ?? '', /memory limit|not enough memory/);
    assert.match((await send(vm, 'big-string')).Error ?? '', /memory|too large/);
    assert.match((await send(vm, 'deep')).Error ?? '', /stack overflow|memory limit/);
    assert.match((await send(vm, 'deep-c')).Error ?? '', /stack overflow|C stack/);
    assert.match((await send(vm, 'yield')).Error ?? '', /yield/);
    assert.equal((await send(vm, 'n')).Output, 1);
  });

  test('no io, os.execute, debug, dofile or string.dump; binary chunks are refused', async () => {
    const vm = await open();
    assert.equal((await send(vm, 'env')).Output, 'nilnilnilnilnil');
    assert.equal((await send(vm, 'bytecode')).Output, 'nil');
  });

  test('host calls answer at any depth of coroutines; a refused one is an error the process can catch', async () => {
    const vm = await open();
    assert.equal((await send(vm, 'host')).Output, 'hi');
    assert.equal((await send(vm, 'host-nested')).Output, 'deep');
    assert.match(String((await send(vm, 'host-fail')).Output), /refused/);
  });

  test('a dry-run keeps nothing', async () => {
    const vm = await open();
    await send(vm, 'n');
    const before = await hashOf(vm);
    assert.equal((await vm.dryRun(message('n'))).Output, 2);
    assert.equal(await hashOf(vm), before);
    assert.equal((await send(vm, 'n')).Output, 2);
  });

  test('a memory image opened in a new instance goes on exactly as the original', async () => {
    const a = await open();
    for (let i = 0; i < 5; i++) await send(a, 'n');
    const b = await open(await a.state());
    for (const d of ['n', 'error', 'pairs', 'n']) {
      const m = message(d);
      assert.deepEqual((await b.apply(m)).outcome, (await a.apply(m)).outcome);
    }
    assert.equal(await hashOf(b), await hashOf(a));
    await assert.rejects(open((await a.state()).replace(/"MemoryHash":"[0-9a-f]{64}"/, `"MemoryHash":"${'0'.repeat(64)}"`)), /hash/);
  });

  test('a module with a compute limit of one tick still loads (the library is not charged to it) and runs a cheap message', async () => {
    const vm = await open('null', SOURCE, { memory: limits.memory, compute: 1 });
    assert.equal((await send(vm, 'n')).Output, 1);
    assert.match((await send(vm, 'loop')).Error ?? '', /compute limit: more than 1 ticks/);
  });

  test('a module that does not parse fails every message with why', async () => {
    const vm = await open('null', 'function (');
    const out = await send(vm, 'n');
    assert.match(out.Error ?? '', /does not load/);
  });

  test('pairs order and math.random are the same in a runtime started separately', async () => {
    const vm = await open();
    const here = [(await send(vm, 'pairs')).Output, (await send(vm, 'random')).Output];
    const script = `
      import { LuaVM } from ${JSON.stringify(new URL('../../src/ao/lua-runtime.js', import.meta.url).href)};
      import { hostCallOf } from ${JSON.stringify(new URL('../../src/ao/runtime.js', import.meta.url).href)};
      const vm = await LuaVM.open(${JSON.stringify({ format: 'lua', source: SOURCE, env, limits, hostNames: [] })}, 'null', hostCallOf({}));
      const out = [];
      for (const d of ['pairs', 'random']) out.push((await vm.apply({ ...${JSON.stringify(message('x'))}, Data: d })).outcome.Output);
      console.log(JSON.stringify(out));`;
    const there = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 })) as unknown[];
    assert.deepEqual(there, here);
  });
});
