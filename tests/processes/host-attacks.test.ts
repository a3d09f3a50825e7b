// Attacks on the coordinator's host extensions (src/processes/host.ts) and on the order of the
// coordinator's checks (src/processes/coordinator.ts), over a real embedded store: a process that
// calls host.model over a thousand re-signed manifests of a model with a 32,000-entry tokenizer
// (the cache stays within its byte budget, answers stay right after eviction), arguments over
// their caps (refused before they are parsed, before the store is read), and requests that must be
// refused before anything is tokenised (host.job never called: the extensions count their calls).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { writeRandomLlama2c } from '../../bench/random-model.js';
import { HostError, type Evaluation } from '../../src/ao/runtime.js';
import { createTokenizer, loadModel, modelTreeLeaves, type Model } from '../../src/engine/index.js';
import {
  ARGUMENT_CHARS, HOST_TICKS, coordinatorExtensions, headerTicks, hostCacheStats, hostCallTicks,
  type CoordinatorExtensions, type ExtensionName, type ModelInfo, type PricedExtension,
} from '../../src/processes/host.js';
import { HOST_CAPS } from '../../src/processes/protocol.js';
import { createItem, type Item, type Tag } from '../../src/store/items.js';
import { publishModel, type Manifest } from '../../src/store/models.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { generateWallet, walletAddress, walletDid, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { llama2Tokenizer, stories260K, tok512 } from '../helpers.js';
import { openProcess, processSource, tagsOf, type OpenProcess, type SendOptions } from './harness.js';
import { ALICE, MU, OWNER, TOKEN, fixedWallet, id43 } from './players.js';

interface Published {
  modelId: string;
  manifestId: string;
}

interface Fixture {
  dir: string;
  store: Store;
  publisher: Wallet;
  /** stories260K (512-entry tokenizer): the model the coordinator serves. */
  small: Published;
  /** A one-layer random model with the 32,000-entry llama2 tokenizer, under a manifest whose chunk items hold a leaf each. */
  big: Published & { model: Model };
}
let fx: Fixture;

const MANIFEST_TAGS = (modelId: string): Tag[] => [{ name: 'Type', value: 'Model-Manifest' }, { name: 'Model-Id', value: modelId }];

async function storeItem(data: string | Uint8Array, tags: Tag[], anchor?: string): Promise<string> {
  const item = await createItem(data, walletSigner(fx.publisher), { tags, anchor });
  return (await fx.store.put(item.raw)).id;
}

/** The tiny random model with the big tokenizer; `seed` makes another model (other weights, the same tokenizer). */
function bigTokenizerModel(dir: string, seed: number): Model {
  const path = join(dir, `big-${seed}.bin`);
  writeRandomLlama2c(path, { dim: 8, hiddenDim: 16, nLayers: 1, nHeads: 2, nKvHeads: 2, vocabSize: 32000, seqLen: 64 }, seed);
  return loadModel(path, { tokenizer: llama2Tokenizer });
}

/**
 * The model published with one chunk item per leaf: re-reading its header then reads the config
 * and tokenizer items only, not the weights beside them, so a thousand manifests check quickly.
 */
async function publishPerLeaf(model: Model, name: string): Promise<Published> {
  const { modelId, manifestId } = await publishModel(fx.store, walletSigner(fx.publisher), model, name);
  const published = JSON.parse((await fx.store.get(manifestId))!.data.toString('utf8')) as Manifest;
  const chunks = [];
  for (const [i, leaf] of modelTreeLeaves(model).entries()) {
    const tags: Tag[] = [{ name: 'Type', value: 'Model-Chunk' }, { name: 'Model-Id', value: modelId }, { name: 'Leaves', value: `${i}-${i}` }];
    chunks.push({ id: await storeItem(leaf, tags), from: i, sizes: [leaf.length] });
  }
  return { modelId, manifestId: await storeItem(JSON.stringify({ ...published, chunks }), MANIFEST_TAGS(modelId)) };
}

