// The proof layer, a pure library: job commitments, execution traces, openings, the dissection
// game and the referee's one-step proof. Formats and rules: docs/proofs.md.
export {
  BOS, JOB_VERSION, KV_CHAIN_START, TRACE_VERSION, accAt, accNext, accumulators, describeJob, jobCommitment, leafHash,
  recordTrace, recordTraceCooperatively, schedule, traceStart,
  type Deviation, type Hex, type Job, type JobRequest, type LeafPreimage, type RecordOptions, type Schedule, type StepRef, type Trace,
} from './trace.js';
export { ProofError, buildOpening, checkOpening, decodeOpening, encodeOpening, openingBytes, type Opening, type OpeningJson, type StepInputs } from './opening.js';
export { createReferee, type Referee, type RefereeReport, type WeightSource } from './referee.js';
export { modelWeightSource, tamperedSource } from './weights.js';
export {
  GameError, decide, disputedStep, openGame, outcome, post, roundsNeeded, splitPoints, tick,
  type GameParams, type GameState, type Outcome, type Party, type Round,
} from './game.js';
export { FAULT_KINDS, faultProblem, simulateDispute, type DisputeOptions, type DisputeResult, type Fault } from './simulate.js';
