// One Verity measurement in its own process (so that its peak memory is its own): loads a model,
// warms up, then times greedy decoding of exactly --tokens tokens and prints one JSON line.
//   node dist/bench/verity-run.js --model m.gguf --threads 1 --tokens 200 [--runs 3] [--kernels native]
import { parseArgs } from 'node:util';
import { tuneRuntime } from '../src/client/runtime.js';
import { performance } from 'node:perf_hooks';
import { createFingerprint, defaultKernelPath, encode, generate, loadModel, storedTensors, type KernelPath } from '../src/engine/index.js';

const { values: opt } = parseArgs({
  options: {
    model: { type: 'string' },
    tokenizer: { type: 'string' },
    threads: { type: 'string', default: '1' },
    tokens: { type: 'string', default: '200' },
    prompt: { type: 'string', default: 'Once upon a time' },
    warmup: { type: 'string', default: '16' },
    runs: { type: 'string', default: '1' },
    kernels: { type: 'string', default: defaultKernelPath() },
  },
});
if (!opt.model) throw new Error('--model is required');
tuneRuntime(); // as `verity run` does
const model = loadModel(opt.model, { tokenizer: opt.tokenizer });
const threads = Number(opt.threads);
const tokens = Number(opt.tokens);
const kernels = opt.kernels as KernelPath;
const promptLength = encode(model.tokenizer, opt.prompt).length;

/** Decode rate over the sampled tokens only (the prompt is excluded, as for the peer). */
function measure(count: number): { rate: number; fingerprint: string; sampled: number } {
  const fingerprint = createFingerprint();
  const run = generate(model, {
    prompt: opt.prompt,
    steps: Math.min(model.config.seqLen, promptLength + count - 1),
    sampling: { temperature: 0, topp: 0.9 },
    seed: 1n,
    kernels,
    threads,
    observer: fingerprint,
  });
  let first = 0;
  let sampled = 0;
  for (let r = run.next(); !r.done; r = run.next()) {
    if (r.value.pos < promptLength) continue;
    sampled++;
    if (sampled === 1) first = performance.now();
  }
  const seconds = (performance.now() - first) / 1000;
  return { rate: (sampled - 1) / seconds, fingerprint: fingerprint.hex(), sampled };
}

measure(Number(opt.warmup));
const runs = Array.from({ length: Number(opt.runs) }, () => measure(tokens));
const best = runs.reduce((a, b) => (b.rate > a.rate ? b : a));
process.stdout.write(
  `${JSON.stringify({
    tokensPerSecond: best.rate,
    runsTokensPerSecond: runs.map((r) => r.rate),
    tokens: best.sampled,
    threads,
    kernels,
    fingerprint: best.fingerprint,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    weightBytes: storedTensors(model.config, model.weights).reduce((n, t) => n + t.bytes, 0),
  })}\n`,
);
process.exit(0);
