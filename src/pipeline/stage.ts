// One stage of a pipeline: a model split by layer ranges over several stages (issue 16, item 2).
// For each position the stages run in turn, each passing the residual x of its last layer to the
// next; only the first embeds, only the last applies the head and samples. Every step computes the
// same bits as the single-node run (generate.ts), so the stages' leaves together are the leaves of
// recordTrace (src/proof/trace.ts), and the assembled root is its root (pipeline/trace.ts).
//
// A stage may hold more layers than it runs (a partial model loaded with an overlap): the layers it
// holds all get a K/V cache, so that a neighbour can hand one over between two positions
// (exportLayers → importLayers) with its K/V rows and chain, and the run goes on unchanged.
import {
  EngineError, createSession, disposeSession, embed, headStep, holdsEmbedding, holdsHead, holdsLayer, keyRow, layerRangeBatch, layerStep, valueRow,
  type KernelPath, type LayerRange, type Model, type Session,
} from '../engine/index.js';
import { KV_CHAIN_START, kvChainNext, kvHashOf, leafHash, samplingOf, xHashOf, type Hex, type Job, type LayerRecord } from '../proof/trace.js';

export type { LayerRange } from '../engine/index.js';

/** What a stage does: the layers it runs now, and whether it embeds (runs layer 0) and samples (runs the last layer). */
export interface StageRole {
  layers: LayerRange;
  embeds: boolean;
  samples: boolean;
}

export interface StageOptions {
  kernels?: KernelPath;
  /** Threads for matrix products and attention; the bits do not depend on it. */
  threads?: number;
  /** Keep every layer step's output and K/V rows (`outputs`): a stage re-runs its layers so to open a step. */
  keepOutputs?: boolean;
}

/** A layer step's leaf and its preimage's hashes (docs/proofs.md §2). */
export interface LayerLeaf {
  pos: number;
  layer: number;
  leaf: Hex;
  xHash: Hex;
  kvHash: Hex;
  kvChain: Hex;
}

export interface StageOutput {
  /** The residuals after the stage's last layer: count × dim floats, position-major. */
  x: Float32Array;
  /** The stage's layer leaves, position by position, layers in order. */
  leaves: LayerLeaf[];
}

export interface HeadOutput {
  token: number;
  /** The RNG state after sampling (the head leaf commits to it). */
  rngState: bigint;
  leaf: Hex;
}

export type StageInput = { tokens: number[] } | { x: Float32Array };

/**
 * Layers handed from one stage to its neighbour between two positions: for each layer, its K and
 * V rows of positions 0..positions−1 (positions × kvDim floats each) and its K/V chain. Plain
 * arrays and typed arrays only, so that it crosses worker threads and processes (structured clone).
 */
export interface LayerHandover {
  layers: LayerRange;
  positions: number;
  keys: Float32Array[];
  values: Float32Array[];
  kvChains: Hex[];
}

export interface StageRun {
  /** The layers it runs now (exportLayers and importLayers change it). */
  readonly layers: LayerRange;
  readonly embeds: boolean;
  readonly samples: boolean;
  readonly nLayers: number;
  /** The tokenizer's BOS id: generation stops when it comes next (generate.ts). */
  readonly bosId: number;
  /** The next position forward expects. */
  readonly position: number;
  /**
   * Positions pos..pos+count−1 (count > 1 only for prompt positions) through the stage's layers.
   * Input: the tokens (first stage) or the previous stage's residuals, count × dim, position-major.
   */
  forward(pos: number, count: number, input: StageInput): StageOutput;
  /** Last stage: the head step at `pos`, right after forward of pos. The stage keeps the RNG state (seeded from the job). */
  head(pos: number): HeadOutput;
  /** Hands over boundary layers (a prefix or a suffix of its range) with their state; it no longer runs them. */
  exportLayers(range: LayerRange): LayerHandover;
  /** Takes over a neighbour's boundary layers; it must hold their weights (loaded with the overlap). */
  importLayers(h: LayerHandover): void;
  /** With keepOutputs: each layer step's output x and K/V rows, by pos × nLayers + layer. */
  readonly outputs: Map<number, LayerRecord>;
  close(): void;
}

const isRange = (r: unknown): r is LayerRange =>
  typeof r === 'object' && r !== null && Number.isInteger((r as LayerRange).first) && Number.isInteger((r as LayerRange).end);
const rangeText = (r: LayerRange): string => `[${r.first}, ${r.end})`;

