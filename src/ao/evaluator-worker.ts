// An evaluator thread: QuickJS evaluations for the CU, one at a time, off the CU's event loop. Host
// calls go back to the CU's thread (which holds the store), and their answers come back here.
import { parentPort } from 'node:worker_threads';
import { HostError, HostUnavailable, evaluateWith, loadRuntime, type HostCall } from './runtime.js';
import type { FromEvaluator, ToEvaluator } from './evaluator.js';

const port = parentPort!;
const post = (m: FromEvaluator): void => port.postMessage(m);
await loadRuntime();

let nextCall = 0;
const calls = new Map<number, { resolve(v: { value: string; ticks: number }): void; reject(e: Error): void }>();

const host: HostCall = (name, argument) =>
  new Promise((resolve, reject) => {
    const call = nextCall++;
    calls.set(call, { resolve, reject });
    post({ type: 'host', call, name, argument });
  });

port.on('message', (m: ToEvaluator) => {
  if (m.type === 'host-answer') {
    const pending = calls.get(m.call);
    calls.delete(m.call);
    if (!pending) return;
    if ('value' in m) pending.resolve({ value: m.value, ticks: m.ticks });
    else pending.reject(m.unavailable ? new HostUnavailable(m.error) : new HostError(m.error, m.ticks));
    return;
  }
  const { job, source, state, message, env, limits, hostNames } = m;
  evaluateWith(source, state, message, env, limits, hostNames, host).then(
    (evaluation) => post({ type: 'done', job, evaluation }),
    (e: Error) => post({ type: 'failed', job, error: e.message, unavailable: e instanceof HostUnavailable }),
  );
});
post({ type: 'ready' });
