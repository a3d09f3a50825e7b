// Placement of one model over several nodes for pipelined decoding (issue 16, after LinguaLinked):
// which nodes, in which order, holding which contiguous layer ranges, so that one request's
// per-token latency is least. Exact and deterministic: integer nanoseconds, no solver, no
// transcendental functions, ties broken by a fixed rule (docs/pipeline.md, "Placement").

import { VerityError } from '../errors.js';

/** What a node offers: its memory and its measured speed. */
export interface NodeProfile {
  /** Unique among the nodes of one call. */
  id: string;
  /** Bytes it can give to weights and KV cache (an integer ≥ 0). */
  memoryBytes: number;
  /** Measured ns to run one transformer layer for one position (at the context of interest). */
  nsPerLayer: number;
  /** Measured ns for the final norm + classifier + sampling of one position. */
  nsHead: number;
  /** Measured ns to look up one token's embedding; 0 when absent. */
  nsEmbed?: number;
}

/** What a model needs, per layer and at its two ends. All byte counts are integers ≥ 0. */
export interface ModelProfile {
  nLayers: number;
  /** Per layer: its weights plus its KV cache for the context served. */
  layerBytes: number[];
  /** The token embedding table, held by the first stage. */
  embedBytes: number;
  /** The final norm and classifier, held by the last stage. */
  headBytes: number;
  /**
   * Bytes counted in both embedBytes and headBytes (tied embeddings: the classifier is the
   * embedding table). A stage that is both first and last holds them once; in a multi-stage
   * placement the first and the last stage each hold a copy. 0 when absent.
   */
  sharedEmbedHeadBytes?: number;
  /** The residual vector passed between stages: dim × 4 bytes (f32). */
  residualBytes: number;
  /** Relative cost of each layer (1 = a node's nsPerLayer); all 1 when absent. */
  layerWeights?: number[];
}

/** Directed links between nodes, by id. Asked once per ordered pair of distinct nodes per call. */
export interface Links {
  /** One-way latency in ns (≥ 0). */
  latencyNs(from: string, to: string): number;
  /** Bandwidth in bytes per second (> 0; Infinity for a free link). */
  bytesPerSecond(from: string, to: string): number;
}

/** One stage: a node running layers [first, end). */
export interface PlacementStage {
  node: string;
  first: number;
  end: number;
}

/** What one stage costs per token and holds. */
export interface StageBreakdown {
  /** Its layers, plus the embedding when first and the head when last. */
  computeNs: number;
  /** Its send: the residual to the next stage, or the token id back to the first from the last; 0 for one stage. */
  sendNs: number;
  /** Bytes it must hold: its layers, plus the embedding when first and the head when last. */
  heldBytes: number;
}

export interface Placement {
  stages: PlacementStage[];
  /** Per-token latency of one request: every stage's compute plus every hop of the ring. */
  predictedNsPerToken: number;
  breakdown: { computeNs: number; transferNs: number; stages: StageBreakdown[] };
  /** Whether every stage's held bytes fit its node's memory (always true for optimalPlacement and rebalance). */
  fitsInMemory: boolean;
}

/** One stage boundary's overlap: layers each neighbour preloads from the other side. */
export interface BoundaryOverlap {
  /** The boundary: the left stage's end, the right stage's first layer. */
  layer: number;
  leftNode: string;
  rightNode: string;
  /** The left stage also holds layers [layer, layer + preloadedByLeft): the boundary may move right that far. */
  preloadedByLeft: number;
  /** The right stage also holds layers [layer − preloadedByRight, layer): the boundary may move left that far. */
  preloadedByRight: number;
}

export interface OverlapPlan {
  /** One per pair of consecutive stages, in stage order. */
  boundaries: BoundaryOverlap[];
}

/** Bad input, no placement that fits, or an instance past the exact solver's bounds. */
export class PlacementError extends VerityError {
  constructor(
    message: string,
    readonly kind: 'invalid' | 'infeasible' | 'too-large',
  ) {
    super(message, kind);
  }
}

/** The exact solver's bounds: its table has 2^(n−1)·n·(L+1) entries per first node. */
export const MAX_PLACEMENT_NODES = 12;
export const MAX_PLACEMENT_LAYERS = 256;

