// A pipelined lease's stages as the network runs them (src/pipeline/net-stage.ts), wired to each
// other in-process: the last stage's claim is the single-node trace (root, leaves, tokens, RNG
// states); every stage's record is signed by its node and checks; a stage's opening of its own
// step, from a re-run on what it was sent, checks against the agreed accumulator; a sender whose
// residuals are not the ones its leaf commits to, a record that is not what the messages said, and
// a stranger's item stop the run with the reason.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadModel, modelIdentity, encode, type LayerRange, type Model } from '../../src/engine/index.js';
import { accAt, buildOpening, checkOpening, createReferee, describeJob, jobCommitment, leafHash, modelWeightSource, recordTrace, schedule, type Job } from '../../src/proof/index.js';
import { ChannelError, framePayload, sealMessage, unframePayload, type PipelineLease } from '../../src/pipeline/channel.js';
import { readStageRecord, stageOpening, startNetStage, type NetStage, type NetStageSpec, type StageRecord } from '../../src/pipeline/net-stage.js';
import { verifyItem } from '../../src/store/items.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { stories260K, tok512 } from '../helpers.js';

const RANGES: LayerRange[] = [{ first: 0, end: 2 }, { first: 2, end: 4 }, { first: 4, end: 5 }];

interface Wired {
  stages: NetStage[];
  specs: NetStageSpec[];
  lease: PipelineLease;
  wallets: Wallet[];
}

async function wire(job: Job, extra: (i: number) => Partial<NetStageSpec> = () => ({}), post?: (from: number, to: number, raw: Uint8Array, deliver: () => void) => void): Promise<Wired> {
  const wallets: Wallet[] = await Promise.all(RANGES.map(() => generateWallet('ed25519')));
  const lease: PipelineLease = { task: 'T'.repeat(43), commitment: jobCommitment(job), leaseEnd: 1_000, nodes: wallets.map(walletAddress) };
  const stages: NetStage[] = [];
  const specs: NetStageSpec[] = RANGES.map((r, i) => ({
    model: loadModel(stories260K, { tokenizer: tok512, layers: r, embedding: i === 0, head: i === RANGES.length - 1 }),
    job, lease, index: i, ranges: RANGES, signer: walletSigner(wallets[i]), promptBatch: 4,
    post: (to, raw) => {
      const deliver = (): void => void stages[to].take(raw);
      if (post) post(i, to, raw, deliver);
      else setImmediate(deliver);
    },
    ...extra(i),
  }));
  // The first stage starts at once: the others must be there to take its first message.
  for (let i = RANGES.length - 1; i >= 0; i--) stages[i] = startNetStage(specs[i]);
  return { stages, specs, lease, wallets };
}

const jobFor = (model: Model, prompt: string, steps: number, temperature: number, seed = 7n): Job =>
  describeJob(modelIdentity(model), { prompt: encode(model.tokenizer, prompt, true), steps, sampling: { temperature, topp: 0.9 }, seed });

test('three network stages make the single-node trace; every record is signed and checks; a stage opens its own steps', { timeout: 60_000 }, async () => {
  const whole = loadModel(stories260K, { tokenizer: tok512 });
  for (const temperature of [0, 0.8]) {
    const job = jobFor(whole, 'Once upon a time', 40, temperature);
    const want = recordTrace(whole, job);
    const { stages, specs, lease } = await wire(job);
    const results = await Promise.all(stages.map((s) => s.done));
    const claim = results[2].claim!;
    assert.equal(claim.root, want.root, `T=${temperature}: root`);
    assert.deepEqual(claim.leaves, want.leaves);
    assert.deepEqual(claim.tokens, want.tokens.slice(job.promptTokens.length - 1).filter((t) => t !== 1));
    assert.deepEqual(claim.rngs, want.preimages.flatMap((p) => (p.kind === 'head' ? [p.rng] : [])));
    assert.equal(claim.records.length, 3);
    const records: StageRecord[] = claim.records.map((item, i) => readStageRecord(item, lease, i, RANGES[i]));
    results.forEach((r, i) => assert.equal(claim.records[i].id, r.record.id, `stage ${i}'s record is the one it signed`));
    assert.deepEqual(records[0].tokens, [...job.promptTokens, ...claim.tokens].slice(0, claim.positions));

    // Openings by the owner of the step, for a step of each stage (the first layer of the middle
    // stage reads the residual it was sent).
    const sched = schedule(job, whole.config.nLayers);
    const stepOf = (pos: number, layer: number | 'head'): number => sched.index(layer === 'head' ? { kind: 'head', pos } : { kind: 'layer', pos, layer });
    for (const [owner, step] of [[0, stepOf(9, 0)], [0, stepOf(9, 1)], [1, stepOf(9, 2)], [1, stepOf(12, 3)], [2, stepOf(12, 4)], [2, stepOf(12, 'head')]] as const) {
      const o = stageOpening(specs[owner], stages[owner].replay(), claim.leaves, records, step);
      assert.doesNotThrow(() => checkOpening(job, whole.config, accAt(want, step - 1), o), `stage ${owner}'s opening of step ${step}`);
      const ref = recordTrace(whole, job, { keepOutputs: true });
      const honest = buildOpening(ref, step, whole.config);
      assert.deepEqual(o, honest, `stage ${owner}'s opening of step ${step} is the single-node one`);
    }
    assert.throws(() => stageOpening(specs[1], stages[1].replay(), claim.leaves, records, stepOf(9, 0)), ChannelError, 'a step of another stage');
  }
});

