// The forward pass as explicit steps. A step reads only its inputs and writes only its outputs, so
// a referee can run any one of them alone:
//   layerStep(layer, pos): residual x, that layer's K/V rows for positions < pos
//                          → new residual x, the K/V rows for pos
//   headStep:              residual x, sampling params, RNG state → token, RNG state
// Generation (generate.ts) is a loop over them, as in llama2.c's run.c.
import { architectureOf, rotate } from './architecture.js';
import { sessionBackend, type SessionBackend } from './backend.js';
import { EngineError } from './errors.js';
import { paddedSize, type Ptr } from './memory.js';
import { DTYPES, rowBytes } from './dtypes.js';
import { describePart, holdsEmbedding, holdsHead, holdsLayer, type LayerRange, type Matrix, type Model } from './model.js';
import { defaultKernelPath, instantiateKernels, type KernelPath, type Kernels } from './numerics/index.js';
import { sampleToken, type SamplingParams } from './sampler.js';
import { dequantizeBlocks } from './quantize.js';
import { createThreadPool, matvecRows, type Activations, type MatvecJob, type ThreadPool } from './threads.js';

export interface Session {
  readonly model: Model;
  /** What embed, layerStep and classify run on (backend.ts): where the weights live decides it. */
  readonly backend: SessionBackend;
  readonly kernels: Kernels;
  readonly maxPositions: number;
  // Activations (f32 buffers in the model's arena).
  readonly x: Ptr; // the residual stream
  readonly xb: Ptr;
  readonly xb2: Ptr;
  readonly hb: Ptr;
  readonly hb2: Ptr;
  readonly q: Ptr;
  readonly att: Ptr;
  readonly logits: Ptr;
  /** The sampler's sort keys, one f64 per vocabulary entry. */
  readonly sortKeys: Ptr;
  readonly ropeTable: Ptr;
  /** Q8_0 activations: int8 values and one f32 scale per block of 32 (for any input length). */
  readonly xq: Ptr;
  readonly xd: Ptr;
  /** Q8_K activations (k-quant weights): int8 values, one f32 scale per 256, one i32 sum per 32. */
  readonly xqK: Ptr;
  readonly xdK: Ptr;
  readonly xsK: Ptr;
  /** Threads for the matrix products and attention (workers start on the first large one). */
  readonly threads: number;
  readonly kernelPath: KernelPath;
  /** Per layer: maxPositions rows of kvDim floats (0 for layers this session does not run). */
  readonly keys: Ptr[];
  readonly values: Ptr[];
  ropePosition: number;
  /** The prompt batch's buffers (promptBatch), made on first use and freed with the session. */
  batch: BatchBuffers | null;
  /** The arena block holding every buffer above (one per session, freed by disposeSession). */
  readonly block: Ptr;
  disposed: boolean;
}

export interface SessionOptions {
  maxPositions?: number;
  kernels?: KernelPath;
  /** Layers that get a K/V cache; all by default. A referee replaying one step needs one. */
  layers?: number[];
  /** Threads for matrix products and attention (the result does not depend on it); default 1. */
  threads?: number;
}

// Sharing one pool among a model's sessions is safe: a pool runs one operation at a time, and each
// call returns only when every thread is done with it, so sessions interleaved on the calling
// thread (token by token) never overlap inside a pool; each passes its own buffers.
const pools = new WeakMap<Model, Map<string, ThreadPool>>();

/**
 * Below this many multiply-adds an operation runs on the calling thread: waking workers costs a
 * few microseconds, more than small products take (all of stories260K runs unthreaded).
 */
const PARALLEL_MIN_WORK = 1 << 16;

/** The session's worker pool for an operation of `work` multiply-adds, or null to run it here. */
function poolFor(s: Session, work: number): ThreadPool | null {
  return s.threads > 1 && work >= PARALLEL_MIN_WORK ? threadPool(s.model, s.kernelPath, s.threads) : null;
}

/** Thread pools live as long as their model and are shared by its sessions. */
function threadPool(model: Model, path: KernelPath, threads: number): ThreadPool {
  const byKey = pools.get(model) ?? new Map<string, ThreadPool>();
  pools.set(model, byKey);
  const key = `${path}:${threads}`;
  let pool = byKey.get(key);
  if (!pool) {
    pool = createThreadPool(model.arena.memory, path, threads);
    byKey.set(key, pool);
  }
  return pool;
}

