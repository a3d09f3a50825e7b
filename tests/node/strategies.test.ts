// The node's decisions without a network: the honest behaviour and each cheating strategy's claim,
// posts and openings on the real stories260K model, the result commitment, and every claimed trace
// document through the coordinator's own trace check (host.trace) and referee (host.step).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Extensions } from '../../src/ao/runtime.js';
import { loadModel, modelIdentity, type Model } from '../../src/engine/index.js';
import {
  claimLeaves, claimedValues, honest, resultCommitment, strategy, StrategyError,
  type Behaviour, type BehaviourContext, type Claim,
} from '../../src/node/index.js';
import type { Assignment } from '../../src/node/work.js';
import { coordinatorExtensions, describeRequest, type JobInput, type ModelRef, type StepInfo } from '../../src/processes/host.js';
import type { Participant, TaskView } from '../../src/processes/protocol.js';
import {
  BOS, accAt, accumulators, checkOpening, decodeOpening, encodeOpening, jobCommitment, leafHash, recordTrace, schedule, traceStart,
  type Job, type Opening,
} from '../../src/proof/index.js';
import { createItem } from '../../src/store/items.js';
import { publishModel } from '../../src/store/models.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { stories260K, tok512 } from '../helpers.js';

const load = (): Model => loadModel(stories260K, { tokenizer: tok512 });
const model = load();
const identity = modelIdentity(model);
const id43 = (text: string): string => createHash('sha256').update(text).digest('base64url');

/** A request as the coordinator passes it to its host extensions, less the model. */
type Request = Omit<JobInput, keyof ModelRef>;
/** Sampled, and every position runs (no BOS before max_tokens). */
const SHORT: Request = { prompt: 'Once upon a time', maxTokens: 40, temperature: 0.8, topP: 0.9, seed: '42' };

function lease(r: Request, task = id43(JSON.stringify(r))): { a: Assignment; job: Job } {
  const job = describeRequest({ ...identity, tokenizer: model.tokenizer, seqLen: model.config.seqLen }, r);
  const a: Assignment = {
    task, model: identity.modelId, prompt: r.prompt, options: { max_tokens: r.maxTokens, temperature: r.temperature, top_p: r.topP, seed: r.seed },
    commitment: jobCommitment(job), steps: job.steps, leaseEnd: 0,
  };
  return { a, job };
}

/** A context whose coordinator shows the task with these participants (and the pending tokens). */
function context(address: string, participants: Participant[] = [], tokens: number[] | null = null): BehaviourContext & { lines: string[] } {
  const lines: string[] = [];
  return {
    address,
    engine: {},
    lines,
    view: async (task) => ({ task, participants, tokens } as unknown as TaskView),
    copyOf: () => load(),
    log: (line) => lines.push(line),
  };
}

const participant = (node: string, role: Participant['role'], status: Participant['status'], extra: Partial<Participant> = {}): Participant => ({
  node, role, status, start: 0, end: 0, locked: '0', ...extra,
});

interface Fixture {
  dir: string;
  store: Store;
  modelId: string;
  manifestId: string;
  ext: Extensions;
  wallet: Wallet;
}
let fx: Fixture;

before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'verity-node-'));
  const store = openSqliteStore(join(dir, 'store'));
  const { modelId, manifestId } = await publishModel(store, walletSigner(await generateWallet('ed25519')), model, 'stories260K');
  fx = { dir, store, modelId, manifestId, ext: coordinatorExtensions(store), wallet: await generateWallet('ed25519') };
});

after(async () => {
  await fx?.store.close();
  if (fx) rmSync(fx.dir, { recursive: true, force: true });
});

/** The reveal as the node makes it: the claim's document signed by the node and stored; then host.trace on it. */
async function coordinatorChecks(r: Request, a: Assignment, claim: Claim, wallet = fx.wallet): Promise<{ steps: number }> {
  const item = await createItem(claim.document.data, walletSigner(wallet), { tags: claim.document.tags });
  await fx.store.put(item.raw);
  const input = {
    model: fx.modelId, manifest: fx.manifestId, ...r, task: a.task, node: walletAddress(wallet), commitment: claim.commitment, root: claim.root, trace: item.id, tokens: claim.tokens,
  };
  return JSON.parse(await fx.ext.trace(JSON.stringify(input))) as { steps: number };
}

