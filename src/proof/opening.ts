// Openings: what a party reveals so that a referee can re-execute step s alone — the step's
// inputs, each bound to the agreed accumulator acc[s−1] by a segment of the hash chain.
//
// A layer step (pos, l) reads: its input residual (the x of step (pos, l−1), or the embedding of
// the position's token for l = 0), and layer l's K/V rows for positions < pos. The leaf of step
// (pos−1, l) commits to that whole K/V history through its kvChain, so the chain segment only has
// to reach back about one position; the rows themselves are checked against the kvChain.
import type { ModelConfig } from '../engine/index.js';
import {
  BOS, KV_CHAIN_START, accNext, accumulators, kvChainNext, kvHashOf, leafHash, schedule, xHashOf,
  type Hex, type Job, type LeafPreimage, type StepRef, type Trace,
} from './trace.js';
import { VerityError } from '../errors.js';

export interface Opening {
  step: number;
  /** The first step whose leaf the segment lists, and the accumulator just before it. */
  from: number;
  accBefore: Hex;
  /** Leaves of steps from..step−1. */
  leaves: Hex[];
  /** Preimages of the listed leaves the step reads, by step index. */
  preimages: Record<number, LeafPreimage>;
  /** The input residual (layer > 0, head). */
  x?: Float32Array;
  /** Layer l's K and V rows for positions 0..pos−1. */
  keys?: Float32Array;
  values?: Float32Array;
}

/** An opening as JSON: the float arrays as base64 of their f32 little-endian bytes. */
export type OpeningJson = Omit<Opening, 'x' | 'keys' | 'values'> & { x?: string; keys?: string; values?: string };

export class ProofError extends VerityError {
  constructor(
    override readonly code: 'chain' | 'preimage' | 'input' | 'kv' | 'weights' | 'model' | 'shape',
    message: string,
  ) {
    super(message);
    this.name = 'ProofError';
  }
}

