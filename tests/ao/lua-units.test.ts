// A Lua process on the real units, driven by the unmodified aoconnect: bad Lua of every kind sent
// as Eval (a syntax error, a runtime error, an endless loop, a huge allocation, deep recursion)
// gets an error in its result, the process keeps working with its state as it was, what was
// stored before stays readable, and a second CU evaluating the same log reaches the same state.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect, createDataItemSigner } from '@permaweb/aoconnect';
import { openComputeUnit } from '../../src/ao/cu.js';
import { publishModule } from '../../src/ao/modules.js';
import { startUnits, unitWallet, type RunningUnits } from '../../src/ao/units.js';
import { generateWallet, walletSigner } from '../../src/store/wallet.js';

const COUNTER = `
Count = Count or 0
Handlers.add('Inc', 'Inc', function(msg) Count = Count + 1; msg.reply({ Data = tostring(Count) }); print(Count) end)
Handlers.add('Get', 'Get', function(msg) print(Count) end)
`;

type Tag = { name: string; value: string };
interface LegacyAo {
  spawn(a: { module: string; scheduler: string; signer: unknown; tags?: Tag[] }): Promise<string>;
  message(a: { process: string; signer: unknown; tags?: Tag[]; data?: string }): Promise<string>;
  result(a: { process: string; message: string }): Promise<{ Output: { data?: string } | null; Error?: unknown; Messages: { Target: string; Data: string; Tags: Tag[] }[] }>;
  dryrun(a: { process: string; tags?: Tag[]; data?: string }): Promise<{ Output: { data?: string } | null; Error?: unknown }>;
}

describe('a Lua process on the units', { timeout: 180_000 }, () => {
  let dir: string;
  let units: RunningUnits;
  let ao: LegacyAo;
  let owner: unknown;
  let stranger: unknown;
  let pid: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'verity-lua-units-'));
    units = await startUnits({ dir });
    ao = connect({ MODE: 'legacy', MU_URL: units.urls.mu, CU_URL: units.urls.cu, GATEWAY_URL: units.urls.gateway }) as unknown as LegacyAo;
    const [a, b] = await Promise.all([generateWallet('arweave'), generateWallet('arweave')]);
    owner = createDataItemSigner(a.type === 'arweave' ? a.jwk : undefined);
    stranger = createDataItemSigner(b.type === 'arweave' ? b.jwk : undefined);
    const module = await publishModule(units.store, walletSigner(a), COUNTER, 'lua-counter', { format: 'lua', limits: { memory: 64 * 2 ** 20, compute: 500 } });
    pid = await ao.spawn({ module, scheduler: units.scheduler.address, signer: owner });
  });

  after(async () => {
    await units?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const send = async (signer: unknown, action: string, data = '') => {
    const message = await ao.message({ process: pid, signer, data, tags: [{ name: 'Action', value: action }] });
    return { message, result: await ao.result({ process: pid, message }) };
  };

  test('handlers answer, replies go out, and bad Lua of every kind is an error that changes nothing', async () => {
    const first = await send(owner, 'Inc');
    assert.equal(first.result.Output?.data, '1\n');
    assert.equal(first.result.Messages[0]?.Data, '1');
    const bad: [string, RegExp][] = [
      ['Count = 100 local x = = 1', /syntax|expected|unexpected/i],
      ['Count = 100 error("broken on purpose")', /broken on purpose/],
      ['Count = 100 while true do end', /compute limit/],
      ['Count = 100 local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end', /memory/],
      ['Count = 100 local function f() return 1 + f() end return f()', /stack overflow|memory/],
    ];
    for (const [code, why] of bad) {
      const { result } = await send(owner, 'Eval', code);
      assert.match(String(result.Error), why, code);
    }
    assert.match(String((await send(stranger, 'Eval', 'Count = 100')).result.Error), /owner/);
    assert.equal((await send(owner, 'Inc')).result.Output?.data, '2\n', 'no bad message kept anything');
    assert.equal((await ao.result({ process: pid, message: first.message })).Output?.data, '1\n', 'what was stored is still there');
    assert.equal((await ao.dryrun({ process: pid, tags: [{ name: 'Action', value: 'Get' }] })).Output?.data, '2\n');
  });

  test('an Eval from the owner changes the process; a second CU evaluating the log from slot 0 reaches the same state hash', async () => {
    assert.equal((await send(owner, 'Eval', 'Handlers.add("Double", "Double", function() Count = Count * 2; print(Count) end) return "loaded"')).result.Output?.data, 'loaded');
    assert.equal((await send(owner, 'Double')).result.Output?.data, '4\n');
    await units.compute.checkpoint();
    const state = await units.compute.state(pid);
    const fresh = await openComputeUnit({ dir: join(dir, 'cu-restarted'), store: units.store, wallet: await unitWallet(join(dir, 'wallets'), 'cu-restarted'), scheduler: units.locate });
    try {
      const again = await fresh.state(pid);
      assert.equal(again.nonce, state.nonce);
      assert.equal(again.stateHash, state.stateHash);
    } finally {
      await fresh.close();
    }
  });
});