/** The coordinator's referee on an opening the behaviour sent for step s (agreed = acc[s − 1] of its claim). */
async function referee(r: Request, claim: Claim, opening: Opening): Promise<StepInfo> {
  const accs = accumulators({ commitment: claim.commitment, leaves: claimLeaves(claim) });
  const text = JSON.stringify(encodeOpening(opening));
  return JSON.parse(await fx.ext.step(JSON.stringify({ model: fx.modelId, manifest: fx.manifestId, ...r, agreed: accs[opening.step - 1], step: opening.step, opening: text }))) as StepInfo;
}

const firstDifference = (x: string[], y: string[]): number => x.findIndex((leaf, i) => leaf !== y[i]) + 1;

test('the result commitment is sha256 of verity-result/1, task, node and root, one per line', () => {
  const root = 'ab'.repeat(32);
  const expected = createHash('sha256').update(`verity-result/1\nT\nN\n${root}`).digest('hex');
  assert.equal(resultCommitment('T', 'N', root), expected);
  assert.match(expected, /^[0-9a-f]{64}$/);
  assert.notEqual(resultCommitment('T2', 'N', root), expected);
  assert.notEqual(resultCommitment('T', 'N2', root), expected);
  assert.notEqual(resultCommitment('T', 'N', 'cd'.repeat(32)), expected);
});

test('honest: claims the engine\'s trace, posts its accumulators, opens steps that check and that the referee confirms', async () => {
  const { a, job } = lease(SHORT);
  const ctx = context('me');
  const claim = (await honest.claim(model, a, ctx))!;
  const truth = recordTrace(model, job);
  assert.equal(claim.root, truth.root);
  assert.equal(claim.commitment, a.commitment);
  assert.deepEqual(claimLeaves(claim), truth.leaves);
  assert.equal(claim.tokens.length, SHORT.maxTokens);
  assert.equal((await coordinatorChecks(SHORT, a, claim)).steps, truth.leaves.length);

  const accs = accumulators(truth);
  const points = [0, 5, 77, truth.leaves.length];
  assert.deepEqual(honest.post(a, claim, points, ctx), points.map((p) => accs[p]));
  assert.equal(claimedValues(claim, [truth.leaves.length + 1]), null);
  assert.ok(honest.reveal(a, claim, ctx));

  const sched = schedule(job, model.config.nLayers);
  for (const s of [1, sched.index({ kind: 'layer', pos: 6, layer: 2 }), sched.index({ kind: 'head', pos: job.promptTokens.length + 3 }), truth.leaves.length]) {
    const opening = (await honest.open(model, a, claim, s, ctx))!;
    assert.ok(opening, `step ${s} opens`);
    // Through JSON as the message carries it, then checked as the coordinator checks it.
    checkOpening(job, model.config, accAt(truth, s - 1), decodeOpening(JSON.parse(JSON.stringify(encodeOpening(opening)))));
    const out = await referee(SHORT, claim, opening);
    assert.equal(out.leaf, truth.leaves[s - 1]);
    assert.equal(out.acc, accs[s]);
  }
});

test('wrong-token: one sampled token changed, a real run of that lie: differs from the honest trace at exactly that head step, passes the trace check, loses at the referee', async () => {
  const { a, job } = lease(SHORT);
  const ctx = context('me');
  const liar = strategy('wrong-token');
  const claim = (await liar.claim(model, a, ctx))!;
  const truth = recordTrace(model, job);
  const leaves = claimLeaves(claim);
  assert.notEqual(claim.root, truth.root);
  const s = firstDifference(leaves, truth.leaves);
  assert.equal(truth.preimages[s - 1].kind, 'head');
  // The run went the full length and the changed token was the last one: nothing else differs.
  assert.equal(leaves.filter((leaf, i) => leaf !== truth.leaves[i]).length, 1);
  const honestTokens = truth.tokens.slice(job.promptTokens.length - 1);
  assert.deepEqual(claim.tokens.slice(0, -1), honestTokens.slice(0, -1));
  assert.notEqual(claim.tokens.at(-1), honestTokens.at(-1));
  assert.notEqual(claim.tokens.at(-1), BOS);
  assert.equal(leaves.reduce((acc, leaf) => createHash('sha256').update(Buffer.from(acc, 'hex')).update(Buffer.from(leaf, 'hex')).digest('hex'), traceStart(claim.commitment)), claim.root);
  await coordinatorChecks(SHORT, a, claim);

  // It defends its own trace: posts its accumulators, opens the disputed step from a re-run of the lie.
  const own = accumulators({ commitment: claim.commitment, leaves });
  assert.deepEqual(liar.post(a, claim, [s - 1, s], ctx), [own[s - 1], own[s]]);
  assert.equal(own[s - 1], accumulators(truth)[s - 1], 'agreed before the lie');
  const opening = (await liar.open(model, a, claim, s, ctx))!;
  assert.ok(opening);
  const out = await referee(SHORT, claim, opening);
  assert.equal(out.leaf, truth.leaves[s - 1], 'the referee computes the honest leaf');
  assert.notEqual(out.leaf, leaves[s - 1]);
});

