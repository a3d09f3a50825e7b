// npm run attack — the findings of the adversarial review, each replayed against a real embedded
// devnet (store, gateway, SU, CU, MU, token, coordinator, worker nodes) on 127.0.0.1. A scenario is
// the attack as the review ran it; its row says which defence was observed, the figure that shows
// it, and whether it held. "held" is computed from what happened, never assumed: a defence that is
// missing is a NO, a scenario that throws or runs out of time is a NO, and any NO exits with 1.
//
// Environment: ATTACK_MANIFESTS (finding 2's host.model calls, default 10,000), ATTACK_KEEP=1 keeps
// the devnet folder, ATTACK_ONLY=1,4,… runs only those findings (the devnet is started either way),
// ATTACK_VERBOSE=1 prints the devnet's own log. Rows 1c and 6b go past the review's own runs: the
// same attack as 1b through an SU that holds each request before its 500, and as 6 through the MU.
// The devnet's host extensions are wrapped (not changed) so that a row can tell whether a request
// was tokenised (host.job) before it was refused.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Worker } from 'node:worker_threads';
import { aoClient, expectReply, replyOf, type AoClient } from '../src/ao/client.js';
import { publishModule, type ModuleOptions } from '../src/ao/modules.js';
import { MESSENGER_DEFAULTS, type Job } from '../src/ao/mu.js';
import { HOST_EXTENSION, type Extension, type Extensions } from '../src/ao/runtime.js';
import { DEVNET_PARAMS, startDevnet, type Devnet } from '../src/client/devnet.js';
import { Verity } from '../src/client/sdk.js';
import { fundCoordinator } from '../src/processes/calls.js';
import { coordinatorExtensions, publishProcessModule } from '../src/processes/index.js';
import { hostCacheStats, type HostCacheStats } from '../src/processes/host.js';
import { createItem, tagValue, type Tag } from '../src/store/items.js';
import { DEFAULT_UPLOAD_POLICY } from '../src/store/gateway.js';
import type { Store } from '../src/store/store.js';
import { generateWallet, walletAddress, walletSigner, type Wallet } from '../src/store/wallet.js';
import { AMPLIFIER } from '../tests/ao/attackers.js';

interface Row {
  finding: string;
  attack: string;
  defence: string;
  figure: string;
  held: boolean;
}

const MIB = 2 ** 20;
/** Past this, the scenarios left are not started (each is also cut off after 5 minutes). */
const RUN_DEADLINE_MS = 12 * 60_000;
const AO_TAGS = (type: 'Message' | 'Process'): Tag[] => [
  { name: 'Data-Protocol', value: 'ao' },
  { name: 'Variant', value: 'ao.TN.1' },
  { name: 'Type', value: type },
];

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const since = (t0: number): number => Math.round(performance.now() - t0);
const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
};
const mb = (bytes: number): string => `${(bytes / MIB).toFixed(1)} MB`;
const tally = (values: (string | number)[]): string => {
  const counts = new Map<string, number>();
  for (const v of values) counts.set(String(v), (counts.get(String(v)) ?? 0) + 1);
  return [...counts].sort().map(([v, n]) => `${v}×${n}`).join(' ');
};

/** Rejects after `ms`: a hung scenario becomes a NO row, not a hung run. */
function within<T>(ms: number, what: string, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms)));
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

// A full GC before each memory reading, so that finding 2 measures what is kept, not garbage.
v8.setFlagsFromString('--expose-gc');
const collectGarbage = vm.runInNewContext('gc') as () => void;

/** What the host functions were asked, seen from outside host.ts (which the bench must not change). */
interface HostLog {
  /** Prompt bytes of each host.job call (−1: not JSON), and how long it took. */
  jobs: { promptBytes: number; ms: number }[];
  modelCalls: number;
  /** What the host's caches hold now (host.ts's hostCacheStats over the real extensions). */
  caches?: () => HostCacheStats;
}

/** The devnet's own extensions, each call recorded on its way through; prices (ticks) unchanged. */
function watchedExtensions(log: HostLog): (store: Store) => Extensions {
  return (store) => {
    const real = coordinatorExtensions(store);
    log.caches = () => hostCacheStats(real);
    const job = real.job;
    const model = real.model;
    const watchedJob: Extension = async (argument) => {
      let promptBytes = -1;
      try {
        const prompt = (JSON.parse(argument) as { prompt?: unknown }).prompt;
        promptBytes = typeof prompt === 'string' ? Buffer.byteLength(prompt) : -1;
      } catch {
        // the argument is the process's to get wrong
      }
      const t0 = performance.now();
      try {
        return await job(argument);
      } finally {
        log.jobs.push({ promptBytes, ms: since(t0) });
      }
    };
    watchedJob.ticks = job.ticks;
    const watchedModel: Extension = (argument) => {
      log.modelCalls++;
      return model(argument);
    };
    watchedModel.ticks = model.ticks;
    return { ...real, job: watchedJob, model: watchedModel };
  };
}

interface Net {
  devnet: Devnet;
  urls: Devnet['units']['urls'];
  coordinator: string;
  token: string;
  model: string;
  manifest: string;
  /** The devnet's funded user (tokens and a deposit). */
  user: Wallet;
  ao: AoClient;
  host: HostLog;
  client(wallet: Wallet): AoClient;
  /** A process of `wallet`'s on the devnet's SU that trusts its MU for From-Process. */
  spawn(wallet: Wallet, source: string, name: string, options?: ModuleOptions): Promise<string>;
}

const actionTag = (action: string): Tag[] => [{ name: 'Action', value: action }];

/** The number of slots in a process's log after its own (slot 0), read from the SU. */
async function slotsAfterBoot(net: Net, processId: string): Promise<number> {
  const latest = await net.devnet.units.scheduler.latest(processId);
  return latest ? Number(tagValue(latest.assignment, 'Nonce')) : 0;
}

/** A server that answers every request with `status` after `delayMs`, counting what it got. */
async function answeringServer(status: number, delayMs = 0): Promise<{ url: string; hits: () => number; close(): Promise<void> }> {
  let hits = 0;
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    hits++;
    request.resume();
    request.on('end', () => {
      setTimeout(() => {
        if (!response.writableEnded) response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'internal error' }));
      }, delayMs);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hits: () => hits,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function post(url: string, body: Uint8Array | string, type = 'application/octet-stream'): Promise<{ status: number; body: Record<string, unknown> | null }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': type }, body });
  return { status: res.status, body: (await res.json().catch(() => null)) as Record<string, unknown> | null };
}

