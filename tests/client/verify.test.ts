// verity verify: the first differing leaf (pure), then one devnet with a wrong-token node — an
// honest task verifies, the liar's task is a mismatch at the replaced token's head step, a receipt
// file works like a task id, a tampered receipt is a mismatch, and --challenge wins the dispute.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DEVNET_STAKE, startDevnet } from '../../src/client/devnet.js';
import { Verity, type TaskView, type VerityClient } from '../../src/client/sdk.js';
import { describeStepName, firstDifferingStep, nameStep } from '../../src/client/verify.js';
import { loadModel } from '../../src/engine/index.js';
import { describeJob, recordTrace, schedule, type Job } from '../../src/proof/index.js';
import { walletAddress, readWallet } from '../../src/store/wallet.js';
import { runCli, stories260K, tok512, withTempDir } from '../helpers.js';

test('firstDifferingStep: the first step whose leaves differ, 1-based; a shorter list differs where it ends', () => {
  assert.equal(firstDifferingStep(['a', 'b', 'c'], ['a', 'b', 'c']), null);
  assert.equal(firstDifferingStep(['a', 'b', 'c'], ['a', 'x', 'y']), 2);
  assert.equal(firstDifferingStep(['x', 'b'], ['a', 'b']), 1);
  assert.equal(firstDifferingStep(['a', 'b'], ['a', 'b', 'c']), 3);
  assert.equal(firstDifferingStep([], []), null);
});

test('nameStep: a step as the schedule names it (layer, head at a position)', () => {
  const model = loadModel(stories260K, { tokenizer: tok512 });
  const L = model.config.nLayers;
  const job: Job = describeJob({ modelId: '00'.repeat(32), tokenizerHash: '00'.repeat(32) }, { prompt: [1, 400, 500], steps: 6, sampling: { temperature: 0, topp: 0.9 }, seed: 0n });
  // Positions 0 and 1 have layer steps only; position 2 is the first with a head step.
  assert.deepEqual(nameStep(job, L, 1), { step: 1, kind: 'layer', pos: 0, layer: 0 });
  assert.deepEqual(nameStep(job, L, 2 * L + L + 1), { step: 3 * L + 1, kind: 'head', pos: 2 });
  const last = schedule(job, L).steps;
  assert.deepEqual(nameStep(job, L, last), { step: last, kind: 'head', pos: 5 });
  assert.equal(nameStep(job, L, last, 'end').kind, 'end');
  assert.equal(describeStepName(nameStep(job, L, 2)), 'step 2 (layer 1 at position 0)');
});

test('verity verify: a malformed command line or a target that is neither a file nor a task id cannot be checked (exit 2, not 1)', async () => {
  assert.equal((await runCli(['verify', '--bogus', 'x'])).code, 2);
  assert.equal((await runCli(['verify'])).code, 2);
  const neither = await runCli(['verify', 'not-a-task', '--devnet', '/nonexistent-devnet', '--json']);
  assert.equal(neither.code, 2);
  assert.equal((JSON.parse(neither.stdout.toString()) as { verdict: string }).verdict, 'cannot-check');
  assert.equal((await runCli(['verify', '--help'])).code, 0);
});

const PROMPT = 'Once upon a time';
const MAX_TOKENS = 32;

/** The task once its result is revealed (it has a receipt). */
async function revealed(verity: VerityClient, task: string): Promise<TaskView> {
  for (let i = 0; i < 600; i++) {
    const view = await verity.task(task);
    if (view.receipt) return view;
    if (view.status === 'failed') throw new Error(`task ${task} failed`);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`task ${task} has no receipt`);
}