/** The sampled token id sent from the last stage back to the first. */
const TOKEN_ID_BYTES = 4;
/** Keys are ns × 16 + stages: 16 > MAX_PLACEMENT_NODES, so keys order by (ns, stages). */
const KEY_SCALE = 16;
/** Any placement's ns stays below this, so that keys (ns × 16 + stages) are exact doubles. */
const MAX_TOTAL_NS = 2 ** 48;
/** Past this the cost tables would not fit in memory even for one node; no model has as many. */
const MAX_LAYERS_ANY = 1 << 20;

function fail(message: string): never {
  throw new PlacementError(message, 'invalid');
}

/** Inputs checked and rounded once into integer tables, nodes in the order given. */
interface Instance {
  ids: string[];
  n: number;
  L: number;
  /** prefixNs[v][l]: ns for node v to run layers [0, l). */
  prefixNs: Float64Array[];
  embedNs: number[];
  headNs: number[];
  memory: number[];
  /** prefixBytes[l]: bytes of layers [0, l). */
  prefixBytes: Float64Array;
  embedBytes: number;
  headBytes: number;
  sharedBytes: number;
  /** hopNs[a·n + b]: the residual from a to b; ringNs: the token id. Both 0 on the diagonal. */
  hopNs: Float64Array;
  ringNs: Float64Array;
}

const isByteCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
const isDuration = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x >= 0;

function checkModel(model: ModelProfile): void {
  if (model === null || typeof model !== 'object') fail('placement: the model profile is not an object');
  const L = model.nLayers;
  if (!Number.isSafeInteger(L) || L < 1 || L > MAX_LAYERS_ANY) fail(`placement: nLayers must be an integer in [1, ${MAX_LAYERS_ANY}], got ${L}`);
  if (!Array.isArray(model.layerBytes) || model.layerBytes.length !== L) fail(`placement: layerBytes must have nLayers (${L}) entries`);
  for (let l = 0; l < L; l++) if (!isByteCount(model.layerBytes[l])) fail(`placement: layerBytes[${l}] must be an integer ≥ 0, got ${model.layerBytes[l]}`);
  for (const key of ['embedBytes', 'headBytes', 'residualBytes'] as const) {
    if (!isByteCount(model[key])) fail(`placement: ${key} must be an integer ≥ 0, got ${model[key]}`);
  }
  const shared = model.sharedEmbedHeadBytes ?? 0;
  if (!isByteCount(shared) || shared > model.embedBytes || shared > model.headBytes) {
    fail(`placement: sharedEmbedHeadBytes must be an integer in [0, min(embedBytes, headBytes)], got ${shared}`);
  }
  if (model.layerWeights !== undefined) {
    if (!Array.isArray(model.layerWeights) || model.layerWeights.length !== L) fail(`placement: layerWeights must have nLayers (${L}) entries`);
    for (let l = 0; l < L; l++) if (!isDuration(model.layerWeights[l])) fail(`placement: layerWeights[${l}] must be finite and ≥ 0, got ${model.layerWeights[l]}`);
  }
}

function checkNodes(nodes: readonly NodeProfile[]): void {
  if (!Array.isArray(nodes) || nodes.length === 0) fail('placement: no nodes');
  const seen = new Set<string>();
  for (const node of nodes) {
    if (node === null || typeof node !== 'object') fail('placement: a node profile is not an object');
    if (typeof node.id !== 'string' || node.id === '') fail('placement: a node id must be a non-empty string');
    if (seen.has(node.id)) fail(`placement: duplicate node id ${JSON.stringify(node.id)}`);
    seen.add(node.id);
    if (!isByteCount(node.memoryBytes)) fail(`placement: node ${node.id}: memoryBytes must be an integer ≥ 0, got ${node.memoryBytes}`);
    if (!isDuration(node.nsPerLayer)) fail(`placement: node ${node.id}: nsPerLayer must be finite and ≥ 0, got ${node.nsPerLayer}`);
    if (!isDuration(node.nsHead)) fail(`placement: node ${node.id}: nsHead must be finite and ≥ 0, got ${node.nsHead}`);
    if (node.nsEmbed !== undefined && !isDuration(node.nsEmbed)) fail(`placement: node ${node.id}: nsEmbed must be finite and ≥ 0, got ${node.nsEmbed}`);
  }
}

