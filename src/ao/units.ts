// The AO units wired together: a store and its gateway, a Scheduler, a Compute and a Messenger
// Unit, each with its own wallet and folder under `dir`. `startUnits` runs them all in this process
// (the embedded default); `verity su|cu|mu|gateway` runs one each (commands/ao.ts).
import { existsSync, mkdirSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { startGateway } from '../store/gateway.js';
import { openSqliteStore } from '../store/sqlite-store.js';
import type { Store } from '../store/store.js';
import { generateWallet, readWallet, writeWallet, type Wallet } from '../store/wallet.js';
import type { FastifyInstance } from 'fastify';
import { listen } from '../store/listen.js';
import { createComputeServer, openComputeUnit, type ComputeUnit } from './cu.js';
import { inProcessFetch } from './in-process.js';
import { locator, type Locator } from './locate.js';
import { openMessenger, startMessenger, type Messenger } from './mu.js';
import type { Extensions, Limits } from './runtime.js';
import { createSchedulerApp, openScheduler, type Scheduler } from './su.js';
import { startHyperbeam } from './hyperbeam/server.js';

/** A unit's wallet: `<dir>/<name>.json`, created (Ed25519) the first time. */
export async function unitWallet(dir: string, name: string): Promise<Wallet> {
  const path = join(dir, `${name}.json`);
  if (existsSync(path)) return readWallet(path);
  mkdirSync(dir, { recursive: true });
  const wallet = await generateWallet('ed25519');
  writeWallet(path, wallet);
  return wallet;
}

/** A free loopback port (the SU must know its URL before it publishes its location). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface UnitsOptions {
  dir: string;
  host?: string;
  /** `hyperbeam`: the HyperBEAM-style interface for aoconnect's mainnet mode (docs/ao.md). */
  ports?: Partial<Record<'gateway' | 'su' | 'cu' | 'mu' | 'hyperbeam', number>>;
  limits?: Limits;
  /** Host extensions for the CU, or a function making them from the units' store. */
  extensions?: Extensions | ((store: Store) => Extensions);
}

export interface RunningUnits {
  urls: { gateway: string; su: string; cu: string; mu: string; hyperbeam: string };
  store: Store;
  scheduler: Scheduler;
  compute: ComputeUnit;
  messenger: Messenger;
  locate: Locator;
  close(): Promise<void>;
}

export async function startUnits(options: UnitsOptions): Promise<RunningUnits> {
  const { dir } = options;
  const host = options.host ?? '127.0.0.1';
  const port = async (name: 'gateway' | 'su' | 'cu' | 'mu' | 'hyperbeam'): Promise<number> => options.ports?.[name] ?? freePort(host);
  const wallets = join(dir, 'wallets');
  const store = openSqliteStore(join(dir, 'store'));
  const gateway = await startGateway(store, { port: await port('gateway'), host });
  const suUrl = `http://${host}:${await port('su')}`;
  const scheduler = openScheduler({ dir: join(dir, 'su'), store, wallet: await unitWallet(wallets, 'su'), url: suUrl });
  await scheduler.ready;
  // The CU reads this SU, and the MU reaches both, in process (in-process.ts).
  const local = new Map<string, FastifyInstance>();
  const unitFetch = inProcessFetch(local);
  const suApp = createSchedulerApp(scheduler);
  const su = await listen(suApp, Number(new URL(suUrl).port), host);
  local.set(new URL(su.url).origin, suApp);
  const locate = locator(store);
  const compute = await openComputeUnit({
    dir: join(dir, 'cu'),
    store,
    wallet: await unitWallet(wallets, 'cu'),
    scheduler: locate,
    limits: options.limits,
    extensions: typeof options.extensions === 'function' ? options.extensions(store) : options.extensions,
    fetch: unitFetch,
  });
  const cuApp = createComputeServer(compute);
  const cu = await listen(cuApp, await port('cu'), host);
  local.set(new URL(cu.url).origin, cuApp);
  const messenger = openMessenger({ dir: join(dir, 'mu'), wallet: await unitWallet(wallets, 'mu'), scheduler: locate, cu: cu.url, fetch: unitFetch });
  const mu = await startMessenger(messenger, { port: await port('mu'), host });
  const hyperbeam = await startHyperbeam({ scheduler, compute, messenger }, { port: await port('hyperbeam'), host, maxItemBytes: messenger.maxItemBytes });
  return {
    urls: { gateway: gateway.url, su: su.url, cu: cu.url, mu: mu.url, hyperbeam: hyperbeam.url },
    store,
    scheduler,
    compute,
    messenger,
    locate,
    async close() {
      await hyperbeam.close();
      await mu.close();
      await messenger.close();
      await cu.close();
      await compute.close();
      await su.close();
      await scheduler.close();
      await gateway.close();
      await store.close();
    },
  };
}