/** How many worker pools the model has started (operations large enough to split start one). */
export function threadPoolCount(model: Model): number {
  return pools.get(model)?.size ?? 0;
}

/** Stops the model's worker threads (they do not keep the process alive, but a daemon may want them gone). */
export function closeThreads(model: Model): void {
  for (const pool of pools.get(model)?.values() ?? []) pool.close();
  pools.delete(model);
}

export function createSession(model: Model, options: SessionOptions = {}): Session {
  const c = model.config;
  const maxPositions = options.maxPositions ?? c.seqLen;
  if (!Number.isInteger(maxPositions) || maxPositions < 1 || maxPositions > c.seqLen) {
    throw new EngineError(`positions must be between 1 and the model's seq_len ${c.seqLen}, got ${maxPositions}`);
  }
  const threads = options.threads ?? 1;
  if (!Number.isInteger(threads) || threads < 1 || threads > 256) throw new EngineError(`threads must be an integer in 1..256, got ${threads}`);
  const kernels = options.kernels ?? defaultKernelPath();
  const backend = sessionBackend(model, kernels);
  const arena = model.arena;
  // Every buffer is carved from one block: offsets first, then the block, so that sessions are
  // freed in any order (memory.ts) and a session's buffers sit together.
  let used = 0;
  const bytes = (n: number): number => {
    const at = used;
    used += paddedSize(n);
    return at;
  };
  const floats = (n: number): number => bytes(4 * n);
  const widest = Math.max(c.dim, c.hiddenDim);
  // By default every layer the model holds (a partial model holds some: load/index.ts LoadOptions.layers).
  const cached = new Set(options.layers ?? Array.from({ length: c.nLayers }, (_, l) => l).filter((l) => holdsLayer(model, l)));
  const cache = (): number[] => Array.from({ length: c.nLayers }, (_, l) => (cached.has(l) ? floats(maxPositions * c.kvDim) : -1));
  const at = {
    x: floats(c.dim),
    xb: floats(c.dim),
    xb2: floats(c.dim),
    hb: floats(c.hiddenDim),
    hb2: floats(c.hiddenDim),
    q: floats(c.dim),
    att: floats(threads * maxPositions),
    logits: floats(c.vocabSize),
    sortKeys: bytes(8 * c.vocabSize),
    ropeTable: floats(c.headSize),
    xq: bytes(widest),
    xd: floats(Math.ceil(widest / DTYPES.q8_0.block)),
    xqK: bytes(widest),
    xdK: floats(Math.ceil(widest / 256)),
    xsK: floats(Math.ceil(widest / 32)),
  };
  const keys = cache();
  const values = cache();
  const instance = instantiateKernels(arena.memory, kernels);
  let block: Ptr;
  try {
    block = arena.allocBlock(used);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    // The KV cache is most of a session: say how many positions the WebAssembly memory still holds.
    const perPosition = 4 * (2 * cached.size * c.kvDim + threads);
    const free = 2 ** 32 - arena.usage().top;
    const gib = (n: number): string => `${(n / 2 ** 30).toFixed(2)} GiB`;
    throw new EngineError(
      `a session of ${maxPositions} positions needs ${gib(used)} (KV cache ${gib(4 * 2 * cached.size * c.kvDim * maxPositions)}) in the WebAssembly memory, which has about ${gib(free)} left: use maxPositions ≤ ${Math.max(0, Math.floor((free - (used - perPosition * maxPositions)) / perPosition))}`,
    );
  }
  const ptrs = Object.fromEntries(Object.entries(at).map(([name, offset]) => [name, block + offset])) as Record<keyof typeof at, Ptr>;
  const placed = (offsets: number[]): Ptr[] => offsets.map((o) => (o < 0 ? 0 : block + o));
  return {
    model,
    backend,
    kernels: instance,
    maxPositions,
    ...ptrs,
    threads,
    kernelPath: kernels,
    keys: placed(keys),
    values: placed(values),
    ropePosition: -1,
    batch: null,
    block,
    disposed: false,
  };
}

/**
 * Frees the session's buffers, and only its own: sessions are freed in any order. Disposing a
 * session twice is a no-op (so cleanup code may run twice); using a disposed session throws.
 */
