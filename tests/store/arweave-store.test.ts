// The Arweave store against a real gateway implementation: arlocal, started in this process on a
// free loopback port, with its database and log file in a temporary folder removed afterwards.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { startArlocal, type RunningArlocal } from '../arlocal.js';
import { openArweaveStore, type ArweaveStore } from '../../src/store/arweave-store.js';
import { ItemError, createItem, type Item } from '../../src/store/items.js';
import { QueryError, type ItemSummary, type TransactionsQuery } from '../../src/store/store.js';
import { WalletError, generateWallet, walletAddress, walletSigner, type Wallet } from '../../src/store/wallet.js';

const TIMEOUT = { timeout: 60_000 };

const randomId = (): string => randomBytes(32).toString('base64url');

async function allPages(store: ArweaveStore, q: TransactionsQuery): Promise<{ pages: number; nodes: ItemSummary[] }> {
  const nodes: ItemSummary[] = [];
  let after: string | undefined;
  for (let pages = 1; ; pages++) {
    const page = await store.query({ ...q, after });
    nodes.push(...page.edges.map((e) => e.node));
    if (!page.hasNextPage) return { pages, nodes };
    assert.ok(page.edges.length > 0, 'a page with a next page has edges');
    after = page.edges[page.edges.length - 1].cursor;
  }
}

const sortedIds = (list: { id: string }[]): string[] => list.map((x) => x.id).sort();

