// A dispute played out locally: an honest party against a faulty one, the game between them, and
// the referee's one-step proof at the end. `verity dispute-sim` prints it; the tests run it over
// random faults.
import type { KernelPath, Model } from '../engine/index.js';
import { decide, disputedStep, openGame, outcome, post, splitPoints, tick, type GameState, type Outcome, type Party } from './game.js';
import { ProofError, buildOpening, openingBytes, type Opening } from './opening.js';
import type { Referee, RefereeReport } from './referee.js';
import { accNext, accumulators, hex, recordTrace, schedule, sha256, traceStart, type Deviation, type Hex, type Job, type Trace } from './trace.js';

/** How the faulty party deviates. */
export type Fault =
  | { kind: 'token'; step: number } // the head step `step` picks another token
  | { kind: 'activation'; step: number } // layer step `step` perturbs its output
  | { kind: 'weights'; model: Model } // runs another model (e.g. one layer perturbed) under the job's id
  | { kind: 'prompt' } // runs a different last prompt token
  | { kind: 'inconsistent'; round: number } // claims a wrong result, posts garbage in round `round`
  | { kind: 'silent'; round: number }; // claims a wrong result, stops answering at round `round`

export const FAULT_KINDS = ['token', 'activation', 'weights', 'prompt', 'inconsistent', 'silent'] as const;

interface Player {
  root: Hex;
  /** Values at the split points, or null when the party does not answer. */
  answer(round: number, points: number[]): Hex[] | null;
  opening(step: number): Opening | null;
}

function tracePlayer(trace: Trace, kvDim: number): Player {
  const accs = accumulators(trace);
  return {
    root: trace.root,
    answer: (_round, points) => points.map((p) => accs[p]),
    opening: (step) => buildOpening(trace, step, { kvDim }),
  };
}

/** Why a fault cannot be applied to this trace, or null. */
export function faultProblem(honest: Trace, fault: Fault): string | null {
  if (fault.kind !== 'token' && fault.kind !== 'activation') return null;
  const sched = schedule(honest.job, honest.nLayers);
  if (fault.step > sched.steps) return `the trace has ${sched.steps} steps`;
  const want = fault.kind === 'token' ? 'head' : 'layer';
  if (honest.preimages[fault.step - 1].kind === want) return null;
  const ran = honest.preimages.map((p, i) => (p.kind === want ? i + 1 : 0)).filter((s) => s > 0);
  const near = ran.reduce((best, s) => (Math.abs(s - fault.step) < Math.abs(best - fault.step) ? s : best), ran[0] ?? 0);
  return `step ${fault.step} is not a ${want} step that ran${near ? ` (the nearest is ${near})` : ''}`;
}

/** The faulty party's trace, or (for the game-level faults) the honest one. */
function faultyTrace(model: Model, job: Job, honest: Trace, fault: Fault, kernels?: KernelPath): Trace {
  const sched = schedule(job, model.config.nLayers);
  const deviation: Deviation = {};
  let runModel = model;
  let runJob = job;
  if (fault.kind === 'token') {
    const ref = sched.at(fault.step);
    const leaf = honest.preimages[fault.step - 1];
    if (ref.kind !== 'head' || leaf.kind !== 'head') throw new RangeError(`step ${fault.step} is not a head step that ran`);
    deviation.token = { pos: ref.pos, token: (leaf.token + 1) % model.config.vocabSize };
  } else if (fault.kind === 'activation') {
    const ref = sched.at(fault.step);
    if (ref.kind !== 'layer' || honest.preimages[fault.step - 1].kind !== 'layer') throw new RangeError(`step ${fault.step} is not a layer step that ran`);
    deviation.activation = { pos: ref.pos, layer: ref.layer, index: 0, delta: 1e-3 };
  } else if (fault.kind === 'weights') {
    runModel = fault.model;
  } else if (fault.kind === 'prompt') {
    const prompt = [...job.promptTokens];
    prompt[prompt.length - 1] = (prompt[prompt.length - 1] + 1) % model.config.vocabSize;
    runJob = { ...job, promptTokens: prompt };
  } else {
    return honest;
  }
  const trace = recordTrace(runModel, runJob, { kernels, deviation, keepOutputs: true });
  // The faulty party claims the job it was given, whatever it ran.
  if (runJob === job) return trace;
  const { leaves, preimages, layers, tokens, nLayers } = trace;
  return { job, commitment: honest.commitment, nLayers, leaves, preimages, layers, tokens, root: leaves.reduce(accNext, traceStart(honest.commitment)) };
}

