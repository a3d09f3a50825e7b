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
import { honest, type Behaviour } from '../../src/node/behaviour.js';
import { eventually, runCli, withTempDir } from '../helpers.js';

/**
 * stories260K needs 1,826,560 bytes: five layers of 312,832 (weights and K/V), an embedding of
 * 131,072 and a head of 131,328. 800,000 bytes hold two layers and an end: no node holds it,
 * no two do, three do.
 */
const MEMORY = 800_000;
const OPTIONS = { maxTokens: 24, temperature: 0, timeoutMs: 120_000 };


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

test('a middle stage that lies loses the dispute over the step it made; the other stages are paid; the answer is corrected', { timeout: 300_000 }, () =>
  withTempDir(async (dir) => {
    const net = join(dir, 'net');
    // The first three would lie as a middle stage, and the pipeline is drawn from them; the fourth
    // challenges; after the dispute the corrected answer is audited by a pipeline of the other three.
    const devnet = await devnetOf(net, ['wrong-stage', 'wrong-stage', 'wrong-stage', 'honest', 'honest', 'honest', 'honest'], { 'Challenge-Window-Ms': '60000' });
    try {
      const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
      const three = devnet.nodes.slice(0, 3).map((n) => n.address);
      const before = await Promise.all(devnet.nodes.map((n) => verity.balance(n.address)));
      const pending = await verity.infer('Once upon a time', { ...OPTIONS, wait: 'pending', nodes: three });
      const view = await eventually('the pipeline\'s reveal', async () => {
        const v = await verity.task(pending.task);
        return v.receipt ? v : null;
      });
      const p = pipelineOf(view)!;
      const middle = p.stages![1].node;
      const challenged = await runCli(['verify', pending.task, '--devnet', net, '--json', '--challenge', '--wallet', join(net, 'wallets', 'node-4.json'), '--wait-ms', '150000'], 200_000);
      const report = JSON.parse(challenged.stdout.toString()) as { verdict: string; challenge: { winner: string } };
      assert.equal(report.verdict, 'mismatch');
      assert.equal(report.challenge.winner, 'challenger', challenged.stderr.toString());
      const final = await eventually('the corrected answer', async () => {
        const v = await verity.task(pending.task).catch(() => null);
        return v && v.status === 'final' ? v : null;
      });
      assert.equal(final.corrected, true);
      const d = final.disputes[0];
      // The step the game narrowed to is the middle stage's last layer at position 1, opened by it.
      assert.equal(d.proof?.by, middle, 'the middle stage opened its own step');
      const pipeline = final.participants.find((x) => x.stages)!;
      assert.deepEqual(pipeline.stages!.map((st) => st.status), ['released', 'slashed', 'released']);
      const after = await Promise.all(devnet.nodes.map((n) => verity.balance(n.address)));
      const at = (address: string): number => devnet.nodes.findIndex((n) => n.address === address);
      const slash = 6000n;
      assert.equal(before[at(middle)].stake - after[at(middle)].stake, slash, 'the middle stage loses its lock');
      for (const st of [pipeline.stages![0], pipeline.stages![2]]) {
        const i = at(st.node);
        assert.equal(after[i].stake, before[i].stake, 'an honest stage keeps its stake');
        assert.ok(after[i].earnings > before[i].earnings, `stage [${st.first}, ${st.end}) is paid for its layers`);
      }
    } finally {
      await devnet.close();
    }
  }),
);

test('a stage that goes offline mid-job: its pipeline lease runs out, a new one is drawn without it, and the job completes with the same result', { timeout: 300_000 }, () =>
  withTempDir(async (dir) => {
    const net = join(dir, 'net');
    // The first node handed the middle stage goes offline as it starts (the node closes: no
    // stage, no heartbeat); the stages around it wait for it until the lease runs out.
    let vanished: string | null = null;
    let devnet: Devnet | null = null;
    const vanishing: Behaviour = {
      ...honest,
      name: 'vanishing',
      stage(a) {
        if (vanished === null && a.pipeline?.stage === 1) {
          vanished = a.pipeline.stages[1].node;
          const node = devnet!.nodes.find((n) => n.address === vanished)!;
          setImmediate(() => void node.close());
        }
        return {};
      },
    };
    devnet = await devnetOf(net, [vanishing, vanishing, vanishing, vanishing]);
    try {
      const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
      const answer = await verity.infer('Once upon a time', OPTIONS);
      assert.equal(answer.status, 'final');
      assert.ok(vanished, 'a middle stage went offline');
      const view = await verity.task(answer.task);
      const [expired, served] = [view.participants.find((x) => x.status === 'expired'), pipelineOf(view)];
      assert.ok(expired?.stages && served?.stages, 'an expired pipeline, then a served one');
      // Only the stage gone offline is held responsible; the others were let go (and one may serve again).
      assert.deepEqual(expired.stages.map((st) => (st.node === vanished ? 'expired' : 'released')), expired.stages.map((st) => st.status));
      assert.ok(!served.stages.some((st) => st.node === vanished), 'the new pipeline is drawn without the offline node');
      // The same result as a pipeline that never lost a stage: the single-node run's (verified locally).
      const single = await runCli(['verify', answer.task, '--devnet', net, '--json'], 120_000);
      assert.equal((JSON.parse(single.stdout.toString()) as { verdict: string }).verdict, 'match', single.stderr.toString());
    } finally {
      await devnet.close();
    }
  }),
);
