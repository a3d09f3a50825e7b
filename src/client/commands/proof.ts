// verity trace and verity dispute-sim: the proof layer on the command line.
import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { InvalidArgumentError } from 'commander';
import { EngineError, encode, modelIdentity, ownedMatrix, rowBytes, type Model } from '../../engine/index.js';
import {
  FAULT_KINDS, createReferee, describeJob, faultProblem, jobCommitment, modelWeightSource, recordTrace, roundsNeeded, schedule, simulateDispute,
  type Fault, type Job, type Party,
} from '../../proof/index.js';
import { parseRunFlags } from '../run-flags.js';
import { load, type GenerationFlags } from './shared.js';

function jobFor(model: Model, raw: GenerationFlags): Job {
  const flags = parseRunFlags(raw, model.config.seqLen);
  const promptTokens = encode(model.tokenizer, flags.prompt);
  if (promptTokens.length > model.config.seqLen) {
    throw new EngineError(`prompt too long: ${promptTokens.length} tokens, the model's context is ${model.config.seqLen}`);
  }
  return describeJob(modelIdentity(model), {
    prompt: promptTokens,
    steps: flags.steps,
    sampling: { temperature: flags.temperature, topp: flags.topp },
    seed: flags.seed,
  });
}

/** verity trace: writes the job, its commitment, every leaf (with its preimage) and the root. */
export function traceCommand(modelPath: string, raw: GenerationFlags & { out: string }): void {
  const model = load(modelPath, raw.tokenizer);
  const job = jobFor(model, raw);
  const trace = recordTrace(model, job, { kernels: raw.kernels, threads: raw.threads });
  const doc = {
    job,
    commitment: trace.commitment,
    steps: trace.leaves.length,
    root: trace.root,
    tokens: trace.tokens,
    leaves: trace.leaves.map((leaf, i) => ({ step: i + 1, leaf, ...trace.preimages[i] })),
  };
  writeFileSync(raw.out, `${JSON.stringify(doc, null, 1)}\n`);
  if (raw.json) process.stdout.write(`${JSON.stringify({ out: raw.out, steps: trace.leaves.length, commitment: trace.commitment, root: trace.root })}\n`);
  else process.stderr.write(`${raw.out}: ${trace.leaves.length} steps, commitment ${trace.commitment}, root ${trace.root}\n`);
}

/** "kind@where" → a fault; `model` is reloaded for a weights fault (a perturbed copy). */
export function parseFault(spec: string, job: Job, reload: () => Model): Fault {
  const [kind, where] = spec.split('@');
  const n = Number(where);
  const need = (what: string): number => {
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`--fault ${kind}@<${what}> needs a positive ${what}`);
    return n;
  };
  switch (kind) {
    case 'token':
    case 'activation':
      return { kind, step: need('step') };
    case 'inconsistent':
    case 'silent':
      return { kind, round: need('round') };
    case 'prompt':
      return { kind };
    case 'weights': {
      const layer = Number(where);
      const cheaper = reload();
      if (!Number.isInteger(layer) || layer < 0 || layer >= cheaper.config.nLayers) throw new InvalidArgumentError(`--fault weights@<layer> needs a layer in 0..${cheaper.config.nLayers - 1}`);
      perturbLayer(cheaper, layer);
      return { kind, model: cheaper };
    }
    default:
      throw new InvalidArgumentError(`unknown fault '${kind}' (use ${FAULT_KINDS.join(', ')}; job has ${schedule(job, 1).steps} positions)`);
  }
}

/** A "cheaper model": one layer's feed-forward down-projection scaled by 1 − 2⁻¹⁰. */
export function perturbLayer(model: Model, layer: number): void {
  const { dim, hiddenDim } = model.config;
  const lw = model.weights.layers[layer];
  // Mapped weights are read-only: the matrix is copied into the arena first (the file stays intact).
  const w = (lw.w2 = ownedMatrix(model, lw.w2, dim * rowBytes(lw.w2.dtype, hiddenDim)));
  const values = w.dtype === 'q8_0' ? model.arena.f32(w.scales, (dim * hiddenDim) / 32) : model.arena.f32(w.ptr, dim * hiddenDim);
  for (let i = 0; i < values.length; i++) values[i] = Math.fround(values[i] * (1 - 2 ** -10));
}

