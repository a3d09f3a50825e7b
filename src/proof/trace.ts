// What a node commits to: the job (recomputable by anyone from the request) and the execution
// trace — one leaf per step in canonical order, chained so that agreeing on the accumulator after
// step s means agreeing on every leaf up to s. Formats: docs/proofs.md.
import { createHash } from 'node:crypto';
import {
  NUMERICS_SPEC_VERSION,
  generate,
  nativeKernels,
  type KernelPath,
  type Model,
  type ModelIdentity,
  type SamplingParams,
} from '../engine/index.js';
import { schedule, type Schedule, type StepRef } from './schedule.js';

export type Hex = string;

export const JOB_VERSION = 'verity-job/1';
export const TRACE_VERSION = 'verity-trace/1';
/** llama2.c's BOS id: generation stops when it comes next (run.c compares with 1). */
export const BOS = 1;

export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

export const hex = (b: Uint8Array): Hex => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
export const unhex = (h: Hex): Uint8Array => Buffer.from(h, 'hex');
const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const f32Bytes = (v: Float32Array): Uint8Array => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

function u32(...values: number[]): Uint8Array {
  const out = new DataView(new ArrayBuffer(4 * values.length));
  values.forEach((v, i) => out.setUint32(4 * i, v, true));
  return new Uint8Array(out.buffer);
}

function u64(v: bigint): Uint8Array {
  const out = new DataView(new ArrayBuffer(8));
  out.setBigUint64(0, v, true);
  return new Uint8Array(out.buffer);
}

function f32(v: number): Uint8Array {
  const out = new DataView(new ArrayBuffer(4));
  out.setFloat32(0, v, true);
  return new Uint8Array(out.buffer);
}

// ---------------------------------------------------------------------------------------------
// The job.

export interface Job {
  modelId: Hex;
  tokenizerHash: Hex;
  numerics: string;
  /** Prompt token ids, BOS first. */
  promptTokens: number[];
  /** f32 values, as the sampler uses them. */
  temperature: number;
  topp: number;
  /** The initial RNG state, a u64 as a decimal string. */
  seed: string;
  /** Positions to run, prompt included (run.c's -n). */
  steps: number;
}

export interface JobRequest {
  prompt: number[];
  steps: number;
  sampling: SamplingParams;
  seed: bigint;
}

export function describeJob(identity: Pick<ModelIdentity, 'modelId' | 'tokenizerHash'>, request: JobRequest): Job {
  return {
    modelId: identity.modelId,
    tokenizerHash: identity.tokenizerHash,
    numerics: NUMERICS_SPEC_VERSION,
    promptTokens: [...request.prompt],
    temperature: Math.fround(request.sampling.temperature),
    topp: Math.fround(request.sampling.topp),
    seed: BigInt.asUintN(64, request.seed).toString(),
    steps: request.steps,
  };
}

/** H(version, model id, tokenizer hash, numerics version, prompt tokens, sampling, seed, steps). */
export function jobCommitment(job: Job): Hex {
  const numerics = text(job.numerics);
  return hex(
    sha256(
      text(JOB_VERSION), unhex(job.modelId), unhex(job.tokenizerHash), u32(numerics.length), numerics,
      u32(job.promptTokens.length, ...job.promptTokens), f32(job.temperature), f32(job.topp),
      u64(BigInt(job.seed)), u32(job.steps),
    ),
  );
}

export const samplingOf = (job: Job): SamplingParams => ({ temperature: job.temperature, topp: job.topp });

// The step schedule (./schedule.ts: pure, so that the coordinator's process can bundle it).
export { schedule, type Schedule, type StepRef };

// ---------------------------------------------------------------------------------------------
// Leaves and the accumulator.

/** A leaf's preimage: what an opening reveals about an earlier step. */
export type LeafPreimage =
  | { kind: 'layer'; pos: number; layer: number; xHash: Hex; kvHash: Hex; kvChain: Hex }
  | { kind: 'head'; pos: number; token: number; rng: string }
  | { kind: 'end'; step: number };

/** The K/V history of a layer before position 0. */
export const KV_CHAIN_START: Hex = '00'.repeat(32);

export function leafHash(p: LeafPreimage): Hex {
  switch (p.kind) {
    case 'layer':
      return hex(sha256(text('verity-leaf/layer'), u32(p.pos, p.layer), unhex(p.xHash), unhex(p.kvHash), unhex(p.kvChain)));
    case 'head':
      return hex(sha256(text('verity-leaf/head'), u32(p.pos, p.token), u64(BigInt(p.rng))));
    case 'end':
      return hex(sha256(text('verity-leaf/end'), u32(p.step)));
  }
}

export const xHashOf = (x: Float32Array): Hex => hex(sha256(f32Bytes(x)));
export const kvHashOf = (key: Float32Array, value: Float32Array): Hex => hex(sha256(f32Bytes(key), f32Bytes(value)));
export const kvChainNext = (prev: Hex, kvHash: Hex): Hex => hex(sha256(unhex(prev), unhex(kvHash)));

