// Pipelines on the network (issue 16; docs/pipeline.md "Pipelines on the network"): a devnet whose
// nodes each declare too little memory for the model, so that the coordinator leases it to
// pipelines of stages that talk to each other over their own /pipe. The pipelined answer's trace
// root is the single-node run's; a middle stage that lies loses the dispute over the step it made
// and the other stages are paid; a stage that goes offline mid-job has its lease drawn again and
// the job completes with the same result.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { startDevnet, type Devnet } from '../../src/client/devnet.js';
import { Verity, type TaskView, type VerityClient } from '../../src/client/sdk.js';
import { type Behaviour } from '../../src/node/behaviour.js';
import { runCli, withTempDir } from '../helpers.js';

/**
 * stories260K needs 1,826,560 bytes: five layers of 312,832 (weights and K/V), an embedding of
 * 131,072 and a head of 131,328. 800,000 bytes hold two layers and an end: no node holds it,
 * no two do, three do.
 */
const MEMORY = 800_000;
const OPTIONS = { maxTokens: 24, temperature: 0, timeoutMs: 120_000 };

async function until<T>(what: string, read: () => Promise<T | null | undefined>, ms = 120_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const pipelineOf = (view: TaskView) => view.participants.find((p) => p.stages && p.status === 'revealed');

async function earnings(verity: VerityClient, address: string): Promise<bigint> {
  return BigInt((await verity.balance(address)).earnings);
}

async function devnetOf(dir: string, strategies: (Behaviour | string)[], params: Record<string, string> = {}): Promise<Devnet> {
  return startDevnet({
    dir,
    nodes: strategies.length,
    streams: true,
    heartbeatMs: 500,
    leaseMs: 8_000,
    params: { 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0', 'Challenge-Window-Ms': '3000', ...params },
    strategies: strategies.map((strategy) => ({ strategy, memory: MEMORY })),
    log: () => {},
  });
}

test('a model no node can hold is served by a 3-stage pipeline; its trace root is the single-node run\'s; the pay is split by layers', { timeout: 240_000 }, () =>
  withTempDir(async (dir) => {
    const devnet = await devnetOf(join(dir, 'net'), ['honest', 'honest', 'honest']);
    try {
      const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
      const before = await Promise.all(devnet.nodes.map((n) => earnings(verity, n.address)));
      const answer = await verity.infer('Once upon a time', OPTIONS);
      assert.equal(answer.status, 'final');
      const view = await verity.task(answer.task);
      const p = pipelineOf(view)!;
      assert.ok(p, 'the result is a pipeline\'s');
      // Three stages split the five layers in order (optimalPlacement: each within 800,000 bytes).
      assert.equal(p.stages!.length, 3);
      p.stages!.forEach((st, i) => assert.ok(st.first === (i === 0 ? 0 : p.stages![i - 1].end) && st.end > st.first, `stage ${i}: [${st.first}, ${st.end})`));
      assert.equal(p.stages![2].end, 5);
      assert.equal(new Set(p.stages!.map((st) => st.node)).size, 3);
      // The same job on one machine, with the whole model: the same root, the same text.
      // (verity verify runs it with the whole model and compares the roots).
      const single = await runCli(['verify', answer.task, '--devnet', join(dir, 'net'), '--json'], 120_000);
      const report = JSON.parse(single.stdout.toString()) as { verdict: string; traceRoot: { receipt: string; local: string | null } };
      assert.equal(report.verdict, 'match', single.stderr.toString());
      assert.equal(report.traceRoot.local, p.traceRoot);
      assert.equal(view.receipt!.traceRoot, p.traceRoot);
      // Pay: price (1) × tokens in all, split by layers served; the last stage takes the rest of the division.
      const after = await Promise.all(devnet.nodes.map((n) => earnings(verity, n.address)));
      const paid = Object.fromEntries(devnet.nodes.map((n, i) => [n.address, after[i] - before[i]]));
      const tokens = BigInt(view.tokens!.length);
      const shares = p.stages!.map((st) => paid[st.node]);
      assert.equal(shares.reduce((x, y) => x + y, 0n), tokens, 'price × tokens in all');
      p.stages!.slice(0, 2).forEach((st, i) => assert.equal(shares[i], (tokens * BigInt(st.end - st.first)) / 5n, `stage ${i}'s share`));
    } finally {
      await devnet.close();
    }
  }),
);