// ---- finding 1: one outbox message that can never be delivered ----

async function frozenQueue(net: Net): Promise<Row> {
  const { ao, token, coordinator } = net;
  const address = walletAddress(net.user);
  const tokenBalance = async (): Promise<bigint> =>
    BigInt(expectReply(await ao.dryRun(token, { tags: [...actionTag('Balance'), { name: 'Target', value: address }], from: address }), 'Balance-Response').tags.Balance);
  const before = await tokenBalance();
  // Its own tags fit ANS-104's 4,096 bytes; the Credit-Notice that carries the X- tags on, plus the
  // tags the MU adds to every push, does not.
  const transfer = await ao.message(token, {
    tags: [
      ...actionTag('Transfer'),
      { name: 'Recipient', value: coordinator },
      { name: 'Quantity', value: '1' },
      { name: 'X-Pad', value: 'p'.repeat(3000) },
      { name: 'X-More', value: 'm'.repeat(900) },
    ],
  });
  const result = await ao.result(token, transfer);
  // Whatever the MU queued for it settles (pushed, failed, or still retrying) before it is counted.
  const rowsOf = (): Job[] => net.devnet.units.messenger.jobs().filter((j) => j.root === transfer);
  const settleBy = performance.now() + 5000;
  while (rowsOf().some((j) => j.state === 'pending' && j.attempts === 0) && performance.now() < settleBy) await sleep(50);
  const rows = rowsOf();
  const after = await tokenBalance();
  // The queue moved on: an ordinary deposit right after it is credited.
  const t0 = performance.now();
  let credited: string;
  try {
    await fundCoordinator(ao, { token, coordinator, account: address, amount: 7n, purpose: 'Deposit', timeoutMs: 30_000 });
    credited = `next Deposit credited in ${since(t0)} ms`;
  } catch (e) {
    credited = `next Deposit NOT credited: ${(e as Error).message.slice(0, 80)}`;
  }
  const failed = rows.filter((j) => j.state === 'failed').length;
  const pending = rows.filter((j) => j.state === 'pending').length;
  const refusedWhole = Boolean(result.Error) && after === before;
  return {
    finding: '1',
    attack: 'Transfer whose Credit-Notice + MU tags > 4,096 B',
    defence: refusedWhole ? 'Transfer fails whole (Error), balance kept' : `Transfer went through (${result.Error ? 'Error but balance moved' : 'no Error'})`,
    figure: `balance ${before}→${after}; MU rows for it: ${failed} failed, ${pending} pending; ${credited}`,
    held: refusedWhole && pending === 0 && credited.startsWith('next Deposit credited'),
  };
}

// Sends one message to each process its Data lists: pushes into as many lanes of the MU.
const RELAY = `
export function handle(state, m) {
  if ((m.Tags.find((t) => t.name === 'Action') || {}).value !== 'Relay') return { state: state ?? 0 };
  const targets = JSON.parse(m.Data);
  return { state: (state ?? 0) + 1, Messages: targets.map((to, i) => ({ Target: to, Data: String(i), Tags: [{ name: 'Action', value: 'Note' }] })) };
}`;

const ROGUE_PROCESSES = 16;

/**
 * An SU of the attacker's that answers 500, at once (1b) or after holding each request for
 * `holdMs` (1c), under the MU's 30 s request timeout: a row of the MU's holds its slot meanwhile.
 */
async function rogueScheduler(net: Net, finding: string, holdMs: number): Promise<Row> {
  const sdk = Verity.connect({ mu: net.urls.mu, cu: net.urls.cu, coordinator: net.coordinator, token: net.token, wallet: net.user });
  const timed = async (work: () => Promise<unknown>): Promise<number | string> => {
    const t0 = performance.now();
    try {
      await within(60_000, 'the request', work());
      return since(t0);
    } catch (e) {
      return `failed (${(e as Error).message.slice(0, 50)})`;
    }
  };
  // An Infer needs no push (the node reads the coordinator's results); a Deposit does: the token's
  // Credit-Notice to the coordinator is pushed by the MU, in the same queue as the rogue rows.
  const infer = (): Promise<number | string> => timed(() => sdk.infer('Once upon a time', { maxTokens: 8, wait: 'pending', timeoutMs: 60_000 }));
  const deposit = (): Promise<number | string> => timed(() => sdk.deposit(3n));
  const before = { infer: await infer(), deposit: await deposit() };

  const rogue = await answeringServer(500, holdMs);
  try {
    // The attacker's SU, as anyone may publish one: its Scheduler-Location and processes on it,
    // uploaded through the public gateway.
    const attacker = await generateWallet('ed25519');
    const signer = walletSigner(attacker);
    const location = await createItem('', signer, {
      tags: [{ name: 'Data-Protocol', value: 'ao' }, { name: 'Type', value: 'Scheduler-Location' }, { name: 'Url', value: rogue.url }, { name: 'Time-To-Live', value: '3600000' }],
    });
    const rogueProcesses: string[] = [];
    for (const item of [location, ...(await Promise.all(Array.from({ length: ROGUE_PROCESSES }, (_, i) =>
      createItem(`rogue ${i}`, signer, { tags: [...AO_TAGS('Process'), { name: 'Module', value: 'M'.repeat(43) }, { name: 'Scheduler', value: walletAddress(attacker) }] }))))]) {
      const uploaded = await post(`${net.urls.gateway}/tx`, item.raw);
      if (uploaded.status !== 200) throw new Error(`the gateway refused the attacker's ${tagValue(item, 'Type')}: ${uploaded.status}`);
      if (item !== location) rogueProcesses.push(item.id);
    }
    // Client messages to them (the MU tries a few times while the client waits, then keeps them for the background)…
    const directIds = new Set<string>();
    const direct = Promise.all(
      rogueProcesses.slice(0, 4).map(async (target, i) => {
        const item = await createItem(`direct ${i}`, signer, { target, tags: AO_TAGS('Message') });
        directIds.add(item.id);
        return (await post(`${net.urls.mu}/`, item.raw)).status;
      }),
    );
    // …and one message to a process of the attacker's on the real SU that pushes one message into each rogue lane.
    const relay = await net.spawn(attacker, RELAY, 'relay');
    await net.client(attacker).message(relay, { tags: actionTag('Relay'), data: JSON.stringify(rogueProcesses) });
    const t0 = performance.now();
    await sleep(1500);
    const during = { infer: await infer(), deposit: await deposit() };
    await sleep(Math.max(0, 2 * holdMs + 8000 - since(t0)));
    const statuses = await within(60_000, 'the client POSTs', direct);
    const rows = net.devnet.units.messenger.jobs().filter((j) => (j.kind === 'forward' && j.itemId !== null && directIds.has(j.itemId)) || j.key.startsWith(`push:${relay}:`));
    const elapsed = since(t0) / 1000;
    const fine = (b: number | string, d: number | string): boolean => typeof b === 'number' && typeof d === 'number' && d <= 3 * b + 3000;
    const inferOk = fine(before.infer, during.infer);
    const depositOk = fine(before.deposit, during.deposit);
    const delivered = rows.filter((j) => j.state === 'done').length;
    const ms = (v: number | string): string => (typeof v === 'number' ? `${v} ms` : v);
    return {
      finding,
      attack: holdMs ? `an SU of the attacker holding ${holdMs / 1000} s, then 500` : 'an SU of the attacker answering 500',
      defence: inferOk && depositOk ? 'rogue rows retried apart; others unaffected' : `held up: ${[inferOk ? '' : 'Infer', depositOk ? '' : 'Deposit (a push)'].filter(Boolean).join(', ')}`,
      figure:
        `Infer ${ms(before.infer)} before, ${ms(during.infer)} during; Deposit ${ms(before.deposit)} before, ${ms(during.deposit)} during; client POSTs ${tally(statuses)}; ` +
        `rogue rows after ${elapsed.toFixed(0)} s: ${tally(rows.map((j) => j.state))}, max ${Math.max(0, ...rows.map((j) => j.attempts))} tries; rogue SU asked ${rogue.hits()}×`,
      held: inferOk && depositOk && delivered === 0 && rows.length > 0,
    };
  } finally {
    await rogue.close();
  }
}