export function disposeSession(s: Session): void {
  if (s.disposed) return;
  s.disposed = true;
  if (s.batch) s.model.arena.free(s.batch.block);
  s.model.arena.free(s.block);
}

function checkLive(s: Session): void {
  if (s.disposed) throw new EngineError('this session was disposed');
}

// A partial model (a pipeline stage's share) has no memory behind the tensors it did not load:
// running them would read address 0, so the steps that need them refuse.
const notHeld = (m: Model, what: string): EngineError => new EngineError(`${what} is not loaded in this model (it holds ${m.part ? describePart(m.part) : 'everything'})`);

function checkLayer(s: Session, layer: number): void {
  if (!holdsLayer(s.model, layer)) throw notHeld(s.model, `layer ${layer}`);
}

/** x ← the token's embedding row (quantised types are dequantised exactly, spec §4a/§4c). */
export function embed(s: Session, token: number): void {
  checkLive(s);
  const { vocabSize } = s.model.config;
  if (!Number.isInteger(token) || token < 0 || token >= vocabSize) throw new EngineError(`token ${token} is outside the vocabulary of ${vocabSize}`);
  if (!holdsEmbedding(s.model)) throw notHeld(s.model, 'the token embedding');
  s.backend.embed(s, token);
}

/** embed on the CPU backends, for an embedding table in the arena. */
export function cpuEmbed(s: Session, token: number): void {
  const { dim } = s.model.config;
  const table = s.model.weights.tokenEmbedding;
  if (table.dtype === 'q8_0') {
    const blocks = dim / DTYPES.q8_0.block;
    s.kernels.dequantizeRowQ8(s.x, table.ptr + token * rowBytes('q8_0', dim), table.scales + 4 * token * blocks, dim);
  } else if (table.dtype !== 'f32') {
    const bytes = rowBytes(table.dtype, dim);
    s.model.arena.f32(s.x, dim).set(dequantizeBlocks(table.dtype, s.model.arena.u8(table.ptr + token * bytes, bytes)));
  } else {
    s.model.arena.f32(s.x, dim).set(s.model.arena.f32(table.ptr + 4 * token * dim, dim));
  }
}

/**
 * out_j = W_j · x for each job, all sharing the input x of length n — for each of a.batch inputs
 * stored one after another (a prompt batch), each quantised exactly as it would be alone.
 */
function matvecs(s: Session, a: Activations, n: number, jobs: MatvecJob[]): void {
  const k = s.kernels;
  let q8 = false;
  let q8k = false;
  let rows = 0;
  for (const j of jobs) {
    const activation = DTYPES[j.w.dtype].activation;
    q8 ||= activation === 'q8_0';
    q8k ||= activation === 'q8_k';
    rows += j.rows;
  }
  for (let v = 0; v < a.batch; v++) {
    if (q8) k.quantizeQ8(a.xq + v * n, a.xd + (4 * v * n) / 32, a.x + 4 * v * n, n);
    if (q8k) k.quantizeQ8K(a.xqK + v * n, a.xdK + (4 * v * n) / 256, a.xsK + (4 * v * n) / 32, a.x + 4 * v * n, n);
  }
  const pool = poolFor(s, n * rows * a.batch);
  if (pool) return pool.matvecs(a, n, jobs);
  for (const { out, w, rows } of jobs) matvecRows(k, w, out, 0, rows, a, n, rows);
}

/** The session's activation buffers for a product of the single vector x. */
const single = (s: Session, x: Ptr): Activations => ({ x, xq: s.xq, xd: s.xd, xqK: s.xqK, xdK: s.xdK, xsK: s.xsK, batch: 1 });

const job = (out: Ptr, w: Matrix, rows: number): MatvecJob => ({ out, w, rows });

export function keyRow(s: Session, layer: number, pos: number): Ptr {
  return s.keys[layer] + 4 * pos * s.model.config.kvDim;
}

export function valueRow(s: Session, layer: number, pos: number): Ptr {
  return s.values[layer] + 4 * pos * s.model.config.kvDim;
}

/** out ← attention of query q at position pos over the layer's K/V rows 0..pos (heads split among threads). */
function attend(s: Session, layer: number, pos: number, out: Ptr, q: Ptr): void {
  const { nHeads, nKvHeads, headSize } = s.model.config;
  const attStride = 4 * s.maxPositions;
  const pool = poolFor(s, 2 * nHeads * (pos + 1) * headSize);
  if (pool) {
    pool.attention({ out, q, keys: s.keys[layer], values: s.values[layer], att: s.att, attStride, pos, nHeads, nKvHeads, headSize });
  } else {
    s.kernels.attention(out, q, s.keys[layer], s.values[layer], s.att, pos, nHeads, nKvHeads, headSize, 0, nHeads);
  }
}

