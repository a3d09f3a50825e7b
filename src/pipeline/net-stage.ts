// One stage of a pipelined lease on the network (docs/pipeline.md "Pipelines on the network"): a
// node holding layers [first, end) of a model too big for any one node takes the previous stage's
// signed residuals, runs its layers and signs what it sends on; the first embeds, the last samples
// and sends each token back to the first. Nothing travels through the coordinator: the stages post
// channel items (channel.ts) to each other's `POST /pipe/<task>`.
//
// What makes a pipelined result checkable, and a fault land on the stage that made it:
//   - every activations message carries the sender's leaf preimages for its positions, and the
//     receiver runs only on residuals whose hash is the sender's last layer's xHash;
//   - when the last stage stops, each stage signs a *stage record* (its leaf preimages, and the
//     first stage the tokens it embedded) and the records go down the chain, each checked by the
//     next stage against the messages it got, to the last stage, which assembles the trace and
//     names the records at its Reveal (host.trace checks them against the trace);
//   - a stage keeps what it was sent, so that it can re-run its layers and open any of its steps
//     in a dispute (stageOpening).
import type { Signer } from '@dha-team/arbundles';
import type { Model } from '../engine/index.js';
import { leafHash, schedule, xHashOf, type Hex, type Job, type LayerRecord, type LeafPreimage, type Trace } from '../proof/trace.js';
import { buildOpening, type Opening } from '../proof/opening.js';
import { createItem, parseItem, tagValue, verifyItem, type Item, type Tag } from '../store/items.js';
import { CHANNEL_ITEM_OVERHEAD, ChannelError, ChannelInbox, ChannelOutbox, f32Payload, framePayload, payloadF32, unframePayload, type PipelineLease } from './channel.js';
import { startStage, type LayerRange, type StageRun } from './stage.js';
import { assembleTrace, stageSteps } from './trace.js';

/** A layer step's or head step's preimage (a leaf is leafHash of it). */
export type StepPreimage = Extract<LeafPreimage, { kind: 'layer' | 'head' }>;

/** What a stage signs when the run is over: its steps' preimages, in schedule order. */
export interface StageRecord {
  task: string;
  commitment: Hex;
  stage: number;
  layers: LayerRange;
  /** Positions that ran (through every stage). */
  positions: number;
  preimages: StepPreimage[];
  /** The first stage: the token it embedded at each position. */
  tokens?: number[];
}

export interface NetStageSpec {
  /** The stage's model: its layers, with the embedding when first and the head when last. */
  model: Model;
  job: Job;
  lease: PipelineLease;
  index: number;
  /** Every stage's layers, in pipeline order. */
  ranges: LayerRange[];
  signer: Signer;
  /** Posts a signed item to stage `to` (in order per receiver). */
  post(to: number, raw: Uint8Array): void;
  promptBatch?: number;
  threads?: number;
  /** The last stage: each sampled token, and the token before it (the node's token stream). */
  onToken?(token: number, prev: number): void;
  /** A cheat for the tests: alters the residuals this stage sends after position `pos` (and the leaf it records for them). */
  corrupt?: { pos: number };
}

/** The last stage's result: the assembled trace and every stage's signed record. */
export interface PipelineClaim {
  tokens: number[];
  root: Hex;
  leaves: Hex[];
  /** RNG states after each head step, in order. */
  rngs: string[];
  /** Every stage's signed record, in stage order. */
  records: Item[];
  positions: number;
}

export interface NetStage {
  /** An item from the wire (not yet checked); false: no room now for its sender's items (ask again). */
  take(raw: Uint8Array): boolean;
  /** The largest item this stage takes (a body over it is refused before it is read). */
  readonly maxItemBytes: number;
  /** Items dropped: not signed by a node of the lease, or refused by the inbox (another lease, a replay, a reorder). */
  readonly dropped: number;
  /** Resolves with the record this stage signed (every stage), and the pipeline's claim (the last). */
  readonly done: Promise<{ record: Item; claim: PipelineClaim | null }>;
  /** What this stage was sent and ran: to re-run its layers for an opening. */
  replay(): StageReplay;
  close(): void;
}

