// A kernel thread: waits for operations in the shared control block and computes its share.
import { workerData } from 'node:worker_threads';
import { instantiateKernels, type KernelPath } from './numerics/index.js';
import { DONE, FAILED, GENERATION, OP, OP_EXIT, runShare } from './threads.js';

interface WorkerData {
  path: KernelPath;
  memory: WebAssembly.Memory;
  control: SharedArrayBuffer;
  thread: number;
  spins: number;
}

const { path, memory, control, thread, spins } = workerData as WorkerData;
const kernels = instantiateKernels(memory, path);
const c = new Int32Array(control);
// Generations count from 0 at the pool's creation; work posted before this thread started is
// still seen, because it compares against 0, not against the current value.
let seen = 0;
for (;;) {
  for (let i = 0; i < spins && Atomics.load(c, GENERATION) === seen; i++);
  while (Atomics.load(c, GENERATION) === seen) Atomics.wait(c, GENERATION, seen);
  seen = Atomics.load(c, GENERATION);
  if (c[OP] === OP_EXIT) break;
  try {
    runShare(kernels, c, thread);
  } catch {
    Atomics.store(c, FAILED, 1);
  }
  Atomics.add(c, DONE, 1);
  Atomics.notify(c, DONE);
}