/** One transformer block for one position: updates x and writes this position's K/V rows. */
export function layerStep(s: Session, layer: number, pos: number): void {
  checkLive(s);
  checkLayer(s, layer);
  s.backend.layerStep(s, layer, pos);
}

/** layerStep on the CPU backends (the kernels reach the weights wherever they live). */
export function cpuLayerStep(s: Session, layer: number, pos: number): void {
  const { dim, hiddenDim, kvDim, headSize, normEps } = s.model.config;
  const w = s.model.weights.layers[layer];
  const k = s.kernels;
  if (pos < 0 || pos >= s.maxPositions || !s.keys[layer]) throw new EngineError(`layer ${layer} position ${pos} is outside this session`);
  const biased = architectureOf(s.model.config).qkvBias;
  if (!s.model.ropeFrequencies || (biased && !(w.bq && w.bk && w.bv))) throw new EngineError(`layer ${layer}: the model lacks its RoPE factors or biases`);
  if (s.ropePosition !== pos) {
    k.ropeTable(s.ropeTable, s.model.ropeFrequencies, headSize, pos);
    s.ropePosition = pos;
  }
  const key = keyRow(s, layer, pos);
  const value = valueRow(s, layer, pos);

  // Attention.
  k.rmsnorm(s.xb, s.x, w.attnNorm, dim, normEps);
  matvecs(s, single(s, s.xb), dim, [job(s.q, w.wq, dim), job(key, w.wk, kvDim), job(value, w.wv, kvDim)]);
  if (biased) {
    k.add(s.q, w.bq!, dim);
    k.add(key, w.bk!, kvDim);
    k.add(value, w.bv!, kvDim);
  }
  rotate(s.model.config, k, s.model.arena, s.q, dim, s.ropeTable);
  rotate(s.model.config, k, s.model.arena, key, kvDim, s.ropeTable);
  k.canonicalizeNaN(key, kvDim);
  k.canonicalizeNaN(value, kvDim);
  attend(s, layer, pos, s.xb, s.q);
  matvecs(s, single(s, s.xb), dim, [job(s.xb2, w.wo, dim)]);
  k.add(s.x, s.xb2, dim);

  // Feed-forward (SwiGLU).
  k.rmsnorm(s.xb, s.x, w.ffnNorm, dim, normEps);
  matvecs(s, single(s, s.xb), dim, [job(s.hb, w.w1, hiddenDim), job(s.hb2, w.w3, hiddenDim)]);
  k.siluMul(s.hb, s.hb2, hiddenDim);
  matvecs(s, single(s, s.hb), hiddenDim, [job(s.xb, w.w2, dim)]);
  k.add(s.x, s.xb, dim);
  k.canonicalizeNaN(s.x, dim);
}

// ---------------------------------------------------------------------------------------------
// Prompt positions as a batch (spec "Batches"). The prompt's tokens are known in advance, so its
// positions go through each layer together: the products become matrix × matrix (each weight row
// read from memory once per batch, not once per position), while RoPE and attention stay per
// position. Every output element is the same dot product, in the same order, as layerStep computes
// for that position alone, so the bits — x, the K/V rows, the trace — are the same.

/** Most positions one batch takes; the buffers cost about 4·(4·dim + 2·hiddenDim) bytes a position. */
export const PROMPT_BATCH = 32;
/** Bound on the x of every (position, layer) an observed batch keeps for its observer. */
const SNAPSHOT_BYTES = 16 << 20;

/** Per-position copies of the session's activations, position v's at buffer + 4·v·width. */
export interface BatchBuffers {
  capacity: number;
  x: Ptr; xb: Ptr; xb2: Ptr; q: Ptr; hb: Ptr; hb2: Ptr;
  xq: Ptr; xd: Ptr; xqK: Ptr; xdK: Ptr; xsK: Ptr;
  /** One RoPE table per position, for the positions from ropeFirst on. */
  ropeTables: Ptr;
  ropeFirst: number;
  /** x after each layer for each position (layer-major, dim floats each): for observers; 0 if not kept. */
  snapshots: Ptr;
  block: Ptr;
}

