// A pipelined run with each stage in its own process (ring-stage.ts), as on separate machines: the
// stages post the residuals straight to each other over HTTP (wire.ts) as the channel's signed
// items (channel.ts), through simulated links (link.ts); the last stage sends each sampled token
// back to the first. This process only tells each stage where its neighbours are, relays a load
// balancer's moves to the first stage, and collects every stage's leaves at the end to assemble
// the trace. bench:pipeline runs it with heterogeneous
// simulated nodes. (Processes, not worker threads: Node 20 aborted now and then when ring workers
// ended, "Check failed: node->IsInUse()" in its ES module teardown.)
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { jobCommitment, type Job } from '../proof/index.js';
import type { Wallet } from '../store/wallet.js';
import { walletAddress } from '../store/wallet.js';
import type { PipelineLease } from './channel.js';
import { DIRECT_LINK, type LinkSpec } from './link.js';
import type { LayerMove, RingControl, RingOut, RingReport, RingStageData } from './ring-stage.js';
import type { LayerRange } from './stage.js';
import { assembleTrace, type AssembledTrace } from './trace.js';

export interface RingStage {
  wallet: Wallet;
  /** Layers loaded: what it runs at first, and any overlap it may take over from a neighbour. */
  held: LayerRange;
  runs: LayerRange;
  /** Simulated speed: ≥ 1, the node takes this many times its compute time. */
  slowdown?: number;
  threads?: number;
}

export interface StageMeasure {
  index: number;
  layers: LayerRange;
  /** ms per layer per position (its last decode position, slowdown included). */
  msPerLayer: number;
}

export interface RingSpec {
  modelPath: string;
  tokenizer?: string;
  job: Job;
  task: string;
  leaseEnd: number;
  stages: RingStage[];
  /** links[i]: from stage i to the next (the last: back to the first); default direct. */
  links?: LinkSpec[];
  promptBatch?: number;
  /** Called after each sampled token with the stages' latest measures; the moves it returns are made one position later. */
  balance?: (tokenIndex: number, measures: StageMeasure[]) => Omit<LayerMove, 'atPos'>[];
  /** Simulated drift: after `afterTokens` tokens, stage `stage` takes `slowdown` × its compute time. */
  drift?: { afterTokens: number; stage: number; slowdown: number }[];
  /** Bound on the run (default 10 minutes). */
  timeoutMs?: number;
}

export interface RingResult {
  tokens: number[];
  /** ms from the start to each sampled token. */
  tokenTimes: number[];
  /** Each stage's leaves (schedule order within the stage) and the last stage's head steps. */
  records: Extract<RingReport, { kind: 'record' }>[];
  heldBytes: number[];
  moves: Omit<LayerMove, 'atPos'>[];
  /** The trace the stages' leaves make together (equal to recordTrace's for the job). */
  trace: AssembledTrace;
}

