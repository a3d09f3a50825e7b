// The aos library (src/ao/lua/aos.lua) every Lua process gets: Handlers and their matching rules,
// ao.send / Spawn / Assign outbox shapes, msg.reply / msg.forward, Eval from the owner only,
// require, json, print into Output, errors as Error, the Inbox cap, and an outcome that does not
// depend on pairs order (two VMs created separately give the same bytes).
//
// The helper runs a sequence of messages on one process: with the CU's LuaVM
// (src/ao/lua-runtime.ts) when that module exists, else on a raw wasmoon engine that loads the
// library the same way (io/os/debug/package removed first, as the runtime never opens them).
// VERITY_LUA_HARNESS=raw forces the raw engine.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { LuaFactory } from 'wasmoon';
import { DEFAULT_LIMITS, hostCallOf, type ProcessEnv, type ProcessMessage, type Tag } from '../../src/ao/runtime.js';

// The source tree's copy (the runtime reads dist/src/ao/lua/aos.lua, which the build copies from it).
const LIBRARY = join(dirname(fileURLToPath(import.meta.url)), '../../../src/ao/lua/aos.lua');
const PID = 'P'.repeat(43);
const OWNER = 'O'.repeat(43);
const OTHER = 'X'.repeat(43);
const MODULE = 'M'.repeat(43);
const T = { timeout: 20_000 };

interface Result {
  Messages: { Target: string; Data?: string; Anchor?: string; Tags: Tag[] }[];
  Spawns: { Data?: string; Anchor?: string; Tags: Tag[] }[];
  Assignments: { Processes: string[]; Message: string }[];
  Output: { data: string; prompt: string } | unknown;
  Error?: string;
}

type Input = Partial<Omit<ProcessMessage, 'Tags'>> & { Tags?: Tag[] | Record<string, string>; Action?: string };

interface Proc {
  /** Whether a failed message's writes are undone (the real runtime), or stay (the raw engine). */
  rollsBack: boolean;
  send(input: Input): Promise<Result>;
  eval(code: string): Promise<Result>;
  close(): void;
}

const env = (tags: Tag[] = []): ProcessEnv => ({
  Process: { Id: PID, Owner: OWNER, Tags: [{ name: 'Name', value: 'lib-test' }, ...tags] },
  Module: { Id: MODULE, Owner: OWNER, Tags: [{ name: 'Module-Format', value: 'lua' }] },
});

function message(input: Input, nonce: number): ProcessMessage {
  const { Action, Tags, ...rest } = input;
  let tags: Tag[] = Array.isArray(Tags) ? Tags : Object.entries(Tags ?? {}).map(([name, value]) => ({ name, value }));
  if (Action) tags = [{ name: 'Action', value: Action }, ...tags];
  return {
    Id: `msg${String(nonce).padStart(40, '0')}`,
    Owner: OWNER,
    From: OWNER,
    Target: PID,
    Data: '',
    Nonce: nonce,
    Timestamp: 1_700_000_000_000 + nonce,
    'Block-Height': 100 + nonce,
    Cron: false,
    ...rest,
    Tags: tags,
  };
}

async function runtimeModule(): Promise<any | null> {
  if (process.env.VERITY_LUA_HARNESS === 'raw') return null;
  const specifier = '../../src/ao/lua-runtime.js';
  try {
    return await import(specifier);
  } catch {
    return null;
  }
}

