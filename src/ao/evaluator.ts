// The CU's evaluator threads. Each process's VM (runtime.ts ProcessVM: its module and its state,
// kept in place between messages) lives in one worker thread, never on the CU's event loop, so a
// process that burns its whole compute limit delays only the evaluations queued behind it on its
// thread — the SU, gateway, MU and the CU's HTTP routes (reads, waits) keep answering — and
// processes on different threads are evaluated in parallel. A thread runs its jobs one at a time in
// arrival order; since the CU evaluates each process one message at a time, a process has at most
// one job queued, so the processes of a thread take turns whatever their message rates. A new
// process goes to the thread holding the fewest VMs.
// Host functions run here, in the CU's thread, where the store is; the thread asks for them.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { HostError, HostUnavailable, hostCallOf, type Extensions, type Outcome, type ProcessMessage, type ProcessSpec } from './runtime.js';

/** A job for the VM of process `key`. */
export type VmJob =
  | { type: 'open'; spec: ProcessSpec; state: string }
  | { type: 'apply'; message: ProcessMessage }
  | { type: 'dry-run'; message: ProcessMessage }
  | { type: 'state' }
  | { type: 'drop' };

/** What the CU's thread sends an evaluator thread. */
export type ToEvaluator =
  | { type: 'job'; job: number; key: string; work: VmJob }
  | { type: 'host-answer'; call: number; value: string; ticks: number }
  | { type: 'host-answer'; call: number; error: string; unavailable: boolean; ticks: number };

/** What an evaluator thread sends back. */
export type FromEvaluator =
  | { type: 'host'; call: number; job: number; name: string; argument: string; budget?: number }
  | { type: 'done'; job: number; value: Outcome | string | null }
  | { type: 'failed'; job: number; error: string; unavailable: boolean; lost: boolean };

/** The VM of a process is gone (its thread stopped, or it was never opened): load the process again. */
export class VmLost extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VmLost';
  }
}

export interface EvaluatorPool {
  /** Opens (or replaces) the VM of process `key` holding `state` (JSON). */
  open(key: string, spec: ProcessSpec, state: string, extensions: Extensions): Promise<void>;
  /** Evaluates a message of the log on the VM: kept when it succeeds. */
  apply(key: string, message: ProcessMessage): Promise<Outcome>;
  /** Evaluates a message without keeping anything. */
  dryRun(key: string, message: ProcessMessage): Promise<Outcome>;
  /** The VM's state as JSON. */
  state(key: string): Promise<string>;
  /** Frees the VM. */
  drop(key: string): Promise<void>;
  /** Jobs in flight, threads, and VMs held. */
  load(): { busy: number; threads: number; vms: number };
  close(): Promise<void>;
}

/** Two threads at least, so that one process at its compute limit never holds up all the others. */
export const defaultEvaluatorThreads = (): number => Math.max(2, Math.min(4, availableParallelism() - 1));

interface Job {
  key: string;
  extensions: Extensions;
  resolve(value: unknown): void;
  reject(e: Error): void;
}

interface Thread {
  worker: Worker;
  jobs: Map<number, Job>;
  vms: Set<string>;
}

export function evaluatorPool(options: { threads?: number } = {}): EvaluatorPool {
  const size = Math.max(1, options.threads ?? defaultEvaluatorThreads());
  const threads: Thread[] = [];
  const home = new Map<string, Thread>();
  const extensionsOf = new Map<string, Extensions>();
  let nextJob = 0;
  let closed = false;

  function start(): Thread {
    const worker = new Worker(new URL('./evaluator-worker.js', import.meta.url));
    const thread: Thread = { worker, jobs: new Map(), vms: new Set() };
    worker.on('message', (m: FromEvaluator) => {
      const job = thread.jobs.get(m.job);
      if (!job) return;
      if (m.type === 'host') {
        const answer = (a: { value: string; ticks: number } | { error: string; unavailable: boolean; ticks: number }): void =>
          worker.postMessage({ type: 'host-answer', call: m.call, ...a } satisfies ToEvaluator);
        hostCallOf(job.extensions)(m.name, m.argument, m.budget).then(answer, (e: Error) =>
          answer({ error: e.message, unavailable: e instanceof HostUnavailable, ticks: e instanceof HostError ? e.ticks : 1 }),
        );
        return;
      }
      thread.jobs.delete(m.job);
      if (m.type === 'done') job.resolve(m.value);
      else job.reject(m.unavailable ? new HostUnavailable(m.error) : m.lost ? new VmLost(m.error) : new Error(`evaluation failed in the CU: ${m.error}`));
    });
    // A thread that dies (a bug, not a process's doing: its limits are QuickJS's) takes its VMs
    // with it: their jobs fail as the CU's fault — nothing is stored for them — and the CU loads
    // those processes again (from their checkpoints) on a new thread.
    const lost = (why: string): void => {
      const index = threads.indexOf(thread);
      if (index < 0) return;
      threads.splice(index, 1);
      for (const key of thread.vms) if (home.get(key) === thread) home.delete(key);
      for (const job of thread.jobs.values()) job.reject(new VmLost(`the evaluator thread stopped: ${why}`));
      thread.jobs.clear();
      if (!closed) threads.push(start());
    };
    worker.on('error', (e) => lost(e.message));
    worker.on('exit', (code) => lost(`exit code ${code}`));
    return thread;
  }

  function send<T>(key: string, work: VmJob): Promise<T> {
    if (closed) return Promise.reject(new Error('the evaluator pool is closed'));
    let thread = home.get(key);
    if (!thread) {
      if (work.type !== 'open') return Promise.reject(new VmLost(`no VM holds process ${key}`));
      thread = threads.reduce((a, b) => (b.vms.size < a.vms.size ? b : a));
      home.set(key, thread);
    }
    const target = thread;
    if (work.type === 'open') target.vms.add(key);
    return new Promise<T>((resolve, reject) => {
      const id = nextJob++;
      target.jobs.set(id, { key, extensions: extensionsOf.get(key) ?? {}, resolve: resolve as (v: unknown) => void, reject });
      target.worker.postMessage({ type: 'job', job: id, key, work } satisfies ToEvaluator);
    });
  }

  for (let i = 0; i < size; i++) threads.push(start());

  return {
    async open(key, spec, state, extensions) {
      extensionsOf.set(key, extensions);
      try {
        await send(key, { type: 'open', spec, state });
      } catch (e) {
        home.get(key)?.vms.delete(key);
        home.delete(key);
        extensionsOf.delete(key);
        throw e;
      }
    },
    apply: (key, message) => send<Outcome>(key, { type: 'apply', message }),
    dryRun: (key, message) => send<Outcome>(key, { type: 'dry-run', message }),
    state: (key) => send<string>(key, { type: 'state' }),
    async drop(key) {
      const thread = home.get(key);
      if (!thread) return;
      await send(key, { type: 'drop' }).catch(() => undefined);
      thread.vms.delete(key);
      if (home.get(key) === thread) home.delete(key);
      extensionsOf.delete(key);
    },
    load: () => ({ busy: threads.reduce((n, t) => n + t.jobs.size, 0), threads: threads.length, vms: home.size }),
    async close() {
      if (closed) return;
      closed = true;
      for (const t of threads) for (const job of t.jobs.values()) job.reject(new Error('the evaluator pool is closed'));
      await Promise.all(threads.map((t) => t.worker.terminate()));
    },
  };
}