// ---- finding 2: the CU's memory, one manifest at a time ----

// Asks host.model about every reference in its Data; a compute-limit hit ends the batch.
const MODEL_PROBE = `
export function handle(state, m) {
  const refs = JSON.parse(m.Data || '[]');
  let ok = 0;
  let failed = 0;
  let last = '';
  for (const ref of refs) {
    try { host.model(JSON.stringify(ref)); ok++; }
    catch (e) { const why = String(e && e.message); if (/compute limit/.test(why)) throw e; failed++; last = why.slice(0, 160); }
  }
  return { state: state ?? 0, Output: { ok, failed, last } };
}`;

async function manifestFlood(net: Net): Promise<Row> {
  const target = Number(process.env.ATTACK_MANIFESTS ?? 10_000);
  // 10,000 uncached header reads are ~80 s of CU work alone on two cores: the run stops at the
  // time box and says how far it got (ATTACK_MANIFESTS sets the aim).
  const timeBoxMs = 90_000;
  const rssCeiling = 6 * 1024 * MIB;
  const t0 = performance.now();
  const store = net.devnet.units.store;
  const original = await store.get(net.manifest);
  if (!original) throw new Error(`the registered manifest ${net.manifest} is not in the store`);
  const attacker = await generateWallet('ed25519');
  const signer = walletSigner(attacker);
  const probe = await net.spawn(attacker, MODEL_PROBE, 'model-probe', { extensions: [HOST_EXTENSION] });
  const dryRun = async (refs: { model: string; manifest: string }[]): Promise<{ status: number; Output?: { ok: number; failed: number; last: string }; Error?: string }> => {
    const body = JSON.stringify({ Owner: walletAddress(attacker), Tags: actionTag('Probe'), Data: JSON.stringify(refs) });
    const r = await post(`${net.urls.cu}/dry-run?process-id=${probe}`, body, 'application/json');
    return { status: r.status, ...(r.body as object) };
  };
  await dryRun([]); // the probe's boot, before anything is measured

  const memory = (): NodeJS.MemoryUsage => {
    collectGarbage();
    return process.memoryUsage();
  };
  const start = memory();
  const kept = (m: NodeJS.MemoryUsage): number => m.heapUsed + m.arrayBuffers - start.heapUsed - start.arrayBuffers;
  // What is kept after each batch, so that the growth of the second half can be told from the first.
  const samples: { calls: number; kept: number }[] = [{ calls: 0, kept: 0 }];
  let calls = 0;
  let batch = 200;
  let stopped = '';
  let refusals = '';
  let publishMs = 0;
  let dryRunMs = 0;
  const modelCallsBefore = net.host.modelCalls;
  while (calls < target) {
    if (performance.now() - t0 > timeBoxMs) {
      stopped = `time box ${timeBoxMs / 1000} s`;
      break;
    }
    if (process.memoryUsage().rss > rssCeiling) {
      stopped = `rss over ${mb(rssCeiling)}`;
      break;
    }
    // Re-signed copies of the registered manifest: the same model, a new item id each.
    const refs: { model: string; manifest: string }[] = [];
    const p0 = performance.now();
    for (let i = 0; i < Math.min(batch, target - calls); i++) {
      const copy = await createItem(original.data, signer, { tags: original.tags, anchor: `copy-${calls + i}`.padEnd(32, '.') });
      await store.put(copy.raw);
      refs.push({ model: net.model, manifest: copy.id });
    }
    publishMs += since(p0);
    const made = net.host.modelCalls;
    const d0 = performance.now();
    const r = await dryRun(refs);
    dryRunMs += since(d0);
    const reached = net.host.modelCalls - made;
    if (r.status !== 200) {
      refusals = `dry-run ${r.status}`;
      if (reached === 0) break;
    }
    if (r.Error && /compute limit/.test(r.Error)) batch = Math.max(1, Math.floor(Math.max(1, reached) * 0.8));
    else if (r.Output && r.Output.failed > 0) refusals = `host.model refused ${r.Output.failed}: ${r.Output.last}`;
    calls += Math.max(reached, r.Error ? 0 : refs.length);
    if (reached === 0 && r.Error) {
      refusals = `dry-run Error: ${r.Error.slice(0, 80)}`;
      break;
    }
    samples.push({ calls, kept: kept(memory()) });
  }
  const end = memory();
  const cuAnswers = (await fetch(`${net.urls.cu}/`)).status === 200 && (await net.ao.dryRun(net.coordinator, { tags: actionTag('Models') })).Error === undefined;
  const total = kept(end);
  const half = samples.reduce((best, x) => (Math.abs(x.calls - calls / 2) < Math.abs(best.calls - calls / 2) ? x : best));
  const secondHalf = total - half.kept;
  const bounded = total < 512 * MIB && secondHalf < 64 * MIB;
  const reachedHost = net.host.modelCalls - modelCallsBefore;
  const cacheFigure = (): string => {
    if (!net.host.caches) return '';
    const { headers } = net.host.caches();
    return `; header cache ${headers.entries} entries, ${mb(headers.bytes)} of ${mb(headers.budget)}`;
  };
  return {
    finding: '2',
    attack: `host.model over ${calls} distinct manifests (dry-runs)`,
    defence: bounded ? 'the CU keeps a bounded amount per manifest' : 'the CU keeps every manifest it read',
    figure:
      `${reachedHost} host calls${calls < target ? ` (of ${target}: ${stopped || refusals || 'stopped'})` : ''} in ${(dryRunMs / 1000).toFixed(0)} s of dry-runs (+${(publishMs / 1000).toFixed(0)} s publishing copies); ` +
      `heap ${mb(start.heapUsed)}→${mb(end.heapUsed)}, buffers ${mb(start.arrayBuffers)}→${mb(end.arrayBuffers)}, rss ${mb(end.rss)}; ` +
      `second half +${mb(secondHalf)}${cacheFigure()}; CU answers: ${cuAnswers ? 'yes' : 'NO'}${refusals && calls >= target ? `; ${refusals}` : ''}`,
    held: bounded && cuAnswers && !stopped.startsWith('rss'),
  };
}

