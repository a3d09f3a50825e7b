// The coordinator's verification extensions (src/processes/host.ts: host.trace and host.step)
// against docs/network.md "Host extensions for verification", over a real embedded store holding
// the real stories260K model and real signed trace items, with real traces of the engine.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { HostUnavailable, type Extensions } from '../../src/ao/runtime.js';
import { loadModel, modelIdentity, modelTreeLeaves, type Model } from '../../src/engine/index.js';
import { complete, traceDocument, type Assignment, type Completion } from '../../src/node/work.js';
import { coordinatorExtensions, describeRequest, hostCacheStats, openingBound, type JobInput, type ModelRef, type StepInfo } from '../../src/processes/host.js';
import {
  BOS, accumulators, buildOpening, encodeOpening, jobCommitment, recordTrace, schedule,
  type Deviation, type Job, type Opening, type Trace,
} from '../../src/proof/index.js';
import { createItem, type Tag } from '../../src/store/items.js';
import { publishModel, type Manifest, type ManifestChunk } from '../../src/store/models.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { stories260K, tok512 } from '../helpers.js';
import { openProcess } from './harness.js';

const id43 = (text: string): string => createHash('sha256').update(text).digest('base64url');

interface Fixture {
  dir: string;
  store: Store;
  model: Model;
  modelId: string;
  manifestId: string;
  ext: Extensions;
  node: Wallet;
  other: Wallet;
}
let fx: Fixture;

// The extensions answer a string or a promise of one; these are async.
const stepOf = async (ext: Extensions, json: string): Promise<string> => ext.step(json);
const traceOf = async (ext: Extensions, json: string): Promise<string> => ext.trace(json);

before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'verity-host-'));
  const store = openSqliteStore(dir);
  const model = loadModel(stories260K, { tokenizer: tok512 });
  const { modelId, manifestId } = await publishModel(store, walletSigner(await generateWallet('ed25519')), model, 'stories260K');
  fx = { dir, store, model, modelId, manifestId, ext: coordinatorExtensions(store), node: await generateWallet('ed25519'), other: await generateWallet('ed25519') };
});

after(async () => {
  await fx?.store.close();
  if (fx) rmSync(fx.dir, { recursive: true, force: true });
});

// ---- jobs, traces and trace items ----

/** A request as the coordinator passes it to its host extensions, less the model. */
type Request = Omit<JobInput, keyof ModelRef>;

/** Short, sampled: every position runs (no BOS before max_tokens). */
const SHORT: Request = { prompt: 'Once upon a time', maxTokens: 40, temperature: 0.8, topP: 0.9, seed: '42' };
/** Long enough that generation ends with BOS before max_tokens (checked in the tests). */
const STOPS: Request = { prompt: 'The end.', maxTokens: 300, temperature: 1, topP: 0.9, seed: '1' };

const jobInput = (r: Request): JobInput => ({ model: fx.modelId, manifest: fx.manifestId, ...r });

function jobOf(r: Request): Job {
  const identity = modelIdentity(fx.model);
  return describeRequest({ ...identity, tokenizer: fx.model.tokenizer, seqLen: fx.model.config.seqLen }, r);
}

/** The node's own path: a lease, complete() and the trace document it stores. */
function honest(r: Request, task: string): Completion {
  const job = jobOf(r);
  const a: Assignment = {
    task, model: fx.modelId, prompt: r.prompt, options: { max_tokens: r.maxTokens, temperature: r.temperature, top_p: r.topP, seed: r.seed },
    commitment: jobCommitment(job), steps: job.steps, leaseEnd: 0,
  };
  return complete(fx.model, a);
}

/** A completion as a node that deviates would submit it: its trace and the tokens it generated. */
function deviating(r: Request, deviation: Deviation): Completion {
  const job = jobOf(r);
  const trace = recordTrace(fx.model, job, { deviation });
  return { job, trace, tokens: trace.tokens.slice(job.promptTokens.length - 1), text: '' };
}