/** The same manifest signed again with another anchor: another item id, the same content. */
async function resign(p: Published, i: number): Promise<Item> {
  const data = (await fx.store.get(p.manifestId))!.data;
  return createItem(data, walletSigner(fx.publisher), { tags: MANIFEST_TAGS(p.modelId), anchor: `re-signed manifest ${i}`.padEnd(32, '.') });
}

before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'verity-host-attacks-'));
  const store = openSqliteStore(dir);
  fx = { dir, store, publisher: await generateWallet('ed25519') } as Fixture;
  const small = loadModel(stories260K, { tokenizer: tok512 });
  fx.small = await publishModel(store, walletSigner(fx.publisher), small, 'stories260K');
  const big = bigTokenizerModel(dir, 1);
  fx.big = { ...(await publishPerLeaf(big, 'big-tokenizer')), model: big };
});

after(async () => {
  await fx?.store.close();
  if (fx) rmSync(fx.dir, { recursive: true, force: true });
});

/**
 * The fixture's store that counts its reads (by item id), holding `extra` items besides: signed
 * items kept in memory, as a gateway's cache would serve them — a thousand SQLite writes, each
 * synced to disk, would be most of a test's time.
 */
function countingStore(extra: Item[] = []): { store: Store; reads: string[] } {
  const reads: string[] = [];
  const held = new Map(extra.map((item) => [item.id, item]));
  return { store: { ...fx.store, get: async (id) => (reads.push(id), held.get(id) ?? fx.store.get(id)) }, reads };
}

const modelRef = (p: Published, manifest = p.manifestId): string => JSON.stringify({ model: p.modelId, manifest });

async function rejectsOneLine(call: () => string | Promise<string>, pattern: RegExp): Promise<void> {
  await assert.rejects(
    (async () => call())(),
    (e: Error) => {
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes('\n'), 'one line');
      return true;
    },
  );
}

// ---- (c) the header cache under a thousand re-signed manifests ----

test('1,000 host.model calls over distinct re-signed manifests of a 32,000-entry-tokenizer model stay within the header budget, and answers stay right after eviction', async () => {
  const items: Item[] = [];
  for (let i = 0; i < 1000; i++) items.push(await resign(fx.big, i));
  const manifests = items.map((item) => item.id);
  assert.equal(new Set(manifests).size, 1000);
  // The config and tokenizer items too, read (and verified) from the store once.
  const published = JSON.parse((await fx.store.get(fx.big.manifestId))!.data.toString('utf8')) as Manifest;
  for (const chunk of published.chunks.slice(0, 2)) items.push((await fx.store.get(chunk.id))!);

  // One model's content and one manifest's check, weighed on a probe: the budget holds the content and 100 manifests.
  const probe = coordinatorExtensions(countingStore(items).store);
  const expected = await probe.model(modelRef(fx.big));
  const info = JSON.parse(expected) as ModelInfo;
  assert.equal(info.vocabSize, 32000);
  const once = hostCacheStats(probe).headers;
  await probe.model(modelRef(fx.big, manifests[0]));
  const twice = hostCacheStats(probe).headers;
  const manifestEntry = twice.bytes - once.bytes;
  const content = once.bytes - manifestEntry;
  assert.ok(content > 4_000_000, `the tokenizer weighs ${content} bytes`);
  const budget = content + 100 * manifestEntry + Math.floor(manifestEntry / 2);

  const { store, reads } = countingStore(items);
  const ext = coordinatorExtensions(store, { headerCacheBytes: budget });
  for (const manifest of manifests) {
    const answer = await ext.model(modelRef(fx.big, manifest));
    assert.equal(answer, expected, `manifest ${manifest}`);
    const { bytes } = hostCacheStats(ext).headers;
    assert.ok(bytes <= budget, `${bytes} ≤ ${budget} after manifest ${manifest}`);
  }
  // The tokenizer is kept once, shared; the hundred most recent manifests beside it.
  assert.deepEqual(hostCacheStats(ext).headers, { entries: 101, bytes: content + 100 * manifestEntry, budget });
  // Each manifest was read and checked once (its manifest, its config and tokenizer items).
  assert.equal(reads.length, 3 * manifests.length);

  // The first manifest's check was evicted: asking again reads it again, and answers the same.
  reads.length = 0;
  assert.equal(await ext.model(modelRef(fx.big, manifests[0])), expected);
  assert.deepEqual(reads.slice(0, 1), [manifests[0]]);
  // The most recent one was kept: no read.
  reads.length = 0;
  assert.equal(await ext.model(modelRef(fx.big, manifests[999])), expected);
  assert.deepEqual(reads, []);
});

