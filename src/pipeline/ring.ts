// A pipelined run with each stage in its own worker thread (ring-worker.ts): the stages pass the
// residuals to each other directly, over MessagePorts carrying the channel's signed items
// (channel.ts) through simulated links (link.ts); the last stage sends each sampled token back to
// the first. This thread only starts the run, relays a load balancer's moves to the first stage,
// and collects every stage's leaves at the end to assemble the trace. bench:pipeline runs it with
// heterogeneous simulated nodes; a node of a real pipeline runs the same worker code.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { jobCommitment, type Job } from '../proof/index.js';
import type { Wallet } from '../store/wallet.js';
import { walletAddress } from '../store/wallet.js';
import type { PipelineLease } from './channel.js';
import { DIRECT_LINK, type LinkSpec } from './link.js';
import type { LayerMove, RingReport, RingWorkerData } from './ring-worker.js';
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
  // forward[i]: stage i → stage i+1 (mod n); back[i]: stage i → stage i−1 (mod n).
  const forward = Array.from({ length: n }, () => new MessageChannel());
  const back = Array.from({ length: n }, () => new MessageChannel());
  const links = spec.links ?? [];
  const workers = spec.stages.map((stage, index) => {
    const data: RingWorkerData = {
      index,
      count: n,
      modelPath: spec.modelPath,
      tokenizer: spec.tokenizer,
      held: stage.held,
      runs: stage.runs,
      wallet: stage.wallet,
      lease,
      job: spec.job,
      next: forward[index].port1,
      fromPrev: forward[(index + n - 1) % n].port2,
      prev: back[index].port1,
      fromNext: back[(index + 1) % n].port2,
      link: links[index] ?? DIRECT_LINK,
      backLink: links[(index + n - 1) % n] ?? DIRECT_LINK,
      threads: stage.threads ?? 1,
      promptBatch: spec.promptBatch ?? 32,
      slowdown: stage.slowdown ?? 1,
      maxPayload: 256 << 20,
    };
    const ports: MessagePort[] = [data.next, data.fromPrev, data.prev, data.fromNext];
    return new Worker(new URL('./ring-worker.js', import.meta.url), { workerData: data, transferList: ports });
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
      let nLayers = 0;
      let tokens: number[] = [];
      const fail = (e: Error): void => {
        clearTimeout(timer);
        reject(e);
      };
      workers.forEach((w) => {
        w.on('error', fail);
        w.on('message', (r: RingReport) => {
          switch (r.kind) {
            case 'ready':
              heldBytes[r.index] = r.heldBytes;
              nLayers = r.nLayers;
              if (++ready === n) {
                t0 = performance.now();
                workers[0].postMessage({ kind: 'start' });
              }
              return;
            case 'forward':
              if (r.count === 1) measures[r.index] = { index: r.index, layers: r.layers, msPerLayer: r.busyMs / Math.max(1, r.layers.end - r.layers.first) };
              return;
            case 'token': {
              tokenTimes.push(performance.now() - t0);
              for (const d of spec.drift ?? []) if (d.afterTokens === tokenTimes.length) workers[d.stage].postMessage({ kind: 'slow', slowdown: d.slowdown });
              for (const move of spec.balance?.(tokenTimes.length, measures.map((m) => ({ ...m, layers: { ...m.layers } }))) ?? []) {
                moves.push(move);
                workers[0].postMessage({ kind: 'move', move });
              }
              return;
            }
            case 'done':
              tokens = r.tokens;
              for (const x of workers) x.postMessage({ kind: 'collect' });
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
    await Promise.all(workers.map((w) => w.terminate()));
  }
}
