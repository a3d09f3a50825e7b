// The whole network end to end on the embedded devnet, driven as a user drives it: `verity devnet`
// in one process, `verity infer`, `verity task`, `verity run` and `verity trace` as commands.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Receipt } from '../../src/client/sdk.js';
import { verifyReceipt } from '../../src/client/verify.js';
import { openGatewayStore } from '../../src/store/gateway-store.js';
import { verifyItem } from '../../src/store/items.js';
import { runCli, serveCli, stories260K, tok512, withTempDir } from '../helpers.js';

const PROMPT = 'Once upon a time';

test('verity infer on the devnet gives verity run\'s text and a receipt whose trace root is verity trace\'s; a restart resumes', { timeout: 180_000 }, () =>
  withTempDir(async (dir) => {
    let devnet = await serveCli(['devnet', '--dir', join(dir, 'net')], 60_000);
    try {
      const infer = await runCli(['infer', PROMPT, '--temperature', '0', '--max-tokens', '150', '--devnet', join(dir, 'net'), '--json']);
      assert.equal(infer.code, 0, infer.stderr);
      const r = JSON.parse(infer.stdout.toString()) as { task: string; text: string; status: string; usage: { prompt_tokens: number; completion_tokens: number }; receipt: Record<string, string> };
      assert.equal(r.status, 'final');
      assert.equal(r.usage.completion_tokens, 150);

      // The same model and prompt, run here: -n counts the prompt's tokens too.
      const n = String(r.usage.prompt_tokens + 150);
      const run = await runCli(['run', stories260K, '-z', tok512, '-t', '0', '-n', n, '-i', PROMPT]);
      assert.equal(run.stdout.toString(), `${PROMPT}${r.text}\n`);
      const out = join(dir, 'trace.json');
      const trace = await runCli(['trace', stories260K, '-z', tok512, '-t', '0', '-n', n, '-i', PROMPT, '--out', out]);
      assert.equal(trace.code, 0, trace.stderr);
      const local = JSON.parse(readFileSync(out, 'utf8')) as { root: string; commitment: string };
      assert.equal(r.receipt.traceRoot, local.root);
      assert.equal(r.receipt.commitment, local.commitment);
      assert.equal(r.receipt.model, devnet.info.model);

      // The node stored the full trace; anyone can fetch it from the gateway and check it.
      const raw = new Uint8Array(await (await fetch(`${devnet.info.gateway}/raw/${r.receipt.trace}`)).arrayBuffer());
      const item = await verifyItem(raw);
      const stored = JSON.parse(item.data.toString('utf8')) as { root: string; leaves: string[] };
      assert.equal(stored.root, local.root);
      assert.equal(stored.leaves.length, (JSON.parse(readFileSync(out, 'utf8')) as { steps: number }).steps);

      // Anyone can check the answer from the store alone; a changed text or root does not pass.
      const store = openGatewayStore(devnet.info.gateway);
      const request = { prompt: PROMPT, maxTokens: 150, temperature: 0 };
      const receipt = r.receipt as unknown as Receipt;
      assert.equal((await verifyReceipt(store, { receipt, text: r.text }, request, join(dir, 'verify'))).traceRoot, local.root);
      await assert.rejects(verifyReceipt(store, { receipt, text: `${r.text}!` }, request, join(dir, 'verify')), /the text is not what the job generates/);
      await assert.rejects(verifyReceipt(store, { receipt: { ...receipt, traceRoot: 'a'.repeat(64) }, text: r.text }, request, join(dir, 'verify')), /not the one the receipt names/);
      await assert.rejects(verifyReceipt(store, { receipt, text: r.text }, { ...request, maxTokens: 149 }, join(dir, 'verify')), /another job/);

      const task = await runCli(['task', r.task, '--devnet', join(dir, 'net'), '--json']);
      assert.equal(task.code, 0, task.stderr);
      const view = JSON.parse(task.stdout.toString()) as { status: string; receipt: unknown; result: string };
      assert.equal(view.status, 'final');
      assert.deepEqual(view.receipt, r.receipt);
      assert.equal(view.result, r.text);

      // Bad requests: one line, exit 1, nothing charged.
      for (const [args, message] of [
        [['--model', 'f'.repeat(64)], /Infer-Response: model f+ is not registered/],
        [['--max-tokens', '510'], /exceeds the model's context of 512/],
        [['--temperature', '5'], /temperature must be in \[0, 2\]/],
      ] as const) {
        const bad = await runCli(['infer', PROMPT, '--devnet', join(dir, 'net'), ...args]);
        assert.equal(bad.code, 1, bad.stderr);
        assert.match(bad.stderr, message);
        assert.equal(bad.stderr.trim().split('\n').length, 1);
      }

      // A clean stop, then the same folder resumes the same network.
      await devnet.stop('SIGTERM');
      assert.equal(devnet.child.exitCode, 0);
      const before = devnet.info;
      devnet = await serveCli(['devnet', '--dir', join(dir, 'net')], 60_000);
      assert.equal(devnet.info.coordinator, before.coordinator);
      assert.equal(devnet.info.token, before.token);
      const again = await runCli(['infer', 'The dog', '--max-tokens', '20', '--devnet', join(dir, 'net'), '--json']);
      assert.equal(again.code, 0, again.stderr);
      assert.equal((JSON.parse(again.stdout.toString()) as { status: string }).status, 'final');
    } finally {
      await devnet.stop();
    }
  }),
);
