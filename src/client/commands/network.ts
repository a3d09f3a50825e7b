// verity devnet | infer | task | node start: the inference network on the command line. A command
// finds the network from --devnet <dir> (the devnet.json a running devnet writes) or --network <file>
// (the network.json verity network init writes), from --mu/--cu/--coordinator flags, or from VERITY_*
// environment variables (VERITY_NETWORK, VERITY_DEVNET, VERITY_MU, …); a flag overrides the file.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { RefusedError } from '../../ao/client.js';
import { InvalidArgumentError } from 'commander';
import { STRATEGIES, startNode } from '../../node/index.js';
import { openGatewayStore } from '../../store/gateway-store.js';
import { openSqliteStore } from '../../store/sqlite-store.js';
import { readWallet, WalletError, type Wallet } from '../../store/wallet.js';
import { DEVNET_FILE, readDevnetInfo, startDevnet, type DevnetInfo } from '../devnet.js';
import { Verity, type InferResult, type TaskView } from '../sdk.js';
import { verifyReceipt } from '../verify.js';
import { closeOnSignal } from './shared.js';
import { DEFAULT_HOME } from './store.js';

export interface NetworkFlags {
  devnet?: string;
  /** A network.json (verity network init), read like a devnet's devnet.json. */
  network?: string;
  mu?: string;
  cu?: string;
  coordinator?: string;
  token?: string;
  gateway?: string;
  wallet?: string;
  json?: boolean;
}

const env = (name: string): string | undefined => process.env[`VERITY_${name}`] || undefined;

/** What network.json holds (verity network init writes it): where the units and processes are. */
export interface NetworkFile {
  mu: string;
  cu: string;
  gateway: string;
  su?: string;
  token: string;
  coordinator: string;
  /** The SU's address, the processes' Scheduler. */
  scheduler?: string;
  /** The registered model, once there is one. */
  model?: string;
}

/** Reads a network.json (or any file of DevnetInfo's shape). */
export function readNetworkFile(path: string): NetworkFile {
  if (!existsSync(path)) throw new RefusedError(404, `no network file at ${path}: write one with verity network init --out ${path}, or pass --devnet <dir>`);
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as NetworkFile;
  } catch (e) {
    throw new InvalidArgumentError(`${path} is not a network file (JSON): ${(e as Error).message}`);
  }
}

/** Where the network is: explicit flags first, then a devnet folder or network file, then the environment. */
export function networkOf(flags: NetworkFlags): Partial<DevnetInfo> & { dir?: string; scheduler?: string } {
  const explicit = flags.mu ?? flags.cu ?? flags.coordinator;
  if (explicit && flags.devnet) throw new InvalidArgumentError('use --devnet or --mu/--cu/--coordinator, not both');
  if (flags.devnet && flags.network) throw new InvalidArgumentError('use --devnet or --network, not both');
  const file = flags.network ?? (flags.devnet ? undefined : env('NETWORK'));
  const dir = file !== undefined ? undefined : flags.devnet ?? env('DEVNET') ?? (explicit ? undefined : DEFAULT_HOME);
  // Nothing given and no devnet here: say every way to name a network.
  if (file === undefined && !explicit && !flags.devnet && !env('DEVNET') && !existsSync(join(DEFAULT_HOME, DEVNET_FILE))) {
    throw new RefusedError(404, `no network: give --network <file> (what verity network init wrote), --devnet <dir> (a running verity devnet), or --mu/--cu/--coordinator`);
  }
  const devnet: Partial<DevnetInfo> & { dir?: string; scheduler?: string } =
    file !== undefined ? { ...readNetworkFile(file), dir: dirname(file) } : dir !== undefined && !explicit ? { ...readDevnetInfo(dir), dir } : {};
  return {
    ...devnet,
    mu: flags.mu ?? env('MU') ?? devnet.mu,
    cu: flags.cu ?? env('CU') ?? devnet.cu,
    coordinator: flags.coordinator ?? env('COORDINATOR') ?? devnet.coordinator,
    token: flags.token ?? env('TOKEN') ?? devnet.token,
    gateway: flags.gateway ?? env('GATEWAY') ?? devnet.gateway,
  };
}

export function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new InvalidArgumentError(`no ${what}: give --network <file>, --devnet <dir>, --${what} or VERITY_${what.toUpperCase()}`);
  return value;
}

export function walletOf(flags: NetworkFlags, dir: string | undefined): Wallet {
  const path = flags.wallet ?? env('WALLET') ?? join(dir ?? DEFAULT_HOME, 'wallet.json');
  if (!existsSync(path)) throw new WalletError(`no wallet at ${path}: create one with verity wallet new, or pass --wallet`);
  return readWallet(path);
}

function client(flags: NetworkFlags) {
  const net = networkOf(flags);
  return {
    net,
    verity: Verity.connect({ mu: need(net.mu, 'mu'), cu: need(net.cu, 'cu'), coordinator: need(net.coordinator, 'coordinator'), token: net.token, wallet: walletOf(flags, net.dir) }),
  };
}