test('cheap-model: a second copy with one layer\'s weights scaled; the claim is a consistent run of it, the referee sides with the true weights', async () => {
  const { a, job } = lease(SHORT);
  const ctx = context('me');
  const cheat = strategy('cheap-model', { layer: 2 });
  const claim = (await cheat.claim(model, a, ctx))!;
  const truth = recordTrace(model, job);
  assert.notEqual(claim.root, truth.root);
  assert.equal(recordTrace(model, job).root, truth.root, 'the node\'s own copy of the model is untouched');
  const leaves = claimLeaves(claim);
  const s = firstDifference(leaves, truth.leaves);
  assert.deepEqual(schedule(job, model.config.nLayers).at(s), { kind: 'layer', pos: 0, layer: 2 });
  await coordinatorChecks(SHORT, a, claim);
  const opening = (await cheat.open(model, a, claim, s, ctx))!;
  assert.ok(opening, 'it can open its own run');
  assert.equal((await referee(SHORT, claim, opening)).leaf, truth.leaves[s - 1]);
});

test('skip: random tokens, a fabricated trace that chains to its root and passes the trace check; it cannot open a step', async () => {
  const { a, job } = lease(SHORT);
  const ctx = context('me');
  const cheat = strategy('skip');
  const claim = (await cheat.claim(model, a, ctx))!;
  const truth = recordTrace(model, job);
  assert.equal(claim.tokens.length, SHORT.maxTokens);
  assert.ok(claim.tokens.every((t) => t >= 3 && t < model.config.vocabSize));
  assert.notEqual(claim.root, truth.root);
  const doc = JSON.parse(claim.document.data) as { leaves: string[]; rngs: string[]; tokens: number[]; root: string };
  assert.equal(doc.root, claim.root);
  assert.equal(doc.leaves.length, truth.leaves.length);
  assert.equal(accumulators({ commitment: claim.commitment, leaves: doc.leaves }).at(-1), claim.root);
  // Head leaves are its tokens with RNG states as the sampler advances them.
  const heads = truth.preimages.map((p, i) => (p.kind === 'head' ? i : -1)).filter((i) => i >= 0);
  const truthRngs = heads.map((i) => (truth.preimages[i] as { rng: string }).rng);
  assert.deepEqual(doc.rngs, truthRngs);
  heads.forEach((i, k) => assert.equal(doc.leaves[i], leafHash({ kind: 'head', pos: (truth.preimages[i] as { pos: number }).pos, token: claim.tokens[k], rng: doc.rngs[k] })));
  await coordinatorChecks(SHORT, a, claim);
  assert.deepEqual(cheat.post(a, claim, [1, 2], ctx), accumulators({ commitment: claim.commitment, leaves: doc.leaves }).slice(1, 3), 'consistent posts');
  assert.equal(await cheat.open(model, a, claim, 1, ctx), null);
});

