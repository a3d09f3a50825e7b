// A ring stage (pipeline/ring-stage.ts) under a malicious neighbour: messages that are validly signed
// by a node of the lease, but of the wrong kind for that node, or carrying layers or moves the run
// did not plan, are refused with an error report — never run, stored, or waited on.
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { EngineError, encode, loadModel, modelIdentity } from '../../src/engine/index.js';
import { describeJob, jobCommitment, type Job } from '../../src/proof/index.js';
import { CHANNEL_PROTOCOL, ChannelError, ChannelInbox, ChannelOutbox, f32Payload, framePayload, type PipelineLease } from '../../src/pipeline/channel.js';
import { createItem } from '../../src/store/items.js';
import { DIRECT_LINK } from '../../src/pipeline/link.js';
import type { RingControl, RingReport, RingStageData } from '../../src/pipeline/ring-stage.js';
import { startWireServer } from '../../src/pipeline/wire.js';
import { runPipelineLocal } from '../../src/pipeline/driver.js';
import { decodeHandover, encodeHandover, startStage, type LayerHandover, type StageRun } from '../../src/pipeline/stage.js';
import { stageSteps } from '../../src/pipeline/trace.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { stories260K, tok512 } from '../helpers.js';

const model = loadModel(stories260K, { tokenizer: tok512 });
const { dim } = model.config;
const job: Job = describeJob(modelIdentity(model), { prompt: encode(model.tokenizer, 'Once upon a time', true), steps: 40, sampling: { temperature: 0, topp: 0.9 }, seed: 1n });
const entry = fileURLToPath(new URL('../../src/pipeline/ring-stage.js', import.meta.url));

/** A ring message's payload: its moves header, then the body (the channel's framing). */
const header = (moves: unknown[], body: Uint8Array): Uint8Array => framePayload({ moves }, body);

/** What the stage under test did: a report, or an item it posted to a neighbour. */
type RingOut = RingReport | { kind: 'sent'; raw: Uint8Array } | { kind: 'refused'; status: number };

interface Harness {
  outboxes: ChannelOutbox[];
  /** Posts signed bytes to the stage under test, then waits for its first report of a run, a send or an error (or 3 s of silence). */
  deliver: (raw: Uint8Array) => Promise<RingOut | 'silence'>;
  close: () => Promise<void>;
}

/** Stage `index` of three (held layers 1..3 for the middle one), in its own process, as the ring starts it. */
async function harness(index: number, held: { first: number; end: number }, runs: { first: number; end: number }): Promise<Harness> {
  const wallets: Wallet[] = await Promise.all([0, 1, 2].map(() => generateWallet('ed25519')));
  const lease: PipelineLease = { task: 'T'.repeat(43), commitment: jobCommitment(job), leaseEnd: 1, nodes: wallets.map(walletAddress) };
  const child: ChildProcess = fork(entry, [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const queue: RingOut[] = [];
  let wake: (() => void) | null = null;
  const push = (m: RingOut): void => {
    queue.push(m);
    wake?.();
  };
  child.on('message', push);
  // Both neighbours, as one wire server: what the stage posts to them shows up as 'sent'.
  const peers = await startWireServer('127.0.0.1', 0, 1 << 24, (raw) => push({ kind: 'sent', raw }));
  const data: RingStageData = {
    index, count: 3, modelPath: stories260K, tokenizer: tok512, held, runs, wallet: wallets[index], lease, job,
    link: DIRECT_LINK, backLink: DIRECT_LINK, threads: 1, promptBatch: 32, slowdown: 1, maxPayload: 1 << 20,
  };
  child.send({ kind: 'init', data } satisfies RingControl);
  const nextOut = async (ms: number): Promise<RingOut | 'silence'> => {
    const until = Date.now() + ms;
    while (queue.length === 0) {
      const left = until - Date.now();
      if (left <= 0) return 'silence';
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, left);
      });
      wake = null;
    }
    return queue.shift()!;
  };
  const ready = await nextOut(30_000);
  assert.ok(ready !== 'silence' && ready.kind === 'ready', `the stage starts: ${JSON.stringify(ready)}`);
  const url = ready.url;
  child.send({ kind: 'peers', next: peers.url, prev: peers.url } satisfies RingControl);
  return {
    outboxes: wallets.map((w, i) => new ChannelOutbox(lease, i, walletSigner(w))),
    deliver: async (raw) => {
      // Straight to the stage's wire, as a neighbour posts.
      const posted = await fetch(url, { method: 'POST', body: raw });
      if (posted.status !== 200) return { kind: 'refused', status: posted.status };
      for (;;) {
        const r = await nextOut(3_000);
        if (r === 'silence' || r.kind === 'forward' || r.kind === 'sent' || r.kind === 'error' || r.kind === 'token') return r;
      }
    },
    close: async () => {
      child.kill('SIGKILL');
      await peers.close();
    },
  };
}

