// verity units | su | cu | mu: the AO units on the command line, all in one process (the embedded
// default) or one per process. Separate units share items either through one embedded store folder
// on the same machine (--store) or through a Verity gateway on any machine (--gateway).
import { join } from 'node:path';
import { InvalidArgumentError } from 'commander';
import { locator } from '../../ao/locate.js';
import { openComputeUnit, startComputeUnit } from '../../ao/cu.js';
import { openMessenger, startMessenger } from '../../ao/mu.js';
import { openScheduler, startScheduler } from '../../ao/su.js';
import { freePort, startUnits, unitWallet } from '../../ao/units.js';
import { verityExtensions } from '../../processes/index.js';
import { openGatewayStore } from '../../store/gateway-store.js';
import { openSqliteStore } from '../../store/sqlite-store.js';
import type { Store } from '../../store/store.js';
import { walletAddress } from '../../store/wallet.js';
import { closeOnSignal } from './shared.js';
import { DEFAULT_HOME } from './store.js';

export interface UnitFlags {
  store?: string;
  gateway?: string;
  dir?: string;
  port: number;
  host: string;
  url?: string;
  cu?: string;
  json?: boolean;
  /** The CU's checkpoint interval in messages. */
  checkpointEvery?: number;
}

function urlFlag(name: string, value: string): string {
  try {
    return new URL(value).origin;
  } catch {
    throw new InvalidArgumentError(`--${name} ${value} is not a URL`);
  }
}

function unitStore(flags: UnitFlags): Store {
  if (flags.gateway && flags.store) throw new InvalidArgumentError('use --store or --gateway, not both');
  return flags.gateway ? openGatewayStore(urlFlag('gateway', flags.gateway)) : openSqliteStore(flags.store ?? join(DEFAULT_HOME, 'store'));
}

/** Prints where the unit listens and stops it cleanly on SIGINT/SIGTERM. */
function serve(flags: UnitFlags, unit: string, facts: Record<string, string>, close: () => Promise<void>): void {
  process.stdout.write(flags.json ? `${JSON.stringify({ unit, ...facts })}\n` : `${unit} ${Object.entries(facts).map(([k, v]) => `${k}=${v}`).join(' ')}\n`);
  closeOnSignal(close);
}

export async function unitsCommand(flags: UnitFlags & { dir?: string }): Promise<void> {
  const dir = flags.dir ?? DEFAULT_HOME;
  const base = flags.port;
  const ports = base === 0 ? {} : { gateway: base, su: base + 1, cu: base + 2, mu: base + 3, hyperbeam: base + 4 };
  const units = await startUnits({ dir, host: flags.host, ports, extensions: verityExtensions });
  serve(flags, 'units', { ...units.urls, scheduler: units.scheduler.address, dir }, () => units.close());
}

export async function suCommand(flags: UnitFlags): Promise<void> {
  const dir = flags.dir ?? join(DEFAULT_HOME, 'su');
  const store = unitStore(flags);
  // The SU publishes its URL before it listens: pick the port now when any free one will do.
  const port = flags.port === 0 ? await freePort(flags.host) : flags.port;
  const url = flags.url ? urlFlag('url', flags.url) : `http://${flags.host}:${port}`;
  const scheduler = openScheduler({ dir, store, wallet: await unitWallet(dir, 'wallet'), url });
  await scheduler.ready;
  const server = await startScheduler(scheduler, { port, host: flags.host });
  serve(flags, 'su', { url: server.url, address: scheduler.address, dir }, async () => {
    await server.close();
    await scheduler.close();
    await store.close();
  });
}

export async function cuCommand(flags: UnitFlags): Promise<void> {
  const dir = flags.dir ?? join(DEFAULT_HOME, 'cu');
  const store = unitStore(flags);
  const wallet = await unitWallet(dir, 'wallet');
  // Verity's CUs offer the coordinator's extensions (docs/network.md) and aos-llama's (docs/lua.md) to the modules that declare them.
  const compute = await openComputeUnit({ dir, store, wallet, scheduler: locator(store), extensions: verityExtensions(store), checkpointEvery: flags.checkpointEvery });
  const server = await startComputeUnit(compute, { port: flags.port, host: flags.host });
  serve(flags, 'cu', { url: server.url, address: walletAddress(wallet), dir }, async () => {
    await server.close();
    await compute.close();
    await store.close();
  });
}

export async function muCommand(flags: UnitFlags): Promise<void> {
  if (!flags.cu) throw new InvalidArgumentError('the MU needs --cu <url>');
  const dir = flags.dir ?? join(DEFAULT_HOME, 'mu');
  const store = unitStore(flags);
  const wallet = await unitWallet(dir, 'wallet');
  const messenger = openMessenger({ dir, wallet, scheduler: locator(store), cu: urlFlag('cu', flags.cu) });
  const server = await startMessenger(messenger, { port: flags.port, host: flags.host });
  serve(flags, 'mu', { url: server.url, address: walletAddress(wallet), dir }, async () => {
    await server.close();
    await messenger.close();
    await store.close();
  });
}