/** Checks the job as generate.ts does, so that a stage refuses what the single-node run refuses. */
function checkJob(model: Model, job: Job): void {
  const { seqLen, vocabSize } = model.config;
  if (!Number.isInteger(job.steps) || job.steps < 1 || job.steps > seqLen) {
    throw new EngineError(`steps must be an integer in 1..${seqLen} (the model's seq_len), got ${job.steps}`);
  }
  const p = job.promptTokens;
  if (!Array.isArray(p) || p.length === 0 || p.length > seqLen || p.some((t) => !Number.isInteger(t) || t < 0 || t >= vocabSize)) {
    throw new EngineError(`prompt tokens must be 1..${seqLen} ids below the vocabulary size ${vocabSize}`);
  }
}

export function startStage(model: Model, role: StageRole, job: Job, options: StageOptions = {}): StageRun {
  const { nLayers, dim, kvDim } = model.config;
  if (!role || !isRange(role.layers) || role.layers.first < 0 || role.layers.end > nLayers || role.layers.first >= role.layers.end) {
    throw new EngineError(`a stage's layers must be a non-empty range of the model's ${nLayers} layers, got ${isRange(role?.layers) ? rangeText(role.layers) : String(role?.layers)}`);
  }
  // Layer 0's input is the embedding and the last layer's output feeds the head: whoever runs one does the other.
  if (role.embeds !== (role.layers.first === 0)) throw new EngineError(`the stage that runs layer 0 embeds, and only it (layers ${rangeText(role.layers)}, embeds ${role.embeds})`);
  if (role.samples !== (role.layers.end === nLayers)) throw new EngineError(`the stage that runs the last layer samples, and only it (layers ${rangeText(role.layers)}, samples ${role.samples})`);
  for (let l = role.layers.first; l < role.layers.end; l++) {
    if (!holdsLayer(model, l)) throw new EngineError(`this stage runs layer ${l}, which its model does not hold`);
  }
  if (role.embeds && !holdsEmbedding(model)) throw new EngineError('this stage embeds, but its model does not hold the token embedding');
  if (role.samples && !holdsHead(model)) throw new EngineError('this stage samples, but its model does not hold the head');
  checkJob(model, job);

  // A K/V cache for every layer the model holds, so that imported layers find theirs.
  const held = Array.from({ length: nLayers }, (_, l) => l).filter((l) => holdsLayer(model, l));
  const s: Session = createSession(model, { maxPositions: job.steps, kernels: options.kernels, threads: options.threads, layers: held });
  const arena = model.arena;
  const promptLength = job.promptTokens.length;
  const sampling = samplingOf(job);
  let rngState = BigInt(job.seed);
  let layers: LayerRange = { ...role.layers };
  let next = 0; // the next position forward takes
  let headAt = -1; // the last position whose head step ran
  const chains: Hex[] = Array.from({ length: nLayers }, () => KV_CHAIN_START);
  const outputs = new Map<number, LayerRecord>();
  let closed = false;

  const live = (): void => {
    if (closed) throw new EngineError('this stage was closed');
  };
  /** The last position ran and has a head step that has not run yet. */
  const headPending = (): boolean => role.samples && next > 0 && next - 1 >= promptLength - 1 && headAt !== next - 1;

  const record = (pos: number, layer: number, x: Float32Array): LayerLeaf => {
    const key = s.backend.read(s, keyRow(s, layer, pos), kvDim);
    const value = s.backend.read(s, valueRow(s, layer, pos), kvDim);
    const xHash = xHashOf(x);
    const kvHash = kvHashOf(key, value);
    const kvChain = (chains[layer] = kvChainNext(chains[layer], kvHash));
    if (options.keepOutputs) outputs.set(pos * nLayers + layer, { x: x.slice(), key: key.slice(), value: value.slice() });
    return { pos, layer, xHash, kvHash, kvChain, leaf: leafHash({ kind: 'layer', pos, layer, xHash, kvHash, kvChain }) };
  };

  return {
    get layers() {
      return { ...layers };
    },
    embeds: role.embeds,
    samples: role.samples,
    nLayers,
    bosId: model.tokenizer.bosId,
    get position() {
      return next;
    },
    outputs,

    forward(pos, count, input) {
      live();
      if (pos !== next) throw new EngineError(`forward at position ${pos}: this stage runs position ${next} next`);
      if (!Number.isInteger(count) || count < 1 || pos + count > job.steps) throw new EngineError(`forward of ${count} positions from ${pos}: the job runs positions 0..${job.steps - 1}`);
      if (count > 1 && pos + count > promptLength) throw new EngineError(`only prompt positions (0..${promptLength - 1}) run as a batch, not ${pos}..${pos + count - 1}`);
      if (headPending()) throw new EngineError(`position ${next - 1}'s head step has not run`);
      let batch: StageInput;
      if (role.embeds) {
        const tokens = (input as { tokens?: unknown }).tokens;
        if (!Array.isArray(tokens) || tokens.length !== count) throw new EngineError(`the first stage takes ${count} tokens`);
        tokens.forEach((t, v) => {
          if (pos + v < promptLength && t !== job.promptTokens[pos + v]) throw new EngineError(`position ${pos + v} is a prompt position: its token is ${job.promptTokens[pos + v]}, not ${String(t)}`);
        });
        batch = { tokens: tokens as number[] };
      } else {
        const x = (input as { x?: unknown }).x;
        if (!(x instanceof Float32Array) || x.length !== count * dim) {
          throw new EngineError(`stage input: ${count} residuals of ${dim} floats (${count * dim}), got ${x instanceof Float32Array ? x.length : 'no Float32Array'}`);
        }
        batch = { x };
      }
      const leaves: LayerLeaf[] = [];
      let out: Float32Array;
      if (count === 1) {
        // One position as generate.ts runs it: layerStep after layerStep on the session's x.
        if ('tokens' in batch) embed(s, batch.tokens[0]);
        else arena.f32(s.x, dim).set(batch.x);
        for (let l = layers.first; l < layers.end; l++) {
          layerStep(s, l, pos);
          leaves.push(record(pos, l, s.backend.read(s, s.x, dim)));
        }
        out = s.backend.read(s, s.x, dim).slice();
      } else {
        // A prompt batch, layer by layer; each layer's chain still advances position by position.
        out = layerRangeBatch(s, pos, batch, layers, (l, xs) => {
          for (let v = 0; v < count; v++) leaves.push(record(pos + v, l, xs.subarray(v * dim, (v + 1) * dim)));
        });
        leaves.sort((a, b) => a.pos - b.pos || a.layer - b.layer);
      }
      next = pos + count;
      return { x: out, leaves };
    },

    head(pos) {
      live();
      if (!role.samples) throw new EngineError('only the last stage runs the head step');
      if (pos !== next - 1) throw new EngineError(`head at position ${pos}: this stage last ran position ${next - 1}`);
      if (pos < promptLength - 1) throw new EngineError(`position ${pos} is inside the prompt: it has no head step`);
      if (headAt === pos) throw new EngineError(`position ${pos}'s head step already ran`);
      const sampled = headStep(s, sampling, rngState);
      rngState = sampled.rngState;
      headAt = pos;
      return { token: sampled.token, rngState, leaf: leafHash({ kind: 'head', pos, token: sampled.token, rng: rngState.toString() }) };
    },

    exportLayers(range) {
      live();
      if (!isRange(range) || range.first >= range.end) throw new EngineError(`exportLayers: ${isRange(range) ? rangeText(range) : String(range)} is not a non-empty layer range`);
      const prefix = range.first === layers.first && range.end < layers.end;
      const suffix = range.end === layers.end && range.first > layers.first;
      if (!prefix && !suffix) throw new EngineError(`exportLayers: ${rangeText(range)} is not a proper prefix or suffix of this stage's layers ${rangeText(layers)}`);
      if (prefix && role.embeds) throw new EngineError('exportLayers: the first stage keeps layer 0 (it embeds)');
      if (suffix && role.samples) throw new EngineError('exportLayers: the last stage keeps the last layer (it samples)');
      if (headPending()) throw new EngineError(`exportLayers: position ${next - 1}'s head step has not run`);
      const n = next * kvDim;
      const h: LayerHandover = { layers: { first: range.first, end: range.end }, positions: next, keys: [], values: [], kvChains: [] };
      for (let l = range.first; l < range.end; l++) {
        h.keys.push(s.backend.read(s, keyRow(s, l, 0), n).slice());
        h.values.push(s.backend.read(s, valueRow(s, l, 0), n).slice());
        h.kvChains.push(chains[l]);
      }
      layers = prefix ? { first: range.end, end: layers.end } : { first: layers.first, end: range.first };
      return h;
    },

    importLayers(h) {
      live();
      if (!h || !isRange(h.layers) || h.layers.first >= h.layers.end) throw new EngineError('importLayers: not a layer handover');
      const r = h.layers;
      const count = r.end - r.first;
      if (h.positions !== next) throw new EngineError(`importLayers: the handover is at position ${h.positions}, this stage at ${next}`);
      const below = r.end === layers.first;
      const above = r.first === layers.end;
      if (!below && !above) throw new EngineError(`importLayers: ${rangeText(r)} does not border this stage's layers ${rangeText(layers)}`);
      if (below && role.embeds) throw new EngineError('importLayers: nothing comes before the first stage');
      if (above && role.samples) throw new EngineError('importLayers: nothing comes after the last stage');
      for (let l = r.first; l < r.end; l++) if (!holdsLayer(model, l)) throw new EngineError(`importLayers: layer ${l} is not loaded in this stage's model (load it with the overlap)`);
      const n = next * kvDim;
      const rows = (a: unknown): boolean => Array.isArray(a) && a.length === count && a.every((v) => v instanceof Float32Array && v.length === n);
      if (!rows(h.keys) || !rows(h.values)) throw new EngineError(`importLayers: ${count} layers of ${next} K and V rows of ${kvDim} floats expected`);
      if (!Array.isArray(h.kvChains) || h.kvChains.length !== count || !h.kvChains.every((c) => typeof c === 'string' && /^[0-9a-f]{64}$/.test(c))) {
        throw new EngineError('importLayers: one 32-byte hex K/V chain per layer expected');
      }
      if (headPending()) throw new EngineError(`importLayers: position ${next - 1}'s head step has not run`);
      // The chain must be the one the rows make (record's fold, position by position): a stage
      // taking rows that are not its chain's would commit leaves that follow from neither.
      for (let i = 0; i < count; i++) {
        let chain = KV_CHAIN_START;
        for (let p = 0; p < next; p++) chain = kvChainNext(chain, kvHashOf(h.keys[i].subarray(p * kvDim, (p + 1) * kvDim), h.values[i].subarray(p * kvDim, (p + 1) * kvDim)));
        if (chain !== h.kvChains[i]) throw new EngineError(`importLayers: layer ${r.first + i}'s K/V rows do not make its K/V chain`);
      }
      for (let i = 0; i < count; i++) {
        const l = r.first + i;
        arena.f32(keyRow(s, l, 0), n).set(h.keys[i]);
        arena.f32(valueRow(s, l, 0), n).set(h.values[i]);
        chains[l] = h.kvChains[i];
      }
      layers = below ? { first: r.first, end: layers.end } : { first: layers.first, end: r.end };
    },

    close() {
      closed = true;
      disposeSession(s);
    },
  };
}