/** One hop's ns: the latency plus the bytes at the bandwidth, each rounded up to whole ns once. */
function transferNs(links: Links, from: string, to: string, bytes: number): number {
  const latency = links.latencyNs(from, to);
  const bandwidth = links.bytesPerSecond(from, to);
  if (!isDuration(latency)) fail(`placement: latencyNs(${from}, ${to}) must be finite and ≥ 0, got ${latency}`);
  if (typeof bandwidth !== 'number' || !(bandwidth > 0)) fail(`placement: bytesPerSecond(${from}, ${to}) must be > 0, got ${bandwidth}`);
  return Math.round(latency) + Math.ceil((bytes * 1e9) / bandwidth);
}

function buildInstance(model: ModelProfile, nodes: readonly NodeProfile[], links: Links): Instance {
  checkModel(model);
  checkNodes(nodes);
  if (links === null || typeof links !== 'object' || typeof links.latencyNs !== 'function' || typeof links.bytesPerSecond !== 'function') {
    fail('placement: links must have latencyNs(from, to) and bytesPerSecond(from, to)');
  }
  const L = model.nLayers;
  const n = nodes.length;
  const prefixBytes = new Float64Array(L + 1);
  for (let l = 0; l < L; l++) prefixBytes[l + 1] = prefixBytes[l] + model.layerBytes[l];
  if (!(prefixBytes[L] + model.embedBytes + model.headBytes <= Number.MAX_SAFE_INTEGER)) fail('placement: the model\'s bytes exceed 2^53');
  // Per-layer ns rounded once per (node, layer), so that every sum after is of integers.
  const prefixNs: Float64Array[] = [];
  const maxLayerNs = new Float64Array(L);
  for (const node of nodes) {
    const prefix = new Float64Array(L + 1);
    for (let l = 0; l < L; l++) {
      const ns = Math.round(node.nsPerLayer * (model.layerWeights ? model.layerWeights[l] : 1));
      prefix[l + 1] = prefix[l] + ns;
      if (ns > maxLayerNs[l]) maxLayerNs[l] = ns;
    }
    prefixNs.push(prefix);
  }
  const embedNs = nodes.map((node) => Math.round(node.nsEmbed ?? 0));
  const headNs = nodes.map((node) => Math.round(node.nsHead));
  const hopNs = new Float64Array(n * n);
  const ringNs = new Float64Array(n * n);
  let maxHop = 0;
  for (let a = 0; a < n; a++) {
    for (let b = 0; b < n; b++) {
      if (a === b) continue;
      hopNs[a * n + b] = transferNs(links, nodes[a].id, nodes[b].id, model.residualBytes);
      ringNs[a * n + b] = transferNs(links, nodes[a].id, nodes[b].id, TOKEN_ID_BYTES);
      maxHop = Math.max(maxHop, hopNs[a * n + b], ringNs[a * n + b]);
    }
  }
  // A bound on any placement's ns: every layer on its slowest node, both ends on theirs, n hops.
  let bound = Math.max(...embedNs) + Math.max(...headNs) + n * maxHop;
  for (let l = 0; l < L; l++) bound += maxLayerNs[l];
  if (!(bound < MAX_TOTAL_NS)) fail('placement: predicted times may exceed 2^48 ns; the cost model keeps integer ns below that');
  return {
    ids: nodes.map((node) => node.id),
    n,
    L,
    prefixNs,
    embedNs,
    headNs,
    memory: nodes.map((node) => node.memoryBytes),
    prefixBytes,
    embedBytes: model.embedBytes,
    headBytes: model.headBytes,
    sharedBytes: model.sharedEmbedHeadBytes ?? 0,
    hopNs,
    ringNs,
  };
}

