// The referee: re-executes one disputed step with the engine's own step functions, from inputs
// checked against the agreed accumulator and weights checked against the model id, and computes
// the step's true leaf and acc[s].
//
// A referee serves one model. It reads weights from storage by chunk, verifies every chunk against
// the model id when it first reads it, and keeps the verified tensors in memory: a layer's
// weights are fetched once, however many disputes touch them.
import { performance } from 'node:perf_hooks';
import {
  dequantizeBlocks,
  rowBytes as rowBytesOf,
  chunkLayout,
  createSparseModel,
  defaultKernelPath,
  layerStepTensors,
  leafHash as chunkLeafHash,
  parseCanonicalConfig,
  rootFromRange,
  runHeadStep,
  runLayerStep,
  type CanonicalConfig,
  type KernelPath,
  type SparseModel,
  type TensorLeaves,
} from '../engine/index.js';
import { ProofError, checkOpening, type Opening } from './opening.js';
import { accNext, hex, kvChainNext, kvHashOf, leafHash, samplingOf, unhex, xHashOf, type Hex, type Job } from './trace.js';

/** Where the referee reads weights: leaves of the model tree by index, with range proofs. */
export interface WeightSource {
  /** The model id the source claims to serve (its tree's root). */
  modelId: Hex;
  leafCount: number;
  read(from: number, to: number): { leaves: Uint8Array[]; proof: Hex[] };
}

export interface RefereeReport {
  leaf: Hex;
  acc: Hex;
  kind: 'layer' | 'head' | 'end';
  /** Weight bytes this step reads; those fetched and verified now (not cached) and the time that took. */
  weightBytes: number;
  fetchedBytes: number;
  fetchMs: number;
  /** Checking the opening, and running the step. */
  checkMs: number;
  executeMs: number;
}

export interface Referee {
  modelId: Hex;
  /**
   * Re-executes the step the opening is for. The opening is checked against `agreed` (acc[s−1]);
   * throws ProofError naming what does not hold. Returns the true leaf and acc[s].
   */
  resolve(job: Job, agreed: Hex, opening: Opening): RefereeReport;
}

