// The Verity SDK: a typed client for the coordinator, over the AO units' HTTP protocol.
//
//   const verity = Verity.connect({ mu, cu, coordinator, token, wallet });
//   const { text, receipt } = await verity.infer('Once upon a time', { maxTokens: 150 });
//
// `infer` sends an `Infer` message, reads the coordinator's answer to it, then follows the
// coordinator's results until its Infer-Response to this wallet arrives. The CLI uses exactly this.
import { aoClient, expectReply, RefusedError, tagMap, type AoClient, type ResultsPage } from '../ao/client.js';
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
  /** Called with the task id once the coordinator accepted the request (before any answer). */
  onAccepted?: (task: string) => void;
  /**
   * Called with the node each time the task's lease is drawn before its first answer (a lease
   * that ran out is drawn again): the node generating this answer, whose token stream is worth
   * reading. Validators are drawn only once there is an answer, so they never show here.
   */
  onAssigned?: (node: string) => void;
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
  /** The Timestamp (ms) of the request's Infer message, as the coordinator recorded it. */
  createdAt?: number;
}

/**
 * Reads the coordinator's results after message `id`, page by page (at most `bound.pages` pages
 * of `bound.page`), until the log ends or `visit` says it has what it wanted.
 */
async function scanAfter(ao: AoClient, coordinator: string, id: string, bound: { page: number; pages: number }, visit: (page: ResultsPage) => boolean): Promise<void> {
  let query: { from?: string; after?: string } = { after: id };
  for (let page = 0; page < bound.pages; page++) {
    const results = await ao.results(coordinator, { ...query, limit: bound.page });
    if (visit(results) || !results.pageInfo.hasNextPage) return;
    query = { from: results.edges.at(-1)!.cursor };
  }
}

/** A request's Infer-Responses, as they come. */
interface ResponseListener {
  response(message: { tags: Record<string, string>; data: string }): void;
  /** A lease on the task was drawn for this node (Task-Assigned in the coordinator's results). */
  assigned(node: string): void;
  failed(error: Error): void;
}

/** How far a new listener reads back from its request before the shared reader takes over. */
const CATCH_UP = { page: 100, pages: 50 };

/**
 * One reader of the coordinator's results per client, shared by all of its requests in flight:
 * n requests waiting cost one waiting `results` call, not n (each call reads every result of the
 * coordinator, so n readers would cost the CU and this client n times the work).
 * With no reader running, a new listener starts one from its own request. Otherwise it reads once
 * what its request led to so far: what the reader read before the listener joined is no newer
 * than the end of that read, and all it reads after reaches the listener.
 */
function followResponses(ao: AoClient, coordinator: string, address: string): { listen(task: string, listener: ResponseListener): void; stop(task: string): void } {
  const listeners = new Map<string, ResponseListener>();
  let reading = false;
  const dispatch = (page: ResultsPage): void => {
    for (const { node } of page.edges) {
      for (const m of node.Messages) {
        const tags = tagMap(m);
        const listener = listeners.get(tags.Task);
        if (!listener) continue;
        if (tags.Action === 'Infer-Response' && m.Target === address) listener.response({ tags, data: m.Data ?? '' });
        else if (tags.Action === 'Task-Assigned' && m.Target) listener.assigned(m.Target);
      }
    }
  };
  async function read(task: string): Promise<void> {
    reading = true;
    let position: { from?: string; after?: string } = { after: task };
    try {
      while (listeners.size > 0) {
        const page = await ao.results(coordinator, { ...position, wait: 10_000 });
        const last = page.edges.at(-1)?.cursor;
        if (last) position = { from: last };
        dispatch(page);
      }
    } catch (e) {
      for (const listener of [...listeners.values()]) listener.failed(e as Error);
    } finally {
      reading = false;
    }
  }
  return {
    listen(task, listener) {
      listeners.set(task, listener);
      if (!reading) void read(task);
      else
        scanAfter(ao, coordinator, task, CATCH_UP, (page) => {
          dispatch(page);
          return !listeners.has(task);
        }).catch((e: Error) => listeners.get(task)?.failed(e));
    },
    stop(task) {
      listeners.delete(task);
    },
  };
}

/** How far `task()` looks past the request for an ended task's last answer. */
const ARCHIVE_SCAN = { page: 200, pages: 50 };

export interface Balance {
  account: string;
  deposit: bigint;
  earnings: bigint;
  stake: bigint;
}

/** A refusal from the coordinator (its Code and Message), or a task that did not complete; like every error a caller can act on, a VerityError. */
export { RefusedError };
export { VerityError } from '../errors.js';
export type { Wallet } from '../store/wallet.js';

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
  const responses = followResponses(ao, coordinator, address);

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
      const accepted = await ao.result(coordinator, id);
      expectReply(accepted, 'Infer-Accepted');
      options.onAccepted?.(id);
      let answered = false;
      const assigned = (node: string): void => {
        if (!answered) options.onAssigned?.(node);
      };
      // A node free at once is drawn by the Infer itself, in the result just read (beside, maybe, a canary's lease).
      for (const m of accepted.Messages) {
        const t = tagMap(m);
        if (m.Target && t.Action === 'Task-Assigned' && t.Task === id) assigned(m.Target);
      }
      const timeoutMs = options.timeoutMs ?? 300_000;
      return new Promise<InferResult>((resolve, reject) => {
        const timer = setTimeout(() => settle(() => reject(new RefusedError(504, `no Infer-Response for task ${id} within ${timeoutMs} ms`))), timeoutMs);
        const settle = (how: () => void): void => {
          clearTimeout(timer);
          responses.stop(id);
          how();
        };
        responses.listen(id, {
          response(response) {
            if (response.tags.Code) return settle(() => reject(new RefusedError(Number(response.tags.Code), `task ${id}: ${response.tags.Message ?? response.tags.Status}`)));
            const task = JSON.parse(response.data) as TaskView;
            const result: InferResult = { task: id, text: task.result ?? '', status: task.status, receipt: task.receipt, usage: task.usage, corrected: task.corrected, createdAt: task.createdAt };
            if (response.tags.Status !== 'pending' || options.wait === 'pending') return settle(() => resolve(result));
            if (!answered) {
              answered = true;
              options.onAnswer?.(result);
            }
          },
          assigned,
          failed: (e) => settle(() => reject(e)),
        });
      });
    },

    async task(id) {
      try {
        return JSON.parse((await dryData(ao, coordinator, address, 'Task', [{ name: 'Task', value: id }])).data) as TaskView;
      } catch (e) {
        if (!(e instanceof RefusedError) || e.code !== 404) throw e;
      }
      // An ended task left the coordinator's state: its last Infer-Response, in a later result, holds all of it.
      let ended: TaskView | null = null;
      await scanAfter(ao, coordinator, id, ARCHIVE_SCAN, (page) => {
        for (const { node } of page.edges) {
          for (const m of node.Messages) {
            const tags = tagMap(m);
            if (!ended && tags.Action === 'Infer-Response' && tags.Task === id && (tags.Status === 'final' || tags.Status === 'failed')) ended = JSON.parse(m.Data ?? '') as TaskView;
          }
          if (ended) return true;
        }
        return false;
      });
      if (ended) return ended;
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

// The same in viem's style: a client and composable actions (actions.ts).
export { createVerityClient, deposit, getBalance, getTask, http, infer, inferStream, verifyReceipt, verityActions, watchTask, type Client, type InferArgs, type Transport } from './actions.js';