/** Bytes a stage holding layers [first, end) must hold. */
function heldBytes(x: Instance, first: number, end: number): number {
  let bytes = x.prefixBytes[end] - x.prefixBytes[first];
  if (first === 0) bytes += x.embedBytes;
  if (end === x.L) bytes += x.headBytes;
  if (first === 0 && end === x.L) bytes -= x.sharedBytes;
  return bytes;
}

/** Ns of node v running layers [first, end), with the embedding when first and the head when last. */
function computeNs(x: Instance, v: number, first: number, end: number): number {
  let ns = x.prefixNs[v][end] - x.prefixNs[v][first];
  if (first === 0) ns += x.embedNs[v];
  if (end === x.L) ns += x.headNs[v];
  return ns;
}

/** Stages given as (node index, first, end), checked to be a chain of distinct nodes covering [0, L). */
function stageIndices(x: Instance, stages: readonly PlacementStage[]): { v: number; first: number; end: number }[] {
  if (!Array.isArray(stages) || stages.length === 0) fail('placement: a placement needs at least one stage');
  const index = new Map(x.ids.map((id, i) => [id, i]));
  const used = new Set<number>();
  const chain: { v: number; first: number; end: number }[] = [];
  let next = 0;
  for (let s = 0; s < stages.length; s++) {
    const stage = stages[s];
    const v = index.get(stage.node);
    if (v === undefined) fail(`placement: stage ${s}'s node ${JSON.stringify(stage.node)} is not among the nodes`);
    if (used.has(v)) fail(`placement: node ${stage.node} holds more than one stage`);
    used.add(v);
    if (stage.first !== next) fail(`placement: stage ${s} starts at layer ${stage.first}, expected ${next}`);
    if (!Number.isSafeInteger(stage.end) || stage.end <= stage.first || stage.end > x.L) fail(`placement: stage ${s} has bad end ${stage.end}`);
    chain.push({ v, first: stage.first, end: stage.end });
    next = stage.end;
  }
  if (next !== x.L) fail(`placement: the last stage ends at ${next}, not at nLayers (${x.L})`);
  return chain;
}

/** The cost model: each stage's compute, each hop's transfer, the ring back from last to first. */
function evaluate(x: Instance, stages: readonly PlacementStage[]): Placement {
  const chain = stageIndices(x, stages);
  const k = chain.length;
  let compute = 0;
  let transfer = 0;
  let fits = true;
  const perStage: StageBreakdown[] = chain.map(({ v, first, end }, s) => {
    const next = chain[(s + 1) % k].v;
    const stageCompute = computeNs(x, v, first, end);
    const sendNs = s + 1 < k ? x.hopNs[v * x.n + next] : x.ringNs[v * x.n + next];
    const held = heldBytes(x, first, end);
    if (held > x.memory[v]) fits = false;
    compute += stageCompute;
    transfer += sendNs;
    return { computeNs: stageCompute, sendNs, heldBytes: held };
  });
  return {
    stages: chain.map(({ v, first, end }) => ({ node: x.ids[v], first, end })),
    predictedNsPerToken: compute + transfer,
    breakdown: { computeNs: compute, transferNs: transfer, stages: perStage },
    fitsInMemory: fits,
  };
}

/** The ns per token of a placement under the cost model both optimisers use. */
export function predictNsPerToken(model: ModelProfile, placement: { stages: readonly PlacementStage[] }, nodes: readonly NodeProfile[], links: Links): number {
  return evaluate(buildInstance(model, nodes, links), placement.stages).predictedNsPerToken;
}

/**
 * The naive baseline: the first k nodes in the order given (k = min(nodes, layers) by default),
 * layers split as evenly as possible, the first stages taking the one extra layer; speed ignored.
 */
export function evenSplitPlacement(model: ModelProfile, nodes: readonly NodeProfile[], links: Links, k?: number): Placement {
  const x = buildInstance(model, nodes, links);
  const stageCount = k ?? Math.min(x.n, x.L);
  if (!Number.isSafeInteger(stageCount) || stageCount < 1 || stageCount > x.n || stageCount > x.L) {
    fail(`placement: k must be an integer in [1, min(nodes, layers)] = [1, ${Math.min(x.n, x.L)}], got ${stageCount}`);
  }
  const base = Math.floor(x.L / stageCount);
  const extra = x.L % stageCount;
  const stages: PlacementStage[] = [];
  let first = 0;
  for (let s = 0; s < stageCount; s++) {
    const end = first + base + (s < extra ? 1 : 0);
    stages.push({ node: x.ids[s], first, end });
    first = end;
  }
  return evaluate(x, stages);
}