const b64 = (v: Float32Array | undefined): string | undefined => (v ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') : undefined);

function fromB64(text: string | undefined): Float32Array | undefined {
  if (text === undefined) return undefined;
  const bytes = Buffer.from(text, 'base64');
  if (bytes.length % 4 !== 0) throw new ProofError('shape', `${bytes.length} bytes are not whole f32 values`);
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
}

export const encodeOpening = (o: Opening): OpeningJson => ({ ...o, x: b64(o.x), keys: b64(o.keys), values: b64(o.values) });
export const decodeOpening = (o: OpeningJson): Opening => ({ ...o, x: fromB64(o.x), keys: fromB64(o.keys), values: fromB64(o.values) });

function floats(v: Float32Array | undefined, count: number, what: string): Float32Array {
  if (!v || v.length !== count) throw new ProofError('shape', `${what}: ${v?.length ?? 0} values, expected ${count}`);
  return v;
}

/** The earlier steps whose leaves step s reads (besides s − 1, which every opening shows). */
function reads(job: Job, nLayers: number, s: number): number[] {
  const sched = schedule(job, nLayers);
  const ref = sched.at(s);
  const out = s > 1 ? [s - 1] : [];
  if (ref.kind === 'layer' && ref.pos > 0) out.push(sched.index({ kind: 'layer', pos: ref.pos - 1, layer: ref.layer }));
  const before = s - 1 - nLayers; // the previous position's head step, if it has one
  if (ref.kind === 'head' && before >= 1 && sched.at(before).kind === 'head') out.push(before);
  return [...new Set(out)].sort((a, b) => a - b);
}

/** Builds the opening for step s from a party's own trace. */
export function buildOpening(trace: Trace, s: number, config: Pick<ModelConfig, 'kvDim'>): Opening {
  const needed = reads(trace.job, trace.nLayers, s);
  const from = needed[0] ?? s;
  const accs = accumulators({ commitment: trace.commitment, leaves: trace.leaves.slice(0, s - 1) });
  const opening: Opening = {
    step: s,
    from,
    accBefore: accs[from - 1],
    leaves: trace.leaves.slice(from - 1, s - 1),
    preimages: Object.fromEntries(needed.map((i) => [i, trace.preimages[i - 1]])),
  };
  const ref = schedule(trace.job, trace.nLayers).at(s);
  const previous = trace.layers.get(s - 1);
  if (previous && (ref.kind === 'head' || (ref.kind === 'layer' && ref.layer > 0))) opening.x = previous.x;
  if (ref.kind === 'layer' && ref.pos > 0) {
    const rows = Array.from({ length: ref.pos }, (_, t) => trace.layers.get(schedule(trace.job, trace.nLayers).index({ kind: 'layer', pos: t, layer: ref.layer })));
    if (rows.every((r) => r !== undefined)) {
      const keys = new Float32Array(ref.pos * config.kvDim);
      const values = new Float32Array(ref.pos * config.kvDim);
      rows.forEach((r, t) => {
        keys.set(r!.key, t * config.kvDim);
        values.set(r!.value, t * config.kvDim);
      });
      opening.keys = keys;
      opening.values = values;
    }
  }
  return opening;
}

/** Bytes a party sends for an opening (hashes and floats in binary). */
export function openingBytes(o: Opening): number {
  const floatsBytes = [o.x, o.keys, o.values].reduce((n, v) => n + (v?.byteLength ?? 0), 0);
  const preimages = Object.values(o.preimages).reduce((n, p) => n + (p.kind === 'layer' ? 104 : p.kind === 'head' ? 16 : 4), 0);
  return 8 + 32 + 32 * o.leaves.length + preimages + floatsBytes;
}

/** What the referee needs to run the step, once the opening checked out. */
export type StepInputs =
  | { kind: 'end'; step: number }
  | { kind: 'layer'; pos: number; layer: number; token?: number; x?: Float32Array; keys: Float32Array; values: Float32Array; kvChain: Hex }
  | { kind: 'head'; pos: number; x: Float32Array; rng: bigint };

/**
 * Checks an opening against the agreed acc[s−1] and returns the step's inputs. Throws a ProofError
 * naming the first thing that does not hold.
 */
export function checkOpening(job: Job, config: Pick<ModelConfig, 'nLayers' | 'dim' | 'kvDim'>, agreed: Hex, o: Opening): StepInputs {
  const sched = schedule(job, config.nLayers);
  const s = o.step;
  const ref: StepRef = sched.at(s);
  if (!Number.isInteger(o.from) || o.from < 1 || o.from > s || o.leaves.length !== s - o.from) {
    throw new ProofError('chain', `the chain segment must list the leaves of steps ${o.from}..${s - 1}`);
  }
  const acc = o.leaves.reduce(accNext, o.accBefore);
  if (acc !== agreed) throw new ProofError('chain', `the chain segment ends at ${acc.slice(0, 16)}…, not at the agreed acc[${s - 1}] ${agreed.slice(0, 16)}…`);
  const preimage = (i: number): LeafPreimage => {
    const p = o.preimages[i];
    if (!p || i < o.from || i >= s) throw new ProofError('preimage', `the opening does not show step ${i}`);
    if (leafHash(p) !== o.leaves[i - o.from]) throw new ProofError('preimage', `the preimage of step ${i} does not hash to its leaf`);
    return p;
  };
  for (const i of reads(job, config.nLayers, s)) preimage(i);

  // After generation stopped, every step is an end step.
  const previous = s > 1 ? preimage(s - 1) : null;
  const stopped = previous?.kind === 'end' || (previous?.kind === 'head' && previous.token === BOS);
  if (stopped) return { kind: 'end', step: s };

  if (ref.kind === 'head') {
    const last = previous;
    if (last?.kind !== 'layer' || last.pos !== ref.pos || last.layer !== config.nLayers - 1) throw new ProofError('preimage', `step ${s - 1} is not the last layer of position ${ref.pos}`);
    const x = floats(o.x, config.dim, 'x');
    if (xHashOf(x) !== last.xHash) throw new ProofError('input', `x does not match the output of step ${s - 1}`);
    const before = s - 1 - config.nLayers;
    const prevHead = ref.pos > 0 && before >= 1 && sched.at(before).kind === 'head' ? preimage(before) : null;
    const rng = prevHead?.kind === 'head' ? BigInt(prevHead.rng) : BigInt(job.seed);
    return { kind: 'head', pos: ref.pos, x, rng };
  }

  const { pos, layer } = ref;
  let kvChain = KV_CHAIN_START;
  let keys: Float32Array = new Float32Array(0);
  let values: Float32Array = new Float32Array(0);
  if (pos > 0) {
    const history = preimage(sched.index({ kind: 'layer', pos: pos - 1, layer }));
    if (history.kind !== 'layer') throw new ProofError('preimage', `step (${pos - 1}, ${layer}) is not a layer step`);
    keys = floats(o.keys, pos * config.kvDim, 'keys');
    values = floats(o.values, pos * config.kvDim, 'values');
    let chain = KV_CHAIN_START;
    for (let t = 0; t < pos; t++) {
      const row = t * config.kvDim;
      chain = kvChainNext(chain, kvHashOf(keys.subarray(row, row + config.kvDim), values.subarray(row, row + config.kvDim)));
    }
    if (chain !== history.kvChain) throw new ProofError('kv', `the K/V rows of layer ${layer} do not match the history committed at position ${pos - 1}`);
    kvChain = chain;
  }
  if (layer > 0) {
    if (previous?.kind !== 'layer' || previous.pos !== pos || previous.layer !== layer - 1) throw new ProofError('preimage', `step ${s - 1} is not layer ${layer - 1} of position ${pos}`);
    const x = floats(o.x, config.dim, 'x');
    if (xHashOf(x) !== previous.xHash) throw new ProofError('input', `x does not match the output of step ${s - 1}`);
    return { kind: 'layer', pos, layer, x, keys, values, kvChain };
  }
  // Layer 0 reads the position's token: the prompt's, or the one sampled at the position before.
  let token: number;
  if (pos < job.promptTokens.length) token = job.promptTokens[pos];
  else if (previous?.kind === 'head' && previous.pos === pos - 1) token = previous.token;
  else throw new ProofError('preimage', `step ${s - 1} is not the head step of position ${pos - 1}`);
  if (pos > 0 && token === BOS) return { kind: 'end', step: s };
  return { kind: 'layer', pos, layer, token, keys, values, kvChain };
}