/** A stage's inputs, kept for openings (docs/pipeline.md "Disputes"). */
export interface StageReplay {
  /** Non-first stages: the residuals received, by position. */
  inputs: Map<number, Float32Array>;
  /** The first stage: the token embedded at each position. */
  tokens: number[];
  positions: number;
}

export const STAGE_RECORD_TYPE = 'Stage-Record';

/** The tags of a stage record's item. */
export const stageRecordTags = (r: Pick<StageRecord, 'task' | 'commitment' | 'stage' | 'layers' | 'positions'>, leaseEnd: number): Tag[] => [
  { name: 'Data-Protocol', value: 'verity' },
  { name: 'Type', value: STAGE_RECORD_TYPE },
  { name: 'Task', value: r.task },
  { name: 'Job-Commitment', value: r.commitment },
  { name: 'Lease-End', value: String(leaseEnd) },
  { name: 'Stage', value: String(r.stage) },
  { name: 'Layers', value: `${r.layers.first}-${r.layers.end}` },
  { name: 'Positions', value: String(r.positions) },
  { name: 'Content-Type', value: 'application/json' },
];

const HEX64 = /^[0-9a-f]{64}$/;
const isLayerPreimage = (p: unknown): p is Extract<LeafPreimage, { kind: 'layer' }> => {
  const q = p as Record<string, unknown>;
  return typeof q === 'object' && q !== null && q.kind === 'layer' && Number.isInteger(q.pos) && Number.isInteger(q.layer) && [q.xHash, q.kvHash, q.kvChain].every((h) => typeof h === 'string' && HEX64.test(h));
};
const samePreimages = (a: StepPreimage[], b: StepPreimage[]): boolean => a.length === b.length && a.every((p, i) => JSON.stringify(p) === JSON.stringify(b[i]));

/**
 * Checks a stage record item: signed by `node`, bound to the lease and stage by its tags, and its
 * data a record of that stage. Returns the record. Throws a ChannelError naming what is wrong.
 */
export function readStageRecord(item: Item, lease: PipelineLease, stage: number, layers: LayerRange): StageRecord {
  const node = lease.nodes[stage];
  if (item.address !== node) throw new ChannelError(`stage ${stage}'s record is signed by ${item.address}, not by ${node}`);
  let r: StageRecord;
  try {
    r = JSON.parse(Buffer.from(item.data).toString('utf8')) as StageRecord;
  } catch {
    throw new ChannelError(`stage ${stage}'s record is not JSON`);
  }
  const want = stageRecordTags({ task: lease.task, commitment: lease.commitment, stage, layers, positions: r?.positions }, lease.leaseEnd);
  for (const t of want) if (tagValue(item, t.name) !== t.value) throw new ChannelError(`stage ${stage}'s record: its ${t.name} tag is not ${t.value}`);
  if (r.task !== lease.task || r.commitment !== lease.commitment || r.stage !== stage || r.layers?.first !== layers.first || r.layers?.end !== layers.end || !Number.isInteger(r.positions) || !Array.isArray(r.preimages)) {
    throw new ChannelError(`stage ${stage}'s record does not describe stage ${stage} of this lease`);
  }
  return r;
}

/** A stage record item's data is at most this many bytes for a job of `steps` schedule steps. */
export const stageRecordBound = (steps: number): number => 300 * steps + 64 * 1024;

/**
 * Checks every stage's record against a trace (host.trace, for a pipelined participant's Reveal):
 * each is signed by its stage's node and bound to the lease; its preimages are exactly the steps
 * that stage ran, in schedule order, and hash to the trace's leaves there; the first stage's
 * tokens are the prompt and the submitted tokens. So every leaf is vouched for by the stage that
 * made it, and a dispute over a step can be played against its owner.
 */