/** How many prompt positions one batch takes; fewer when an observer needs every layer's x kept. */
export function promptBatchSize(model: Model, observed: boolean): number {
  const { nLayers, dim } = model.config;
  return observed ? Math.max(1, Math.min(PROMPT_BATCH, Math.floor(SNAPSHOT_BYTES / (4 * nLayers * dim)))) : PROMPT_BATCH;
}

/** The session's batch buffers for `count` positions, (re)made when too small. */
function batchBuffers(s: Session, count: number, observed: boolean): BatchBuffers {
  const old = s.batch;
  if (old && old.capacity >= count && (!observed || old.snapshots)) return old;
  const { dim, hiddenDim, headSize, nLayers } = s.model.config;
  const capacity = Math.max(count, old?.capacity ?? 0);
  const widest = Math.max(dim, hiddenDim);
  let used = 0;
  const bytes = (n: number): number => {
    const at = used;
    used += paddedSize(n);
    return at;
  };
  const floats = (n: number): number => bytes(4 * capacity * n);
  const at = {
    x: floats(dim), xb: floats(dim), xb2: floats(dim), q: floats(dim), hb: floats(hiddenDim), hb2: floats(hiddenDim),
    xq: bytes(capacity * widest), xd: floats(Math.ceil(widest / 32)),
    xqK: bytes(capacity * widest), xdK: floats(Math.ceil(widest / 256)), xsK: floats(Math.ceil(widest / 32)),
    ropeTables: floats(headSize),
    snapshots: observed || old?.snapshots ? floats(nLayers * dim) : -1,
  };
  let block: Ptr;
  try {
    block = s.model.arena.allocBlock(used);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new EngineError(`a prompt batch of ${capacity} positions needs ${(used / 2 ** 20).toFixed(1)} MiB more than the WebAssembly memory has left`);
  }
  if (old) s.model.arena.free(old.block);
  const ptrs = Object.fromEntries(Object.entries(at).map(([name, offset]) => [name, offset < 0 ? 0 : block + offset])) as Record<keyof typeof at, Ptr>;
  s.batch = { capacity, ...ptrs, ropeFirst: -1, block };
  return s.batch;
}

/** Called for each (position, layer) of a batch, in the canonical order, with that step's x. */
export type BatchObserver = (pos: number, layer: number, x: Float32Array) => void;

/**
 * Runs the prompt's tokens as positions first.. first+tokens.length−1 through every layer, one
 * layer at a time over the whole batch. Leaves x (and the K/V rows) as layerStep position by
 * position would: x is the last position's residual. `observe`, if given, then sees every step.
 */
export function promptBatch(s: Session, tokens: number[], first: number, observe?: BatchObserver): void {
  checkLive(s);
  const { dim, nLayers } = s.model.config;
  const count = tokens.length;
  if (count < 1 || first < 0 || first + count > s.maxPositions) throw new EngineError(`prompt positions ${first}..${first + count - 1} are outside this session`);
  for (let l = 0; l < nLayers; l++) checkLayer(s, l);
  const b = batchBuffers(s, count, observe !== undefined);
  const arena = s.model.arena;
  const row = (buffer: Ptr, width: number, v: number): Float32Array => arena.f32(buffer + 4 * v * width, width);
  for (let v = 0; v < count; v++) {
    embed(s, tokens[v]);
    row(b.x, dim, v).set(arena.f32(s.x, dim));
  }
  for (let l = 0; l < nLayers; l++) {
    s.backend.layerBatch(s, l, first, count);
    if (observe) arena.f32(b.snapshots + 4 * l * count * dim, count * dim).set(arena.f32(b.x, count * dim));
  }
  arena.f32(s.x, dim).set(row(b.x, dim, count - 1));
  if (!observe) return;
  for (let v = 0; v < count; v++) {
    for (let l = 0; l < nLayers; l++) observe(first + v, l, row(b.snapshots, dim, l * count + v));
  }
}

/**
 * A batch of positions first..first+count−1 through layers [layers.first, layers.end) only: a
 * pipeline stage's share of promptBatch (src/pipeline/stage.ts). The batch enters with `tokens`
 * embedded here, or with `x`, the count × dim residuals (position-major) the previous stage's
 * layers left. Returns the residuals after the range's last layer (a copy) and leaves x as the last
 * position's, as promptBatch does. `observe`, if given, sees each layer's count × dim residuals as
 * soon as that layer ran (layer by layer, not in the canonical order; the K/V rows are in the cache).
 */
