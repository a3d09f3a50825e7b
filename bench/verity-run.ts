// One Verity measurement in its own process (so that its peak memory is its own): loads a model,
// warms up, then times greedy decoding of exactly --tokens tokens and prints one JSON line.
//   node dist/bench/verity-run.js --model m.gguf --threads 1 --tokens 200 [--runs 3] [--kernels native]
import { parseArgs } from 'node:util';
import { tuneRuntime } from '../src/client/runtime.js';
import { performance } from 'node:perf_hooks';
import { createFingerprint, defaultKernelPath, encode, generate, loadModel, modelIdentity, storedTensors, type KernelPath } from '../src/engine/index.js';
import { describeJob, recordTrace } from '../src/proof/index.js';

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
    /** Also time prompt processing: a prompt cut to this many tokens (BOS included), as the peer does. */
    'prompt-tokens': { type: 'string', default: '0' },
    /** Measure the cost of recording the proof trace instead (whole jobs, with and without it). */
    'trace-overhead': { type: 'boolean', default: false },
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

/** Whole-job seconds without any observer, and while recording the trace a node keeps. */
function traceOverhead(): void {
  const job = describeJob(modelIdentity(model), {
    prompt: encode(model.tokenizer, opt.prompt),
    steps: Math.min(model.config.seqLen, promptLength + tokens - 1),
    sampling: { temperature: 0, topp: 0.9 },
    seed: 1n,
  });
  const plain = (): number => {
    const t0 = performance.now();
    const run = generate(model, { prompt: job.promptTokens, steps: job.steps, sampling: { temperature: 0, topp: 0.9 }, seed: 1n, kernels, threads });
    while (!run.next().done);
    return performance.now() - t0;
  };
  const traced = (): number => {
    const t0 = performance.now();
    recordTrace(model, job, { kernels, threads });
    return performance.now() - t0;
  };
  plain();
  traced();
  const times = { plain: [] as number[], traced: [] as number[] };
  for (let r = 0; r < Number(opt.runs); r++) {
    times.plain.push(plain());
    times.traced.push(traced());
  }
  // Medians of alternating runs: the difference is a few percent, run-to-run noise is as large.
  const median = (v: number[]): number => [...v].sort((a, b) => a - b)[v.length >> 1];
  const [plainMs, tracedMs] = [median(times.plain), median(times.traced)];
  process.stdout.write(`${JSON.stringify({ plainMs, tracedMs, overhead: tracedMs / plainMs - 1, positions: job.steps, threads, kernels })}\n`);
  process.exit(0);
}

/**
 * Prompt processing: positions 0..n−2 of an n-token prompt (the peer evaluates the same n − 1
 * tokens in one batch; the last prompt token starts generation in both).
 */
function promptRate(n: number): number {
  const text = 'Once upon a time, there was a little girl named Lily who loved to play outside in the sunshine. '.repeat(Math.ceil(n / 8));
  const prompt = encode(model.tokenizer, text).slice(0, n);
  if (prompt.length < n) throw new Error(`the prompt text gives only ${prompt.length} tokens`);
  const run = generate(model, { prompt, steps: n, sampling: { temperature: 0, topp: 0.9 }, seed: 1n, kernels, threads });
  const t0 = performance.now();
  for (let r = run.next(); !r.done; r = run.next()) if (r.value.pos === n - 1) break;
  const seconds = (performance.now() - t0) / 1000;
  run.return(undefined as never);
  return (n - 1) / seconds;
}

if (opt['trace-overhead']) traceOverhead();
const promptTokens = Number(opt['prompt-tokens']);
const promptTokensPerSecond = promptTokens > 1 ? Math.max(...Array.from({ length: Number(opt.runs) }, () => promptRate(promptTokens))) : undefined;
measure(Number(opt.warmup));
const runs = Array.from({ length: Number(opt.runs) }, () => measure(tokens));
const best = runs.reduce((a, b) => (b.rate > a.rate ? b : a));
process.stdout.write(
  `${JSON.stringify({
    tokensPerSecond: best.rate,
    runsTokensPerSecond: runs.map((r) => r.rate),
    tokens: best.sampled,
    promptTokensPerSecond,
    threads,
    kernels,
    fingerprint: best.fingerprint,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    weightBytes: storedTensors(model.config, model.weights).reduce((n, t) => n + t.bytes, 0),
  })}\n`,
);
process.exit(0);