/** A process running `source` after the library; its spawn message (slot 0) has been applied. */
async function spawnLua(source = '', processTags: Tag[] = [], bootData?: string): Promise<Proc> {
  const e = env(processTags);
  const boot = message({ Id: PID, Data: bootData ?? '', Tags: [{ name: 'Type', value: 'Process' }, ...(bootData ? [{ name: 'On-Boot', value: 'Data' }] : [])] }, 0);
  let nonce = 0;
  const runtime = await runtimeModule();
  let proc: Proc;
  if (runtime?.LuaVM) {
    let vm = await runtime.LuaVM.open({ source, env: e, limits: DEFAULT_LIMITS, hostNames: [] }, 'null', hostCallOf({}));
    const apply = async (m: ProcessMessage): Promise<Result> => {
      const r = await vm.apply(m);
      vm = r.vm;
      const { GasUsed: _gas, ...outcome } = r.outcome;
      return outcome as Result;
    };
    proc = { rollsBack: true, send: (i) => apply(message(i, ++nonce)), eval: (code) => apply(message({ Action: 'Eval', Data: code }, ++nonce)), close: () => vm.dispose() };
    await apply(boot);
  } else {
    const lua = await new LuaFactory().createEngine({ openStandardLibs: true });
    await lua.doString('io = nil; os = nil; debug = nil; package = nil; require = nil; dofile = nil; loadfile = nil');
    await lua.doString(readFileSync(LIBRARY, 'utf8'));
    if (source) await lua.doString(source);
    const handle = lua.global.get('__verity_handle') as (m: string, e: string) => string;
    const apply = async (m: ProcessMessage): Promise<Result> => JSON.parse(handle(JSON.stringify(m), JSON.stringify(e))) as Result;
    proc = { rollsBack: false, send: (i) => apply(message(i, ++nonce)), eval: (code) => apply(message({ Action: 'Eval', Data: code }, ++nonce)), close: () => lua.global.close() };
    const r = await apply(boot);
    assert.equal(r.Error, undefined, r.Error);
  }
  return proc;
}

const data = (r: Result): string => (r.Output as { data: string }).data;
const tag = (tags: Tag[], name: string): string | undefined => tags.find((t) => t.name === name)?.value;
async function ok(p: Promise<Result>): Promise<Result> {
  const r = await p;
  assert.equal(r.Error, undefined, `unexpected Error: ${r.Error}`);
  return r;
}
async function evalValue(proc: Proc, code: string): Promise<string> {
  return data(await ok(proc.eval(code)));
}

describe('aos library: the environment', () => {
  test('package, require, os, and no io/debug/dofile/loadfile', T, async () => {
    const p = await spawnLua();
    assert.equal(await evalValue(p, `type(package.loaded) .. type(package.preload) .. type(require)`), 'tabletablefunction');
    assert.equal(await evalValue(p, `tostring(io) .. tostring(debug) .. tostring(dofile) .. tostring(loadfile)`), 'nilnilnilnil');
    assert.equal(await evalValue(p, `tostring(os.date) .. tostring(os.getenv) .. tostring(os.execute) .. tostring(os.exit) .. os.clock()`), 'nilnilnilnil0');
    assert.equal(await evalValue(p, `os.time()`), String(1_700_000_000_000 + 4)); // the 4th message after the spawn
    assert.equal(await evalValue(p, `require('utf8') == utf8 and require('json') == json and require('.json') == json`), 'true');
    const missing = await p.eval(`require('nope')`);
    assert.match(missing.Error ?? '', /module 'nope' not found/);
    p.close();
  });

  test('require of a module an Eval put into package.preload / package.loaded', T, async () => {
    const p = await spawnLua();
    await ok(p.eval(`package.preload['greet'] = function(name) Loads = (Loads or 0) + 1; return { hi = function(who) return 'hi ' .. who .. ' from ' .. name end } end`));
    assert.equal(await evalValue(p, `require('greet').hi('bob')`), 'hi bob from greet');
    assert.equal(await evalValue(p, `require('greet') == require('greet') and Loads == 1`), 'true');
    await ok(p.eval(`package.loaded['consts'] = { answer = 42 }`));
    assert.equal(await evalValue(p, `require('consts').answer`), '42');
    p.close();
  });

  test('math.random is seeded from the message, the same in every VM', T, async () => {
    const draw = async (): Promise<string[]> => {
      const p = await spawnLua();
      const out = [await evalValue(p, `math.random(1, 1000000) .. ',' .. math.random(1, 1000000)`), await evalValue(p, `math.random(1, 1000000)`)];
      p.close();
      return out;
    };
    const [a, b] = [await draw(), await draw()];
    assert.deepEqual(a, b);
    assert.notEqual(a[0], a[1]);
  });

  test('tostring of a table carries no address; string.format %p is refused', T, async () => {
    const p = await spawnLua();
    assert.match(await evalValue(p, `tostring({})`), /^table: 0x[0-9a-f]{8}$/);
    assert.match((await p.eval(`string.format('%p', {})`)).Error ?? '', /%p/);
    assert.equal(await evalValue(p, `string.format('%d%%s %s', 5, 'x')`), '5%s x');
    p.close();
  });
});