function integer(name: string, value: string | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min || n > max) throw new InvalidArgumentError(`--${name} must be a whole number from ${min} to ${max}`);
  return n;
}

function decimal(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`--${name} must be a number`);
  return n;
}

function receiptLines(r: InferResult): string {
  const lines = [`status: ${r.status}`, `task: ${r.task}`, `tokens: ${r.usage.prompt_tokens} prompt, ${r.usage.completion_tokens} generated`];
  if (r.receipt) {
    const { model, commitment, traceRoot, node, result, trace } = r.receipt;
    lines.push(`model: ${model}`, `job commitment: ${commitment}`, `trace root: ${traceRoot}`, `node: ${node}`, `result message: ${result}`, `trace item: ${trace}`);
  }
  return `${lines.join('\n')}\n`;
}

/** The text on stdout, the receipt on stderr; or one JSON object. */
function printResult(flags: { json?: boolean }, r: InferResult): void {
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ task: r.task, text: r.text, status: r.status, usage: r.usage, receipt: r.receipt })}\n`);
    return;
  }
  process.stdout.write(`${r.text}\n`);
  process.stderr.write(receiptLines(r));
}

export interface InferFlags extends NetworkFlags {
  model?: string;
  maxTokens?: string;
  temperature?: string;
  topP?: string;
  seed?: string;
  redundancy?: string;
  nodes?: string;
  reference?: string;
}

export async function inferCommand(prompt: string, flags: InferFlags): Promise<void> {
  const { verity } = client(flags);
  const seed = flags.seed;
  if (seed !== undefined && !/^\d{1,20}$/.test(seed)) throw new InvalidArgumentError('--seed must be a whole number');
  const result = await verity.infer(prompt, {
    model: flags.model,
    maxTokens: integer('max-tokens', flags.maxTokens, 1, 1 << 20),
    temperature: decimal('temperature', flags.temperature),
    topP: decimal('top-p', flags.topP),
    seed,
    redundancy: integer('redundancy', flags.redundancy, 1, 3),
    nodes: flags.nodes?.split(',').map((n) => n.trim()),
    reference: flags.reference,
  });
  printResult(flags, result);
}

export async function taskCommand(id: string, flags: NetworkFlags): Promise<void> {
  if (!/^[A-Za-z0-9_-]{43}$/.test(id)) throw new InvalidArgumentError(`${id} is not a task id (43 base64url characters)`);
  const task: TaskView = await client(flags).verity.task(id);
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(task)}\n`);
    return;
  }
  printResult(flags, { task: task.task, text: task.result ?? '', status: task.status, receipt: task.receipt, usage: task.usage, corrected: task.corrected });
  process.stderr.write(verificationLines(task));
}

/** Who took part and how, and every round of every dispute, as `verity task` prints them. */
function verificationLines(task: TaskView): string {
  const short = (h: string | undefined): string => (h ? `${h.slice(0, 16)}…` : '-');
  const lines = [`audited: ${task.audited ? 'yes' : 'no'}${task.corrected ? ', corrected by a dispute' : ''}`, 'participants:'];
  for (const p of task.participants) lines.push(`  ${p.role.padEnd(10)} ${p.node}  ${p.status.padEnd(9)} root ${short(p.traceRoot)}`);
  task.disputes.forEach((d, i) => {
    lines.push(`dispute ${i + 1}: ${d.asserter} (result) vs ${d.challenger}, ${d.steps} steps`);
    for (const r of d.rounds) {
      const differ = r.points.filter((_, j) => r.values.asserter[j] !== r.values.challenger[j]).length;
      lines.push(`  round ${r.round}: [${r.interval[0]}, ${r.interval[1]}] at ${r.points.length} points, ${differ} differ → [${r.next[0]}, ${r.next[1]}]`);
    }
    if (d.proof) lines.push(`  one-step proof: step ${d.proof.step} (${d.proof.kind}) opened by ${d.proof.by}: acc ${short(d.proof.acc)}`);
    lines.push(`  outcome: ${d.outcome ? `${d.outcome.winner ?? 'no winner'} (${d.outcome.reason})` : `running (${d.phase}, interval [${d.interval[0]}, ${d.interval[1]}])`}`);
  });
  return `${lines.join('\n')}\n`;
}

export interface DevnetFlags {
  dir?: string;
  nodes: number;
  port: number;
  host: string;
  leaseMs?: number;
  json?: boolean;
  demo?: string;
  /** Also serve the OpenAI-compatible API on this port (docs/api.md). */
  apiPort?: number;
  /** Its key file (default: local mode). */
  keys?: string;
}