export function layerRangeBatch(
  s: Session, first: number, input: { tokens: number[] } | { x: Float32Array }, layers: LayerRange,
  observe?: (layer: number, x: Float32Array) => void,
): Float32Array {
  checkLive(s);
  const { dim } = s.model.config;
  const count = 'tokens' in input ? input.tokens.length : input.x.length / dim;
  if (!Number.isInteger(count) || count < 1 || first < 0 || first + count > s.maxPositions) {
    throw new EngineError(`positions ${first}..${first + count - 1} are outside this session (or x is not whole positions of ${dim})`);
  }
  for (let l = layers.first; l < layers.end; l++) checkLayer(s, l);
  const b = batchBuffers(s, count, false);
  const arena = s.model.arena;
  if ('tokens' in input) {
    input.tokens.forEach((token, v) => {
      embed(s, token);
      arena.f32(b.x + 4 * v * dim, dim).set(arena.f32(s.x, dim));
    });
  } else arena.f32(b.x, count * dim).set(input.x);
  for (let l = layers.first; l < layers.end; l++) {
    s.backend.layerBatch(s, l, first, count);
    observe?.(l, s.backend.read(s, b.x, count * dim));
  }
  arena.f32(s.x, dim).set(arena.f32(b.x + 4 * (count - 1) * dim, dim));
  return s.backend.read(s, b.x, count * dim).slice();
}

/** One layer for positions first..first+count−1 of the batch buffers (layerBatch on the CPU backends). */
export function cpuLayerBatch(s: Session, layer: number, first: number, count: number): void {
  const { dim, hiddenDim, kvDim, headSize, normEps } = s.model.config;
  const w = s.model.weights.layers[layer];
  const k = s.kernels;
  const b = s.batch!;
  if (!s.keys[layer] || count > b.capacity) throw new EngineError(`layer ${layer} positions ${first}.. are outside this session`);
  const biased = architectureOf(s.model.config).qkvBias;
  if (!s.model.ropeFrequencies || (biased && !(w.bq && w.bk && w.bv))) throw new EngineError(`layer ${layer}: the model lacks its RoPE factors or biases`);
  if (b.ropeFirst !== first) {
    for (let v = 0; v < count; v++) k.ropeTable(b.ropeTables + 4 * v * headSize, s.model.ropeFrequencies, headSize, first + v);
    b.ropeFirst = first;
  }
  const at = (buffer: Ptr, width: number, v: number): Ptr => buffer + 4 * v * width;
  const acts = (x: Ptr): Activations => ({ x, xq: b.xq, xd: b.xd, xqK: b.xqK, xdK: b.xdK, xsK: b.xsK, batch: count });
  // The batch's K/V rows are consecutive rows of the cache.
  const keys = keyRow(s, layer, first);
  const values = valueRow(s, layer, first);

  // Attention: one product for the batch's Q/K/V, then each position on its own.
  for (let v = 0; v < count; v++) k.rmsnorm(at(b.xb, dim, v), at(b.x, dim, v), w.attnNorm, dim, normEps);
  matvecs(s, acts(b.xb), dim, [job(b.q, w.wq, dim), job(keys, w.wk, kvDim), job(values, w.wv, kvDim)]);
  for (let v = 0; v < count; v++) {
    const q = at(b.q, dim, v), key = at(keys, kvDim, v), value = at(values, kvDim, v), table = at(b.ropeTables, headSize, v);
    if (biased) {
      k.add(q, w.bq!, dim);
      k.add(key, w.bk!, kvDim);
      k.add(value, w.bv!, kvDim);
    }
    rotate(s.model.config, k, s.model.arena, q, dim, table);
    rotate(s.model.config, k, s.model.arena, key, kvDim, table);
  }
  k.canonicalizeNaN(keys, count * kvDim);
  k.canonicalizeNaN(values, count * kvDim);
  // Causal: position first+v sees rows 0..first+v, all written above or by earlier batches.
  for (let v = 0; v < count; v++) attend(s, layer, first + v, at(b.xb, dim, v), at(b.q, dim, v));
  matvecs(s, acts(b.xb), dim, [job(b.xb2, w.wo, dim)]);
  k.add(b.x, b.xb2, count * dim);

  // Feed-forward (SwiGLU).
  for (let v = 0; v < count; v++) k.rmsnorm(at(b.xb, dim, v), at(b.x, dim, v), w.ffnNorm, dim, normEps);
  matvecs(s, acts(b.xb), dim, [job(b.hb, w.w1, hiddenDim), job(b.hb2, w.w3, hiddenDim)]);
  k.siluMul(b.hb, b.hb2, count * hiddenDim);
  matvecs(s, acts(b.hb), hiddenDim, [job(b.xb, w.w2, dim)]);
  k.add(b.x, b.xb, count * dim);
  k.canonicalizeNaN(b.x, count * dim);
}

