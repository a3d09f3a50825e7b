// verity process spawn | eval | send | dryrun: Lua processes on an AO network from the command
// line, as aos's REPL drives them. A command finds the network as the other network commands do
// (network.ts: --devnet, --mu/--cu flags, VERITY_*); spawn also needs the gateway (to publish the
// module) and the SU's address (the process's Scheduler tag).
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { InvalidArgumentError } from 'commander';
import { AoClientError, RefusedError, aoClient, type AoClient, type DryRunResult } from '../../ao/client.js';
import { publishModule } from '../../ao/modules.js';
import { DEFAULT_LIMITS } from '../../ao/runtime.js';
import type { Tag } from '../../store/items.js';
import { openGatewayStore } from '../../store/gateway-store.js';
import { walletAddress, walletSigner, type Wallet } from '../../store/wallet.js';
import { bundleLua, type Bundle } from '../lua-bundle.js';
import { need, networkOf, walletOf, type NetworkFlags } from './network.js';

export interface ProcessFlags extends NetworkFlags {
  su?: string;
  scheduler?: string;
  tag?: string[];
  json?: boolean;
}

export interface SpawnFlags extends ProcessFlags {
  lua: string;
  name?: string;
  memoryLimit?: string;
  computeLimit?: string;
}

export interface SendFlags extends ProcessFlags {
  action: string;
  data?: string;
  dataFile?: string;
  /** false with --no-wait. */
  wait?: boolean;
}

/** How long a command waits for the CU to have a message's result. */
const RESULT_WAIT_MS = 30_000;
const PID = /^[A-Za-z0-9_-]{43}$/;
const env = (name: string): string | undefined => process.env[`VERITY_${name}`] || undefined;

function connect(flags: ProcessFlags): { ao: AoClient; wallet: Wallet; net: ReturnType<typeof networkOf> } {
  const net = networkOf(flags);
  const wallet = walletOf(flags, net.dir);
  return { ao: aoClient({ mu: need(net.mu, 'mu'), cu: need(net.cu, 'cu'), wallet }), wallet, net };
}

function processId(pid: string): string {
  if (!PID.test(pid) || Buffer.from(pid, 'base64url').toString('base64url') !== pid) throw new InvalidArgumentError(`${pid} is not a process id (43 base64url characters)`);
  return pid;
}

/** `k=v` flags as tags (the value may hold '='). */
export function parseTags(values: string[] = []): Tag[] {
  return values.map((kv) => {
    const at = kv.indexOf('=');
    if (at <= 0) throw new InvalidArgumentError(`--tag ${kv}: use name=value`);
    return { name: kv.slice(0, at), value: kv.slice(at + 1) };
  });
}

function limit(name: string, value: string | undefined, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > max) throw new InvalidArgumentError(`--${name} must be a whole number from 1 to ${max}`);
  return n;
}

function bundle(file: string): Bundle {
  const b = bundleLua(file);
  for (const name of b.missing) process.stderr.write(`note: require('${name}'): no ${name.replace(/\./g, '/')}.lua next to ${file}; left for the process to resolve\n`);
  return b;
}

/** The SU's address: --scheduler, VERITY_SCHEDULER, else what the SU (--su, VERITY_SU, the devnet's) says it is. */
export async function schedulerOf(flags: Pick<ProcessFlags, 'su' | 'scheduler'>, su: string | undefined, known?: string): Promise<string> {
  const given = flags.scheduler ?? env('SCHEDULER') ?? known;
  if (given !== undefined) return given;
  const url = flags.su ?? env('SU') ?? su;
  if (url === undefined) throw new InvalidArgumentError('no scheduler: give --devnet <dir>, --su <url>, --scheduler <address> or VERITY_SCHEDULER');
  let res: Response;
  try {
    res = await fetch(`${url.replace(/\/+$/, '')}/`);
  } catch (e) {
    throw new AoClientError(`SU: cannot reach ${url}: ${(e as Error).message}`);
  }
  const body = (await res.json().catch(() => null)) as { address?: unknown } | null;
  if (!res.ok || typeof body?.address !== 'string') throw new AoClientError(`SU at ${url} gave no address (${res.status})`);
  return body.address;
}

