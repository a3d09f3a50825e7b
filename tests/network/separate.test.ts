// The network as separate processes — gateway, SU, CU, MU and three nodes, each its own `verity`
// command on its own port — under load: 50 requests at once from 5 wallets, one node killed with
// SIGKILL while it holds leases. Every task completes and every token is accounted for.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { aoClient, replyOf } from '../../src/ao/client.js';
import { freePort } from '../../src/ao/units.js';
import { DEVNET_STAKE, setupNetwork } from '../../src/client/devnet.js';
import { Verity, type TaskView } from '../../src/client/sdk.js';
import { openGatewayStore } from '../../src/store/gateway-store.js';
import { generateWallet, walletAddress, writeWallet, type Wallet } from '../../src/store/wallet.js';
import { runCli, serveCli, withTempDir, type ServingCli } from '../helpers.js';

const sum = (values: Iterable<string | bigint>): bigint => [...values].reduce<bigint>((a, v) => a + BigInt(v), 0n);

test('separate processes: 50 concurrent requests from 5 wallets complete, a killed node\'s leases are re-assigned, every fee is accounted for', { timeout: 240_000 }, () =>
  withTempDir(async (dir) => {
    const port = { gateway: await freePort(), su: await freePort(), cu: await freePort(), mu: await freePort() };
    const url = (unit: keyof typeof port): string => `http://127.0.0.1:${port[unit]}`;
    const started: ServingCli[] = [];
    const serve = async (args: string[]): Promise<ServingCli> => {
      const s = await serveCli(args, 60_000);
      started.push(s);
      return s;
    };
    try {
      await serve(['gateway', '--store', join(dir, 'store'), '--port', String(port.gateway)]);
      const su = await serve(['su', '--gateway', url('gateway'), '--dir', join(dir, 'su'), '--port', String(port.su)]);
      await serve(['cu', '--gateway', url('gateway'), '--dir', join(dir, 'cu'), '--port', String(port.cu)]);
      const mu = await serve(['mu', '--gateway', url('gateway'), '--dir', join(dir, 'mu'), '--port', String(port.mu), '--cu', url('cu')]);

      const owner = await generateWallet('ed25519');
      const users = await Promise.all(Array.from({ length: 5 }, () => generateWallet('ed25519')));
      const nodeWallets = await Promise.all(Array.from({ length: 3 }, () => generateWallet('ed25519')));
      const ids = await setupNetwork(
        { store: openGatewayStore(url('gateway')), urls: { mu: url('mu'), cu: url('cu') }, scheduler: su.info.address, messenger: mu.info.address },
        { owner, users, nodes: nodeWallets, leaseMs: 3000 },
      );
      const networkFlags = ['--mu', url('mu'), '--cu', url('cu'), '--coordinator', ids.coordinator, '--token', ids.token];
      const startNode = (wallet: Wallet, i: number): Promise<ServingCli> => {
        const file = join(dir, `node-${i}.json`);
        writeWallet(file, wallet);
        return serve(['node', 'start', '--wallet', file, '--stake', String(DEVNET_STAKE), '--gateway', url('gateway'), '--dir', join(dir, `node-${i}`), ...networkFlags]);
      };
      const nodes = [];
      for (const [i, w] of nodeWallets.entries()) nodes.push(await startNode(w, i));

      // One request through the CLI, as a user with their own wallet file.
      const userFile = join(dir, 'user.json');
      writeWallet(userFile, users[0]);
      const one = await runCli(['infer', 'Once upon a time', '--temperature', '0', '--max-tokens', '40', '--wallet', userFile, '--json', ...networkFlags]);
      assert.equal(one.code, 0, one.stderr);
      const first = JSON.parse(one.stdout.toString()) as { task: string; text: string; status: string };
      assert.equal(first.status, 'final');
      assert.match(first.text, /^, there was a little girl named Lily/);

      // 50 at once; node 0 dies with SIGKILL while it holds leases.
      const clients = users.map((wallet) => Verity.connect({ mu: url('mu'), cu: url('cu'), coordinator: ids.coordinator, token: ids.token, wallet }));
      const requests = clients.flatMap((client, u) =>
        Array.from({ length: 10 }, (_, k) => client.infer(['Tom had a dog', 'The sun was', 'Lily liked', 'A big bird', 'One day'][k % 5], { maxTokens: 24, temperature: 0.8, seed: 100 * u + k })),
      );
      const victim = walletAddress(nodeWallets[0]);
      const killed = (async () => {
        // Kill once the node holds a lease.
        for (let i = 0; i < 200; i++) {
          const nodesNow = JSON.parse(replyOf(await aoClient({ mu: url('mu'), cu: url('cu'), wallet: owner }).dryRun(ids.coordinator, { tags: [{ name: 'Action', value: 'Nodes' }] }), 'Nodes-Response')!.data) as { address: string; open: number }[];
          if ((nodesNow.find((n) => n.address === victim)?.open ?? 0) > 0) break;
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        await nodes[0].stop('SIGKILL');
      })();
      const results = await Promise.all(requests);
      await killed;
      assert.equal(results.length, 50);
      assert.ok(results.every((r) => r.status === 'final' && r.receipt !== null), JSON.stringify(results.filter((r) => r.status !== 'final')));

      const tasks: TaskView[] = await Promise.all(results.map((r) => clients[0].task(r.task)));
      // The killed node's leases expired (or, committed, it missed its reveal and was slashed): others served them.
      const reassigned = tasks.filter((t) => t.participants.some((p) => p.node === victim && (p.status === 'expired' || p.status === 'slashed')));
      assert.ok(reassigned.length > 0, 'the killed node held a lease that expired');
      for (const t of reassigned) assert.notEqual(t.receipt!.node, victim);

      // Money: the coordinator's token balance is exactly its ledgers; the token's supply is unchanged.
      const ao = aoClient({ mu: url('mu'), cu: url('cu'), wallet: owner });
      const state = (await (await fetch(`${url('cu')}/state/${ids.coordinator}`)).json()) as {
        deposits: Record<string, string>; earnings: Record<string, string>; stakes: Record<string, string>; tasks: Record<string, { escrow: string; pot: string }>;
        totals: { slashed: string };
      };
      const held = replyOf(await ao.dryRun(ids.token, { tags: [{ name: 'Action', value: 'Balance' }, { name: 'Target', value: ids.coordinator }] }), 'Balance-Response')!.tags.Balance;
      const ledgers = sum(Object.values(state.deposits)) + sum(Object.values(state.earnings)) + sum(Object.values(state.stakes)) + sum(Object.values(state.tasks).flatMap((t) => [t.escrow, t.pot]));
      assert.equal(ledgers, BigInt(held));
      const balances = JSON.parse(replyOf(await ao.dryRun(ids.token, { tags: [{ name: 'Action', value: 'Balances' }] }), 'Balances-Response')!.data) as Record<string, string>;
      const supply = replyOf(await ao.dryRun(ids.token, { tags: [{ name: 'Action', value: 'Total-Supply' }] }), 'Total-Supply-Response')!.data;
      assert.equal(sum(Object.values(balances)), BigInt(supply));
      // Every final result's tokens were paid for by its requester and earned by each node that made
      // them (the asserter, and an auditing validator that agreed); the requesters got the slashes back.
      const all = [...tasks, await clients[0].task(first.task)];
      const paid = (t: TaskView): number => t.participants.filter((p) => p.role !== 'challenger' && p.traceRoot === t.receipt?.traceRoot).length;
      const generated = all.reduce((n, t) => n + t.usage.completion_tokens * paid(t), 0);
      assert.equal(sum(Object.values(state.earnings)), BigInt(generated));
      const spent = sum(users.map((u) => 1_000_000n - BigInt(state.deposits[walletAddress(u)] ?? '0')));
      assert.equal(spent, BigInt(generated) - BigInt(state.totals.slashed));

      // The killed node comes back on its folder and serves again.
      await startNode(nodeWallets[0], 0);
      const after = await clients[1].infer('The end', { maxTokens: 8, nodes: [victim] });
      assert.equal(after.receipt?.node, victim);
      // Nothing the crash interrupted is left hanging in its database: finished or released.
      const db = new Database(join(dir, 'node-0', 'node.sqlite'), { readonly: true });
      const stuck = db.prepare("SELECT task, status FROM tasks WHERE status IN ('running', 'submitting')").all();
      db.close();
      assert.deepEqual(stuck, []);
    } catch (e) {
      // A unit or node that died says why: its exit and the end of its stderr.
      const dead = started.filter((s) => s.child.exitCode !== null || s.child.signalCode !== null);
      for (const s of dead) (e as Error).message += `\n${s.child.spawnargs.slice(2, 4).join(' ')} exited (${s.child.exitCode ?? s.child.signalCode}): ${s.stderr().slice(-1500)}`;
      throw e;
    } finally {
      await Promise.all(started.map((s) => s.stop()));
    }
  }),
);