test('a run that stops early (BOS): every stage can open the first end step, as the single node does', { timeout: 60_000 }, async () => {
  const whole = loadModel(stories260K, { tokenizer: tok512 });
  // Seed 1 samples BOS at position 230 of 300 (found by running it).
  const job = jobFor(whole, 'Once upon a time', 300, 0.8, 1n);
  const want = recordTrace(whole, job, { keepOutputs: true });
  const { stages, specs, lease } = await wire(job);
  const results = await Promise.all(stages.map((st) => st.done));
  const claim = results[2].claim!;
  assert.equal(claim.root, want.root);
  assert.ok(claim.positions < job.steps, `the run stopped early (${claim.positions} of ${job.steps} positions)`);
  const records = claim.records.map((item, i) => readStageRecord(item, lease, i, RANGES[i]));
  const firstEnd = want.leaves.findIndex((l, i) => l === leafHash({ kind: 'end', step: i + 1 })) + 1;
  const referee = createReferee(modelWeightSource(whole));
  for (const owner of [0, 1, 2]) {
    const o = stageOpening(specs[owner], stages[owner].replay(), claim.leaves, records, firstEnd);
    assert.doesNotThrow(() => checkOpening(job, whole.config, accAt(want, firstEnd - 1), o), `stage ${owner}'s opening of end step ${firstEnd}`);
    // The referee finds the end leaf from it: the single-node acc after the step.
    assert.equal(referee.resolve(job, accAt(want, firstEnd - 1), o).acc, accAt(want, firstEnd));
  }
});

test('altered and strangers\' items are dropped and the run goes on; residuals a lease node signs against its own leaf stop the stage; a consistent liar\'s trace differs first at its own last layer', { timeout: 60_000 }, async () => {
  const whole = loadModel(stories260K, { tokenizer: tok512 });
  const job = jobFor(whole, 'Once upon a time', 24, 0);
  // Anyone may post to a stage: an item altered on the way (its signature breaks) and a stranger's
  // item are dropped, and the run goes on with the real ones.
  {
    const stranger = await generateWallet('ed25519');
    const junkLease: PipelineLease = { task: 'T'.repeat(43), commitment: jobCommitment(job), leaseEnd: 1_000, nodes: [] };
    const flood = await Promise.all(Array.from({ length: 300 }, (_, k) => sealMessage(junkLease, walletSigner(stranger), { kind: 'activations', from: 1, to: 2, seq: k, pos: 0, count: 1, payload: framePayload({ pre: [] }) })));
    const { stages } = await wire(job, () => ({}), (from, to, raw, deliver) => {
      if (from === 1 && to === 2) {
        const bad = new Uint8Array(raw);
        bad[bad.length - 1] ^= 1;
        stages[to].take(bad);
        // A flood of a stranger's items, ahead of the real one: dropped by their signer, unchecked.
        for (const junk of flood) stages[to].take(junk);
      }
      setTimeout(deliver, 2);
    });
    const claim = (await stages[2].done).claim!;
    assert.equal(claim.root, recordTrace(whole, job).root);
    assert.ok(stages[2].dropped > 300, 'the altered item and the stranger\'s flood were dropped');
  }
  // A lease node that signs residuals other than the ones its leaf commits to stops the stage it sent them to.
  {
    let forged = false;
    const w: { current?: Wired } = {};
    const { stages } = (w.current = await wire(job, () => ({}), (from, to, raw, deliver) => {
      if (from !== 0 || to !== 1 || forged) return void setImmediate(deliver);
      forged = true;
      void (async () => {
        const item = await verifyItem(raw);
        const { header, body } = unframePayload<{ pre: unknown }>(item.data, 1 << 20);
        const x = new Uint8Array(body);
        x[0] ^= 1;
        const count = Number(item.tags.find((t) => t.name === 'Count')!.value);
        w.current!.stages[1].take(await sealMessage(w.current!.lease, walletSigner(w.current!.wallets[0]), { kind: 'activations', from: 0, to: 1, seq: 0, pos: 0, count, payload: framePayload(header, x) }));
      })();
    }));
    await assert.rejects(stages[1].done, /not the ones stage 0's leaf commits to/);
  }
  // A cheat that alters the residuals it sends and its own leaf (a consistent liar): the run goes
  // through, and the trace differs from the honest one first at that stage's last layer.
  {
    const { stages } = await wire(job, (i) => (i === 1 ? { corrupt: { pos: 10 } } : {}));
    const claim = (await stages[2].done).claim!;
    const want = recordTrace(whole, job);
    const first = claim.leaves.findIndex((l, i) => l !== want.leaves[i]) + 1;
    const sched = schedule(job, whole.config.nLayers);
    assert.deepEqual(sched.at(first), { kind: 'layer', pos: 10, layer: 3 });
  }
});
