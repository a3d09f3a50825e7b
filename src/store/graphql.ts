// The Arweave gateway GraphQL, as far as AO tools use it: `transactions` (by ids, owners,
// recipients and tags, paged by cursor) and `transaction`, resolved against a Store. Documents
// come from the network, so they are bounded (length, tokens, depth, selections) before graphql-js
// validates them: validation itself is superlinear in the worst case.
import { GraphQLError, Kind, buildSchema, execute, parse, validate, type DocumentNode, type FragmentDefinitionNode, type GraphQLFormattedError, type SelectionSetNode } from 'graphql';
import { MAX_PAGE, QueryError, type ItemSummary, type Store, type TransactionsQuery } from './store.js';

const SDL = `
  type Query {
    transactions(
      ids: [ID!]
      owners: [String!]
      recipients: [String!]
      tags: [TagFilter!]
      first: Int = 10
      after: String
      sort: SortOrder = HEIGHT_DESC
    ): TransactionConnection!
    transaction(id: ID!): Transaction
  }
  input TagFilter { name: String!, values: [String!]! }
  enum SortOrder { HEIGHT_ASC HEIGHT_DESC }
  type PageInfo { hasNextPage: Boolean! }
  type TransactionConnection { pageInfo: PageInfo!, edges: [TransactionEdge!]! }
  type TransactionEdge { cursor: String!, node: Transaction! }
  type Transaction {
    id: ID!
    anchor: String
    signature: String!
    recipient: String!
    owner: Owner!
    fee: Amount!
    quantity: Amount!
    data: MetaData!
    tags: [Tag!]!
    block: Block
    parent: Parent
    bundledIn: Bundle
  }
  type Owner { address: String!, key: String! }
  type Amount { winston: String!, ar: String! }
  type MetaData { size: String!, type: String }
  type Tag { name: String!, value: String! }
  type Block { id: ID!, timestamp: Int!, height: Int!, previous: ID! }
  type Parent { id: ID! }
  type Bundle { id: ID! }
`;

const schema = buildSchema(SDL);

/** Far above any query AO tools send (theirs are a few hundred characters, depth 5). */
export const GRAPHQL_LIMITS = { chars: 100_000, tokens: 4_000, depth: 16, selections: 2_000, roots: 16, tagValues: 10_000 };

export interface GraphqlRequest {
  query: unknown;
  variables?: unknown;
  operationName?: unknown;
}

export interface GraphqlResult {
  data?: Record<string, unknown> | null;
  errors?: GraphQLFormattedError[];
}

// Data items carry no fee or quantity; Arweave writes zero AR with 12 decimals.
const ZERO = { winston: '0', ar: '0.000000000000' };

const nodeOf = (s: ItemSummary) => ({
  id: s.id,
  anchor: s.anchor,
  signature: s.signature,
  recipient: s.target ?? '',
  owner: { address: s.address, key: s.owner },
  fee: ZERO,
  quantity: ZERO,
  data: { size: String(s.dataSize), type: s.contentType },
  tags: s.tags,
  // Summaries carry no previous block; the schema says non-null, so it is empty rather than null.
  block: s.block && { ...s.block, previous: '' },
  parent: null,
  bundledIn: s.bundledIn === null ? null : { id: s.bundledIn },
});

interface TransactionsArgs {
  ids?: string[] | null;
  owners?: string[] | null;
  recipients?: string[] | null;
  tags?: { name: string; values: string[] }[] | null;
  first?: number | null;
  after?: string | null;
  sort?: 'HEIGHT_ASC' | 'HEIGHT_DESC' | null;
}

function queryOf(args: TransactionsArgs): TransactionsQuery {
  const q: TransactionsQuery = {};
  // GraphQL lets a client pass an explicit null; Arweave treats it as an absent filter.
  if (args.ids != null) q.ids = args.ids;
  if (args.owners != null) q.owners = args.owners;
  if (args.recipients != null) q.recipients = args.recipients;
  if (args.tags != null) {
    // Each value is an SQL parameter in the embedded store, and SQLite caps those.
    const values = args.tags.reduce((n, t) => n + t.values.length, 0);
    if (values > GRAPHQL_LIMITS.tagValues) throw new QueryError(`tags hold ${values} values, at most ${GRAPHQL_LIMITS.tagValues}`);
    q.tags = args.tags;
  }
  // Gateways clamp an oversized page rather than refuse it; tools page with first: 100 or more.
  if (args.first != null) q.first = Math.min(args.first, MAX_PAGE);
  if (args.after != null) q.after = args.after;
  if (args.sort != null) q.sort = args.sort;
  return q;
}

