// A Lua dApp on the embedded devnet, through the real units: the example dApp
// (examples/lua-dapp/dapp.lua) spawned with `verity process spawn --lua`, which bundles the verity
// Lua client (src/processes/lua/verity.lua), with Verity-Coordinator / Verity-Token tags, funded by its owner (tokens to the dApp, then
// `Fund`: the client deposits them with the coordinator), asked a question by someone else; its
// answer is the text `verity infer` prints for the same job. A forged Infer-Response (from another process,
// and from a wallet) never reaches the client's callback; refused Infers (400 options, 402 unfunded)
// reach it as errors with Code and Message.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { aoClient, expectReply, waitForMessage, type AoClient } from '../../src/ao/client.js';
import { publishModule } from '../../src/ao/modules.js';
import { startDevnet } from '../../src/client/devnet.js';
import { Verity } from '../../src/client/sdk.js';
import { generateWallet, walletAddress, walletSigner } from '../../src/store/wallet.js';
import { projectRoot, runCli, withTempDir } from '../helpers.js';

const PROMPT = 'Once upon a time';
const MAX_TOKENS = 24;
const SEED = 7;
const WAIT = 90_000;

const CLIENT = readFileSync(join(projectRoot, 'src/processes/lua/verity.lua'), 'utf8');
const DAPP = readFileSync(join(projectRoot, 'examples/lua-dapp/dapp.lua'), 'utf8');
/** What `verity process spawn` will do: the client as a preloaded module, then the dApp. */
const bundle = (source: string): string => `package.preload['verity'] = function(...)\n${CLIENT}\nend\n${source}`;

const FORGER = `
local json = require('json')
Handlers.add('Forge', function(msg)
  Send({ Target = msg.Victim, Action = 'Infer-Response', ['X-Reference'] = msg.Ref, Task = msg.Task, Status = 'final',
    Data = json.encode({ result = 'forged', task = msg.Task, status = 'final' }) })
end)
`;

type Tags = { name: string; value: string }[];
const tags = (record: Record<string, string>): Tags => Object.entries(record).map(([name, value]) => ({ name, value }));

/** Runs Lua in the process as its owner and returns what the chunk returned (Output.data). */
async function evalLua(ao: AoClient, process: string, code: string): Promise<string> {
  const result = await ao.result(process, await ao.message(process, { tags: tags({ Action: 'Eval' }), data: code }));
  assert.equal(result.Error, undefined, `Eval failed: ${String(result.Error)}`);
  return (result.Output as { data: string }).data;
}

