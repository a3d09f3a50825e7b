// npm run bench:network — requests/s and latency of inference through the devnet (SDK → MU → SU →
// coordinator on the CU → node → engine with trace → Submit-Result → answer → audit draw → reveal →
// challenge window → final), against the same jobs run directly by the engine in this process.
//
// Two moments of a request are timed, both from the Infer's sending:
//   answer — the first Infer-Response (status pending): the text, decoded by the coordinator from
//            the node's committed tokens, before anyone checked it;
//   final  — the last one (status final, with the receipt): after the audit draw, the reveal and,
//            unless audited, the challenge window (the devnet's Challenge-Window-Ms, 3 s), which
//            no speed of the units shortens.
// The acceptance figures (issue 13) are the answer's: requests/s at 8 in flight, each slot free
// again at its answer (the finals are awaited at the end of the row and their rate printed too),
// and the answer's p50 for a 256-token job of the stories110M shape against the engine's.
//
//   BENCH_NETWORK_REQUESTS (default 80: the engine rows and the 8-in-flight row), BENCH_NETWORK_FINAL_REQUESTS (8: rows
//   that wait for finality), BENCH_NETWORK_110M_REQUESTS (5), BENCH_NETWORK_110M_TYPE (q8_0),
//   BENCH_NETWORK_CAPACITY (4: leases a node works at once), BENCH_NETWORK_STAKE (1000000 per node).
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { aoClient, expectReply } from '../src/ao/client.js';
import { unitWallet } from '../src/ao/units.js';
import { BUNDLED_MODEL, startDevnet, type Devnet } from '../src/client/devnet.js';
import { Verity, type InferOptions, type VerityClient } from '../src/client/sdk.js';
import { encode, generate, loadModel, type Model, type QuantizeTarget } from '../src/engine/index.js';
import { startNode, type RunningNode } from '../src/node/index.js';
import { publishModel } from '../src/store/models.js';
import { generateWallet, walletAddress, walletSigner } from '../src/store/wallet.js';
import { pool } from '../tests/helpers.js';
import { SHAPES, writeRandomGguf } from './random-model.js';

const REQUESTS = Number(process.env.BENCH_NETWORK_REQUESTS ?? 80);
const FINAL_REQUESTS = Number(process.env.BENCH_NETWORK_FINAL_REQUESTS ?? 8);
const BIG_REQUESTS = Number(process.env.BENCH_NETWORK_110M_REQUESTS ?? 5);
const BIG_TYPE = (process.env.BENCH_NETWORK_110M_TYPE ?? 'q8_0') as QuantizeTarget;
const CAPACITY = Number(process.env.BENCH_NETWORK_CAPACITY ?? 4);
// Enough stake that the leases' locks (Slash 6000 each, held until final) never make a task wait
// at this rate: ~100 tasks in their challenge windows at once.
const STAKE = BigInt(process.env.BENCH_NETWORK_STAKE ?? 1_000_000);
const MAX_TOKENS = 64;
const BIG_TOKENS = 256;
const PROMPTS = ['Once upon a time', 'Tom had a dog', 'The sun was', 'Lily liked', 'A big bird'];

const root = fileURLToPath(new URL('../../', import.meta.url));
const percentile = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const sortedOf = (values: number[]): number[] => [...values].sort((a, b) => a - b);

interface Row {
  label: string;
  inFlight: number;
  requests: number;
  /** Requests per second until the last slot was free again. */
  rate: number;
  p50: number;
  p99: number;
}

const fmt = (r: Row): string =>
  `${r.label.padEnd(52)} ${String(r.inFlight).padEnd(10)} ${String(r.requests).padEnd(9)} ${r.rate.toFixed(1).padEnd(11)} ${r.p50.toFixed(1).padEnd(9)} ${r.p99.toFixed(1)}`;
const HEADER = `${'path'.padEnd(52)} ${'in flight'.padEnd(10)} ${'requests'.padEnd(9)} ${'per s'.padEnd(11)} ${'p50 ms'.padEnd(9)} p99 ms`;

