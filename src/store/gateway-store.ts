// The store behind a Verity gateway, over HTTP: uploads to POST /tx, reads from GET /raw/:id
// (verified here again), queries through POST /graphql. The units use it when they run as separate
// processes or on separate hosts.
import { ItemError, verifyItem, type Item } from './items.js';
import { QueryError, checkQuery, type ItemSummary, type PutResult, type Store, type TransactionsPage } from './store.js';
import { VerityError } from '../errors.js';

const QUERY = `query($ids: [ID!], $owners: [String!], $recipients: [String!], $tags: [TagFilter!], $first: Int, $after: String, $sort: SortOrder) {
  transactions(ids: $ids, owners: $owners, recipients: $recipients, tags: $tags, first: $first, after: $after, sort: $sort) {
    pageInfo { hasNextPage }
    edges { cursor node { id signature anchor recipient owner { address key } tags { name value } data { size type } bundledIn { id } } }
  }
}`;

interface Node {
  id: string;
  signature: string;
  anchor: string | null;
  recipient: string;
  owner: { address: string; key: string };
  tags: { name: string; value: string }[];
  data: { size: string; type: string | null };
  bundledIn: { id: string } | null;
}

/** The gateway could not be reached or answered with a server error. */
export class GatewayError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'GatewayError';
  }

  override get httpStatus(): number {
    return 502;
  }
}

export function openGatewayStore(gateway: string): Store {
  const base = gateway.replace(/\/+$/, '');
  async function call(path: string, init?: RequestInit): Promise<Response> {
    try {
      return await fetch(`${base}${path}`, init);
    } catch (e) {
      throw new GatewayError(`cannot reach the gateway at ${base} (${init?.method ?? 'GET'} ${path}): ${(e as Error).message}`);
    }
  }
  return {
    async put(raw) {
      const res = await call('/tx', { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: raw });
      const body = (await res.json().catch(() => ({}))) as Partial<PutResult> & { error?: string; message?: string };
      if (res.status === 400) throw new ItemError(body.message ?? 'the gateway refused the item');
      if (!res.ok || !body.id) throw new GatewayError(`gateway ${base}: POST /tx answered ${res.status}: ${body.message ?? ''}`);
      return { id: body.id, duplicate: Boolean(body.duplicate) };
    },
    async get(id): Promise<Item | null> {
      const res = await call(`/raw/${encodeURIComponent(id)}`);
      if (res.status === 404 || res.status === 400) return null;
      if (!res.ok) throw new GatewayError(`gateway ${base}: GET /raw/${id} answered ${res.status}`);
      const item = await verifyItem(new Uint8Array(await res.arrayBuffer()));
      if (item.id !== id) throw new ItemError(`the gateway served item ${item.id} for ${id}`);
      return item;
    },
    async has(id) {
      const page = await this.query({ ids: [id], first: 1 });
      return page.edges.length > 0;
    },
    async query(q): Promise<TransactionsPage> {
      const { first, sort } = checkQuery(q);
      const res = await call('/graphql', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ query: QUERY, variables: { ...q, first, sort } }),
      });
      const body = (await res.json().catch(() => null)) as { data?: { transactions: { pageInfo: { hasNextPage: boolean }; edges: { cursor: string; node: Node }[] } }; errors?: { message: string }[] } | null;
      if (body?.errors?.length) throw new QueryError(body.errors.map((e) => e.message).join('; '));
      if (!res.ok || !body?.data) throw new GatewayError(`gateway ${base}: GraphQL answered ${res.status}`);
      const t = body.data.transactions;
      return {
        hasNextPage: t.pageInfo.hasNextPage,
        edges: t.edges.map(({ cursor, node }) => ({ cursor, node: summary(node) })),
      };
    },
    async close() {},
  };
}

function summary(n: Node): ItemSummary {
  return {
    id: n.id,
    signature: n.signature,
    owner: n.owner.key,
    address: n.owner.address,
    target: n.recipient || null,
    anchor: n.anchor || null,
    tags: n.tags,
    dataSize: Number(n.data.size),
    contentType: n.data.type,
    block: null,
    bundledIn: n.bundledIn?.id ?? null,
  };
}