// ---- finding 3: a process at its compute limit, and host calls in a loop ----

const BURNER = `
export function handle(state, m) {
  if ((m.Tags.find((t) => t.name === 'Action') || {}).value === 'Burn') { for (;;); }
  return { state: state ?? 0 };
}`;
const COUNTER = `export function handle(state) { const n = (state ?? 0) + 1; return { state: n, Output: n }; }`;
const HOST_LOOP = `
export function handle(state, m) {
  if ((m.Tags.find((t) => t.name === 'Action') || {}).value === 'Loop') { for (;;) host.job(m.Data); }
  return { state: state ?? 0 };
}`;

async function spinningProcess(net: Net): Promise<Row> {
  const attacker = await generateWallet('ed25519');
  const ao = net.client(attacker);
  const burner = await net.spawn(attacker, BURNER, 'burner');
  const counter = await net.spawn(attacker, COUNTER, 'counter');
  const roundTrips = async (n: number): Promise<number[]> => {
    const times: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const r = await ao.result(counter, await ao.message(counter, { tags: actionTag('Inc'), data: String(i) }));
      if (r.Error) throw new Error(`the counter failed: ${r.Error}`);
      times.push(since(t0));
    }
    return times;
  };
  await roundTrips(3); // warm: its module loaded, its thread known
  const quiet = await roundTrips(30);

  // The units' GET / throughout the burn: each must answer, and quickly.
  const unitUrls = { gateway: net.urls.gateway, su: net.urls.su, cu: net.urls.cu, mu: net.urls.mu };
  const slowest: Record<string, number> = { gateway: 0, su: 0, cu: 0, mu: 0 };
  const unanswered: string[] = [];
  let probing = true;
  const probes = (async () => {
    while (probing) {
      await Promise.all(
        Object.entries(unitUrls).map(async ([unit, url]) => {
          const t0 = performance.now();
          try {
            const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
            if (res.status >= 500) unanswered.push(`${unit} ${res.status}`);
            await res.arrayBuffer();
          } catch (e) {
            unanswered.push(`${unit} ${(e as Error).name}`);
          }
          slowest[unit] = Math.max(slowest[unit], since(t0));
        }),
      );
      await sleep(100);
    }
  })();
  const b0 = performance.now();
  const burns = await Promise.all(Array.from({ length: 6 }, (_, i) => ao.message(burner, { tags: actionTag('Burn'), data: String(i) })));
  let burnsDone = 0;
  const burning = Promise.all(burns.map((id) => ao.result(burner, id).then((r) => (burnsDone++, r))));
  const burnMs = burning.then(() => since(b0));
  // Round trips for as long as the burner burns (30 at least), so every burn has company.
  const loaded: number[] = [];
  while (loaded.length < 30 || (burnsDone < burns.length && loaded.length < 2000)) loaded.push(...(await roundTrips(1)));
  const burnResults = await burning;
  probing = false;
  await probes;

  // Host calls are metered: host.job in a loop must end at the compute limit like any loop.
  const looper = await net.spawn(attacker, HOST_LOOP, 'host-loop', { extensions: [HOST_EXTENSION] });
  const jobsBefore = net.host.jobs.length;
  const input = JSON.stringify({ model: net.model, manifest: net.manifest, prompt: 'Once upon a time', maxTokens: 8, temperature: 0, topP: 0.9, seed: '0' });
  const l0 = performance.now();
  const loop = await ao.result(looper, await ao.message(looper, { tags: actionTag('Loop'), data: input }));
  const loopMs = since(l0);
  const hostJobs = net.host.jobs.length - jobsBefore;

  const limited = burnResults.every((r) => /compute limit/.test(String(r.Error)));
  const unitsOk = unanswered.length === 0 && Object.values(slowest).every((ms) => ms < 1000);
  // Slowed by sharing two cores is fine; frozen behind the burner (seconds) is not.
  const latencyOk = percentile(loaded, 99) <= 3 * percentile(quiet, 99) + 500;
  const meteredOk = /compute limit/.test(String(loop.Error)) && loopMs < 30_000;
  return {
    finding: '3',
    attack: '6 messages spinning at the compute limit; host.job loop',
    defence: [
      limited ? 'burns end at the limit' : 'burns NOT all limit errors',
      latencyOk && unitsOk ? 'others unaffected' : 'others held up',
      meteredOk ? 'host loop metered' : 'host loop NOT metered',
    ].join('; '),
    figure:
      `counter p50/p99 ${percentile(quiet, 50)}/${percentile(quiet, 99)} ms quiet, ${percentile(loaded, 50)}/${percentile(loaded, 99)} ms burning ` +
      `(${loaded.length} round trips during ${await burnMs} ms of burning); slowest GET / ${Object.entries(slowest).map(([u, ms]) => `${u} ${ms}`).join(', ')} ms` +
      `${unanswered.length ? `; unanswered ${tally(unanswered)}` : ''}; host loop: ${hostJobs} host.job calls, ${loopMs} ms, ${String(loop.Error ?? 'no Error').slice(0, 50)}`,
    held: limited && unitsOk && latencyOk && meteredOk,
  };
}

