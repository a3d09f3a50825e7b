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
import type { Matrix, Model } from './model.js';
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
  const cached = new Set(options.layers ?? Array.from({ length: c.nLayers }, (_, l) => l));
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
  s.model.arena.free(s.block);
}

function checkLive(s: Session): void {
  if (s.disposed) throw new EngineError('this session was disposed');
}

/** x ← the token's embedding row (quantised types are dequantised exactly, spec §4a/§4c). */
export function embed(s: Session, token: number): void {
  checkLive(s);
  const { vocabSize } = s.model.config;
  if (!Number.isInteger(token) || token < 0 || token >= vocabSize) throw new EngineError(`token ${token} is outside the vocabulary of ${vocabSize}`);
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

/** out_j = W_j · x for each job, all sharing the input x of length n. */
function matvecs(s: Session, x: Ptr, n: number, jobs: MatvecJob[]): void {
  const k = s.kernels;
  const a: Activations = { x, xq: s.xq, xd: s.xd, xqK: s.xqK, xdK: s.xdK, xsK: s.xsK };
  if (jobs.some((j) => DTYPES[j.w.dtype].activation === 'q8_0')) k.quantizeQ8(s.xq, s.xd, x, n);
  if (jobs.some((j) => DTYPES[j.w.dtype].activation === 'q8_k')) k.quantizeQ8K(s.xqK, s.xdK, s.xsK, x, n);
  const pool = poolFor(s, n * jobs.reduce((rows, j) => rows + j.rows, 0));
  if (pool) return pool.matvecs(a, n, jobs);
  for (const { out, w, rows } of jobs) matvecRows(k, w, out, 0, rows, a, n);
}

const job = (out: Ptr, w: Matrix, rows: number): MatvecJob => ({ out, w, rows });

export function keyRow(s: Session, layer: number, pos: number): Ptr {
  return s.keys[layer] + 4 * pos * s.model.config.kvDim;
}

export function valueRow(s: Session, layer: number, pos: number): Ptr {
  return s.values[layer] + 4 * pos * s.model.config.kvDim;
}

/** One transformer block for one position: updates x and writes this position's K/V rows. */
export function layerStep(s: Session, layer: number, pos: number): void {
  checkLive(s);
  s.backend.layerStep(s, layer, pos);
}

/** layerStep on the CPU backends (the kernels reach the weights wherever they live). */
export function cpuLayerStep(s: Session, layer: number, pos: number): void {
  const { dim, hiddenDim, kvDim, nHeads, nKvHeads, headSize, normEps } = s.model.config;
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
  matvecs(s, s.xb, dim, [job(s.q, w.wq, dim), job(key, w.wk, kvDim), job(value, w.wv, kvDim)]);
  if (biased) {
    k.add(s.q, w.bq!, dim);
    k.add(key, w.bk!, kvDim);
    k.add(value, w.bv!, kvDim);
  }
  rotate(s.model.config, k, s.model.arena, s.q, dim, s.ropeTable);
  rotate(s.model.config, k, s.model.arena, key, kvDim, s.ropeTable);
  k.canonicalizeNaN(key, kvDim);
  k.canonicalizeNaN(value, kvDim);
  const attStride = 4 * s.maxPositions;
  const pool = poolFor(s, 2 * nHeads * (pos + 1) * headSize);
  if (pool) {
    pool.attention({ out: s.xb, q: s.q, keys: s.keys[layer], values: s.values[layer], att: s.att, attStride, pos, nHeads, nKvHeads, headSize });
  } else {
    k.attention(s.xb, s.q, s.keys[layer], s.values[layer], s.att, pos, nHeads, nKvHeads, headSize, 0, nHeads);
  }
  matvecs(s, s.xb, dim, [job(s.xb2, w.wo, dim)]);
  k.add(s.x, s.xb2, dim);

  // Feed-forward (SwiGLU).
  k.rmsnorm(s.xb, s.x, w.ffnNorm, dim, normEps);
  matvecs(s, s.xb, dim, [job(s.hb, w.w1, hiddenDim), job(s.hb2, w.w3, hiddenDim)]);
  k.siluMul(s.hb, s.hb2, hiddenDim);
  matvecs(s, s.hb, hiddenDim, [job(s.xb, w.w2, dim)]);
  k.add(s.x, s.xb, dim);
  k.canonicalizeNaN(s.x, dim);
}

/** Final norm and classifier: fills the session's logits from x. */
export function classify(s: Session): Float32Array {
  checkLive(s);
  s.backend.classify(s);
  return s.backend.read(s, s.logits, s.model.config.vocabSize);
}

/** classify on the CPU backends. */
export function cpuClassify(s: Session): void {
  const { dim, vocabSize, normEps } = s.model.config;
  s.kernels.rmsnorm(s.xb, s.x, s.model.weights.finalNorm, dim, normEps);
  matvecs(s, s.xb, dim, [job(s.logits, s.model.weights.classifier, vocabSize)]);
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
