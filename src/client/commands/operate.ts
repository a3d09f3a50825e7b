// verity network init | params, verity model register, verity token balance | transfer | mint,
// verity deposit: setting up and running a network whose units are on other machines, without
// writing code (docs/across-machines.md). `network init` writes network.json, which every other
// network command reads with --network <file> (or VERITY_NETWORK), as it reads a devnet's folder.
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { InvalidArgumentError } from 'commander';
import { AoClientError, RefusedError, aoClient, expectReply, type AoClient } from '../../ao/client.js';
import { PARAM_TAGS } from '../../processes/coordinator.js';
import { publishProcessModule } from '../../processes/index.js';
import type { Tag } from '../../store/items.js';
import { openGatewayStore } from '../../store/gateway-store.js';
import { walletAddress, walletSigner, type Wallet } from '../../store/wallet.js';
import { Verity } from '../sdk.js';
import { need, networkOf, walletOf, type NetworkFile, type NetworkFlags } from './network.js';
import { schedulerOf } from './process.js';

/** How long a command waits for the CU to have a message's result. */
const RESULT_WAIT_MS = 60_000;
const ADDRESS = /^[A-Za-z0-9_-]{43}$/;
const env = (name: string): string | undefined => process.env[`VERITY_${name}`] || undefined;

function print(flags: { json?: boolean }, json: object, text: string): void {
  process.stdout.write(flags.json ? `${JSON.stringify(json)}\n` : `${text}\n`);
}

function url(name: string, value: string | undefined): string {
  if (value === undefined) throw new InvalidArgumentError(`no ${name}: give --${name} <url> or VERITY_${name.toUpperCase()}`);
  try {
    return new URL(value).origin;
  } catch {
    throw new InvalidArgumentError(`--${name} ${value} is not a URL`);
  }
}

function amount(what: string, value: string): bigint {
  if (!/^\d{1,38}$/.test(value) || BigInt(value) === 0n) throw new InvalidArgumentError(`${what} must be a whole number of tokens above 0 (got ${value})`);
  return BigInt(value);
}

function address(what: string, value: string): string {
  if (!ADDRESS.test(value)) throw new InvalidArgumentError(`${what} ${value} is not an address (43 base64url characters: verity wallet show prints yours)`);
  return value;
}

