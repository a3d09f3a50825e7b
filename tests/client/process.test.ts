// `verity process spawn | eval | send | dryrun` as a user runs them, against the AO units started
// in this process (loopback): a Lua process with a Ping handler, an Eval that requires a local
// module (bundling), a dry run that keeps nothing, --json, and one-line errors.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startUnits, type RunningUnits } from '../../src/ao/units.js';
import { bundleLua, requiredNames } from '../../src/client/lua-bundle.js';
import { generateWallet, writeWallet } from '../../src/store/wallet.js';
import { projectRoot, runCli, type CliResult } from '../helpers.js';

const T = { timeout: 60_000 };

const PINGER = `
Count = Count or 0
Handlers.add('Ping', function(msg)
  Count = Count + 1
  print('pinged ' .. Count)
  msg.reply({ Action = 'Pong', Data = 'Pong ' .. Count })
end)
print('ready')
`;

describe('verity process', { timeout: 240_000 }, () => {
  let dir: string;
  let units: RunningUnits;
  let flags: string[];
  let pid: string;

  const cli = (args: string[]): Promise<CliResult> => runCli(['process', ...args, ...flags], 60_000);
  const file = (name: string, text: string): string => {
    const path = join(dir, 'lua', name);
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, text);
    return path;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'verity-process-'));
    units = await startUnits({ dir: join(dir, 'units') });
    const wallet = join(dir, 'wallet.json');
    writeWallet(wallet, await generateWallet('ed25519'));
    const { urls } = units;
    flags = ['--mu', urls.mu, '--cu', urls.cu, '--wallet', wallet];
    file('util.lua', 'return { ten = 10 }\n');
    file('lib/counter.lua', "local util = require('util')\nreturn { bump = function(n) return n + util.ten end }\n");
  });

  after(async () => {
    await units?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('spawn publishes the Lua file, spawns it and prints the process id and its boot output', T, async () => {
    const r = await runCli(['process', 'spawn', '--lua', file('pinger.lua', PINGER), '--tag', 'App=test', ...flags, '--gateway', units.urls.gateway, '--su', units.urls.su]);
    assert.equal(r.code, 0, r.stderr);
    const [id, ...rest] = r.stdout.toString().split('\n');
    assert.match(id, /^[A-Za-z0-9_-]{43}$/);
    assert.match(rest.join('\n'), /^ready\n/, 'what the module printed as it loaded is the spawn\'s Output');
    pid = id;
  });

  test('spawn --json bundles the modules the file requires; a module that does not load is the Error, exit 1', T, async () => {
    const spawn = (lua: string, extra: string[] = []): Promise<CliResult> =>
      runCli(['process', 'spawn', '--lua', lua, '--json', ...extra, ...flags, '--gateway', units.urls.gateway, '--su', units.urls.su]);
    const ok = await spawn(file('with-lib.lua', "local counter = require('lib.counter')\nStart = counter.bump(1)\nHandlers.add('Start', function(msg) msg.reply({ Action = 'Started', Data = tostring(Start) }) end)\n"), ['--name', 'with-lib', '--compute-limit', '500']);
    assert.equal(ok.code, 0, ok.stderr);
    const spawned = JSON.parse(ok.stdout.toString()) as { process: string; module: string; error: string | null };
    assert.match(spawned.process, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(spawned.error, null);
    const started = await cli(['dryrun', spawned.process, '--action', 'Start', '--json']);
    assert.equal((JSON.parse(started.stdout.toString()) as { messages: { data: string }[] }).messages[0].data, '11');
    const broken = await spawn(file('broken-module.lua', 'x = = 1\n'));
    assert.equal(broken.code, 1);
    assert.match((JSON.parse(broken.stdout.toString()) as { error: string }).error, /near/);
  });

  test('send --action Ping prints the Output and the reply line with the counter', T, async () => {
    const r = await cli(['send', pid, '--action', 'Ping']);
    assert.equal(r.code, 0, r.stderr);
    const out = r.stdout.toString();
    assert.match(out, /pinged 1\n/);
    assert.match(out, /→ message [A-Za-z0-9_-]{43}: Action=Pong .*\n {4}Data: Pong 1\n/);
  });

  test('eval bundles a local module (and the one it requires) and changes the state', T, async () => {
    const patch = file('patch.lua', "local counter = require('lib.counter')\nCount = counter.bump(Count)\nreturn 'count ' .. Count\n");
    const r = await cli(['eval', pid, patch]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'count 11\n');
  });

  test('dryrun shows the next state without keeping it; a following send sees the old one', T, async () => {
    const dry = await cli(['dryrun', pid, '--action', 'Ping']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout.toString(), /Data: Pong 12\n/);
    const again = await cli(['dryrun', pid, '--action', 'Ping']);
    assert.match(again.stdout.toString(), /Data: Pong 12\n/);
    const sent = await cli(['send', pid, '--action', 'Ping', '--json']);
    assert.equal(sent.code, 0, sent.stderr);
    const json = JSON.parse(sent.stdout.toString()) as { message: string; output: string; messages: { target: string; tags: Record<string, string>; data: string }[]; error: string | null };
    assert.match(json.message, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(json.output, 'pinged 12\n');
    assert.equal(json.messages.length, 1);
    assert.equal(json.messages[0].tags.Action, 'Pong');
    assert.equal(json.messages[0].data, 'Pong 12');
    assert.equal(json.error, null);
  });

  test('--no-wait prints the message id only; --json of it is one object', T, async () => {
    const r = await cli(['send', pid, '--action', 'Other', '--no-wait', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.toString().trim().split('\n');
    assert.equal(lines.length, 1);
    assert.match((JSON.parse(lines[0]) as { message: string }).message, /^[A-Za-z0-9_-]{43}$/);
  });

  test('a Lua syntax error in eval prints the error and exits 1', T, async () => {
    const r = await cli(['eval', pid, file('broken.lua', 'Count = = 1\n')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /error: .*(syntax|unexpected|near)/);
    const json = await cli(['eval', pid, file('broken.lua', 'Count = = 1\n'), '--json']);
    assert.equal(json.code, 1);
    assert.match((JSON.parse(json.stdout.toString()) as { error: string }).error, /near/);
  });

  test('an unknown process id is one clear line and a non-zero exit', T, async () => {
    const unknown = randomBytes(32).toString('base64url');
    for (const args of [['send', unknown, '--action', 'Ping'], ['dryrun', unknown, '--action', 'Ping'], ['eval', unknown, file('ok.lua', 'return 1\n')]]) {
      const r = await cli(args);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.ok(r.stderr.startsWith(`verity: process ${unknown} is not known on this network`), r.stderr);
    }
    const bad = await cli(['send', 'x'.repeat(43), '--action', 'Ping']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /not a process id/);
  });

  test('--help of each command has an example', T, async () => {
    for (const command of ['spawn', 'eval', 'send', 'dryrun']) {
      const r = await runCli(['process', command, '--help']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout.toString(), /Example:\n {2}\$ verity process /);
    }
  });
});

describe('bundling Lua as aos .load does', { timeout: 30_000 }, () => {
  test('finds literal requires, reports cycles and missing modules, caps the size', () => {
    assert.deepEqual(requiredNames(`local a = require('a')\nlocal b = require "b.c"\n-- require('skipped')\nrequire("a")`), ['a', 'b.c']);
    const dir = mkdtempSync(join(tmpdir(), 'verity-bundle-'));
    try {
      writeFileSync(join(dir, 'main.lua'), "local x = require('x')\nlocal j = require('json')\nreturn x\n");
      writeFileSync(join(dir, 'x.lua'), "return require('y')\n");
      writeFileSync(join(dir, 'y.lua'), 'return 1\n');
      const b = bundleLua(join(dir, 'main.lua'));
      assert.deepEqual(b.modules.map((m) => m.name), ['y', 'x']);
      assert.deepEqual(b.missing, ['json']);
      assert.ok(b.source.indexOf("package.preload[\"y\"]") < b.source.indexOf("package.preload[\"x\"]"));
      writeFileSync(join(dir, 'y.lua'), "return require('x')\n");
      assert.throws(() => bundleLua(join(dir, 'main.lua')), /require cycle: x → y → x/);
      writeFileSync(join(dir, 'big.lua'), `-- ${'a'.repeat(1024 * 1024)}\n`);
      assert.throws(() => bundleLua(join(dir, 'big.lua')), /bundle limit/);
      assert.throws(() => bundleLua(join(dir, 'none.lua')), /not found/);
      // require('verity') is the repo's Lua client (dist/src/processes/lua/verity.lua), or a clear error before it is built.
      writeFileSync(join(dir, 'uses-verity.lua'), "local verity = require('verity')\n");
      const client = join(projectRoot, 'dist', 'src', 'processes', 'lua', 'verity.lua');
      if (existsSync(client)) assert.deepEqual(bundleLua(join(dir, 'uses-verity.lua')).modules, [{ name: 'verity', file: client }]);
      else assert.throws(() => bundleLua(join(dir, 'uses-verity.lua')), /built-in Lua module 'verity' .* not found/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