const short = (h: string): string => `${h.slice(0, 10)}…`;
const ms = (v: number): string => `${v.toFixed(2)} ms`;
const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(2)} MiB`;

/** verity dispute-sim: an honest party against a faulty one, every round, the verdict and the costs. */
export function disputeSimCommand(modelPath: string, raw: GenerationFlags & { fault: string; k: number; faulty: Party }): void {
  const model = load(modelPath, raw.tokenizer);
  const job = jobFor(model, raw);
  const fault = parseFault(raw.fault, job, () => load(modelPath, raw.tokenizer));
  // With --json the report is one object at the end, not these lines.
  const out = (line = ''): boolean => (raw.json ? true : process.stdout.write(`${line}\n`));

  const t0 = performance.now();
  const honest = recordTrace(model, job, { kernels: raw.kernels, threads: raw.threads, keepOutputs: true });
  const inferenceMs = performance.now() - t0;
  const problem = faultProblem(honest, fault);
  if (problem) throw new InvalidArgumentError(`--fault ${raw.fault}: ${problem}`);
  const referee = createReferee(modelWeightSource(model), raw.kernels);
  out(`job         model ${short(job.modelId)}, ${job.promptTokens.length} prompt tokens, ${job.steps} positions, seed ${job.seed}, commitment ${short(jobCommitment(job))}`);
  out(`trace       ${honest.leaves.length} steps, honest root ${short(honest.root)}; full inference ${ms(inferenceMs)}`);
  out(`game        k = ${raw.k}, the ${raw.faulty} is faulty (${raw.fault}); at most ${roundsNeeded(honest.leaves.length, raw.k)} rounds + the one-step proof`);
  const result = simulateDispute(model, job, fault, referee, { k: raw.k, faulty: raw.faulty, kernels: raw.kernels }, honest);
  for (const round of result.state.log) {
    out();
    out(`round ${round.round}   interval [${round.interval.join(', ')}] → [${round.next.join(', ')}]`);
    for (const party of ['asserter', 'challenger'] as const) {
      out(`  ${party.padEnd(10)} ${round.points.map((p, i) => `${p}:${round.values[party][i].slice(0, 6)}`).join(' ')}`);
    }
  }
  out();
  if (result.disputed) {
    const ref = schedule(job, model.config.nLayers).at(result.disputed.step);
    const where = ref.kind === 'layer' ? `layer ${ref.layer} at position ${ref.pos}` : `head at position ${ref.pos}`;
    out(`one step    step ${result.disputed.step} (${where}); agreed acc[${result.disputed.step - 1}]`);
  }
  for (const r of result.rejected) out(`rejected    ${r.party}'s opening: ${r.error}`);
  if (result.referee) {
    const r = result.referee;
    const work = r.checkMs + r.executeMs;
    out(`referee     ${r.kind} step: check ${ms(r.checkMs)} + execute ${ms(r.executeMs)} = ${ms(work)} (1/${Math.round(inferenceMs / work)} of the inference)`);
    out(`            reads ${mib(r.weightBytes)} of weights; fetched ${mib(r.fetchedBytes)} from storage and verified them against the model id in ${ms(r.fetchMs)}`);
  }
  const o = result.outcome;
  out(`verdict     ${o.winner ? `${o.winner} wins` : 'nobody wins'} (${o.reason}); the honest party was the ${result.honest}`);
  const s = result.state.settlement;
  if (s) out(`bonds       asserter returned ${s.asserter.returned} forfeited ${s.asserter.forfeited}; challenger returned ${s.challenger.returned} forfeited ${s.challenger.forfeited}`);
  out(`bytes       bisection ${result.bytes.bisection} B; openings asserter ${result.bytes.openings.asserter} B, challenger ${result.bytes.openings.challenger} B`);
  if (raw.json) {
    process.stdout.write(`${JSON.stringify({
      job: { model: job.modelId, promptTokens: job.promptTokens.length, positions: job.steps, seed: String(job.seed), commitment: jobCommitment(job) },
      steps: honest.leaves.length, honestRoot: honest.root, k: raw.k, faulty: raw.faulty, fault: raw.fault,
      rounds: result.state.log.map((r) => ({ round: r.round, interval: r.interval, next: r.next })),
      disputedStep: result.disputed?.step ?? null, rejected: result.rejected, verdict: { winner: o.winner, reason: o.reason, honest: result.honest },
      bytes: result.bytes, referee: result.referee ?? null, inferenceMs,
    })}\n`);
  }
  if (o.winner !== result.honest) process.exitCode = 1;
}