/** A message's reply with `action`, once the CU has its result; a refusal as one line. */
async function call(ao: AoClient, pid: string, tags: Tag[], action: string, what: string): Promise<{ tags: Record<string, string>; data: string }> {
  let id: string;
  try {
    id = await ao.message(pid, { tags });
  } catch (e) {
    if (e instanceof AoClientError && (e.status === 404 || e.status === 400)) throw new RefusedError(404, `${what} ${pid} is not known on this network (${e.message})`);
    throw e;
  }
  const deadline = Date.now() + RESULT_WAIT_MS;
  for (;;) {
    try {
      return expectReply(await ao.result(pid, id), action);
    } catch (e) {
      if (!(e instanceof AoClientError) || e.status !== 404 || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** A read-only question (a dry run as the wallet). */
async function ask(ao: AoClient, pid: string, tags: Tag[], action: string, from: string, what: string): Promise<{ tags: Record<string, string>; data: string }> {
  try {
    return expectReply(await ao.dryRun(pid, { tags, from }), action);
  } catch (e) {
    if (e instanceof AoClientError && (e.status === 404 || e.status === 400)) throw new RefusedError(404, `${what} ${pid} is not known on this network (${e.message})`);
    throw e;
  }
}

function connect(flags: NetworkFlags): { ao: AoClient; wallet: Wallet; net: ReturnType<typeof networkOf> } {
  const net = networkOf(flags);
  const wallet = walletOf(flags, net.dir);
  return { ao: aoClient({ mu: need(net.mu, 'mu'), cu: need(net.cu, 'cu'), wallet }), wallet, net };
}

const PARAM_NAMES = PARAM_TAGS.map(([name]) => name);

/** `Name=value` pairs as coordinator parameter tags, the names checked. */
function paramTags(values: string[] = []): Tag[] {
  return values.map((kv) => {
    const at = kv.indexOf('=');
    if (at <= 0 || at === kv.length - 1) throw new InvalidArgumentError(`${kv}: use Name=value (e.g. Challenge-Window-Ms=3000)`);
    const name = kv.slice(0, at);
    if (!PARAM_NAMES.includes(name)) throw new InvalidArgumentError(`${name} is not a coordinator parameter: one of ${PARAM_NAMES.join(', ')}`);
    return { name, value: kv.slice(at + 1) };
  });
}

/** A MU's wallet address (the processes' Authority): GET <mu>/info. */
async function messengerOf(mu: string): Promise<string> {
  let res: Response;
  try {
    res = await fetch(`${mu}/info`);
  } catch (e) {
    throw new AoClientError(`MU: cannot reach ${mu}: ${(e as Error).message}`);
  }
  const body = (await res.json().catch(() => null)) as { address?: unknown } | null;
  if (!res.ok || typeof body?.address !== 'string') throw new AoClientError(`MU at ${mu} gave no address (${res.status}): pass --authority <the MU's address>`);
  return body.address;
}

export interface InitFlags {
  mu?: string;
  cu?: string;
  gateway?: string;
  su?: string;
  scheduler?: string;
  authority?: string;
  wallet?: string;
  out?: string;
  param?: string[];
  supply: string;
  force?: boolean;
  json?: boolean;
}

export async function networkInitCommand(flags: InitFlags): Promise<void> {
  const mu = url('mu', flags.mu ?? env('MU'));
  const cu = url('cu', flags.cu ?? env('CU'));
  const gateway = url('gateway', flags.gateway ?? env('GATEWAY'));
  const su = flags.su ?? env('SU');
  const out = flags.out ?? 'network.json';
  if (existsSync(out) && !flags.force) throw new InvalidArgumentError(`${out} exists (a network set up already?): use --out <file> for a new one, or --force to replace it`);
  const supply = amount('--supply', flags.supply);
  const params = paramTags(flags.param);
  const wallet = walletOf({ wallet: flags.wallet }, undefined);
  const scheduler = await schedulerOf({ su: su === undefined ? undefined : url('su', su), scheduler: flags.scheduler }, undefined);
  const authority = flags.authority ?? (await messengerOf(mu));
  const owner = walletAddress(wallet);
  const ao = aoClient({ mu, cu, wallet });
  const store = openGatewayStore(gateway);
  const log = (line: string): void => void (flags.json ? undefined : process.stderr.write(`${line}\n`));
  try {
    const signer = walletSigner(wallet);
    log(`publishing the token and coordinator modules through ${gateway}`);
    const tokenModule = await publishProcessModule(store, signer, 'token');
    const coordinatorModule = await publishProcessModule(store, signer, 'coordinator');
    const auth = { name: 'Authority', value: authority };
    log(`spawning them on scheduler ${scheduler}`);
    const token = await ao.spawn(tokenModule, scheduler, { tags: [{ name: 'Name', value: 'Verity' }, { name: 'Ticker', value: 'VRT' }, auth] });
    const coordinator = await ao.spawn(coordinatorModule, scheduler, { tags: [{ name: 'Token', value: token }, ...params, auth] });
    // The coordinator refuses bad parameters when it boots: ask it for them, so that a refusal shows here.
    const got = await ask(ao, coordinator, [{ name: 'Action', value: 'Params' }], 'Params-Response', owner, 'coordinator');
    log(`minting ${supply} tokens to the owner ${owner}`);
    await call(ao, token, [{ name: 'Action', value: 'Mint' }, { name: 'Quantity', value: supply.toString() }], 'Mint-Response', 'token');
    const info: NetworkFile & { owner: string; supply: string } = { mu, cu, gateway, ...(su === undefined ? {} : { su: url('su', su) }), token, coordinator, scheduler, owner, supply: supply.toString() };
    mkdirSync(dirname(resolve(out)), { recursive: true });
    writeFileSync(`${out}.tmp`, `${JSON.stringify(info, null, 1)}\n`);
    renameSync(`${out}.tmp`, out);
    print(flags, { ...info, params: JSON.parse(got.data) as object, file: out }, `token ${token}\ncoordinator ${coordinator}\nwritten to ${out}: use --network ${out} with the other commands`);
  } finally {
    await store.close();
  }
}

export interface ParamsFlags extends NetworkFlags {
  set?: string[];
}

export async function networkParamsCommand(flags: ParamsFlags): Promise<void> {
  const { ao, wallet, net } = connect(flags);
  const coordinator = need(net.coordinator, 'coordinator');
  const byKey = new Map(PARAM_TAGS.map(([name, key]) => [key as string, name]));
  const named = (params: Record<string, unknown>): Record<string, string> => Object.fromEntries(Object.entries(params).map(([k, v]) => [byKey.get(k) ?? k, String(v)]));
  if (flags.set !== undefined && flags.set.length > 0) {
    const tags = paramTags(flags.set);
    const info = await ask(ao, coordinator, [{ name: 'Action', value: 'Info' }], 'Info-Response', walletAddress(wallet), 'coordinator');
    if (info.tags.Owner !== walletAddress(wallet)) throw new RefusedError(403, `only the coordinator's owner (${info.tags.Owner}) sets parameters: pass --wallet <the owner's wallet>`);
    const r = await call(ao, coordinator, [{ name: 'Action', value: 'Set-Params' }, ...tags], 'Set-Params-Response', 'coordinator');
    const params = named(JSON.parse(r.data) as Record<string, unknown>);
    print(flags, { coordinator, set: Object.fromEntries(tags.map((t) => [t.name, t.value])), params }, `set ${tags.map((t) => `${t.name}=${t.value}`).join(' ')}\n${lines(params)}`);
    return;
  }
  const r = await ask(ao, coordinator, [{ name: 'Action', value: 'Info' }], 'Info-Response', walletAddress(wallet), 'coordinator');
  const data = JSON.parse(r.data) as Record<string, unknown> & { token: string; owner: string; models: number; nodes: number; openTasks: number; totals: unknown };
  const { token, owner, models, nodes, openTasks, totals, ...rest } = data;
  const params = named(rest);
  print(flags, { coordinator, token, owner, models, nodes, openTasks, totals, params }, `coordinator ${coordinator} (owner ${owner}, token ${token}): ${models} models, ${nodes} nodes, ${openTasks} open tasks\n${lines(params)}`);
}

const lines = (params: Record<string, string>): string => Object.entries(params).map(([k, v]) => `  ${k} = ${v}`).join('\n');

export interface RegisterFlags extends NetworkFlags {
  manifest?: string;
}

export async function modelRegisterCommand(modelId: string, flags: RegisterFlags): Promise<void> {
  if (!/^[0-9a-f]{64}$/.test(modelId)) throw new InvalidArgumentError(`${modelId} is not a model id (64 hex characters: verity model publish prints it)`);
  const { ao, net } = connect(flags);
  const coordinator = need(net.coordinator, 'coordinator');
  let manifest = flags.manifest;
  if (manifest === undefined) {
    const store = openGatewayStore(need(net.gateway, 'gateway'));
    try {
      const page = await store.query({ tags: [{ name: 'Type', values: ['Model-Manifest'] }, { name: 'Model-Id', values: [modelId] }], first: 1 });
      manifest = page.edges[0]?.node.id;
    } finally {
      await store.close();
    }
    if (manifest === undefined) throw new RefusedError(404, `no manifest for model ${modelId} at ${net.gateway}: publish it first with verity model publish --gateway ${net.gateway}`);
  }
  const tags = [{ name: 'Action', value: 'Register-Model' }, { name: 'Model', value: modelId }, { name: 'Manifest', value: manifest }];
  const r = await call(ao, coordinator, tags, 'Register-Model-Response', 'coordinator');
  const entry = JSON.parse(r.data) as { name: string; contextLength: number };
  print(flags, { coordinator, model: entry }, `registered ${modelId} (${entry.name}, manifest ${manifest}) at coordinator ${coordinator}`);
}

export async function tokenBalanceCommand(account: string | undefined, flags: NetworkFlags): Promise<void> {
  const { ao, wallet, net } = connect(flags);
  const token = need(net.token, 'token');
  const who = account === undefined ? walletAddress(wallet) : address('account', account);
  const r = await ask(ao, token, [{ name: 'Action', value: 'Balance' }, { name: 'Target', value: who }], 'Balance-Response', walletAddress(wallet), 'token');
  const out: Record<string, string> = { account: who, balance: r.tags.Balance ?? '0' };
  let text = `${out.balance} ${r.tags.Ticker ?? ''}`.trim();
  // At the coordinator too, when the network has one: a deposit, earnings and a stake are tokens held there.
  if (net.coordinator !== undefined) {
    const c = await ask(ao, net.coordinator, [{ name: 'Action', value: 'Balance' }, { name: 'Target', value: who }], 'Balance-Response', walletAddress(wallet), 'coordinator');
    Object.assign(out, { deposit: c.tags.Balance ?? '0', earnings: c.tags.Earnings ?? '0', stake: c.tags.Stake ?? '0', locked: c.tags.Locked ?? '0' });
    text += `; at the coordinator: deposit ${out.deposit}, earnings ${out.earnings}, stake ${out.stake} (${out.locked} locked)`;
  }
  print(flags, out, `${who}: ${text}`);
}

export async function tokenTransferCommand(to: string, quantity: string, flags: NetworkFlags): Promise<void> {
  const recipient = address('recipient', to);
  const q = amount('the amount', quantity);
  const { ao, wallet, net } = connect(flags);
  const token = need(net.token, 'token');
  const have = await ask(ao, token, [{ name: 'Action', value: 'Balance' }], 'Balance-Response', walletAddress(wallet), 'token');
  if (BigInt(have.tags.Balance ?? '0') < q) throw new RefusedError(402, `${walletAddress(wallet)} holds ${have.tags.Balance ?? '0'}, less than ${q}: ask the owner for tokens (verity token transfer or mint)`);
  const r = await call(ao, token, [{ name: 'Action', value: 'Transfer' }, { name: 'Recipient', value: recipient }, { name: 'Quantity', value: q.toString() }], 'Debit-Notice', 'token');
  print(flags, { from: walletAddress(wallet), to: recipient, quantity: q.toString(), message: r.tags.Reference }, `sent ${q} to ${recipient}`);
}

export async function tokenMintCommand(to: string, quantity: string, flags: NetworkFlags): Promise<void> {
  const recipient = address('recipient', to);
  const q = amount('the amount', quantity);
  const { ao, wallet, net } = connect(flags);
  const token = need(net.token, 'token');
  const info = await ask(ao, token, [{ name: 'Action', value: 'Info' }], 'Info-Response', walletAddress(wallet), 'token');
  if (info.tags.Owner !== undefined && info.tags.Owner !== walletAddress(wallet)) throw new RefusedError(403, `only the token's owner (${info.tags.Owner}) mints: pass --wallet <the owner's wallet>, or ask them for a transfer`);
  let r: { tags: Record<string, string> };
  try {
    r = await call(ao, token, [{ name: 'Action', value: 'Mint' }, { name: 'Recipient', value: recipient }, { name: 'Quantity', value: q.toString() }], 'Mint-Response', 'token');
  } catch (e) {
    if (e instanceof RefusedError && /unknown Action/.test(e.message)) throw new RefusedError(400, `token ${token} has no Mint: its supply is fixed; use verity token transfer`);
    throw e;
  }
  print(flags, { to: recipient, quantity: r.tags.Quantity ?? q.toString() }, `minted ${q} to ${recipient}`);
}

export async function depositCommand(quantity: string, flags: NetworkFlags): Promise<void> {
  const q = amount('the amount', quantity);
  const net = networkOf(flags);
  const wallet = walletOf(flags, net.dir);
  const verity = Verity.connect({ mu: need(net.mu, 'mu'), cu: need(net.cu, 'cu'), coordinator: need(net.coordinator, 'coordinator'), token: need(net.token, 'token'), wallet });
  await verity.deposit(q);
  const balance = await verity.balance();
  print(flags, { account: balance.account, deposited: q.toString(), deposit: balance.deposit.toString() }, `deposited ${q}: ${balance.account} has ${balance.deposit} at the coordinator`);
}