test('model content over the budget is evicted least recently used first, and one larger than the whole budget is answered but not kept', async () => {
  // Three models with the same big tokenizer and other weights: three contents of ~5 MB each.
  const others: Published[] = [fx.big];
  for (const seed of [2, 3]) others.push(await publishPerLeaf(bigTokenizerModel(fx.dir, seed), `big-tokenizer-${seed}`));
  assert.equal(new Set(others.map((p) => p.modelId)).size, 3);
  const answers = await Promise.all(others.map((p) => coordinatorExtensions(fx.store).model(modelRef(p))));

  const probe = coordinatorExtensions(fx.store);
  await probe.model(modelRef(fx.big));
  const one = hostCacheStats(probe).headers.bytes;
  // Two models fit, three do not.
  const budget = Math.floor(2.5 * one);
  const { store, reads } = countingStore();
  const ext = coordinatorExtensions(store, { headerCacheBytes: budget });
  for (const [i, p] of others.entries()) assert.equal(await ext.model(modelRef(p)), answers[i]);
  assert.equal(hostCacheStats(ext).headers.entries, 4, 'the last two models\' content and their manifests\' checks');
  assert.ok(hostCacheStats(ext).headers.bytes <= budget);
  // The first model's content went first: asking again reads its tokenizer again, and answers the same.
  reads.length = 0;
  assert.equal(await ext.model(modelRef(others[0])), answers[0]);
  assert.ok(reads.length > 0, 'read again');
  assert.ok(hostCacheStats(ext).headers.bytes <= budget);

  // A budget smaller than one tokenizer: every call answers, none keeps it.
  const tiny = coordinatorExtensions(fx.store, { headerCacheBytes: 1_000_000 });
  for (let i = 0; i < 2; i++) assert.equal(await tiny.model(modelRef(fx.big)), answers[0]);
  const stats = hostCacheStats(tiny).headers;
  assert.equal(stats.entries, 1, 'only the manifest\'s check is kept');
  assert.ok(stats.bytes <= 1_000_000);
});

// ---- (d) caps before any parse or work ----

test('every extension refuses an argument over its cap with one line, before parsing it and before reading the store', async () => {
  const { store, reads } = countingStore();
  const ext = coordinatorExtensions(store);
  for (const name of Object.keys(ARGUMENT_CHARS) as ExtensionName[]) {
    const cap = ARGUMENT_CHARS[name];
    // Not JSON at all: a parse first would say so; the cap speaks first.
    await rejectsOneLine(() => ext[name]('x'.repeat(cap + 1)), new RegExp(`^the argument is ${cap + 1} characters, more than the ${cap} this call takes$`));
  }
  assert.deepEqual(reads, []);
  assert.equal(ARGUMENT_CHARS.job, 6 * HOST_CAPS.promptBytes + 1024, 'the worst JSON escaping of a prompt at its cap fits');
  // A prompt at its cap, every character a control character JSON writes as \u00XX, is within the argument cap.
  const worst = JSON.stringify({ model: fx.small.modelId, manifest: fx.small.manifestId, prompt: '\u0001'.repeat(HOST_CAPS.promptBytes), maxTokens: 1, temperature: 0, topP: 0.9, seed: '0' });
  assert.ok(worst.length <= ARGUMENT_CHARS.job);
});