export async function devnetCommand(flags: DevnetFlags): Promise<void> {
  const dir = flags.dir ?? DEFAULT_HOME;
  if (flags.keys !== undefined && flags.apiPort === undefined) throw new InvalidArgumentError('--keys goes with --api-port');
  const keys = flags.keys === undefined ? undefined : (await import('../api.js')).readKeyFile(flags.keys);
  const api = flags.apiPort === undefined ? undefined : { port: flags.apiPort, keys };
  const devnet = await startDevnet({ dir, nodes: flags.nodes, port: flags.port, host: flags.host, leaseMs: flags.leaseMs, api });
  if (flags.demo !== undefined) {
    // The Quick start: one inference through the network, then its receipt checked by re-running the job here.
    try {
      const { info } = devnet;
      const verity = Verity.connect({ mu: info.mu, cu: info.cu, coordinator: info.coordinator, token: info.token, wallet: devnet.user });
      const options = { maxTokens: 100, temperature: 0 };
      const result = await verity.infer(flags.demo, options);
      process.stdout.write(`${flags.demo}${result.text}\n`);
      process.stderr.write(receiptLines(result));
      const check = await verifyReceipt(devnet.units.store, result, { prompt: flags.demo, ...options }, join(dir, 'verify'));
      process.stderr.write(`verified: re-running the job here gives the receipt's trace root ${check.traceRoot} (${check.steps} steps) and this text\n`);
    } finally {
      await devnet.close();
    }
    return;
  }
  const line = flags.json ? JSON.stringify(devnet.info) : `devnet ready in ${dir}: ${Object.entries(devnet.info).map(([k, v]) => `${k}=${v}`).join(' ')}`;
  process.stdout.write(`${line}\n`);
  closeOnSignal(() => devnet.close());
}

export interface NodeFlags extends NetworkFlags {
  stake: string;
  models?: string;
  capacity: number;
  dir?: string;
  store?: string;
  /** A cheating strategy, for testing the network (src/node/strategies.ts). */
  strategy?: string;
  colludeDir?: string;
  cheapLayer?: string;
  /** Re-run this share (ppm) of others' revealed results and challenge mismatches. */
  watch?: string;
  /** The memory it gives a model, e.g. 4GiB (Register-Node's Memory). */
  memory?: string;
}

const UNITS: Record<string, number> = { '': 1, B: 1, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 };

/** `--memory`: a whole number of bytes, or of KiB/MiB/GiB/TiB. */
export function memoryFlag(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^([1-9][0-9]{0,15})\s*(B|KiB|MiB|GiB|TiB)?$/.exec(value.trim());
  const bytes = m ? Number(m[1]) * UNITS[m[2] ?? ''] : NaN;
  if (!Number.isSafeInteger(bytes)) throw new InvalidArgumentError('--memory must be a whole number of bytes, or of KiB, MiB, GiB or TiB (e.g. 4GiB)');
  return bytes;
}

export async function nodeStartCommand(flags: NodeFlags): Promise<void> {
  if (!/^\d{1,38}$/.test(flags.stake)) throw new InvalidArgumentError('--stake must be a whole number of tokens');
  if (!flags.wallet) throw new InvalidArgumentError('a node needs --wallet <file> (an Ed25519 wallet: verity wallet new)');
  const strategy = flags.strategy ?? 'honest';
  if (!(STRATEGIES as readonly string[]).includes(strategy)) throw new InvalidArgumentError(`--strategy must be one of ${STRATEGIES.join(', ')}`);
  if (strategy === 'colluding-pair' && !flags.colludeDir) throw new InvalidArgumentError('--strategy colluding-pair needs --collude-dir <dir> (the folder both partners share)');
  const net = networkOf(flags);
  if (flags.store && flags.gateway) throw new InvalidArgumentError('use --store or --gateway, not both');
  const store = flags.store ? openSqliteStore(flags.store) : openGatewayStore(need(net.gateway, 'gateway'));
  const wallet = readWallet(flags.wallet);
  const node = await startNode({
    dir: flags.dir ?? join(DEFAULT_HOME, 'node'),
    wallet,
    store,
    network: { mu: need(net.mu, 'mu'), cu: need(net.cu, 'cu'), coordinator: need(net.coordinator, 'coordinator'), token: need(net.token, 'token') },
    stake: BigInt(flags.stake),
    models: flags.models?.split(',').map((m) => m.trim()),
    capacity: flags.capacity,
    memory: memoryFlag(flags.memory),
    strategy,
    strategyOptions: { colludeDir: flags.colludeDir, layer: integer('cheap-layer', flags.cheapLayer, 0, 1 << 16) },
    watchPpm: integer('watch', flags.watch, 0, 1_000_000),
  });
  const info = { node: node.address, did: node.did, models: node.models, strategy: node.strategy };
  const cheat = node.strategy === 'honest' ? '' : ` (strategy ${node.strategy})`;
  process.stdout.write(flags.json ? `${JSON.stringify(info)}\n` : `node ${node.address} (${node.did}) serving ${node.models.join(', ')}${cheat}\n`);
  closeOnSignal(async () => {
    await node.close();
    await store.close();
  });
}

