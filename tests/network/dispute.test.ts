// A lying node on the embedded devnet, every result audited: its wrong token is found by the
// dispute game played through the coordinator's messages, the step is re-executed inside the
// coordinator's evaluation (host.step), the liar is slashed and the requester gets the corrected
// answer — which is exactly what `verity run` prints. `verity task` shows every round.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { DEVNET_STAKE, startDevnet } from '../../src/client/devnet.js';
import { Verity } from '../../src/client/sdk.js';
import { runCli, stories260K, tok512, withTempDir } from '../helpers.js';

const PROMPT = 'Once upon a time';
const MAX_TOKENS = 256;

test('devnet, Audit-Ppm 1000000: a wrong-token asserter loses the dispute, is slashed, and the requester gets the corrected answer', { timeout: 240_000 }, () =>
  withTempDir(async (dir) => {
    const devnet = await startDevnet({
      dir: join(dir, 'net'),
      nodes: 3,
      params: { 'Audit-Ppm': '1000000' },
      strategies: [{ strategy: 'wrong-token' }],
      heartbeatMs: 500,
      log: () => {},
    });
    try {
      const liar = devnet.nodes[0].address;
      const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
      // Naming the liar makes it the asserter; validators are drawn from every node all the same.
      const started = Date.now();
      const r = await verity.infer(PROMPT, { maxTokens: MAX_TOKENS, temperature: 0, nodes: [liar], timeoutMs: 180_000 });
      const tookMs = Date.now() - started;
      assert.equal(r.status, 'final');
      assert.equal(r.corrected, true, 'the answer was corrected');
      assert.notEqual(r.receipt!.node, liar);

      // The corrected text is the honest one.
      const run = await runCli(['run', stories260K, '-z', tok512, '-t', '0', '-n', String(r.usage.prompt_tokens + MAX_TOKENS), '-i', PROMPT]);
      assert.equal(run.stdout.toString(), `${PROMPT}${r.text}\n`);

      const task = await verity.task(r.task);
      assert.equal(task.disputes.length, 1);
      const d = task.disputes[0];
      assert.equal(d.asserter, liar);
      assert.equal(d.outcome!.winner, d.challenger);
      assert.equal(d.outcome!.reason, 'proof');
      assert.equal(d.proof!.kind, 'head');
      assert.ok(d.rounds.length >= 2, `${d.rounds.length} rounds over ${d.steps} steps`);
      const disputeMs = d.endedAt! - d.openedAt;
      assert.ok(disputeMs < 60_000, `the dispute took ${disputeMs} ms`);
      process.stderr.write(`dispute over ${d.steps} steps: ${d.rounds.length} rounds, ${disputeMs} ms; request to final ${tookMs} ms\n`);

      const balance = await verity.balance(liar);
      assert.ok(balance.stake < DEVNET_STAKE, `the liar was slashed: stake ${balance.stake}`);
      assert.equal(balance.earnings, 0n);

      // What a user sees.
      const shown = await runCli(['task', r.task, '--devnet', join(dir, 'net')]);
      assert.equal(shown.code, 0, shown.stderr);
      assert.match(shown.stderr, /dispute 1: .* vs .*, \d+ steps/);
      assert.match(shown.stderr, /round 1: \[0, \d+\]/);
      assert.match(shown.stderr, /one-step proof: step \d+ \(head\)/);
      assert.match(shown.stderr, /slashed/);
    } finally {
      await devnet.close();
    }
  }),
);
