// npm run bench:pipeline — one model split by layers over simulated heterogeneous nodes (issue 16,
// after LinguaLinked). Each node is a worker thread (pipeline/ring.ts) that loads only its layers
// and runs slower by its own factor (it idles that share of its compute time); the links between
// them add latency and a bandwidth bound. Printed:
//   1. the optimal placement (pipeline/placement.ts, exact) against the even split of the same
//      nodes — LinguaLinked's baseline, the peer here — predicted and measured ms per token;
//   2. the gain of runtime rebalancing when one node slows down mid-run: the same run with and
//      without the balancer moving boundary layers into the preloaded overlap;
//   and that every run's trace root is the single-node run's.
//
//   BENCH_PIPELINE_SHAPE (stories42M; any of bench/random-model.ts SHAPES), BENCH_PIPELINE_TOKENS (48).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encode, loadModel, modelIdentity, type Model } from '../src/engine/index.js';
import {
  evenSplitPlacement, optimalPlacement, overlapPlan, predictNsPerToken, rebalance, runRing,
  type LinkSpec, type Links, type ModelProfile, type NodeProfile, type Placement, type RingResult, type RingSpec, type StageMeasure,
} from '../src/pipeline/index.js';
import { describeJob, recordTrace, type Job } from '../src/proof/index.js';
import { generateWallet, type Wallet } from '../src/store/wallet.js';
import { SHAPES, writeRandomLlama2c } from './random-model.js';

const SHAPE = process.env.BENCH_PIPELINE_SHAPE ?? 'stories42M';
const TOKENS = Number(process.env.BENCH_PIPELINE_TOKENS ?? 48);
const tokenizerPath = fileURLToPath(new URL('../../../shared/models/llama2-tokenizer.bin', import.meta.url));

/** The simulated nodes: speed (slowdown ≥ 1 over this machine) and memory (a share of the model's bytes). */
const NODES = [
  { id: 'phone-a', slowdown: 1.0, memoryShare: 0.5 },
  { id: 'phone-b', slowdown: 2.5, memoryShare: 0.6 },
  { id: 'laptop-c', slowdown: 1.4, memoryShare: 0.7 },
];
/** One-way link latency (ms) by pair; bandwidth 100 MB/s everywhere (a home network). */
const LATENCY_MS: Record<string, number> = { 'phone-a|phone-b': 1, 'phone-b|laptop-c': 1, 'phone-a|laptop-c': 3 };
const BANDWIDTH = 100e6;
const latencyMs = (a: string, b: string): number => LATENCY_MS[`${a}|${b}`] ?? LATENCY_MS[`${b}|${a}`] ?? 0;
const links: Links = { latencyNs: (a, b) => latencyMs(a, b) * 1e6, bytesPerSecond: () => BANDWIDTH };

