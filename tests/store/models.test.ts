// Models on permanent storage: publish to the embedded store and to arlocal, fetch back, run.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadModel, modelIdentity, type Model } from '../../src/engine/index.js';
import { openArweaveStore } from '../../src/store/arweave-store.js';
import { ModelStoreError, fetchModel, listModels, publishModel } from '../../src/store/models.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import { createItem } from '../../src/store/items.js';
import type { Store } from '../../src/store/store.js';
import { generateWallet, walletAddress, walletSigner, writeWallet, type Wallet } from '../../src/store/wallet.js';
import { writeRandomLlama2c } from '../../bench/random-model.js';
import { startArlocal, type RunningArlocal } from '../arlocal.js';
import { runCli, stories260K, stories260KGguf, tok512, withTempDir } from '../helpers.js';

const reference = /```\n([\s\S]*?)```/.exec(readFileSync(join(stories260K, '..', 'README.md'), 'utf8'))![1];
const models: [string, () => Model][] = [
  ['stories260K.bin', () => loadModel(stories260K, { tokenizer: tok512 })],
  ['stories260K.gguf', () => loadModel(stories260KGguf)],
];

async function roundTrip(store: Store, signer: ReturnType<typeof walletSigner>, cache: string): Promise<void> {
  for (const [name, load] of models) {
    const model = load();
    const published = await publishModel(store, signer, model, name);
    assert.equal(published.modelId, modelIdentity(model).modelId);
    const path = await fetchModel(store, published.modelId, cache);
    const fetched = loadModel(path);
    assert.equal(modelIdentity(fetched).modelId, published.modelId, name);
    const run = await runCli(['run', path, '-t', '0', '-n', '200']);
    assert.equal(run.stdout.toString(), reference, `${name}: the fetched model gives the reference text`);
  }
  const listed = await listModels(store);
  assert.ok(models.every(([name]) => listed.some((m) => m.name === name)));
}

test('publish stories260K (.bin and .gguf) to the embedded store, fetch it back, run it', async () => {
  await withTempDir(async (dir) => {
    const store = openSqliteStore(join(dir, 'store'));
    await roundTrip(store, walletSigner(await generateWallet('ed25519')), join(dir, 'cache'));
    await store.close();
  });
});

test('a publish resumes; a corrupt or missing chunk is named and nothing enters the cache', { timeout: 60_000 }, async () => {
  await withTempDir(async (dir) => {
    // A model of several chunk items (about 10 MB).
    const file = join(dir, 'random.bin');
    writeRandomLlama2c(file, { dim: 256, hiddenDim: 640, nLayers: 6, nHeads: 8, nKvHeads: 8, vocabSize: 512, seqLen: 64 }, 3);
    const model = loadModel(file, { tokenizer: tok512 });
    const storeDir = join(dir, 'store');
    const store = openSqliteStore(storeDir);
    const signer = walletSigner(await generateWallet('ed25519'));
    const first = await publishModel(store, signer, model, 'random');
    assert.ok(first.chunks >= 3);
    const again = await publishModel(store, signer, model, 'random');
    assert.equal(again.manifestId, first.manifestId);
    assert.equal(again.reused, first.chunks);

    // Corrupt one chunk item's file on disk: the store itself refuses it (its signature fails).
    const manifest = JSON.parse((await store.get(first.manifestId))!.data.toString()) as { chunks: { id: string }[] };
    const victim = manifest.chunks[1].id;
    const file1 = join(storeDir, 'items', victim.slice(0, 2), victim);
    const bytes = readFileSync(file1);
    bytes[bytes.length - 100] ^= 0xff;
    writeFileSync(file1, bytes);
    const cache = join(dir, 'cache');
    await assert.rejects(fetchModel(store, first.modelId, cache), new RegExp(`chunk ${victim} \\(leaves \\d+-\\d+\\) is corrupt: bad signature`));
    assert.ok(!existsSync(cache) || readdirSync(cache).length === 0, 'nothing entered the cache');
    await store.close();

    // A store that has the manifest but not a chunk.
    const partial = openSqliteStore(join(dir, 'partial'));
    const source = openSqliteStore(storeDir);
    await partial.put((await source.get(first.manifestId))!.raw);
    await assert.rejects(fetchModel(partial, first.modelId, cache), (e: unknown) => e instanceof ModelStoreError && new RegExp(`chunk ${manifest.chunks[0].id} \\(leaves 0-\\d+\\) is missing`).test(e.message));
    await assert.rejects(fetchModel(partial, 'ab'.repeat(32), cache), /no manifest for model/);

    // A publisher that signs a chunk holding other bytes: the leaf hashes catch it.
    const forger = walletSigner(await generateWallet('ed25519'));
    const real = (await source.get(manifest.chunks[0].id))!;
    const fake = await createItem(Buffer.alloc(real.data.length, 1), forger, { tags: real.tags });
    const forgedManifest = JSON.parse((await source.get(first.manifestId))!.data.toString()) as { chunks: { id: string }[] };
    forgedManifest.chunks[0].id = fake.id;
    const forgedStore = openSqliteStore(join(dir, 'forged'));
    await forgedStore.put(fake.raw); // the first chunk is checked first
    await forgedStore.put((await createItem(JSON.stringify(forgedManifest), forger, { tags: (await source.get(first.manifestId))!.tags })).raw);
    await assert.rejects(fetchModel(forgedStore, first.modelId, cache), new RegExp(`chunk ${fake.id} \\(leaves 0-\\d+\\) is corrupt: leaf 0 does not match the model id`));
    assert.ok(!existsSync(cache) || readdirSync(cache).length === 0, 'nothing entered the cache');
    await forgedStore.close();
    await partial.close();
    await source.close();
  });
});

