// The Verity SDK: a typed client for the coordinator, over the AO units' HTTP protocol.
//
//   const verity = Verity.connect({ mu, cu, coordinator, token, wallet });
//   const { text, receipt } = await verity.infer('Once upon a time', { maxTokens: 150 });
//
// `infer` sends an `Infer` message, reads the coordinator's answer to it, then follows the
// coordinator's results until its Infer-Response to this wallet arrives. The CLI uses exactly this.
import { aoClient, expectReply, RefusedError, waitForMessage, type AoClient } from '../ao/client.js';
import { fundCoordinator } from '../processes/calls.js';
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
  /** How long to wait for the task to end (default 5 minutes). */
  timeoutMs?: number;
}

export interface Receipt {
  task: string;
  model: string;
  commitment: string;
  traceRoot: string;
  node: string;
  /** The id of the node's Submit-Result message. */
  result: string;
  /** The id of the stored trace item. */
  trace: string;
}

export interface TaskView {
  task: string;
  reference: string;
  status: 'assigned' | 'completed' | 'mismatch' | 'failed';
  model: string;
  options: { max_tokens: number; temperature: number; top_p: number; seed: string };
  result: string | null;
  tokens: number[] | null;
  usage: { prompt_tokens: number; completion_tokens: number };
  receipt: Receipt | null;
  results: { node: string; traceRoot: string; trace: string; result: string }[];
  leases: { node: string; start: number; end: number; status: string }[];
  createdAt: number;
  endedAt: number | null;
}

export interface InferResult {
  task: string;
  text: string;
  status: TaskView['status'];
  receipt: Receipt | null;
  usage: TaskView['usage'];
}

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
      // Follow the coordinator's results from here on: its Infer-Response to this wallet ends the wait.
      const from = await ao.latest(coordinator);
      const id = await ao.message(coordinator, { tags, data: prompt });
      expectReply(await ao.result(coordinator, id), 'Infer-Accepted');
      const response = await waitForMessage(ao, coordinator, { from, target: address, action: 'Infer-Response', match: (t) => t.Task === id, timeoutMs: options.timeoutMs ?? 300_000 });
      if (response.tags.Code) throw new RefusedError(Number(response.tags.Code), `task ${id}: ${response.tags.Message ?? response.tags.Status}`);
      const task = JSON.parse(response.data) as TaskView;
      return { task: id, text: task.result ?? '', status: task.status, receipt: task.receipt, usage: task.usage };
    },

    async task(id) {
      return JSON.parse((await dryData(ao, coordinator, address, 'Task', [{ name: 'Task', value: id }])).data) as TaskView;
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