/**
 * A handover as bytes, for a channel that carries payloads (pipeline/channel.ts): u32 first, end,
 * positions, kvDim, then per layer its 32-byte K/V chain, K rows, V rows (f32), little-endian.
 */
export function encodeHandover(h: LayerHandover): Uint8Array {
  const count = h.layers.end - h.layers.first;
  const kvFloats = count > 0 ? h.keys[0].length : 0;
  const kvDim = h.positions > 0 ? kvFloats / h.positions : 0;
  const out = new Uint8Array(16 + count * (32 + 8 * kvFloats));
  const view = new DataView(out.buffer);
  [h.layers.first, h.layers.end, h.positions, kvDim].forEach((v, i) => view.setUint32(4 * i, v, true));
  let at = 16;
  for (let i = 0; i < count; i++) {
    out.set(Buffer.from(h.kvChains[i], 'hex'), at);
    at += 32;
    // Byte copies (the engine's memory is little-endian): a NaN's bits are kept as they are.
    for (const rows of [h.keys[i], h.values[i]]) {
      out.set(new Uint8Array(rows.buffer, rows.byteOffset, rows.byteLength), at);
      at += rows.byteLength;
    }
  }
  return out;
}

/** The handover `encodeHandover` wrote, for a model of `kvDim`; malformed bytes are an EngineError. */
export function decodeHandover(bytes: Uint8Array, kvDim: number): LayerHandover {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 16) throw new EngineError('handover: truncated');
  const [first, end, positions, dim] = [0, 1, 2, 3].map((i) => view.getUint32(4 * i, true));
  const count = end - first;
  const kvFloats = positions * kvDim;
  if (count < 1 || (positions > 0 && dim !== kvDim) || bytes.length !== 16 + count * (32 + 8 * kvFloats)) {
    throw new EngineError(`handover: layers [${first}, ${end}) of ${positions} positions do not fit ${bytes.length} bytes for K/V rows of ${kvDim}`);
  }
  const h: LayerHandover = { layers: { first, end }, positions, keys: [], values: [], kvChains: [] };
  let at = 16;
  for (let i = 0; i < count; i++) {
    h.kvChains.push(Buffer.from(bytes.subarray(at, at + 32)).toString('hex'));
    at += 32;
    for (const list of [h.keys, h.values]) {
      const rows = new Float32Array(kvFloats);
      new Uint8Array(rows.buffer).set(bytes.subarray(at, at + 4 * kvFloats));
      at += 4 * kvFloats;
      list.push(rows);
    }
  }
  return h;
}
