// An evaluator thread: it holds the VMs of its processes and runs their jobs one at a time, off the
// CU's event loop. Host calls go back to the CU's thread (which holds the store), and their answers
// come back here.
import { parentPort } from 'node:worker_threads';
import { HostError, HostUnavailable, ProcessVM, loadRuntime, type HostCall } from './runtime.js';
import { VmLost, type FromEvaluator, type ToEvaluator, type VmJob } from './evaluator.js';
import { LuaVM } from './lua-runtime.js';

const port = parentPort!;
const post = (m: FromEvaluator): void => port.postMessage(m);
await loadRuntime();

let nextCall = 0;
const calls = new Map<number, { resolve(v: { value: string; ticks: number }): void; reject(e: Error): void }>();
const vms = new Map<string, ProcessVM | LuaVM>();

// The job now running: its host calls are tagged with it, so the CU uses that process's extensions.
let current = -1;
const host: HostCall = (name, argument, budget) =>
  new Promise((resolve, reject) => {
    const call = nextCall++;
    calls.set(call, { resolve, reject });
    post({ type: 'host', call, job: current, name, argument, budget });
  });

async function run(key: string, work: VmJob): Promise<unknown> {
  if (work.type === 'open') {
    const vm = await (work.spec.format === 'lua' ? LuaVM.open(work.spec, work.state, host) : ProcessVM.open(work.spec, work.state, host));
    vms.get(key)?.dispose();
    vms.set(key, vm);
    return null;
  }
  const vm = vms.get(key);
  if (!vm) throw new VmLost(`no VM holds process ${key}`);
  switch (work.type) {
    case 'apply': {
      const { outcome, vm: after } = await vm.apply(work.message);
      vms.set(key, after);
      return outcome;
    }
    case 'dry-run':
      return vm.dryRun(work.message);
    case 'state':
      return vm.state();
    case 'drop':
      vm.dispose();
      vms.delete(key);
      return null;
  }
}

// One job at a time: an asyncified QuickJS module holds at most one suspended call.
let turn: Promise<void> = Promise.resolve();
port.on('message', (m: ToEvaluator) => {
  if (m.type === 'host-answer') {
    const pending = calls.get(m.call);
    calls.delete(m.call);
    if (!pending) return;
    if ('value' in m) pending.resolve({ value: m.value, ticks: m.ticks });
    else pending.reject(m.unavailable ? new HostUnavailable(m.error) : new HostError(m.error, m.ticks));
    return;
  }
  const { job, key, work } = m;
  turn = turn.then(async () => {
    current = job;
    try {
      post({ type: 'done', job, value: (await run(key, work)) as never });
    } catch (e) {
      post({ type: 'failed', job, error: (e as Error).message, unavailable: e instanceof HostUnavailable, lost: e instanceof VmLost });
    }
  });
});
