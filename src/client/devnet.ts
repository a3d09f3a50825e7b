// The embedded default: a whole Verity network in one process with its state under one folder —
// the store and gateway, SU, CU and MU, the token and coordinator processes, the bundled
// stories260K model published and registered, and worker nodes funded, staked and running. A second
// start on the same folder resumes it (the processes' logs, the nodes' tasks, the model).
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { aoClient, expectReply, RefusedError, type AoClient } from '../ao/client.js';
import type { Extensions } from '../ao/runtime.js';
import { startUnits, unitWallet, type RunningUnits } from '../ao/units.js';
import { loadModel } from '../engine/index.js';
import { startNode, type RunningNode, type StrategyOptions } from '../node/index.js';
import type { Behaviour } from '../node/behaviour.js';
import { publishProcessModule, verityExtensions } from '../processes/index.js';
import { publishModel } from '../store/models.js';
import type { Store } from '../store/store.js';
import { readWallet, walletAddress, walletSigner, writeWallet, generateWallet, type Wallet } from '../store/wallet.js';
import { startApi, type ApiLimits, type RunningApi } from './api.js';
import { Verity } from './sdk.js';

/** The model every devnet serves: llama2.c's stories260K from the shared models folder. */
export const BUNDLED_MODEL = {
  path: fileURLToPath(new URL('../../../../shared/models/stories260K.bin', import.meta.url)),
  tokenizer: fileURLToPath(new URL('../../../../shared/models/tok512.bin', import.meta.url)),
  name: 'stories260K',
};

export interface DevnetOptions {
  dir: string;
  nodes?: number;
  /** First of four ports (gateway, SU, CU, MU); 0 or absent: any free ones. */
  port?: number;
  host?: string;
  /** Coordinator parameters (spawn tags) for a new devnet. */
  leaseMs?: number;
  /** More coordinator spawn tags for a new devnet (docs/network.md "Verification": Audit-Ppm, Slash, …). */
  params?: Record<string, string>;
  /** Per node (by index), a strategy of src/node/strategies.ts; default honest. */
  strategies?: (NodeSpec | undefined)[];
  /**
   * Each node's stake (default DEVNET_STAKE) and leases at once (default 1). A lease locks Slash of
   * the stake until its task is final, so a node holds at most stake / Slash tasks in their
   * challenge windows: throughput past that needs more stake.
   */
  stake?: bigint;
  capacity?: number;
  /** Nodes' pause after a failed round, and how often they send heartbeats (see NodeOptions). */
  pollMs?: number;
  heartbeatMs?: number;
  log?: (line: string) => void;
  /**
   * Also serve the OpenAI-compatible API (docs/api.md) on this port (0: any free one), as the
   * devnet user in local mode unless keys are given; its URL goes into devnet.json as `api`.
   */
  api?: { port?: number; host?: string; keys?: Map<string, Wallet>; limits?: Partial<ApiLimits>; timeoutMs?: number };
  /** The CU's host extensions, made from the units' store (default verityExtensions: the coordinator's and aos-llama's; `npm run sim` wraps it to time host.step). */
  extensions?: (store: Store) => Extensions;
  /**
   * Nodes serve the token stream of their leases (node/stream.ts) on 127.0.0.1, any free port,
   * and announce it (Stream-Url); default: when the API is served, which relays it.
   */
  streams?: boolean;
}

/** What `verity devnet --json` prints and `--devnet <dir>` reads: where the network is. */
export interface DevnetInfo {
  gateway: string;
  su: string;
  cu: string;
  mu: string;
  /** The HyperBEAM-style interface (aoconnect's mainnet mode); absent in a devnet.json written before it. */
  hyperbeam?: string;
  token: string;
  coordinator: string;
  model: string;
  /** The OpenAI-compatible API's base URL (…/v1), when the devnet serves it. */
  api?: string;
}

export interface Devnet {
  info: DevnetInfo;
  units: RunningUnits;
  nodes: RunningNode[];
  /** The wallet `verity infer --devnet <dir>` uses: `<dir>/wallet.json`, funded with a deposit. */
  user: Wallet;
  /** The OpenAI-compatible API, when asked for (DevnetOptions.api). */
  api?: RunningApi;
  close(): Promise<void>;
}

/** How one devnet node behaves (tests and `npm run sim` run cheating ones). */
export interface NodeSpec {
  /** A strategy's name, or (tests) a Behaviour of its own. */
  strategy?: string | Behaviour;
  strategyOptions?: StrategyOptions;
  watchPpm?: number;
  /** The memory it declares (Register-Node Memory): the coordinator leases it no bigger model. */
  memory?: number;
}