describe('aos library: json', () => {
  test('round trips, key order, numbers, unicode', T, async () => {
    const p = await spawnLua();
    assert.equal(await evalValue(p, `json.encode({ b = 1, a = { 1, 2.5, 'x' }, c = { z = true, y = false } })`), '{"a":[1,2.5,"x"],"b":1,"c":{"y":false,"z":true}}');
    assert.equal(await evalValue(p, `json.encode({})`), '[]');
    assert.equal(await evalValue(p, `json.encode(json.object({}))`), '{}');
    assert.equal(await evalValue(p, `json.encode('a"b\\\\c\\n\\1\\127é😀')`), '"a\\"b\\\\c\\n\\u0001\\u007fé😀"');
    assert.equal(await evalValue(p, `json.encode({ 1.0, 0.1, 1e300, -0.5, 9007199254740993 })`), '[1.0,0.1,1e+300,-0.5,9007199254740993]');
    assert.equal(await evalValue(p, `local v = json.decode('[1, 1.0, 2e3, -7, 12345678901234]') return math.type(v[1]) .. math.type(v[2]) .. math.type(v[3]) .. v[4] .. ' ' .. v[5]`), 'integerfloatfloat-7 12345678901234');
    assert.equal(await evalValue(p, `json.decode('"\\\\u00e9\\\\ud83d\\\\ude00\\\\n\\\\u0041"')`), 'é😀\nA');
    assert.equal(await evalValue(p, `json.decode('"\\\\ud800x"')`), '\uFFFDx');
    const doc = { s: 'é 😀 "q" \\ \u0001', n: [1, -2, 3.25, 1e-7], o: { k: null, t: true }, e: [] };
    assert.equal(await evalValue(p, `json.encode(json.decode(${JSON.stringify(JSON.stringify(doc))}))`), JSON.stringify({ e: [], n: [1, -2, 3.25, 1e-7], o: { t: true }, s: doc.s }));
    p.close();
  });

  test('decode then encode gives back the same value (property: JSON values from JavaScript)', T, async () => {
    const p = await spawnLua(`Handlers.add('RT', 'RT', function(m) m.reply({ Data = json.encode(json.decode(m.Data)) }) end)`);
    const wellFormed = (s: string): boolean => {
      try {
        encodeURIComponent(s);
        return true;
      } catch {
        return false;
      }
    };
    const str = fc.string({ unit: 'binary', maxLength: 12 }).filter(wellFormed);
    const { value } = fc.letrec((tie) => ({
      value: fc.oneof(
        { depthSize: 'small' },
        fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
        fc.double({ noNaN: true, noDefaultInfinity: true }),
        fc.boolean(),
        str,
        fc.array(tie('value'), { maxLength: 4 }),
        fc.dictionary(str, tie('value'), { minKeys: 1, maxKeys: 4 }),
      ),
    }));
    await fc.assert(
      fc.asyncProperty(value, async (v) => {
        const text = JSON.stringify(v, null, JSON.stringify(v).length % 3 === 0 ? 1 : 0); // some with whitespace
        const r = await ok(p.send({ Action: 'RT', Data: text }));
        assert.deepEqual(JSON.parse(r.Messages[0].Data!), JSON.parse(text));
      }),
      { numRuns: 60, seed: 7 },
    );
    assert.equal(await evalValue(p, `json.encode(json.decode('{ "b" : 2 , "a":-17,"c" :{"d":0,"e":12345678901234567890, "f": 1e2 }}'))`), '{"a":-17,"b":2,"c":{"d":0,"e":1.2345678901234567e+19,"f":100.0}}');
    p.close();
  });

  test('bad JSON and unencodable values are clear errors', T, async () => {
    const p = await spawnLua();
    const bad: [string, RegExp][] = [
      [`'{"a":1,}'`, /expected a string key at line 1 column 8/],
      [`'[1 2]'`, /expected ',' or '\]'/],
      [`'01'`, /leading zero/],
      [`'"abc'`, /unterminated string/],
      [`'[1]x'`, /trailing characters/],
      [`'nul'`, /unexpected character/],
      [`'"\\\\q"'`, /bad escape/],
      [`string.rep('[', 600) .. string.rep(']', 600)`, /nesting deeper than 512/],
      [`''`, /unexpected end of input/],
    ];
    for (const [text, error] of bad) {
      const r = await p.eval(`json.decode(${text})`);
      assert.match(r.Error ?? '', error, text);
      assert.match(r.Error ?? '', /^json\.decode: /);
    }
    assert.match((await p.eval(`json.encode({ 1, nil, 3 })`)).Error ?? '', /sparse array/);
    assert.match((await p.eval(`json.encode({ 1, a = 2 })`)).Error ?? '', /mixed or non-string keys/);
    assert.match((await p.eval(`json.encode(0/0)`)).Error ?? '', /not a JSON number/);
    assert.match((await p.eval(`local t = {} t.t = t return json.encode(t)`)).Error ?? '', /circular/);
    assert.match((await p.eval(`json.encode(print)`)).Error ?? '', /cannot encode a function/);
    p.close();
  });
});

