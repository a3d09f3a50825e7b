// host.trace for a pipelined participant (docs/pipeline.md "Submitting and revealing"): the stored
// trace must come with every stage's signed record, each vouching for exactly the steps its stage
// ran. Over a real embedded store, with the records of three real network stages. The attacks:
// a record signed by another key, a stage's preimage changed (and re-signed by that stage), the
// last stage changing a leaf of another stage's (framing it), the first stage's tokens not the
// submitted ones, a record of another task, stages that do not split the layers.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Extensions } from '../../src/ao/runtime.js';
import { loadModel, modelIdentity, type LayerRange, type Model } from '../../src/engine/index.js';
import { traceItem } from '../../src/node/work.js';
import { stageRecordTags, startNetStage, type NetStage, type PipelineClaim, type StageRecord } from '../../src/pipeline/net-stage.js';
import { coordinatorExtensions, describeRequest } from '../../src/processes/host.js';
import { accumulators, jobCommitment, type Job } from '../../src/proof/index.js';
import { createItem, type Item } from '../../src/store/items.js';
import { publishModel } from '../../src/store/models.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { stories260K, tok512 } from '../helpers.js';

const RANGES: LayerRange[] = [{ first: 0, end: 2 }, { first: 2, end: 4 }, { first: 4, end: 5 }];
const TASK = 'P'.repeat(43);
const LEASE_END = 1_700_000_060_000;
const REQUEST = { prompt: 'Once upon a time', maxTokens: 20, temperature: 0.8, topP: 0.9, seed: '11' };

interface Fixture {
  dir: string;
  store: Store;
  ext: Extensions;
  ref: { model: string; manifest: string };
  job: Job;
  wallets: Wallet[];
  claim: PipelineClaim;
}
let fx: Fixture;

before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'verity-host-pipeline-'));
  const store = openSqliteStore(dir);
  const whole: Model = loadModel(stories260K, { tokenizer: tok512 });
  const { modelId, manifestId } = await publishModel(store, walletSigner(await generateWallet('ed25519')), whole, 'stories260K');
  const job = describeRequest({ ...modelIdentity(whole), tokenizer: whole.tokenizer, seqLen: whole.config.seqLen }, REQUEST);
  const wallets = await Promise.all(RANGES.map(() => generateWallet('ed25519')));
  const lease = { task: TASK, commitment: jobCommitment(job), leaseEnd: LEASE_END, nodes: wallets.map(walletAddress) };
  const stages: NetStage[] = [];
  for (let i = RANGES.length - 1; i >= 0; i--) {
    stages[i] = startNetStage({
      model: loadModel(stories260K, { tokenizer: tok512, layers: RANGES[i], embedding: i === 0, head: i === RANGES.length - 1 }),
      job, lease, index: i, ranges: RANGES, signer: walletSigner(wallets[i]), post: (to, raw) => setImmediate(() => stages[to].take(raw)),
    });
  }
  const claim = (await stages[2].done).claim!;
  fx = { dir, store, ext: coordinatorExtensions(store), ref: { model: modelId, manifest: manifestId }, job, wallets, claim };
});

after(async () => {
  await fx?.store.close();
  if (fx) rmSync(fx.dir, { recursive: true, force: true });
});

/** Stores the trace item (signed by the last stage) with these leaves and tokens, and the records. */
async function stored(leaves: string[], records: Item[], tokens = fx.claim.tokens): Promise<{ trace: string; root: string; records: string[] }> {
  const root = accumulators({ commitment: jobCommitment(fx.job), leaves }).at(-1)!;
  const doc = traceItem({ task: TASK, job: fx.job, commitment: jobCommitment(fx.job), root, tokens: [...fx.job.promptTokens.slice(1), ...tokens], leaves, rngs: fx.claim.rngs });
  const item = await createItem(doc.data, walletSigner(fx.wallets[2]), { tags: doc.tags });
  await fx.store.put(item.raw);
  for (const r of records) await fx.store.put(r.raw);
  return { trace: item.id, root, records: records.map((r) => r.id) };
}