export const DEVNET_FILE = 'devnet.json';
/** Each devnet node's stake: several leases' locks at the default Slash (6000). */
export const DEVNET_STAKE = 30_000n;
const NODE_FUNDS = 100_000n;
const USER_FUNDS = 10_000_000n;
const USER_DEPOSIT = 1_000_000n;
/**
 * The devnet's own defaults: the production rule with a short challenge window and dispute clocks,
 * so that a result is final in seconds.
 */
export const DEVNET_PARAMS: Record<string, string> = { 'Challenge-Window-Ms': '3000', 'Reveal-Ms': '20000', 'Clock-Ms': '20000' };

/** Reads `<dir>/devnet.json`, written by a running devnet. */
export function readDevnetInfo(dir: string): DevnetInfo {
  const path = join(dir, DEVNET_FILE);
  if (!existsSync(path)) throw new RefusedError(404, `no devnet at ${dir}: start one with verity devnet --dir ${dir}`);
  return JSON.parse(readFileSync(path, 'utf8')) as DevnetInfo;
}

function writeJson(path: string, value: unknown): void {
  writeFileSync(`${path}.tmp`, `${JSON.stringify(value, null, 1)}\n`);
  renameSync(`${path}.tmp`, path);
}

async function userWallet(dir: string): Promise<Wallet> {
  const path = join(dir, 'wallet.json');
  if (existsSync(path)) return readWallet(path);
  const wallet = await generateWallet('ed25519');
  writeWallet(path, wallet);
  return wallet;
}

/** Sends a message and returns the tags of the reply with `action`, or throws the refusal. */
async function ask(ao: AoClient, process: string, tags: { name: string; value: string }[], action: string): Promise<Record<string, string>> {
  return expectReply(await ao.result(process, await ao.message(process, { tags })), action).tags;
}

/** The running units a network is set up on: embedded (startUnits) or separate processes. */
export interface UnitsAt {
  store: Store;
  urls: { mu: string; cu: string };
  /** The SU wallet's address (processes are spawned on it). */
  scheduler: string;
  /** The MU wallet's address: the processes trust it to say which process a message comes from. */
  messenger: string;
}

export interface NetworkSetup {
  owner: Wallet;
  /** Funded with tokens and a deposit at the coordinator. */
  users: Wallet[];
  /** Funded with tokens to stake (NODE_FUNDS each, or nodeFunds). */
  nodes: Wallet[];
  nodeFunds?: bigint;
  leaseMs?: number;
  /** Coordinator spawn tags over DEVNET_PARAMS. */
  params?: Record<string, string>;
  log?: (line: string) => void;
}

/**
 * Spawns the token and coordinator, publishes and registers the bundled model, mints and hands out
 * tokens, and deposits for the users: a new network, ready for nodes.
 */
export async function setupNetwork(units: UnitsAt, setup: NetworkSetup): Promise<Pick<DevnetInfo, 'token' | 'coordinator' | 'model'>> {
  const log = setup.log ?? (() => {});
  const ownerAo = aoClient({ ...units.urls, wallet: setup.owner });
  const authority = { name: 'Authority', value: units.messenger };
  const signer = walletSigner(setup.owner);
  log('spawning the token and coordinator processes');
  const tokenModule = await publishProcessModule(units.store, signer, 'token');
  const coordinatorModule = await publishProcessModule(units.store, signer, 'coordinator');
  const token = await ownerAo.spawn(tokenModule, units.scheduler, { tags: [{ name: 'Name', value: 'Verity' }, { name: 'Ticker', value: 'VRT' }, authority] });
  const params = { ...DEVNET_PARAMS, ...(setup.leaseMs === undefined ? {} : { 'Lease-Ms': String(setup.leaseMs) }), ...setup.params };
  const coordinatorTags = [{ name: 'Token', value: token }, ...Object.entries(params).map(([name, value]) => ({ name, value })), authority];
  const coordinator = await ownerAo.spawn(coordinatorModule, units.scheduler, { tags: coordinatorTags });
  log(`publishing ${BUNDLED_MODEL.name} and registering it`);
  const published = await publishModel(units.store, signer, loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer }), BUNDLED_MODEL.name);
  const register = [{ name: 'Action', value: 'Register-Model' }, { name: 'Model', value: published.modelId }, { name: 'Manifest', value: published.manifestId }];
  await ask(ownerAo, coordinator, register, 'Register-Model-Response');
  log('funding the nodes and users');
  // The owner pays for canaries (known jobs asked again) from its own deposit.
  const grants = [...setup.nodes.map((w) => [w, setup.nodeFunds ?? NODE_FUNDS] as const), ...[...setup.users, setup.owner].map((w) => [w, USER_FUNDS] as const)];
  const total = grants.reduce((sum, [, amount]) => sum + amount, 0n);
  await ask(ownerAo, token, [{ name: 'Action', value: 'Mint' }, { name: 'Quantity', value: total.toString() }], 'Mint-Response');
  for (const [wallet, amount] of grants) {
    await ask(ownerAo, token, [{ name: 'Action', value: 'Transfer' }, { name: 'Recipient', value: walletAddress(wallet) }, { name: 'Quantity', value: amount.toString() }], 'Debit-Notice');
  }
  for (const user of [...setup.users, setup.owner]) await Verity.connect({ ...units.urls, coordinator, token, wallet: user }).deposit(USER_DEPOSIT);
  return { token, coordinator, model: published.modelId };
}

