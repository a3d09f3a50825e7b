// The Verity SDK: a typed client for the coordinator, over the AO units' HTTP protocol.
//
//   const verity = Verity.connect({ mu, cu, coordinator, token, wallet });
//   const { text, receipt } = await verity.infer('Once upon a time', { maxTokens: 150 });
//
// `infer` sends an `Infer` message, reads the coordinator's answer to it, then follows the
// coordinator's results until its Infer-Response to this wallet arrives. The CLI uses exactly this.
import { aoClient, expectReply, messagesTo, RefusedError, type AoClient } from '../ao/client.js';
import { fundCoordinator } from '../processes/calls.js';
import type { Receipt, TaskView } from '../processes/protocol.js';
import type { Wallet } from '../store/wallet.js';
import { walletAddress } from '../store/wallet.js';

export interface Connection {
  mu: string;
  cu: string;
  coordinator: string;
  /** The token process; needed for deposits. */
  token?: string;
  wallet: Wallet;
}

export interface InferOptions {
  model?: string;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number | string;
  redundancy?: number;
  nodes?: string[];
  reference?: string;
  /**
   * 'final' (default): resolve once the result is final — audited, or unchallenged through the
   * window, or settled by a dispute — with its receipt. 'pending': resolve with the first answer,
   * before anyone checked it (no receipt yet: the root is revealed later).
   */
  wait?: 'final' | 'pending';
  /**
   * Called once with the first answer (status 'pending', no receipt) while `infer` goes on waiting
   * for the final one: a dApp shows the text at once and the receipt when it comes.
   */
  onAnswer?: (answer: InferResult) => void;
  /** How long to wait (default 5 minutes). */
  timeoutMs?: number;
}

export type { Receipt, TaskView, DisputeView, Participant } from '../processes/protocol.js';

export interface InferResult {
  task: string;
  text: string;
  status: TaskView['status'];
  receipt: Receipt | null;
  usage: TaskView['usage'];
  /** A dispute replaced the first answer with this one. */
  corrected: boolean;
}

/** How far `task()` looks past the request for an ended task's last answer. */
const ARCHIVE_SCAN = { page: 200, pages: 50 };

export interface Balance {
  account: string;
  deposit: bigint;
  earnings: bigint;
  stake: bigint;
}

/** A refusal from the coordinator (its Code and Message), or a task that did not complete. */
export { RefusedError as VerityError };

export interface VerityClient {
  readonly address: string;
  infer(prompt: string, options?: InferOptions): Promise<InferResult>;
  task(id: string): Promise<TaskView>;
  balance(account?: string): Promise<Balance>;
  /** Moves tokens from the wallet to its deposit at the coordinator; resolves once credited. */
  deposit(amount: bigint): Promise<void>;
  models(): Promise<{ id: string; name: string; contextLength: number; tokenizerHash: string }[]>;
}


async function dryData(ao: AoClient, process: string, from: string, action: string, tags: { name: string; value: string }[] = []): Promise<{ tags: Record<string, string>; data: string }> {
  return expectReply(await ao.dryRun(process, { tags: [{ name: 'Action', value: action }, ...tags], from }), `${action}-Response`);
}