/** A message's result, once the CU has it (a message just handed to the MU may not be in its SU's log yet). */
async function resultOf(ao: AoClient, pid: string, message: string): Promise<DryRunResult> {
  const deadline = Date.now() + RESULT_WAIT_MS;
  for (;;) {
    try {
      return await ao.result(pid, message);
    } catch (e) {
      if (!(e instanceof AoClientError) || e.status !== 404 || Date.now() > deadline) throw e;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

/** Sends and reports a refusal of an unknown process in one line. */
async function sendTo(ao: AoClient, pid: string, tags: Tag[], data: string): Promise<string> {
  try {
    return await ao.message(pid, { tags, data });
  } catch (e) {
    throw unknownProcess(pid, e);
  }
}

/** A unit's 400/404 about a process as one line naming it; other errors as they are. */
function unknownProcess(pid: string, e: unknown): unknown {
  if (e instanceof AoClientError && (e.status === 404 || e.status === 400)) return new RefusedError(404, `process ${pid} is not known on this network (${e.message})`);
  return e;
}

function outputText(output: unknown): string {
  if (output === undefined || output === null || output === '') return '';
  if (typeof output === 'string') return output;
  if (typeof output === 'object' && typeof (output as { data?: unknown }).data === 'string') return (output as { data: string }).data;
  if (typeof output === 'object' && (output as { data?: unknown }).data !== undefined) return JSON.stringify((output as { data: unknown }).data);
  return JSON.stringify(output);
}

interface OutMessage {
  target?: string;
  tags: Record<string, string>;
  data: string;
}

const outMessage = (m: { Target?: string; Tags: Tag[]; Data?: string }): OutMessage => ({
  ...(m.Target === undefined ? {} : { target: m.Target }),
  tags: Object.fromEntries(m.Tags.map((t) => [t.name, t.value])),
  data: m.Data ?? '',
});

/** A line per outgoing message, as aos's REPL shows them: target, Action first, the other tags, then the Data. */
function messageLines(kind: string, m: OutMessage): string {
  const { Action, ...rest } = m.tags;
  const tags = [...(Action === undefined ? [] : [`Action=${Action}`]), ...Object.entries(rest).map(([k, v]) => `${k}=${v}`)];
  const data = m.data === '' ? '' : `\n    Data: ${m.data.length > 400 ? `${m.data.slice(0, 400)}… (${m.data.length} characters)` : m.data}`;
  return `→ ${kind}${m.target === undefined ? '' : ` ${m.target}`}: ${tags.join(' ')}${data}\n`;
}

/** Prints a result (or dry run): Output, outgoing messages and spawns, then any Error (exit code 1). */
function report(flags: { json?: boolean }, head: Record<string, string>, r: Pick<DryRunResult, 'Output' | 'Messages' | 'Spawns' | 'Error'>): void {
  const output = outputText(r.Output);
  const messages = (r.Messages ?? []).map(outMessage);
  const spawns = (r.Spawns ?? []).map(outMessage);
  const error = r.Error === undefined || r.Error === null || r.Error === '' ? null : typeof r.Error === 'string' ? r.Error : JSON.stringify(r.Error);
  if (error !== null) process.exitCode = 1;
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ ...head, output, messages, spawns, error })}\n`);
    return;
  }
  let text = output === '' || output.endsWith('\n') ? output : `${output}\n`;
  for (const m of messages) text += messageLines('message', m);
  for (const s of spawns) text += messageLines('spawn', s);
  process.stdout.write(text);
  if (error !== null) process.stderr.write(`error: ${error}\n`);
}

export async function processSpawnCommand(flags: SpawnFlags): Promise<void> {
  const limits = {
    memory: limit('memory-limit', flags.memoryLimit, DEFAULT_LIMITS.memory, 2 ** 32),
    compute: limit('compute-limit', flags.computeLimit, DEFAULT_LIMITS.compute, 1_000_000_000),
  };
  const tags = parseTags(flags.tag);
  const name = flags.name ?? basename(flags.lua).replace(/\.lua$/, '');
  const { source } = bundle(flags.lua);
  const { ao, wallet, net } = connect(flags);
  const scheduler = await schedulerOf(flags, net.su, net.scheduler);
  const store = openGatewayStore(need(net.gateway, 'gateway'));
  const module = await publishModule(store, walletSigner(wallet), source, name, { format: 'lua', limits });
  const processTags = tags.some((t) => t.name === 'Name') ? tags : [{ name: 'Name', value: name }, ...tags];
  const pid = await ao.spawn(module, scheduler, { tags: processTags });
  const result = await resultOf(ao, pid, pid);
  if (!flags.json) process.stdout.write(`${pid}\n`);
  report(flags, { process: pid, module }, result);
}

export async function processEvalCommand(pid: string, file: string, flags: ProcessFlags): Promise<void> {
  processId(pid);
  const { source } = bundle(file);
  const { ao } = connect(flags);
  const id = await sendTo(ao, pid, [{ name: 'Action', value: 'Eval' }], source);
  report(flags, { message: id }, await resultOf(ao, pid, id));
}

function messageOf(flags: SendFlags): { tags: Tag[]; data: string } {
  if (flags.data !== undefined && flags.dataFile !== undefined) throw new InvalidArgumentError('use --data or --data-file, not both');
  let data = flags.data ?? '';
  if (flags.dataFile !== undefined) {
    try {
      data = readFileSync(flags.dataFile, 'utf8');
    } catch (e) {
      throw new InvalidArgumentError(`--data-file ${flags.dataFile}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : (e as Error).message}`);
    }
  }
  return { tags: [{ name: 'Action', value: flags.action }, ...parseTags(flags.tag)], data };
}

export async function processSendCommand(pid: string, flags: SendFlags): Promise<void> {
  processId(pid);
  const { tags, data } = messageOf(flags);
  const { ao } = connect(flags);
  const id = await sendTo(ao, pid, tags, data);
  if (flags.wait === false) {
    process.stdout.write(flags.json ? `${JSON.stringify({ message: id })}\n` : `${id}\n`);
    return;
  }
  report(flags, { message: id }, await resultOf(ao, pid, id));
}

export async function processDryrunCommand(pid: string, flags: SendFlags): Promise<void> {
  processId(pid);
  const { tags, data } = messageOf(flags);
  const { ao, wallet } = connect(flags);
  let result: DryRunResult;
  try {
    result = await ao.dryRun(pid, { tags, data, from: walletAddress(wallet) });
  } catch (e) {
    throw unknownProcess(pid, e);
  }
  report(flags, {}, result);
}
