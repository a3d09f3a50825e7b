// The SDK in viem's style: a small client (where the network is, which coordinator, whose wallet)
// and actions — plain functions of (client, arguments) — composed onto it with `extend`. The
// actions are the same code the `Verity.connect` client and the CLI run; a dApp imports only the
// ones it uses.
//
//   const client = createVerityClient({ transport: http({ mu, cu, gateway }), coordinator, token, account: wallet });
//   const { text, receipt } = await infer(client, { prompt: 'Once upon a time', maxTokens: 64 });
//   for await (const event of inferStream(client, { prompt })) …   // text, then the receipt
//   for await (const view of watchTask(client, { id: receipt.task })) …
//   const report = await verifyReceipt(client, { task: receipt.task, text, receipt, cacheDir });
//   const verity = client.extend(verityActions); await verity.getTask({ id });
import { VerityError } from '../errors.js';
import type { Receipt, TaskView } from '../processes/protocol.js';
import { openGatewayStore } from '../store/gateway-store.js';
import { walletAddress, type Wallet } from '../store/wallet.js';
import { Verity, type Balance, type InferOptions, type InferResult, type VerityClient as Connected } from './sdk.js';
import { checkAnswer, type VerifyReport } from './verify.js';

/** Where the AO units are: the MU and CU, and the gateway for reads of the store (receipts' traces, models). */
export interface Transport {
  readonly mu: string;
  readonly cu: string;
  readonly gateway?: string;
}

/** The units over HTTP. */
export const http = (urls: { mu: string; cu: string; gateway?: string }): Transport => ({ ...urls });

export interface Client {
  readonly transport: Transport;
  readonly coordinator: string;
  readonly token?: string;
  readonly account: Wallet;
  readonly address: string;
  /** The connection the actions share (one reader of the coordinator's results for all requests in flight). */
  readonly connection: Connected;
  /** This client with more members: `client.extend(verityActions)`. */
  extend<T extends object>(decorate: (client: Client) => T): Client & T;
}

export function createVerityClient(options: { transport: Transport; coordinator: string; token?: string; account: Wallet }): Client {
  const { transport, coordinator, token, account } = options;
  const connection = Verity.connect({ mu: transport.mu, cu: transport.cu, coordinator, token, wallet: account });
  const client: Client = {
    transport, coordinator, token, account, address: walletAddress(account), connection,
    extend: (decorate) => Object.assign(Object.create(client) as Client, decorate(client)),
  };
  return client;
}

/** A request: the prompt and its options. */
export type InferArgs = { prompt: string } & InferOptions;

/** Asks for a completion; resolves with the final result and its receipt (or the first answer with `wait: 'pending'`). */
export const infer = (client: Client, { prompt, ...options }: InferArgs): Promise<InferResult> => client.connection.infer(prompt, options);

/**
 * A completion as events: the answer's text as soon as the coordinator has it (the node's whole
 * text at once: nodes do not stream tokens to SDK clients yet — docs/api.md), then the final
 * result with its receipt. The text event is a node's claim; the final event is what was checked.
 */
export async function* inferStream(client: Client, args: InferArgs): AsyncGenerator<{ type: 'text'; text: string; task: string } | { type: 'final'; result: InferResult }> {
  const early: InferResult[] = [];
  let wake: (() => void) | null = null;
  const done = infer(client, {
    ...args,
    wait: 'final',
    onAnswer: (answer) => {
      early.push(answer);
      wake?.();
    },
  });
  let result: InferResult | null = null;
  void done.then((r) => ((result = r), wake?.()), () => wake?.());
  for (;;) {
    const answer = early.shift();
    if (answer) {
      yield { type: 'text', text: answer.text, task: answer.task };
      continue;
    }
    if (result) break;
    await new Promise<void>((resolve) => (wake = resolve));
    wake = null;
    if (!result && early.length === 0) await done; // the request failed: its error is thrown here
  }
  yield { type: 'final', result: result! };
}

/** The coordinator's view of a task. */
export const getTask = (client: Client, { id }: { id: string }): Promise<TaskView> => client.connection.task(id);

const ENDED = new Set<TaskView['status']>(['final', 'failed']);

/** The task's views as its status changes, until it ends (final or failed), read every `pollMs`; bounded by `timeoutMs`. */
export async function* watchTask(client: Client, { id, pollMs = 500, timeoutMs = 300_000 }: { id: string; pollMs?: number; timeoutMs?: number }): AsyncGenerator<TaskView> {
  const deadline = Date.now() + timeoutMs;
  let last: string | null = null;
  for (;;) {
    const view = await getTask(client, { id });
    const key = `${view.status} ${view.corrected ? 'corrected' : ''}`;
    if (key !== last) {
      last = key;
      yield view;
    }
    if (ENDED.has(view.status)) return;
    if (Date.now() > deadline) throw new VerityError(`task ${id} did not end within ${timeoutMs} ms (last status ${view.status})`, 'timeout');
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

/** Moves tokens from the account to its deposit at the coordinator; resolves once credited. */
export const deposit = (client: Client, { amount }: { amount: bigint }): Promise<void> => client.connection.deposit(amount);

export const getBalance = (client: Client, { account }: { account?: string } = {}): Promise<Balance> => client.connection.balance(account);

/**
 * Checks an answer without trusting anyone: the stored trace, a local re-run of its job (bit-exact:
 * an honest node's root is the only root) and the text (verify.ts checkAnswer). Needs the gateway.
 */
export async function verifyReceipt(client: Client, answer: { task: string; text: string; receipt: Receipt | null; cacheDir: string }): Promise<VerifyReport> {
  if (!client.transport.gateway) throw new VerityError('verifyReceipt reads the store: give the transport a gateway URL');
  const task = await getTask(client, { id: answer.task });
  const { report } = await checkAnswer(openGatewayStore(client.transport.gateway), answer, answer.cacheDir, () => {}, task.receipt?.commitment);
  return report;
}

/** Every action as a member: `client.extend(verityActions).infer({ prompt })`. */
export const verityActions = (client: Client) => ({
  infer: (args: InferArgs) => infer(client, args),
  inferStream: (args: InferArgs) => inferStream(client, args),
  getTask: (args: { id: string }) => getTask(client, args),
  watchTask: (args: { id: string; pollMs?: number; timeoutMs?: number }) => watchTask(client, args),
  deposit: (args: { amount: bigint }) => deposit(client, args),
  getBalance: (args?: { account?: string }) => getBalance(client, args),
  verifyReceipt: (answer: { task: string; text: string; receipt: Receipt | null; cacheDir: string }) => verifyReceipt(client, answer),
});