export const traceStart = (commitment: Hex): Hex => hex(sha256(text(TRACE_VERSION), unhex(commitment)));
export const accNext = (acc: Hex, leaf: Hex): Hex => hex(sha256(unhex(acc), unhex(leaf)));

/**
 * A pipeline stage's sub-root starts here (docs/proofs.md "Pipelined traces"), then chains the
 * stage's own leaves with accNext: H("verity-stage/1" ‖ commitment ‖ u32 index ‖ u32 first ‖ u32 end).
 */
export const STAGE_VERSION = 'verity-stage/1';
export const stageStart = (commitment: Hex, index: number, layers: { first: number; end: number }): Hex =>
  hex(sha256(text(STAGE_VERSION), unhex(commitment), u32(index, layers.first, layers.end)));

// ---------------------------------------------------------------------------------------------
// Recording a trace while the engine generates.

export interface LayerRecord {
  x: Float32Array;
  key: Float32Array;
  value: Float32Array;
}

export interface Trace {
  job: Job;
  commitment: Hex;
  nLayers: number;
  root: Hex;
  /** The generated tokens (after the prompt), as the node reports them. */
  tokens: number[];
  /** leaves[s − 1] is step s's leaf; preimages likewise (built on first use from the records). */
  readonly leaves: Hex[];
  readonly preimages: LeafPreimage[];
  /** Layer outputs by step index, when kept to answer openings. */
  layers: Map<number, LayerRecord>;
}

/** Ways to run a job dishonestly, for the dispute simulator and the tests. */
export interface Deviation {
  /** Replace the token sampled at `pos`. */
  token?: { pos: number; token: number };
  /** Add `delta` to x[index] after layer step (pos, layer). */
  activation?: { pos: number; layer: number; index: number; delta: number };
}

export interface RecordOptions {
  kernels?: KernelPath;
  threads?: number;
  deviation?: Deviation;
  /**
   * Keep every layer's outputs, to answer openings from memory. A node need not: the run is
   * deterministic, so it can run the job again when a dispute asks for them.
   */
  keepOutputs?: boolean;
  /** Most prompt positions run as one batch (generate.ts); the trace does not depend on it. */
  promptBatch?: number;
  /** Called with each sampled token as it is sampled, and the token before it (a node streams them: node/stream.ts). */
  onToken?: (token: number, prev: number) => void;
}

/**
 * One 128-byte record per step, so that recording costs one hashing call per layer step:
 * layer: xHash ‖ kvHash ‖ kvChain ‖ leaf; head: u32 token ‖ u64 rng ‖ … ‖ leaf; end: … ‖ leaf.
 */
const RECORD = 128;
const LEAF_AT = 96;
const KIND = ['layer', 'head', 'end'] as const;

const TAG = { head: text('verity-leaf/head'), end: text('verity-leaf/end') };

function traceFrom(job: Job, commitment: Hex, nLayers: number, records: Uint8Array, kinds: Uint8Array, rest: Pick<Trace, 'root' | 'tokens' | 'layers'>): Trace {
  const sched = schedule(job, nLayers);
  const view = new DataView(records.buffer, records.byteOffset, records.byteLength);
  const at = (s: number, from: number, to: number): Hex => hex(records.subarray((s - 1) * RECORD + from, (s - 1) * RECORD + to));
  const preimage = (s: number): LeafPreimage => {
    const kind = KIND[kinds[s - 1]];
    const ref = sched.at(s);
    if (kind === 'layer' && ref.kind === 'layer') return { kind, pos: ref.pos, layer: ref.layer, xHash: at(s, 0, 32), kvHash: at(s, 32, 64), kvChain: at(s, 64, 96) };
    const base = (s - 1) * RECORD;
    if (kind === 'head') return { kind, pos: ref.pos, token: view.getUint32(base, true), rng: view.getBigUint64(base + 4, true).toString() };
    return { kind: 'end', step: s };
  };
  let leaves: Hex[] | undefined;
  let preimages: LeafPreimage[] | undefined;
  return {
    job,
    commitment,
    nLayers,
    ...rest,
    get leaves() {
      return (leaves ??= Array.from({ length: kinds.length }, (_, i) => at(i + 1, LEAF_AT, RECORD)));
    },
    get preimages() {
      return (preimages ??= Array.from({ length: kinds.length }, (_, i) => preimage(i + 1)));
    },
  };
}

export function recordTrace(model: Model, job: Job, options: RecordOptions = {}): Trace {
  const run = traceRun(model, job, options);
  let r = run.next();
  while (!r.done) r = run.next();
  return r.value;
}

/**
 * recordTrace giving the event loop a turn after every position (setImmediate), so that several
 * jobs on one model run interleaved — the bits are the same as alone. An aborted signal stops the
 * run between two positions (it throws the signal's reason) and frees its memory.
 */
export async function recordTraceCooperatively(model: Model, job: Job, options: RecordOptions = {}, signal?: AbortSignal): Promise<Trace> {
  const run = traceRun(model, job, options);
  try {
    for (let r = run.next(); ; r = run.next()) {
      if (r.done) return r.value;
      await new Promise((resolve) => setImmediate(resolve));
      signal?.throwIfAborted();
    }
  } finally {
    run.return(undefined as never);
  }
}

