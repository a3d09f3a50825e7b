// The SDK in viem's style: a client and actions composed onto it, on one devnet — infer, the stream
// of a completion (text, then the receipt), a task watched to its end, a receipt verified here, and
// the declarations a TypeScript dApp compiles against through the package's exports.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { createVerityClient, getTask, http, infer, inferStream, verifyReceipt, verityActions, watchTask } from '../../src/client/actions.js';
import { startDevnet } from '../../src/client/devnet.js';
import { projectRoot, withTempDir } from '../helpers.js';

test('createVerityClient and its actions on a devnet: infer, inferStream, watchTask, verifyReceipt, extend', { timeout: 300_000 }, () =>
  withTempDir(async (dir) => {
    const devnet = await startDevnet({ dir: join(dir, 'net'), nodes: 2, log: () => {} });
    try {
      const { info } = devnet;
      const client = createVerityClient({ transport: http({ mu: info.mu, cu: info.cu, gateway: info.gateway }), coordinator: info.coordinator, token: info.token, account: devnet.user });
      const result = await infer(client, { prompt: 'Once upon a time', maxTokens: 16, temperature: 0, seed: 3 });
      assert.equal(result.status, 'final');
      assert.ok(result.receipt);

      // A finished task watched: one view, final, and the watch ends.
      const views = [];
      for await (const view of watchTask(client, { id: result.task, pollMs: 100 })) views.push(view);
      assert.equal(views.at(-1)?.status, 'final');

      // The stream: the text event (a node's claim) comes before the final result, which carries the receipt.
      const events = [];
      for await (const event of inferStream(client, { prompt: 'Once upon a time', maxTokens: 16, temperature: 0, seed: 3, reference: 'stream-1' })) events.push(event);
      const final = events.at(-1);
      assert.equal(final?.type, 'final');
      assert.ok(final?.type === 'final' && final.result.receipt);
      const text = events.find((e) => e.type === 'text');
      if (text?.type === 'text' && final?.type === 'final') assert.equal(text.text, final.result.text);
      assert.ok(events.findIndex((e) => e.type === 'text') < events.length - 1 || events.length === 1);

      // The receipt checked here: a bit-exact re-run gives its root.
      const report = await verifyReceipt(client, { task: result.task, text: result.text, receipt: result.receipt, cacheDir: join(dir, 'cache') });
      assert.equal(report.verdict, 'match', report.reasons.join('; '));
      assert.equal(report.traceRoot.local, result.receipt!.traceRoot);

      // Composed: the same actions as members.
      const verity = client.extend(verityActions);
      assert.equal((await verity.getTask({ id: result.task })).status, 'final');
      assert.equal((await getTask(client, { id: result.task })).task, result.task);
      assert.equal(verity.address, client.address);
    } finally {
      await devnet.close();
    }
  }),
);

test('a TypeScript dApp compiles against the shipped declarations (package exports "verity/sdk" with types)', { timeout: 120_000 }, () =>
  withTempDir((dir) => {
    mkdirSync(join(dir, 'node_modules'));
    symlinkSync(projectRoot, join(dir, 'node_modules', 'verity'), 'dir');
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
    writeFileSync(join(dir, 'app.ts'), `
import { createVerityClient, http, infer, VerityError, type Wallet } from 'verity/sdk';
declare const wallet: Wallet;
const client = createVerityClient({ transport: http({ mu: 'http://127.0.0.1:1', cu: 'http://127.0.0.1:2' }), coordinator: 'c', account: wallet });
export async function ask(): Promise<string> {
  try {
    const { text, receipt } = await infer(client, { prompt: 'hi', maxTokens: 8 });
    return text + (receipt?.traceRoot ?? '');
  } catch (e) {
    if (e instanceof VerityError) return e.message;
    throw e;
  }
}
`);
    const tsc = join(projectRoot, 'node_modules', 'typescript', 'bin', 'tsc');
    execFileSync(process.execPath, [tsc, '--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--skipLibCheck', '--types', 'node', '--typeRoots', join(projectRoot, 'node_modules', '@types'), 'app.ts'], { cwd: dir, encoding: 'utf8', timeout: 100_000 });
  }),
);
