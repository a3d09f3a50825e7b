// The verity Lua client (src/processes/lua/verity.lua) on the CU's Lua runtime, message by message,
// with the coordinator and token played by hand: what it sends (tags, X-Options), which answers it
// takes (From the configured process only, the pending reference, the right kind, the request's
// task), the callback's res/err, getBalance / getTaskStatus / deposit, and the bound on pending
// requests. The whole flow through real units is tests/network/lua-dapp.test.ts.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { LuaVM } from '../../src/ao/lua-runtime.js';
import { DEFAULT_LIMITS, hostCallOf, type ProcessEnv, type ProcessMessage, type Tag } from '../../src/ao/runtime.js';
import { projectRoot } from '../helpers.js';

const CLIENT = readFileSync(join(projectRoot, 'src/processes/lua/verity.lua'), 'utf8');
const PID = 'P'.repeat(43);
const OWNER = 'O'.repeat(43);
const COORDINATOR = 'C'.repeat(43);
const TOKEN = 'T'.repeat(43);
const OTHER = 'X'.repeat(43);
const TASK = 'K'.repeat(43);
const T = { timeout: 30_000 };

// A test dApp: every callback's arguments go into Calls, as JSON.
const APP = `
local verity = require('verity')
Calls = {}
function record(name)
  return function(err, res)
    local r = res
    if type(r) == 'table' then r = {} for k, v in pairs(res) do if k ~= 'view' then r[k] = v end end end
    Calls[#Calls + 1] = json.encode({ name = name, err = err or json.null, res = r or json.null })
  end
end
`;

interface Outcome {
  Messages: { Target: string; Data?: string; Tags: Tag[] }[];
  Output: { data: string };
  Error?: string;
}
type Input = { From?: string; Data?: string; Tags?: Record<string, string> };

async function spawn(processTags: Record<string, string> = { 'Verity-Coordinator': COORDINATOR, 'Verity-Token': TOKEN }) {
  const env: ProcessEnv = {
    Process: { Id: PID, Owner: OWNER, Tags: [{ name: 'Name', value: 'client-test' }, ...Object.entries(processTags).map(([name, value]) => ({ name, value }))] },
    Module: { Id: 'M'.repeat(43), Owner: OWNER, Tags: [] },
  };
  const source = `package.preload['verity'] = function(...)\n${CLIENT}\nend\n${APP}`;
  let vm = await LuaVM.open({ format: 'lua', source, env, limits: DEFAULT_LIMITS, hostNames: [] }, 'null', hostCallOf({}));
  let nonce = 0;
  const apply = async (input: Input & { Id?: string }): Promise<Outcome> => {
    const n = nonce++;
    const m: ProcessMessage = {
      Id: input.Id ?? `msg${String(n).padStart(40, '0')}`, Owner: input.From ?? OWNER, From: input.From ?? OWNER, Target: PID, Data: input.Data ?? '',
      Nonce: n, Timestamp: 1_700_000_000_000 + n, 'Block-Height': 1, Cron: false,
      Tags: Object.entries(input.Tags ?? {}).map(([name, value]) => ({ name, value })),
    };
    const r = await vm.apply(m);
    vm = r.vm;
    return r.outcome as unknown as Outcome;
  };
  await apply({ Id: PID, Tags: { Type: 'Process' } });
  const run = async (code: string): Promise<Outcome> => {
    const r = await apply({ Tags: { Action: 'Eval' }, Data: code });
    assert.equal(r.Error, undefined, r.Error);
    return r;
  };
  return {
    send: apply,
    run,
    value: async (code: string): Promise<string> => (await run(code)).Output.data,
    calls: async (): Promise<{ name: string; err: Record<string, unknown> | null; res: Record<string, unknown> | null }[]> =>
      JSON.parse((await run('return "[" .. table.concat(Calls, ",") .. "]"')).Output.data) as never,
    close: () => vm.dispose(),
  };
}

const tagsOf = (m: { Tags: Tag[] }): Record<string, string> => Object.fromEntries(m.Tags.map((t) => [t.name, t.value]));
const view = (status: string, result: string | null) => JSON.stringify({ task: TASK, status, result, model: 'm', receipt: status === 'final' ? { task: TASK, traceRoot: 'a'.repeat(64) } : null, usage: { prompt_tokens: 5, completion_tokens: 3 }, audited: true, corrected: false });

