// npm run bench:network — requests/s and latency of inference through the devnet (SDK → MU → SU →
// coordinator on the CU → node → engine with trace → stored trace → Submit-Result → answer), against
// the same jobs run directly by the engine in this process. The ratio is the network's overhead.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { BUNDLED_MODEL, startDevnet } from '../src/client/devnet.js';
import { Verity } from '../src/client/sdk.js';
import { encode, generate, loadModel } from '../src/engine/index.js';
import { pool } from '../tests/helpers.js';

const REQUESTS = Number(process.env.BENCH_NETWORK_REQUESTS ?? 40);
const MAX_TOKENS = 64;
const PROMPTS = ['Once upon a time', 'Tom had a dog', 'The sun was', 'Lily liked', 'A big bird'];

const percentile = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

interface Row {
  label: string;
  rate: number;
  p50: number;
  p99: number;
}

async function measure(label: string, inFlight: number, run: (i: number) => Promise<void>): Promise<Row> {
  const latencies: number[] = [];
  const t0 = performance.now();
  await pool(
    Array.from({ length: REQUESTS }, (_, i) => i),
    inFlight,
    async (i) => {
      const start = performance.now();
      await run(i);
      latencies.push(performance.now() - start);
    },
  );
  const seconds = (performance.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  return { label, rate: REQUESTS / seconds, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

const dir = mkdtempSync(join(tmpdir(), 'verity-bench-network-'));
try {
  const devnet = await startDevnet({ dir, log: () => {} });
  const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
  await verity.infer('warm up', { maxTokens: 4 });
  const model = loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer });
  const direct = async (i: number): Promise<void> => {
    // The job the coordinator would commit to: greedy, MAX_TOKENS new tokens after the prompt.
    const prompt = encode(model.tokenizer, PROMPTS[i % PROMPTS.length]);
    const run = generate(model, { prompt, steps: prompt.length - 1 + MAX_TOKENS, sampling: { temperature: 0, topp: 0.9 }, seed: 0n });
    while (!run.next().done);
  };
  const viaNetwork = async (i: number): Promise<void> => {
    // To the final answer: the commit, the audit draw, the reveal and the challenge window are in the latency.
    const r = await verity.infer(PROMPTS[i % PROMPTS.length], { maxTokens: MAX_TOKENS, temperature: 0 });
    if (r.status !== 'final') throw new Error(`task ${r.task}: ${r.status}`);
  };
  console.log(`inference of ${BUNDLED_MODEL.name}, ${MAX_TOKENS} new tokens, greedy, ${REQUESTS} requests per row; devnet with ${devnet.nodes.length} nodes\n`);
  console.log('path                                in flight  requests/s  p50 ms   p99 ms');
  const rows: Record<string, Row> = {};
  for (const inFlight of [1, 8]) {
    rows[`engine/${inFlight}`] = await measure('engine, in this process', inFlight, direct);
    rows[`network/${inFlight}`] = await measure('devnet (SDK → AO → node)', inFlight, viaNetwork);
    for (const key of [`engine/${inFlight}`, `network/${inFlight}`]) {
      const r = rows[key];
      console.log(`${r.label.padEnd(35)} ${String(inFlight).padEnd(10)} ${r.rate.toFixed(1).padEnd(11)} ${r.p50.toFixed(1).padEnd(8)} ${r.p99.toFixed(1)}`);
    }
  }
  console.log('');
  for (const inFlight of [1, 8]) {
    const e = rows[`engine/${inFlight}`];
    const n = rows[`network/${inFlight}`];
    console.log(`${inFlight} in flight: the network's p50 latency is ${(n.p50 / e.p50).toFixed(1)}× the engine's; its throughput ${(n.rate / e.rate).toFixed(3)}× the engine's`);
  }
  await devnet.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
