// Nodes against the real coordinator on embedded units: the verification protocol end to end with
// real engines, honest and cheating (src/node/strategies.ts). Every test spawns its own network
// with exactly the nodes it needs, always audited (Audit-Ppm 1000000) unless it says otherwise,
// with short clocks, and follows the requester's Infer-Responses to the final one.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { expectReply, waitForMessage, type AoClient } from '../../src/ao/client.js';
import type { RunningUnits } from '../../src/ao/units.js';
import { BUNDLED_MODEL } from '../../src/client/devnet.js';
import { loadModel } from '../../src/engine/index.js';
import { honest, startNode, type Behaviour, type RunningNode, type StrategyName } from '../../src/node/index.js';
import type { TaskView } from '../../src/processes/protocol.js';
import { generateWallet, walletAddress, type Wallet } from '../../src/store/wallet.js';
import { startEconomy } from '../economy.js';
import { withTempDir } from '../helpers.js';

const PARAMS: Record<string, string> = {
  'Min-Stake': '600', Slash: '600', 'Miss-Slash': '60', 'Challenge-Bond': '600', 'Round-Bond': '5', 'Audit-Ppm': '1000000',
  'Max-Tokens': '64', 'Lease-Ms': '8000', 'Reveal-Ms': '8000', 'Clock-Ms': '8000', 'Challenge-Window-Ms': '4000',
};
const STAKE = 2_000n;

interface Net {
  units: RunningUnits;
  coordinator: string;
  token: string;
  model: string;
  user: Wallet;
  userAo: AoClient;
  nodes: RunningNode[];
  logs: string[];
  /** Starts one more node (funded like the others). */
  add(strategy: NodeSpec): Promise<RunningNode>;
  /** Stops a node (as a crash would, between two of its steps) and starts it again on its folder. */
  restart(node: RunningNode): Promise<RunningNode>;
}

type NodeSpec = StrategyName | { strategy?: StrategyName; behaviour?: Behaviour; watchPpm?: number; colludeDir?: string };

/** A network with one node per strategy (nodes[i] runs strategies[i]). */
async function network(dir: string, strategies: NodeSpec[], params: Record<string, string> = {}): Promise<Net> {
  const economy = await startEconomy(dir, { ...PARAMS, ...params });
  const { units, coordinator, token, network: net, user } = economy;
  const logs: string[] = [];
  const t0 = Date.now();
  const nodes: RunningNode[] = [];
  try {
    const published = await economy.register(loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer }), BUNDLED_MODEL.name);
    const fund = (w: Wallet, amount: bigint) => economy.fund(walletAddress(w), amount);
    const made = new Map<string, { wallet: Wallet; dir: string; spec: NodeSpec }>();
    const run = (wallet: Wallet, nodeDir: string, s: NodeSpec): Promise<RunningNode> => {
      const o = typeof s === 'string' ? { strategy: s } : s;
      return startNode({
        dir: nodeDir, wallet, store: units.store, network: net, stake: STAKE, heartbeatMs: 500, pollMs: 200,
        strategy: o.behaviour ?? o.strategy, strategyOptions: { colludeDir: o.colludeDir }, watchPpm: o.watchPpm, log: (line) => logs.push(`${Date.now() - t0} ${line}`),
      });
    };
    const add = async (s: NodeSpec): Promise<RunningNode> => {
      const wallet = await generateWallet('ed25519');
      await fund(wallet, 10_000n);
      const nodeDir = join(dir, `node-${made.size}`);
      const node = await run(wallet, nodeDir, s);
      made.set(node.address, { wallet, dir: nodeDir, spec: s });
      nodes.push(node);
      return node;
    };
    const restart = async (node: RunningNode): Promise<RunningNode> => {
      const { wallet, dir: nodeDir, spec } = made.get(node.address)!;
      await node.close();
      const again = await run(wallet, nodeDir, spec);
      nodes[nodes.indexOf(node)] = again;
      return again;
    };
    for (const s of strategies) await add(s);
    return { units, coordinator, token, model: published.modelId, user, userAo: economy.userAo, nodes, logs, add, restart };
  } catch (e) {
    for (const n of nodes) await n.close();
    await units.close();
    throw e;
  }
}

async function close(net: Net): Promise<void> {
  for (const n of net.nodes) await n.close();
  await net.units.close();
}