describe('Arweave store on arlocal', TIMEOUT, () => {
  const run = randomUUID();
  let arlocal: RunningArlocal | undefined;
  let gateway: string;
  let payer: Wallet;
  let rsa: Wallet;
  let ed: Wallet;
  let store: ArweaveStore;
  // Filled in as the tests put items.
  let single: Item[] = [];
  let many: Item[] = [];

  const tags = (kind: string, extra: { name: string; value: string }[] = []) => [
    { name: 'Verity-Test', value: run },
    { name: 'Kind', value: kind },
    ...extra,
  ];

  async function assertStored(expected: Item): Promise<void> {
    const got = await store.get(expected.id);
    assert.ok(got, `item ${expected.id} is found`);
    assert.equal(got.id, expected.id);
    assert.ok(got.raw.equals(expected.raw), `item ${expected.id} comes back byte-identical`);
    assert.equal(got.signatureType, expected.signatureType);
    assert.deepEqual(got.tags, expected.tags);
    assert.equal(got.target, expected.target);
  }

  before(async () => {
    arlocal = await startArlocal();
    gateway = arlocal.url;
    [payer, rsa, ed] = await Promise.all([generateWallet('arweave'), generateWallet('arweave'), generateWallet('ed25519')]);
    // Without a balance arlocal refuses every transaction (410).
    await arlocal.mint(walletAddress(payer));
    store = openArweaveStore({ gateway, wallet: payer, mine: true });
  }, TIMEOUT);

  after(async () => {
    await store?.close();
    await arlocal?.stop();
  }, TIMEOUT);

  test('refuses a forged or truncated item, and a payer that is not an Arweave wallet', TIMEOUT, async () => {
    const item = await createItem('genuine', walletSigner(ed), { tags: tags('forged') });
    const forged = Buffer.from(item.raw);
    forged[forged.length - 1] ^= 1;
    await assert.rejects(store.put(forged), (e: Error) => e instanceof ItemError && /bad signature/.test(e.message));
    await assert.rejects(store.putMany([item.raw, forged]), ItemError);
    await assert.rejects(store.put(item.raw.subarray(0, 40)), (e: Error) => e instanceof ItemError && /truncated/.test(e.message));
    // The forged copy has the genuine item's id: nothing of either reached the gateway.
    assert.equal(await store.has(item.id), false);
    assert.throws(() => openArweaveStore({ gateway, wallet: ed }), WalletError);
  });

  test('puts Ed25519 and Arweave-signed items one by one and gets them back byte-identical', TIMEOUT, async () => {
    single = [
      await createItem('from an ed25519 key', walletSigner(ed), { tags: tags('single', [{ name: 'Content-Type', value: 'text/plain' }]), target: walletAddress(rsa) }),
      await createItem(randomBytes(300), walletSigner(rsa), { tags: tags('single'), target: walletAddress(ed) }),
    ];
    for (const item of single) assert.deepEqual(await store.put(item.raw), { id: item.id, duplicate: false });
    for (const item of single) {
      assert.equal(await store.has(item.id), true);
      await assertStored(item);
    }
  });

  test('puts many items in one bundle, marking those already stored as duplicates', TIMEOUT, async () => {
    many = [
      await createItem('one', walletSigner(ed), { tags: tags('many'), target: walletAddress(rsa) }),
      await createItem('two', walletSigner(rsa), { tags: tags('many', [{ name: 'Content-Type', value: 'application/json' }]) }),
      // Rebuilding from GraphQL must keep UTF-8 tags and empty data exact.
      await createItem('', walletSigner(ed), { tags: tags('many', [{ name: 'Note', value: 'ünïcödé ✓' }]) }),
      await createItem(randomBytes(1000), walletSigner(ed), { tags: tags('many') }),
      await createItem('three', walletSigner(rsa), { tags: tags('many'), target: walletAddress(rsa) }),
    ];
    const raws = [...many.map((i) => i.raw), single[0].raw, many[0].raw];
    const results = await store.putMany(raws);
    assert.deepEqual(results, [...many.map((i) => ({ id: i.id, duplicate: false })), { id: single[0].id, duplicate: true }, { id: many[0].id, duplicate: true }]);
    for (const item of many) await assertStored(item);
    // One post, one mined block: all of them sit in the same block.
    const { edges } = await store.query({ ids: many.map((i) => i.id), first: 100 });
    assert.equal(edges.length, many.length);
    assert.equal(new Set(edges.map((e) => e.node.block?.id)).size, 1);
    assert.notEqual(edges[0].node.block, null);
    assert.deepEqual(await store.putMany([]), []);
  });

  test('a second put of a stored item is a duplicate and posts nothing', TIMEOUT, async () => {
    const height = async (): Promise<number> => ((await (await fetch(`${gateway}/info`)).json()) as { height: number }).height;
    const before = await height();
    assert.deepEqual(await store.put(single[0].raw), { id: single[0].id, duplicate: true });
    assert.deepEqual(await store.putMany([single[1].raw, many[1].raw]), [
      { id: single[1].id, duplicate: true },
      { id: many[1].id, duplicate: true },
    ]);
    // Nothing was posted, so nothing was mined.
    assert.equal(await height(), before);
  });

  test('knows nothing of unknown or malformed ids', TIMEOUT, async () => {
    assert.equal(await store.has(randomId()), false);
    assert.equal(await store.has('not an id'), false);
    assert.equal(await store.get(randomId()), null);
    assert.equal(await store.get('../../etc/passwd'), null);
  });

  test('queries by ids, owners, recipients and tags, page by page', TIMEOUT, async () => {
    const all = [...single, ...many];
    const byIds = await store.query({ ids: [single[0].id, many[1].id] });
    assert.deepEqual(sortedIds(byIds.edges.map((e) => e.node)), [single[0].id, many[1].id].sort());
    assert.equal(byIds.hasNextPage, false);
    const summary = byIds.edges.find((e) => e.node.id === single[0].id)!.node;
    assert.equal(summary.signature, single[0].signature);
    assert.equal(summary.owner, single[0].owner);
    assert.equal(summary.address, walletAddress(ed));
    assert.equal(summary.target, walletAddress(rsa));
    assert.equal(summary.anchor, null);
    assert.deepEqual(summary.tags, single[0].tags);
    assert.equal(summary.dataSize, single[0].data.length);
    assert.equal(summary.contentType, 'text/plain');
    assert.ok(summary.block && summary.block.height > 0);
    const plain = byIds.edges.find((e) => e.node.id === many[1].id)!.node;
    assert.equal(plain.contentType, 'application/json');

    // Ed25519 owner: four items, two to a page.
    const edItems = all.filter((i) => i.owner === single[0].owner);
    const byOwner = await allPages(store, { owners: [walletAddress(ed)], first: 2 });
    assert.equal(byOwner.pages, 2);
    assert.deepEqual(sortedIds(byOwner.nodes), sortedIds(edItems));

    const ascending = await allPages(store, { owners: [walletAddress(rsa)], first: 1, sort: 'HEIGHT_ASC' });
    assert.deepEqual(sortedIds(ascending.nodes), sortedIds(all.filter((i) => i.owner === single[1].owner)));
    const heights = ascending.nodes.map((n) => n.block!.height);
    assert.deepEqual(heights, [...heights].sort((a, b) => a - b));

    const toRsa = await allPages(store, { recipients: [walletAddress(rsa)], tags: [{ name: 'Verity-Test', values: [run] }] });
    assert.deepEqual(sortedIds(toRsa.nodes), sortedIds(all.filter((i) => i.target === walletAddress(rsa))));

    const byTags = await allPages(store, { tags: [{ name: 'Verity-Test', values: [run] }, { name: 'Kind', values: ['many', 'nothing'] }], first: 3 });
    assert.equal(byTags.pages, 2);
    assert.deepEqual(sortedIds(byTags.nodes), sortedIds(many));

    assert.deepEqual(await store.query({ ids: [] }), { edges: [], hasNextPage: false });
    assert.deepEqual(await store.query({ tags: [{ name: 'Verity-Test', values: [] }] }), { edges: [], hasNextPage: false });
    await assert.rejects(store.query({ first: 101 }), QueryError);
  });

  test('an item with an anchor is stored, but arlocal loses its anchor', TIMEOUT, async () => {
    const anchored = await createItem('anchored', walletSigner(ed), { tags: tags('anchored'), anchor: 'a'.repeat(32) });
    assert.deepEqual(await store.put(anchored.raw), { id: anchored.id, duplicate: false });
    assert.equal(await store.has(anchored.id), true);
    // arlocal has no /raw/:id route and its GraphQL answers anchor "" for data items
    // (textury/arlocal#75), so the rebuilt item cannot verify: get says so instead of returning it.
    await assert.rejects(store.get(anchored.id), (e: Error) => e instanceof ItemError && /lost the item's anchor/.test(e.message) && /arlocal#75/.test(e.message));
  });

  test('an item larger than one chunk goes up chunk by chunk', TIMEOUT, async () => {
    const big = await createItem(randomBytes(600_000), walletSigner(ed), { tags: tags('big') });
    assert.deepEqual(await store.put(big.raw), { id: big.id, duplicate: false });
    await assertStored(big);
  });

  test('a post the gateway refuses is an error with its reason', TIMEOUT, async () => {
    // The rsa wallet was never minted anything.
    const unfunded = openArweaveStore({ gateway, wallet: rsa, mine: true });
    const item = await createItem('unpaid', walletSigner(ed), { tags: tags('unpaid') });
    await assert.rejects(unfunded.put(item.raw), /410 You don't have enough tokens/);
    assert.equal(await store.has(item.id), false);
  });

  test('a closed store refuses calls', TIMEOUT, async () => {
    const other = openArweaveStore({ gateway, wallet: payer });
    await other.close();
    await assert.rejects(other.has(single[0].id), /closed/);
  });
});