export function checkStageRecords(job: Job, nLayers: number, leaves: Hex[], tokens: number[], lease: PipelineLease, ranges: LayerRange[], items: Item[]): void {
  const sched = schedule(job, nLayers);
  const endAt = leaves.findIndex((l, i) => l === leafHash({ kind: 'end', step: i + 1 }));
  const positions = endAt < 0 ? job.steps : sched.at(endAt + 1).pos;
  const owned = stageSteps(job, nLayers, [{ from: 0, ranges }], positions);
  items.forEach((item, i) => {
    if (item.data.byteLength > stageRecordBound(sched.steps)) throw new ChannelError(`stage ${i}'s record holds ${item.data.byteLength} bytes, more than a record of this job can need`);
    const r = readStageRecord(item, lease, i, ranges[i]);
    if (r.positions !== positions) throw new ChannelError(`stage ${i}'s record is of ${r.positions} positions, the trace ran ${positions}`);
    const steps = owned[i];
    if (r.preimages.length !== steps.length) throw new ChannelError(`stage ${i}'s record lists ${r.preimages.length} steps, it ran ${steps.length}`);
    steps.forEach((step, k) => {
      const p = r.preimages[k];
      const ref = sched.at(step);
      const named = p && p.kind === ref.kind && p.pos === ref.pos && (ref.kind === 'head' || (p.kind === 'layer' && p.layer === ref.layer));
      if (!named || (p.kind === 'layer' && !isLayerPreimage(p)) || (p.kind === 'head' && !(Number.isInteger(p.token) && typeof p.rng === 'string'))) {
        throw new ChannelError(`stage ${i}'s record: entry ${k} is not the preimage of step ${step}`);
      }
      if (leafHash(p) !== leaves[step - 1]) throw new ChannelError(`stage ${i}'s record: step ${step}'s preimage is not the trace's leaf`);
    });
  });
  const want = [...job.promptTokens, ...tokens].slice(0, positions);
  const got = stageTokens(items[0]);
  if (got.length !== positions || got.some((t, p) => t !== want[p])) throw new ChannelError('the first stage\'s record does not list the prompt and the submitted tokens');
}

const stageTokens = (item: Item): unknown[] => {
  const t = (JSON.parse(Buffer.from(item.data).toString('utf8')) as { tokens?: unknown }).tokens;
  return Array.isArray(t) ? t : [];
};

