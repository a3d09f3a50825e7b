// Worker threads for the matrix-vector products and attention. Threads share the model's memory;
// each output row (or attention head) is computed entirely by one thread with the canonical
// kernel, so the bits do not depend on the thread count — only who computes which row does.
//
// Protocol (an Int32Array over a SharedArrayBuffer): the main thread writes an operation into the
// control block, bumps GENERATION and notifies; every thread, the main one included, claims chunks
// of rows (or heads) from a shared counter until none are left — a faster core takes more; workers
// count themselves into DONE; the main thread waits until all have.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { EngineError } from './errors.js';
import type { Ptr } from './memory.js';
import { DTYPES, preparedRowBytes, rowBytes, type DType } from './dtypes.js';
import type { Matrix } from './model.js';
import { instantiateKernels, type KernelPath, type Kernels } from './numerics/index.js';

export const GENERATION = 0;
export const DONE = 1;
export const OP = 2;
const THREADS = 3;
export const FAILED = 4;
const ARGS = 5;
const CLAIMED = 16; // one counter per job: the next unclaimed row (or head)
const JOBS = 20;
const JOB_FIELDS = 6;
const MAX_JOBS = 3;
const CONTROL_INTS = JOBS + JOB_FIELDS * MAX_JOBS;

export const OP_EXIT = -1;
const OP_MATVECS = 1;
const OP_ATTENTION = 2;

/**
 * A product's input: f32, and its quantised copies (each made once, on one thread, when a job needs
 * it). `batch` vectors stored one after another (a prompt batch; 1 for generation): f32 n floats
 * apart, quantised values n bytes apart, their scales and sums n/block apart.
 */
export interface Activations {
  x: Ptr;
  /** Q8_0: int8 values and one f32 scale per 32. */
  xq: Ptr;
  xd: Ptr;
  /** Q8_K: int8 values, one f32 scale per 256, one i32 sum per 32. */
  xqK: Ptr;
  xdK: Ptr;
  xsK: Ptr;
  batch: number;
}

/** Weight types by a small code, for the control block (fixed order: the table's). */
const DTYPE_CODES = Object.keys(DTYPES) as DType[];

/**
 * Rows first..end−1 of out = W·x with the kernel for W's type, for each of the a.batch vectors
 * (output vector v at out + 4·v·outStride: a job's outputs are `rows` floats apart). Row offsets
 * come from the trait table: a row is whole blocks, so any split of the rows computes the same bits.
 */
export function matvecRows(k: Kernels, w: Matrix, out: Ptr, first: number, end: number, a: Activations, n: number, outStride: number): void {
  const o = out + 4 * first;
  const rows = end - first;
  const wp = w.ptr + first * rowBytes(w.dtype, n);
  const wd = w.scales + first * preparedRowBytes(w.dtype, n);
  const t = DTYPES[w.dtype];
  const m = w.memory; // weights in a mapped file (native kernels only), or undefined: the arena
  if (a.batch === 1) {
    if (t.activation === 'f32') k.matvec(o, wp, a.x, n, rows, m);
    else if (t.dtype === 'q8_0') k.matvecQ8(o, wp, wd, a.xq, a.xd, n, rows, m);
    else if (t.activation === 'q8_0') k.matvecQuant(t.ggmlType, o, wp, wd, a.xq, a.xd, 0, n, rows, m);
    else k.matvecQuant(t.ggmlType, o, wp, wd, a.xqK, a.xdK, a.xsK, n, rows, m);
    return;
  }
  const b = a.batch;
  if (t.activation === 'f32') k.matmul(o, wp, a.x, n, rows, b, outStride, m);
  else if (t.dtype === 'q8_0') k.matmulQ8(o, wp, wd, a.xq, a.xd, n, rows, b, outStride, m);
  else if (t.activation === 'q8_0') k.matmulQuant(t.ggmlType, o, wp, wd, a.xq, a.xd, 0, n, rows, b, outStride, m);
  else k.matmulQuant(t.ggmlType, o, wp, wd, a.xqK, a.xdK, a.xsK, n, rows, b, outStride, m);
}

export interface MatvecJob {
  out: Ptr;
  w: Matrix;
  rows: number;
}

export interface AttentionArgs {
  out: Ptr;
  q: Ptr;
  keys: Ptr;
  values: Ptr;
  /** Scratch of attStride bytes per thread. */
  att: Ptr;
  attStride: number;
  pos: number;
  nHeads: number;
  nKvHeads: number;
  headSize: number;
}