/**
 * The same burner through the MU: every client message is cranked (its result read from the CU,
 * its outbox pushed), and a process's results come one at a time. Forty messages to the burner
 * are five times the cranks the MU has slots for; a Deposit (the token's Credit-Notice is a push) must not
 * wait behind them.
 */
const BURNS_VIA_MU = 40;

async function spinningThroughMessenger(net: Net): Promise<Row> {
  const attacker = await generateWallet('ed25519');
  const ao = net.client(attacker);
  const burner = await net.spawn(attacker, BURNER, 'burner-mu');
  const sdk = Verity.connect({ mu: net.urls.mu, cu: net.urls.cu, coordinator: net.coordinator, token: net.token, wallet: net.user });
  const deposit = async (): Promise<number | string> => {
    const t0 = performance.now();
    try {
      await within(60_000, 'the Deposit', sdk.deposit(5n));
      return since(t0);
    } catch (e) {
      return `failed (${(e as Error).message.slice(0, 50)})`;
    }
  };
  const before = await deposit();
  const b0 = performance.now();
  const burns = await Promise.all(Array.from({ length: BURNS_VIA_MU }, (_, i) => ao.message(burner, { tags: actionTag('Burn'), data: `mu ${i}` })));
  const burning = Promise.all(burns.map((id) => ao.result(burner, id))).then(() => since(b0));
  await sleep(300);
  const during = await deposit();
  const burnMs = await within(120_000, 'the burns', burning);
  const ok = typeof before === 'number' && typeof during === 'number' && during <= 3 * before + 3000;
  const ms = (v: number | string): string => (typeof v === 'number' ? `${v} ms` : v);
  return {
    finding: '3b',
    attack: `${BURNS_VIA_MU} messages spinning at the limit, via the MU`,
    defence: ok ? "the burner's cranks leave the MU's other work alone" : "pushes wait behind the burner's cranks",
    figure: `Deposit ${ms(before)} before, ${ms(during)} during ${burnMs} ms of burning`,
    held: ok,
  };
}

// ---- finding 4: amplification ----

async function amplification(net: Net): Promise<Row> {
  const attacker = await generateWallet('ed25519');
  const p = await net.spawn(attacker, AMPLIFIER, 'amplifier-p');
  const q = await net.spawn(attacker, AMPLIFIER, 'amplifier-q');
  const budget = MESSENGER_DEFAULTS.limits.pushes;
  const t0 = performance.now();
  await net.client(attacker).message(p, { tags: [...actionTag('Ball'), { name: 'Copies', value: '2' }, { name: 'Peer', value: q }] });
  let idle = true;
  try {
    await within(120_000, 'the MU', net.devnet.units.messenger.idle());
  } catch {
    idle = false;
  }
  const seconds = since(t0) / 1000;
  const slots = (await slotsAfterBoot(net, p)) + (await slotsAfterBoot(net, q));
  // The client's own message plus what the MU pushed for it.
  const held = idle && slots - 1 <= budget;
  return {
    finding: '4',
    attack: 'two processes doubling each other from 1 message',
    defence: held ? 'the MU push budget stops the chain' : idle ? 'more slots than the budget' : 'the chain was still growing',
    figure: `${slots} slots in the two logs (${slots - 1} pushed) ${idle ? `once the MU was idle, after ${seconds.toFixed(1)} s` : `after ${seconds.toFixed(0)} s, MU not idle`}; MU budget ${budget} pushes`,
    held,
  };
}

// ---- finding 5: oversized input ----

/** A sub-case's row, or a NO row saying why it could not be run. */
async function subCase(finding: string, attack: string, run: () => Promise<Row>): Promise<Row> {
  try {
    return await run();
  } catch (e) {
    return { finding, attack, defence: 'the scenario failed', figure: (e as Error).message.replace(/\s+/g, ' ').slice(0, 160), held: false };
  }
}

async function oversizedInput(net: Net): Promise<Row[]> {
  return [
    await subCase('5a', 'unsigned 4 MiB dry-run to the CU', () => oversizedDryRun(net)),
    await subCase('5b', 'signed 15 MiB Infer to the coordinator', () => oversizedInfer(net)),
    ...(await unfundedPrompts(net)),
  ];
}

/** An unsigned 4 MiB dry-run: refused before it is parsed. */
async function oversizedDryRun(net: Net): Promise<Row> {
  const t0 = performance.now();
  const body = JSON.stringify({ Tags: actionTag('Nodes'), Data: 'x'.repeat(4 * MIB) });
  const r = await post(`${net.urls.cu}/dry-run?process-id=${net.coordinator}`, body, 'application/json');
  return { finding: '5a', attack: 'unsigned 4 MiB dry-run to the CU', defence: r.status === 413 ? '413 before parsing' : `answered ${r.status}`, figure: `${r.status} in ${since(t0)} ms`, held: r.status === 413 };
}

