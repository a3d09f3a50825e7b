// What a node commits to: the job (recomputable by anyone from the request) and the execution
// trace — one leaf per step in canonical order, chained so that agreeing on the accumulator after
// step s means agreeing on every leaf up to s. Formats: docs/proofs.md.
import { createHash } from 'node:crypto';
import {
  NUMERICS_SPEC_VERSION,
  generate,
  type KernelPath,
  type Model,
  type ModelIdentity,
  type SamplingParams,
} from '../engine/index.js';

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

// ---------------------------------------------------------------------------------------------
// The step schedule: for each position its layer steps, then a head step once the prompt is
// consumed (positions ≥ prompt length − 1). Steps are numbered 1..N; the count is fixed by the job
// — after generation stops (BOS) the remaining steps are "end" steps.

export type StepRef = { kind: 'layer'; pos: number; layer: number } | { kind: 'head'; pos: number };

export interface Schedule {
  steps: number;
  at(s: number): StepRef;
  index(ref: StepRef): number;
}

export function schedule(job: Job, nLayers: number): Schedule {
  const L = nLayers;
  const headless = Math.min(job.steps, Math.max(0, job.promptTokens.length - 1)); // positions without a head step
  const base = (pos: number): number => (pos <= headless ? pos * L : headless * L + (pos - headless) * (L + 1));
  const total = base(job.steps);
  return {
    steps: total,
    at(s) {
      if (!Number.isInteger(s) || s < 1 || s > total) throw new RangeError(`step ${s} is outside 1..${total}`);
      const i = s - 1;
      if (i < headless * L) return { kind: 'layer', pos: Math.floor(i / L), layer: i % L };
      const j = i - headless * L;
      const pos = headless + Math.floor(j / (L + 1));
      const k = j % (L + 1);
      return k < L ? { kind: 'layer', pos, layer: k } : { kind: 'head', pos };
    },
    index(ref) {
      return base(ref.pos) + (ref.kind === 'layer' ? ref.layer : L) + 1;
    },
  };
}

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

// ---------------------------------------------------------------------------------------------
// Recording a trace while the engine generates.

export interface LayerRecord {
  x: Float32Array;
  key: Float32Array;
  value: Float32Array;
  preimage: Extract<LeafPreimage, { kind: 'layer' }>;
}

export interface Trace {
  job: Job;
  commitment: Hex;
  nLayers: number;
  /** leaves[s - 1] is step s's leaf; preimages likewise. */
  leaves: Hex[];
  preimages: LeafPreimage[];
  /** Layer outputs by step index, kept to answer openings. */
  layers: Map<number, LayerRecord>;
  root: Hex;
  /** The generated tokens (after the prompt), as the node reports them. */
  tokens: number[];
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
  /** Keep layer outputs for openings (a node does; a bare fingerprint does not). */
  keepOutputs?: boolean;
}

export function recordTrace(model: Model, job: Job, options: RecordOptions = {}): Trace {
  const sched = schedule(job, model.config.nLayers);
  const commitment = jobCommitment(job);
  const leaves: Hex[] = [];
  const preimages: LeafPreimage[] = [];
  const layers = new Map<number, LayerRecord>();
  const kvChains: Hex[] = new Array(model.config.nLayers).fill(KV_CHAIN_START);
  const { deviation } = options;
  const push = (p: LeafPreimage): void => {
    preimages.push(p);
    leaves.push(leafHash(p));
  };
  const run = generate(model, {
    prompt: job.promptTokens,
    steps: job.steps,
    sampling: samplingOf(job),
    seed: BigInt(job.seed),
    kernels: options.kernels,
    threads: options.threads,
    observer: {
      layer(pos, layer, out) {
        const a = deviation?.activation;
        if (a && a.pos === pos && a.layer === layer) out.x[a.index] = Math.fround(out.x[a.index] + a.delta);
        const kvHash = kvHashOf(out.key, out.value);
        kvChains[layer] = kvChainNext(kvChains[layer], kvHash);
        const preimage = { kind: 'layer' as const, pos, layer, xHash: xHashOf(out.x), kvHash, kvChain: kvChains[layer] };
        push(preimage);
        if (options.keepOutputs ?? true) {
          layers.set(leaves.length, { x: out.x.slice(), key: out.key.slice(), value: out.value.slice(), preimage });
        }
      },
      head(pos, token, rngState) {
        const chosen = deviation?.token?.pos === pos ? deviation.token.token : token;
        push({ kind: 'head', pos, token: chosen, rng: rngState.toString() });
        return chosen;
      },
    },
  });
  let r = run.next();
  while (!r.done) r = run.next();
  while (leaves.length < sched.steps) push({ kind: 'end', step: leaves.length + 1 });
  const root = leaves.reduce(accNext, traceStart(commitment));
  return { job, commitment, nLayers: model.config.nLayers, leaves, preimages, layers, root, tokens: r.value.tokens };
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
