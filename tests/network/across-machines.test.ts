// docs/across-machines.md, command by command: every unit its own `verity` process on loopback with
// its own folder, the network set up with `verity network init`, the model published and registered,
// two nodes funded by token transfers and staked, a user funded and deposited, then one inference
// that ends final with a receipt and `verity verify` of its task exits 0. No code sets anything up.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { freePort } from '../../src/ao/units.js';
import { runCli, serveCli, stories260K, tok512, withTempDir, type ServingCli } from '../helpers.js';

test('across machines: units, network init, model publish + register, two staked nodes, a funded user, a verified inference — all through verity commands', { timeout: 180_000 }, () =>
  withTempDir(async (dir) => {
    const port = { gateway: await freePort(), su: await freePort(), cu: await freePort(), mu: await freePort() };
    const url = (unit: keyof typeof port): string => `http://127.0.0.1:${port[unit]}`;
    const started: ServingCli[] = [];
    const serve = async (args: string[]): Promise<ServingCli> => {
      const s = await serveCli(args, 60_000);
      started.push(s);
      return s;
    };
    /** Runs a command that prints one JSON object; asserts exit 0. */
    const json = async (args: string[]): Promise<Record<string, unknown>> => {
      const r = await runCli([...args, '--json'], 90_000);
      assert.equal(r.code, 0, `verity ${args.slice(0, 2).join(' ')}: ${r.stderr}`);
      const lines = r.stdout.toString().trim().split('\n');
      assert.equal(lines.length, 1, `verity ${args.slice(0, 2).join(' ')} printed ${lines.length} lines`);
      return JSON.parse(lines[0]) as Record<string, unknown>;
    };
    const f = (name: string): string => join(dir, name);
    try {
      // 1. The units, each its own process with its own folder (on their own machines in the page).
      await serve(['gateway', '--store', f('gateway-store'), '--port', String(port.gateway)]);
      await serve(['su', '--gateway', url('gateway'), '--dir', f('su'), '--port', String(port.su)]);
      await serve(['cu', '--gateway', url('gateway'), '--dir', f('cu'), '--port', String(port.cu)]);
      await serve(['mu', '--gateway', url('gateway'), '--cu', url('cu'), '--dir', f('mu'), '--port', String(port.mu)]);

      // 2. Wallets: the owner, two nodes, a user.
      const addr: Record<string, string> = {};
      for (const who of ['owner', 'node1', 'node2', 'user']) addr[who] = String((await json(['wallet', 'new', '--wallet', f(`${who}.json`)])).address);

      // 3. The network: token and coordinator spawned, the owner's supply minted, network.json written.
      const net = f('network.json');
      const init = await json([
        'network', 'init', '--mu', url('mu'), '--cu', url('cu'), '--gateway', url('gateway'), '--su', url('su'), '--wallet', f('owner.json'), '--out', net,
        '--param', 'Challenge-Window-Ms=3000', '--param', 'Reveal-Ms=20000', '--param', 'Clock-Ms=20000',
      ]);
      assert.match(String(init.token), /^[A-Za-z0-9_-]{43}$/);
      assert.match(String(init.coordinator), /^[A-Za-z0-9_-]{43}$/);
      assert.equal(init.owner, addr.owner);
      const network = ['--network', net];
      const owner = [...network, '--wallet', f('owner.json')];
      assert.equal((await json(['token', 'balance', ...owner])).balance, '100000000');
      const params = await json(['network', 'params', ...network, '--wallet', f('user.json')]);
      assert.equal((params.params as Record<string, string>)['Challenge-Window-Ms'], '3000');

      // Only the owner sets parameters: one line that says whose wallet it takes.
      const refused = await runCli(['network', 'params', ...network, '--wallet', f('user.json'), '--set', 'Audit-Ppm=200000']);
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /^verity: only the coordinator's owner \(.+\) sets parameters: pass --wallet/);
      assert.equal(refused.stderr.trim().split('\n').length, 1);
      const set = await json(['network', 'params', ...owner, '--set', 'Audit-Ppm=200000']);
      assert.equal((set.params as Record<string, string>)['Audit-Ppm'], '200000');

      // 4. The model: published through the gateway, registered at the coordinator.
      const published = await json(['model', 'publish', stories260K, '-z', tok512, '--gateway', url('gateway'), '--wallet', f('owner.json')]);
      const modelId = String(published.modelId);
      const registered = await json(['model', 'register', modelId, ...owner]);
      assert.equal((registered.model as { id: string }).id, modelId);

      // 5. Tokens for the nodes' stakes and the user; the nodes start, register and stake.
      for (const who of ['node1', 'node2']) await json(['token', 'transfer', addr[who], '100000', ...owner]);
      await json(['token', 'transfer', addr.user, '500000', ...owner]);
      await json(['token', 'mint', addr.user, '500000', ...owner]);
      assert.equal((await json(['token', 'balance', addr.user, ...network, '--wallet', f('user.json')])).balance, '1000000');
      for (const who of ['node1', 'node2']) {
        const node = await serve(['node', 'start', ...network, '--wallet', f(`${who}.json`), '--stake', '30000', '--dir', f(who)]);
        assert.equal(node.info.node, addr[who]);
      }

      // 6. The user deposits and asks; the answer is final with a receipt, and verify re-runs it here.
      const user = [...network, '--wallet', f('user.json')];
      assert.equal((await json(['deposit', '100000', ...user])).deposit, '100000');
      const answer = await json(['infer', 'Once upon a time', '--max-tokens', '24', '--temperature', '0', ...user]);
      assert.equal(answer.status, 'final');
      assert.ok(answer.receipt, 'a receipt');
      assert.match(String(answer.text), /^, there was a little girl named Lily/);
      const verified = await runCli(['verify', String(answer.task), ...user, '--cache', f('verify')], 90_000);
      assert.equal(verified.code, 0, verified.stderr + verified.stdout.toString());
      const after = await json(['token', 'balance', ...user]);
      assert.ok(BigInt(String(after.deposit)) < 100000n, 'the inference was paid from the deposit');
    } catch (e) {
      const dead = started.filter((s) => s.child.exitCode !== null || s.child.signalCode !== null);
      for (const s of dead) (e as Error).message += `\n${s.child.spawnargs.slice(2, 4).join(' ')} exited (${s.child.exitCode ?? s.child.signalCode}): ${s.stderr().slice(-1500)}`;
      throw e;
    } finally {
      await Promise.all(started.map((s) => s.stop()));
    }
  }),
);
