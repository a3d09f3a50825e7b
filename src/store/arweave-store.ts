// The store on an Arweave gateway: items go up inside ANS-104 bundles that an Arweave wallet signs
// and pays for, and come back through the gateway's raw, data and GraphQL routes. Nothing the
// gateway says is trusted: every item returned has been verified, and an item that cannot be put
// back together so that it verifies is an error, never a result.
import Arweave from 'arweave';
import { ArweaveSigner, DataItem, bundleAndSignData, serializeTags } from '@dha-team/arbundles';
import { ITEM_ID, ItemError, verifyItem, type Item, type Tag } from './items.js';
import { QueryError, checkQuery, type ItemSummary, type PutResult, type Store, type TransactionsPage, type TransactionsQuery } from './store.js';
import { WalletError, ownerAddress, type Wallet } from './wallet.js';

export interface ArweaveStoreOptions {
  /** The gateway's base URL, e.g. http://127.0.0.1:1984 for arlocal. */
  gateway: string;
  /** An Arweave (RSA) wallet: it signs and pays for the bundle transactions (reading needs none). */
  wallet?: Wallet;
  /** GET /mine after each post: arlocal's GraphQL lists only mined transactions. */
  mine?: boolean;
}

export type ArweaveStore = Store & {
  /** Puts many items in one bundle transaction; the results come in the order given. */
  putMany(raws: Uint8Array[]): Promise<PutResult[]>;
};


/** Signature length per signature type, to know which types a rebuilt item may have. */
const SIGNATURE_LENGTH: Record<number, number> = { 1: 512, 2: 64, 4: 64 };

// What `get`, `query` and the duplicate check read of a transaction.
const NODE_FIELDS = 'id signature anchor recipient owner { key } tags { name value } data { size type } block { id height timestamp } bundledIn { id }';

interface GqlNode {
  id: string;
  signature: string;
  anchor: string | null;
  recipient: string | null;
  owner: { key: string };
  tags: Tag[];
  data: { size: string | number; type: string | null } | null;
  block: { id: string; height: number; timestamp: number } | null;
  bundledIn: { id: string } | null;
}

interface GqlPage<N> {
  pageInfo: { hasNextPage: boolean };
  edges: { cursor: string; node: N }[];
}

const TRANSACTIONS = (fields: string): string => `query ($ids: [ID!], $owners: [String!], $recipients: [String!], $tags: [TagFilter!], $first: Int, $after: String, $sort: SortOrder) {
  transactions(ids: $ids, owners: $owners, recipients: $recipients, tags: $tags, first: $first, after: $after, sort: $sort) {
    pageInfo { hasNextPage }
    edges { cursor node { ${fields} } }
  }
}`;

/** A gateway's error body (Arweave nodes, arlocal and ar.io each have their own shape) as text. */
function messageOf(body: unknown): string {
  if (typeof body === 'string') {
    try {
      return messageOf(JSON.parse(body));
    } catch {
      return body.slice(0, 500);
    }
  }
  if (body && typeof body === 'object') {
    const b = body as Record<string, unknown>;
    const text = b.error ?? b.msg ?? b.message;
    if (typeof text === 'string') return text;
    return JSON.stringify(body).slice(0, 500);
  }
  return String(body);
}

function summaryOfNode(node: GqlNode): ItemSummary {
  const tags = node.tags.map(({ name, value }) => ({ name, value }));
  return {
    id: node.id,
    signature: node.signature,
    owner: node.owner.key,
    // Computed, not read: the rule is the same for every signature type Verity accepts.
    address: ownerAddress(Buffer.from(node.owner.key, 'base64url')),
    target: node.recipient || null,
    anchor: node.anchor || null,
    tags,
    dataSize: Number(node.data?.size ?? 0),
    contentType: tags.find((t) => t.name === 'Content-Type')?.value ?? (node.data?.type || null),
    block: node.block ? { id: node.block.id, height: node.block.height, timestamp: node.block.timestamp } : null,
    bundledIn: node.bundledIn?.id ?? null,
  };
}

/** The ANS-104 bytes of an item with these fields. */
function layout(type: number, signature: Buffer, owner: Buffer, target: Buffer | null, anchor: Buffer | null, tags: Tag[], data: Buffer): Buffer {
  const head = Buffer.alloc(2);
  head.writeUInt16LE(type);
  const flagged = (field: Buffer | null): Buffer => (field ? Buffer.concat([Buffer.from([1]), field]) : Buffer.from([0]));
  const tagBytes = serializeTags(tags);
  const counts = Buffer.alloc(16);
  counts.writeBigUInt64LE(BigInt(tags.length), 0);
  counts.writeBigUInt64LE(BigInt(tagBytes.length), 8);
  return Buffer.concat([head, signature, owner, flagged(target), flagged(anchor), counts, tagBytes, data]);
}

