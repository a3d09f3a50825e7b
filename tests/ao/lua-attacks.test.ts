// Attacks on the Lua runtime by a process's own module and messages (docs/lua.md "Limits and
// attacks"). Each test is bounded in time and shows one bound holding.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { LuaVM } from '../../src/ao/lua-runtime.js';
import { HostError, hostCallOf, type Extensions, type Limits, type ProcessEnv, type ProcessMessage } from '../../src/ao/runtime.js';
import { BUNDLED_MODEL } from '../../src/client/devnet.js';
import { loadModel } from '../../src/engine/index.js';
import { llamaExtensions } from '../../src/processes/llama.js';
import { publishModel } from '../../src/store/models.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import { generateWallet, walletSigner } from '../../src/store/wallet.js';

const ID = 'P'.repeat(43);
const env: ProcessEnv = { Process: { Id: ID, Owner: 'owner', Tags: [] }, Module: { Id: 'M'.repeat(43), Owner: 'owner', Tags: [] } };
let nonce = 0;
const message = (data: string): ProcessMessage => ({
  Id: `a${nonce}`.padEnd(43, 'x'), Data: data, Owner: 'owner', From: 'owner', Tags: [], Target: ID,
  Nonce: nonce++, Timestamp: 1_700_000_000_000 + nonce, 'Block-Height': 1, Cron: false,
});

// A process that speaks to the runtime directly (as in lua-vm.test.ts).
const raw = (body: string): string => `
Count = 0
local function out(v) return '{"Output":' .. v .. '}' end
function __verity_handle(m, e)
  local d = m:match('"Data":"(.-)"')
  Count = Count + 1
  ${body}
  return out(Count)
end`;

const open = (source: string, extensions: Extensions = {}, limits: Limits = { memory: 32 * 2 ** 20, compute: 200 }): Promise<LuaVM> =>
  LuaVM.open({ format: 'lua', source, env, limits, hostNames: Object.keys(extensions) }, 'null', hostCallOf(extensions));
const send = async (vm: LuaVM, data: string) => (await vm.apply(message(data))).outcome;