/** host.trace for the pipelined participant; resolves to its answer or rejects with the host's message. */
async function check(s: { trace: string; root: string; records: string[] }, tokens = fx.claim.tokens, ranges = RANGES): Promise<string> {
  const stages = ranges.map((r, i) => ({ node: walletAddress(fx.wallets[i] ?? fx.wallets[2]), first: r.first, end: r.end, record: s.records[i] }));
  return fx.ext.trace(JSON.stringify({
    ...fx.ref, ...REQUEST, task: TASK, node: walletAddress(fx.wallets[2]), commitment: jobCommitment(fx.job), root: s.root, trace: s.trace, tokens, stages, leaseEnd: LEASE_END,
  })) as Promise<string>;
}

const recordOf = (item: Item): StageRecord => JSON.parse(Buffer.from(item.data).toString('utf8')) as StageRecord;
const signRecord = (r: StageRecord, wallet: Wallet): Promise<Item> => createItem(JSON.stringify(r), walletSigner(wallet), { tags: stageRecordTags(r, LEASE_END) });

test('the pipeline\'s trace with its three records checks', async () => {
  const s = await stored(fx.claim.leaves, fx.claim.records);
  assert.equal(JSON.parse(await check(s)).steps, fx.claim.leaves.length);
  assert.equal(s.root, fx.claim.root);
});

test('a record signed by another key, or of another task, is refused', async () => {
  const r1 = recordOf(fx.claim.records[1]);
  const stranger = await generateWallet('ed25519');
  const forged = await signRecord(r1, stranger);
  await assert.rejects(check(await stored(fx.claim.leaves, [fx.claim.records[0], forged, fx.claim.records[2]])), /stage 1's record is signed by/);
  const elsewhere = await signRecord({ ...r1, task: 'Q'.repeat(43) }, fx.wallets[1]);
  await assert.rejects(check(await stored(fx.claim.leaves, [fx.claim.records[0], elsewhere, fx.claim.records[2]])), /stage 1's record/);
});

test('a stage\'s record that is not the trace — the stage changed its preimage, or the last stage changed the stage\'s leaf — is refused', async () => {
  const r1 = recordOf(fx.claim.records[1]);
  const changed = structuredClone(r1);
  const at = changed.preimages.findIndex((p) => p.kind === 'layer');
  (changed.preimages[at] as { kvHash: string }).kvHash = 'ab'.repeat(32);
  const resigned = await signRecord(changed, fx.wallets[1]);
  await assert.rejects(check(await stored(fx.claim.leaves, [fx.claim.records[0], resigned, fx.claim.records[2]])), /stage 1's record: step \d+'s preimage is not the trace's leaf/);
  // The last stage frames stage 1: a leaf of one of stage 1's steps changed in the stored trace (and the root with it).
  const leaves = [...fx.claim.leaves];
  leaves[2] = 'cd'.repeat(32); // step 3: layer 2 at position 0, stage 1's
  await assert.rejects(check(await stored(leaves, fx.claim.records)), /stage 1's record: step 3's preimage is not the trace's leaf/);
});

test('the first stage\'s tokens must be the prompt and the submitted tokens; the stages must split the layers in order', async () => {
  const r0 = recordOf(fx.claim.records[0]);
  const last = r0.tokens!.length - 1;
  const lying = await signRecord({ ...r0, tokens: r0.tokens!.map((t, p) => (p === last ? t + 1 : t)) }, fx.wallets[0]);
  await assert.rejects(check(await stored(fx.claim.leaves, [lying, fx.claim.records[1], fx.claim.records[2]])), /first stage's record does not list the prompt and the submitted tokens/);
  const s = await stored(fx.claim.leaves, fx.claim.records);
  await assert.rejects(check(s, fx.claim.tokens, [{ first: 0, end: 2 }, { first: 3, end: 5 }]), /must split the 5 layers in order/);
  await assert.rejects(check({ ...s, records: s.records.slice(0, 2) }), /each with a record id|must split/);
});
