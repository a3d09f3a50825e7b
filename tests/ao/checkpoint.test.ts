// A CU killed in the middle of writing a checkpoint (the checkpoint item stored, the CU's index not
// yet naming it) restarts from the checkpoint before, evaluates the rest of the log, and reaches the
// same state, state hash and results chain as a CU that never stopped. The CU runs as its own
// process (`verity cu`), killed for real by SIGKILL at that point (VERITY_FAILPOINT).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { aoClient, type AoClient } from '../../src/ao/client.js';
import { publishModule } from '../../src/ao/modules.js';
import { freePort, startUnits, type RunningUnits } from '../../src/ao/units.js';
import { verifyAttestation, type Result } from '../../src/ao/cu.js';
import { generateWallet, walletSigner } from '../../src/store/wallet.js';
import { projectRoot, serveCli } from '../helpers.js';

// Keeps a list that grows with every message, so that a checkpoint is not trivial.
const LEDGER = `
export function handle(state, msg) {
  const s = state ?? { entries: {}, count: 0 };
  if (msg.Tags.some((t) => t.name === 'Action' && t.value === 'Add')) {
    s.count += 1;
    s.entries['e' + s.count] = { data: msg.Data, nonce: msg.Nonce };
  }
  return { state: s, Output: s.count };
}`;

const EVERY = 16;

describe('a CU killed mid-checkpoint', { timeout: 180_000 }, () => {
  let dir: string;
  let units: RunningUnits;
  let ao: AoClient;
  let process: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'verity-checkpoint-'));
    units = await startUnits({ dir });
    const wallet = await generateWallet('ed25519');
    const signer = walletSigner(wallet);
    ao = aoClient({ mu: units.urls.mu, cu: units.urls.cu, wallet });
    const module = await publishModule(units.store, signer, LEDGER, 'ledger');
    process = await ao.spawn(module, units.scheduler.address, { tags: [] });
  });
  after(async () => {
    await units?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const add = async (from: number, count: number): Promise<void> => {
    for (let i = from; i < from + count; i++) await ao.message(process, { tags: [{ name: 'Action', value: 'Add' }], data: `entry ${i}` });
  };
  const cuArgs = async (): Promise<string[]> => ['cu', '--gateway', units.urls.gateway, '--dir', join(dir, 'cu-2'), '--port', String(await freePort()), '--checkpoint-every', String(EVERY)];
  const stateOf = async (url: string): Promise<{ hash: string; nonce: string; body: unknown }> => {
    const res = await fetch(`${url}/state/${process}`);
    assert.equal(res.status, 200, await res.clone().text());
    return { hash: res.headers.get('state-hash')!, nonce: res.headers.get('last-nonce')!, body: await res.json() };
  };
  const indexedCheckpoint = (): number | undefined => {
    const db = new Database(join(dir, 'cu-2', 'cu.sqlite'), { readonly: true });
    try {
      return (db.prepare('SELECT nonce FROM checkpoints WHERE process = ?').get(process) as { nonce: number } | undefined)?.nonce;
    } finally {
      db.close();
    }
  };

  test('it restarts from the previous checkpoint and reaches the same state hash', async () => {
    await add(0, 20);
    // A first run: the checkpoint at slot 15 (the sixteenth message) is written and indexed.
    const first = await serveCli(await cuArgs());
    assert.equal((await stateOf(first.info.url)).nonce, '20');
    await first.stop('SIGTERM');
    assert.equal(indexedCheckpoint(), EVERY - 1); // slots 0 … 15: sixteen messages

    // More messages; the next checkpoint (slot 31) kills the CU after storing it, before indexing it.
    await add(20, 20);
    const args = await cuArgs();
    const doomed = spawn(globalThis.process.execPath, [join(projectRoot, 'bin', 'verity.js'), ...args, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'], env: { ...globalThis.process.env, VERITY_FAILPOINT: 'cu-checkpoint-stored' },
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => doomed.once('exit', (_code, signal) => resolve(signal)));
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      doomed.stdout!.on('data', (d: Buffer) => {
        out += d.toString('utf8');
        if (out.includes('\n')) resolve((JSON.parse(out.split('\n')[0]) as { url: string }).url);
      });
      doomed.once('exit', () => reject(new Error('the CU exited before listening')));
    });
    await fetch(`${url}/state/${process}`).catch(() => undefined); // it dies answering this
    assert.equal(await exited, 'SIGKILL');
    const stored = await units.store.query({ tags: [{ name: 'Type', values: ['Checkpoint'] }, { name: 'Process', values: [process] }], first: 100 });
    const nonces = stored.edges.map((e) => Number(e.node.tags.find((t) => t.name === 'Nonce')?.value)).sort((a, b) => a - b);
    assert.ok(nonces.includes(2 * EVERY - 1), `the checkpoint at slot ${2 * EVERY - 1} was stored (${nonces.join(', ')})`);
    assert.equal(indexedCheckpoint(), EVERY - 1, 'the index still names the one before');

    // Restarted, it resumes from slot 15 and agrees with the CU that never stopped.
    const resumed = await serveCli(await cuArgs());
    try {
      const mine = await stateOf(resumed.info.url);
      const reference = await stateOf(units.urls.cu);
      assert.equal(mine.nonce, '40');
      assert.deepEqual(mine.body, reference.body);
      assert.equal(mine.hash, reference.hash);
      // Every slot's results chain, as each CU signed it (each signs its own attestations).
      const chains = async (u: string): Promise<string[]> => {
        const page = (await (await fetch(`${u}/results/${process}?limit=100`)).json()) as { edges: { node: Result }[] };
        return Promise.all(page.edges.map(async (e) => (await verifyAttestation(e.node)).resultsChain));
      };
      const mineChains = await chains(resumed.info.url);
      assert.equal(mineChains.length, 41);
      assert.deepEqual(mineChains, await chains(units.urls.cu));
    } finally {
      await resumed.stop('SIGTERM');
    }
  });
});