describe('aos library: Handlers', () => {
  test('string, table (exact, wildcard, Lua pattern, function, any-of) and function patterns', T, async () => {
    const p = await spawnLua(`
      Handlers.add('byString', 'Ping', function(msg) print('string') end)
      Handlers.add('byTable', { Action = 'Table', Kind = '_', Ref = '^r%d+$' }, function(msg) print('table') end)
      Handlers.add('byFnValue', { Action = 'Fn', Amount = function(v) return tonumber(v) > 10 end }, function(msg) print('fnvalue') end)
      Handlers.add('anyOf', { Action = { 'A1', 'A2' } }, function(msg) print('anyof ' .. msg.Action) end)
      Handlers.add('byFunction', function(msg) return msg.Data == 'fn' end, function(msg) print('function') end)
      Handlers.add('viaUtils', Handlers.utils.hasMatchingTag('Action', 'U'), function(msg) print('hasMatchingTag') end)
      Handlers.add('viaOf', Handlers.utils.hasMatchingTagOf('Action', { 'V1', 'V2' }), function(msg) print('hasMatchingTagOf') end)
      Handlers.add('viaData', Handlers.utils.hasMatchingData('exact data'), function(msg) print('hasMatchingData') end)
    `);
    const printed = async (i: Input): Promise<string> => data(await ok(p.send(i))).trim();
    assert.equal(await printed({ Action: 'Ping' }), 'string');
    assert.equal(await printed({ Action: 'Table', Tags: { Kind: 'anything', Ref: 'r12' } }), 'table');
    assert.match(await printed({ Action: 'Table', Tags: { Kind: 'anything', Ref: 'r12x' } }), /^New Message From/);
    assert.match(await printed({ Action: 'Table', Tags: { Ref: 'r1' } }), /^New Message From/);
    assert.equal(await printed({ Action: 'Fn', Tags: { Amount: '11' } }), 'fnvalue');
    assert.match(await printed({ Action: 'Fn', Tags: { Amount: '9' } }), /^New Message From/);
    assert.equal(await printed({ Action: 'A2' }), 'anyof A2');
    assert.equal(await printed({ Data: 'fn' }), 'function');
    assert.equal(await printed({ Action: 'U' }), 'hasMatchingTag');
    assert.equal(await printed({ Action: 'V2' }), 'hasMatchingTagOf');
    assert.equal(await printed({ Data: 'exact data' }), 'hasMatchingData');
    p.close();
  });

  test('a function pattern returning each continue / break / skip value', T, async () => {
    const p = await spawnLua(`
      for _, v in ipairs({ 'continue', 1, 'skip', 0, false }) do
        Handlers.add('h-' .. tostring(v), function(msg) return v end, function(msg) print('ran ' .. tostring(v)) end)
      end
      Handlers.add('breaker', function(msg) if msg.Data == 'true' then return true elseif msg.Data == 'neg' then return -1 end return 'break' end,
        function(msg) print('ran breaker') end)
      Handlers.add('after', function(msg) return true end, function(msg) print('ran after') end)
    `);
    for (const d of ['true', 'neg', 'break']) {
      assert.equal(data(await ok(p.send({ Data: d }))), 'ran continue\nran 1\nran breaker\n', d);
    }
    await ok(p.eval(`Handlers.remove('breaker')`));
    assert.equal(data(await ok(p.send({}))), 'ran continue\nran 1\nran after\n');
    await ok(p.eval(`Handlers.prepend('bad', function() return nil end, function() end)`));
    assert.match((await p.send({})).Error ?? '', /handler 'bad': Pattern result is not valid/);
    p.close();
  });

  test('add replaces in place; prepend / append / before / after order; remove; list', T, async () => {
    const p = await spawnLua(`
      local function h(n) return function() print(n) end end
      local cont = function() return 'continue' end
      Handlers.add('b', cont, h('b'))
      Handlers.append('c', cont, h('c'))
      Handlers.prepend('a', cont, h('a'))
      Handlers.before('c').add('b2', cont, h('b2'))
      Handlers.after('a').add('a2', cont, h('a2'))
      Handlers.add('a', cont, h('A'))
    `);
    assert.equal(data(await ok(p.send({}))).split('\n').slice(0, 5).join(','), 'A,a2,b,b2,c');
    assert.equal(await evalValue(p, `local names = {} for i, h in ipairs(Handlers.list) do names[i] = h.name end return table.concat(names, ',')`), 'a,a2,b,b2,c');
    await ok(p.eval(`Handlers.remove('b') Handlers.remove('not-there')`));
    assert.equal(data(await ok(p.send({}))).split('\n').slice(0, 4).join(','), 'A,a2,b2,c');
    p.close();
  });

  test('once runs once; maxRuns counts down; add(name, handle) matches the Action', T, async () => {
    const p = await spawnLua(`
      Handlers.once('one', 'Once', function() print('once') end)
      Handlers.once({ Action = 'Anon' }, function() print('anon') end)
      Handlers.add('twice', 'Twice', function() print('twice') end, 2)
      Handlers.add('Short', function() print('short') end)
    `);
    assert.equal(data(await ok(p.send({ Action: 'Once' }))), 'once\n');
    assert.match(data(await ok(p.send({ Action: 'Once' }))), /^New Message From/);
    assert.equal(data(await ok(p.send({ Action: 'Anon' }))), 'anon\n');
    assert.match(data(await ok(p.send({ Action: 'Anon' }))), /^New Message From/);
    assert.equal(data(await ok(p.send({ Action: 'Twice' }))), 'twice\n');
    assert.equal(data(await ok(p.send({ Action: 'Twice' }))), 'twice\n');
    assert.match(data(await ok(p.send({ Action: 'Twice' }))), /^New Message From/);
    assert.equal(data(await ok(p.send({ Action: 'Short' }))), 'short\n');
    assert.equal(await evalValue(p, `#Handlers.list`), '1');
    p.close();
  });

  test('unhandled messages go to Inbox, capped at 10,000; a _default handler replaces that', T, async () => {
    const p = await spawnLua(`Handlers.add('cont', function() return 'continue' end, function() end)`);
    await ok(p.send({ Action: 'Hello', Data: 'first' }));
    assert.equal(await evalValue(p, `#Inbox .. ' ' .. Inbox[1].Data .. ' ' .. Inbox[1].Action`), '1 first Hello');
    // fill past the cap through the same path the default handler takes
    await ok(p.eval(`for i = 1, 10005 do Handlers.evaluate({ Data = 'm' .. i, Tags = {} }, ao.env) end`));
    assert.equal(await evalValue(p, `#Inbox .. ' ' .. Inbox[1].Data .. ' ' .. Inbox[#Inbox].Data`), '10000 m6 m10005');
    await ok(p.eval(`Handlers.add('_default', function() return true end, function(msg) print('mine') end)`));
    assert.equal(data(await ok(p.send({ Action: 'Nobody' }))), 'mine\n');
    assert.equal(await evalValue(p, `#Inbox`), '10000');
    p.close();
  });
});