export function createReferee(source: WeightSource, kernels: KernelPath = defaultKernelPath()): Referee {
  let fetchedBytes = 0;

  /** Reads leaves from..to and verifies them against the model id. */
  function verifiedLeaves(from: number, to: number): Uint8Array[] {
    const { leaves, proof } = source.read(from, to);
    if (leaves.length !== to - from) throw new ProofError('weights', `asked for ${to - from} chunks, got ${leaves.length}`);
    let root: Hex;
    try {
      root = hex(rootFromRange(source.leafCount, from, leaves.map((l) => chunkLeafHash(l)), proof.map(unhex)));
    } catch (e) {
      throw new ProofError('weights', `the proof for chunks ${from}..${to - 1} is malformed (${(e as Error).message})`);
    }
    if (root !== source.modelId) throw new ProofError('weights', `chunks ${from}..${to - 1} do not match model ${source.modelId.slice(0, 16)}… (a forged or corrupted chunk)`);
    fetchedBytes += leaves.reduce((n, l) => n + l.length, 0);
    return leaves;
  }

  let state: { canonical: CanonicalConfig; tensors: Map<string, TensorLeaves>; sparse: SparseModel } | null = null;
  function model(): NonNullable<typeof state> {
    if (!state) {
      const canonical = parseCanonicalConfig(verifiedLeaves(0, 1)[0]);
      const layout = chunkLayout(canonical);
      if (layout.leaves !== source.leafCount) throw new ProofError('weights', `the model has ${layout.leaves} leaves, the source claims ${source.leafCount}`);
      state = { canonical, tensors: new Map(layout.tensors.map((t) => [t.name, t])), sparse: createSparseModel(canonical) };
    }
    return state;
  }

  function ensure(names: string[]): number {
    const { tensors, sparse } = model();
    let bytes = 0;
    for (const name of names) {
      const t = tensors.get(name)!;
      bytes += t.bytes;
      if (!sparse.has(name)) sparse.add(name, verifiedLeaves(t.firstLeaf, t.firstLeaf + t.chunks));
    }
    return bytes;
  }

  const embeddingChunks = new Map<number, Uint8Array>();
  /** The token's embedding row as f32 (a Q8_0 row dequantised exactly), from the chunks holding it. */
  function embeddingRow(token: number): Float32Array {
    const { tensors, canonical } = model();
    const t = tensors.get('token_embd.weight')!;
    const dim = canonical.config.dim;
    const rowBytes = rowBytesOf(t.dtype, dim);
    const start = token * rowBytes;
    const first = Math.floor(start / canonical.chunkBytes);
    const last = Math.floor((start + rowBytes - 1) / canonical.chunkBytes);
    for (let c = first; c <= last; c++) {
      if (!embeddingChunks.has(c)) embeddingChunks.set(c, verifiedLeaves(t.firstLeaf + c, t.firstLeaf + c + 1)[0]);
    }
    const chunks = Buffer.concat(Array.from({ length: last - first + 1 }, (_, i) => embeddingChunks.get(first + i)!));
    const bytes = chunks.subarray(start - first * canonical.chunkBytes, start - first * canonical.chunkBytes + rowBytes);
    return dequantizeBlocks(t.dtype, bytes);
  }

  return {
    modelId: source.modelId,
    resolve(job, agreed, opening) {
      if (job.modelId !== source.modelId) {
        throw new ProofError('model', `the weights served belong to model ${source.modelId.slice(0, 16)}…, the job's model is ${job.modelId.slice(0, 16)}…`);
      }
      const fetchedBefore = fetchedBytes;
      // performance.now() below is outside every committed computation: it only times the referee
      // for its report (fetchMs, checkMs, executeMs). No verdict, leaf or accumulator depends on it,
      // and host.step (src/processes/host.ts resolveStep) drops these fields before anything
      // reaches a process, so CUs that time differently still agree.
      let fetchMs = 0;
      const fetching = <T>(work: () => T): T => {
        const t0 = performance.now();
        const out = work();
        fetchMs += performance.now() - t0;
        return out;
      };
      const { canonical, sparse } = fetching(model);
      const t0 = performance.now();
      const inputs = checkOpening(job, canonical.config, agreed, opening);
      const checkMs = performance.now() - t0;

      let leaf: Hex;
      let weightBytes = 0;
      let executeMs = 0;
      if (inputs.kind === 'end') {
        leaf = leafHash({ kind: 'end', step: inputs.step });
      } else if (inputs.kind === 'head') {
        weightBytes = fetching(() => ensure(['output_norm.weight', 'output.weight']));
        const t1 = performance.now();
        const { token, rngState } = runHeadStep(sparse.model, { x: inputs.x, params: samplingOf(job), rngState: inputs.rng }, kernels);
        executeMs = performance.now() - t1;
        leaf = leafHash({ kind: 'head', pos: inputs.pos, token, rng: rngState.toString() });
      } else {
        weightBytes = fetching(() => ensure(layerStepTensors(sparse.model.config, inputs.layer)));
        const x = inputs.x ?? fetching(() => embeddingRow(inputs.token!));
        if (!inputs.x) weightBytes += x.byteLength;
        const t1 = performance.now();
        const out = runLayerStep(sparse.model, { layer: inputs.layer, pos: inputs.pos, x, keys: inputs.keys, values: inputs.values }, kernels);
        const kvHash = kvHashOf(out.key, out.value);
        leaf = leafHash({ kind: 'layer', pos: inputs.pos, layer: inputs.layer, xHash: xHashOf(out.x), kvHash, kvChain: kvChainNext(inputs.kvChain, kvHash) });
        executeMs = performance.now() - t1;
      }
      const acc = accNext(agreed, leaf);
      return { leaf, acc, kind: inputs.kind, weightBytes, fetchedBytes: fetchedBytes - fetchedBefore, fetchMs, checkMs, executeMs };
    },
  };
}