test('lazy: honest as the asserter; as a validator it copies the asserter\'s tokens onto a made-up trace and posts garbage', async () => {
  const { a, job } = lease(SHORT);
  const cheat = strategy('lazy');
  const truth = recordTrace(model, job);
  const asserter = await cheat.claim(model, a, context('me', [participant('me', 'asserter', 'open')]));
  assert.equal(asserter!.root, truth.root);

  const theirs = truth.tokens.slice(job.promptTokens.length - 1);
  const ctx = context('me', [participant('them', 'asserter', 'committed', { commitment: 'ab'.repeat(32), tokens: theirs }), participant('me', 'validator', 'open')]);
  const claim = (await cheat.claim(model, a, ctx))!;
  assert.deepEqual(claim.tokens, theirs);
  assert.notEqual(claim.root, truth.root);
  await coordinatorChecks(SHORT, a, claim);
  const points = [10, 20, 30];
  const posted = cheat.post(a, claim, points, ctx)!;
  assert.equal(posted.length, 3);
  assert.ok(posted.every((v) => /^[0-9a-f]{64}$/.test(v)));
  assert.notDeepEqual(posted, claimedValues(claim, points));
  assert.equal(await cheat.open(model, a, claim, 1, ctx), null);
  assert.ok(ctx.lines.some((l) => /copying the asserter/.test(l)));
});

test('offline-mid-task takes the lease and submits nothing; lying-validator lies only as a validator', async () => {
  const { a, job } = lease(SHORT);
  assert.equal(await strategy('offline-mid-task').claim(model, a, context('me')), null);
  const truth = recordTrace(model, job);
  const liar = strategy('lying-validator');
  assert.equal((await liar.claim(model, a, context('me', [participant('me', 'asserter', 'open')])))!.root, truth.root);
  const ctx = context('me', [participant('them', 'asserter', 'committed', { commitment: 'ab'.repeat(32) }), participant('me', 'validator', 'open')]);
  const lie = (await liar.claim(model, a, ctx))!;
  assert.notEqual(lie.root, truth.root);
  const s = firstDifference(claimLeaves(lie), truth.leaves);
  assert.equal(truth.preimages[s - 1].kind, 'head');
  const opening = (await liar.open(model, a, lie, s, ctx))!;
  assert.equal((await referee(SHORT, lie, opening)).leaf, truth.leaves[s - 1]);
});

test('colluding-pair: the asserter lies and leaves its claim in the shared folder; its partner, validating, copies it exactly; both pass the trace check under their own signatures', async () => {
  const dir = join(fx.dir, 'collude');
  const { a, job } = lease(SHORT, id43('collusion'));
  const [one, two] = [strategy('colluding-pair', { colludeDir: dir }), strategy('colluding-pair', { colludeDir: dir })];
  const [w1, w2] = [fx.wallet, await generateWallet('ed25519')];
  const [n1, n2] = [walletAddress(w1), walletAddress(w2)];
  const truth = recordTrace(model, job);

  const first = (await one.claim(model, a, context(n1, [participant(n1, 'asserter', 'open')])))!;
  assert.notEqual(first.root, truth.root);
  assert.deepEqual(readdirSync(dir), [`${a.task}.json`]);
  const ctx2 = context(n2, [participant(n1, 'asserter', 'committed', { commitment: resultCommitment(a.task, n1, first.root) }), participant(n2, 'validator', 'open')]);
  const second = (await two.claim(model, a, ctx2))!;
  assert.deepEqual(second, first);
  assert.notEqual(resultCommitment(a.task, n2, second.root), resultCommitment(a.task, n1, first.root), 'each its own commitment');
  await coordinatorChecks(SHORT, a, first, w1);
  await coordinatorChecks(SHORT, a, second, w2);
  const s = firstDifference(claimLeaves(second), truth.leaves);
  assert.ok(await two.open(model, a, second, s, ctx2), 'the partner can defend the copied lie');

  // On a task no partner touched, as a validator, it is honest.
  const other = lease({ ...SHORT, seed: '7' });
  const fair = (await two.claim(model, other.a, context(n2, [participant('x', 'asserter', 'committed', { commitment: 'ab'.repeat(32) }), participant(n2, 'validator', 'open')])))!;
  assert.equal(fair.root, recordTrace(model, other.job).root);
  assert.throws(() => strategy('colluding-pair'), StrategyError);
});

test('strategy names: each known one wraps the honest behaviour; an unknown one is refused', () => {
  for (const name of ['honest', 'wrong-token', 'cheap-model', 'lazy', 'skip', 'offline-mid-task', 'lying-validator']) {
    const b: Behaviour = strategy(name);
    assert.equal(b.name, name);
    for (const method of ['claim', 'reveal', 'post', 'open'] as const) assert.equal(typeof b[method], 'function');
  }
  assert.throws(() => strategy('nope'), /unknown strategy 'nope'/);
});
