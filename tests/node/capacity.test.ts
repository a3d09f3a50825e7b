// A node with Capacity 2 works two leases at once on its one loaded copy of the model, the runs
// interleaved position by position, and each result is the one the job gives alone (the audit's
// validator, running them one at a time, agrees; so does a solo run here).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { aoClient, expectReply, waitForMessage, type AoClient } from '../../src/ao/client.js';
import { startUnits } from '../../src/ao/units.js';
import { BUNDLED_MODEL } from '../../src/client/devnet.js';
import { Verity } from '../../src/client/sdk.js';
import { loadModel } from '../../src/engine/index.js';
import { complete, honest, startNode, type Assignment, type Behaviour, type RunningNode } from '../../src/node/index.js';
import { coordinatorExtensions, publishProcessModule } from '../../src/processes/index.js';
import type { TaskView } from '../../src/processes/protocol.js';
import { publishModel } from '../../src/store/models.js';
import { generateWallet, walletAddress, walletSigner } from '../../src/store/wallet.js';
import { withTempDir } from '../helpers.js';

const PARAMS: Record<string, string> = {
  'Min-Stake': '600', Slash: '600', 'Miss-Slash': '60', 'Challenge-Bond': '600', 'Round-Bond': '5', 'Audit-Ppm': '1000000',
  'Max-Tokens': '64', 'Lease-Ms': '20000', 'Reveal-Ms': '8000', 'Clock-Ms': '8000', 'Challenge-Window-Ms': '1000',
};

async function ask(ao: AoClient, process: string, tags: { name: string; value: string }[], action: string): Promise<Record<string, string>> {
  return expectReply(await ao.result(process, await ao.message(process, { tags })), action).tags;
}

test('Capacity 2: two leases worked at once on one model give their solo results', { timeout: 120_000 }, () =>
  withTempDir(async (dir) => {
    const units = await startUnits({ dir, extensions: coordinatorExtensions });
    const nodes: RunningNode[] = [];
    const logs: string[] = [];
    try {
      const owner = await generateWallet('ed25519');
      const ownerAo = aoClient({ ...units.urls, wallet: owner });
      const signer = walletSigner(owner);
      const authority = { name: 'Authority', value: units.messenger.address };
      const token = await ownerAo.spawn(await publishProcessModule(units.store, signer, 'token'), units.scheduler.address, { tags: [{ name: 'Name', value: 'Verity' }, { name: 'Ticker', value: 'VRT' }, authority] });
      const spawn = Object.entries(PARAMS).map(([name, value]) => ({ name, value }));
      const coordinator = await ownerAo.spawn(await publishProcessModule(units.store, signer, 'coordinator'), units.scheduler.address, { tags: [{ name: 'Token', value: token }, ...spawn, authority] });
      const model = loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer });
      const published = await publishModel(units.store, signer, model, BUNDLED_MODEL.name);
      await ask(ownerAo, coordinator, [{ name: 'Action', value: 'Register-Model' }, { name: 'Model', value: published.modelId }, { name: 'Manifest', value: published.manifestId }], 'Register-Model-Response');
      await ask(ownerAo, token, [{ name: 'Action', value: 'Mint' }, { name: 'Quantity', value: '100000000' }], 'Mint-Response');
      const fund = (address: string, amount: bigint) =>
        ask(ownerAo, token, [{ name: 'Action', value: 'Transfer' }, { name: 'Recipient', value: address }, { name: 'Quantity', value: amount.toString() }], 'Debit-Notice');
      const user = await generateWallet('ed25519');
      await fund(walletAddress(user), 1_000_000n);
      await Verity.connect({ ...units.urls, coordinator, token, wallet: user }).deposit(100_000n);
      const network = { mu: units.urls.mu, cu: units.urls.cu, coordinator, token };

      // The asserter holds its first lease until the second arrives, so that both runs are in
      // progress together (each yields to the event loop after every position).
      const claimed: { a: Assignment; root: string }[] = [];
      let arrived = 0;
      let bothArrived!: () => void;
      const together = new Promise<void>((resolve) => (bothArrived = resolve));
      const waitsForBoth: Behaviour = {
        ...honest,
        name: 'waits-for-both',
        async claim(m, a, ctx) {
          if (++arrived === 2) bothArrived();
          await Promise.race([together, new Promise((resolve) => setTimeout(resolve, 15_000).unref())]);
          const claim = await honest.claim(m, a, ctx);
          if (claim) claimed.push({ a, root: claim.root });
          return claim;
        },
      };
      const start = async (i: number, capacity: number, strategy?: Behaviour): Promise<RunningNode> => {
        const wallet = await generateWallet('ed25519');
        await fund(walletAddress(wallet), 10_000n);
        const node = await startNode({
          dir: join(dir, `node-${i}`), wallet, store: units.store, network, stake: 2_000n, heartbeatMs: 500, pollMs: 200, capacity, strategy,
          log: (line) => logs.push(line),
        });
        nodes.push(node);
        return node;
      };
      const asserter = await start(0, 2, waitsForBoth);
      await start(1, 1); // the validator: runs each job alone

      const userAo = aoClient({ ...units.urls, wallet: user });
      const from = await userAo.latest(coordinator);
      const infer = async (prompt: string, options: object): Promise<string> => {
        const id = await userAo.message(coordinator, {
          tags: [{ name: 'Action', value: 'Infer' }, { name: 'X-Options', value: JSON.stringify(options) }, { name: 'Nodes', value: asserter.address }],
          data: prompt,
        });
        expectReply(await userAo.result(coordinator, id), 'Infer-Accepted');
        return id;
      };
      const tasks = [await infer('Once upon a time', { max_tokens: 40, temperature: 0.8, seed: 7 }), await infer('The little dog', { max_tokens: 32, temperature: 1, seed: 3 })];
      const finals = await Promise.all(
        tasks.map((task) =>
          waitForMessage(userAo, coordinator, {
            from, target: walletAddress(user), action: 'Infer-Response', match: (t) => t.Task === task && (t.Status === 'final' || t.Status === 'failed'), timeoutMs: 60_000,
          }),
        ),
      );
      const show = (): string => logs.slice(-30).join('\n');
      for (const f of finals) {
        assert.equal(f.tags.Status, 'final', show());
        const view = JSON.parse(f.data) as TaskView;
        assert.equal(view.receipt?.node, asserter.address);
        assert.equal(view.audited, true);
        assert.equal(view.disputes.length, 0, 'the validator, running alone, agrees');
        assert.equal(new Set(view.participants.map((p) => p.traceRoot)).size, 1);
      }
      assert.equal(asserter.jobsAtOnce(), 2, 'both leases were worked at once');
      assert.equal(claimed.length, 2);
      const fresh = loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer });
      for (const { a, root } of claimed) assert.equal(root, complete(fresh, a).trace.root, `task ${a.task}: the interleaved run equals the solo one`);
    } finally {
      for (const n of nodes) await n.close();
      await units.close();
    }
  }),
);
