// A node with Capacity 2 works two leases at once on its one loaded copy of the model, the runs
// interleaved position by position, and each result is the one the job gives alone (the audit's
// validator, running them one at a time, agrees; so does a solo run here).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { expectReply, waitForMessage } from '../../src/ao/client.js';
import { BUNDLED_MODEL } from '../../src/client/devnet.js';
import { loadModel } from '../../src/engine/index.js';
import { complete, honest, type Assignment, type Behaviour, type RunningNode } from '../../src/node/index.js';
import type { TaskView } from '../../src/processes/protocol.js';
import { walletAddress } from '../../src/store/wallet.js';
import { startEconomy } from '../economy.js';
import { withTempDir } from '../helpers.js';

const PARAMS: Record<string, string> = {
  'Min-Stake': '600', Slash: '600', 'Miss-Slash': '60', 'Challenge-Bond': '600', 'Round-Bond': '5', 'Audit-Ppm': '1000000',
  'Max-Tokens': '64', 'Lease-Ms': '20000', 'Reveal-Ms': '8000', 'Clock-Ms': '8000', 'Challenge-Window-Ms': '1000',
};

test('Capacity 2: two leases worked at once on one model give their solo results', { timeout: 120_000 }, () =>
  withTempDir(async (dir) => {
    const economy = await startEconomy(dir, PARAMS);
    const nodes: RunningNode[] = [];
    const logs: string[] = [];
    try {
      await economy.register(loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer }), BUNDLED_MODEL.name);
      const { coordinator, user } = economy;

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
      const start = async (capacity: number, strategy?: Behaviour): Promise<RunningNode> => {
        const node = await economy.startFundedNode(dir, { capacity, strategy, log: (line) => logs.push(line) });
        nodes.push(node);
        return node;
      };
      const asserter = await start(2, waitsForBoth);
      await start(1); // the validator: runs each job alone

      const { userAo } = economy;
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
      await economy.units.close();
    }
  }),
);