const x = (count: number): Uint8Array => f32Payload(new Float32Array(count * dim).fill(0.25));
const isError = (r: RingOut | 'silence', pattern: RegExp): boolean => r !== 'silence' && r.kind === 'error' && pattern.test(r.message);

test('residuals signed by a stage that is not the previous one are refused, not run', { timeout: 60_000 }, async () => {
  const h = await harness(1, { first: 2, end: 4 }, { first: 2, end: 4 });
  try {
    // Stage 2 (the next one) signs residuals of position 0 for stage 1.
    const r = await h.deliver(await h.outboxes[2].seal(1, 'activations', 0, 1, header([], x(1))));
    assert.ok(isError(r, /stage 2/), `refused: ${JSON.stringify(r)}`);
  } finally {
    await h.close();
  }
});

test('a token signed by a stage that does not sample is refused by the first stage', { timeout: 60_000 }, async () => {
  const h = await harness(0, { first: 0, end: 2 }, { first: 0, end: 2 });
  try {
    // The prompt's own first token, at position 0: all that is wrong is who signed it.
    const token = new Uint8Array(4);
    new DataView(token.buffer).setUint32(0, job.promptTokens[0], true);
    const r = await h.deliver(await h.outboxes[1].seal(0, 'token', 0, 1, header([], token)));
    assert.ok(isError(r, /stage 1/), `refused: ${JSON.stringify(r)}`);
  } finally {
    await h.close();
  }
});

test('layers handed over in band with no move that plans them are refused, not imported', { timeout: 60_000 }, async () => {
  // Stage 1 holds layer 1 (the overlap) but runs 2..3; stage 0 pushes layer 1 on it unasked.
  const h = await harness(1, { first: 1, end: 4 }, { first: 2, end: 4 });
  try {
    const given = encodeHandover({ layers: { first: 1, end: 2 }, positions: 0, keys: [new Float32Array(0)], values: [new Float32Array(0)], kvChains: ['00'.repeat(32)] });
    const body = new Uint8Array(given.length + 4 * dim);
    body.set(given);
    body.set(x(1), given.length);
    const r = await h.deliver(await h.outboxes[0].seal(1, 'activations', 0, 1, header([], body)));
    assert.ok(isError(r, /handover|hand/i), `refused: ${JSON.stringify(r)}`);
  } finally {
    await h.close();
  }
});

test('a handover message no move asks for is refused, not kept (no unbounded store)', { timeout: 60_000 }, async () => {
  const h = await harness(1, { first: 2, end: 5 }, { first: 2, end: 4 });
  try {
    const bytes = encodeHandover({ layers: { first: 4, end: 5 }, positions: 0, keys: [new Float32Array(0)], values: [new Float32Array(0)], kvChains: ['00'.repeat(32)] });
    const r = await h.deliver(await h.outboxes[2].seal(1, 'handover', 1000, 0, bytes));
    assert.ok(isError(r, /handover/i), `refused: ${JSON.stringify(r)}`);
  } finally {
    await h.close();
  }
});

test('moves out of range, malformed, or dated in the past are refused when they arrive (no wait for a handover that cannot come)', { timeout: 60_000 }, async () => {
  for (const move of [{ atPos: 1, boundary: 1, end: 9 }, { atPos: 1, boundary: 7, end: 3 }, { atPos: '1', boundary: 1, end: 4 }, { atPos: 0, boundary: 1, end: 3 }, { atPos: 1.5, boundary: 0, end: 3 }]) {
    const h = await harness(1, { first: 2, end: 4 }, { first: 2, end: 4 });
    try {
      const r = await h.deliver(await h.outboxes[0].seal(1, 'activations', 0, 1, header([move], x(1))));
      assert.ok(isError(r, /move/), `${JSON.stringify(move)} refused: ${JSON.stringify(r)}`);
    } finally {
      await h.close();
    }
  }
});

test('the harness itself: honest residuals from the previous stage run and go on', { timeout: 60_000 }, async () => {
  const h = await harness(1, { first: 2, end: 4 }, { first: 2, end: 4 });
  try {
    const r = await h.deliver(await h.outboxes[0].seal(1, 'activations', 0, 1, header([], x(1))));
    assert.ok(r !== 'silence' && r.kind === 'forward', `ran: ${JSON.stringify(r)}`);
  } finally {
    await h.close();
  }
});