function row(label: string, inFlight: number, latencies: number[], seconds: number): Row {
  const sorted = sortedOf(latencies);
  return { label, inFlight, requests: latencies.length, rate: latencies.length / seconds, p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

async function engineRow(label: string, requests: number, inFlight: number, run: (i: number) => void): Promise<Row> {
  const latencies: number[] = [];
  const t0 = performance.now();
  await pool(Array.from({ length: requests }, (_, i) => i), inFlight, async (i) => {
    const start = performance.now();
    run(i);
    latencies.push(performance.now() - start);
    // One engine at a time in this thread; yield so that the pool's other workers take turns.
    await new Promise((resolve) => setImmediate(resolve));
  });
  return row(label, inFlight, latencies, (performance.now() - t0) / 1000);
}

/**
 * `requests` Infers, `inFlight` at once. With `slotUntil: 'final'` each slot waits for finality;
 * with 'answer' it is free again at the answer, and the finals are awaited after the last answer.
 * Returns the answer row and the final row (its rate: requests over the time until the last final).
 */
async function networkRows(
  label: string, verity: VerityClient, requests: number, inFlight: number, slotUntil: 'answer' | 'final', infer: (i: number) => { prompt: string; options: InferOptions },
): Promise<{ answer: Row; final: Row }> {
  const answers: number[] = [];
  const finals: Promise<number>[] = [];
  const t0 = performance.now();
  let answeredAt = t0;
  await pool(Array.from({ length: requests }, (_, i) => i), inFlight, async (i) => {
    const start = performance.now();
    const { prompt, options } = infer(i);
    let resolveAnswer!: () => void;
    const answer = new Promise<void>((resolve) => (resolveAnswer = resolve));
    let answered = false;
    const answerNow = (): void => {
      if (answered) return;
      answered = true;
      answers.push(performance.now() - start);
      answeredAt = performance.now();
      resolveAnswer();
    };
    const final = verity.infer(prompt, { ...options, onAnswer: answerNow }).then((r) => {
      if (r.status !== 'final') throw new Error(`task ${r.task}: ${r.status}`);
      // The pending answer and the final one came in one page: both are this moment.
      answerNow();
      return performance.now() - start;
    });
    finals.push(final);
    await (slotUntil === 'answer' ? Promise.race([answer, final]) : final);
  });
  const answerSeconds = (answeredAt - t0) / 1000;
  const finalLatencies = await Promise.all(finals);
  const finalSeconds = (performance.now() - t0) / 1000;
  return {
    answer: row(`${label}: answer`, inFlight, answers, slotUntil === 'answer' ? answerSeconds : finalSeconds),
    final: row(`${label}: final`, inFlight, finalLatencies, finalSeconds),
  };
}

/** A random-weight GGUF of the stories110M shape (bench/random-model.ts), cached in bench/.models as bench:engine does. */
function bigModelFile(type: QuantizeTarget): string {
  const dir = join(root, 'bench', '.models');
  const path = join(dir, `stories110M-${type}.gguf`);
  if (existsSync(path)) return path;
  mkdirSync(dir, { recursive: true });
  writeRandomGguf(`${path}.tmp`, SHAPES.stories110M, type, join(root, '..', 'shared', 'models', 'llama2-tokenizer.bin'), 1);
  renameSync(`${path}.tmp`, path);
  return path;
}

/**
 * Publishes and registers the 110M model on the devnet and starts two nodes serving only it (two,
 * so that an audit finds a validator that took no part), funded by the devnet's owner.
 */
async function serveBigModel(devnet: Devnet, dir: string, model: Model): Promise<{ modelId: string; nodes: RunningNode[] }> {
  const owner = await unitWallet(join(dir, 'wallets'), 'owner');
  const ownerAo = aoClient({ ...devnet.units.urls, wallet: owner });
  const { coordinator, token } = devnet.info;
  const ask = async (process: string, tags: { name: string; value: string }[], action: string): Promise<void> => {
    expectReply(await ownerAo.result(process, await ownerAo.message(process, { tags })), action);
  };
  const published = await publishModel(devnet.units.store, walletSigner(owner), model, 'stories110M-shape');
  await ask(coordinator, [{ name: 'Action', value: 'Register-Model' }, { name: 'Model', value: published.modelId }, { name: 'Manifest', value: published.manifestId }], 'Register-Model-Response');
  const nodes: RunningNode[] = [];
  for (let i = 0; i < 2; i++) {
    const wallet = await generateWallet('ed25519');
    await ask(token, [{ name: 'Action', value: 'Transfer' }, { name: 'Recipient', value: walletAddress(wallet) }, { name: 'Quantity', value: '100000' }], 'Debit-Notice');
    nodes.push(
      await startNode({
        dir: join(dir, `node-110m-${i}`), wallet, store: devnet.units.store, stake: 30_000n, models: [published.modelId], log: () => {},
        network: { mu: devnet.units.urls.mu, cu: devnet.units.urls.cu, coordinator, token },
      }),
    );
  }
  return { modelId: published.modelId, nodes };
}

/** The job the coordinator commits to, run by the engine here: greedy, `tokens` new tokens after the prompt. */
function runDirect(model: Model, prompt: string, tokens: number): void {
  const ids = encode(model.tokenizer, prompt);
  const run = generate(model, { prompt: ids, steps: ids.length - 1 + tokens, sampling: { temperature: 0, topp: 0.9 }, seed: 0n });
  while (!run.next().done);
}

const dir = mkdtempSync(join(tmpdir(), 'verity-bench-network-'));
const extraNodes: RunningNode[] = [];
try {
  const devnet = await startDevnet({ dir, log: () => {}, capacity: CAPACITY, stake: STAKE });
  const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
  await verity.infer('warm up', { maxTokens: 4 });
  const small = loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer });
  const smallJob = (i: number) => ({ prompt: PROMPTS[i % PROMPTS.length], options: { maxTokens: MAX_TOKENS, temperature: 0 } });
  console.log(`devnet: ${devnet.nodes.length} nodes of capacity ${CAPACITY}, stake ${STAKE} each; Challenge-Window-Ms 3000, Audit-Ppm 100000`);
  console.log(`answer = the first Infer-Response (pending); final = the last one (audit draw, reveal and challenge window in it)\n`);

  console.log(`${BUNDLED_MODEL.name}, ${MAX_TOKENS} new tokens, greedy`);
  console.log(HEADER);
  const rows: Row[] = [];
  const print = (r: Row): void => {
    rows.push(r);
    console.log(fmt(r));
  };
  const engine1 = await engineRow('engine, in this process', REQUESTS, 1, (i) => runDirect(small, PROMPTS[i % PROMPTS.length], MAX_TOKENS));
  print(engine1);
  const net1 = await networkRows('devnet, each slot waits for final', verity, FINAL_REQUESTS, 1, 'final', smallJob);
  print(net1.answer);
  print(net1.final);
  const engine8 = await engineRow('engine, in this process', REQUESTS, 8, (i) => runDirect(small, PROMPTS[i % PROMPTS.length], MAX_TOKENS));
  print(engine8);
  const net8 = await networkRows('devnet, slot free at the answer', verity, REQUESTS, 8, 'answer', smallJob);
  print(net8.answer);
  print(net8.final);
  const net8f = await networkRows('devnet, each slot waits for final', verity, Math.max(FINAL_REQUESTS, 16), 8, 'final', smallJob);
  print(net8f.answer);
  print(net8f.final);

  const bigFile = bigModelFile(BIG_TYPE);
  const big = loadModel(bigFile);
  const served = await serveBigModel(devnet, dir, big);
  extraNodes.push(...served.nodes);
  const bigPrompt = (i: number): string => PROMPTS[i % PROMPTS.length];
  console.log(`\nstories110M shape (${BIG_TYPE}, random weights), ${BIG_TOKENS} new tokens, greedy; served by 2 more nodes`);
  console.log(HEADER);
  // Warm-up, here and through the devnet: the CU parses the model's header (tokenizer) once, and
  // each node's first run touches its weights; a few short requests reach both nodes most likely.
  runDirect(big, bigPrompt(0), 8);
  for (let i = 0; i < 4; i++) await verity.infer(bigPrompt(i), { model: served.modelId, maxTokens: 4, temperature: 0, wait: 'pending' });
  // Paired: each request runs here and then through the devnet, one after the other, so that both
  // see the same load on the machine (this bench shares it with whatever else runs).
  const engineLatencies: number[] = [];
  const answerLatencies: number[] = [];
  const finalLatencies: number[] = [];
  const bigStart = performance.now();
  for (let i = 0; i < BIG_REQUESTS; i++) {
    const t = performance.now();
    runDirect(big, bigPrompt(i), BIG_TOKENS);
    engineLatencies.push(performance.now() - t);
    const one = await networkRows('', verity, 1, 1, 'final', () => ({ prompt: bigPrompt(i), options: { model: served.modelId, maxTokens: BIG_TOKENS, temperature: 0 } }));
    answerLatencies.push(one.answer.p50);
    finalLatencies.push(one.final.p50);
  }
  const bigSeconds = (performance.now() - bigStart) / 1000;
  const engineBig = row('engine, in this process', 1, engineLatencies, engineLatencies.reduce((a, b) => a + b, 0) / 1000);
  const netBig = {
    answer: row('devnet, each slot waits for final: answer', 1, answerLatencies, bigSeconds - engineBig.requests / engineBig.rate),
    final: row('devnet, each slot waits for final: final', 1, finalLatencies, bigSeconds - engineBig.requests / engineBig.rate),
  };
  print(engineBig);
  print(netBig.answer);
  print(netBig.final);
  const pairs = engineLatencies.map((e, i) => answerLatencies[i] / e);
  const pairedMedian = percentile(sortedOf(pairs), 50);
  console.log(`  each request's answer / its engine run: ${pairs.map((r) => r.toFixed(2)).join(', ')} (median ${pairedMedian.toFixed(2)})`);

  console.log('');
  console.log(`${BUNDLED_MODEL.name}, 1 in flight: answer p50 ${(net1.answer.p50 / engine1.p50).toFixed(1)}× the engine's, final p50 ${(net1.final.p50 / engine1.p50).toFixed(1)}×`);
  console.log(`${BUNDLED_MODEL.name}, 8 in flight: ${net8.answer.rate.toFixed(1)} answers/s (acceptance: ≥ 50), ${net8.final.rate.toFixed(1)} finals/s; answer p50 ${(net8.answer.p50 / engine8.p50).toFixed(1)}× the engine's`);
  console.log(`stories110M shape, 256 tokens: answer p50 ${netBig.answer.p50.toFixed(0)} ms = ${(netBig.answer.p50 / engineBig.p50).toFixed(2)}× the engine's ${engineBig.p50.toFixed(0)} ms (acceptance: ≤ 1.2×; paired median ${pairedMedian.toFixed(2)}×); final p50 ${(netBig.final.p50 / engineBig.p50).toFixed(2)}×`);
  for (const n of extraNodes.splice(0)) await n.close();
  await devnet.close();
} finally {
  for (const n of extraNodes) await n.close();
  rmSync(dir, { recursive: true, force: true });
}
