// The coordinator's economy on embedded units, for tests that need the whole network: the token and
// the coordinator spawned with the test's parameters, tokens minted, a requester funded with a
// deposit, and helpers to register models and fund nodes.
import { join } from 'node:path';
import { aoClient, expectReply, type AoClient } from '../src/ao/client.js';
import { startUnits, type RunningUnits } from '../src/ao/units.js';
import { Verity, type VerityClient } from '../src/client/sdk.js';
import type { Model } from '../src/engine/index.js';
import { startNode, type RunningNode, type NodeOptions } from '../src/node/index.js';
import { coordinatorExtensions, publishProcessModule } from '../src/processes/index.js';
import { publishModel } from '../src/store/models.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../src/store/wallet.js';

export interface Economy {
  units: RunningUnits;
  coordinator: string;
  token: string;
  /** The units and processes, as startNode takes them. */
  network: { mu: string; cu: string; coordinator: string; token: string };
  /** A requester with 1,000,000 tokens, 100,000 of them deposited at the coordinator. */
  user: Wallet;
  userAo: AoClient;
  verity: VerityClient;
  /** Sends a message from the owner and returns the tags of its `action` reply. */
  ask(process: string, tags: { name: string; value: string }[], action: string): Promise<Record<string, string>>;
  /** Transfers tokens from the owner. */
  fund(address: string, amount: bigint): Promise<void>;
  /** Publishes a model and registers it with the coordinator; returns its id. */
  register(model: Model, name: string): Promise<{ modelId: string; manifestId: string }>;
  /** A funded (10,000) node with a fresh wallet in `dir`, staking 2,000. */
  startFundedNode(dir: string, options?: Partial<NodeOptions>): Promise<RunningNode>;
}

export async function startEconomy(dir: string, params: Record<string, string>): Promise<Economy> {
  const units = await startUnits({ dir, extensions: coordinatorExtensions });
  try {
    const owner = await generateWallet('ed25519');
    const ownerAo = aoClient({ ...units.urls, wallet: owner });
    const signer = walletSigner(owner);
    const ask = async (process: string, tags: { name: string; value: string }[], action: string): Promise<Record<string, string>> =>
      expectReply(await ownerAo.result(process, await ownerAo.message(process, { tags })), action).tags;
    const authority = { name: 'Authority', value: units.messenger.address };
    const token = await ownerAo.spawn(await publishProcessModule(units.store, signer, 'token'), units.scheduler.address, { tags: [{ name: 'Name', value: 'Verity' }, { name: 'Ticker', value: 'VRT' }, authority] });
    const spawn = Object.entries(params).map(([name, value]) => ({ name, value }));
    const coordinator = await ownerAo.spawn(await publishProcessModule(units.store, signer, 'coordinator'), units.scheduler.address, { tags: [{ name: 'Token', value: token }, ...spawn, authority] });
    await ask(token, [{ name: 'Action', value: 'Mint' }, { name: 'Quantity', value: '100000000' }], 'Mint-Response');
    const fund = async (address: string, amount: bigint): Promise<void> => {
      await ask(token, [{ name: 'Action', value: 'Transfer' }, { name: 'Recipient', value: address }, { name: 'Quantity', value: amount.toString() }], 'Debit-Notice');
    };
    const user = await generateWallet('ed25519');
    await fund(walletAddress(user), 1_000_000n);
    const verity = Verity.connect({ ...units.urls, coordinator, token, wallet: user });
    await verity.deposit(100_000n);
    const network = { mu: units.urls.mu, cu: units.urls.cu, coordinator, token };
    let nodes = 0;
    return {
      units, coordinator, token, network, user, userAo: aoClient({ ...units.urls, wallet: user }), verity, ask, fund,
      async register(model, name) {
        const published = await publishModel(units.store, signer, model, name);
        await ask(coordinator, [{ name: 'Action', value: 'Register-Model' }, { name: 'Model', value: published.modelId }, { name: 'Manifest', value: published.manifestId }], 'Register-Model-Response');
        return published;
      },
      async startFundedNode(nodeDir, options = {}) {
        const wallet = options.wallet ?? (await generateWallet('ed25519'));
        await fund(walletAddress(wallet), 10_000n);
        return startNode({ dir: join(nodeDir, `node-${nodes++}`), wallet, store: units.store, network, stake: 2_000n, heartbeatMs: 500, pollMs: 200, ...options });
      },
    };
  } catch (e) {
    await units.close();
    throw e;
  }
}