test('the channel refuses a message with a tag given twice (the receiver and a judge could read different kinds or leases)', async () => {
  const wallets = await Promise.all([0, 1].map(() => generateWallet('ed25519')));
  const lease: PipelineLease = { task: 'T'.repeat(43), commitment: jobCommitment(job), leaseEnd: 1, nodes: wallets.map(walletAddress) };
  const base = [
    { name: 'Protocol', value: CHANNEL_PROTOCOL }, { name: 'Task', value: lease.task }, { name: 'Commitment', value: lease.commitment },
    { name: 'Lease-End', value: '1' }, { name: 'Kind', value: 'activations' }, { name: 'From-Stage', value: '0' }, { name: 'To-Stage', value: '1' },
    { name: 'Seq', value: '0' }, { name: 'Pos', value: '0' }, { name: 'Count', value: '1' },
  ];
  const inbox = new ChannelInbox(lease, 1, 1 << 16);
  for (const extra of [{ name: 'Kind', value: 'token' }, { name: 'Task', value: 'U'.repeat(43) }, { name: 'Commitment', value: '00'.repeat(32) }, { name: 'Protocol', value: 'x' }]) {
    const raw = (await createItem(new Uint8Array(4), walletSigner(wallets[0]), { tags: [...base, extra] })).raw;
    await assert.rejects(inbox.open(raw), (e: Error) => e instanceof ChannelError && /given twice/.test(e.message), extra.name);
  }
  // A message whose Pos is malformed does not use up its sequence number: the next, well-formed, message 0 opens.
  const bad = (await createItem(new Uint8Array(4), walletSigner(wallets[0]), { tags: base.map((t) => (t.name === 'Pos' ? { name: 'Pos', value: '01' } : t)) })).raw;
  await assert.rejects(inbox.open(bad), /Pos: not a whole number/);
  const m = await inbox.open((await createItem(new Uint8Array(4), walletSigner(wallets[0]), { tags: base })).raw);
  assert.equal(m.seq, 0);
});

test('stage ownership: layouts that overlap, leave a gap, change the stage count or go back in position are refused, not read first-match', () => {
  const L = model.config.nLayers;
  const ok = [{ from: 0, ranges: [{ first: 0, end: 2 }, { first: 2, end: L }] }];
  assert.equal(stageSteps(job, L, ok, 3).length, 2);
  const bad: { what: string; layouts: { from: number; ranges: { first: number; end: number }[] }[] }[] = [
    { what: 'overlap', layouts: [{ from: 0, ranges: [{ first: 0, end: 3 }, { first: 2, end: L }] }] },
    { what: 'gap', layouts: [{ from: 0, ranges: [{ first: 0, end: 2 }, { first: 3, end: L }] }] },
    { what: 'short', layouts: [{ from: 0, ranges: [{ first: 0, end: 2 }, { first: 2, end: L - 1 }] }] },
    { what: 'empty range', layouts: [{ from: 0, ranges: [{ first: 0, end: 0 }, { first: 0, end: L }] }] },
    { what: 'stage count', layouts: [ok[0], { from: 2, ranges: [{ first: 0, end: L }] }] },
    { what: 'back in position', layouts: [ok[0], { from: 2, ranges: [{ first: 0, end: 1 }, { first: 1, end: L }] }, { from: 1, ranges: [{ first: 0, end: 3 }, { first: 3, end: L }] }] },
  ];
  for (const { what, layouts } of bad) assert.throws(() => stageSteps(job, L, layouts, 3), (e: unknown) => e instanceof EngineError && /layout/.test((e as Error).message), what);
});

test('a handover whose K/V rows do not hash to its K/V chain is refused (the receiver would commit leaves it cannot justify)', () => {
  class Stop extends Error {}
  const stagesOf = (): StageRun[] => {
    const stages = [startStage(model, { layers: { first: 0, end: 2 }, embeds: true, samples: false }, job), startStage(model, { layers: { first: 2, end: model.config.nLayers }, embeds: false, samples: true }, job)];
    try {
      runPipelineLocal(stages, job, { promptBatch: 1, beforePosition: (pos) => { if (pos === 6) throw new Stop(); } });
    } catch (e) {
      if (!(e instanceof Stop)) throw e;
    }
    return stages;
  };
  const tamper: [string, (h: LayerHandover) => void][] = [
    ['chain', (h) => { h.kvChains[0] = '00'.repeat(32); }],
    ['a key row', (h) => { h.keys[0][3] += 1; }],
    ['a value row', (h) => { h.values[0][h.values[0].length - 1] = NaN; }],
  ];
  for (const [what, change] of tamper) {
    const [a, b] = stagesOf();
    const h = a.exportLayers({ first: 1, end: 2 });
    change(h);
    assert.throws(() => b.importLayers(h), (e: unknown) => e instanceof EngineError && /chain/.test((e as Error).message), what);
    a.close();
    b.close();
  }
  const [a, b] = stagesOf();
  b.importLayers(decodeHandover(encodeHandover(a.exportLayers({ first: 1, end: 2 })), model.config.kvDim));
  assert.deepEqual(b.layers, { first: 1, end: model.config.nLayers });
  a.close();
  b.close();
});

test('a message larger than any of this run could be is refused by its length before it is read (the ring\'s bound is only a ceiling)', { timeout: 60_000 }, async () => {
  const h = await harness(1, { first: 2, end: 4 }, { first: 2, end: 4 });
  try {
    const r = await h.deliver(await h.outboxes[0].seal(1, 'activations', 0, 1, header([], new Uint8Array(600_000))));
    assert.deepEqual(r, { kind: 'refused', status: 413 });
  } finally {
    await h.close();
  }
});