/**
 * The raw anchors a gateway's anchor string may stand for: AO's anchors are 32-byte strings that
 * arbundles writes as they are, while some gateways show an anchor as the base64url of its bytes.
 */
function anchorCandidates(id: string, anchor: string | null): (Buffer | null)[] {
  if (!anchor) return [null];
  const found: Buffer[] = [];
  if (Buffer.byteLength(anchor) === 32) found.push(Buffer.from(anchor));
  if (ITEM_ID.test(anchor) && Buffer.from(anchor, 'base64url').length === 32) found.push(Buffer.from(anchor, 'base64url'));
  if (!found.length) throw new ItemError(`item ${id}: the gateway reports an anchor that is not 32 bytes`);
  return found;
}

/** Opens the store on an Arweave gateway; `wallet` pays for every bundle it posts. */
export function openArweaveStore(options: ArweaveStoreOptions): ArweaveStore {
  const { wallet } = options;
  if (wallet && wallet.type !== 'arweave') throw new WalletError('the Arweave store pays for its bundles with an Arweave (RSA) wallet, not an Ed25519 one');
  const jwk = wallet?.type === 'arweave' ? wallet.jwk : null;
  const url = new URL(options.gateway);
  const base = url.href.replace(/\/+$/, '');
  const protocol = url.protocol.replace(/:$/, '');
  const arweave = Arweave.init({ host: url.hostname, port: url.port ? Number(url.port) : protocol === 'https' ? 443 : 80, protocol });
  let closed = false;

  const open = (): void => {
    if (closed) throw new Error('the Arweave store is closed');
  };

  async function request(path: string, init?: RequestInit): Promise<Response> {
    try {
      return await fetch(`${base}/${path}`, init);
    } catch (e) {
      throw new Error(`gateway ${base}: ${init?.method ?? 'GET'} /${path} failed: ${(e as Error).message}`);
    }
  }

  async function graphql<T>(query: string, variables: Record<string, unknown>): Promise<T> {
    const res = await request('graphql', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ query, variables }) });
    const text = await res.text();
    type Reply = { data?: T; errors?: { message: string }[] } | null;
    const body = ((): Reply => {
      try {
        return JSON.parse(text) as Reply;
      } catch {
        return null;
      }
    })();
    if (!res.ok || !body || body.errors?.length || !body.data) {
      const why = body?.errors?.map((e) => e.message).join('; ') || messageOf(text);
      throw new Error(`gateway ${base}: GraphQL answered ${res.status}: ${why}`);
    }
    return body.data;
  }

  async function transactions<N>(fields: string, variables: Record<string, unknown>): Promise<GqlPage<N>> {
    return (await graphql<{ transactions: GqlPage<N> }>(TRANSACTIONS(fields), variables)).transactions;
  }

  /** The ids among `ids` that the gateway lists. */
  async function known(ids: string[]): Promise<Set<string>> {
    const found = new Set<string>();
    for (let i = 0; i < ids.length; i += 100) {
      const batch = ids.slice(i, i + 100);
      const page = await transactions<{ id: string }>('id', { ids: batch, first: batch.length });
      for (const edge of page.edges) found.add(edge.node.id);
    }
    return found;
  }

  async function postBundle(items: Item[]): Promise<void> {
    const dataItems = items.map((item) => {
      const dataItem = new DataItem(item.raw);
      // Marks the item signed: otherwise bundleAndSignData signs it again, with the bundle's key.
      dataItem.rawId = Buffer.from(item.id, 'base64url');
      return dataItem;
    });
    if (!jwk) throw new WalletError('storing on Arweave needs an Arweave wallet to pay for the bundle');
    const bundle = await bundleAndSignData(dataItems, new ArweaveSigner(jwk));
    const tx = await bundle.toTransaction({}, arweave, jwk);
    await arweave.transactions.sign(tx, jwk);
    // The uploader is driven here rather than through transactions.post, which retries a
    // failing chunk every 40 s for about an hour before it gives up.
    const uploader = await arweave.transactions.getUploader(tx, tx.data);
    const failed = (why: string): Error => new Error(`gateway ${base}: posting bundle ${tx.id} failed: ${why}`);
    while (!uploader.isComplete) {
      try {
        await uploader.uploadChunk();
      } catch (e) {
        if (!uploader.lastResponseError) throw failed((e as Error).message);
      }
      if (uploader.lastResponseError) throw failed(`${uploader.lastResponseStatus} ${messageOf(uploader.lastResponseError)}`);
    }
    if (options.mine) {
      const res = await request('mine');
      if (!res.ok) throw new Error(`gateway ${base}: GET /mine answered ${res.status}: ${messageOf(await res.text())}`);
    }
  }

  async function putMany(raws: Uint8Array[]): Promise<PutResult[]> {
    open();
    const items: Item[] = [];
    for (const raw of raws) items.push(await verifyItem(raw));
    const stored = await known([...new Set(items.map((item) => item.id))]);
    const results: PutResult[] = [];
    const fresh: Item[] = [];
    for (const item of items) {
      const duplicate = stored.has(item.id);
      results.push({ id: item.id, duplicate });
      if (!duplicate) fresh.push(item);
      // A second copy in the same call is a duplicate of the first.
      stored.add(item.id);
    }
    if (fresh.length) await postBundle(fresh);
    return results;
  }

  /** The item as the gateway serves it at /raw/:id (ar.io gateways do), or null. */
  async function fetchRaw(id: string): Promise<Item | null> {
    const res = await request(`raw/${id}`);
    if (!res.ok) {
      await res.body?.cancel();
      return null;
    }
    try {
      const item = await verifyItem(Buffer.from(await res.arrayBuffer()));
      return item.id === id ? item : null;
    } catch {
      // Not a raw item (a gateway without the route may answer with a page): rebuild it instead.
      return null;
    }
  }

  async function fetchData(node: GqlNode): Promise<Buffer> {
    const size = Number(node.data?.size ?? 0);
    // arlocal serves nothing for empty data, and there is nothing to fetch anyway.
    if (size === 0) return Buffer.alloc(0);
    const res = await request(node.id);
    if (!res.ok) throw new Error(`gateway ${base}: GET /${node.id} answered ${res.status}: ${messageOf(await res.text())}`);
    const data = Buffer.from(await res.arrayBuffer());
    if (data.length !== size) throw new ItemError(`item ${node.id}: the gateway lists ${size} bytes of data and served ${data.length}`);
    return data;
  }

  /** Rebuilds the raw item from what GraphQL says of it and its data; the result must verify. */
  async function rebuild(node: GqlNode): Promise<Item> {
    const { id } = node;
    const signature = Buffer.from(node.signature, 'base64url');
    const owner = Buffer.from(node.owner.key, 'base64url');
    const types = (owner.length === 512 ? [1] : owner.length === 32 ? [2, 4] : []).filter((t) => SIGNATURE_LENGTH[t] === signature.length);
    if (!types.length) throw new ItemError(`item ${id}: a ${signature.length}-byte signature with a ${owner.length}-byte owner key is no signature type Verity accepts`);
    const target = node.recipient ? Buffer.from(node.recipient, 'base64url') : null;
    if (target && target.length !== 32) throw new ItemError(`item ${id}: the gateway reports a target that is not 32 bytes`);
    const anchors = anchorCandidates(id, node.anchor);
    const tags = node.tags.map(({ name, value }) => ({ name, value }));
    const data = await fetchData(node);
    for (const type of types) {
      for (const anchor of anchors) {
        try {
          const item = await verifyItem(layout(type, signature, owner, target, anchor, tags, data));
          if (item.id === id) return item;
        } catch (e) {
          if (!(e instanceof ItemError)) throw e;
        }
      }
    }
    if (!node.anchor) {
      throw new ItemError(`item ${id}: rebuilt from the gateway's GraphQL, it does not verify; the gateway reports no anchor, so it has probably lost the item's anchor (arlocal does: textury/arlocal#75)`);
    }
    throw new ItemError(`item ${id}: rebuilt from the gateway's GraphQL and data, it does not verify`);
  }

  async function has(id: string): Promise<boolean> {
    open();
    return ITEM_ID.test(id) && (await known([id])).has(id);
  }

  return {
    async put(raw) {
      const [result] = await putMany([raw]);
      return result;
    },
    putMany,
    async get(id) {
      open();
      if (!ITEM_ID.test(id)) return null;
      const raw = await fetchRaw(id);
      if (raw) return raw;
      const page = await transactions<GqlNode>(NODE_FIELDS, { ids: [id], first: 1 });
      const node = page.edges.find((e) => e.node.id === id)?.node;
      return node ? rebuild(node) : null;
    },
    has,
    async query(q: TransactionsQuery): Promise<TransactionsPage> {
      open();
      const { first, sort } = checkQuery(q);
      if (q.after !== undefined && typeof q.after !== 'string') throw new QueryError('bad cursor');
      // An empty list matches nothing (as in the SQLite store); a gateway would drop the filter.
      const lists = [q.ids, q.owners, q.recipients, ...(q.tags ?? []).map((t) => t.values)];
      if (lists.some((list) => list !== undefined && list.length === 0)) return { edges: [], hasNextPage: false };
      const page = await transactions<GqlNode>(NODE_FIELDS, {
        ids: q.ids,
        owners: q.owners,
        recipients: q.recipients,
        tags: q.tags?.map(({ name, values }) => ({ name, values })),
        first,
        after: q.after,
        sort,
      });
      return {
        edges: page.edges.map((edge) => ({ cursor: edge.cursor, node: summaryOfNode(edge.node) })),
        hasNextPage: page.pageInfo.hasNextPage,
      };
    },
    async close() {
      closed = true;
    },
  };
}
