// The units under load and then idle, embedded in this process: no warning of any kind while
// hundreds of messages are in flight (the MU once printed TimeoutOverflowWarning under load: a
// timer given a delay past 2^31 − 1 ms fires every 1 ms), and once the work is done no CPU used —
// no loop polling the queue, no timer firing more than a few times a second.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { publishModule } from '../../src/ao/modules.js';
import { startUnits } from '../../src/ao/units.js';
import { createItem, type Tag } from '../../src/store/items.js';
import { generateWallet, walletSigner } from '../../src/store/wallet.js';
import { pool, withTempDir } from '../helpers.js';

const AO = (type: string): Tag[] => [{ name: 'Data-Protocol', value: 'ao' }, { name: 'Variant', value: 'ao.TN.1' }, { name: 'Type', value: type }];
// Each client message makes one echo to the same process: cranks, pushes and results all run at
// once with the clients' own messages.
const ECHO = `export function handle(state, msg, env) {
  const n = (state ?? 0) + 1;
  const echo = msg.Tags.some((t) => t.name === 'Echo');
  const Messages = msg.Nonce > 0 && !echo ? [{ Target: env.Process.Id, Data: 'echo', Tags: [{ name: 'Echo', value: '1' }] }] : [];
  return { state: n, Output: n, Messages };
}`;

async function post(url: string, raw: Uint8Array): Promise<string> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: raw });
  const body = (await res.json()) as { id?: string; error?: string };
  assert.equal(res.status < 300, true, `${url}: ${res.status} ${body.error}`);
  return body.id!;
}

test('no warning under load, and idle units use no CPU', { timeout: 240_000 }, async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error): void => void warnings.push(`${w.name}: ${w.message}`);
  process.on('warning', onWarning);
  try {
    await withTempDir(async (dir) => {
      const units = await startUnits({ dir });
      try {
        const signer = walletSigner(await generateWallet('ed25519'));
        const module = await publishModule(units.store, signer, ECHO, 'echo');
        const spawn = await createItem('', signer, { tags: [...AO('Process'), { name: 'Module', value: module }, { name: 'Scheduler', value: units.scheduler.address }] });
        const pid = await post(units.urls.mu, spawn.raw);
        const items = await Promise.all(Array.from({ length: 150 }, (_, n) => createItem(String(n), signer, { target: pid, tags: AO('Message') })));
        await pool(items, 16, async (item) => {
          const id = await post(units.urls.mu, item.raw);
          const res = await fetch(`${units.urls.cu}/result/${id}?process-id=${pid}`);
          assert.equal(res.status, 200);
          await res.arrayBuffer();
        });
        await units.messenger.idle();
        const jobs = units.messenger.jobs();
        assert.equal(jobs.filter((j) => j.kind === 'push' && j.state === 'done').length, 150, 'every message made its echo');
        assert.equal(units.scheduler.stats().slots, 301, 'the spawn, 150 messages, 150 echoes');
        assert.deepEqual(warnings, [], 'no warning under load');

        // Idle: let the last answers and fsyncs settle, then measure.
        await sleep(500);
        const before = { cpu: process.cpuUsage(), mu: units.messenger.stats() };
        const started = performance.now();
        await sleep(3000);
        const cpu = process.cpuUsage(before.cpu);
        const wall = performance.now() - started;
        const mu = units.messenger.stats();
        const share = (cpu.user + cpu.system) / 1000 / wall;
        // 5 % of one core: an idle loop polling every few ms costs far more; GC and the timer wheel far less.
        assert.ok(share < 0.05, `idle units used ${(share * 100).toFixed(1)} % of a core over ${wall.toFixed(0)} ms`);
        assert.ok(mu.pumps - before.mu.pumps <= 3, `${mu.pumps - before.mu.pumps} crank loop runs while idle`);
        assert.ok(mu.timersArmed - before.mu.timersArmed <= 3, `${mu.timersArmed - before.mu.timersArmed} timers armed while idle`);
      } finally {
        await units.close();
      }
    });
    await sleep(20); // a warning is emitted on the next tick
    assert.deepEqual(warnings, []);
  } finally {
    process.off('warning', onWarning);
  }
});
