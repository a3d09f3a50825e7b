// The trace of a pipelined run (docs/proofs.md "Pipelined traces"): the stages' leaves put in the
// schedule's order, with 'end' leaves after generation stopped, are recordTrace's leaves, and the
// accumulator over them is its root. Each stage also commits to its own leaves: a sub-root, a hash
// chain over them alone, which names the stage that computed each step.
import { EngineError, type LayerRange } from '../engine/index.js';
import { accNext, jobCommitment, leafHash, schedule, stageStart, traceStart, type Hex, type Job, type StepRef } from '../proof/trace.js';

/** The layers each stage ran from position `from` on (until the next layout). */
export interface StageLayout {
  from: number;
  ranges: LayerRange[];
}

export interface AssembledTrace {
  commitment: Hex;
  root: Hex;
  /** leaves[s − 1] is step s's leaf. */
  leaves: Hex[];
  /** Steps that ran (the rest are end steps). */
  ran: number;
}

/**
 * The full leaf list in schedule order, and the root, from the layer leaves of every stage and the
 * head leaves. The leaves given must be exactly the steps of a prefix of the schedule (the
 * positions that ran); every later step is an end step, as recordTrace writes them.
 */
export function assembleTrace(
  job: Job, nLayers: number, layerLeaves: { pos: number; layer: number; leaf: Hex }[], headLeaves: { pos: number; leaf: Hex }[],
): AssembledTrace {
  const sched = schedule(job, nLayers);
  const leaves: (Hex | undefined)[] = new Array(sched.steps).fill(undefined);
  const place = (ref: StepRef, leaf: Hex): void => {
    const s = Number.isInteger(ref.pos) && ref.pos >= 0 && ref.pos < job.steps ? sched.index(ref) : 0;
    const at = s >= 1 && s <= sched.steps ? sched.at(s) : undefined;
    const same = at && at.kind === ref.kind && at.pos === ref.pos && (at.kind === 'head' || (ref.kind === 'layer' && at.layer === ref.layer));
    const name = ref.kind === 'layer' ? `layer ${ref.layer} at position ${ref.pos}` : `head at position ${ref.pos}`;
    if (!same) throw new EngineError(`${name} is not a step of this job's schedule`);
    if (leaves[s - 1] !== undefined) throw new EngineError(`${name} has two leaves`);
    leaves[s - 1] = leaf;
  };
  for (const l of layerLeaves) place({ kind: 'layer', pos: l.pos, layer: l.layer }, l.leaf);
  for (const h of headLeaves) place({ kind: 'head', pos: h.pos }, h.leaf);
  let ran = 0;
  while (ran < sched.steps && leaves[ran] !== undefined) ran++;
  const gap = leaves.findIndex((l, i) => i > ran && l !== undefined);
  if (gap >= 0) throw new EngineError(`step ${ran + 1} has no leaf, but step ${gap + 1} has one`);
  for (let s = ran + 1; s <= sched.steps; s++) leaves[s - 1] = leafHash({ kind: 'end', step: s });
  const commitment = jobCommitment(job);
  let root = traceStart(commitment);
  for (const leaf of leaves as Hex[]) root = accNext(root, leaf);
  return { commitment, root, leaves: leaves as Hex[], ran };
}

/**
 * A stage's sub-root: H("verity-stage/1" ‖ commitment ‖ u32 index ‖ u32 first ‖ u32 end), then
 * accNext over the stage's own leaves in schedule order. `layers` is the range the stage ran when
 * the run began (a rebalanced stage keeps it; the leaves say what it ran later).
 */
export function stageSubRoot(commitment: Hex, stageIndex: number, layers: LayerRange, leaves: Hex[]): Hex {
  let acc = stageStart(commitment, stageIndex, layers);
  for (const leaf of leaves) acc = accNext(acc, leaf);
  return acc;
}

/**
 * The steps (1-based, in order) each stage ran, from the layouts and the positions that ran: a
 * layer step belongs to the stage whose range held the layer at that position, a head step to the
 * last stage; end steps to none.
 */
export function stageSteps(job: Job, nLayers: number, layouts: StageLayout[], positions: number): number[][] {
  if (layouts.length === 0 || layouts[0].from !== 0) throw new EngineError('the first layout starts at position 0');
  const stages = layouts[0].ranges.length;
  // Each layout splits the layers into the same number of contiguous, non-empty ranges, in stage
  // order, and each starts after the one before: otherwise a layer could fall to two stages or none.
  layouts.forEach((l, i) => {
    const r = l.ranges;
    if (i > 0 && !(Number.isInteger(l.from) && l.from > layouts[i - 1].from)) throw new EngineError(`layout ${i} starts at ${l.from}, not after layout ${i - 1}'s ${layouts[i - 1].from}`);
    const chained = Array.isArray(r) && r.length === stages && r.every((x, k) => Number.isInteger(x.first) && Number.isInteger(x.end) && x.first === (k === 0 ? 0 : r[k - 1].end) && x.end > x.first);
    if (!chained || r[stages - 1].end !== nLayers) throw new EngineError(`layout ${i} does not split the ${nLayers} layers over the ${stages} stages in order`);
  });
  const sched = schedule(job, nLayers);
  const out: number[][] = Array.from({ length: stages }, () => []);
  for (let s = 1; s <= sched.steps; s++) {
    const ref = sched.at(s);
    if (ref.pos >= positions) break;
    if (ref.kind === 'head') {
      out[stages - 1].push(s);
      continue;
    }
    let layout = layouts[0];
    for (const l of layouts) if (l.from <= ref.pos) layout = l;
    const owner = layout.ranges.findIndex((r) => ref.layer >= r.first && ref.layer < r.end);
    if (owner < 0) throw new EngineError(`no stage ran layer ${ref.layer} at position ${ref.pos}`);
    out[owner].push(s);
  }
  return out;
}

/** Every stage's sub-root, recomputed from the full leaf list (anyone holding the trace can). */
export function stageSubRoots(job: Job, nLayers: number, leaves: Hex[], layouts: StageLayout[], positions: number): Hex[] {
  const commitment = jobCommitment(job);
  return stageSteps(job, nLayers, layouts, positions).map((steps, i) => stageSubRoot(commitment, i, layouts[0].ranges[i], steps.map((s) => leaves[s - 1])));
}