/** The run of recordTrace as a generator that yields once per position. */
function* traceRun(model: Model, job: Job, options: RecordOptions): Generator<void, Trace> {
  const { arena } = model;
  const { dim, kvDim, nLayers } = model.config;
  const sched = schedule(job, nLayers);
  const commitment = jobCommitment(job);
  const { deviation } = options;
  const layers = new Map<number, LayerRecord>();
  const kinds = new Uint8Array(sched.steps);

  // Records, the per-layer K/V chains and the accumulator live in the model's memory, where the
  // native hasher writes; they are copied out when the run is over.
  const block = arena.allocBlock(RECORD * sched.steps + 32 * nLayers + 32);
  const records = block;
  const chains = records + RECORD * sched.steps;
  const acc = chains + 32 * nLayers;
  const bytes = (ptr: number, n: number): Buffer => Buffer.from(arena.memory.buffer, ptr, n);
  bytes(chains, 32 * nLayers).fill(0); // KV_CHAIN_START
  bytes(acc, 32).set(unhex(traceStart(commitment)));
  const native = nativeKernels();
  const handle = native?.bind(new Uint8Array(arena.memory.buffer)) ?? -1;
  let steps = 0;

  const hashLayer = (x: Float32Array, key: Float32Array, value: Float32Array, pos: number, layer: number, out: number): void => {
    if (native) {
      native.traceLayer(handle, x.byteOffset, key.byteOffset, value.byteOffset, dim, kvDim, pos, layer, chains + 32 * layer, acc, out);
      return;
    }
    const chain = bytes(chains + 32 * layer, 32);
    const xHash = sha256(f32Bytes(x));
    const kvHash = sha256(f32Bytes(key), f32Bytes(value));
    chain.set(sha256(chain, kvHash));
    const leaf = sha256(text('verity-leaf/layer'), u32(pos, layer), xHash, kvHash, chain);
    bytes(out, RECORD).set(Buffer.concat([xHash, kvHash, chain, leaf]));
    bytes(acc, 32).set(sha256(bytes(acc, 32), leaf));
  };
  const pushOther = (kind: 'head' | 'end', fields: Uint8Array, leaf: Uint8Array): void => {
    const out = records + RECORD * steps;
    kinds[steps++] = KIND.indexOf(kind);
    bytes(out, fields.length).set(fields);
    bytes(out + LEAF_AT, 32).set(leaf);
    bytes(acc, 32).set(sha256(bytes(acc, 32), leaf));
  };

  let run: ReturnType<typeof generate> | undefined;
  try {
    run = generate(model, {
      prompt: job.promptTokens,
      steps: job.steps,
      sampling: samplingOf(job),
      seed: BigInt(job.seed),
      kernels: options.kernels,
      threads: options.threads,
      // A deviation writes to a step's x and needs the write to reach the next step: one position at a time.
      promptBatch: deviation?.activation ? 1 : options.promptBatch,
      observer: {
        layer(pos, layer, out) {
          const a = deviation?.activation;
          if (a && a.pos === pos && a.layer === layer) out.x[a.index] = Math.fround(out.x[a.index] + a.delta);
          hashLayer(out.x, out.key, out.value, pos, layer, records + RECORD * steps);
          kinds[steps++] = 0;
          if (options.keepOutputs) layers.set(steps, { x: out.x.slice(), key: out.key.slice(), value: out.value.slice() });
        },
        head(pos, token, rngState) {
          const chosen = deviation?.token?.pos === pos ? deviation.token.token : token;
          const fields = Buffer.concat([u32(chosen), u64(rngState)]);
          pushOther('head', fields, sha256(TAG.head, u32(pos), fields));
          return chosen;
        },
      },
    });
    let r = run.next();
    let prev = job.promptTokens[0];
    for (let k = 0; !r.done; k++) {
      if (options.onToken && k >= job.promptTokens.length - 1) options.onToken(r.value.token, prev);
      prev = r.value.token;
      yield;
      r = run.next();
    }
    while (steps < sched.steps) pushOther('end', new Uint8Array(0), sha256(TAG.end, u32(steps + 1)));
    const recorded = new Uint8Array(bytes(records, RECORD * sched.steps));
    return traceFrom(job, commitment, nLayers, recorded, kinds, { root: bytes(acc, 32).toString('hex'), tokens: r.value.tokens, layers });
  } finally {
    run?.return(undefined as never);
    arena.free(block);
  }
}

/** acc after step s (acc 0 is the start). */
export function accAt(trace: Trace, s: number): Hex {
  let acc = traceStart(trace.commitment);
  for (let i = 0; i < s; i++) acc = accNext(acc, trace.leaves[i]);
  return acc;
}

/** Every accumulator value acc[0..N]. */
export function accumulators(trace: Pick<Trace, 'commitment' | 'leaves'>): Hex[] {
  const accs = [traceStart(trace.commitment)];
  for (const leaf of trace.leaves) accs.push(accNext(accs[accs.length - 1], leaf));
  return accs;
}