describe('attacks on the Lua runtime', { timeout: 120_000 }, () => {
  test('replay: a failed message after many costly kept ones replays a bounded amount of work, not BASE_EVERY full messages', async () => {
    let calls = 0;
    const vm = await open(
      raw(`
        if d == 'burn' then __verity_host('count', '') local x = 0 for i = 1, 830000 do x = x + i end end
        if d == 'error' then error('boom') end`),
      { count: () => String(++calls) },
    );
    for (let i = 0; i < 40; i++) assert.equal((await send(vm, 'burn')).GasUsed, 169);
    const before = calls;
    assert.match((await send(vm, 'error')).Error ?? '', /boom/);
    const replayed = calls - before;
    // each 'burn' is ~170 ticks: with a base image at least every 1,000 kept ticks, at most 6 are replayed
    assert.ok(replayed <= 6, `a failure replayed ${replayed} messages of ~170 ticks`);
    assert.equal((await send(vm, 'n')).Output, 41);
  });

  test('patterns: a backtracking match in C (exponential, or quadratic on a long subject) stops at the compute limit in well under a second', async () => {
    const vm = await open(
      raw(`
        if d == 'exp' then string.find(('a'):rep(40), ('a*'):rep(40) .. 'b') end
        if d == 'quad' then local _ = ('a'):rep(100000):find('a*b') end
        if d == 'gsub' then string.gsub(('a'):rep(30), ('(a-)'):rep(30) .. 'b', '') end
        if d == 'gmatch' then for _ in string.gmatch(('x'):rep(5000), '.-y') do end end
        if d == 'method' then local s = ('ab'):rep(3000) return out(select(2, s:gsub('(a)(b)', '%2%1'))) end
        if d == 'plain' then local s = ('a'):rep(200000) return out(tostring(s:find(('a'):rep(10000) .. 'b', 1, true))) end`),
    );
    // Tests assert no timings: the bound is that each ends at the limit with the same gas (an
    // unmetered match would run past the test's timeout, as it did for 47 s before).
    for (const attack of ['exp', 'quad', 'gsub', 'gmatch', 'plain']) {
      const outcome = await send(vm, attack);
      assert.match(outcome.Error ?? '', /compute limit/, attack);
      assert.equal(outcome.GasUsed, 201, attack);
    }
    assert.equal((await send(vm, 'method')).Output, 3000, 'a pattern over a long subject still works (metered)');
    assert.equal((await send(vm, 'n')).Output, 2);
  });

  test('patterns: the same results as Lua\'s own matcher, on both paths (C within the bound, Lua past it)', async () => {
    const vm = await open(
      raw(`
        if d == 'same' then
          local long = ('k=v; '):rep(2000)
          local a = { long:find('(%w+)=(%w+)', 9000) }
          local b = { select(2, long:gsub('(%w+)=(%w+)', '%2=%1')) }
          local c = {} for k, v in long:gmatch('(%w+)=(%w+)') do c[#c + 1] = k .. v end
          local short = { ('  x  '):match('^%s*(.-)%s*$'), ('f(a(b))c'):match('%b()'), ('THE (quick) fox'):find('%f[%a]%a+', 5) }
          return out('"' .. table.concat(a, ',') .. '|' .. table.concat(b, ',') .. '|' .. #c .. '|' .. table.concat(short, ',') .. '"')
        end`),
    );
    assert.equal((await send(vm, 'same')).Output, '9001,9003,k,v|2000|2000|x,(a(b)),6,10');
  });

  test('C work that makes memory (string.rep, table.concat, upper) in a loop, and a pcall loop around a refused allocation, stop at the compute limit', async () => {
    const vm = await open(
      raw(`
        if d == 'fill' then Keep = {} for i = 1, 200000 do Keep[i] = { i } end end
        if d == 'oom' then for i = 1, 1e9 do pcall(string.rep, 'x', 1 << 24) end end
        if d == 'rep' then for i = 1, 1e9 do local s = string.rep('x', 1 << 22) end end
        if d == 'concat' then local t = {} for i = 1, 16 do t[i] = ('x'):rep(1 << 18) end for i = 1, 1e9 do local s = table.concat(t) end end
        if d == 'caught' then for i = 1, 1e9 do pcall(function() for j = 1, 1e9 do end end) local co = coroutine.create(function() while true do end end) coroutine.resume(co) end end`),
      {},
      { memory: 32 * 2 ** 20, compute: 200 },
    );
    for (const attack of ['rep', 'concat', 'caught', 'fill', 'oom']) {
      const outcome = await send(vm, attack);
      if (attack === 'fill') {
        assert.equal(outcome.Error, undefined);
        continue;
      }
      assert.match(outcome.Error ?? '', /compute limit/, attack);
      assert.ok(outcome.GasUsed > 200, `${attack}: charged past the limit`);
    }
    assert.equal((await send(vm, 'n')).Output, 2);
  });

  test('a host call is told the ticks the message has left, and llama.generate refuses work it cannot pay for before doing it', async () => {
    const budgets: (number | undefined)[] = [];
    const spy: Extensions = {
      spy: Object.assign(() => '', {
        priced: async (_argument: string, budget?: number) => {
          budgets.push(budget);
          return { value: 'ok', ticks: 1 };
        },
      }),
    };
    const vm = await open(raw(`if d == 'spy' then local x = 0 for i = 1, 500000 do x = x + i end __verity_host('spy', '') end`), spy);
    assert.equal((await send(vm, 'spy')).Error, undefined);
    assert.equal(budgets.length, 1);
    assert.ok(budgets[0]! > 0 && budgets[0]! < 200, `budget ${budgets[0]}`);

    const dir = mkdtempSync(join(tmpdir(), 'verity-lua-attacks-'));
    try {
      const store = openSqliteStore(dir);
      const model = loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer });
      const { modelId } = await publishModel(store, walletSigner(await generateWallet('arweave')), model, BUNDLED_MODEL.name);
      const generate = llamaExtensions(store)['llama.generate']!;
      const argument = JSON.stringify({ model: modelId, tokens: [model.tokenizer.bosId], n: 200 });
      const paid = await generate.priced!(argument);
      await assert.rejects(generate.priced!(argument, paid.ticks - 1), (e: unknown) => e instanceof HostError && /more than the \d+ left/.test(e.message) && e.ticks === paid.ticks);
      assert.deepEqual(await generate.priced!(argument, paid.ticks), paid);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