/** Final norm and classifier: fills the session's logits from x. */
export function classify(s: Session): Float32Array {
  checkLive(s);
  if (!holdsHead(s.model)) throw notHeld(s.model, 'the head (final norm and classifier)');
  s.backend.classify(s);
  return s.backend.read(s, s.logits, s.model.config.vocabSize);
}

/** classify on the CPU backends. */
export function cpuClassify(s: Session): void {
  const { dim, vocabSize, normEps } = s.model.config;
  s.kernels.rmsnorm(s.xb, s.x, s.model.weights.finalNorm, dim, normEps);
  matvecs(s, single(s, s.xb), dim, [job(s.logits, s.model.weights.classifier, vocabSize)]);
}

/** Final norm, classifier and sampling. */
export function headStep(s: Session, params: SamplingParams, rngState: bigint): { token: number; rngState: bigint } {
  classify(s);
  const buffers = { logits: s.logits, keys: s.sortKeys, vocab: s.model.config.vocabSize };
  return sampleToken(s.kernels, s.model.arena.memory, buffers, params, rngState);
}

// ---------------------------------------------------------------------------------------------
// Steps as pure functions of their inputs, for re-execution by a referee (and the tests).

export interface LayerStepInput {
  layer: number;
  pos: number;
  x: Float32Array; // dim
  keys: Float32Array; // pos × kvDim: the layer's K rows for positions 0..pos-1
  values: Float32Array;
}

export interface LayerStepOutput {
  x: Float32Array;
  key: Float32Array;
  value: Float32Array;
}

function withSession<T>(model: Model, options: SessionOptions, body: (s: Session) => T): T {
  const s = createSession(model, options);
  try {
    return body(s);
  } finally {
    disposeSession(s);
  }
}

export function runLayerStep(model: Model, input: LayerStepInput, kernels: KernelPath = defaultKernelPath()): LayerStepOutput {
  const { dim, kvDim, nLayers } = model.config;
  const { layer, pos } = input;
  if (!Number.isInteger(layer) || layer < 0 || layer >= nLayers) throw new EngineError(`layer ${layer} is outside 0..${nLayers - 1}`);
  if (input.x.length !== dim || input.keys.length !== pos * kvDim || input.values.length !== pos * kvDim) {
    throw new EngineError(`layer step inputs have the wrong sizes for position ${pos}`);
  }
  return withSession(model, { maxPositions: pos + 1, kernels, layers: [layer] }, (s) => {
    const arena = model.arena;
    arena.f32(s.x, dim).set(input.x);
    arena.f32(s.keys[layer], pos * kvDim).set(input.keys);
    arena.f32(s.values[layer], pos * kvDim).set(input.values);
    layerStep(s, layer, pos);
    return {
      x: s.backend.read(s, s.x, dim).slice(),
      key: s.backend.read(s, keyRow(s, layer, pos), kvDim).slice(),
      value: s.backend.read(s, valueRow(s, layer, pos), kvDim).slice(),
    };
  });
}

export interface HeadStepInput {
  x: Float32Array;
  params: SamplingParams;
  rngState: bigint;
}

export function runHeadStep(model: Model, input: HeadStepInput, kernels: KernelPath = defaultKernelPath()): { token: number; rngState: bigint } {
  if (input.x.length !== model.config.dim) throw new EngineError('head step input has the wrong size');
  return withSession(model, { maxPositions: 1, kernels, layers: [] }, (s) => {
    model.arena.f32(s.x, model.config.dim).set(input.x);
    return headStep(s, input.params, input.rngState);
  });
}