/** Runs one stage of a pipelined lease; see the file's head. */
export function startNetStage(spec: NetStageSpec): NetStage {
  const { model, job, lease, index, ranges, signer } = spec;
  const count = ranges.length;
  const first = index === 0;
  const last = index === count - 1;
  const layers = ranges[index];
  const { dim, nLayers } = model.config;
  const stage: StageRun = startStage(model, { layers, embeds: first, samples: last }, job, { threads: spec.threads });
  const laterBos = job.promptTokens.indexOf(stage.bosId, 1);
  const promptEnd = Math.min(job.steps, laterBos > 0 ? laterBos : job.promptTokens.length);
  const stepsTotal = schedule(job, nLayers).steps;
  // The most one message carries: a prompt batch of residuals with its preimages, or every
  // stage's record (each step's preimage is under 300 bytes of JSON).
  const maxHeader = 300 * stepsTotal + 64 * 1024;
  const maxPayload = 4 + maxHeader + 4 * Math.max(1, job.promptTokens.length) * dim + count * (300 * stepsTotal + 64 * 1024 + CHANNEL_ITEM_OVERHEAD);
  const inbox = new ChannelInbox(lease, index, maxPayload);
  const outbox = new ChannelOutbox(lease, index, signer);

  const mine: StepPreimage[] = [];
  const fromPrev: StepPreimage[] = [];
  const inputs = new Map<number, Float32Array>();
  const embedded: number[] = [];
  const sampled: number[] = [];
  const rngs: string[] = [];
  let positions = -1;
  let closed = false;

  let resolveDone!: (v: { record: Item; claim: PipelineClaim | null }) => void;
  let rejectDone!: (e: Error) => void;
  const done = new Promise<{ record: Item; claim: PipelineClaim | null }>((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });
  done.catch(() => {});
  /** The stage is over: its engine session goes, and `done` settles once. */
  const over = (settle: () => void): void => {
    if (closed) return;
    closed = true;
    stage.close();
    settle();
  };
  const fail = (e: Error): void => over(() => rejectDone(e));
  const succeed = (record: Item, claim: PipelineClaim | null): void => over(() => resolveDone({ record, claim }));

  const seal = async (to: number, kind: 'activations' | 'token' | 'done' | 'record', pos: number, n: number, payload: Uint8Array): Promise<void> => {
    spec.post(to, await outbox.seal(to, kind, pos, n, payload));
  };

  /** Runs positions pos..pos+n−1 through this stage's layers, then sends on (or samples). */
  const run = async (pos: number, n: number, input: { tokens: number[] } | { x: Float32Array }): Promise<void> => {
    if ('tokens' in input) embedded.push(...input.tokens);
    const out = stage.forward(pos, n, input);
    for (const l of out.leaves) mine.push({ kind: 'layer', pos: l.pos, layer: l.layer, xHash: l.xHash, kvHash: l.kvHash, kvChain: l.kvChain });
    if (spec.corrupt && spec.corrupt.pos >= pos && spec.corrupt.pos < pos + n && !last) {
      // The cheat: one value of the residuals sent on is changed, and the leaf of this stage's
      // last layer there says so (a stage that lies consistently; the dispute finds that leaf).
      const v = spec.corrupt.pos - pos;
      out.x[v * dim] += 1;
      const at = mine.findIndex((p) => p.kind === 'layer' && p.pos === spec.corrupt!.pos && p.layer === layers.end - 1);
      (mine[at] as Extract<LeafPreimage, { kind: 'layer' }>).xHash = xHashOf(out.x.subarray(v * dim, (v + 1) * dim));
    }
    const end = pos + n;
    if (!last) {
      const pre = mine.filter((p) => p.pos >= pos && p.pos < end);
      return seal(index + 1, 'activations', pos, n, framePayload({ pre }, f32Payload(out.x)));
    }
    const headPos = end - 1;
    if (headPos < job.promptTokens.length - 1) {
      if (end >= promptEnd) return finish(end);
      return;
    }
    const h = stage.head(headPos);
    mine.push({ kind: 'head', pos: headPos, token: h.token, rng: h.rngState.toString() });
    rngs.push(h.rngState.toString());
    const prev = sampled.length > 0 ? sampled[sampled.length - 1] : job.promptTokens[job.promptTokens.length - 1];
    const stop = h.token === stage.bosId || end >= job.steps;
    if (h.token !== stage.bosId) {
      sampled.push(h.token);
      spec.onToken?.(h.token, prev);
    }
    if (stop) return finish(end);
    await seal(0, 'token', end, 1, framePayload({ head: { pos: headPos, token: h.token, rng: h.rngState.toString() } }));
  };

  /** The last stage: the run is over after `ran` positions; the others are told, and sign their records. */
  const finish = async (ran: number): Promise<void> => {
    positions = ran;
    await seal(0, 'done', ran, 0, framePayload({ positions: ran }));
  };

  /** Signs this stage's record once `positions` is known. */
  const signRecord = async (): Promise<Item> => {
    const r: StageRecord = {
      task: lease.task, commitment: lease.commitment, stage: index, layers, positions, preimages: mine.filter((p) => p.pos < positions),
      ...(first ? { tokens: embedded.slice(0, positions) } : {}),
    };
    return createItem(JSON.stringify(r), signer, { tags: stageRecordTags(r, lease.leaseEnd) });
  };

  /** Records of stages 0..index−1 came: check the previous one against what it sent; add ours; pass on (or assemble). */
  const takeRecords = async (raws: Uint8Array[]): Promise<void> => {
    if (raws.length !== index) throw new ChannelError(`${raws.length} records came to stage ${index}, expected ${index}`);
    const items: Item[] = [];
    const records: StageRecord[] = [];
    for (let j = 0; j < raws.length; j++) {
      const item = await verifyItem(raws[j]);
      records.push(readStageRecord(item, lease, j, ranges[j]));
      items.push(item);
    }
    const prev = records[index - 1];
    // A middle stage learns where the run stopped from the record before its own.
    if (!last) {
      if (!Number.isInteger(prev.positions) || prev.positions < 1 || prev.positions > stage.position) throw new ChannelError(`stage ${index - 1}'s record is of ${prev.positions} positions; this stage ran ${stage.position}`);
      positions = prev.positions;
    }
    if (prev.positions !== positions) throw new ChannelError(`stage ${index - 1}'s record is of ${prev.positions} positions, the run had ${positions}`);
    // The stage before must sign what it sent: otherwise a fault it made would look like ours.
    if (!samePreimages(prev.preimages, fromPrev.filter((p) => p.pos < positions))) throw new ChannelError(`stage ${index - 1}'s record is not what its messages said`);
    const own = await signRecord();
    items.push(own);
    if (!last) {
      const body = items.map((i) => i.raw);
      succeed(own, null);
      return seal(index + 1, 'record', 0, items.length, framePayload({ sizes: body.map((b) => b.byteLength) }, Buffer.concat(body)));
    }
    // The first stage's tokens must be the ones sampled here: otherwise its leaves follow from others.
    const tokens = records[0].tokens ?? [];
    const want = [...job.promptTokens, ...sampled].slice(0, positions);
    if (tokens.length !== positions || tokens.some((t, p) => t !== want[p])) throw new ChannelError('the first stage\'s record does not list the tokens this stage sampled');
    const layerLeaves = records.flatMap((r) => r.preimages).concat(mine).flatMap((p) => (p.kind === 'layer' && isLayerPreimage(p) ? [{ pos: p.pos, layer: p.layer, leaf: leafHash(p) }] : []));
    const headLeaves = mine.flatMap((p) => (p.kind === 'head' ? [{ pos: p.pos, leaf: leafHash(p) }] : []));
    const t = assembleTrace(job, nLayers, layerLeaves, headLeaves);
    succeed(own, { tokens: sampled.slice(), root: t.root, leaves: t.leaves, rngs: rngs.slice(), records: items, positions });
  };

  // Anyone may post to a stage (task ids are public): an item that is not a lease node's, signed,
  // is dropped before it is queued, and one the inbox refuses (another lease, a replay, a reorder)
  // is dropped too, so that a stranger can neither stop the stage nor crowd out its neighbours'.
  // What a lease node signs and sends wrongly stops the stage (the lease then runs out: its fault).
  // Messages are taken one at a time, in arrival order; at most one per position and a few more wait.
  let chain: Promise<void> = Promise.resolve();
  let waiting = 0;
  let dropped = 0;
  const maxWaiting = 2 * job.steps + 8;
  const peers = new Set(lease.nodes.filter((_, k) => k !== index));
  // Who signed an item is read before its signature is checked: a stranger's is dropped at once.
  // A lease node's items are checked side by side and queued in arrival order (a neighbour posts
  // one item at a time, so arrival order is its order); each neighbour has its own room, and when
  // it is full the item is refused (take answers false: the wire says 503 and the sender retries),
  // never dropped, so that no one can make a stage lose a neighbour's item.
  let arrivals: Promise<void> = Promise.resolve();
  const checking = new Map<string, number>();
  const take = (raw: Uint8Array): boolean => {
    if (closed || raw.byteLength > maxPayload + CHANNEL_ITEM_OVERHEAD) return void dropped++, true;
    let signer: string;
    try {
      signer = parseItem(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength)).address;
    } catch {
      return void dropped++, true;
    }
    if (!peers.has(signer)) return void dropped++, true;
    const busy = checking.get(signer) ?? 0;
    if (busy >= maxWaiting || waiting >= maxWaiting * peers.size) return false;
    checking.set(signer, busy + 1);
    const signed = verifyItem(raw).catch(() => null);
    arrivals = arrivals.then(async () => {
      const item = await signed;
      checking.set(signer, (checking.get(signer) ?? 1) - 1);
      if (!item || item.address !== signer) return void dropped++;
      enqueue(raw);
    });
    return true;
  };
  const enqueue = (raw: Uint8Array): void => {
    waiting++;
    chain = chain
      .then(async () => {
        if (closed) return;
        let m;
        try {
          m = await inbox.open(raw);
        } catch {
          dropped++;
          return;
        }
        const sender = m.kind === 'activations' || m.kind === 'record' ? index - 1 : first && (m.kind === 'token' || m.kind === 'done') ? count - 1 : -1;
        if (m.from !== sender) throw new ChannelError(`a ${m.kind} message from stage ${m.from}: stage ${index} takes those from ${sender < 0 ? 'no stage' : `stage ${sender}`}`);
        if (m.kind === 'activations') {
          const { header, body } = unframePayload<{ pre?: unknown }>(m.payload, maxHeader);
          const pre = header.pre;
          const boundary = layers.first - 1;
          if (!Array.isArray(pre) || pre.length !== m.count * (layers.first - ranges[index - 1].first) || !pre.every(isLayerPreimage)) throw new ChannelError('an activations message without the sender\'s preimages');
          const x = payloadF32(body, m.count * dim);
          for (let v = 0; v < m.count; v++) {
            const xv = x.subarray(v * dim, (v + 1) * dim);
            const b = pre.find((p) => p.pos === m.pos + v && p.layer === boundary);
            // The residuals must be the ones the sender's leaf commits to.
            if (!b || b.xHash !== xHashOf(xv)) throw new ChannelError(`the residuals of position ${m.pos + v} are not the ones stage ${index - 1}'s leaf commits to`);
            inputs.set(m.pos + v, xv.slice());
          }
          fromPrev.push(...pre);
          return run(m.pos, m.count, { x });
        }
        if (m.kind === 'token') {
          const { header } = unframePayload<{ head?: { pos?: unknown; token?: unknown; rng?: unknown } }>(m.payload, 1024);
          const h = header.head;
          if (!h || h.pos !== m.pos - 1 || !Number.isInteger(h.token) || typeof h.rng !== 'string') throw new ChannelError('a token message without its head step');
          return run(m.pos, 1, { tokens: [h.token as number] });
        }
        if (m.kind === 'done') {
          const { header } = unframePayload<{ positions?: unknown }>(m.payload, 1024);
          const ran = header.positions;
          if (!Number.isInteger(ran) || (ran as number) < 1 || (ran as number) > job.steps || (ran as number) > stage.position) throw new ChannelError(`a done message for ${String(ran)} positions; this stage ran ${stage.position}`);
          positions = ran as number;
          const own = await signRecord();
          succeed(own, null);
          if (count > 1) await seal(1, 'record', 0, 1, framePayload({ sizes: [own.raw.byteLength] }, own.raw));
          return;
        }
        if (m.kind === 'record') {
          const { header, body } = unframePayload<{ sizes?: unknown }>(m.payload, 64 * 1024);
          const sizes = header.sizes;
          if (!Array.isArray(sizes) || !sizes.every((s) => Number.isInteger(s) && s > 0) || sizes.reduce((a: number, b: number) => a + b, 0) !== body.byteLength) throw new ChannelError('a record message whose sizes are not its body');
          let at = 0;
          const raws = sizes.map((s: number) => body.subarray(at, (at += s)));
          if (last && positions < 0) throw new ChannelError('records before the run ended');
          return takeRecords(raws);
        }
      })
      .catch((e: Error) => fail(e))
      .finally(() => waiting--);
  };

  if (first) {
    // The prompt, in batches (the positions before the first sampled token).
    chain = chain.then(async () => {
      const batch = spec.promptBatch ?? 16;
      for (let pos = 0; pos < promptEnd; ) {
        const n = Math.max(1, Math.min(batch, promptEnd - pos));
        await run(pos, n, { tokens: job.promptTokens.slice(pos, pos + n) });
        pos += n;
      }
    }).catch((e: Error) => fail(e));
  }
  return {
    take,
    get dropped() {
      return dropped;
    },
    maxItemBytes: maxPayload + CHANNEL_ITEM_OVERHEAD,
    done,
    replay: () => ({ inputs, tokens: embedded.slice(), positions }),
    close: () => fail(new ChannelError('the stage was closed')),
  };
}

