// The store's interface: permanent, content-addressed storage of signed data items. Two backends
// implement it — the embedded SQLite store (sqlite-store.ts) and an Arweave gateway
// (arweave-store.ts) — and the gateway HTTP server (gateway.ts) serves either.
import type { Item, Tag } from './items.js';
import { VerityError } from '../errors.js';

/** A query in the shape of the Arweave GraphQL `transactions` query. */
export interface TransactionsQuery {
  ids?: string[];
  owners?: string[];
  recipients?: string[];
  /** Every filter must match: a tag with that name and one of the values. */
  tags?: { name: string; values: string[] }[];
  /** At most 100; 10 by default. */
  first?: number;
  after?: string;
  sort?: 'HEIGHT_DESC' | 'HEIGHT_ASC';
}

export interface ItemSummary {
  id: string;
  signature: string;
  owner: string;
  address: string;
  target: string | null;
  anchor: string | null;
  tags: Tag[];
  dataSize: number;
  contentType: string | null;
  block: { id: string; height: number; timestamp: number } | null;
  bundledIn: string | null;
}

export interface TransactionsPage {
  edges: { cursor: string; node: ItemSummary }[];
  hasNextPage: boolean;
}

export interface PutResult {
  id: string;
  /** The store already held the item: putting it again changes nothing. */
  duplicate: boolean;
}

export interface Store {
  /** Verifies and stores a raw data item; resolves once it is durable. */
  put(raw: Uint8Array): Promise<PutResult>;
  /** The verified item, or null when the store does not hold it. */
  get(id: string): Promise<Item | null>;
  has(id: string): Promise<boolean>;
  query(query: TransactionsQuery): Promise<TransactionsPage>;
  close(): Promise<void>;
}

export class QueryError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'QueryError';
  }
}

export const MAX_PAGE = 100;

/** Checks a query's shape (ids and values are strings, page size in range). */
export function checkQuery(q: TransactionsQuery): Required<Pick<TransactionsQuery, 'first' | 'sort'>> {
  const lists: [string, unknown][] = [['ids', q.ids], ['owners', q.owners], ['recipients', q.recipients]];
  for (const [name, list] of lists) {
    if (list !== undefined && (!Array.isArray(list) || list.length > 1000 || !list.every((v) => typeof v === 'string'))) {
      throw new QueryError(`${name} must be a list of at most 1000 strings`);
    }
  }
  if (q.tags !== undefined) {
    const ok = Array.isArray(q.tags) && q.tags.length <= 64 && q.tags.every((t) => typeof t?.name === 'string' && Array.isArray(t.values) && t.values.every((v) => typeof v === 'string'));
    if (!ok) throw new QueryError('tags must be a list of {name, values} filters');
  }
  const first = q.first ?? 10;
  if (!Number.isInteger(first) || first < 1 || first > MAX_PAGE) throw new QueryError(`first must be an integer in 1..${MAX_PAGE}`);
  const sort = q.sort ?? 'HEIGHT_DESC';
  if (sort !== 'HEIGHT_DESC' && sort !== 'HEIGHT_ASC') throw new QueryError('sort must be HEIGHT_DESC or HEIGHT_ASC');
  return { first, sort };
}

export const summaryOf = (item: Item, extra: Pick<ItemSummary, 'block' | 'bundledIn'> = { block: null, bundledIn: null }): ItemSummary => ({
  id: item.id,
  signature: item.signature,
  owner: item.owner,
  address: item.address,
  target: item.target,
  anchor: item.anchor,
  tags: item.tags,
  dataSize: item.data.length,
  contentType: item.tags.find((t) => t.name === 'Content-Type')?.value ?? null,
  ...extra,
});
