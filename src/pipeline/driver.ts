// Drives a pipeline of stages through a job exactly as generate.ts drives one session: prompt
// positions as batches, then position by position: tokens → first stage → … → last stage's head →
// the token back to the first; stop after `steps` positions or when BOS comes next.
//
// The loop is written once, as a generator of calls to the stages; runPipelineLocal answers them at
// once (StageRun, in-process), runPipeline awaits them (StageHandle: a transport, e.g. worker
// threads over a signed channel, implements it). A beforePosition hook runs before each forward
// (a batch's first position, or a single one): a load balancer moves layers between stages there.
import { EngineError, PROMPT_BATCH, type LayerRange } from '../engine/index.js';
import { schedule, type Hex, type Job } from '../proof/trace.js';
import type { HeadOutput, LayerHandover, LayerLeaf, StageInput, StageOutput, StageRun } from './stage.js';
import { assembleTrace, stageSubRoot, type StageLayout } from './trace.js';

/** A stage as the driver reaches it, wherever it runs. */
export interface StageHandle {
  readonly nLayers: number;
  readonly bosId: number;
  forward(pos: number, count: number, input: StageInput): Promise<StageOutput>;
  head(pos: number): Promise<HeadOutput>;
  exportLayers(range: LayerRange): Promise<LayerHandover>;
  importLayers(h: LayerHandover): Promise<void>;
}

export interface PipelineOptions {
  /** Most prompt positions per batch (1: one at a time); the bits do not depend on it. */
  promptBatch?: number;
}

export interface PipelineHooks {
  /** Before the forward of position `pos` (the first of a batch); the stages are all at `pos`. */
  beforePosition?(pos: number): Promise<void>;
}

export interface LocalHooks {
  beforePosition?(pos: number): void;
}

export interface StageSummary {
  /** The layers the stage ran at the start (its sub-root's range). */
  layers: LayerRange;
  /** The steps it computed (1-based, in order). */
  steps: number[];
  subRoot: Hex;
}

export interface PipelineResult {
  /** As generate.ts: every token after BOS, the rest of the prompt then the sampled ones. */
  tokens: number[];
  /** Positions run. */
  positions: number;
  commitment: Hex;
  root: Hex;
  leaves: Hex[];
  stages: StageSummary[];
  /** Who ran which layers from which position on (changes when layers moved). */
  layouts: StageLayout[];
}

type Call =
  | { kind: 'before'; pos: number }
  | { kind: 'forward'; stage: number; pos: number; count: number; input: StageInput }
  | { kind: 'head'; stage: number; pos: number };

const sameRanges = (a: LayerRange[], b: LayerRange[]): boolean => a.every((r, i) => r.first === b[i].first && r.end === b[i].end);

