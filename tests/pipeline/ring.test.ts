// A pipelined run with each stage in its own process, passing signed residuals over simulated
// links (pipeline/ring.ts): the trace the stages make together is recordTrace's, bit for bit, with
// and without layers moving between stages mid-run, forwards and backwards.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encode, loadModel } from '../../src/engine/index.js';
import { modelIdentity } from '../../src/engine/index.js';
import { describeJob, recordTrace, type Job } from '../../src/proof/index.js';
import { runRing, type RingStage } from '../../src/pipeline/ring.js';
import { generateWallet } from '../../src/store/wallet.js';
import { stories260K, tok512 } from '../helpers.js';

const model = loadModel(stories260K, { tokenizer: tok512 });

function jobOf(temperature: number, steps: number): Job {
  return describeJob(modelIdentity(model), { prompt: encode(model.tokenizer, 'Once upon a time', true), steps, sampling: { temperature, topp: 0.9 }, seed: 42n });
}

test('three stages in their own processes: the trace root and tokens are the single-node run\'s; each stage holds only its share', { timeout: 120_000 }, async () => {
  const wallets = await Promise.all([0, 1, 2].map(() => generateWallet('ed25519')));
  for (const temperature of [0, 0.8]) {
    const job = jobOf(temperature, 80);
    const single = recordTrace(model, job);
    const stages: RingStage[] = [
      { wallet: wallets[0], held: { first: 0, end: 2 }, runs: { first: 0, end: 2 } },
      { wallet: wallets[1], held: { first: 2, end: 4 }, runs: { first: 2, end: 4 } },
      { wallet: wallets[2], held: { first: 4, end: 5 }, runs: { first: 4, end: 5 } },
    ];
    const r = await runRing({ modelPath: stories260K, tokenizer: tok512, job, task: 'T'.repeat(43), leaseEnd: 1, stages, links: [0.5, 0.5, 0.5].map((latencyMs) => ({ latencyMs, bytesPerSecond: 50e6 })), promptBatch: 4 });
    assert.equal(r.trace.root, single.root, `temperature ${temperature}`);
    assert.deepEqual(r.trace.leaves, single.leaves);
    assert.deepEqual(r.tokens, single.tokens.slice(job.promptTokens.length - 1), 'the sampled tokens');
    for (const held of r.heldBytes) assert.ok(held < model.heldBytes!, `a stage holds ${held} bytes of the model's ${model.heldBytes}`);
  }
});

test('layers move between stages mid-run, forwards and backwards, in band: the root does not change', { timeout: 120_000 }, async () => {
  const wallets = await Promise.all([0, 1, 2].map(() => generateWallet('ed25519')));
  const job = jobOf(0.8, 96);
  const single = recordTrace(model, job);
  // Stage 0 holds layer 2 besides its own, stage 1 layers 1 and 3, stage 2 layer 3: the overlap.
  const stages: RingStage[] = [
    { wallet: wallets[0], held: { first: 0, end: 3 }, runs: { first: 0, end: 2 } },
    { wallet: wallets[1], held: { first: 1, end: 4 }, runs: { first: 2, end: 4 } },
    { wallet: wallets[2], held: { first: 3, end: 5 }, runs: { first: 4, end: 5 } },
  ];
  const plan = new Map([
    [4, { boundary: 1, end: 3 }], // stage 1 gives layer 3 to stage 2
    [8, { boundary: 0, end: 1 }], // stage 0 gives layer 1 to stage 1
    [12, { boundary: 0, end: 2 }], // stage 0 takes layer 1 back
    [16, { boundary: 1, end: 4 }], // stage 1 takes layer 3 back
  ]);
  const seen: string[] = [];
  const r = await runRing({
    modelPath: stories260K, tokenizer: tok512, job, task: 'T'.repeat(43), leaseEnd: 1, stages, promptBatch: 8,
    links: [1, 1, 1].map((latencyMs) => ({ latencyMs, bytesPerSecond: 0 })),
    balance: (tokens, measures) => {
      seen.push(measures.map((m) => `${m.layers.first}-${m.layers.end}`).join(' '));
      const move = plan.get(tokens);
      return move ? [move] : [];
    },
  });
  assert.equal(r.moves.length, 4);
  assert.equal(r.trace.root, single.root);
  // The layers each stage ran, position by position, from the leaves each recorded: every move
  // took effect, in order (the balancer's own view of them depends on when it was asked).
  const layoutAt = (pos: number): string =>
    r.records
      .sort((a, b) => a.index - b.index)
      .map((rec) => {
        const layers = rec.leaves.filter((l) => l.pos === pos).map((l) => l.layer);
        return `${Math.min(...layers)}-${Math.max(...layers) + 1}`;
      })
      .join(' ');
  const ran = Math.max(...r.records.flatMap((rec) => rec.leaves.map((l) => l.pos))) + 1;
  const layouts = Array.from({ length: ran }, (_, p) => layoutAt(p)).filter((l, i, all) => i === 0 || l !== all[i - 1]);
  assert.deepEqual(layouts, ['0-2 2-4 4-5', '0-2 2-3 3-5', '0-1 1-3 3-5', '0-2 2-3 3-5', '0-2 2-4 4-5'], `layouts in order: ${layouts.join(' | ')}; the balancer saw ${[...new Set(seen)].join(' | ')}`);
});