export async function runRing(spec: RingSpec): Promise<RingResult> {
  const n = spec.stages.length;
  if (n < 1) throw new Error('a ring needs at least one stage');
  const lease: PipelineLease = { task: spec.task, commitment: jobCommitment(spec.job), leaseEnd: spec.leaseEnd, nodes: spec.stages.map((s) => walletAddress(s.wallet)) };
  const links = spec.links ?? [];
  const entry = fileURLToPath(new URL('./ring-stage.js', import.meta.url));
  const workers: ChildProcess[] = spec.stages.map(() => fork(entry, [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  const post = (w: ChildProcess, m: RingControl): void => {
    if (w.connected) w.send(m);
  };
  spec.stages.forEach((stage, index) => {
    const data: RingStageData = {
      index,
      count: n,
      modelPath: spec.modelPath,
      tokenizer: spec.tokenizer,
      held: stage.held,
      runs: stage.runs,
      wallet: stage.wallet,
      lease,
      job: spec.job,
      link: links[index] ?? DIRECT_LINK,
      backLink: links[(index + n - 1) % n] ?? DIRECT_LINK,
      threads: stage.threads ?? 1,
      promptBatch: spec.promptBatch ?? 32,
      slowdown: stage.slowdown ?? 1,
      maxPayload: 256 << 20,
    };
    post(workers[index], { kind: 'init', data });
  });

  const measures: StageMeasure[] = spec.stages.map((s, index) => ({ index, layers: s.runs, msPerLayer: 0 }));
  const heldBytes: number[] = [];
  const tokenTimes: number[] = [];
  const moves: Omit<LayerMove, 'atPos'>[] = [];
  const records: Extract<RingReport, { kind: 'record' }>[] = [];
  let t0 = 0;
  try {
    return await new Promise<RingResult>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the ring did not finish within ${spec.timeoutMs ?? 600_000} ms`)), spec.timeoutMs ?? 600_000);
      let ready = 0;
      const urls: string[] = [];
      let nLayers = 0;
      let tokens: number[] = [];
      const fail = (e: Error): void => {
        clearTimeout(timer);
        reject(e);
      };
      workers.forEach((w, from) => {
        w.on('error', fail);
        // 'close': after the last message from it was read.
        w.on('close', (code) => {
          if (records[from] === undefined) fail(new Error(`stage ${from}'s process ended (${code}) before its record`));
        });
        w.on('message', (r: RingOut) => {
          // A stage's reports speak for that stage alone: its own index, and tokens and the end
          // only from the last (the one that samples), so that no stage's report names another.
          if (('index' in r && r.index !== from) || ((r.kind === 'token' || r.kind === 'done') && from !== n - 1)) {
            return fail(new Error(`stage ${from} sent a ${String(r.kind).slice(0, 20)} report it may not send${'index' in r ? ` (as stage ${String(r.index).slice(0, 20)})` : ''}`));
          }
          switch (r.kind) {
            case 'ready':
              heldBytes[r.index] = r.heldBytes;
              nLayers = r.nLayers;
              urls[r.index] = r.url;
              if (++ready === n) {
                // Each stage learns where its neighbours take items; then the first one starts.
                workers.forEach((x, i) => post(x, { kind: 'peers', next: urls[(i + 1) % n], prev: urls[(i + n - 1) % n] }));
                t0 = performance.now();
                post(workers[0], { kind: 'start' });
              }
              return;
            case 'forward':
              if (r.count === 1) measures[r.index] = { index: r.index, layers: r.layers, msPerLayer: r.busyMs / Math.max(1, r.layers.end - r.layers.first) };
              return;
            case 'token': {
              tokenTimes.push(performance.now() - t0);
              for (const d of spec.drift ?? []) if (d.afterTokens === tokenTimes.length) post(workers[d.stage], { kind: 'slow', slowdown: d.slowdown });
              for (const move of spec.balance?.(tokenTimes.length, measures.map((m) => ({ ...m, layers: { ...m.layers } }))) ?? []) {
                moves.push(move);
                post(workers[0], { kind: 'move', move });
              }
              return;
            }
            case 'done':
              tokens = r.tokens;
              for (const x of workers) post(x, { kind: 'collect' });
              return;
            case 'record':
              records[r.index] = r;
              if (records.filter(Boolean).length === n) {
                clearTimeout(timer);
                try {
                  const trace = assembleTrace(spec.job, nLayers, records.flatMap((x) => x.leaves), records[n - 1].heads);
                  resolve({ tokens, tokenTimes, records, heldBytes, moves, trace });
                } catch (e) {
                  reject(e as Error);
                }
              }
              return;
            case 'error':
              return fail(new Error(`stage ${r.index}: ${r.message}`));
          }
        });
      });
    });
  } finally {
    // Each stage's process ends by itself once it sent its record; one that does not (a failed
    // run) is killed after a grace period.
    await Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve) => {
            if (w.exitCode !== null || w.signalCode !== null) return resolve();
            const grace = setTimeout(() => w.kill('SIGKILL'), 5_000);
            w.once('exit', () => {
              clearTimeout(grace);
              resolve();
            });
          }),
      ),
    );
  }
}