/** Sends Infer (asserters among `nodes`) and follows the requester's Infer-Responses to the final (or failed) one. */
async function infer(net: Net, prompt: string, options: object, asserters: RunningNode[], reaudit = false): Promise<{ tags: Record<string, string>; view: TaskView }> {
  const from = await net.userAo.latest(net.coordinator);
  const id = await net.userAo.message(net.coordinator, {
    tags: [
      { name: 'Action', value: 'Infer' }, { name: 'X-Options', value: JSON.stringify(options) }, { name: 'Nodes', value: asserters.map((n) => n.address).join(',') },
    ],
    data: prompt,
  });
  expectReply(await net.userAo.result(net.coordinator, id), 'Infer-Accepted');
  // After a dispute the surviving result is audited again by a node that took no part: start one then.
  let watching = reaudit;
  const reaudited = (async () => {
    while (watching) {
      const reply = await net.userAo.dryRun(net.coordinator, { tags: [{ name: 'Action', value: 'Task' }, { name: 'Task', value: id }] });
      const data = reply.Messages.find((m) => m.Tags.some((t) => t.name === 'Action' && t.value === 'Task-Response'))?.Data;
      const view = data ? (JSON.parse(data) as TaskView) : null;
      if (view && view.disputes.some((d) => d.outcome !== null)) {
        await net.add('honest');
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();
  const last = await waitForMessage(net.userAo, net.coordinator, {
    from, target: walletAddress(net.user), action: 'Infer-Response', match: (t) => t.Task === id && (t.Status === 'final' || t.Status === 'failed'), timeoutMs: 60_000,
  }).catch(async (e: Error) => {
    const view = await net.userAo.dryRun(net.coordinator, { tags: [{ name: 'Action', value: 'Task' }, { name: 'Task', value: id }] });
    throw new Error(`${e.message}\n${show(net)}\n${JSON.stringify(view.Messages[0]?.Data)}`);
  }).finally(() => {
    watching = false;
  });
  await reaudited;
  return { tags: last.tags, view: JSON.parse(last.data) as TaskView };
}

/** Waits until `ok()` holds (a node confirms its last message just after the coordinator acts on it). */
async function until(ok: () => boolean, what: () => string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(what());
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const OPTIONS = { max_tokens: 24, temperature: 0.8, seed: 7 };
const show = (net: Net): string => net.logs.slice(-40).join('\n');

test('honest asserter, honest validator: the result is final, both agree, both are paid', { timeout: 180_000 }, () =>
  withTempDir(async (dir) => {
    const net = await network(dir, ['honest', 'honest']);
    try {
      const { tags, view } = await infer(net, 'Once upon a time', OPTIONS, [net.nodes[0]]);
      assert.equal(tags.Status, 'final', show(net));
      assert.equal(view.audited, true);
      assert.equal(view.corrected, false);
      assert.equal(view.disputes.length, 0);
      assert.deepEqual(view.participants.map((p) => [p.node, p.role]), [[net.nodes[0].address, 'asserter'], [net.nodes[1].address, 'validator']]);
      assert.equal(new Set(view.participants.map((p) => p.traceRoot)).size, 1);
      assert.equal(view.receipt?.node, net.nodes[0].address);
      for (const n of net.nodes) await until(() => n.activity().committed === 1 && n.activity().reveals === 1, () => JSON.stringify(n.activity()));
    } finally {
      await close(net);
    }
  }),
);

for (const [cheat, where] of [['wrong-token', 'asserter'], ['skip', 'asserter'], ['cheap-model', 'asserter'], ['lazy', 'validator'], ['lying-validator', 'validator']] as const) {
  test(`${cheat} as the ${where} loses the dispute to an honest node; the final result is the honest one`, { timeout: 180_000 }, () =>
    withTempDir(async (dir) => {
      // The asserter is nodes[0] (the Nodes tag); the validator is the only other node.
      const net = await network(dir, where === 'asserter' ? [cheat, 'honest'] : ['honest', cheat]);
      try {
        const { tags, view } = await infer(net, 'Once upon a time', OPTIONS, [net.nodes[0]], true);
        assert.equal(tags.Status, 'final', show(net));
        const cheater = net.nodes[where === 'asserter' ? 0 : 1];
        const honestNode = net.nodes[where === 'asserter' ? 1 : 0];
        assert.equal(view.disputes.length >= 1, true, show(net));
        assert.equal(view.disputes[0].outcome?.winner, honestNode.address, JSON.stringify(view.disputes[0]));
        assert.equal(view.receipt?.node, honestNode.address);
        assert.equal(view.corrected, where === 'asserter');
        assert.equal(view.participants.find((p) => p.node === cheater.address)?.status, 'slashed');
        assert.ok(view.participants.filter((p) => p.node !== cheater.address).every((p) => p.traceRoot === view.receipt?.traceRoot), 'every other participant agrees with the result');
        await until(() => honestNode.activity().posts + honestNode.activity().openings > 0, () => JSON.stringify(honestNode.activity()));
        await until(() => cheater.activity().reveals === 1, () => JSON.stringify(cheater.activity()));
      } finally {
        await close(net);
      }
    }),
  );
}

test('offline-mid-task holds its lease and never submits: the lease expires and another node serves the task', { timeout: 180_000 }, () =>
  withTempDir(async (dir) => {
    const net = await network(dir, ['offline-mid-task', 'honest', 'honest'], { 'Lease-Ms': '3000' });
    try {
      const { tags, view } = await infer(net, 'Once upon a time', OPTIONS, [net.nodes[0], net.nodes[1]]);
      assert.equal(tags.Status, 'final', show(net));
      assert.notEqual(view.receipt?.node, net.nodes[0].address);
      const first = view.participants.find((p) => p.node === net.nodes[0].address);
      if (first) assert.equal(first.status, 'expired');
    } finally {
      await close(net);
    }
  }),
);

test('a colluding pair, asserter and its only possible validator, gets a wrong result through: audits need honest validators', { timeout: 180_000 }, () =>
  withTempDir(async (dir) => {
    const shared = join(dir, 'collude');
    const net = await network(dir, [{ strategy: 'colluding-pair', colludeDir: shared }, { strategy: 'colluding-pair', colludeDir: shared }]);
    try {
      const { tags, view } = await infer(net, 'Once upon a time', { ...OPTIONS, temperature: 0 }, [net.nodes[0]]);
      assert.equal(tags.Status, 'final', show(net));
      assert.equal(view.disputes.length, 0);
      assert.equal(new Set(view.participants.map((p) => p.traceRoot)).size, 1);
      assert.deepEqual(view.participants.map((p) => p.role), ['asserter', 'validator']);
    } finally {
      await close(net);
    }
  }),
);

test('watch mode: an unaudited wrong result is challenged in its window, the challenger wins, the result is corrected', { timeout: 180_000 }, () =>
  withTempDir(async (dir) => {
    // p = 0.1 (the smallest the economics allow with these numbers); the draw may audit it anyway.
    const net = await network(dir, ['wrong-token', { strategy: 'honest', watchPpm: 1_000_000 }], { 'Audit-Ppm': '100000', 'Challenge-Window-Ms': '20000', Slash: '1000', 'Min-Stake': '1000', 'Challenge-Bond': '1000' });
    try {
      const { tags, view } = await infer(net, 'Once upon a time', OPTIONS, [net.nodes[0]], true);
      assert.equal(tags.Status, 'final', show(net));
      assert.equal(view.receipt?.node, net.nodes[1].address, show(net));
      assert.equal(view.corrected, true);
      if (!view.audited) await until(() => net.nodes[1].activity().challenges === 1, () => JSON.stringify(net.nodes[1].activity()));
    } finally {
      await close(net);
    }
  }),
);

test('a node stopped after its commit and started again on its folder reveals from the claim it kept, without running the job again', { timeout: 180_000 }, () =>
  withTempDir(async (dir) => {
    // The validator takes its time, so the asserter is away when the reveal is asked.
    const slow: Behaviour = { ...honest, name: 'slow', claim: async (model, a, ctx) => (await new Promise((resolve) => setTimeout(resolve, 3000)), honest.claim(model, a, ctx)) };
    const net = await network(dir, ['honest', { behaviour: slow }], { 'Reveal-Ms': '20000' });
    try {
      const asserter = net.nodes[0];
      const answer = infer(net, 'Once upon a time', OPTIONS, [asserter]);
      await until(() => asserter.activity().committed === 1, () => show(net));
      const before = net.logs.length;
      const again = await net.restart(asserter);
      const { tags, view } = await answer;
      assert.equal(tags.Status, 'final', show(net));
      assert.equal(view.receipt?.node, again.address);
      await until(() => again.activity().reveals === 1, () => show(net));
      assert.equal(again.activity().committed, 0, 'nothing committed twice');
      assert.ok(!net.logs.slice(before).some((l) => /running its job again/.test(l)), show(net));
    } finally {
      await close(net);
    }
  }),
);