/** A signed 15 MiB Infer: under the units' 16 MiB item limit, far over the coordinator's prompt limit. */
async function oversizedInfer(net: Net): Promise<Row> {
  const jobsBefore = net.host.jobs.length;
  const t0 = performance.now();
  const item = await net.ao.sign(net.coordinator, { tags: [...actionTag('Infer'), { name: 'X-Options', value: '{"max_tokens":8}' }], data: 'a'.repeat(15 * MIB) });
  const signMs = since(t0);
  const t1 = performance.now();
  const sent = await post(`${net.urls.mu}/`, item.raw);
  let outcome: string;
  let sizeRefused = sent.status === 413;
  if (sent.status === 202) {
    const result = await within(120_000, 'the 15 MiB Infer', net.ao.result(net.coordinator, item.id));
    const refusal = replyOf(result, 'Infer-Response');
    sizeRefused = refusal?.tags.Code === '413';
    outcome = result.Error ? `result Error: ${String(result.Error).slice(0, 60)}` : refusal ? `Infer-Response ${refusal.tags.Code ?? refusal.tags.Status}` : 'no Infer-Response';
  } else outcome = `MU ${sent.status}`;
  const tokenised = net.host.jobs.slice(jobsBefore).filter((j) => j.promptBytes >= 15 * MIB).length;
  const held = sizeRefused && tokenised === 0;
  return {
    finding: '5b',
    attack: 'signed 15 MiB Infer to the coordinator',
    defence: held ? `refused on size (${outcome}), never tokenised` : tokenised ? 'tokenised before refusal' : `not refused on size (${outcome})`,
    figure: `refused ${since(t1)} ms after POST (signing ${signMs} ms); host.job calls on it: ${tokenised}`,
    held,
  };
}

/**
 * Prompts from a wallet with no deposit: 1 MB at the devnet's coordinator, then the largest prompt
 * a coordinator may be configured to take, at one so configured — there only the order of the
 * checks keeps the CU from tokenising it for a request that cannot be paid for.
 */
async function unfundedPrompts(net: Net): Promise<Row[]> {
  const stranger = await generateWallet('ed25519');
  const ao = net.client(stranger);
  const ask = async (finding: string, attack: string, coordinator: string, bytes: number, expected: string[]): Promise<Row> => {
    const jobsBefore = net.host.jobs.length;
    const t0 = performance.now();
    const id = await ao.message(coordinator, { tags: [...actionTag('Infer'), { name: 'X-Options', value: '{"max_tokens":8}' }], data: 'b'.repeat(bytes) });
    const result = await within(120_000, `the ${bytes}-byte Infer`, ao.result(coordinator, id));
    const ms = since(t0);
    const refusal = replyOf(result, 'Infer-Response');
    const code = result.Error ? `Error ${String(result.Error).slice(0, 40)}` : (refusal?.tags.Code ?? 'none');
    const tokenised = net.host.jobs.slice(jobsBefore).filter((j) => j.promptBytes >= bytes);
    const held = expected.includes(code) && tokenised.length === 0;
    return {
      finding,
      attack,
      defence: held ? `${code} before tokenising` : tokenised.length ? `tokenised first (${tokenised[0].ms} ms in host.job), then ${code}` : `answered ${code}, not ${expected.join('/')}`,
      figure: `${code} in ${ms} ms; host.job calls on it: ${tokenised.length}`,
      held,
    };
  };
  // The devnet's prompt limit is far below 1 MB: a size refusal (413) costs no more than the deposit check (402).
  const rows = [await subCase('5c', '1 MB Infer, no deposit', () => ask('5c', '1 MB Infer, no deposit', net.coordinator, 1_000_000, ['402', '413']))];
  rows.push(
    await subCase('5d', 'largest allowed prompt, no deposit', async () => {
      const { coordinator, maxPromptBytes } = await raisedPromptCoordinator(net);
      return ask('5d', `${maxPromptBytes} B Infer, no deposit, at Max-Prompt-Bytes=${maxPromptBytes}`, coordinator, maxPromptBytes, ['402']);
    }),
  );
  return rows;
}

/**
 * A second coordinator on the same token, registered for the same model, with Max-Prompt-Bytes as
 * high as it will take: 1 MiB, or the upper bound named when it refuses that.
 */
async function raisedPromptCoordinator(net: Net): Promise<{ coordinator: string; maxPromptBytes: number }> {
  const operator = await generateWallet('ed25519');
  const ao = net.client(operator);
  const module = await publishProcessModule(net.devnet.units.store, walletSigner(operator), 'coordinator');
  const spawn = async (maxPromptBytes: number): Promise<string> => {
    const params = { ...DEVNET_PARAMS, 'Max-Prompt-Bytes': String(maxPromptBytes) };
    const tags = [{ name: 'Token', value: net.token }, ...Object.entries(params).map(([name, value]) => ({ name, value })), { name: 'Authority', value: net.devnet.units.messenger.address }];
    return ao.spawn(module, net.devnet.units.scheduler.address, { tags });
  };
  const register = [...actionTag('Register-Model'), { name: 'Model', value: net.model }, { name: 'Manifest', value: net.manifest }];
  let maxPromptBytes = MIB;
  for (let tries = 0; tries < 2; tries++) {
    const coordinator = await spawn(maxPromptBytes);
    const result = await ao.result(coordinator, await ao.message(coordinator, { tags: register }));
    const bound = /Max-Prompt-Bytes must be a whole number in \d+\.\.(\d+)/.exec(String(result.Error));
    if (bound && tries === 0) {
      maxPromptBytes = Number(bound[1]);
      continue;
    }
    expectReply(result, 'Register-Model-Response');
    return { coordinator, maxPromptBytes };
  }
  throw new Error('no coordinator with a raised Max-Prompt-Bytes could be spawned');
}

// ---- finding 6: anonymous storage ----

async function anonymousStorage(net: Net): Promise<Row> {
  const signer = walletSigner(await generateWallet('ed25519'));
  const ceiling = 400 * MIB;
  const payload = randomBytes(MIB - 2048); // with its header, just under 1 MiB
  const t0 = performance.now();
  let accepted = 0;
  let status = 200;
  let detail = '';
  for (let n = 0; accepted < ceiling; n++) {
    const item = await createItem(payload, signer, { tags: [{ name: 'Content-Type', value: 'application/octet-stream' }], anchor: `fill-${n}`.padEnd(32, '.') });
    const r = await post(`${net.urls.gateway}/tx`, item.raw);
    status = r.status;
    if (status !== 200) {
      detail = [r.body?.quota, r.body?.error].filter(Boolean).join(' ');
      break;
    }
    accepted += item.raw.length;
  }
  const refused = status === 429 || status === 413;
  return {
    finding: '6',
    attack: 'one signer uploading 1 MiB items to /tx',
    defence: refused ? `refused with ${status} (${detail})` : `still accepting at ${mb(ceiling)} (stopped there)`,
    figure: `${mb(accepted)} accepted before ${refused ? status : 'the bench stopped'}, in ${(since(t0) / 1000).toFixed(1)} s`,
    held: refused,
  };
}