function faultyPlayer(model: Model, job: Job, honest: Trace, fault: Fault, kernels?: KernelPath): Player {
  const trace = faultyTrace(model, job, honest, fault, kernels);
  const player = tracePlayer(trace, model.config.kvDim);
  if (fault.kind !== 'inconsistent' && fault.kind !== 'silent') return player;
  // A wrong claim that follows the honest values until it misbehaves.
  const garbage = (label: string): Hex => hex(sha256(Buffer.from(`${label}:${fault.kind}`)));
  return {
    root: garbage('root'),
    answer: (round, points) => {
      if (round < fault.round) return player.answer(round, points);
      if (fault.kind === 'silent') return null;
      return round === fault.round ? points.map((p) => garbage(String(p))) : player.answer(round, points);
    },
    opening: (step) => (fault.kind === 'silent' ? null : player.opening(step)),
  };
}

export interface DisputeOptions {
  k?: number;
  faulty?: Party;
  kernels?: KernelPath;
  /** Slots each party may spend; a silent party runs out. */
  clock?: number;
  bond?: number;
}

export interface DisputeResult {
  steps: number;
  state: GameState;
  outcome: Outcome;
  honest: Party;
  disputed: { step: number; kind: string } | null;
  referee: RefereeReport | null;
  /** Openings the referee rejected, with why. */
  rejected: { party: Party; error: string }[];
  bytes: { bisection: number; openings: Record<Party, number> };
}

/** Plays the game between an honest run of `job` and a faulty one; the referee settles the last step. */
export function simulateDispute(
  model: Model,
  job: Job,
  fault: Fault,
  referee: Referee,
  options: DisputeOptions = {},
  honestTrace?: Trace,
): DisputeResult {
  const k = options.k ?? 8;
  const faultyRole: Party = options.faulty ?? 'asserter';
  const honestRole: Party = faultyRole === 'asserter' ? 'challenger' : 'asserter';
  const clock = options.clock ?? 1000;
  const honest = honestTrace ?? recordTrace(model, job, { kernels: options.kernels, keepOutputs: true });
  const players: Record<Party, Player> = {
    [honestRole]: tracePlayer(honest, model.config.kvDim),
    [faultyRole]: faultyPlayer(model, job, honest, fault, options.kernels),
  } as Record<Party, Player>;
  const steps = honest.leaves.length;
  let now = 0;
  let state = openGame({
    k,
    steps,
    start: traceStart(honest.commitment),
    roots: { asserter: players.asserter.root, challenger: players.challenger.root },
    clock,
    bond: options.bond ?? 1,
    now,
  });
  let bisection = 0;
  for (let round = 1; state.phase === 'bisect'; round++) {
    const points = splitPoints(state);
    let silent = false;
    for (const party of ['asserter', 'challenger'] as const) {
      const values = players[party].answer(round, points);
      if (!values) {
        silent = true;
        continue;
      }
      now += 1;
      state = post(state, party, values, now);
      bisection += 32 * values.length;
    }
    if (silent) {
      now += clock + 1;
      state = tick(state, now);
    }
  }
  const openings: Record<Party, number> = { asserter: 0, challenger: 0 };
  const rejected: DisputeResult['rejected'] = [];
  let report: RefereeReport | null = null;
  let disputed: DisputeResult['disputed'] = null;
  if (state.phase === 'prove') {
    const { step, agreed } = disputedStep(state);
    disputed = { step, kind: schedule(job, model.config.nLayers).at(step).kind };
    for (const party of [honestRole, faultyRole]) {
      const opening = players[party].opening(step);
      if (!opening) continue;
      openings[party] = openingBytes(opening);
      if (report) continue; // any opening that checks out gives the same leaf
      try {
        report = referee.resolve(job, agreed, opening);
      } catch (e) {
        if (!(e instanceof ProofError)) throw e;
        rejected.push({ party, error: `${e.code}: ${e.message}` });
      }
    }
    state = decide(state, report?.acc ?? null, now + 1);
  }
  return { steps, state, outcome: outcome(state)!, honest: honestRole, disputed, referee: report, rejected, bytes: { bisection, openings } };
}