/** Claims chunks of [0, count) from counter `at` and runs `body` on each. */
function claimAll(c: Int32Array, at: number, count: number, chunk: number, body: (first: number, end: number) => void): void {
  for (let first = Atomics.add(c, at, chunk); first < count; first = Atomics.add(c, at, chunk)) {
    body(first, Math.min(count, first + chunk));
  }
}

/** Two claims per thread: a faster core can take a second one; each claim is one kernel call. */
const chunkOf = (count: number, threads: number): number => Math.max(1, Math.ceil(count / (2 * threads)));

/** Computes what thread `thread` claims of the operation in the control block. */
export function runShare(k: Kernels, c: Int32Array, thread: number): void {
  const threads = c[THREADS];
  if (c[OP] === OP_MATVECS) {
    const [x, xq, xd, n, jobs, xqK, xdK, xsK, batch] = c.subarray(ARGS, ARGS + 9);
    const a: Activations = { x, xq, xd, xqK, xdK, xsK, batch };
    for (let j = 0; j < jobs; j++) {
      const at = JOBS + JOB_FIELDS * j;
      const out = c[at];
      const w: Matrix = { dtype: DTYPE_CODES[c[at + 1]], ptr: c[at + 2], scales: c[at + 3], ...(c[at + 5] >= 0 ? { memory: c[at + 5] } : {}) };
      const rows = c[at + 4];
      claimAll(c, CLAIMED + j, rows, chunkOf(rows, threads), (first, end) => matvecRows(k, w, out, first, end, a, n, rows));
    }
  } else if (c[OP] === OP_ATTENTION) {
    const [out, q, keys, values, att, attStride, pos, nHeads, nKvHeads, headSize] = c.subarray(ARGS, ARGS + 10);
    claimAll(c, CLAIMED, nHeads, 1, (first, end) =>
      k.attention(out, q, keys, values, att + thread * attStride, pos, nHeads, nKvHeads, headSize, first, end),
    );
  }
}

export interface ThreadPool {
  readonly threads: number;
  readonly kernels: Kernels;
  matvecs(a: Activations, n: number, jobs: MatvecJob[]): void;
  attention(args: AttentionArgs): void;
  close(): void;
}

/** Spin this many polls before sleeping on a futex: waking a sleeping thread costs tens of µs. */
const SPINS = 20000;

export function createThreadPool(memory: WebAssembly.Memory, path: KernelPath, threads: number): ThreadPool {
  const kernels = instantiateKernels(memory, path);
  const c = new Int32Array(new SharedArrayBuffer(4 * CONTROL_INTS));
  c[THREADS] = threads;
  const spins = threads <= availableParallelism() ? SPINS : 0;
  const workers = Array.from({ length: threads - 1 }, (_, i) => {
    const worker = new Worker(new URL('./worker.js', import.meta.url), {
      workerData: { path, memory, control: c.buffer, thread: i + 1, spins },
    });
    worker.unref();
    return worker;
  });

  function run(): void {
    for (let j = 0; j < MAX_JOBS; j++) Atomics.store(c, CLAIMED + j, 0);
    Atomics.store(c, DONE, 0);
    Atomics.add(c, GENERATION, 1);
    Atomics.notify(c, GENERATION);
    runShare(kernels, c, 0);
    const want = threads - 1;
    for (let i = 0; i < spins && Atomics.load(c, DONE) < want; i++);
    for (let done = Atomics.load(c, DONE); done < want; done = Atomics.load(c, DONE)) Atomics.wait(c, DONE, done);
    if (Atomics.load(c, FAILED)) throw new EngineError('a kernel thread failed');
  }

  return {
    threads,
    kernels,
    matvecs(a, n, jobs) {
      c[OP] = OP_MATVECS;
      c.set([a.x, a.xq, a.xd, n, jobs.length, a.xqK, a.xdK, a.xsK, a.batch], ARGS);
      jobs.forEach((job, j) => c.set([job.out, DTYPE_CODES.indexOf(job.w.dtype), job.w.ptr, job.w.scales, job.rows, job.w.memory ?? -1], JOBS + JOB_FIELDS * j));
      run();
    },
    attention(a) {
      c[OP] = OP_ATTENTION;
      c.set([a.out, a.q, a.keys, a.values, a.att, a.attStride, a.pos, a.nHeads, a.nKvHeads, a.headSize], ARGS);
      run();
    },
    close() {
      c[OP] = OP_EXIT;
      Atomics.add(c, GENERATION, 1);
      Atomics.notify(c, GENERATION);
      for (const w of workers) void w.terminate();
    },
  };
}