/**
 * The same attacker through the other door: every message the MU takes is stored for good too (the
 * SU puts it in the store), so one signer sending 1 MiB messages to a process of its own is held to
 * the gateway's per-signer quota only if the MU or SU counts them as well.
 */
async function storageThroughMessenger(net: Net): Promise<Row> {
  const attacker = await generateWallet('ed25519');
  const signer = walletSigner(attacker);
  const sink = await net.spawn(attacker, COUNTER, 'sink');
  const ceiling = DEFAULT_UPLOAD_POLICY.signerBytes + 16 * MIB;
  const payload = randomBytes(MIB - 2048).toString('base64').slice(0, MIB - 2048);
  const t0 = performance.now();
  let accepted = 0;
  let status = 202;
  let detail = '';
  for (let n = 0; accepted < ceiling; n++) {
    const item = await createItem(payload, signer, { target: sink, anchor: `sink-${n}`.padEnd(32, '.'), tags: AO_TAGS('Message') });
    const r = await post(`${net.urls.mu}/`, item.raw);
    status = r.status;
    if (status !== 202) {
      detail = String(r.body?.error ?? '').slice(0, 60);
      break;
    }
    accepted += item.raw.length;
  }
  const refused = status === 429 || status === 413;
  return {
    finding: '6b',
    attack: 'the same signer: 1 MiB messages through the MU',
    defence: refused ? `refused with ${status} (${detail})` : status === 202 ? `still accepting past the gateway's ${mb(DEFAULT_UPLOAD_POLICY.signerBytes)} (stopped there)` : `answered ${status} (${detail})`,
    figure: `${mb(accepted)} stored for good before ${refused ? status : status === 202 ? 'the bench stopped' : status}, in ${(since(t0) / 1000).toFixed(1)} s`,
    held: refused && accepted <= DEFAULT_UPLOAD_POLICY.signerBytes,
  };
}

// ---- finding 8: a read under load ----

async function readUnderLoad(net: Net): Promise<Row> {
  const infers = Promise.all(
    Array.from({ length: 50 }, async (_, i) => {
      const item = await net.ao.sign(net.coordinator, { tags: [...actionTag('Infer'), { name: 'X-Options', value: '{"max_tokens":4}' }], data: `Once upon a time ${i}` });
      return (await post(`${net.urls.mu}/`, item.raw)).status;
    }),
  );
  const reads = Promise.all(
    Array.from({ length: 50 }, async () => {
      const body = JSON.stringify({ Owner: walletAddress(net.user), Tags: actionTag('Nodes') });
      return (await post(`${net.urls.cu}/dry-run?process-id=${net.coordinator}`, body, 'application/json')).status;
    }),
  );
  const [sent, read] = await Promise.all([infers, reads]);
  const readsOk = read.every((s) => s === 200 || s === 503) && read.some((s) => s === 200);
  const sendsOk = sent.every((s) => s === 202 || s === 503);
  return {
    finding: '8',
    attack: '50 Nodes dry-runs beside 50 Infers',
    defence: readsOk && sendsOk ? 'answers or 503, never 500' : 'a 5xx other than 503',
    figure: `dry-runs ${tally(read)}; Infer POSTs ${tally(sent)}`,
    held: readsOk && sendsOk,
  };
}

// ---- finding 7: spinning timers ----

async function spinning(net: Net, overflowWarnings: string[]): Promise<Row> {
  const mu = net.devnet.units.messenger;
  // Work the MU did in the window: rows queued, rows settled, tries made. A pump that follows work
  // is its job; a busy loop (a 1 ms timer) pumps ~1,000 times a second with nothing to do.
  const work = (): number => mu.jobs().reduce((n, j) => n + 1 + (j.state === 'pending' ? 0 : 1) + j.attempts, 0);
  const seconds = 3;
  const before = { ...mu.stats(), work: work() };
  await sleep(seconds * 1000);
  const after = { ...mu.stats(), work: work() };
  const pumps = after.pumps - before.pumps;
  const done = after.work - before.work;
  const busy = pumps / seconds >= 200 || pumps > 4 * done + 10 * seconds;
  const held = overflowWarnings.length === 0 && !busy;
  return {
    finding: '7',
    attack: 'timers spinning (whole run)',
    defence: held ? 'no overflowed timer, no busy loop' : overflowWarnings.length ? 'timers overflowed' : 'the MU loop spins',
    figure: `TimeoutOverflowWarnings ${overflowWarnings.length}; MU pumps ${after.pumps} in all; in the last ${seconds} s ${pumps} pumps for ${done} units of queue work, ${after.timersArmed - before.timersArmed} timers armed`,
    held,
  };
}

// ---- the run ----