/**
 * The opening of `step`, a step this stage owns, from a re-run of its layers on what it was sent
 * (the run is deterministic). `leaves` is the trace the last stage stored, `records` every stage's
 * record (the preimages of the steps the opening reads, whoever made them). Throws when the step
 * is not this stage's or the replay is not of this run.
 */
export function stageOpening(
  spec: Pick<NetStageSpec, 'model' | 'job' | 'index' | 'ranges' | 'threads'>, replay: StageReplay, leaves: Hex[], records: StageRecord[], step: number,
): Opening {
  const { model, job, index, ranges } = spec;
  const { nLayers } = model.config;
  const sched = schedule(job, nLayers);
  const layers = ranges[index];
  const ref = sched.at(step);
  const lastStage = index === ranges.length - 1;
  // A step after generation stopped is an end step: its opening is the chain and the preimages
  // alone (no stage ran it), and any stage can give it.
  const ended = ref.pos >= replay.positions;
  const owned = ended || (ref.kind === 'head' ? lastStage : ref.layer >= layers.first && ref.layer < layers.end);
  if (!owned) throw new ChannelError(`step ${step} is not one this stage ran`);
  // Every position up to the step's, one at a time, keeping each layer's outputs.
  const run = startStage(model, { layers, embeds: index === 0, samples: lastStage }, job, { threads: spec.threads, keepOutputs: true });
  try {
    for (let pos = 0; pos <= (ended ? -1 : ref.pos); pos++) {
      const input = index === 0 ? { tokens: [replay.tokens[pos]] } : { x: replay.inputs.get(pos) ?? new Float32Array(0) };
      run.forward(pos, 1, input);
      if (lastStage && pos >= job.promptTokens.length - 1 && pos < ref.pos) run.head(pos);
    }
    const preimages: LeafPreimage[] = Array.from({ length: sched.steps }, (_, i) => ({ kind: 'end', step: i + 1 }) as LeafPreimage);
    for (const r of records) for (const p of r.preimages) preimages[sched.index(p.kind === 'head' ? { kind: 'head', pos: p.pos } : { kind: 'layer', pos: p.pos, layer: p.layer }) - 1] = p;
    const kept = new Map<number, LayerRecord>();
    for (const [key, rec] of run.outputs) kept.set(sched.index({ kind: 'layer', pos: Math.floor(key / nLayers), layer: key % nLayers }), rec);
    // The input of this stage's first layer is the residual it was sent, the previous stage's last output.
    if (index > 0 && ref.kind === 'layer' && ref.layer === layers.first) {
      const x = replay.inputs.get(ref.pos);
      if (x) kept.set(step - 1, { x, key: new Float32Array(0), value: new Float32Array(0) });
    }
    const trace: Trace = { job, commitment: records[0].commitment, nLayers, root: '', tokens: [], leaves, preimages, layers: kept };
    return buildOpening(trace, step, model.config);
  } finally {
    run.close();
  }
}
