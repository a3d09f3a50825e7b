// verity wallet …, verity model publish|fetch|list, verity gateway: permanent storage on the command
// line. With --json each command prints exactly one JSON object on stdout; progress goes to stderr.
import { existsSync, mkdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Presets, SingleBar } from 'cli-progress';
import { InvalidArgumentError } from 'commander';
import { openArweaveStore } from '../../store/arweave-store.js';
import { openGatewayStore } from '../../store/gateway-store.js';
import { startGateway } from '../../store/gateway.js';
import { fetchModel, listModels, publishModel } from '../../store/models.js';
import { openSqliteStore } from '../../store/sqlite-store.js';
import type { Store } from '../../store/store.js';
import { generateWallet, readWallet, walletAddress, walletSigner, writeWallet, WalletError, type Wallet, type WalletType } from '../../store/wallet.js';
import { closeOnSignal, load } from './shared.js';

export const DEFAULT_HOME = '.verity';

export interface StoreFlags {
  store?: string;
  gateway?: string;
  wallet?: string;
  json?: boolean;
}

const walletPath = (flags: StoreFlags): string => flags.wallet ?? join(flags.store ?? DEFAULT_HOME, 'wallet.json');

function wallet(flags: StoreFlags): Wallet {
  const path = walletPath(flags);
  if (!flags.wallet && !existsSync(path)) throw new WalletError(`no wallet at ${path}: create one with verity wallet new`);
  return readWallet(path);
}

/** The embedded store in --store (default ./.verity), or an Arweave gateway with --gateway. */
export function openStore(flags: StoreFlags, needsWallet = false): Store {
  if (flags.gateway) {
    if (flags.store) throw new InvalidArgumentError('use --store or --gateway, not both');
    let url: URL;
    try {
      url = new URL(flags.gateway);
    } catch {
      throw new InvalidArgumentError(`--gateway ${flags.gateway} is not a URL`);
    }
    const payer = needsWallet ? wallet(flags) : null;
    // An Ed25519 wallet cannot pay for Arweave bundles: its items go to a Verity gateway (verity gateway) as they are.
    if (payer && payer.type !== 'arweave') return openGatewayStore(url.origin);
    return openArweaveStore({ gateway: url.origin, wallet: payer ?? undefined, mine: url.hostname === '127.0.0.1' || url.hostname === 'localhost' });
  }
  return openSqliteStore(flags.store ?? DEFAULT_HOME);
}

function print(flags: StoreFlags, json: object, text: string): void {
  process.stdout.write(flags.json ? `${JSON.stringify(json)}\n` : `${text}\n`);
}

/** A progress bar on stderr, shown only on a terminal (pipes and --json stay clean). */
function progressBar(label: string): { update(done: number, total: number): void; stop(): void } {
  const bar = new SingleBar({ format: `${label} [{bar}] {value}/{total} chunks`, stream: process.stderr, hideCursor: true }, Presets.shades_classic);
  let started = false;
  return {
    update(done, total) {
      if (!process.stderr.isTTY) return;
      if (!started) bar.start(total, 0);
      started = true;
      bar.update(done);
    },
    stop: () => started && bar.stop(),
  };
}

export async function walletNewCommand(flags: StoreFlags & { type: WalletType; force?: boolean }): Promise<void> {
  const path = walletPath(flags);
  if (existsSync(path) && !flags.force) throw new WalletError(`${path} exists; use --force to replace it`);
  mkdirSync(dirname(path), { recursive: true });
  const w = await generateWallet(flags.type);
  writeWallet(path, w);
  const address = walletAddress(w);
  print(flags, { type: w.type, address, path }, `${w.type} wallet ${address} written to ${path} (mode 0600)`);
}

export function walletShowCommand(flags: StoreFlags): void {
  const w = wallet(flags);
  print(flags, { type: w.type, address: walletAddress(w), path: walletPath(flags) }, `${w.type} ${walletAddress(w)}`);
}

export async function modelPublishCommand(file: string, flags: StoreFlags & { tokenizer?: string; name?: string }): Promise<void> {
  const model = load(file, flags.tokenizer);
  const store = openStore(flags, true);
  const bar = progressBar(`publishing ${basename(file)}`);
  try {
    const r = await publishModel(store, walletSigner(wallet(flags)), model, flags.name ?? basename(file), (d, t) => bar.update(d, t));
    bar.stop();
    const { modelId, manifestId, chunks, bytes } = r;
    print(flags, { modelId, manifestId, chunks, bytes }, `model ${modelId}: manifest ${manifestId}, ${chunks} chunks, ${bytes} bytes${r.reused ? ` (${r.reused} already stored)` : ''}`);
  } finally {
    await store.close();
  }
}

export async function modelFetchCommand(modelId: string, flags: StoreFlags & { cache?: string }): Promise<void> {
  const store = openStore(flags);
  const bar = progressBar(`fetching ${modelId.slice(0, 12)}…`);
  try {
    const path = await fetchModel(store, modelId, flags.cache ?? join(flags.store ?? DEFAULT_HOME, 'models'), (d, t) => bar.update(d, t));
    bar.stop();
    print(flags, { modelId, path }, path);
  } finally {
    await store.close();
  }
}

export async function modelListCommand(flags: StoreFlags): Promise<void> {
  const store = openStore(flags);
  try {
    const models = await listModels(store);
    const text = models.length ? models.map((m) => `${m.modelId}  ${m.name}  ${m.config}  (manifest ${m.manifestId})`).join('\n') : 'no models';
    print(flags, { models }, text);
  } finally {
    await store.close();
  }
}

export async function gatewayCommand(flags: StoreFlags & { port: number; host: string }): Promise<void> {
  const store = openStore(flags);
  const gateway = await startGateway(store, { port: flags.port, host: flags.host });
  print(flags, { url: gateway.url, store: flags.store ?? DEFAULT_HOME }, `gateway serving ${flags.store ?? DEFAULT_HOME} at ${gateway.url}`);
  closeOnSignal(async () => {
    await gateway.close();
    await store.close();
  });
}
