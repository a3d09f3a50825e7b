// Attacks on the CU, each written before its defence: a process that burns its whole compute limit,
// one that calls a host function in a loop, one that asks for host functions it was not given, and
// a flood of dry-runs. What the defence promises is asserted, never a timing.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { aoClient, type AoClient } from '../../src/ao/client.js';
import { MAX_QUEUED_DRY_RUNS } from '../../src/ao/cu.js';
import { publishModule } from '../../src/ao/modules.js';
import { HOST_EXTENSION, type Extension } from '../../src/ao/runtime.js';
import { startUnits, type RunningUnits } from '../../src/ao/units.js';
import { generateWallet, walletSigner, type Wallet } from '../../src/store/wallet.js';

// Spins until its compute limit stops it; answers Get at once.
const BURNER = `
export function handle(state, msg) {
  const action = (msg.Tags.find((t) => t.name === 'Action') || {}).value;
  if (action === 'Burn') { for (;;); }
  return { state: state ?? { n: 0 }, Output: 'ok' };
}`;

const COUNTER = `
export function handle(state, msg) {
  const s = state ?? { count: 0 };
  const action = (msg.Tags.find((t) => t.name === 'Action') || {}).value;
  if (action === 'Inc') s.count += 1;
  return { state: s, Output: { count: s.count, host: typeof host } };
}`;

// Calls host.echo as often as it is asked to, or until the host refuses; Refused: calls that the
// host refuses, each caught, as an attacker looping on a refusal would.
const CALLER = `
export function handle(state, msg) {
  const s = state ?? { calls: 0 };
  const action = (msg.Tags.find((t) => t.name === 'Action') || {}).value;
  const n = Number(msg.Data || 0);
  for (let i = 0; i < n; i++) {
    if (action === 'Refused') { try { host.echo('refuse'); } catch (e) { if (/compute limit/.test(e.message)) throw e; } }
    else host.echo('x');
    s.calls += 1;
  }
  return { state: s, Output: { calls: s.calls } };
}`;

const ECHO_TICKS = 100;
const COMPUTE = 1_000;

describe('the CU under attack', { timeout: 120_000 }, () => {
  let units: RunningUnits;
  let ao: AoClient;
  let wallet: Wallet;
  let echoes = 0;
  let dir: string;

  const spawn = async (source: string, name: string, extensions: string[] = []): Promise<string> => {
    const module = await publishModule(units.store, walletSigner(wallet), source, name, { limits: { memory: 32 * 2 ** 20, compute: COMPUTE }, extensions });
    return ao.spawn(module, units.scheduler.address, { tags: [] });
  };
  const act = (action: string, data?: string) => ({ tags: [{ name: 'Action', value: action }], data });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'verity-cu-attacks-'));
    const echo: Extension = (argument) => {
      echoes += 1;
      if (argument === 'refuse') throw new Error('refused');
      return argument;
    };
    echo.ticks = () => ECHO_TICKS;
    units = await startUnits({ dir, extensions: { echo } });
    wallet = await generateWallet('ed25519');
    ao = aoClient({ ...units.urls, wallet });
  });
  after(async () => {
    await units?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a process at its compute limit holds up neither other processes nor the units\' HTTP routes', async () => {
    const burner = await spawn(BURNER, 'burner');
    const counter = await spawn(COUNTER, 'counter');
    await ao.result(counter, await ao.message(counter, act('Inc')));
    // Three burns queue on the burner's log: seconds of evaluation in all.
    const burns = await Promise.all([1, 2, 3].map((i) => ao.message(burner, act('Burn', String(i)))));
    let burnsDone = 0;
    const burning = Promise.all(burns.map((id) => ao.result(burner, id).then((r) => ((burnsDone += 1), r))));
    // Meanwhile the other process is evaluated, read and dry-run, and every unit answers.
    const r = await ao.result(counter, await ao.message(counter, act('Inc')));
    assert.deepEqual(r.Output, { count: 2, host: 'undefined' });
    assert.deepEqual((await ao.dryRun(counter, act('Get'))).Output, { count: 2, host: 'undefined' });
    for (const url of Object.values(units.urls)) assert.ok((await fetch(url)).status < 500, url);
    assert.ok(burnsDone < burns.length, `the counter waited for ${burnsDone} of the burner's ${burns.length} messages`);
    for (const burn of await burning) assert.match(String(burn.Error), new RegExp(`compute limit: more than ${COMPUTE} ticks`));
  });

  test('host calls are charged against the compute limit: a loop of them stops at the limit', async () => {
    const caller = await spawn(CALLER, 'caller', [HOST_EXTENSION]);
    const before = echoes;
    const few = await ao.result(caller, await ao.message(caller, act('Call', '3')));
    assert.deepEqual(few.Output, { calls: 3 });
    assert.ok(few.GasUsed >= 3 * ECHO_TICKS, `gas ${few.GasUsed} counts the host calls`);
    const many = await ao.result(caller, await ao.message(caller, act('Call', '1000000')));
    assert.match(String(many.Error), /compute limit/);
    // The host did at most the work the limit pays for.
    assert.ok(echoes - before <= 3 + COMPUTE / ECHO_TICKS + 1, `${echoes - before} host calls`);
    assert.deepEqual((await ao.dryRun(caller, act('Call', '0'))).Output, { calls: 3 }, 'the failed message left the state');
    // A refused call is paid for too: a loop on refusals stops at the limit as well.
    const refusedBefore = echoes;
    const refused = await ao.result(caller, await ao.message(caller, act('Refused', '1000000')));
    assert.match(String(refused.Error), /compute limit/);
    assert.ok(echoes - refusedBefore <= COMPUTE / ECHO_TICKS + 1, `${echoes - refusedBefore} refused host calls`);
  });

  test('host functions reach only modules tagged Extension: Verity-Host', async () => {
    const plain = await spawn(CALLER, 'caller-untagged');
    const r = await ao.result(plain, await ao.message(plain, act('Call', '1')));
    assert.match(String(r.Error), /'host' is not defined/);
    const counter = await spawn(COUNTER, 'counter-tagged', [HOST_EXTENSION]);
    assert.deepEqual((await ao.dryRun(counter, act('Get'))).Output, { count: 0, host: 'object' });
  });

  test('a flood of dry-runs gets answers or 503, never 500, and the process still answers after it', async () => {
    const burner = await spawn(BURNER, 'burner-flood');
    const burn = ao.message(burner, act('Burn', 'flood'));
    const statuses = await Promise.all(
      Array.from({ length: MAX_QUEUED_DRY_RUNS + 24 }, () =>
        fetch(`${units.urls.cu}/dry-run?process-id=${burner}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ Tags: [{ name: 'Action', value: 'Get' }] }),
        }).then((res) => res.status),
      ),
    );
    await burn;
    assert.deepEqual([...new Set(statuses)].sort(), [200, 503], `statuses ${statuses.join(',')}`);
    assert.deepEqual((await ao.dryRun(burner, act('Get'))).Output, 'ok');
    // An oversized dry-run body is refused before it is parsed.
    const big = await fetch(`${units.urls.cu}/dry-run?process-id=${burner}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ Data: 'x'.repeat(2 * 2 ** 20) }) });
    assert.equal(big.status, 413);
  });
});
