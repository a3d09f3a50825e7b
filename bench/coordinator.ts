// npm run bench:coordinator — does the coordinator slow down with the work it has served? It serves
// BENCH_TASKS tasks (default 10,000) through the real QuickJS runtime and the real host
// extensions over a real store (each: Infer, the node's commit, the audit draw, the reveal of a
// real signed trace item checked by host.trace, final after the window), then times a new `Infer`
// against the time one takes on a fresh coordinator. The peer here is the coordinator itself when
// fresh: the ratio printed is served / fresh.
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadModel } from '../src/engine/index.js';
import { complete, traceDocument, type Assignment } from '../src/node/index.js';
import { resultCommitment, type State } from '../src/processes/coordinator.js';
import { coordinatorExtensions } from '../src/processes/host.js';
import { createItem } from '../src/store/items.js';
import { publishModel } from '../src/store/models.js';
import { openSqliteStore } from '../src/store/sqlite-store.js';
import { generateWallet, walletAddress, walletDid, walletSigner } from '../src/store/wallet.js';
import { stories260K, tok512 } from '../tests/helpers.js';
import { openProcess, processSource, tagOf, type OpenProcess } from '../tests/processes/harness.js';

const TASKS = Number(process.env.BENCH_TASKS ?? 10_000);
const SAMPLES = 30;
const id43 = (text: string): string => createHash('sha256').update(text).digest('base64url');
const TOKEN = id43('bench token');
const MU = id43('bench mu');
const OWNER = id43('bench owner');
const REQUESTER = id43('bench requester');
// Audit-Ppm 0 with Compute-Cost 0 satisfies the rule and keeps each task to one node's work; the
// window of 0 ms makes it final on the next message.
const SPAWN = { Token: TOKEN, 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0', 'Challenge-Window-Ms': '0', 'Lease-Ms': '600000', 'Reveal-Ms': '600000' };

const dir = mkdtempSync(join(tmpdir(), 'verity-bench-coordinator-'));
const store = openSqliteStore(dir);
try {
  const model = loadModel(stories260K, { tokenizer: tok512 });
  const { modelId, manifestId } = await publishModel(store, walletSigner(await generateWallet('ed25519')), model, 'stories260K');
  const ext = coordinatorExtensions(store);
  const source = await processSource('coordinator');
  const node = await generateWallet('ed25519');
  const address = walletAddress(node);

  async function network(): Promise<{ p: OpenProcess; send: (from: string, tags: Record<string, string>, data?: string, owner?: string) => Promise<{ ms: number; messages: { Target: string; Tags: { name: string; value: string }[]; Data?: string }[] }> }> {
    const p = await openProcess(source, { owner: OWNER, tags: SPAWN, extensions: ext });
    if (p.boot.Error) throw new Error(p.boot.Error);
    const send = async (from: string, tags: Record<string, string>, data?: string, owner?: string) => {
      const t0 = performance.now();
      const r = await p.send({ from, tags, data, ...(owner ? { owner } : {}) });
      const ms = performance.now() - t0;
      if (r.Error) throw new Error(r.Error);
      return { ms, messages: r.Messages };
    };
    await send(OWNER, { Action: 'Register-Model', Model: modelId, Manifest: manifestId });
    await send(TOKEN, { Action: 'Credit-Notice', Sender: address, Quantity: '100000', 'X-Action': 'Stake' }, undefined, MU);
    await send(address, { Action: 'Register-Node', DID: walletDid(node), Models: modelId, Capacity: '64' });
    await send(TOKEN, { Action: 'Credit-Notice', Sender: REQUESTER, Quantity: String(10 * TASKS + 10 * SAMPLES + 1000), 'X-Action': 'Deposit' }, undefined, MU);
    return { p, send };
  }

  const options = { max_tokens: 4, temperature: 0 };
  const infer = (net: Awaited<ReturnType<typeof network>>) => net.send(REQUESTER, { Action: 'Infer', 'X-Options': JSON.stringify(options) }, 'Once upon a time');

  /** The median time of a new Infer, each followed by its whole task (untimed). */
  async function inferTimes(net: Awaited<ReturnType<typeof network>>, count: number, serve: (assigned: Assignment) => Promise<void>): Promise<number> {
    const times: number[] = [];
    for (let i = 0; i < count; i++) {
      const r = await infer(net);
      times.push(r.ms);
      const assigned = r.messages.find((m) => tagOf(m, 'Action') === 'Task-Assigned')!;
      await serve(JSON.parse(assigned.Data!) as Assignment);
    }
    times.sort((a, b) => a - b);
    return times[Math.floor(times.length / 2)];
  }

  let done: ReturnType<typeof complete> | null = null;
  const serveOn = (net: Awaited<ReturnType<typeof network>>) => async (a: Assignment): Promise<void> => {
    done ??= complete(model, a);
    const tokens = JSON.stringify({ tokens: done.tokens });
    await net.send(address, { Action: 'Submit-Result', Task: a.task, 'Job-Commitment': a.commitment, 'Result-Commitment': resultCommitment(a.task, address, done.trace.root), Tokens: String(done.tokens.length) }, tokens);
    await net.send(address, { Action: 'Heartbeat' }); // draws the audit: none
    const doc = traceDocument(a.task, done);
    const item = await createItem(doc.data, walletSigner(node), { tags: doc.tags });
    await store.put(item.raw);
    const reveal = await net.send(address, { Action: 'Reveal', Task: a.task, 'Trace-Root': done.trace.root, Trace: item.id });
    if (tagOf(reveal.messages[0], 'Action') !== 'Reveal-Response') throw new Error(`reveal refused: ${JSON.stringify(reveal.messages[0])}`);
  };

  const fresh = await network();
  const freshMs = await inferTimes(fresh, SAMPLES, serveOn(fresh));
  const freshState = JSON.stringify(fresh.p.state()).length;

  const served = await network();
  const t0 = performance.now();
  for (let i = 0; i < TASKS; i++) {
    const r = await infer(served);
    await serveOn(served)(JSON.parse(r.messages.find((m) => tagOf(m, 'Action') === 'Task-Assigned')!.Data!) as Assignment);
    if ((i + 1) % 1000 === 0) process.stderr.write(`served ${i + 1}/${TASKS} tasks (${((performance.now() - t0) / 1000).toFixed(0)} s)\n`);
  }
  const state = served.p.state() as State;
  const servedMs = await inferTimes(served, SAMPLES, serveOn(served));
  const servedState = JSON.stringify(state).length;
  process.stdout.write(
    `coordinator after ${state.totals.final} final tasks: new Infer median ${servedMs.toFixed(2)} ms vs ${freshMs.toFixed(2)} ms fresh ` +
      `(ratio ${(servedMs / freshMs).toFixed(2)}); live state ${servedState} bytes vs ${freshState} fresh\n`,
  );
} finally {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}