describe('aos library: messages out', () => {
  test('msg.reply: Target, X-Reference, Data; Reply-To and X-Origin honoured', T, async () => {
    const p = await spawnLua(`Handlers.add('Ping', 'Ping', function(msg) msg.reply({ Data = 'pong', Action = 'Pong' }) end)`);
    const r = await ok(p.send({ Action: 'Ping', From: OTHER, Owner: OTHER, Tags: { Reference: '7' } }));
    assert.equal(r.Messages.length, 1);
    const [m] = r.Messages;
    assert.equal(m.Target, OTHER);
    assert.equal(m.Data, 'pong');
    assert.equal(tag(m.Tags, 'X-Reference'), '7');
    assert.equal(tag(m.Tags, 'Action'), 'Pong');
    assert.equal(tag(m.Tags, 'Reference'), '1');
    assert.equal(m.Anchor, '0'.repeat(31) + '1');
    const r2 = await ok(p.send({ Action: 'Ping', From: OTHER, Tags: { 'Reply-To': 'R'.repeat(43), 'X-Reference': '3', 'X-Origin': 'Z'.repeat(43), Reference: '9' } }));
    assert.equal(r2.Messages[0].Target, 'R'.repeat(43));
    assert.equal(tag(r2.Messages[0].Tags, 'X-Reference'), '3');
    assert.equal(tag(r2.Messages[0].Tags, 'X-Origin'), 'Z'.repeat(43));
    assert.equal(tag(r2.Messages[0].Tags, 'Reference'), '2');
    p.close();
  });

  test('msg.forward carries Data and tags, not the core fields', T, async () => {
    const p = await spawnLua(`Handlers.add('Fwd', 'Fwd', function(msg) msg.forward('${'F'.repeat(43)}', { Extra = 'yes' }) end)`);
    const r = await ok(p.send({ Action: 'Fwd', From: OTHER, Data: 'payload', Tags: { Custom: 'c', Reference: '5' } }));
    const [m] = r.Messages;
    assert.equal(m.Target, 'F'.repeat(43));
    assert.equal(m.Data, 'payload');
    assert.equal(tag(m.Tags, 'Custom'), 'c');
    assert.equal(tag(m.Tags, 'Extra'), 'yes');
    assert.equal(tag(m.Tags, 'Action'), 'Fwd');
    assert.equal(tag(m.Tags, 'Reply-To'), OTHER);
    assert.equal(tag(m.Tags, 'X-Origin'), OTHER);
    assert.equal(tag(m.Tags, 'X-Reference'), '5');
    const names = m.Tags.map((t) => t.name);
    for (const core of ['Id', 'Owner', 'From', 'Timestamp', 'Nonce', 'Block-Height', 'Hash-Chain', 'Cron', 'TagArray', 'Tags', 'reply']) assert.ok(!names.includes(core), core);
    assert.equal(names.filter((n) => n === 'Reference').length, 1);
    p.close();
  });

  test('Send, Spawn and Assign outbox shapes', T, async () => {
    const p = await spawnLua();
    const r = await ok(
      p.eval(`
      Send({ Target = '${OTHER}', Data = 'hello', Action = 'Greet', Count = 3, Tags = { { name = 'Listed', value = 'L' } } })
      Send({ Target = '${OTHER}', Tags = { Zed = 'z', Alpha = 'a' } })
      Spawn('${MODULE}', { Data = 'init', Name = 'child' })
      Spawn('${MODULE}')
      Assign({ Processes = { '${OTHER}' }, Message = '${'A'.repeat(43)}' })
      local m = Send({ Target = '${OTHER}', Data = { k = 1 } })
      print(m.Reference, pcall(m.receive))`),
    );
    assert.deepEqual(r.Messages[0], {
      Target: OTHER,
      Data: 'hello',
      Anchor: '0'.repeat(31) + '1',
      Tags: [
        { name: 'Reference', value: '1' },
        { name: 'Action', value: 'Greet' },
        { name: 'Count', value: '3' },
        { name: 'Listed', value: 'L' },
      ],
    });
    assert.deepEqual(r.Messages[1].Tags, [
      { name: 'Reference', value: '2' },
      { name: 'Alpha', value: 'a' },
      { name: 'Zed', value: 'z' },
    ]);
    assert.equal(r.Messages[1].Data, '');
    assert.equal(r.Messages[2].Data, '{"k":1}');
    assert.deepEqual(r.Spawns, [
      { Data: 'init', Anchor: '0'.repeat(31) + '3', Tags: [{ name: 'Module', value: MODULE }, { name: 'Reference', value: '3' }, { name: 'Name', value: 'child' }] },
      { Data: 'NODATA', Anchor: '0'.repeat(31) + '4', Tags: [{ name: 'Module', value: MODULE }, { name: 'Reference', value: '4' }] },
    ]);
    assert.deepEqual(r.Assignments, [{ Processes: [OTHER], Message: 'A'.repeat(43) }]);
    assert.match(data(r), /^5\tfalse\t.*not available on Verity/);
    // references keep counting across messages
    const next = await ok(p.eval(`Send({ Target = '${OTHER}' })`));
    assert.equal(tag(next.Messages[0].Tags, 'Reference'), '6');
    assert.match((await p.eval(`Send({ Data = 'no target' })`)).Error ?? '', /Target/);
    assert.equal(await evalValue(p, `Send({ Target = '${OTHER}' })`), 'message added to outbox');
    assert.equal(await evalValue(p, `Spawn('${MODULE}', {})`), 'spawn process request');
    p.close();
  });

  test('message normalisation: Tags map, TagArray, tags copied onto msg, core fields kept', T, async () => {
    const p = await spawnLua(`Handlers.add('N', 'N', function(msg)
      print(msg.Tags.Dup, msg.Dup, #msg.TagArray, msg['X-Thing'], msg.From == '${OTHER}', msg.Id ~= 'evil', msg.Timestamp, ao.env.Process.Tags.Name, #ao.env.Process.TagArray)
    end)`);
    const r = await ok(p.send({ Action: 'N', From: OTHER, Tags: [{ name: 'Dup', value: 'first' }, { name: 'Dup', value: 'last' }, { name: 'X-Thing', value: 'x' }, { name: 'Id', value: 'evil' }, { name: 'From', value: 'evil' }] }));
    assert.equal(data(r), `first\tlast\t6\tx\ttrue\ttrue\t${1_700_000_000_000 + 1}\tlib-test\t1\n`);
    p.close();
  });
});