describe('the verity Lua client', () => {
  test('infer: an Infer with X-Reference, X-Options, Model, Nodes, X-Session; the pending answer waits, the final one calls back once with the text and receipt', T, async () => {
    const p = await spawn();
    const sent = await p.run(`return require('verity').infer('Hello', { max_tokens = 8, temperature = 0, top_p = 0.5, seed = 7, model = '${'a'.repeat(64)}', nodes = { '${OTHER}' }, session = 's1' }, record('infer'))`);
    assert.equal(sent.Output.data, '1', 'the reference is the counter');
    assert.equal(sent.Messages.length, 1);
    const infer = sent.Messages[0];
    assert.equal(infer.Target, COORDINATOR);
    assert.equal(infer.Data, 'Hello');
    const tags = tagsOf(infer);
    assert.equal(tags.Action, 'Infer');
    assert.equal(tags['X-Reference'], '1');
    assert.deepEqual(JSON.parse(tags['X-Options']), { max_tokens: 8, temperature: 0, top_p: 0.5, seed: 7 });
    assert.equal(tags.Model, 'a'.repeat(64));
    assert.equal(tags.Nodes, OTHER);
    assert.equal(tags['X-Session'], 's1');

    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Accepted', 'X-Reference': '1', Task: TASK, Escrow: '16' } });
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '1', 'X-Session': 's1', Task: TASK, Status: 'pending' }, Data: view('pending', 'first') });
    assert.deepEqual(await p.calls(), [], 'a pending answer does not call back by default');
    assert.equal(await p.value(`return require('verity').pending()`), '1');
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '1', 'X-Session': 's1', Task: TASK, Status: 'final' }, Data: view('final', ' there') });
    const [call, ...more] = await p.calls();
    assert.deepEqual(more, []);
    assert.equal(call.err, null);
    assert.equal(call.res!.data, ' there');
    assert.equal(call.res!.result, ' there');
    assert.equal(call.res!.task, TASK);
    assert.equal(call.res!.status, 'final');
    assert.equal(call.res!.session, 's1');
    assert.equal(call.res!.reference, '1');
    assert.deepEqual(call.res!.receipt, { task: TASK, traceRoot: 'a'.repeat(64) });
    assert.equal(await p.value(`return require('verity').pending()`), '0', 'answered: the entry is gone');
    // A second final answer (a replay) finds nothing pending.
    const replay = await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '1', Task: TASK, Status: 'final' }, Data: view('final', ' again') });
    assert.match(replay.Output.data, /New Message From/);
    assert.equal((await p.calls()).length, 1);
    // getTaskStatus of the ended request: from what the client kept, at once.
    const status = await p.run(`require('verity').getTaskStatus('1', function(err, v) Seen = v.status .. v.result end)`);
    assert.deepEqual(status.Messages, []);
    assert.equal(await p.value('return Seen'), 'final there');
    p.close();
  });

  test('only the configured coordinator, with a pending reference, the right kind and the request\'s task, reaches the callback', T, async () => {
    const p = await spawn();
    await p.run(`require('verity').infer('Hello', {}, record('infer'))`);
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Accepted', 'X-Reference': '1', Task: TASK } });
    const forgeries: Input[] = [
      { From: OTHER, Tags: { Action: 'Infer-Response', 'X-Reference': '1', Task: TASK, Status: 'final' }, Data: view('final', 'forged') },
      { From: TOKEN, Tags: { Action: 'Infer-Response', 'X-Reference': '1', Task: TASK, Status: 'final' }, Data: view('final', 'forged') },
      { From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '1', Task: OTHER, Status: 'final' }, Data: view('final', 'another task') },
      { From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '2', Task: TASK, Status: 'final' }, Data: view('final', 'unknown reference') },
      { From: COORDINATOR, Tags: { Action: 'Balance-Response', 'X-Reference': '1', Balance: '5' } },
      { From: OTHER, Tags: { Action: 'Infer-Response', 'X-Reference': '1', Task: TASK, Code: '500', Message: 'forged error' } },
    ];
    for (const f of forgeries) {
      const r = await p.send(f);
      assert.equal(r.Error, undefined);
      assert.match(r.Output.data, /New Message From/, JSON.stringify(f));
    }
    assert.deepEqual(await p.calls(), []);
    assert.equal(await p.value(`return require('verity').pending()`), '1');
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '1', Task: TASK, Status: 'final' }, Data: view('final', 'real') });
    assert.deepEqual((await p.calls()).map((c) => c.res?.data), ['real']);
    p.close();
  });

  test('refusals reach the callback as { code, message, status }: a rejected Infer and a failed task', T, async () => {
    const p = await spawn();
    await p.run(`require('verity').infer('Hello', { max_tokens = 100000 }, record('a'))`);
    await p.run(`require('verity').infer('Hello', {}, record('b'))`);
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '1', Code: '400', Message: 'max_tokens is at most 512 (Max-Tokens)', Status: 'rejected' } });
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Accepted', 'X-Reference': '2', Task: TASK } });
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '2', Task: TASK, Status: 'failed', Code: '504', Message: 'no verified result: x' }, Data: view('failed', null) });
    const calls = await p.calls();
    assert.deepEqual(calls.map((c) => [c.name, c.err?.code, c.err?.status, c.res]), [['a', 400, 'rejected', null], ['b', 504, 'failed', null]]);
    assert.equal(calls[0].err!.message, 'max_tokens is at most 512 (Max-Tokens)');
    assert.equal(calls[0].err!.reference, '1');
    assert.equal(calls[1].err!.task, TASK);
    assert.equal(await p.value(`return require('verity').pending()`), '0');
    p.close();
  });

  test('wait = pending calls back with the first answer; on_pending sees it while waiting for the final one', T, async () => {
    const p = await spawn();
    await p.run(`require('verity').infer('Hello', { wait = 'pending' }, record('fast'))`);
    await p.run(`require('verity').infer('Hello', { on_pending = function(res) record('early')(nil, res) end }, record('late'))`);
    for (const ref of ['1', '2']) await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': ref, Task: TASK, Status: 'pending' }, Data: view('pending', 'first') });
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '2', Task: TASK, Status: 'final' }, Data: view('final', 'checked') });
    assert.deepEqual((await p.calls()).map((c) => [c.name, c.res?.status, c.res?.data]), [['fast', 'pending', 'first'], ['early', 'pending', 'first'], ['late', 'final', 'checked']]);
    p.close();
  });

  test('deposit: a Transfer to the token for the coordinator (X-Action=Deposit); the Deposit-Notice calls back; a Transfer-Error is an error', T, async () => {
    const p = await spawn();
    const sent = await p.run(`return require('verity').deposit('5000', record('deposit'))`);
    const [transfer] = sent.Messages;
    assert.equal(transfer.Target, TOKEN);
    const t = tagsOf(transfer);
    assert.deepEqual([t.Action, t.Recipient, t.Quantity, t['X-Action'], t['X-Reference']], ['Transfer', COORDINATOR, '5000', 'Deposit', '1']);
    await p.send({ From: TOKEN, Tags: { Action: 'Debit-Notice', Recipient: COORDINATOR, Quantity: '5000', 'X-Reference': '1', 'X-Action': 'Deposit' } });
    assert.deepEqual(await p.calls(), []);
    // A Deposit-Notice from the token (not the coordinator) is not taken.
    await p.send({ From: TOKEN, Tags: { Action: 'Deposit-Notice', Quantity: '5000', Balance: '5000', 'X-Reference': '1' } });
    await p.send({ From: COORDINATOR, Tags: { Action: 'Deposit-Notice', Quantity: '5000', Balance: '5000', 'X-Reference': '1', 'X-Action': 'Deposit' } });
    await p.run(`require('verity').deposit(7, record('poor'))`);
    await p.send({ From: COORDINATOR, Tags: { Action: 'Transfer-Error', 'X-Reference': '2', Code: '402', Message: 'forged' } });
    await p.send({ From: TOKEN, Tags: { Action: 'Transfer-Error', 'X-Reference': '2', Code: '402', Message: 'insufficient balance: 0 < 7' } });
    assert.deepEqual((await p.calls()).map((c) => [c.name, c.res?.balance ?? c.err?.code]), [['deposit', '5000'], ['poor', 402]]);
    const bad = await p.send({ Tags: { Action: 'Eval' }, Data: `require('verity').deposit('-1')` });
    assert.match(bad.Error ?? '', /quantity must be a whole number/);
    p.close();
  });

  test('getBalance and getTaskStatus ask the coordinator; a Task-Error is an error', T, async () => {
    const p = await spawn();
    const asked = await p.run(`return require('verity').getBalance(record('balance'))`);
    assert.deepEqual([asked.Messages[0].Target, tagsOf(asked.Messages[0]).Action, tagsOf(asked.Messages[0])['X-Reference']], [COORDINATOR, 'Balance', '1']);
    await p.send({ From: COORDINATOR, Tags: { Action: 'Balance-Response', 'X-Reference': '1', Balance: '42', Earnings: '0', Stake: '0', Locked: '0', Account: PID }, Data: '42' });
    await p.run(`require('verity').infer('Hello', {}, record('infer'))`);
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Accepted', 'X-Reference': '2', Task: TASK } });
    const query = await p.run(`require('verity').getTaskStatus('2', record('status'))`);
    assert.deepEqual([tagsOf(query.Messages[0]).Action, tagsOf(query.Messages[0]).Task, tagsOf(query.Messages[0])['X-Reference']], ['Task', TASK, '3']);
    await p.send({ From: COORDINATOR, Tags: { Action: 'Task-Response', 'X-Reference': '3', Task: TASK, Status: 'assigned' }, Data: view('assigned', null) });
    await p.run(`require('verity').getTaskStatus('2', record('gone'))`);
    await p.send({ From: COORDINATOR, Tags: { Action: 'Task-Error', 'X-Reference': '4', Code: '404', Message: 'no live task by that id' } });
    await p.run(`require('verity').getTaskStatus('99', record('unknown'))`);
    const other = await p.run(`require('verity').getBalance(function() end, '${OTHER}')`);
    assert.deepEqual([other.Messages[0].Target, tagsOf(other.Messages[0]).Target, tagsOf(other.Messages[0]).Action], [COORDINATOR, OTHER, 'Balance']);
    const calls = await p.calls();
    assert.deepEqual(calls.map((c) => [c.name, c.err?.code ?? null]), [['balance', null], ['status', null], ['gone', 404], ['unknown', 404]]);
    assert.equal(calls[0].res!.balance, '42');
    assert.equal(calls[1].res!.status, 'assigned');
    assert.equal(await p.value(`return require('verity').pending()`), '2', 'the infer and the unanswered balance query wait');
    p.close();
  });

  test('the pending table is bounded (max_pending): past it the callback gets 429 at once and nothing is sent; answers free room', T, async () => {
    const p = await spawn();
    await p.run(`require('verity').configure({ max_pending = 3 })`);
    for (let i = 0; i < 3; i++) await p.run(`require('verity').infer('Hello', {}, record('ok'))`);
    const over = await p.run(`return tostring(require('verity').infer('Hello', {}, record('over')))`);
    assert.equal(over.Output.data, 'nil');
    assert.deepEqual(over.Messages, []);
    assert.deepEqual((await p.calls()).map((c) => [c.name, c.err?.code]), [['over', 429]]);
    await p.send({ From: COORDINATOR, Tags: { Action: 'Infer-Response', 'X-Reference': '1', Code: '402', Message: 'unfunded', Status: 'rejected' } });
    const again = await p.run(`return require('verity').infer('Hello', {}, record('again'))`);
    assert.equal(again.Messages.length, 1);
    assert.equal(await p.value(`return require('verity').pending()`), '3');
    assert.equal(await p.value(`return require('verity').limits.pending`), '3');
    p.close();
  });

  test('configuration: spawn tags or configure; a missing coordinator, a bad id, an unknown option are errors', T, async () => {
    const p = await spawn({});
    const missing = await p.send({ Tags: { Action: 'Eval' }, Data: `require('verity').infer('Hello', {}, record('x'))` });
    assert.match(missing.Error ?? '', /no coordinator process: call verity.configure/);
    const bad = await p.send({ Tags: { Action: 'Eval' }, Data: `require('verity').configure({ coordinator = 'short' })` });
    assert.match(bad.Error ?? '', /coordinator must be a process id/);
    await p.run(`require('verity').configure({ coordinator = '${COORDINATOR}', token = '${TOKEN}' })`);
    assert.equal(await p.value(`return require('verity').coordinator() .. ' ' .. require('verity').token()`), `${COORDINATOR} ${TOKEN}`);
    const unknown = await p.send({ Tags: { Action: 'Eval' }, Data: `require('verity').infer('Hello', { max_token = 5 })` });
    assert.match(unknown.Error ?? '', /unknown option max_token/);
    const empty = await p.send({ Tags: { Action: 'Eval' }, Data: `require('verity').infer('', {})` });
    assert.match(empty.Error ?? '', /non-empty string/);
    const sent = await p.run(`return require('verity').infer('Hello')`);
    assert.equal(tagsOf(sent.Messages[0])['X-Options'], '{}', 'no options: an empty JSON object, which the coordinator reads as its defaults');
    // A reference of one's own; the counter steps over it while it waits.
    assert.equal(await p.value(`return require('verity').infer('Hello', { reference = '3' })`), '3');
    assert.equal(await p.value(`return require('verity').getBalance(function() end)`), '2');
    assert.equal(await p.value(`return require('verity').getBalance(function() end)`), '4');
    const twice = await p.send({ Tags: { Action: 'Eval' }, Data: `require('verity').infer('Hello', { reference = '3' })` });
    assert.match(twice.Error ?? '', /request 3 is already waiting/);
    p.close();
  });
});