/** Node indices ordered by id (UTF-16 code units), so that the optimum ignores the order nodes come in. */
function byId(nodes: readonly NodeProfile[]): NodeProfile[] {
  return [...nodes].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * The exact optimiser for one first node f. Keys are ns × 16 + stages. The table T holds, for
 * every set m of used nodes (f ∈ m), every node v ∈ m and every layer c in [1, L): the least key
 * of finishing the token with a stage on v starting at layer c, then nodes outside m — that
 * stage's key and every later one's, the hops after it and the ring back to f, not the hop into it.
 */
class FirstNodeSolver {
  readonly table: Float64Array;
  private readonly scratch: Float64Array;
  private readonly window: Int32Array;
  private readonly windowValues: Float64Array;
  /** lastAfter[v·(L+1) + c]: the largest c' < L with layers [c, c') on v fitting (c ≥ 1); c when none. */
  private readonly lastAfter: Int32Array;
  /** fitsToEnd[v·(L+1) + c]: whether layers [c, L) plus the head fit v (c ≥ 1). */
  private readonly fitsToEnd: Uint8Array;

  constructor(private readonly x: Instance) {
    const { n, L } = x;
    this.table = new Float64Array((1 << (n - 1)) * n * (L + 1));
    this.scratch = new Float64Array(L + 1);
    this.window = new Int32Array(L + 1);
    this.windowValues = new Float64Array(L + 1);
    this.lastAfter = new Int32Array(n * (L + 1));
    this.fitsToEnd = new Uint8Array(n * (L + 1));
    for (let v = 0; v < n; v++) {
      let end = 1;
      for (let c = 1; c < L; c++) {
        // Two pointers: the last fitting end never moves left as c moves right.
        if (end < c) end = c;
        while (end + 1 < L && x.prefixBytes[end + 1] - x.prefixBytes[c] <= x.memory[v]) end++;
        this.lastAfter[v * (L + 1) + c] = end;
        this.fitsToEnd[v * (L + 1) + c] = heldBytes(x, c, L) <= x.memory[v] ? 1 : 0;
      }
    }
  }

  private index(f: number, mask: number, v: number): number {
    const packed = ((mask >>> (f + 1)) << f) | (mask & ((1 << f) - 1));
    return (packed * this.x.n + v) * (this.x.L + 1);
  }

  /** The least key after a stage on u ending at c < L, nodes in mask used: into out[c]. */
  private completions(f: number, mask: number, u: number, out: Float64Array): void {
    const { n, L } = this.x;
    out.fill(Infinity);
    for (let w = 0; w < n; w++) {
      if (mask & (1 << w)) continue;
      const base = this.index(f, mask | (1 << w), w);
      const hop = KEY_SCALE * this.x.hopNs[u * n + w];
      for (let c = 1; c < L; c++) {
        const key = hop + this.table[base + c];
        if (key < out[c]) out[c] = key;
      }
    }
    out[L] = KEY_SCALE * this.x.ringNs[u * n + f];
  }

  /** Fills the table for first node f; answers the least key of a whole placement starting on f. */
  solve(f: number): number {
    const { n, L } = this.x;
    const x = this.x;
    const fBit = 1 << f;
    const after = this.scratch;
    // Supersets before subsets: every mask's entries read only those of larger masks.
    for (let mask = (1 << n) - 1; mask >= fBit; mask--) {
      if (!(mask & fBit)) continue;
      for (let v = 0; v < n; v++) {
        if (!(mask & (1 << v)) || (v === f && mask !== fBit)) continue;
        this.completions(f, mask, v, after);
        if (v === f) {
          // mask = {f}: the first stage, [0, end) on f with the embedding.
          let best = Infinity;
          for (let end = 1; end <= L; end++) {
            if (heldBytes(x, 0, end) > x.memory[f]) break;
            const key = KEY_SCALE * computeNs(x, f, 0, end) + 1 + after[end];
            if (key < best) best = key;
          }
          return best;
        }
        // T[mask][v][c] = min over ends c' of (16·P[c'] + after[c']) − 16·P[c] + 1: a sliding
        // window minimum over c' in (c, lastAfter(c)], both ends moving left as c does, plus c' = L.
        const prefix = x.prefixNs[v];
        const window = this.window;
        const values = this.windowValues;
        const base = this.index(f, mask, v);
        const limits = v * (L + 1);
        const toEnd = KEY_SCALE * (prefix[L] + x.headNs[v]) + after[L];
        let lo = 0;
        let hi = 0;
        for (let c = L - 1; c >= 1; c--) {
          const enter = c + 1;
          if (enter < L) {
            const value = KEY_SCALE * prefix[enter] + after[enter];
            while (hi > lo && values[hi - 1] >= value) hi--;
            window[hi] = enter;
            values[hi++] = value;
          }
          const last = this.lastAfter[limits + c];
          while (hi > lo && window[lo] > last) lo++;
          let best = hi > lo ? values[lo] : Infinity;
          if (this.fitsToEnd[limits + c] && toEnd < best) best = toEnd;
          this.table[base + c] = best - KEY_SCALE * prefix[c] + 1;
        }
      }
    }
    return Infinity; // not reached: mask = {f} is visited last and returns
  }

  /**
   * The placement of least key `target` starting on f (the table filled for f), choosing at each
   * stage the smallest node index, then the smallest end, that can still reach `target`.
   */
  reconstruct(f: number, target: number): PlacementStage[] {
    const x = this.x;
    const { n, L } = x;
    const after = this.scratch;
    const stages: PlacementStage[] = [];
    let mask = 1 << f;
    let u = f;
    let c = 0;
    let spent = 0;
    this.completions(f, mask, f, after);
    for (let end = 1; end <= L && c === 0; end++) {
      if (heldBytes(x, 0, end) > x.memory[f]) break;
      const key = KEY_SCALE * computeNs(x, f, 0, end) + 1;
      if (key + after[end] === target) {
        stages.push({ node: x.ids[f], first: 0, end });
        spent = key;
        c = end;
      }
    }
    for (let step = 1; step < n && c > 0 && c < L; step++) {
      let chosen = -1;
      for (let v = 0; v < n && chosen < 0; v++) {
        if (mask & (1 << v)) continue;
        this.completions(f, mask | (1 << v), v, after);
        for (let end = c + 1; end <= L; end++) {
          if (heldBytes(x, c, end) > x.memory[v]) break; // held bytes grow with end
          const key = spent + KEY_SCALE * (x.hopNs[u * n + v] + computeNs(x, v, c, end)) + 1;
          if (key + after[end] === target) {
            stages.push({ node: x.ids[v], first: c, end });
            spent = key;
            c = end;
            chosen = v;
            break;
          }
        }
      }
      if (chosen < 0) break;
      mask |= 1 << chosen;
      u = chosen;
    }
    if (c !== L) throw new Error('placement: internal error: the optimum could not be retraced');
    return stages;
  }
}

/**
 * The placement of least predicted ns per token: which nodes, in which order, which contiguous
 * layers each, every stage within its node's memory. Exact (a DP over used-node sets); ties go to
 * fewer stages, then to the stage list smallest read as (node id, end layer) from the first stage.
 * Throws PlacementError: 'infeasible' when nothing fits, 'too-large' past 12 nodes or 256 layers.
 */
export function optimalPlacement(model: ModelProfile, nodes: readonly NodeProfile[], links: Links): Placement {
  checkNodes(nodes);
  if (nodes.length > MAX_PLACEMENT_NODES) {
    throw new PlacementError(`placement: ${nodes.length} nodes; the exact optimiser takes at most ${MAX_PLACEMENT_NODES}`, 'too-large');
  }
  checkModel(model);
  if (model.nLayers > MAX_PLACEMENT_LAYERS) {
    throw new PlacementError(`placement: ${model.nLayers} layers; the exact optimiser takes at most ${MAX_PLACEMENT_LAYERS}`, 'too-large');
  }
  const x = buildInstance(model, byId(nodes), links);
  const solver = new FirstNodeSolver(x);
  let best = Infinity;
  let bestFirst = -1;
  let solvedFor = -1;
  for (let f = 0; f < x.n; f++) {
    const key = solver.solve(f);
    solvedFor = f;
    if (key < best) {
      best = key;
      bestFirst = f;
    }
  }
  if (bestFirst < 0) {
    const total = model.layerBytes.reduce((a, b) => a + b, 0) + model.embedBytes + model.headBytes;
    throw new PlacementError(`placement: no placement fits: the model needs ${total} bytes and its stages cannot be spread over the nodes' memory`, 'infeasible');
  }
  if (solvedFor !== bestFirst) solver.solve(bestFirst);
  const placement = evaluate(x, solver.reconstruct(bestFirst, best));
  if (KEY_SCALE * placement.predictedNsPerToken + placement.stages.length !== best || !placement.fitsInMemory) {
    throw new Error('placement: internal error: the retraced placement disagrees with the optimum');
  }
  return placement;
}

/**
 * For each stage boundary, how many layers each neighbour preloads from the other side, within
 * its spare memory (memory − held bytes). A stage with two boundaries spends its spare on them
 * alternately, one layer at a time starting on its left, until neither side's next layer fits;
 * neither side ever preloads all of its neighbour's layers (every stage keeps at least one).
 * A preloaded layer counts its full layerBytes (weights and KV cache room).
 */
export function overlapPlan(model: ModelProfile, placement: { stages: readonly PlacementStage[] }, nodes: readonly NodeProfile[]): OverlapPlan {
  const x = buildInstance(model, nodes, NO_LINKS);
  const chain = stageIndices(x, placement.stages);
  const k = chain.length;
  const intoLeft = new Array<number>(k).fill(0); // stage s preloads layers [first − intoLeft, first)
  const intoRight = new Array<number>(k).fill(0); // stage s preloads layers [end, end + intoRight)
  for (let s = 0; s < k; s++) {
    const { v, first, end } = chain[s];
    let spare = x.memory[v] - heldBytes(x, first, end);
    if (spare < 0) throw new PlacementError(`placement: stage ${s} (node ${x.ids[v]}) does not fit its memory`, 'infeasible');
    const maxLeft = s > 0 ? chain[s - 1].end - chain[s - 1].first - 1 : 0;
    const maxRight = s + 1 < k ? chain[s + 1].end - chain[s + 1].first - 1 : 0;
    let leftOpen = maxLeft > 0;
    let rightOpen = maxRight > 0;
    for (let step = 0; step < 2 * x.L && (leftOpen || rightOpen); step++) {
      if (leftOpen) {
        const bytes = model.layerBytes[first - intoLeft[s] - 1];
        if (bytes <= spare) {
          spare -= bytes;
          intoLeft[s]++;
        } else leftOpen = false;
        if (intoLeft[s] === maxLeft) leftOpen = false;
      }
      if (rightOpen) {
        const bytes = model.layerBytes[end + intoRight[s]];
        if (bytes <= spare) {
          spare -= bytes;
          intoRight[s]++;
        } else rightOpen = false;
        if (intoRight[s] === maxRight) rightOpen = false;
      }
    }
  }
  const boundaries: BoundaryOverlap[] = [];
  for (let s = 0; s + 1 < k; s++) {
    boundaries.push({
      layer: chain[s].end,
      leftNode: x.ids[chain[s].v],
      rightNode: x.ids[chain[s + 1].v],
      preloadedByLeft: intoRight[s],
      preloadedByRight: intoLeft[s + 1],
    });
  }
  return { boundaries };
}

/** Links for calls that price no hop (overlapPlan): every hop free. */
const NO_LINKS: Links = { latencyNs: () => 0, bytesPerSecond: () => Infinity };

/** (ns, layers moved), compared in that order; both sums of integers, so exact. */
type Cost = [number, number];
const less = (a: Cost, b: Cost): boolean => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);