function connect(connection: Connection): VerityClient {
  const ao = aoClient(connection);
  const address = walletAddress(connection.wallet);
  const { coordinator } = connection;

  const client: VerityClient = {
    address,

    async infer(prompt, options = {}) {
      const xOptions: Record<string, unknown> = {};
      if (options.maxTokens !== undefined) xOptions.max_tokens = options.maxTokens;
      if (options.temperature !== undefined) xOptions.temperature = options.temperature;
      if (options.topP !== undefined) xOptions.top_p = options.topP;
      if (options.seed !== undefined) xOptions.seed = options.seed;
      const tags = [{ name: 'Action', value: 'Infer' }, { name: 'X-Options', value: JSON.stringify(xOptions) }];
      if (options.model) tags.push({ name: 'Model', value: options.model });
      if (options.reference) tags.push({ name: 'X-Reference', value: options.reference });
      if (options.redundancy !== undefined) tags.push({ name: 'Redundancy', value: String(options.redundancy) });
      if (options.nodes?.length) tags.push({ name: 'Nodes', value: options.nodes.join(',') });
      const id = await ao.message(coordinator, { tags, data: prompt });
      expectReply(await ao.result(coordinator, id), 'Infer-Accepted');
      // Everything the Infer leads to is in the results after its own slot: follow them from there
      // (one CU call fewer than reading the newest cursor before sending).
      const deadline = Date.now() + (options.timeoutMs ?? 300_000);
      let cursor: string | undefined;
      let answered = false;
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) throw new RefusedError(504, `no Infer-Response for task ${id} within ${options.timeoutMs ?? 300_000} ms`);
        const wait = Math.min(left, 10_000);
        const page = await ao.results(coordinator, cursor === undefined ? { after: id, wait } : { from: cursor, wait });
        cursor = page.edges.at(-1)?.cursor ?? cursor;
        for (const response of messagesTo(page, address, 'Infer-Response')) {
          if (response.tags.Task !== id) continue;
          if (response.tags.Code) throw new RefusedError(Number(response.tags.Code), `task ${id}: ${response.tags.Message ?? response.tags.Status}`);
          const task = JSON.parse(response.data) as TaskView;
          const result: InferResult = { task: id, text: task.result ?? '', status: task.status, receipt: task.receipt, usage: task.usage, corrected: task.corrected };
          if (response.tags.Status !== 'pending' || options.wait === 'pending') return result;
          if (!answered) {
            answered = true;
            options.onAnswer?.(result);
          }
        }
      }
    },

    async task(id) {
      try {
        return JSON.parse((await dryData(ao, coordinator, address, 'Task', [{ name: 'Task', value: id }])).data) as TaskView;
      } catch (e) {
        if (!(e instanceof RefusedError) || e.code !== 404) throw e;
      }
      // An ended task left the coordinator's state: its last Infer-Response, in a later result, holds all of it.
      let from: string | undefined;
      for (let page = 0; page < ARCHIVE_SCAN.pages; page++) {
        const results = await ao.results(coordinator, from === undefined ? { after: id, limit: ARCHIVE_SCAN.page } : { from, limit: ARCHIVE_SCAN.page });
        for (const { node } of results.edges) {
          for (const m of node.Messages) {
            const tags = Object.fromEntries(m.Tags.map((t) => [t.name, t.value]));
            if (tags.Action === 'Infer-Response' && tags.Task === id && (tags.Status === 'final' || tags.Status === 'failed')) return JSON.parse(m.Data ?? '') as TaskView;
          }
        }
        if (!results.pageInfo.hasNextPage) break;
        from = results.edges.at(-1)!.cursor;
      }
      throw new RefusedError(404, `task ${id} is neither live nor ended within ${ARCHIVE_SCAN.page * ARCHIVE_SCAN.pages} messages of its request`);
    },

    async balance(account = address) {
      const { tags } = await dryData(ao, coordinator, address, 'Balance', [{ name: 'Target', value: account }]);
      return { account, deposit: BigInt(tags.Balance ?? '0'), earnings: BigInt(tags.Earnings ?? '0'), stake: BigInt(tags.Stake ?? '0') };
    },

    async deposit(amount) {
      if (!connection.token) throw new RefusedError(400, 'deposits need the token process id');
      await fundCoordinator(ao, { token: connection.token, coordinator, account: address, amount, purpose: 'Deposit' });
    },

    async models() {
      return JSON.parse((await dryData(ao, coordinator, address, 'Models')).data) as Awaited<ReturnType<VerityClient['models']>>;
    },
  };
  return client;
}

export const Verity = { connect };