describe('aos library: Eval, boot, errors, Output', () => {
  test('Eval from the owner runs; from anyone else it is refused', T, async () => {
    const p = await spawnLua();
    assert.equal(await evalValue(p, `1 + 1`), '2');
    assert.equal(await evalValue(p, `X = 5`), '');
    assert.equal(await evalValue(p, `{ a = X }`), '{"a":5}');
    assert.equal(await evalValue(p, `Owner == '${OWNER}' and ao.id == '${PID}' and Name == 'lib-test'`), 'true');
    const refused = await p.send({ Action: 'Eval', From: OTHER, Owner: OTHER, Data: 'X = 99' });
    assert.match(refused.Error ?? '', /Eval is only for the process owner/);
    if (!p.rollsBack) assert.equal(await evalValue(p, `X`), '5');
    const fromProcess = await p.send({ Action: 'Eval', From: OTHER, Owner: OWNER, Data: 'X = 98' });
    assert.match(fromProcess.Error ?? '', /only for the process owner/);
    assert.equal(await evalValue(p, `X`), '5');
    const syntax = await p.eval(`this is not lua`);
    assert.match(syntax.Error ?? '', /^\[string "Eval"\]:1: /);
    p.close();
  });

  test('On-Boot = Data runs the spawn message Data', T, async () => {
    const p = await spawnLua('', [{ name: 'On-Boot', value: 'Data' }], `Booted = 'yes' Handlers.add('Hi', 'Hi', function(m) m.reply({ Data = Booted }) end)`);
    const r = await ok(p.send({ Action: 'Hi' }));
    assert.equal(r.Messages[0].Data, 'yes');
    p.close();
  });

  test('print goes to Output; a handler error is Error with its name; the state is kept', T, async () => {
    const p = await spawnLua(`
      Count = 0
      Handlers.add('Inc', 'Inc', function(msg) Count = Count + 1 print('count', Count, { n = Count }) if msg.Data == 'fail' then error('bad input') end end)
    `);
    const r = await ok(p.send({ Action: 'Inc' }));
    assert.deepEqual(r.Output, { data: 'count\t1\t{"n":1}\n', prompt: 'aos> ' });
    const bad = await p.send({ Action: 'Inc', Data: 'fail' });
    assert.match(bad.Error ?? '', /^handler 'Inc': .*:\d+: bad input$/);
    assert.deepEqual(bad.Messages, []);
    const table = await p.eval(`error({ code = 7 })`);
    assert.equal(table.Error, '{"code":7}');
    if (p.rollsBack) assert.equal(await evalValue(p, `Count`), '1');
    p.close();
  });

  test('printed Output is capped at 1 MiB with a note', T, async () => {
    const p = await spawnLua();
    const r = await ok(p.eval(`for i = 1, 20 do print(string.rep('é', 40000)) end`));
    const text = data(r);
    assert.ok(Buffer.byteLength(text) < 1024 * 1024 + 200);
    assert.match(text, /\[output truncated: \d+ bytes over the 1048576-byte limit dropped\]\n$/);
    assert.ok(!text.includes('\uFFFD'));
    p.close();
  });
});