test('verity verify on a devnet: match, mismatch at the wrong token, receipt files, tampering, --challenge', { timeout: 400_000 }, () =>
  withTempDir(async (dir) => {
    const net = join(dir, 'net');
    const devnet = await startDevnet({
      dir: net,
      nodes: 3,
      // Unaudited, with a window long enough to check and challenge in.
      params: { 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0', 'Challenge-Window-Ms': '90000' },
      strategies: [{ strategy: 'wrong-token' }],
      heartbeatMs: 500,
      log: () => {},
    });
    try {
      const liar = devnet.nodes[0].address;
      const honestNode = devnet.nodes[1].address;
      const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
      const options = { maxTokens: MAX_TOKENS, temperature: 0, wait: 'pending' as const, timeoutMs: 120_000 };

      // An honest task: match, by id and from a receipt file.
      const honest = await verity.infer(PROMPT, { ...options, nodes: [honestNode] });
      const honestView = await revealed(verity, honest.task);
      const byId = await runCli(['verify', honest.task, '--devnet', net], 120_000);
      assert.equal(byId.code, 0, byId.stderr);
      assert.equal(byId.stdout.toString(), 'match\n');
      assert.match(byId.stderr, /verify: re-running the job/);
      const file = join(dir, 'answer.json');
      const answer = { task: honest.task, text: honestView.result, status: honestView.status, usage: honestView.usage, receipt: honestView.receipt };
      writeFileSync(file, JSON.stringify(answer));
      const byFile = await runCli(['verify', file, '--devnet', net, '--json'], 120_000);
      assert.equal(byFile.code, 0, byFile.stderr);
      const fileReport = JSON.parse(byFile.stdout.toString()) as { verdict: string; firstDifference: unknown; text: { match: boolean }; commitmentChecked: boolean };
      assert.equal(fileReport.verdict, 'match');
      assert.equal(fileReport.commitmentChecked, true);
      assert.equal(fileReport.firstDifference, null);
      assert.equal(fileReport.text.match, true);

      // A tampered receipt (another trace root) is a mismatch.
      const tampered = join(dir, 'tampered.json');
      writeFileSync(tampered, JSON.stringify({ ...answer, receipt: { ...answer.receipt!, traceRoot: 'ab'.repeat(32) } }));
      const bad = await runCli(['verify', tampered, '--devnet', net, '--json'], 120_000);
      assert.equal(bad.code, 1, bad.stderr);
      const badReport = JSON.parse(bad.stdout.toString()) as { verdict: string; reasons: string[] };
      assert.equal(badReport.verdict, 'mismatch');
      assert.ok(badReport.reasons.some((r) => /root/.test(r)), badReport.reasons.join('; '));
      // A receipt for another job than the coordinator's (commitment changed) is a mismatch too.
      const otherJob = join(dir, 'other-job.json');
      writeFileSync(otherJob, JSON.stringify({ ...answer, receipt: { ...answer.receipt!, commitment: 'cd'.repeat(32) } }));
      const other = await runCli(['verify', otherJob, '--devnet', net, '--json'], 120_000);
      assert.equal(other.code, 1, other.stderr);
      assert.ok((JSON.parse(other.stdout.toString()) as { reasons: string[] }).reasons.some((r) => /coordinator's/.test(r)));

      // Cannot check: a task id nobody knows.
      const unknown = await runCli(['verify', 'A'.repeat(43), '--devnet', net, '--json'], 60_000);
      assert.equal(unknown.code, 2, unknown.stderr);
      assert.equal((JSON.parse(unknown.stdout.toString()) as { verdict: string }).verdict, 'cannot-check');

      // The liar's task: a mismatch first at the head step of the last sampled token.
      const lie = await verity.infer(PROMPT, { ...options, nodes: [liar] });
      const lieView = await revealed(verity, lie.task);
      assert.equal(lieView.receipt!.node, liar);
      const item = await devnet.units.store.get(lieView.receipt!.trace);
      const job = (JSON.parse(item!.data.toString('utf8')) as { job: Job }).job;
      const model = loadModel(stories260K, { tokenizer: tok512 });
      const truth = recordTrace(model, job);
      let lastHead = -1;
      truth.preimages.forEach((p, i) => {
        if (p.kind === 'head') lastHead = i + 1;
      });
      const checked = await runCli(['verify', lie.task, '--devnet', net, '--json'], 120_000);
      assert.equal(checked.code, 1, checked.stderr);
      const report = JSON.parse(checked.stdout.toString()) as { verdict: string; firstDifference: { step: number; kind: string; pos: number; stored: string; local: string }; text: { match: boolean } };
      assert.equal(report.verdict, 'mismatch');
      assert.equal(report.firstDifference.step, lastHead);
      assert.equal(report.firstDifference.kind, 'head');
      assert.equal(report.firstDifference.pos, schedule(job, model.config.nLayers).at(lastHead).pos);
      assert.equal(report.firstDifference.local, truth.leaves[lastHead - 1]);
      assert.notEqual(report.firstDifference.stored, report.firstDifference.local);
      assert.equal(report.text.match, false);
      const human = await runCli(['verify', lie.task, '--devnet', net], 120_000);
      assert.equal(human.code, 1);
      assert.equal(human.stdout.toString(), 'mismatch\n');
      assert.match(human.stderr, new RegExp(`first difference: step ${lastHead} \\(head at position \\d+\\)`));

      // --challenge, as an honest staked node: the dispute goes against the liar.
      const challengerWallet = join(net, 'wallets', 'node-3.json');
      const challenger = walletAddress(readWallet(challengerWallet));
      const challenged = await runCli(['verify', lie.task, '--devnet', net, '--json', '--challenge', '--wallet', challengerWallet, '--wait-ms', '120000'], 180_000);
      assert.equal(challenged.code, 1, challenged.stderr);
      const c = (JSON.parse(challenged.stdout.toString()) as { challenge: { opened: boolean; winner: string; refused?: unknown } }).challenge;
      assert.equal(c.opened, true, JSON.stringify(c.refused));
      assert.equal(c.winner, 'challenger', challenged.stderr);
      const after = await verity.task(lie.task);
      const d = after.disputes.at(-1)!;
      assert.equal(d.asserter, liar);
      assert.equal(d.challenger, challenger);
      assert.equal(d.outcome!.winner, challenger);
      assert.equal(after.corrected, true);
      assert.notEqual(after.receipt!.node, liar);
      const balance = await verity.balance(liar);
      assert.ok(balance.stake < DEVNET_STAKE, `the liar was slashed: stake ${balance.stake}`);
      // The corrected result verifies.
      const fixed = await runCli(['verify', lie.task, '--devnet', net], 120_000);
      assert.equal(fixed.code, 0, fixed.stderr);
    } finally {
      await devnet.close();
    }
  }),
);