/**
 * The best placement reachable from `placement` by moving each boundary only within its preloaded
 * overlap (same nodes, same order, every stage keeping a layer and fitting its memory), priced with
 * the nodes' current profiles. Exact; ties go to fewer layers moved, then to earlier boundaries.
 */
export function rebalance(model: ModelProfile, placement: { stages: readonly PlacementStage[] }, nodes: readonly NodeProfile[], links: Links, overlap: OverlapPlan): Placement {
  const x = buildInstance(model, nodes, links);
  const chain = stageIndices(x, placement.stages);
  const k = chain.length;
  if (!overlap || !Array.isArray(overlap.boundaries) || overlap.boundaries.length !== k - 1) fail(`placement: the overlap plan must have ${k - 1} boundaries`);
  const lowest: number[] = [0];
  const highest: number[] = [0];
  for (let j = 1; j < k; j++) {
    const b = overlap.boundaries[j - 1];
    const left = chain[j - 1];
    const right = chain[j];
    if (b.layer !== left.end || b.leftNode !== x.ids[left.v] || b.rightNode !== x.ids[right.v]) {
      fail(`placement: overlap boundary ${j - 1} does not match the placement (layer ${b.layer}, ${b.leftNode} → ${b.rightNode})`);
    }
    if (!Number.isSafeInteger(b.preloadedByLeft) || b.preloadedByLeft < 0 || !Number.isSafeInteger(b.preloadedByRight) || b.preloadedByRight < 0) {
      fail(`placement: overlap boundary ${j - 1} has bad preload counts`);
    }
    lowest.push(Math.max(1, b.layer - b.preloadedByRight));
    highest.push(Math.min(x.L - 1, b.layer + b.preloadedByLeft));
  }
  lowest.push(x.L);
  highest.push(x.L);
  // Boundary j (0..k) sits at a layer in [lowest[j], highest[j]]; stage s spans [b_s, b_{s+1}).
  // toEnd[j][p]: least cost of stages j.. given boundary j at p (a backward DP, O(k·L²)).
  const old = chain.map((stage) => stage.first).concat(x.L);
  const stageCost = (s: number, from: number, to: number): Cost | null => {
    const v = chain[s].v;
    if (to <= from || heldBytes(x, from, to) > x.memory[v]) return null;
    return [computeNs(x, v, from, to), Math.abs(to - old[s + 1])];
  };
  const toEnd: (Cost | null)[][] = [];
  toEnd[k] = [];
  toEnd[k][x.L] = [0, 0];
  for (let j = k - 1; j >= 0; j--) {
    toEnd[j] = [];
    for (let p = lowest[j]; p <= highest[j]; p++) {
      let best: Cost | null = null;
      for (let q = Math.max(p + 1, lowest[j + 1]); q <= highest[j + 1]; q++) {
        const tail = toEnd[j + 1][q];
        const head = stageCost(j, p, q);
        if (!tail || !head) continue;
        const cost: Cost = [head[0] + tail[0], head[1] + tail[1]];
        if (!best || less(cost, best)) best = cost;
      }
      toEnd[j][p] = best;
    }
  }
  const optimum = toEnd[0][0];
  if (!optimum) throw new PlacementError('placement: no rebalanced placement fits the nodes\' memory', 'infeasible');
  // Forward: the earliest boundary at each step that still reaches the optimum.
  const stages: PlacementStage[] = [];
  let spent: Cost = [0, 0];
  let p = 0;
  for (let j = 0; j < k; j++) {
    for (let q = Math.max(p + 1, lowest[j + 1]); q <= highest[j + 1]; q++) {
      const tail = toEnd[j + 1][q];
      const head = stageCost(j, p, q);
      if (!tail || !head) continue;
      if (spent[0] + head[0] + tail[0] === optimum[0] && spent[1] + head[1] + tail[1] === optimum[1]) {
        stages.push({ node: x.ids[chain[j].v], first: p, end: q });
        spent = [spent[0] + head[0], spent[1] + head[1]];
        p = q;
        break;
      }
    }
  }
  return evaluate(x, stages);
}