export async function startDevnet(options: DevnetOptions): Promise<Devnet> {
  const { dir } = options;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const count = options.nodes ?? 3;
  const base = options.port ?? 0;
  const step = (n: number, what: string): void => log(`devnet [${n}/4] ${what}`);
  const stake = options.stake ?? DEVNET_STAKE;

  step(1, `starting the store, gateway, SU, CU, MU and HyperBEAM interface in ${dir}`);
  const units = await startUnits({
    dir,
    host: options.host,
    ports: base === 0 ? {} : { gateway: base, su: base + 1, cu: base + 2, mu: base + 3, hyperbeam: base + 4 },
    extensions: options.extensions ?? verityExtensions,
  });
  const nodes: RunningNode[] = [];
  let api: RunningApi | undefined;
  try {
    const wallets = join(dir, 'wallets');
    const user = await userWallet(dir);
    const nodeWallets = await Promise.all(Array.from({ length: count }, (_, i) => unitWallet(wallets, `node-${i + 1}`)));
    const saved = join(dir, 'processes.json');
    let ids: Pick<DevnetInfo, 'token' | 'coordinator' | 'model'>;
    if (existsSync(saved)) {
      ids = JSON.parse(readFileSync(saved, 'utf8')) as typeof ids;
      step(2, `resuming token ${ids.token.slice(0, 8)}…, coordinator ${ids.coordinator.slice(0, 8)}…, model ${ids.model.slice(0, 12)}…`);
    } else {
      step(2, 'setting up the network');
      const at: UnitsAt = { store: units.store, urls: units.urls, scheduler: units.scheduler.address, messenger: units.messenger.address };
      ids = await setupNetwork(at, { owner: await unitWallet(wallets, 'owner'), users: [user], nodes: nodeWallets, leaseMs: options.leaseMs, params: options.params, nodeFunds: stake > NODE_FUNDS ? stake : undefined, log: (line) => log(`devnet [2/4] ${line}`) });
      writeJson(saved, ids);
    }

    step(3, `starting ${count} nodes (stake ${stake} each)`);
    const network = { mu: units.urls.mu, cu: units.urls.cu, coordinator: ids.coordinator, token: ids.token };
    for (const [i, wallet] of nodeWallets.entries()) {
      nodes.push(
        await startNode({
          dir: join(dir, `node-${i + 1}`), wallet, store: units.store, network, stake, capacity: options.capacity, pollMs: options.pollMs, heartbeatMs: options.heartbeatMs, log,
          ...((options.streams ?? options.api !== undefined) ? { streamPort: 0, streamHost: '127.0.0.1' } : {}),
          ...options.strategies?.[i],
        }),
      );
    }

    const info: DevnetInfo = { ...units.urls, ...ids };
    if (options.api) {
      const a = options.api;
      api = await startApi({ ...units.urls, ...ids, wallet: user, store: units.store, host: a.host ?? options.host, port: a.port, keys: a.keys, limits: a.limits, timeoutMs: a.timeoutMs, commandArgs: `--devnet ${dir}` });
      info.api = `${api.url}/v1`;
    }
    writeJson(join(dir, DEVNET_FILE), info);
    step(4, `ready: coordinator ${ids.coordinator}, model ${ids.model.slice(0, 12)}…${api ? `, OpenAI-compatible API at ${info.api}` : ''}`);
    return {
      info,
      units,
      nodes,
      user,
      api,
      async close() {
        await api?.close();
        for (const node of nodes) await node.close();
        await units.close();
      },
    };
  } catch (e) {
    await api?.close();
    for (const node of nodes) await node.close();
    await units.close();
    throw e;
  }
}
