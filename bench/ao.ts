// npm run bench:ao — messages/s and latency through MU → SU → CU for a trivial process, with the
// units embedded in one process and as four processes (gateway, su, cu, mu) talking HTTP.
// A message's latency is what an aoconnect user waits for: POST to the MU (acknowledged once the
// SU has assigned and persisted it) plus GET /result from the CU (evaluated on demand).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { publishModule } from '../src/ao/modules.js';
import { freePort, startUnits } from '../src/ao/units.js';
import { createItem, type Tag } from '../src/store/items.js';
import { openGatewayStore } from '../src/store/gateway-store.js';
import type { Store } from '../src/store/store.js';
import { generateWallet, walletSigner } from '../src/store/wallet.js';
import { pool, serveCli, type ServingCli } from '../tests/helpers.js';

const MESSAGES = Number(process.env.BENCH_AO_MESSAGES ?? 500);
const CONCURRENCY = [1, 8];
const TRIVIAL = `export function handle(state, msg) { const n = (state ?? 0) + 1; return { state: n, Output: n }; }`;
const AO = (type: string): Tag[] => [{ name: 'Data-Protocol', value: 'ao' }, { name: 'Variant', value: 'ao.TN.1' }, { name: 'Type', value: type }];

interface Urls {
  mu: string;
  cu: string;
}

async function post(url: string, raw: Uint8Array): Promise<string> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: raw });
  const body = (await res.json()) as { id?: string; error?: string };
  if (!res.ok || !body.id) throw new Error(`${url}: ${res.status} ${body.error}`);
  return body.id;
}

async function result(cu: string, process: string, message: string): Promise<void> {
  const res = await fetch(`${cu}/result/${message}?process-id=${process}`);
  if (!res.ok) throw new Error(`CU result: ${res.status} ${await res.text()}`);
  const body = (await res.json()) as { Error?: unknown };
  if (body.Error) throw new Error(`the process failed: ${String(body.Error)}`);
}

const percentile = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

/** Sends MESSAGES messages to a fresh process, `concurrency` at a time; returns throughput and latencies. */
async function measure(store: Store, urls: Urls, scheduler: string, concurrency: number): Promise<{ rate: number; p50: number; p99: number }> {
  const signer = walletSigner(await generateWallet('ed25519'));
  const module = await publishModule(store, signer, TRIVIAL, 'trivial');
  const spawn = await createItem('', signer, { tags: [...AO('Process'), { name: 'Module', value: module }, { name: 'Scheduler', value: scheduler }] });
  const process = await post(urls.mu, spawn.raw);
  const items = await Promise.all(Array.from({ length: MESSAGES }, (_, n) => createItem(String(n), signer, { target: process, tags: AO('Message') })));
  const latencies: number[] = [];
  const t0 = performance.now();
  await pool(items, concurrency, async (item) => {
    const start = performance.now();
    await result(urls.cu, process, await post(urls.mu, item.raw));
    latencies.push(performance.now() - start);
  });
  const seconds = (performance.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  return { rate: MESSAGES / seconds, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

async function embedded(dir: string, concurrency: number) {
  const units = await startUnits({ dir });
  try {
    return await measure(units.store, units.urls, units.scheduler.address, concurrency);
  } finally {
    await units.close();
  }
}

async function separate(dir: string, concurrency: number) {
  const port = { gateway: await freePort(), su: await freePort(), cu: await freePort(), mu: await freePort() };
  const url = (unit: keyof typeof port): string => `http://127.0.0.1:${port[unit]}`;
  const started: ServingCli[] = [];
  try {
    started.push(await serveCli(['gateway', '--store', join(dir, 'store'), '--port', String(port.gateway)]));
    const su = await serveCli(['su', '--gateway', url('gateway'), '--dir', join(dir, 'su'), '--port', String(port.su)]);
    started.push(su);
    started.push(await serveCli(['cu', '--gateway', url('gateway'), '--dir', join(dir, 'cu'), '--port', String(port.cu)]));
    started.push(await serveCli(['mu', '--gateway', url('gateway'), '--dir', join(dir, 'mu'), '--port', String(port.mu), '--cu', url('cu')]));
    return await measure(openGatewayStore(url('gateway')), { mu: url('mu'), cu: url('cu') }, su.info.address, concurrency);
  } finally {
    await Promise.all(started.map((s) => s.stop()));
  }
}

console.log(`AO units: ${MESSAGES} messages to a trivial process through MU → SU → CU (POST to the MU, then GET /result)\n`);
console.log('mode                         in flight  messages/s  p50 ms  p99 ms');
const rows: Record<string, number> = {};
for (const [label, run] of [['embedded (one process)', embedded], ['separate (4 processes, HTTP)', separate]] as const) {
  for (const concurrency of CONCURRENCY) {
    const dir = mkdtempSync(join(tmpdir(), 'verity-bench-ao-'));
    try {
      const r = await run(dir, concurrency);
      rows[`${label}/${concurrency}`] = r.rate;
      console.log(`${label.padEnd(28)} ${String(concurrency).padEnd(10)} ${r.rate.toFixed(0).padEnd(11)} ${r.p50.toFixed(1).padEnd(7)} ${r.p99.toFixed(1)}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
}
for (const c of CONCURRENCY) {
  console.log(`\nseparate / embedded throughput at ${c} in flight: ${(rows[`separate (4 processes, HTTP)/${c}`] / rows[`embedded (one process)/${c}`]).toFixed(2)}×`);
}