// The table, as text; the watchdog thread runs the same function (its source is passed over).
function tableText(rows: Row[]): string {
  const header = ['#', 'attack', 'defence observed', 'figure', 'held'];
  const cells = rows.map((r) => [r.finding, r.attack, r.defence, r.figure, r.held ? 'yes' : 'NO']);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]): string => `| ${c.map((v, i) => v.padEnd(widths[i])).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}

/** How long the main thread may go without running before the run is called frozen. */
const FROZEN_MS = 45_000;

/**
 * The devnet runs in this process, so an attack that freezes its event loop freezes the bench's
 * timers too, and no timeout of the bench's own could fire. A thread of its own watches a
 * heartbeat; when it stops, the thread writes the rows so far and a NO for the scenario that was
 * running straight to stderr and stdout, and ends the process (SIGTERM: exit status 143).
 */
function startWatchdog(): { scenario(finding: string, attack: string): void; row(row: Row): void } {
  const beat = new Int32Array(new SharedArrayBuffer(4));
  const origin = Date.now();
  const tick = (): void => void Atomics.store(beat, 0, Math.floor((Date.now() - origin) / 1000));
  tick();
  setInterval(tick, 1000).unref();
  const source = `
    const { parentPort, workerData } = require('node:worker_threads');
    const { writeSync } = require('node:fs');
    const tableText = ${tableText.toString()};
    const rows = [];
    let current = null;
    parentPort.on('message', (m) => { if (m.type === 'row') rows.push(m.row); else current = m; });
    const beat = new Int32Array(workerData.beat);
    setInterval(() => {
      const silent = Date.now() - (workerData.origin + Atomics.load(beat, 0) * 1000);
      if (silent < workerData.frozenMs) return;
      const frozen = { finding: current ? current.finding : '?', attack: current ? current.attack : 'between scenarios', defence: 'the units froze', figure: 'the event loop of the devnet (and the bench) did not run for ' + Math.round(silent / 1000) + ' s', held: false };
      writeSync(2, '[attack] frozen: ' + frozen.figure + '\\n');
      writeSync(1, tableText([...rows, frozen]) + '\\n\\nthe run was cut short: the devnet froze during finding ' + frozen.finding + '\\n');
      process.kill(process.pid, 'SIGTERM');
    }, 1000);
  `;
  const worker = new Worker(source, { eval: true, workerData: { beat: beat.buffer, origin, frozenMs: FROZEN_MS } });
  worker.unref();
  return {
    scenario: (finding, attack) => worker.postMessage({ type: 'scenario', finding, attack }),
    row: (row) => worker.postMessage({ type: 'row', row }),
  };
}

async function main(): Promise<number> {
  const watchdog = startWatchdog();
  const overflowWarnings: string[] = [];
  process.on('warning', (w) => {
    if (w.name === 'TimeoutOverflowWarning') overflowWarnings.push(w.message);
  });
  const only = process.env.ATTACK_ONLY ? new Set(process.env.ATTACK_ONLY.split(',').map((s) => s.trim())) : null;
  const progress = (line: string): void => void process.stderr.write(`[attack] ${line}\n`);
  const dir = mkdtempSync(join(tmpdir(), 'verity-attack-'));
  const host: HostLog = { jobs: [], modelCalls: 0 };
  const t0 = performance.now();
  progress(`starting a devnet in ${dir}`);
  const devnet = await startDevnet({ dir, nodes: 2, extensions: watchedExtensions(host), log: (line) => (process.env.ATTACK_VERBOSE ? progress(line) : undefined) });
  progress(`devnet ready in ${(since(t0) / 1000).toFixed(1)} s`);
  const rows: Row[] = [];
  try {
    const models = JSON.parse(
      expectReply(await aoClient({ ...devnet.units.urls, wallet: devnet.user }).dryRun(devnet.info.coordinator, { tags: actionTag('Models') }), 'Models-Response').data,
    ) as { id: string; manifest: string }[];
    const client = (wallet: Wallet): AoClient => aoClient({ mu: devnet.units.urls.mu, cu: devnet.units.urls.cu, wallet });
    const net: Net = {
      devnet,
      urls: devnet.units.urls,
      coordinator: devnet.info.coordinator,
      token: devnet.info.token,
      model: devnet.info.model,
      manifest: models.find((m) => m.id === devnet.info.model)!.manifest,
      user: devnet.user,
      ao: client(devnet.user),
      host,
      client,
      async spawn(wallet, source, name, options) {
        const module = await publishModule(devnet.units.store, walletSigner(wallet), source, name, options);
        return client(wallet).spawn(module, devnet.units.scheduler.address, { tags: [{ name: 'Authority', value: devnet.units.messenger.address }] });
      },
    };
    // Order matters where a scenario leaves work behind: the rogue SU's rows stay pending (retried
    // for a day), so finding 4, which waits for an idle MU, runs before them; 6b leaves hundreds of
    // 1 MiB messages for the MU to crank, minutes of work, so it runs last.
    const scenarios: [string, string, () => Promise<Row | Row[]>][] = [
      ['5', 'oversized input', () => oversizedInput(net)],
      ['6', 'anonymous storage', () => anonymousStorage(net)],
      ['1', 'a Transfer that cannot be delivered', () => frozenQueue(net)],
      ['4', 'amplification', () => amplification(net)],
      ['3', 'spinning processes', () => spinningProcess(net)],
      ['3b', 'a spinning process through the MU', () => spinningThroughMessenger(net)],
      ['2', 'CU memory', () => manifestFlood(net)],
      ['1b', 'a rogue SU', () => rogueScheduler(net, '1b', 0)],
      ['1c', 'a rogue SU that holds requests', () => rogueScheduler(net, '1c', 10_000)],
      ['8', 'a read under load', () => readUnderLoad(net)],
      ['6b', 'anonymous storage through the MU', () => storageThroughMessenger(net)],
    ];
    for (const [finding, what, run] of scenarios) {
      if (only && !only.has(finding)) continue;
      const s0 = performance.now();
      progress(`finding ${finding}: ${what}`);
      watchdog.scenario(finding, what);
      let got: Row[];
      const left = RUN_DEADLINE_MS - since(t0);
      if (left < 30_000) {
        // What earlier scenarios left running (an undefended attack keeps going) must not make the run endless.
        got = [{ finding, attack: what, defence: 'not run', figure: `the run passed its ${RUN_DEADLINE_MS / 60_000} min deadline`, held: false }];
      } else {
        try {
          const r = await within(Math.min(300_000, left), `finding ${finding}`, run());
          got = Array.isArray(r) ? r : [r];
        } catch (e) {
          got = [{ finding, attack: what, defence: 'the scenario failed', figure: (e as Error).message.replace(/\s+/g, ' ').slice(0, 160), held: false }];
        }
      }
      rows.push(...got);
      // Each row as it comes, so that a run cut short still says what it saw.
      for (const r of got) {
        watchdog.row(r);
        progress(`  ${r.finding}: ${r.held ? 'held' : 'NO'} — ${r.defence}; ${r.figure}`);
      }
      progress(`finding ${finding} done in ${(since(s0) / 1000).toFixed(1)} s`);
    }
    rows.push(await spinning(net, overflowWarnings));
  } finally {
    await devnet.close().catch((e: Error) => progress(`closing the devnet: ${e.message}`));
    if (process.env.ATTACK_KEEP) progress(`kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
  rows.sort((a, b) => a.finding.localeCompare(b.finding, 'en', { numeric: true }));
  console.log(tableText(rows));
  console.log(`\n${rows.filter((r) => r.held).length}/${rows.length} held; ${(since(t0) / 1000).toFixed(0)} s in all`);
  return rows.every((r) => r.held) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    console.error(e);
    process.exit(1);
  },
);