/** Evaluates `code` until it returns something other than "" / "nil" (bounded). */
async function evalUntil(ao: AoClient, process: string, code: string, timeoutMs = WAIT): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const out = await evalLua(ao, process, code);
    if (out !== '' && out !== 'nil') return out;
    if (Date.now() > deadline) throw new Error(`no answer to ${code} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

test('a Lua dApp with the verity client: funded by its owner, asked by anyone, answers what `verity infer` answers; forged replies and refusals', { timeout: 300_000 }, () =>
  withTempDir(async (dir) => {
    // The third node takes leases and never submits: a request restricted to it stays waiting.
    const devnet = await startDevnet({ dir: join(dir, 'net'), nodes: 3, leaseMs: 20_000, strategies: [undefined, undefined, { strategy: 'offline-mid-task' }], heartbeatMs: 500, log: () => {} });
    try {
      const { info, units } = devnet;
      const owner = aoClient({ mu: info.mu, cu: info.cu, wallet: devnet.user });
      const ownerAddress = walletAddress(devnet.user);
      const askerWallet = await generateWallet('ed25519');
      const asker = aoClient({ mu: info.mu, cu: info.cu, wallet: askerWallet });
      const askerAddress = walletAddress(askerWallet);

      const signer = walletSigner(devnet.user);
      const dappModule = await publishModule(units.store, signer, bundle(DAPP), 'lua-dapp', { format: 'lua' });
      const forgerModule = await publishModule(units.store, signer, FORGER, 'forger', { format: 'lua' });
      const spawnTags = (name: string): Tags =>
        tags({ Name: name, 'Verity-Coordinator': info.coordinator, 'Verity-Token': info.token, Authority: units.messenger.address });
      // The example as a developer spawns it: `verity process spawn --lua`, which bundles the client.
      const net = join(dir, 'net');
      const spawned = await runCli(['process', 'spawn', '--lua', join(projectRoot, 'examples/lua-dapp/dapp.lua'), '--devnet', net, '--json',
        '--tag', 'Name=lua-dapp', '--tag', `Verity-Coordinator=${info.coordinator}`, '--tag', `Verity-Token=${info.token}`, '--tag', `Authority=${units.messenger.address}`], WAIT);
      assert.equal(spawned.code, 0, spawned.stderr);
      const dapp = (JSON.parse(spawned.stdout.toString()) as { process: string }).process;
      const forger = await owner.spawn(forgerModule, units.scheduler.address, { tags: spawnTags('forger') });
      const unfunded = await owner.spawn(dappModule, units.scheduler.address, { tags: spawnTags('lua-dapp-unfunded') });

      // The owner sends the dApp tokens, then has it deposit part of them with the coordinator.
      expectReply(await owner.result(info.token, await owner.message(info.token, { tags: tags({ Action: 'Transfer', Recipient: dapp, Quantity: '10000' }) })), 'Debit-Notice');
      const fundFrom = await owner.latest(dapp);
      const fund = await owner.message(dapp, { tags: tags({ Action: 'Fund', Quantity: '5000' }) });
      assert.equal((await owner.result(dapp, fund)).Error, undefined);
      const funded = await waitForMessage(owner, dapp, { from: fundFrom, target: ownerAddress, action: 'Fund-Response', match: () => true, timeoutMs: WAIT });
      assert.equal(funded.tags.Quantity, '5000');
      assert.equal(funded.tags.Balance, '5000');
      // The owner's tokens arrived as the token's Credit-Notice (the dApp counts those from the token only).
      assert.equal(await evalUntil(owner, dapp, "return Received.last and (Received.count .. ' ' .. Received.last.sender .. ' ' .. Received.last.quantity)"), `1 ${ownerAddress} 10000`);
      // Only the owner funds.
      const stranger = await asker.result(dapp, await asker.message(dapp, { tags: tags({ Action: 'Fund', Quantity: '1' }) }));
      assert.equal(expectReply(stranger, 'Fund-Error').tags.Code, '403');

      // getBalance, as the dApp's code calls it.
      await evalLua(owner, dapp, "require('verity').getBalance(function(err, res) SeenBalance = err and ('error ' .. err.code) or res.balance end)");
      assert.equal(await evalUntil(owner, dapp, 'return SeenBalance'), '5000');

      // Someone asks.
      const askFrom = await asker.latest(dapp);
      const ask = await asker.message(dapp, { tags: tags({ Action: 'Ask', 'Max-Tokens': String(MAX_TOKENS), Temperature: '0', Seed: String(SEED) }), data: PROMPT });
      const accepted = expectReply(await asker.result(dapp, ask), 'Ask-Accepted');
      const ref = accepted.tags.Ref;
      assert.ok(ref);

      // The answer comes back to the asker, and is what the SDK gets for the same job.
      const answer = await waitForMessage(asker, dapp, { from: askFrom, target: askerAddress, action: 'Ask-Response', match: (t) => t.Ref === ref, timeoutMs: WAIT });
      assert.equal(answer.tags.Status, 'final');
      const inferred = await runCli(['infer', PROMPT, '--devnet', net, '--max-tokens', String(MAX_TOKENS), '--temperature', '0', '--seed', String(SEED), '--json'], WAIT);
      assert.equal(inferred.code, 0, inferred.stderr);
      const cli = JSON.parse(inferred.stdout.toString()) as { status: string; text: string };
      assert.equal(cli.status, 'final');
      assert.ok(cli.text.length > 0);
      assert.equal(answer.data, cli.text, 'the dApp got the text `verity infer` prints for the same job');

      // The dApp kept it (a dry-run reads it), with the receipt.
      const stored = expectReply(await asker.dryRun(dapp, { tags: tags({ Action: 'Answer', Ref: ref }), from: askerAddress }), 'Answer-Response');
      assert.equal(stored.tags.Status, 'final');
      const kept = JSON.parse(stored.data) as { text: string; task: string; receipt: { task: string; traceRoot: string } };
      assert.equal(kept.text, cli.text);
      assert.equal(kept.receipt.task, kept.task);
      assert.match(kept.receipt.traceRoot, /^[0-9a-f]{64}$/);

      // Exactly one answer went to the asker for the request; nothing is left pending.
      assert.equal(await evalLua(owner, dapp, 'return tostring(require("verity").pending())'), '0');
      // getTaskStatus of an ended request: from what the client kept.
      await evalLua(owner, dapp, `require('verity').getTaskStatus('${ref}', function(err, view) SeenStatus = err and ('error ' .. err.code) or (view.status .. ' ' .. view.result) end)`);
      assert.equal(await evalUntil(owner, dapp, 'return SeenStatus'), `final ${cli.text}`);
      // The client's balance is the coordinator's account of the dApp (5000, less what the task paid,
      // plus any slash of a node that let a lease of it expire).
      await evalLua(owner, dapp, "SeenBalance = nil; require('verity').getBalance(function(err, res) SeenBalance = res.balance end)");
      const seen = await evalUntil(owner, dapp, 'return SeenBalance');
      assert.equal(BigInt(seen), (await Verity.connect({ ...info, wallet: devnet.user }).balance(dapp)).deposit);
      assert.notEqual(seen, '5000', 'the task was paid for');

      // A request the coordinator refuses (max_tokens over Max-Tokens): an error with Code and Message.
      const badFrom = await asker.latest(dapp);
      const bad = await asker.message(dapp, { tags: tags({ Action: 'Ask', 'Max-Tokens': '100000' }), data: PROMPT });
      const badRef = expectReply(await asker.result(dapp, bad), 'Ask-Accepted').tags.Ref;
      const refused = await waitForMessage(asker, dapp, { from: badFrom, target: askerAddress, action: 'Ask-Error', match: (t) => t.Ref === badRef, timeoutMs: WAIT });
      assert.equal(refused.tags.Code, '400');
      assert.match(refused.tags.Message, /max_tokens is at most 512/);

      // An unfunded dApp: 402 from the coordinator, to the callback.
      const poorFrom = await asker.latest(unfunded);
      const poor = await asker.message(unfunded, { tags: tags({ Action: 'Ask' }), data: PROMPT });
      const poorRef = expectReply(await asker.result(unfunded, poor), 'Ask-Accepted').tags.Ref;
      const unpaid = await waitForMessage(asker, unfunded, { from: poorFrom, target: askerAddress, action: 'Ask-Error', match: (t) => t.Ref === poorRef, timeoutMs: WAIT });
      assert.equal(unpaid.tags.Code, '402');
      assert.match(unpaid.tags.Message, /deposit/);
      const poorAnswer = expectReply(await asker.dryRun(unfunded, { tags: tags({ Action: 'Answer', Ref: poorRef }), from: askerAddress }), 'Answer-Response');
      assert.equal(poorAnswer.tags.Status, 'error');
      assert.equal((JSON.parse(poorAnswer.data) as { error: { code: number } }).error.code, 402);

      // Forged answers to a request that is waiting (its only node never submits), naming its real
      // task (anyone can read it from the coordinator's results): from another process, and from a
      // wallet. Neither reaches the callback; the request stays pending.
      const offline = devnet.nodes[2].address;
      const coordinatorFrom = await owner.latest(info.coordinator);
      const waiting = await evalLua(owner, dapp,
        `return require('verity').infer('Once upon a time', { max_tokens = 8, nodes = { '${offline}' } }, function(err, res) Forged = err and ('error ' .. tostring(err.code)) or res.data end)`);
      const acceptedAt = await waitForMessage(owner, info.coordinator, { from: coordinatorFrom, target: dapp, action: 'Infer-Accepted', match: (t) => t['X-Reference'] === waiting, timeoutMs: WAIT });
      const task = acceptedAt.tags.Task;
      assert.match(task, /^[A-Za-z0-9_-]{43}$/);
      await evalUntil(owner, dapp, `local e = Verity_Client.pending['${waiting}'] return e and e.task or ''`);
      await owner.message(forger, { tags: tags({ Action: 'Forge', Victim: dapp, Ref: waiting, Task: task }) });
      const forged = await asker.message(dapp, {
        tags: tags({ Action: 'Infer-Response', 'X-Reference': waiting, Task: task, Status: 'final' }), data: JSON.stringify({ result: 'forged by a wallet', task, status: 'final' }),
      });
      const forgedResult = await asker.result(dapp, forged);
      assert.equal(forgedResult.Error, undefined);
      assert.deepEqual(forgedResult.Messages, [], 'the forged reply caused no answer');
      assert.match((forgedResult.Output as { data: string }).data, /New Message From .*Action = Infer-Response/);
      // The process forger's message reached the dApp's Inbox, not the callback.
      await evalUntil(owner, dapp, `for _, m in ipairs(Inbox) do if m.From == '${forger}' and m.Action == 'Infer-Response' then return 'yes' end end return ''`);
      assert.equal(await evalLua(owner, dapp, `return tostring(Forged) .. ' ' .. tostring(Verity_Client.pending['${waiting}'] ~= nil)`), 'nil true');
    } finally {
      await devnet.close();
    }
  }));