test('a prompt over HOST_CAPS.promptBytes, tokens beyond the context and an opening over its bounds are refused before anything is tokenised', async () => {
  const { store, reads } = countingStore();
  const ext = coordinatorExtensions(store);
  // The model named does not exist: had the store been asked, the error would say so.
  const nowhere = { model: 'f'.repeat(64), manifest: 'A'.repeat(43) };
  const request = { maxTokens: 1, temperature: 0, topP: 0.9, seed: '0' };
  const over = 'é'.repeat(HOST_CAPS.promptBytes / 2 + 1); // 2 bytes each in UTF-8: one pair over
  const prompt = /^the prompt is 65538 bytes of UTF-8, more than the 65536 a host call takes$/;
  await rejectsOneLine(() => ext.job(JSON.stringify({ ...nowhere, ...request, prompt: over })), prompt);
  await rejectsOneLine(() => ext.decode(JSON.stringify({ ...nowhere, prompt: over, tokens: [] })), prompt);
  await rejectsOneLine(() => ext.trace(JSON.stringify({ ...nowhere, ...request, prompt: over, task: 't', node: 'n', commitment: 'c', root: 'r', trace: 'x', tokens: [] })), prompt);
  await rejectsOneLine(() => ext.step(JSON.stringify({ ...nowhere, ...request, prompt: over, agreed: 'a', step: 1, opening: '{}' })), prompt);
  await rejectsOneLine(
    () => ext.step(JSON.stringify({ ...nowhere, ...request, prompt: 'x', agreed: 'a', step: 1, opening: ' '.repeat(HOST_CAPS.openingChars + 1) })),
    /^shape: the opening is 16777217 characters, more than the 16777216 a message can carry$/,
  );
  assert.deepEqual(reads, [], 'the store was never read');

  // With a real model: its header is read (the context is its), nothing is tokenised. A max_tokens
  // of 0 would fail tokenising's checks, so these errors come before them.
  const small = { model: fx.small.modelId, manifest: fx.small.manifestId };
  const context = (JSON.parse(await ext.model(JSON.stringify(small))) as ModelInfo).contextLength;
  const many = Array.from({ length: context + 1 }, () => 5);
  await rejectsOneLine(() => ext.decode(JSON.stringify({ ...small, prompt: 'Hi', tokens: many })), /^the tokens must be a list of at most 512 token ids \(the model's context\), not 513$/);
  const trace = { ...small, ...request, maxTokens: 0, prompt: 'Hi', task: 't', node: 'n', commitment: 'c', root: 'a'.repeat(64), trace: 'A'.repeat(43) };
  await rejectsOneLine(() => ext.trace(JSON.stringify({ ...trace, tokens: many })), /^the tokens must be a list of at most 512 token ids/);
  await rejectsOneLine(() => ext.trace(JSON.stringify({ ...trace, root: 'r', tokens: [] })), /^the trace root must be 64 hex characters$/);
  await rejectsOneLine(
    () => ext.step(JSON.stringify({ ...small, ...request, maxTokens: 0, prompt: 'Hi', agreed: 'a', step: 1, opening: ' '.repeat(3 * 2 ** 20) })),
    /^shape: the opening is 3145728 characters, more than the \d+ an opening of this model can need$/,
  );
  await rejectsOneLine(() => ext.job(JSON.stringify({ ...small, ...request, maxTokens: 0, prompt: 'Hi' })), /^max_tokens must be a whole number ≥ 1$/);
});

test('an over-cap call reaches a process as a thrown one-line Error, the same every time', async () => {
  const source = `export function handle(state, message) {
    const action = (message.Tags.find((t) => t.name === 'Action') || {}).value;
    if (!action) return { state };
    try { return { state, Output: host[action](message.Data) }; } catch (e) { return { state, Output: String(e.message) }; }
  }`;
  const p = await openProcess(source, { owner: id43('owner'), tags: { Name: 'host-attacks' }, extensions: coordinatorExtensions(fx.store) });
  const data = 'y'.repeat(ARGUMENT_CHARS.job + 1);
  const outputs: unknown[] = [];
  for (let i = 0; i < 2; i++) outputs.push((await p.send({ from: id43('someone'), tags: { Action: 'job' }, data })).Output);
  assert.equal(outputs[0], `host.job: the argument is ${data.length} characters, more than the ${ARGUMENT_CHARS.job} this call takes`);
  assert.equal(outputs[1], outputs[0]);
});

// ---- prices ----

test('every extension carries its price in ticks: sizes only, more work costs more, an over-cap call costs one', async () => {
  const ext: CoordinatorExtensions = coordinatorExtensions(fx.store);
  const small = { model: fx.small.modelId, manifest: fx.small.manifestId };
  const request = { maxTokens: 1, temperature: 0, topP: 0.9, seed: '0' };
  const job = (bytes: number): string => JSON.stringify({ ...small, ...request, prompt: 'a'.repeat(bytes) });
  for (const name of Object.keys(ARGUMENT_CHARS) as ExtensionName[]) {
    const fn: PricedExtension = ext[name];
    assert.equal(typeof fn.ticks, 'function', name);
    assert.equal(fn.ticks('x'.repeat(ARGUMENT_CHARS[name] + 1), ''), HOST_TICKS.call, `${name}: over its cap, refused before work`);
  }
  const result = await ext.job(job(8));
  assert.equal(ext.job.ticks(job(8), result), hostCallTicks('job', job(8), result));
  assert.equal(hostCallTicks('job', job(8), result), HOST_TICKS.call + 1);
  // The whole price adds the header the call read: stories260K's 512-entry tokenizer.
  const smallHeader = HOST_TICKS.header + 1;
  assert.deepEqual(await ext.job.priced(job(8)), { value: result, ticks: HOST_TICKS.call + 1 + smallHeader });
  // A call that threw is priced by its argument: tokenising 4 KiB is work done.
  assert.equal(hostCallTicks('job', job(4096)), HOST_TICKS.call + 4096 / HOST_TICKS.promptBytesPerTick);
  assert.ok(hostCallTicks('job', job(HOST_CAPS.promptBytes)) > 10 * hostCallTicks('job', job(4096)));
  // Non-ASCII prompts cost by their UTF-8 bytes, the tokenizer's input.
  assert.equal(hostCallTicks('job', JSON.stringify({ ...small, ...request, prompt: '€'.repeat(1024) })), HOST_TICKS.call + 3 * 1024 / HOST_TICKS.promptBytesPerTick);
  // host.model: by the vocabulary it parsed, as every call that reads that header (headerTicks).
  const bigHeader = HOST_TICKS.header + Math.ceil(32000 / HOST_TICKS.vocabPerTick);
  assert.equal(headerTicks({ tokenizer: fx.big.model.tokenizer }), bigHeader);
  assert.equal((await ext.model.priced(modelRef(fx.big))).ticks, HOST_TICKS.call + bigHeader);
  const bigJob = JSON.stringify({ model: fx.big.modelId, manifest: fx.big.manifestId, ...request, prompt: 'a'.repeat(8) });
  assert.equal((await ext.job.priced(bigJob)).ticks, HOST_TICKS.call + 1 + bigHeader, 'a job on the big tokenizer pays for its header, cached or not');
  // A call refused after it read the header pays for the header too.
  await assert.rejects(ext.job.priced(JSON.stringify({ model: fx.big.modelId, manifest: fx.big.manifestId, ...request, maxTokens: 10_000, prompt: 'a' })), (e: HostError) => e instanceof HostError && e.ticks >= bigHeader);
  // host.trace: by its leaves; host.step: by its opening and the weights it multiplies.
  const trace = JSON.stringify({ ...small, ...request, prompt: 'Hi', tokens: [] });
  assert.equal(hostCallTicks('trace', trace, JSON.stringify({ steps: 2560 })), HOST_TICKS.call + 1 + 10);
  const step = JSON.stringify({ ...small, ...request, prompt: 'Hi', opening: 'o'.repeat(2 * HOST_TICKS.openingCharsPerTick) });
  assert.equal(hostCallTicks('step', step, JSON.stringify({ acc: '', leaf: '', kind: 'layer', weightBytes: 3 * HOST_TICKS.weightBytesPerTick })), HOST_TICKS.call + HOST_TICKS.step + 1 + 2 + 3);
  // The same argument: the same whole price, whatever a cache holds.
  const cold = coordinatorExtensions(fx.store);
  assert.deepEqual(await cold.job.priced(bigJob), await ext.job.priced(bigJob));
});

// ---- (a), (b) the coordinator refuses before it tokenises ----

const SPAWN = { Token: TOKEN, 'Min-Stake': '100', Slash: '100', 'Miss-Slash': '10', 'Challenge-Bond': '100', 'Round-Bond': '5', 'Audit-Ppm': '1000000' };
const NODE = fixedWallet('host-attacks node');
const BOB = id43('bob');

interface Counted {
  ext: CoordinatorExtensions;
  calls: Record<ExtensionName, number>;
}

/** The real extensions, each call counted by name (the price kept). */
function counted(): Counted {
  const real = coordinatorExtensions(fx.store);
  const calls = { model: 0, job: 0, decode: 0, didAddress: 0, trace: 0, step: 0 };
  const ext = Object.fromEntries(
    (Object.keys(calls) as ExtensionName[]).map((name) => [name, Object.assign((argument: string) => (calls[name]++, real[name](argument)), { ticks: real[name].ticks })]),
  ) as CoordinatorExtensions;
  return { ext, calls };
}

interface Coordinator {
  p: OpenProcess;
  calls: Record<ExtensionName, number>;
  send(m: SendOptions): Promise<Evaluation>;
}

/** A coordinator with stories260K registered, ALICE's deposit, and (unless `node` is false) one staked node serving it. */
async function coordinator(o: { node?: boolean; spawn?: Record<string, string> } = {}): Promise<Coordinator> {
  const { ext, calls } = counted();
  const p = await openProcess(await processSource('coordinator'), { owner: OWNER, tags: { ...SPAWN, ...o.spawn }, extensions: ext });
  assert.equal(p.boot.Error, undefined, p.boot.Error);
  const send = async (m: SendOptions): Promise<Evaluation> => {
    const r = await p.send(m);
    assert.equal(r.Error, undefined, r.Error);
    return r;
  };
  const credit = (sender: string, quantity: string, purpose: string) =>
    send({ from: TOKEN, owner: MU, tags: { Action: 'Credit-Notice', Sender: sender, Quantity: quantity, 'X-Action': purpose } });
  await send({ from: OWNER, tags: { Action: 'Register-Model', Model: fx.small.modelId, Manifest: fx.small.manifestId } });
  await credit(ALICE, '100000', 'Deposit');
  if (o.node !== false) {
    const node = walletAddress(NODE);
    await credit(node, '1000', 'Stake');
    const r = await send({ from: node, tags: { Action: 'Register-Node', DID: walletDid(NODE), Models: fx.small.modelId } });
    assert.equal(tagsOf(r.Messages.at(-1)!).Action, 'Register-Node-Response');
  }
  return { p, calls, send };
}

/** The one reply of a refused message: its Code. */
function refusal(r: Evaluation): { code: string; message: string } {
  assert.equal(r.Messages.length, 1, JSON.stringify(r.Messages.map(tagsOf)));
  const tags = tagsOf(r.Messages[0]);
  assert.ok(tags.Action?.endsWith('-Error') || (tags.Action === 'Infer-Response' && tags.Status === 'rejected'), JSON.stringify(tags));
  return { code: tags.Code, message: tags.Message };
}

const inferFrom = (from: string, prompt: string, options: object = { max_tokens: 8 }): SendOptions => ({ from, data: prompt, tags: { Action: 'Infer', 'X-Options': JSON.stringify(options) } });
const MIB2 = 'Once upon a time '.repeat(Math.ceil((2 * 2 ** 20) / 17)).slice(0, 2 * 2 ** 20);

test('(a) a 2 MiB Infer from a requester with no deposit is refused without host.job, reading no more of the prompt than Max-Prompt-Bytes; an in-size one by the deposit check', async () => {
  const c = await coordinator();
  const huge = await c.send(inferFrom(BOB, MIB2));
  assert.equal(refusal(huge).code, '413');
  const justOver = await c.send(inferFrom(BOB, 'x'.repeat(4097)));
  assert.equal(refusal(justOver).code, '413');
  // The size is decided from the length alone: 2 MiB costs what 4 KiB does (a scan would be hundreds of ticks more).
  assert.ok(huge.GasUsed <= justOver.GasUsed + 2, `${huge.GasUsed} ticks for 2 MiB, ${justOver.GasUsed} for 4,097 bytes`);
  const unfunded = refusal(await c.send(inferFrom(BOB, 'x'.repeat(4096))));
  assert.equal(unfunded.code, '402');
  assert.match(unfunded.message, /needs 16 in deposit/);
  assert.equal(c.calls.job, 0, 'host.job was never called');

  // The controls: funded and served, the same prompt is tokenised (and is too many tokens for the
  // context); a short one is accepted.
  const tooLong = refusal(await c.send(inferFrom(ALICE, 'x'.repeat(4096))));
  assert.equal(tooLong.code, '400');
  assert.match(tooLong.message, /exceeds the model's context of 512/);
  assert.equal(c.calls.job, 1);
  const accepted = await c.send(inferFrom(ALICE, 'Once upon a time'));
  assert.deepEqual(accepted.Messages.map((m) => tagsOf(m).Action).sort(), ['Infer-Accepted', 'Task-Assigned']);
  assert.equal(c.calls.job, 2);
});

test('(b) a funded Infer over Max-Prompt-Bytes, beyond the context, or with no node to serve it is refused before host.job', async () => {
  const c = await coordinator({ node: false });
  assert.equal(refusal(await c.send(inferFrom(ALICE, MIB2))).code, '413');
  assert.equal(refusal(await c.send(inferFrom(ALICE, '€'.repeat(1366)))).code, '413', '4,098 bytes in 1,366 UTF-16 units');
  assert.equal(refusal(await c.send(inferFrom(ALICE, 'Hi', { max_tokens: 512 }))).code, '400', 'max_tokens leaves the prompt no room');
  assert.equal(refusal(await c.send(inferFrom(ALICE, 'Hi', { max_tokens: 8, temperature: 5 }))).code, '400');
  assert.equal(refusal(await c.send(inferFrom(ALICE, 'Hi'))).code, '503', 'no node serves the model');
  assert.equal(c.calls.job, 0, 'host.job was never called');

  // Max-Prompt-Bytes cannot be set past what host.job takes.
  const over = await c.send({ from: OWNER, tags: { Action: 'Set-Params', 'Max-Prompt-Bytes': String(HOST_CAPS.promptBytes + 1) } });
  assert.match(refusal(over).message, /^Max-Prompt-Bytes must be a whole number in 1\.\.65536$/);
  await c.send({ from: OWNER, tags: { Action: 'Set-Params', 'Max-Prompt-Bytes': String(HOST_CAPS.promptBytes) } });
  const tokens = await c.send({ from: OWNER, tags: { Action: 'Set-Params', 'Max-Tokens': String(HOST_CAPS.tokens + 1) } });
  assert.equal(refusal(tokens).code, '400');
});

test('Submit-Result, Reveal, Challenge and Dispute-Open check the sender, the task\'s state and sizes before host.decode, host.trace or host.step', async () => {
  const c = await coordinator();
  const r = await c.send(inferFrom(ALICE, 'Once upon a time'));
  const task = tagsOf(r.Messages.find((m) => tagsOf(m).Action === 'Infer-Accepted')!).Task;
  const node = walletAddress(NODE);
  const commitment = (c.p.state() as { tasks: Record<string, { commitment: string }> }).tasks[task].commitment;
  const big = JSON.stringify({ tokens: Array.from({ length: 2 ** 18 }, () => 5) });
  const submit = { Action: 'Submit-Result', Task: task, 'Job-Commitment': commitment, 'Result-Commitment': 'a'.repeat(64), Tokens: '8' };
  assert.equal(refusal(await c.send({ from: ALICE, tags: submit, data: big })).code, '403', 'not the leaseholder');
  assert.equal(refusal(await c.send({ from: node, tags: submit, data: big })).code, '413', 'the leaseholder, oversized');
  assert.equal(refusal(await c.send({ from: node, tags: { ...submit, 'Job-Commitment': 'b'.repeat(64) }, data: JSON.stringify({ tokens: [1] }) })).code, '400');
  const reveal = { Action: 'Reveal', Task: task, 'Trace-Root': 'a'.repeat(64), Trace: 'A'.repeat(43) };
  assert.equal(refusal(await c.send({ from: ALICE, tags: reveal })).code, '403');
  assert.equal(refusal(await c.send({ from: node, tags: reveal })).code, '409', 'nothing committed yet');
  const challenge = { Action: 'Challenge', Task: task, 'Trace-Root': 'a'.repeat(64), Trace: 'A'.repeat(43), Tokens: '1' };
  assert.equal(refusal(await c.send({ from: ALICE, tags: challenge, data: big })).code, '409', 'not challengeable');
  assert.equal(refusal(await c.send({ from: node, tags: { Action: 'Dispute-Open', Task: task, Step: '1' }, data: 'x'.repeat(2 ** 20) })).code, '409', 'no dispute');
  assert.equal(refusal(await c.send({ from: ALICE, tags: { Action: 'Dispute-Open', Task: 'A'.repeat(43), Step: '1' } })).code, '404');
  assert.deepEqual({ decode: c.calls.decode, trace: c.calls.trace, step: c.calls.step }, { decode: 0, trace: 0, step: 0 });
});

test('Register-Node refuses a DID longer than any Ed25519 did:key before host.didAddress', async () => {
  const c = await coordinator({ node: false });
  const before = c.calls.didAddress;
  const r = await c.send({ from: walletAddress(NODE), tags: { Action: 'Register-Node', DID: `did:key:z${'1'.repeat(4000)}`, Models: fx.small.modelId } });
  assert.deepEqual(refusal(r), { code: '400', message: 'DID: not an Ed25519 did:key' });
  assert.equal(c.calls.didAddress, before);
});

test('a published model whose tokenizer has more tokens than its embedding has rows is refused by every host call, before a prompt is tokenised', async () => {
  const small = loadModel(stories260K, { tokenizer: tok512 });
  const longer = createTokenizer([...small.tokenizer.vocab, Buffer.from('extra')], Float32Array.from([...small.tokenizer.scores, 0]));
  const bad = await publishModel(fx.store, walletSigner(fx.publisher), { ...small, tokenizer: longer }, 'mismatched');
  const ext = coordinatorExtensions(fx.store);
  const ref = { model: bad.modelId, manifest: bad.manifestId };
  await rejectsOneLine(() => ext.model(JSON.stringify(ref)), /the tokenizer has 513 tokens, the config's vocabulary 512/);
  await rejectsOneLine(() => ext.job(JSON.stringify({ ...ref, prompt: 'Hi', maxTokens: 1, temperature: 0, topP: 0.9, seed: '0' })), /the tokenizer has 513 tokens/);
});
