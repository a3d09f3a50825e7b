// npm run bench:ao — messages/s and latency through MU → SU → CU for a trivial process, with the
// units embedded in one process and as four processes (gateway, su, cu, mu) talking HTTP.
// A message's latency is what an aoconnect user waits for: POST to the MU (acknowledged once the
// SU has assigned and persisted it) plus GET /result from the CU (evaluated on demand).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { readFileSync } from 'node:fs';
import { LuaVM } from '../src/ao/lua-runtime.js';
import { publishModule } from '../src/ao/modules.js';
import { ProcessVM, evaluate, hostCallOf, loadRuntime, type ProcessEnv, type ProcessMessage } from '../src/ao/runtime.js';
import { freePort, startUnits } from '../src/ao/units.js';
import { createItem, type Tag } from '../src/store/items.js';
import { openGatewayStore } from '../src/store/gateway-store.js';
import type { Store } from '../src/store/store.js';
import { generateWallet, walletAddress, walletSigner } from '../src/store/wallet.js';
import { pool, serveCli, type ServingCli } from '../tests/helpers.js';

const MESSAGES = Number(process.env.BENCH_AO_MESSAGES ?? 500);
const CONCURRENCY = [1, 8];
const TRIVIAL = `export function handle(state, msg) { const n = (state ?? 0) + 1; return { state: n, Output: n }; }`;
/** The same in Lua on the aos library: a handler that counts (every message matches it). */
const TRIVIAL_LUA = `N = 0\nHandlers.add('count', function() return true end, function() N = N + 1; print(N) end)`;
type TrivialModule = { source: string; format: 'js' | 'lua' };
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
async function measure(store: Store, urls: Urls, scheduler: string, concurrency: number, trivial: TrivialModule): Promise<{ rate: number; p50: number; p99: number }> {
  const signer = walletSigner(await generateWallet('ed25519'));
  const module = await publishModule(store, signer, trivial.source, 'trivial', { format: trivial.format });
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

async function embedded(dir: string, concurrency: number, trivial: TrivialModule = { source: TRIVIAL, format: 'js' }) {
  const units = await startUnits({ dir });
  try {
    return await measure(units.store, units.urls, units.scheduler.address, concurrency, trivial);
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
    return await measure(openGatewayStore(url('gateway')), { mu: url('mu'), cu: url('cu') }, su.info.address, concurrency, { source: TRIVIAL, format: 'js' });
  } finally {
    await Promise.all(started.map((s) => s.stop()));
  }
}

console.log(`AO units: ${MESSAGES} messages to a trivial process through MU → SU → CU (POST to the MU, then GET /result)\n`);
console.log('mode                         in flight  messages/s  p50 ms  p99 ms');
const rows: Record<string, number> = {};
const embeddedLua = (dir: string, concurrency: number) => embedded(dir, concurrency, { source: TRIVIAL_LUA, format: 'lua' });
for (const [label, run] of [['embedded (one process)', embedded], ['separate (4 processes, HTTP)', separate], ['embedded, Lua (aos handler)', embeddedLua]] as const) {
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

// The token process with many holders: what a Transfer costs with the state kept in its VM, against
// the old way (a fresh VM per message, the whole state parsed in and serialised out: the peer), and
// what a checkpoint of that state weighs and costs to write and restore.
const TOKEN = readFileSync(new URL('../src/processes/bundled/token.js', import.meta.url), 'utf8');
const TOKEN_MESSAGES = Number(process.env.BENCH_AO_TOKEN_MESSAGES ?? 500);
await loadRuntime();
const owner = walletAddress(await generateWallet('ed25519'));
const TOKEN_ID = 'T'.repeat(43);
const env: ProcessEnv = { Process: { Id: TOKEN_ID, Owner: owner, Tags: [] }, Module: { Id: 'M'.repeat(43), Owner: owner, Tags: [] } };
const holder = (i: number): string => `holder-${String(i).padStart(36, '0')}`;
const tokenState = (holders: number): string => {
  const Balances: Record<string, string> = { [owner]: String(10n ** 30n) };
  for (let i = 0; i < holders; i++) Balances[holder(i)] = '1000';
  return JSON.stringify({ Name: 'Bench', Ticker: 'BNC', Denomination: 12, Logo: null, Owner: owner, TotalSupply: String(10n ** 30n + BigInt(holders) * 1000n), Balances });
};
let slot = 1;
const transfer = (holders: number): ProcessMessage => ({
  Id: `transfer-${slot}`.padEnd(43, 'x'), Data: '', Owner: owner, From: owner, Target: TOKEN_ID, Nonce: slot++, Timestamp: 1_700_000_000_000 + slot, 'Block-Height': 1, Cron: false,
  Tags: [{ name: 'Action', value: 'Transfer' }, { name: 'Recipient', value: holder(slot % holders) }, { name: 'Quantity', value: '1' }],
});
const limits = { memory: 256 * 2 ** 20, compute: 1_000 };
console.log(`\ntoken process, ms per Transfer (${TOKEN_MESSAGES} in place; the peer: a fresh VM per message with the state parsed in and out)`);
console.log('holders    in place  fresh VM per message (peer)  ratio');
const perMessage: Record<number, number> = {};
for (const holders of [100, 100_000]) {
  const state = tokenState(holders);
  let vm = await ProcessVM.open({ source: TOKEN, env, limits, hostNames: [] }, state, hostCallOf({}));
  for (let i = 0; i < 200; i++) ({ vm } = await vm.apply(transfer(holders))); // warm up
  let t0 = performance.now();
  for (let i = 0; i < TOKEN_MESSAGES; i++) {
    const { outcome, vm: after } = await vm.apply(transfer(holders));
    if (outcome.Error) throw new Error(`Transfer failed: ${outcome.Error}`);
    vm = after;
  }
  const inPlace = (performance.now() - t0) / TOKEN_MESSAGES;
  perMessage[holders] = inPlace;
  const peerMessages = holders > 10_000 ? 10 : 100;
  let parsed: unknown = JSON.parse(state);
  t0 = performance.now();
  for (let i = 0; i < peerMessages; i++) parsed = (await evaluate(TOKEN, JSON.parse(JSON.stringify(parsed)), transfer(holders), env, limits)).state;
  const fresh = (performance.now() - t0) / peerMessages;
  console.log(`${String(holders).padEnd(10)} ${inPlace.toFixed(3).padEnd(9)} ${fresh.toFixed(3).padEnd(28)} ${(fresh / inPlace).toFixed(1)}× faster`);
  if (holders === 100_000) {
    t0 = performance.now();
    const json = await vm.state();
    const serialise = performance.now() - t0;
    t0 = performance.now();
    const item = await createItem(json, walletSigner(await generateWallet('ed25519')), { tags: [{ name: 'Type', value: 'Checkpoint' }] });
    const sign = performance.now() - t0;
    t0 = performance.now();
    const restored = await ProcessVM.open({ source: TOKEN, env, limits, hostNames: [] }, json, hostCallOf({}));
    const restore = performance.now() - t0;
    if (await restored.state() !== json) throw new Error('the restored state differs');
    restored.dispose();
    console.log(`checkpoint at ${holders} holders: ${(item.raw.length / 2 ** 20).toFixed(1)} MiB; serialise ${serialise.toFixed(0)} ms, sign ${sign.toFixed(0)} ms, restore ${restore.toFixed(0)} ms`);
  }
  vm.dispose();
}
console.log(`per-Transfer time at 100,000 holders / at 100: ${(perMessage[100_000] / perMessage[100]).toFixed(2)}× (goal: within 2×)`);

// The same token bookkeeping as a Lua process on the aos library (balances in a Lua table, kept in
// the process's WebAssembly memory): a Transfer debits, credits and sends both notices.
const TOKEN_LUA = `
Balances = Balances or {}
Handlers.add('Mint-Many', 'Mint-Many', function(msg)
  for i = 1, tonumber(msg.Data) do Balances[string.format('holder-%036d', i - 1)] = 1000 end
  Balances[msg.From] = 10 ^ 15 // 1
end)
Handlers.add('Transfer', 'Transfer', function(msg)
  local q, to = tonumber(msg.Tags.Quantity), msg.Tags.Recipient
  if (Balances[msg.From] or 0) < q then error('Insufficient Balance') end
  Balances[msg.From] = Balances[msg.From] - q
  Balances[to] = (Balances[to] or 0) + q
  Send({ Target = msg.From, Action = 'Debit-Notice', Recipient = to, Quantity = tostring(q) })
  Send({ Target = to, Action = 'Credit-Notice', Sender = msg.From, Quantity = tostring(q) })
end)
`;
console.log(`\nLua token process (aos handlers), ms per Transfer (${TOKEN_MESSAGES} in place)`);
console.log('holders    in place');
const luaPerMessage: Record<number, number> = {};
for (const holders of [100, 100_000]) {
  const spec = { format: 'lua' as const, source: TOKEN_LUA, env, limits, hostNames: [] };
  const vm = await LuaVM.open(spec, 'null', hostCallOf({}));
  const mint = { ...transfer(holders), Data: String(holders), Tags: [{ name: 'Action', value: 'Mint-Many' }] };
  const minted = (await vm.apply(mint)).outcome;
  if (minted.Error) throw new Error(`Mint-Many failed: ${minted.Error}`);
  for (let i = 0; i < 200; i++) await vm.apply(transfer(holders)); // warm up
  let t0 = performance.now();
  for (let i = 0; i < TOKEN_MESSAGES; i++) {
    const { outcome } = await vm.apply(transfer(holders));
    if (outcome.Error) throw new Error(`Transfer failed: ${outcome.Error}`);
  }
  luaPerMessage[holders] = (performance.now() - t0) / TOKEN_MESSAGES;
  console.log(`${String(holders).padEnd(10)} ${luaPerMessage[holders].toFixed(3)}`);
  if (holders === 100_000) {
    t0 = performance.now();
    const image = await vm.state();
    const serialise = performance.now() - t0;
    t0 = performance.now();
    const restored = await LuaVM.open(spec, image, hostCallOf({}));
    const restore = performance.now() - t0;
    if ((await restored.state()) !== image) throw new Error('the restored memory differs');
    console.log(`memory image at ${holders} holders: ${(image.length / 2 ** 20).toFixed(1)} MiB; take ${serialise.toFixed(0)} ms, restore ${restore.toFixed(0)} ms`);
  }
}
console.log(`Lua per-Transfer time at 100,000 holders / at 100: ${(luaPerMessage[100_000] / luaPerMessage[100]).toFixed(2)}× (goal: within 2×)`);