/** The loop: yields each call to a stage and receives its answer. */
function* drive(stages: { nLayers: number; bosId: number }[], job: Job, options: PipelineOptions): Generator<Call, PipelineResult, unknown> {
  if (stages.length === 0) throw new EngineError('a pipeline needs at least one stage');
  const { nLayers, bosId } = stages[0];
  if (stages.some((s) => s.nLayers !== nLayers || s.bosId !== bosId)) throw new EngineError('the stages run different models');
  const batchLimit = options.promptBatch ?? PROMPT_BATCH;
  if (!Number.isInteger(batchLimit) || batchLimit < 1) throw new EngineError(`promptBatch must be a positive integer, got ${batchLimit}`);
  const { steps, promptTokens } = job;
  if (!Number.isInteger(steps) || steps < 1 || !Array.isArray(promptTokens) || promptTokens.length === 0) throw new EngineError('bad job: steps ≥ 1 and a prompt of 1 or more tokens');
  const sched = schedule(job, nLayers);
  const last = stages.length - 1;
  const layerLeaves: LayerLeaf[] = [];
  const headLeaves: { pos: number; leaf: Hex }[] = [];
  const owned: number[][] = stages.map(() => []);
  const layouts: StageLayout[] = [];
  const tokens: number[] = [];

  // As generate.ts: the prompt positions that run stop before any later BOS in the prompt.
  const laterBos = promptTokens.indexOf(bosId, 1);
  const promptEnd = Math.min(steps, laterBos > 0 ? laterBos : promptTokens.length);
  let token = promptTokens[0];
  let pos = 0;
  let batched = 0;
  while (pos < steps) {
    const count = Math.min(batchLimit, promptEnd - pos);
    if (batched > 0) batched--;
    else {
      yield { kind: 'before', pos };
      const n = Math.max(1, count);
      let input: StageInput = { tokens: n > 1 ? promptTokens.slice(pos, pos + n) : [token] };
      const ranges: LayerRange[] = [];
      for (let i = 0; i <= last; i++) {
        const out = (yield { kind: 'forward', stage: i, pos, count: n, input }) as StageOutput;
        // The stages must chain: stage i ran layers [first, end) for each position, where stage 0 starts at 0,
        // each next one where the previous ended, and the last ends at the last layer.
        const first = i === 0 ? 0 : ranges[i - 1].end;
        const end = out.leaves.length / n + first;
        const expected = Array.from({ length: n * (end - first) }, (_, k) => ({ pos: pos + Math.floor(k / (end - first)), layer: first + (k % (end - first)) }));
        if (!Number.isInteger(end) || end <= first || end > nLayers || out.leaves.some((l, k) => l.pos !== expected[k].pos || l.layer !== expected[k].layer)) {
          throw new EngineError(`stage ${i} did not run the layers after ${first} for positions ${pos}..${pos + n - 1}`);
        }
        ranges.push({ first, end });
        for (const l of out.leaves) {
          layerLeaves.push(l);
          owned[i].push(sched.index({ kind: 'layer', pos: l.pos, layer: l.layer }));
        }
        input = { x: out.x };
      }
      if (ranges[last].end !== nLayers) throw new EngineError(`the stages ran layers 0..${ranges[last].end - 1} of ${nLayers}`);
      if (layouts.length === 0 || !sameRanges(layouts[layouts.length - 1].ranges, ranges)) layouts.push({ from: pos, ranges });
      batched = n - 1;
    }
    let next: number;
    if (pos < promptTokens.length - 1) next = promptTokens[pos + 1];
    else {
      const h = (yield { kind: 'head', stage: last, pos }) as HeadOutput;
      headLeaves.push({ pos, leaf: h.leaf });
      owned[last].push(sched.index({ kind: 'head', pos }));
      next = h.token;
    }
    pos++;
    if (next === bosId) break;
    tokens.push(next);
    token = next;
  }

  const trace = assembleTrace(job, nLayers, layerLeaves, headLeaves);
  const summaries = owned.map((steps, i) => {
    const sorted = [...steps].sort((a, b) => a - b);
    const layers = layouts[0].ranges[i];
    return { layers, steps: sorted, subRoot: stageSubRoot(trace.commitment, i, layers, sorted.map((s) => trace.leaves[s - 1])) };
  });
  return { tokens, positions: pos, commitment: trace.commitment, root: trace.root, leaves: trace.leaves, stages: summaries, layouts };
}

/** The pipeline in-process and in order: each call answered at once. */
export function runPipelineLocal(stages: StageRun[], job: Job, options: PipelineOptions & LocalHooks = {}): PipelineResult {
  const run = drive(stages, job, options);
  let r = run.next();
  while (!r.done) {
    const call = r.value;
    let answer: unknown;
    if (call.kind === 'before') options.beforePosition?.(call.pos);
    else if (call.kind === 'forward') answer = stages[call.stage].forward(call.pos, call.count, call.input);
    else answer = stages[call.stage].head(call.pos);
    r = run.next(answer);
  }
  return r.value;
}

/** The pipeline over stages reached asynchronously (another thread, process or machine). */
export async function runPipeline(handles: StageHandle[], job: Job, options: PipelineOptions & PipelineHooks = {}): Promise<PipelineResult> {
  const run = drive(handles, job, options);
  let r = run.next();
  while (!r.done) {
    const call = r.value;
    let answer: unknown;
    if (call.kind === 'before') await options.beforePosition?.(call.pos);
    else if (call.kind === 'forward') answer = await handles[call.stage].forward(call.pos, call.count, call.input);
    else answer = await handles[call.stage].head(call.pos);
    r = run.next(answer);
  }
  return r.value;
}

/** A StageRun as a StageHandle (resolved promises; errors become rejections). */
export function localHandle(stage: StageRun): StageHandle {
  const wrap = <A extends unknown[], R>(f: (...a: A) => R) => async (...a: A): Promise<R> => f(...a);
  return {
    nLayers: stage.nLayers,
    bosId: stage.bosId,
    forward: wrap((pos: number, count: number, input: StageInput) => stage.forward(pos, count, input)),
    head: wrap((pos: number) => stage.head(pos)),
    exportLayers: wrap((range: LayerRange) => stage.exportLayers(range)),
    importLayers: wrap((h: LayerHandover) => stage.importLayers(h)),
  };
}

/** Moves `range` (a boundary of stage `from`'s layers) to its neighbour `to`, which holds their weights. */
export async function moveLayers(handles: StageHandle[], from: number, to: number, range: LayerRange): Promise<void> {
  if (Math.abs(from - to) !== 1) throw new EngineError(`layers move between neighbouring stages, not ${from} → ${to}`);
  const h = await handles[from].exportLayers(range);
  try {
    await handles[to].importLayers(h);
  } catch (e) {
    await handles[from].importLayers(h); // the layers go back where they were: the run can go on
    throw e;
  }
}