async function userErrors<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    if (e instanceof QueryError) throw new GraphQLError(e.message, { extensions: { code: 'BAD_USER_INPUT' } });
    throw e;
  }
}

const rootOf = (store: Store) => ({
  transactions: (args: TransactionsArgs) =>
    userErrors(async () => {
      const page = await store.query(queryOf(args));
      return { pageInfo: { hasNextPage: page.hasNextPage }, edges: page.edges.map((e) => ({ cursor: e.cursor, node: nodeOf(e.node) })) };
    }),
  transaction: ({ id }: { id: string }) =>
    userErrors(async () => {
      const page = await store.query({ ids: [id], first: 1 });
      return page.edges.length ? nodeOf(page.edges[0].node) : null;
    }),
});

/**
 * Why a parsed document is too big to run, or null: its depth, its selections with fragments
 * expanded, and its root fields (each one is a store query of up to a full page).
 */
function sizeProblem(document: DocumentNode): string | null {
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d);
  let selections = 0;
  let roots = 0;
  // Runs before validation, so fragment cycles and unknown fragments are skipped here, not trusted away.
  const walk = (set: SelectionSetNode, depth: number, open: Set<string>): string | null => {
    if (depth > GRAPHQL_LIMITS.depth) return `the query nests deeper than ${GRAPHQL_LIMITS.depth} levels`;
    for (const s of set.selections) {
      if (++selections > GRAPHQL_LIMITS.selections) return `the query selects more than ${GRAPHQL_LIMITS.selections} fields`;
      let problem: string | null = null;
      if (s.kind === Kind.FIELD) {
        if (depth === 1 && ++roots > GRAPHQL_LIMITS.roots) return `the query has more than ${GRAPHQL_LIMITS.roots} root fields`;
        if (s.selectionSet) problem = walk(s.selectionSet, depth + 1, open);
      } else if (s.kind === Kind.INLINE_FRAGMENT) {
        problem = walk(s.selectionSet, depth, open);
      } else {
        const f = fragments.get(s.name.value);
        if (f && !open.has(f.name.value)) problem = walk(f.selectionSet, depth, new Set(open).add(f.name.value));
      }
      if (problem) return problem;
    }
    return null;
  };
  for (const d of document.definitions) {
    if (d.kind !== Kind.OPERATION_DEFINITION) continue;
    const problem = walk(d.selectionSet, 1, new Set());
    if (problem) return problem;
  }
  return null;
}

const failed = (message: string): GraphqlResult => ({ errors: [{ message }] });

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Runs a GraphQL request against the store. Bad requests (syntax, unknown fields, bad variables,
 * queries the store refuses) resolve with `errors`; a failing store rejects, since that is the
 * server's fault and a client must not read it as "no such transaction".
 */
export async function executeGraphql(store: Store, request: GraphqlRequest): Promise<GraphqlResult> {
  const { query, variables, operationName } = request;
  if (typeof query !== 'string') return failed('query must be a string');
  if (query.length > GRAPHQL_LIMITS.chars) return failed(`the query is ${query.length} characters, at most ${GRAPHQL_LIMITS.chars}`);
  if (variables != null && !isObject(variables)) return failed('variables must be an object');
  if (operationName != null && typeof operationName !== 'string') return failed('operationName must be a string');
  let document: DocumentNode;
  try {
    document = parse(query, { maxTokens: GRAPHQL_LIMITS.tokens });
  } catch (e) {
    if (e instanceof GraphQLError) return { errors: [e.toJSON()] };
    throw e;
  }
  const problem = sizeProblem(document);
  if (problem) return failed(problem);
  const invalid = validate(schema, document, undefined, { maxErrors: 10 });
  if (invalid.length) return { errors: invalid.map((e) => e.toJSON()) };
  const result = await execute({
    schema,
    document,
    rootValue: rootOf(store),
    variableValues: variables ?? undefined,
    operationName: operationName ?? undefined,
  });
  const internal = result.errors?.find((e) => e.originalError && !(e.originalError instanceof GraphQLError));
  if (internal) throw internal.originalError;
  return result.errors ? { data: result.data, errors: result.errors.map((e) => e.toJSON()) } : { data: result.data };
}