test('the CLI: wallet new/show, model publish/fetch/list with --json print one JSON object each', { timeout: 60_000 }, async () => {
  await withTempDir(async (dir) => {
    const store = join(dir, 'store');
    const json = async (args: string[]): Promise<Record<string, unknown>> => {
      const r = await runCli([...args, '--store', store, '--json']);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.toString().trim().split('\n');
      assert.equal(lines.length, 1, 'exactly one line');
      return JSON.parse(lines[0]) as Record<string, unknown>;
    };
    const wallet = await json(['wallet', 'new', '--type', 'ed25519']);
    assert.equal((await json(['wallet', 'show'])).address, wallet.address);
    const published = await json(['model', 'publish', stories260K, '-z', tok512]);
    assert.deepEqual(Object.keys(published).sort(), ['bytes', 'chunks', 'manifestId', 'modelId']);
    const inspect = JSON.parse((await runCli(['inspect', stories260K, '-z', tok512, '--json'])).stdout.toString()) as { modelId: string };
    assert.equal(published.modelId, inspect.modelId);
    const fetched = await json(['model', 'fetch', String(published.modelId)]);
    assert.deepEqual(Object.keys(fetched).sort(), ['modelId', 'path']);
    const listed = (await json(['model', 'list'])) as { models: { modelId: string }[] };
    assert.equal(listed.models[0].modelId, published.modelId);
    const again = await runCli(['wallet', 'new', '--store', store]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /wallet\.json exists; use --force to replace it/);
    const bad = await runCli(['model', 'fetch', 'nope', '--store', store]);
    assert.match(bad.stderr, /^verity: nope is not a model id \(64 hex characters\)\n$/);
  });
});

describe('models on arlocal', { timeout: 120_000 }, () => {
  let arlocal: RunningArlocal;
  let payer: Wallet;
  before(async () => {
    arlocal = await startArlocal();
    payer = await generateWallet('arweave');
    await arlocal.mint(walletAddress(payer));
  });
  after(async () => arlocal?.stop());

  test('publish stories260K (.bin and .gguf) to arlocal, fetch it back, run it', async () => {
    await withTempDir(async (dir) => {
      const store = openArweaveStore({ gateway: arlocal.url, wallet: payer, mine: true });
      await roundTrip(store, walletSigner(payer), join(dir, 'cache'));
      await store.close();
      // And through the CLI, as a user on another machine would fetch it.
      const walletFile = join(dir, 'payer.json');
      writeWallet(walletFile, payer);
      const id = modelIdentity(loadModel(stories260K, { tokenizer: tok512 })).modelId;
      const r = await runCli(['model', 'fetch', id, '--gateway', arlocal.url, '--cache', join(dir, 'cli-cache'), '--json']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal((JSON.parse(r.stdout.toString()) as { modelId: string }).modelId, id);
    });
  });
});