function profileOf(model: Model): ModelProfile {
  const c = model.config;
  const layerWeights = 4 * (2 * c.dim * c.dim + 2 * c.dim * c.kvDim + 3 * c.dim * c.hiddenDim + 2 * c.dim);
  const kv = 4 * 2 * c.seqLen * c.kvDim;
  const embed = 4 * c.vocabSize * c.dim;
  return {
    nLayers: c.nLayers,
    layerBytes: Array(c.nLayers).fill(layerWeights + kv),
    embedBytes: embed,
    // llama2.c's legacy checkpoints tie the classifier to the embedding.
    headBytes: embed + 4 * c.dim,
    sharedEmbedHeadBytes: embed,
    residualBytes: 4 * c.dim,
  };
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
/** ms per token from the token times, over tokens from..to (intervals between consecutive tokens). */
const perToken = (times: number[], from: number, to = times.length): number => mean(times.slice(from + 1, to).map((t, i) => t - times[from + i]));

async function main(): Promise<void> {
  const shape = SHAPES[SHAPE];
  if (!shape) throw new Error(`no shape ${SHAPE}: one of ${Object.keys(SHAPES).join(', ')}`);
  const dir = mkdtempSync(join(tmpdir(), 'verity-bench-pipeline-'));
  try {
    const modelPath = join(dir, `${SHAPE}.bin`);
    writeRandomLlama2c(modelPath, shape, 7);
    const model = loadModel(modelPath, { tokenizer: tokenizerPath });
    const profile = profileOf(model);
    const total = profile.layerBytes.reduce((a, b) => a + b, 0) + profile.embedBytes;
    const job: Job = describeJob(modelIdentity(model), { prompt: encode(model.tokenizer, 'Once upon a time, there was a little', true), steps: Math.min(model.config.seqLen, 12 + TOKENS), sampling: { temperature: 0.8, topp: 0.9 }, seed: 42n });
    const single = recordTrace(model, job);
    const wallets: Record<string, Wallet> = Object.fromEntries(await Promise.all(NODES.map(async (n) => [n.id, await generateWallet('ed25519')] as const)));
    const slowdownOf = (id: string): number => NODES.find((n) => n.id === id)!.slowdown;
    const linkSpecs = (p: { stages: { node: string }[] }): LinkSpec[] =>
      p.stages.map((s, i) => ({ latencyMs: p.stages.length === 1 ? 0 : latencyMs(s.node, p.stages[(i + 1) % p.stages.length].node), bytesPerSecond: p.stages.length === 1 ? 0 : BANDWIDTH }));
    const ring = (p: Placement, extra: Partial<RingSpec> = {}, held?: { first: number; end: number }[]): Promise<RingResult> =>
      runRing({
        modelPath, tokenizer: tokenizerPath, job, task: 'B'.repeat(43), leaseEnd: 1, promptBatch: 16, links: linkSpecs(p),
        stages: p.stages.map((s, i) => ({ wallet: wallets[s.node], runs: { first: s.first, end: s.end }, held: held?.[i] ?? { first: s.first, end: s.end }, slowdown: slowdownOf(s.node) })),
        ...extra,
      });
    const checkRoot = (r: RingResult, what: string): string => {
      if (r.trace.root !== single.root) throw new Error(`${what}: the pipelined trace root ${r.trace.root} is not the single-node run's ${single.root}`);
      return 'equal';
    };

    // Calibration: this machine's ms per layer and per head step, from one stage holding everything.
    let calib: StageMeasure[] = [];
    const c = await runRing({
      modelPath, tokenizer: tokenizerPath, job, task: 'C'.repeat(43), leaseEnd: 1, promptBatch: 16,
      stages: [{ wallet: wallets['phone-a'], runs: { first: 0, end: model.config.nLayers }, held: { first: 0, end: model.config.nLayers } }],
      balance: (_k, m) => ((calib = m), []),
    });
    checkRoot(c, 'calibration');
    const msPerToken1 = perToken(c.tokenTimes, 4);
    const msPerLayer = calib[0].msPerLayer;
    const msHead = Math.max(0, msPerToken1 - msPerLayer * model.config.nLayers);
    const nodes: NodeProfile[] = NODES.map((n) => ({ id: n.id, memoryBytes: Math.floor(n.memoryShare * total), nsPerLayer: Math.round(msPerLayer * n.slowdown * 1e6), nsHead: Math.round(msHead * n.slowdown * 1e6) }));
    console.log(`${SHAPE} (random weights), ${model.config.nLayers} layers, ${(total / 2 ** 20).toFixed(0)} MiB with the KV cache; ${TOKENS} tokens, temperature 0.8`);
    console.log(`calibration on this machine: ${msPerLayer.toFixed(2)} ms a layer, ${msHead.toFixed(2)} ms the head, ${msPerToken1.toFixed(1)} ms a token on one stage`);
    console.log(`nodes: ${NODES.map((n) => `${n.id} ${n.slowdown}× slower, ${(n.memoryShare * 100).toFixed(0)}% of the model's memory`).join('; ')}; no node holds the whole model`);

    // 1. Optimal against the even split.
    const optimal = optimalPlacement(profile, nodes, links);
    const even = evenSplitPlacement(profile, nodes, links);
    // Three runs of each, alternating (this machine's speed drifts between runs): the median.
    const rows: { name: string; p: Placement; r: RingResult; ms: number }[] = [];
    const runs: RingResult[][] = [[], []];
    const compared = [['even split (peer)', even], ['optimal', optimal]] as const;
    for (let k = 0; k < 3; k++) for (const [i, [, p]] of compared.entries()) runs[i].push(await ring(p));
    for (const [i, [name, p]] of compared.entries()) {
      if (!p.fitsInMemory) console.log(`${name}: does not fit the nodes' memory (run anyway, to compare its speed)`);
      const sorted = [...runs[i]].sort((a, b) => perToken(a.tokenTimes, 4) - perToken(b.tokenTimes, 4));
      for (const r of runs[i]) checkRoot(r, name);
      rows.push({ name, p, r: sorted[1], ms: perToken(sorted[1].tokenTimes, 4) });
    }
    console.log('\nplacement          stages (node: layers)                              predicted ms/token  measured ms/token (median of 3)  roots');
    for (const { name, p, r, ms } of rows) {
      const stages = p.stages.map((s) => `${s.node}: ${s.first}-${s.end - 1}`).join(', ');
      console.log(`${name.padEnd(18)} ${stages.padEnd(50)} ${(p.predictedNsPerToken / 1e6).toFixed(2).padStart(18)} ${ms.toFixed(2).padStart(31)}  ${checkRoot(r, name)}`);
    }
    const [evenRow, optRow] = rows;
    console.log(`optimal vs even split: ${(evenRow.p.predictedNsPerToken / optRow.p.predictedNsPerToken).toFixed(2)}× predicted, ${(evenRow.ms / optRow.ms).toFixed(2)}× measured (LinguaLinked reports 1.11–1.61× single-threaded)`);

    // 2. Rebalancing: the optimal placement with its overlap preloaded; one node slows 3× after a third of the tokens.
    const overlap = overlapPlan(profile, optimal, nodes);
    const held = optimal.stages.map((s, i) => ({
      first: s.first - (i > 0 ? overlap.boundaries[i - 1].preloadedByRight : 0),
      end: s.end + (i < optimal.stages.length - 1 ? overlap.boundaries[i].preloadedByLeft : 0),
    }));
    // The stage that slows: the one with the most layers that a neighbour has preloaded some of.
    const movable = (i: number): number => (i > 0 ? overlap.boundaries[i - 1].preloadedByLeft : 0) + (i < optimal.stages.length - 1 ? overlap.boundaries[i].preloadedByRight : 0);
    const busiest = optimal.stages.reduce((best, s, i, all) => (movable(i) > 0 && (movable(best) === 0 || s.end - s.first > all[best].end - all[best].first) ? i : best), 0);
    const driftAt = Math.floor(TOKENS / 3);
    const drift = [{ afterTokens: driftAt, stage: busiest, slowdown: 3 * slowdownOf(optimal.stages[busiest].node) }];
    const still = await ring(optimal, { drift }, held);
    let current = optimal;
    let rebalancedAt = -1;
    let stayedNs = 0;
    let movedNs = 0;
    // The balancer: each stage's ms per layer, as the median of its last 3 measures; that level
    // after a few tokens is the baseline; a stage whose last three measures are all past 1.5× its
    // baseline has drifted (one slow token — a descheduled process — is not a drift), and the
    // placement is recomputed from the levels within the preloaded overlap (placement.ts
    // rebalance), once.
    const WARMUP = 8;
    const recent: number[][] = [];
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1];
    let baseline: number[] = [];
    const balanced = await ring(optimal, {
      drift,
      balance: (k, measures) => {
        measures.forEach((m, i) => (recent[i] = [...(recent[i] ?? []), m.msPerLayer].slice(-3)));
        const level = recent.map(median);
        if (k === WARMUP) baseline = level;
        // A drift: a stage's last three measures all past 1.5× its baseline.
        if (k <= WARMUP || rebalancedAt >= 0 || !recent.some((xs, i) => Math.min(...xs) > 1.5 * baseline[i])) return [];
        // Each node's speed now: its calibrated profile scaled by how its level moved from its baseline.
        const measured = nodes.map((n) => {
          const i = current.stages.findIndex((st) => st.node === n.id);
          const factor = i < 0 ? 1 : level[i] / baseline[i];
          return { ...n, nsPerLayer: Math.round(n.nsPerLayer * factor), nsHead: Math.round(n.nsHead * factor) };
        });
        const next = rebalance(profile, current, measured, links, overlap);
        stayedNs = predictNsPerToken(profile, current, measured, links);
        movedNs = next.predictedNsPerToken;
        rebalancedAt = k;
        const moves = next.stages.slice(0, -1).flatMap((s, b) => (s.end === current.stages[b].end ? [] : [{ boundary: b, end: s.end }]));
        console.log(`\nafter token ${k} the balancer measured ${level.map((v, i) => `${current.stages[i].node} ${v.toFixed(2)} ms/layer (was ${baseline[i].toFixed(2)})`).join(', ')}; overlap ${overlap.boundaries.map((b) => `±${b.preloadedByRight}/${b.preloadedByLeft} at layer ${b.layer}`).join(', ')}; it moved to ${next.stages.map((s) => `${s.node}: ${s.first}-${s.end - 1}`).join(', ')} (predicted ${(next.predictedNsPerToken / 1e6).toFixed(2)} ms/token)`);
        current = next;
        return moves;
      },
    }, held);
    const after = Math.min(TOKENS - 2, Math.max(driftAt, rebalancedAt) + 4);
    const stillMs = perToken(still.tokenTimes, after);
    const balancedMs = perToken(balanced.tokenTimes, after);
    console.log(`one node (${optimal.stages[busiest].node}) 3× slower after token ${driftAt}: ${stillMs.toFixed(2)} ms/token without rebalancing, ${balancedMs.toFixed(2)} with (from token ${after}): ${(stillMs / balancedMs).toFixed(2)}× from rebalancing (predicted ${(stayedNs / Math.max(1, movedNs)).toFixed(2)}×; LinguaLinked reports 1.29–1.32×); roots ${checkRoot(still, 'no rebalancing')}, ${checkRoot(balanced, 'rebalanced')}`);
    console.log(`held by each stage: ${balanced.heldBytes.map((b, i) => `${optimal.stages[i].node} ${(b / 2 ** 20).toFixed(0)} MiB`).join(', ')} (with the overlap)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
