// The CU's evaluator threads. Evaluations run in worker threads, never on the CU's event loop, so a
// process that burns its whole compute limit delays only the evaluations queued behind it on its
// thread — the SU, gateway, MU and the CU's HTTP routes (reads, waits) keep answering. Jobs are
// taken in arrival order; since the CU evaluates each process one message at a time, a process has
// at most one job queued, so processes take turns (round robin) whatever their message rates.
// Host functions run here, in the CU's thread, where the store is; the thread asks for them.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { HostError, HostUnavailable, hostCallOf, type Evaluation, type Extensions, type Limits, type ProcessEnv, type ProcessMessage } from './runtime.js';

/** What the CU's thread sends an evaluator thread. */
export type ToEvaluator =
  | { type: 'evaluate'; job: number; source: string; state: unknown; message: ProcessMessage; env: ProcessEnv; limits: Limits; hostNames: string[] }
  | { type: 'host-answer'; call: number; value: string; ticks: number }
  | { type: 'host-answer'; call: number; error: string; unavailable: boolean; ticks: number };

/** What an evaluator thread sends back. */
export type FromEvaluator =
  | { type: 'ready' }
  | { type: 'host'; call: number; name: string; argument: string }
  | { type: 'done'; job: number; evaluation: Evaluation }
  | { type: 'failed'; job: number; error: string; unavailable: boolean };

export interface EvaluatorPool {
  /** As runtime.ts's evaluate, in one of the pool's threads. */
  evaluate(source: string, state: unknown, message: ProcessMessage, env: ProcessEnv, limits: Limits, extensions: Extensions): Promise<Evaluation>;
  /** Jobs waiting for a thread, and threads at work. */
  load(): { queued: number; busy: number; threads: number };
  close(): Promise<void>;
}

/** Two threads at least, so that one process at its compute limit never holds up all the others. */
export const defaultEvaluatorThreads = (): number => Math.max(2, Math.min(4, availableParallelism() - 1));

interface Job {
  id: number;
  request: Extract<ToEvaluator, { type: 'evaluate' }>;
  extensions: Extensions;
  resolve(e: Evaluation): void;
  reject(e: Error): void;
}

interface Thread {
  worker: Worker;
  ready: boolean;
  job: Job | null;
}

export function evaluatorPool(options: { threads?: number } = {}): EvaluatorPool {
  const size = Math.max(1, options.threads ?? defaultEvaluatorThreads());
  const queue: Job[] = [];
  const threads: Thread[] = [];
  let nextJob = 0;
  let closed = false;

  function start(): Thread {
    const worker = new Worker(new URL('./evaluator-worker.js', import.meta.url));
    const thread: Thread = { worker, ready: false, job: null };
    worker.on('message', (m: FromEvaluator) => {
      if (m.type === 'ready') {
        thread.ready = true;
        return dispatch();
      }
      const job = thread.job;
      if (m.type === 'host') {
        if (!job) return;
        const answer = (a: { value: string; ticks: number } | { error: string; unavailable: boolean; ticks: number }): void =>
          worker.postMessage({ type: 'host-answer', call: m.call, ...a } satisfies ToEvaluator);
        hostCallOf(job.extensions)(m.name, m.argument).then(answer, (e: Error) =>
          answer({ error: e.message, unavailable: e instanceof HostUnavailable, ticks: e instanceof HostError ? e.ticks : 1 }),
        );
        return;
      }
      if (!job || job.id !== m.job) return;
      thread.job = null;
      if (m.type === 'done') job.resolve(m.evaluation);
      else job.reject(m.unavailable ? new HostUnavailable(m.error) : new Error(`evaluation failed in the CU: ${m.error}`));
      dispatch();
    });
    // A thread that dies (a bug, not a process's doing: its limits are QuickJS's) fails its job
    // as the CU's fault — nothing is stored for it — and is replaced.
    const lost = (why: string): void => {
      const index = threads.indexOf(thread);
      if (index < 0) return;
      threads.splice(index, 1);
      thread.job?.reject(new Error(`the evaluator thread stopped: ${why}`));
      thread.job = null;
      if (!closed) {
        threads.push(start());
        dispatch();
      }
    };
    worker.on('error', (e) => lost(e.message));
    worker.on('exit', (code) => lost(`exit code ${code}`));
    return thread;
  }

  function dispatch(): void {
    for (const thread of threads) {
      if (queue.length === 0) return;
      if (!thread.ready || thread.job) continue;
      const job = queue.shift()!;
      thread.job = job;
      thread.worker.postMessage(job.request);
    }
  }

  for (let i = 0; i < size; i++) threads.push(start());

  return {
    evaluate(source, state, message, env, limits, extensions) {
      if (closed) return Promise.reject(new Error('the evaluator pool is closed'));
      return new Promise<Evaluation>((resolve, reject) => {
        const id = nextJob++;
        const request: ToEvaluator = { type: 'evaluate', job: id, source, state, message, env, limits, hostNames: Object.keys(extensions) };
        queue.push({ id, request, extensions, resolve, reject });
        dispatch();
      });
    },
    load: () => ({ queued: queue.length, busy: threads.filter((t) => t.job).length, threads: threads.length }),
    async close() {
      if (closed) return;
      closed = true;
      for (const job of queue.splice(0)) job.reject(new Error('the evaluator pool is closed'));
      await Promise.all(threads.map((t) => t.worker.terminate()));
    },
  };
}