/** Stores data with tags signed by `wallet`; returns the item id. */
async function storeItem(data: string | Uint8Array, tags: Tag[], wallet = fx.node): Promise<string> {
  const item = await createItem(data, walletSigner(wallet), { tags });
  return (await fx.store.put(item.raw)).id;
}

async function storeTrace(task: string, c: Completion, edit: (doc: Record<string, unknown>, tags: Tag[]) => void = () => {}, wallet = fx.node): Promise<string> {
  const { data, tags } = traceDocument(task, c);
  const doc = JSON.parse(data) as Record<string, unknown>;
  edit(doc, tags);
  return storeItem(JSON.stringify(doc), tags, wallet);
}

/** host.trace's input for a completion stored as `trace` by the node. */
function traceInput(r: Request, task: string, c: Completion, trace: string, extra: object = {}): string {
  return JSON.stringify({ ...jobInput(r), task, node: walletAddress(fx.node), commitment: c.trace.commitment, root: c.trace.root, trace, tokens: c.tokens, ...extra });
}

async function rejects(call: string | Promise<string>, pattern: RegExp): Promise<void> {
  await assert.rejects(Promise.resolve(call), (e: Error) => {
    assert.ok(!(e instanceof HostUnavailable), `a deterministic error, not HostUnavailable: ${e.message}`);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
}

// ---- host.step ----

/** A sampled trace with its layer outputs kept, to build openings; and where its steps are. */
function stepsOf(trace: Trace, job: Job): { firstHead: number; laterHead: number; firstEnd: number; lastEnd: number } {
  const kinds = trace.preimages.map((p) => p.kind);
  const firstHead = kinds.indexOf('head') + 1;
  const laterHead = kinds.indexOf('head', firstHead + 3) + 1;
  const firstEnd = kinds.indexOf('end') + 1;
  assert.ok(firstHead > 0 && laterHead > firstHead, 'the trace has head steps');
  assert.equal(job.steps, schedule(job, trace.nLayers).at(trace.leaves.length).pos + 1);
  return { firstHead, laterHead, firstEnd, lastEnd: firstEnd > 0 ? trace.leaves.length : 0 };
}

const openingText = (trace: Trace, s: number, edit: (o: Opening) => void = () => {}): string => {
  const built = buildOpening(trace, s, fx.model.config);
  // x is the trace's own record: a forgery edits a copy.
  const o: Opening = { ...built, leaves: [...built.leaves], x: built.x?.slice(), keys: built.keys?.slice(), values: built.values?.slice() };
  edit(o);
  return JSON.stringify(encodeOpening(o));
};

const stepInput = (r: Request, agreed: string, step: number, opening: string): string => JSON.stringify({ ...jobInput(r), agreed, step, opening });

test('the referee step inside the CU reproduces the honest node\'s leaf bit for bit', async () => {
  const job = jobOf(STOPS);
  const trace = recordTrace(fx.model, job, { keepOutputs: true });
  const accs = accumulators(trace);
  const sched = schedule(job, trace.nLayers);
  const L = trace.nLayers;
  const { firstHead, laterHead, firstEnd, lastEnd } = stepsOf(trace, job);
  assert.ok(firstEnd > 0, 'generation ends with BOS before max_tokens');
  const stopPos = trace.tokens.length; // the position whose head step chose BOS (tokens[i] is the token at position i + 1)
  const cases: [string, number][] = [
    ['layer 0 at position 0', 1],
    ['layer 0 at a prompt position', sched.index({ kind: 'layer', pos: 2, layer: 0 })],
    [`layer ${L - 1} at position 3`, sched.index({ kind: 'layer', pos: 3, layer: L - 1 })],
    ['the first head step (the seed)', firstHead],
    ['a later head step', laterHead],
    ['layer 0 at a generated position', sched.index({ kind: 'layer', pos: job.promptTokens.length + 4, layer: 0 })],
    ['layer 3 at a late position', sched.index({ kind: 'layer', pos: stopPos - 2, layer: 3 })],
    ['the head step that chose BOS', sched.index({ kind: 'head', pos: stopPos })],
    ['the first end step', firstEnd],
    ['the last end step', lastEnd],
  ];
  assert.equal(trace.preimages[sched.index({ kind: 'head', pos: stopPos }) - 1].kind, 'head');
  assert.equal((trace.preimages[sched.index({ kind: 'head', pos: stopPos }) - 1] as { token: number }).token, BOS);
  const kinds: string[] = [];
  for (const [what, s] of cases) {
    const out = JSON.parse(await stepOf(fx.ext, stepInput(STOPS, accs[s - 1], s, openingText(trace, s)))) as StepInfo;
    assert.deepEqual(Object.keys(out).sort(), ['acc', 'kind', 'leaf', 'weightBytes']);
    // What prices the step: the weights it multiplies by (none for an end step).
    assert.ok(out.kind === 'end' ? out.weightBytes === 0 : out.weightBytes > 0, `${what}: ${out.weightBytes} weight bytes`);
    assert.equal(out.leaf, trace.leaves[s - 1], `${what} (step ${s}): leaf`);
    assert.equal(out.acc, accs[s], `${what} (step ${s}): acc`);
    assert.equal(out.kind, trace.preimages[s - 1].kind, `${what} (step ${s}): kind`);
    kinds.push(out.kind);
  }
  assert.deepEqual([...new Set(kinds)].sort(), ['end', 'head', 'layer']);

  // A dishonest party's trace: the referee computes the true leaf, not the one it recorded.
  const faulty = recordTrace(fx.model, job, { keepOutputs: true, deviation: { activation: { pos: 3, layer: 1, index: 7, delta: 0.5 } } });
  const s = sched.index({ kind: 'layer', pos: 3, layer: 1 });
  const out = JSON.parse(await stepOf(fx.ext, stepInput(STOPS, accumulators(faulty)[s - 1], s, openingText(faulty, s)))) as StepInfo;
  assert.equal(out.leaf, trace.leaves[s - 1]);
  assert.notEqual(out.leaf, faulty.leaves[s - 1]);
});

test('host.step rejects forged openings with the proof error code first', async () => {
  const job = jobOf(SHORT);
  const trace = recordTrace(fx.model, job, { keepOutputs: true });
  const accs = accumulators(trace);
  const sched = schedule(job, trace.nLayers);
  const layer = sched.index({ kind: 'layer', pos: 8, layer: 2 });
  const head = stepsOf(trace, job).laterHead;
  const call = (s: number, opening: string, agreed = accs[s - 1]): Promise<string> => stepOf(fx.ext, stepInput(SHORT, agreed, s, opening));

  await rejects(call(layer, openingText(trace, layer, (o) => (o.x![3] += 1e-3))), /^input: x does not match the output of step/);
  await rejects(call(head, openingText(trace, head, (o) => (o.x![0] = 0))), /^input: /);
  await rejects(call(layer, openingText(trace, layer, (o) => (o.keys![5] += 1e-3))), /^kv: the K\/V rows of layer 2 /);
  await rejects(call(layer, openingText(trace, layer, (o) => (o.values![o.values!.length - 1] = 0))), /^kv: /);
  await rejects(call(layer, openingText(trace, layer, (o) => (o.leaves[0] = 'ab'.repeat(32)))), /^chain: the chain segment ends at/);
  await rejects(call(layer, openingText(trace, layer, (o) => (o.accBefore = accs[0]))), /^chain: /);
  await rejects(call(layer, openingText(trace, layer), accs[layer - 2]), /^chain: /);
  await rejects(call(layer, openingText(trace, layer, (o) => (o.keys = o.keys!.subarray(32)))), /^shape: keys: /);
  await rejects(call(head, openingText(trace, head, (o) => (o.preimages = {}))), /^preimage: the opening does not show step/);

  // Malformed inputs: named, never a crash.
  const good = openingText(trace, layer);
  await rejects(call(layer + 1, good), /^shape: the opening is for step \d+, not step \d+$/);
  await rejects(call(layer, 'not json'), /^shape: the opening is not JSON$/);
  await rejects(call(layer, JSON.stringify({ ...JSON.parse(good), leaves: ['x'] })), /^shape: the opening needs leaves/);
  await rejects(call(layer, JSON.stringify({ ...JSON.parse(good), preimages: { [layer - 1]: { kind: 'head', pos: 1, token: 2, rng: '-1' } } })), /^shape: the opening preimage of step/);
  // Over what any job of the model can need, it is refused before the prompt is tokenised; over this job's bound, after.
  await rejects(call(layer, `${good}${' '.repeat(2 * 2 ** 20)}`), /^shape: the opening is \d+ characters, more than the \d+ an opening of this model can need$/);
  await rejects(call(layer, good.padEnd(openingBound(job, fx.model.config) + 1)), /^shape: the opening is \d+ characters, more than the \d+ this job's openings can need$/);
  await rejects(call(0, good), /^step must be a whole number in 1\.\.\d+$/);
  await rejects(call(sched.steps + 1, good), /^step must be a whole number in 1\.\.\d+$/);
  await rejects(stepOf(fx.ext, JSON.stringify({ ...jobInput(SHORT), agreed: 'zz', step: layer, opening: good })), /^agreed must be an accumulator/);
  await rejects(stepOf(fx.ext, JSON.stringify({ ...jobInput(SHORT), agreed: accs[layer - 1], step: layer, opening: JSON.parse(good) })), /^the opening must be JSON text$/);

  // After all that, the same referee still answers the honest opening.
  assert.equal((JSON.parse(await call(layer, good)) as StepInfo).leaf, trace.leaves[layer - 1]);
});

test('host.step reads the weights from the store: a store out of reach is HostUnavailable, a missing chunk is deterministic', async () => {
  const job = jobOf(SHORT);
  const trace = recordTrace(fx.model, job, { keepOutputs: true });
  const s = schedule(job, trace.nLayers).index({ kind: 'layer', pos: 1, layer: 1 });
  const input = stepInput(SHORT, accumulators(trace)[s - 1], s, openingText(trace, s));
  const manifest = JSON.parse((await fx.store.get(fx.manifestId))!.data.toString('utf8')) as { chunks: { id: string }[] };
  const chunk = manifest.chunks[0].id;
  // host.job's header is read first (manifest and first chunk); the referee's chunk read fails after.
  let reads = 0;
  const flaky: Store = { ...fx.store, get: async (id) => (id === chunk && ++reads > 1 ? Promise.reject(new Error('connection refused')) : fx.store.get(id)) };
  await assert.rejects(stepOf(coordinatorExtensions(flaky), input), (e: Error) => e instanceof HostUnavailable && /connection refused/.test(e.message));
  reads = 0;
  const missing: Store = { ...fx.store, get: async (id) => (id === chunk && ++reads > 1 ? null : fx.store.get(id)) };
  await rejects(stepOf(coordinatorExtensions(missing), input), /is missing from the store/);
});

// ---- host.trace ----

test('host.trace accepts a stored trace and checks every head leaf against the tokens', async () => {
  const c = honest(SHORT, 'task-short');
  assert.equal(c.tokens.length, SHORT.maxTokens);
  const id = await storeTrace('task-short', c);
  const N = schedule(c.job, c.trace.nLayers).steps;
  assert.deepEqual(JSON.parse(await traceOf(fx.ext, traceInput(SHORT, 'task-short', c, id))), { steps: N });

  // Generation that ends with BOS: the tokens stop before it, the rest are end leaves.
  const stops = honest(STOPS, 'task-stops');
  assert.ok(stops.tokens.length < STOPS.maxTokens && stops.trace.preimages.some((p) => p.kind === 'end'), 'generation stops at BOS');
  const stopsId = await storeTrace('task-stops', stops);
  assert.deepEqual(JSON.parse(await traceOf(fx.ext, traceInput(STOPS, 'task-stops', stops, stopsId))), { steps: schedule(stops.job, stops.trace.nLayers).steps });
  const doc = JSON.parse(traceDocument('task-stops', stops).data) as { rngs: string[] };
  assert.equal(doc.rngs.length, stops.tokens.length + 1, 'one RNG state per head step that ran, the BOS one included');
  await rejects(traceOf(fx.ext, traceInput(STOPS, 'task-stops', stops, stopsId, { tokens: [...stops.tokens, BOS] })), /accounts for \d+ generated tokens, \d+ were submitted/);
  await rejects(traceOf(fx.ext, traceInput(STOPS, 'task-stops', stops, stopsId, { tokens: [...stops.tokens, 5] })), /is not the head leaf of token \d+ \(5\)/);
  await rejects(traceOf(fx.ext, traceInput(STOPS, 'task-stops', stops, stopsId, { tokens: stops.tokens.slice(0, -1) })), /is not the head leaf of BOS \(the submitted tokens ended\)/);

  // A consistently faulty trace passes (host.trace checks consistency; disputes check the rest)…
  const at = c.job.promptTokens.length + 3;
  const faulty = deviating(SHORT, { token: { pos: at, token: (c.tokens[4] + 1) % 512 } });
  assert.notDeepEqual(faulty.tokens, c.tokens);
  const faultyId = await storeTrace('task-faulty', faulty);
  assert.deepEqual(JSON.parse(await traceOf(fx.ext, traceInput(SHORT, 'task-faulty', faulty, faultyId))), { steps: N });
  const activation = deviating(SHORT, { activation: { pos: 2, layer: 1, index: 0, delta: 1 } });
  const activationId = await storeTrace('task-activation', activation);
  assert.deepEqual(JSON.parse(await traceOf(fx.ext, traceInput(SHORT, 'task-activation', activation, activationId))), { steps: N });
  // …but tokens other than its head leaves do not.
  await rejects(traceOf(fx.ext, traceInput(SHORT, 'task-faulty', faulty, faultyId, { tokens: c.tokens })), /^trace item \S+: step \d+ \(head at position \d+\) is not the head leaf of token 4 /);
  await rejects(traceOf(fx.ext, traceInput(SHORT, 'task-short', c, id, { tokens: faulty.tokens })), /is not the head leaf of token 4 /);
});

test('host.trace rejects a trace item that is missing, signed by another, mis-tagged, altered or oversized', async () => {
  const task = 'task-rejects';
  const c = honest(SHORT, task);
  const id = await storeTrace(task, c);
  const call = (trace: string, extra: object = {}): Promise<string> => traceOf(fx.ext, traceInput(SHORT, task, c, trace, extra));
  const N = schedule(c.job, c.trace.nLayers).steps;

  const absent = id43('no such trace');
  await rejects(call(absent), new RegExp(`^trace item ${absent} is not in the store$`));
  await rejects(call('not an id'), /^the trace must be an item id$/);

  // Signed by someone else than the node.
  const forged = await storeTrace(task, c, () => {}, fx.other);
  await rejects(call(forged), new RegExp(`^trace item ${forged} is signed by ${walletAddress(fx.other)}, not by the node ${walletAddress(fx.node)}$`));
  await rejects(call(id, { node: walletAddress(fx.other) }), /is signed by .* not by the node/);

  // Tags.
  const retag = (name: string, value: string) => (_: unknown, tags: Tag[]) => {
    tags.find((t) => t.name === name)!.value = value;
  };
  await rejects(call(await storeTrace(task, c, retag('Type', 'Result'))), /its Type tag is not Trace$/);
  await rejects(call(await storeTrace(task, c, retag('Task', 'another task'))), /its Task tag is not task-rejects$/);
  await rejects(call(await storeTrace(task, c, retag('Trace-Root', 'c'.repeat(64)))), /its Trace-Root tag is not /);
  await rejects(call(await storeTrace(task, c, (_, tags) => tags.splice(tags.findIndex((t) => t.name === 'Job-Commitment'), 1))), /its Job-Commitment tag is not /);
  await rejects(call(id, { task: 'another task' }), /its Task tag is not another task$/);
  await rejects(call(id, { root: 'c'.repeat(64) }), /its Trace-Root tag is not c{64}$/);
  await rejects(call(id, { commitment: 'c'.repeat(64) }), /^the job's commitment is [0-9a-f]{64}, not c{64}$/);
  await rejects(call(id, { seed: '43' }), /^the job's commitment is /);

  // The leaves: one changed (it no longer chains to the root), one too few, not hashes.
  const leafChanged = await storeTrace(task, c, (doc) => {
    (doc.leaves as string[])[10] = 'ab'.repeat(32);
  });
  await rejects(call(leafChanged), new RegExp(`^trace item ${leafChanged}: its leaves chain to [0-9a-f]{64}, not to the root ${c.trace.root}$`));
  await rejects(call(await storeTrace(task, c, (doc) => (doc.leaves as string[]).pop())), new RegExp(`must list ${N} leaves of 64 hex characters`));
  await rejects(call(await storeTrace(task, c, (doc) => (doc.leaves as string[]).push('ab'.repeat(32)))), new RegExp(`must list ${N} leaves`));
  await rejects(call(await storeTrace(task, c, (doc) => ((doc.leaves as string[])[0] = 'AB'.repeat(32)))), /must list \d+ leaves/);
  await rejects(call(await storeTrace(task, c, (doc) => delete doc.leaves)), /must list \d+ leaves/);

  // The RNG states: missing, one short, one too many, one changed.
  await rejects(call(await storeTrace(task, c, (doc) => delete doc.rngs)), /must list its head steps' RNG states/);
  await rejects(call(await storeTrace(task, c, (doc) => (doc.rngs as string[]).pop())), /lists \d+ RNG states, but more head steps ran$/);
  await rejects(call(await storeTrace(task, c, (doc) => (doc.rngs as string[]).push('7'))), /lists \d+ RNG states, \d+ head steps ran$/);
  await rejects(call(await storeTrace(task, c, (doc) => ((doc.rngs as string[])[3] = '12345'))), /is not the head leaf of token 3 \(\d+\) with RNG state 3$/);
  await rejects(call(await storeTrace(task, c, (doc) => ((doc.rngs as string[])[3] = String(2n ** 64n)))), /RNG states \(u64 decimal strings\)/);

  // The submitted tokens.
  await rejects(call(id, { tokens: [...c.tokens.slice(0, 5), (c.tokens[5] + 1) % 512, ...c.tokens.slice(6)] }), /is not the head leaf of token 5 /);
  await rejects(call(id, { tokens: [...c.tokens, 7] }), /accounts for 40 generated tokens, 41 were submitted$/);
  await rejects(call(id, { tokens: c.tokens.slice(0, -1) }), /is not the head leaf of BOS \(the submitted tokens ended\)/);
  await rejects(call(id, { tokens: [...c.tokens.slice(0, -1), 512] }), /^the tokens must be a list of at most \d+ token ids below 512$/);
  await rejects(call(id, { tokens: 'x' }), /^the tokens must be a list/);

  // Not JSON, or bigger than any trace of this job can be (checked before parsing).
  await rejects(call(await storeItem('{"leaves": [', traceDocument(task, c).tags)), /is not JSON$/);
  const padded = await storeTrace(task, c, (doc) => (doc.padding = 'x'.repeat(200 * 1024)));
  await rejects(call(padded), new RegExp(`^trace item ${padded} holds \\d+ bytes, more than the \\d+ a trace of this job can need$`));

  // And the honest one still passes.
  assert.deepEqual(JSON.parse(await call(id)), { steps: N });
});

test('host.trace: a store out of reach is HostUnavailable, not a verdict', async () => {
  const c = honest(SHORT, 'task-unreachable');
  const id = await storeTrace('task-unreachable', c);
  const down: Store = { ...fx.store, get: async (x) => (x === id ? Promise.reject(new Error('gateway timeout')) : fx.store.get(x)) };
  await assert.rejects(traceOf(coordinatorExtensions(down), traceInput(SHORT, 'task-unreachable', c, id)), (e: Error) => e instanceof HostUnavailable && /gateway timeout/.test(e.message));
});

// ---- through the process runtime ----

test('host.step and host.trace answer a process in QuickJS, the asyncified path included', async () => {
  // The process passes the message Data to the extension named by the Action tag, unparsed.
  const source = `export function handle(state, message) {
    const action = (message.Tags.find((t) => t.name === 'Action') || {}).value;
    if (!action) return { state };
    return { state, Output: host[action](message.Data) };
  }`;
  const p = await openProcess(source, { owner: id43('owner'), tags: { Name: 'host-test' }, extensions: fx.ext });
  assert.equal(p.boot.Error, undefined);

  const job = jobOf(STOPS);
  const trace = recordTrace(fx.model, job, { keepOutputs: true });
  const accs = accumulators(trace);
  const sched = schedule(job, trace.nLayers);
  const stopPos = trace.tokens.length; // the position whose head chose BOS
  // The largest opening this trace has: the last layer at the last position that ran.
  const s = sched.index({ kind: 'layer', pos: stopPos, layer: trace.nLayers - 1 });
  const opening = openingText(trace, s);
  assert.ok(opening.length > 50_000, `a sizeable opening (${opening.length} characters)`);
  const r = await p.send({ from: id43('someone'), tags: { Action: 'step' }, data: stepInput(STOPS, accs[s - 1], s, opening) });
  assert.equal(r.Error, undefined, r.Error);
  const { weightBytes, ...proof } = JSON.parse(r.Output as string) as StepInfo;
  assert.deepEqual(proof, { acc: accs[s], leaf: trace.leaves[s - 1], kind: 'layer' });
  assert.ok(weightBytes > 0);

  const bad = await p.send({ from: id43('someone'), tags: { Action: 'step' }, data: stepInput(STOPS, accs[s - 1], s, openingText(trace, s, (o) => (o.keys![0] += 1))) });
  assert.match(bad.Error ?? '', /host\.step: kv: /);

  const c = honest(STOPS, 'task-quickjs');
  const id = await storeTrace('task-quickjs', c);
  const t = await p.send({ from: id43('someone'), tags: { Action: 'trace' }, data: traceInput(STOPS, 'task-quickjs', c, id) });
  assert.equal(t.Error, undefined, t.Error);
  assert.deepEqual(JSON.parse(t.Output as string), { steps: sched.steps });
  const wrong = await p.send({ from: id43('someone'), tags: { Action: 'trace' }, data: traceInput(STOPS, 'task-quickjs', c, id, { tokens: c.tokens.slice(1) }) });
  assert.match(wrong.Error ?? '', /host\.trace: trace item \S+: step \d+ \(head at position \d+\) is not the head leaf of token 0 /);
});

test('host.step reads weights spread over many chunk items, and keeps referees within a byte budget', async () => {
  // The same model under other manifests: one whose chunk items hold one leaf each (so a layer's
  // tensors span several items), and three more publishers' — five referees in all, more than the budget holds.
  const leaves = modelTreeLeaves(fx.model);
  const publisher = await generateWallet('ed25519');
  const chunks: ManifestChunk[] = [];
  for (const [i, leaf] of leaves.entries()) {
    const tags: Tag[] = [{ name: 'Type', value: 'Model-Chunk' }, { name: 'Model-Id', value: fx.modelId }, { name: 'Leaves', value: `${i}-${i}` }];
    chunks.push({ id: await storeItem(leaf, tags, publisher), from: i, sizes: [leaf.length] });
  }
  assert.ok(chunks.length > 5, `${chunks.length} chunk items`);
  const published = JSON.parse((await fx.store.get(fx.manifestId))!.data.toString('utf8')) as Manifest;
  const perLeaf = await storeItem(JSON.stringify({ ...published, chunks }), [{ name: 'Type', value: 'Model-Manifest' }, { name: 'Model-Id', value: fx.modelId }], publisher);
  const manifests = [perLeaf, fx.manifestId];
  for (let i = 0; i < 3; i++) manifests.push((await publishModel(fx.store, walletSigner(await generateWallet('ed25519')), fx.model, 'stories260K')).manifestId);
  assert.equal(new Set(manifests).size, 5);

  const job = jobOf(SHORT);
  const trace = recordTrace(fx.model, job, { keepOutputs: true });
  const accs = accumulators(trace);
  const sched = schedule(job, trace.nLayers);
  const steps = [
    sched.index({ kind: 'layer', pos: 6, layer: 0 }), // the embedding row
    sched.index({ kind: 'layer', pos: 7, layer: 2 }),
    sched.index({ kind: 'head', pos: 9 }), // the classifier
  ];
  // One referee's weight once these steps verified what they read; the budget holds four and a half.
  const probe = coordinatorExtensions(fx.store);
  for (const s of steps) await stepOf(probe, JSON.stringify({ ...jobInput(SHORT), agreed: accs[s - 1], step: s, opening: openingText(trace, s) }));
  const one = hostCacheStats(probe).referees;
  assert.equal(one.entries, 1);
  assert.ok(one.bytes > 0);
  const budget = Math.floor(4.5 * one.bytes);
  // Counting manifest reads shows the referees kept: each new one reads its manifest.
  const manifestReads: string[] = [];
  const counting: Store = { ...fx.store, get: async (id) => (manifests.includes(id) && manifestReads.push(id), fx.store.get(id)) };
  const ext = coordinatorExtensions(counting, { refereeCacheBytes: budget });
  for (let round = 0; round < 2; round++) {
    manifestReads.length = 0;
    for (const manifest of manifests) {
      for (const s of steps) {
        const out = JSON.parse(await stepOf(ext, JSON.stringify({ ...jobInput(SHORT), manifest, agreed: accs[s - 1], step: s, opening: openingText(trace, s) }))) as StepInfo;
        assert.equal(out.leaf, trace.leaves[s - 1], `manifest ${manifest}, step ${s}`);
        assert.equal(out.acc, accs[s]);
      }
    }
    // Round 1 reads each manifest for its header and its referee; round 2, cycling through five
    // with four kept, finds each referee evicted and reads its manifest again (headers stay).
    assert.deepEqual(manifestReads, round === 0 ? manifests.flatMap((m) => [m, m]) : manifests);
    assert.deepEqual(hostCacheStats(ext).referees, { entries: 4, bytes: 4 * one.bytes, budget });
  }
  // Steps on one referee run one at a time, even when the process's calls overlap.
  const all = await Promise.all(steps.map((s) => stepOf(ext, JSON.stringify({ ...jobInput(SHORT), manifest: perLeaf, agreed: accs[s - 1], step: s, opening: openingText(trace, s) }))));
  assert.deepEqual(all.map((a) => (JSON.parse(a) as StepInfo).leaf), steps.map((s) => trace.leaves[s - 1]));
});