describe('aos library: determinism', () => {
  test('two VMs created separately give the same outcome bytes, whatever order their tables were filled in', T, async () => {
    const source = (order: string): string => `
      State = {}
      Keys = {}
      for i = 1, 300 do Keys[i] = 'key' .. i end
      if '${order}' == 'reverse' then for i = 300, 1, -1 do State[Keys[i]] = i end else for i = 1, 300 do State[Keys[i]] = i end end
      Handlers.add('Dump', 'Dump', function(msg)
        local tags = {}
        for i = 300, 1, -5 do tags[Keys[i]] = tostring(i) end
        msg.reply({ Data = json.encode(State), Tags = tags })
        local fields = { Target = msg.From, Data = json.encode({ nested = State, list = { 3, 2, 1 } }) }
        for i = 1, 40 do fields['F' .. ((i * 7) % 40)] = i end
        Send(fields)
        Spawn('${MODULE}', { Tags = tags })
        print(State, tostring({}))
      end)`;
    const run = async (order: string): Promise<string> => {
      const p = await spawnLua(source(order));
      const outs = [await p.send({ Action: 'Dump', From: OTHER }), await p.eval(`Utils.keys(State)`)];
      p.close();
      return JSON.stringify(outs);
    };
    const [a, b, c] = [await run('forward'), await run('forward'), await run('reverse')];
    assert.equal(a, b);
    assert.equal(a, c);
    assert.ok(a.includes('key1,key10,key100,key101'.replaceAll(',', '\\",\\"')));
  });
});
