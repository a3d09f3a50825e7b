// One stage of a ring (ring.ts) in its own process, as one node of a pipeline would run it: it loads
// only the layers it holds, takes the previous stage's signed messages from its inbox, runs its
// layers, and signs what it sends on. The first stage embeds (the prompt, then each token the last
// stage sends back round the ring); the last samples. Layer moves (the load balancer's) travel in
// band with the residuals, so every stage applies a move at the same position whatever the timing.
import { loadModel } from '../engine/index.js';
import { type Job } from '../proof/index.js';
import { parseItem } from '../store/items.js';
import { walletSigner, type Wallet } from '../store/wallet.js';
import { CHANNEL_ITEM_OVERHEAD, ChannelInbox, ChannelOutbox, f32Payload, framePayload, payloadF32, unframePayload, type PipelineLease } from './channel.js';
import { simulatedLink, type LinkSpec } from './link.js';
import { startWireServer, wireSender } from './wire.js';
import { decodeHandover, encodeHandover, startStage, type LayerHandover, type LayerRange, type StageRun } from './stage.js';

/** What the ring gives each stage's process (its first message). */
export interface RingStageData {
  index: number;
  count: number;
  modelPath: string;
  tokenizer?: string;
  /** Layers loaded (what it runs and the overlap it may take over), and what it runs at first. */
  held: LayerRange;
  runs: LayerRange;
  wallet: Wallet;
  lease: PipelineLease;
  job: Job;
  /** The links to the next stage (the last: to the first) and back to the previous one (handovers). */
  link: LinkSpec;
  backLink: LinkSpec;
  threads: number;
  promptBatch: number;
  /** Simulated speed: this node takes `slowdown` × its compute time (it idles the rest). */
  slowdown: number;
  maxPayload: number;
}

/**
 * A layer move: from position `atPos` on, the boundary after stage `boundary` is at layer `end`.
 * The balancer sends it to the first stage without a position; the first stage gives it the
 * position after the next one it runs, and every stage learns of it with that next position's
 * residuals — one position ahead, as a stage that gives its first layers back needs.
 */
export interface LayerMove {
  atPos: number;
  boundary: number;
  end: number;
}

/** What a residuals message carries besides the residuals: the moves announced so far. */
interface Header {
  moves: LayerMove[];
}

/** To the ring: one report per forward (the balancer's measure), then the stage's record. */
export type RingReport =
  | { kind: 'ready'; index: number; heldBytes: number; nLayers: number; url: string }
  | { kind: 'forward'; index: number; pos: number; count: number; layers: LayerRange; computeMs: number; busyMs: number }
  | { kind: 'token'; pos: number; token: number; at: number }
  | { kind: 'done'; tokens: number[] }
  | { kind: 'record'; index: number; leaves: { pos: number; layer: number; leaf: string }[]; heads: { pos: number; token: number; rngState: string; leaf: string }[] }
  | { kind: 'error'; index: number; message: string };

/** Between the ring and a stage's process: control, reports, and the signed bytes the ring carries between stages. */
export type RingControl =
  | { kind: 'init'; data: RingStageData }
  | { kind: 'start' }
  | { kind: 'move'; move: Omit<LayerMove, 'atPos'> }
  | { kind: 'slow'; slowdown: number }
  | { kind: 'collect' }
  /** Where the neighbours take items: the next stage's and the previous one's POST /pipe. */
  | { kind: 'peers'; next: string; prev: string };
export type RingOut = RingReport;

const send = (m: RingOut): void => void process.send!(m);
const report = (r: RingReport): void => send(r);

/** A message's header (the moves announced so far) and body, as the channel carries them. */
const encodeHeader = (h: Header, body: Uint8Array): Uint8Array => framePayload(h, body);
const decodeHeader = (payload: Uint8Array): { header: Header; body: Uint8Array } => {
  const framed = unframePayload<Header>(payload, 64 * 1024);
  if (!Array.isArray(framed.header?.moves) || framed.header.moves.length > 64) throw new Error('a malformed message header');
  return framed;
};

/** Idles the thread for `ms` (a slower device), without letting other messages in meanwhile. */
const idle = (ms: number): void => {
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
};

async function main(data: RingStageData): Promise<void> {
  const { index, count, job, lease } = data;
  const first = index === 0;
  const last = index === count - 1;
  const model = loadModel(data.modelPath, { tokenizer: data.tokenizer, layers: data.held, embedding: first, head: last });
  const stage: StageRun = startStage(model, { layers: data.runs, embeds: first, samples: last }, job, { threads: data.threads });
  const { dim } = model.config;
  // As generate.ts: the prompt positions that run stop before any later BOS in the prompt.
  const laterBos = job.promptTokens.indexOf(stage.bosId, 1);
  const promptEnd = Math.min(job.steps, laterBos > 0 ? laterBos : job.promptTokens.length);
  // The most a message of this run carries: a header, one handover of every layer at the job's
  // last position, and the residuals of the whole prompt as one batch. The ring's bound is a ceiling.
  const { kvDim, nLayers } = model.config;
  const runPayload = 4 + 64 * 1024 + 16 + nLayers * (32 + 8 * job.steps * kvDim) + 4 * Math.max(1, job.promptTokens.length) * dim;
  const inbox = new ChannelInbox(lease, index, Math.min(data.maxPayload, runPayload));
  const outbox = new ChannelOutbox(lease, index, walletSigner(data.wallet));
  // Items go straight to the neighbours' wire servers (wire.ts), through the simulated link (the
  // delay a real network would add), once the ring said where they are.
  const failWire = (e: Error): void => report({ kind: 'error', index, message: `the wire: ${e.message}` });
  let postNext: (raw: Uint8Array) => void = () => failWire(new Error('no peers yet'));
  let postPrev: (raw: Uint8Array) => void = postNext;
  const sendNext = simulatedLink(data.link, (raw) => postNext(raw));
  const sendPrev = simulatedLink(data.backLink, (raw) => postPrev(raw));
  const moves: LayerMove[] = [];
  const pending: Omit<LayerMove, 'atPos'>[] = [];
  const heads: { pos: number; token: number; rngState: string; leaf: string }[] = [];
  const leaves: { pos: number; layer: number; leaf: string }[] = [];
  const tokens: number[] = [];
  let slowdown = data.slowdown;
  // Handovers from the next stage (it gives up its first layers to this one), by position.
  const handovers = new Map<number, LayerHandover>();
  const handoverWaiters = new Map<number, (h: LayerHandover) => void>();

  /** The moves that take effect at `pos` on this stage's two boundaries. */
  const applyMoves = async (pos: number): Promise<Uint8Array | null> => {
    let give: Uint8Array | null = null;
    for (const m of moves.filter((x) => x.atPos === pos)) {
      const mine = stage.layers;
      if (m.boundary === index && m.end < mine.end) {
        // This stage gives its last layers to the next: they go in band, before the residuals.
        const h = stage.exportLayers({ first: m.end, end: mine.end });
        give = encodeHandover(h);
      } else if (m.boundary === index && m.end > mine.end) {
        // The next stage gives its first layers to this one: wait for them.
        const h = handovers.get(pos) ?? (await new Promise<LayerHandover>((resolve) => handoverWaiters.set(pos, resolve)));
        handovers.delete(pos);
        if (h.layers.first !== mine.end || h.layers.end !== m.end) throw new Error(`a handover of layers [${h.layers.first}, ${h.layers.end}), the move at ${pos} hands over [${mine.end}, ${m.end})`);
        stage.importLayers(h);
      }
      // boundary index − 1: the previous stage's last layers come with the residuals (run), and
      // this stage's first layers went back to it when it finished the position before (giveBack).
    }
    return give;
  };

  /** After running up to `next`: the first layers this stage gives the previous one from `next` on. */
  const giveBack = async (next: number): Promise<void> => {
    for (const m of moves.filter((x) => x.atPos === next && x.boundary === index - 1 && x.end > stage.layers.first)) {
      const h = stage.exportLayers({ first: stage.layers.first, end: m.end });
      sendPrev(await outbox.seal(index - 1, 'handover', next, 0, encodeHandover(h)));
    }
  };

  const run = async (pos: number, n: number, input: { tokens: number[] } | { x: Float32Array }, given: Uint8Array | null): Promise<void> => {
    // Layers come in band only as a move dated at this position plans them: [its end, this stage's first).
    const incoming = moves.find((x) => x.atPos === pos && x.boundary === index - 1 && x.end < stage.layers.first);
    if (given) {
      if (!incoming) throw new Error(`layers handed over at position ${pos} that no move plans`);
      const h = decodeHandover(given, model.config.kvDim);
      if (h.layers.first !== incoming.end || h.layers.end !== stage.layers.first) throw new Error(`a handover of layers [${h.layers.first}, ${h.layers.end}), the move at ${pos} hands over [${incoming.end}, ${stage.layers.first})`);
      stage.importLayers(h);
    } else if (incoming) throw new Error(`the move at position ${pos} hands over layers that did not come`);
    const give = await applyMoves(pos);
    const t0 = performance.now();
    const out = stage.forward(pos, n, input);
    const computeMs = performance.now() - t0;
    idle((slowdown - 1) * computeMs);
    report({ kind: 'forward', index, pos, count: n, layers: { ...stage.layers }, computeMs, busyMs: performance.now() - t0 });
    for (const l of out.leaves) leaves.push({ pos: l.pos, layer: l.layer, leaf: l.leaf });
    const end = pos + n; // the next position to run
    // The first stage dates the balancer's moves: they take effect one position after this one.
    if (first && n === 1 && pos >= job.promptTokens.length) for (const mv of pending.splice(0)) moves.push({ ...mv, atPos: end });
    if (!last) {
      await giveBack(end);
      const body = encodeHeader({ moves }, give ? Buffer.concat([give, f32Payload(out.x)]) : f32Payload(out.x));
      sendNext(await outbox.seal(index + 1, 'activations', pos, n, body));
      return;
    }
    const headPos = end - 1;
    if (headPos < job.promptTokens.length - 1) {
      // A prompt position: the next token is the prompt's (no head step); the run may end here.
      if (end >= promptEnd) report({ kind: 'done', tokens });
      return;
    }
    const headStart = performance.now();
    const h = stage.head(headPos);
    idle((slowdown - 1) * (performance.now() - headStart));
    await giveBack(end);
    heads.push({ pos: headPos, token: h.token, rngState: h.rngState.toString(), leaf: h.leaf });
    const done = h.token === stage.bosId || end >= job.steps;
    if (h.token !== stage.bosId) tokens.push(h.token);
    report({ kind: 'token', pos: headPos, token: h.token, at: performance.now() });
    if (done) return report({ kind: 'done', tokens });
    if (first) {
      // One stage alone: the token goes round to itself, with no channel to cross.
      chain = chain.then(() => run(end, 1, { tokens: [h.token] }, null));
      return;
    }
    const payload = new Uint8Array(4);
    new DataView(payload.buffer).setUint32(0, h.token, true);
    sendNext(await outbox.seal(0, 'token', end, 1, encodeHeader({ moves }, payload)));
  };

  // The prompt's runs (and a lone stage's tokens) one after the other.
  let chain: Promise<void> = Promise.resolve();
  // Each sender's messages are taken one at a time, in arrival order, beside other senders': a
  // run that waits for the next stage's handover (applyMoves) must not hold that handover up
  // behind itself, which one queue for all would (a deadlock when the handover came second).
  const senders = new Map<string, Promise<void>>();
  // Messages waiting to be opened: an honest run has at most one per position and one per move
  // (a sender flooding ahead is refused, not queued without bound).
  let waiting = 0;
  const maxWaiting = 2 * job.steps + 64;
  const take = (raw: Uint8Array): void => {
    if (waiting >= maxWaiting) return report({ kind: 'error', index, message: `over ${maxWaiting} messages waiting: a message dropped` });
    let signer = '';
    try {
      signer = parseItem(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength)).address;
    } catch {
      // The inbox refuses it with its reason, on the queue of no sender.
    }
    waiting++;
    const queue = (senders.get(signer) ?? Promise.resolve())
      .then(async () => {
        const m = await inbox.open(raw);
        // Who may send what: residuals come from the previous stage, handovers (its first layers
        // given back) from the next, tokens from the last to the first. The lease alone lets any of its nodes sign.
        const sender = m.kind === 'activations' ? index - 1 : m.kind === 'handover' ? index + 1 : first ? count - 1 : -1;
        if (m.from !== sender) throw new Error(`a ${m.kind} message from stage ${m.from}: stage ${index} takes those from ${sender < 0 ? 'no stage' : `stage ${sender}`}`);
        if (m.kind === 'handover') {
          // Only one a known move asks for, once: nothing is kept that the run did not plan.
          if (!moves.some((x) => x.atPos === m.pos && x.boundary === index) || handovers.has(m.pos) || m.pos < stage.position) {
            throw new Error(`a handover at position ${m.pos} that no move of this stage's asks for`);
          }
          const h = decodeHandover(m.payload, model.config.kvDim);
          const waiter = handoverWaiters.get(m.pos);
          if (waiter) {
            handoverWaiters.delete(m.pos);
            waiter(h);
          } else handovers.set(m.pos, h);
          return;
        }
        const { header, body } = decodeHeader(m.payload);
        for (const mv of header.moves) {
          const known = moves.find((x) => x.atPos === mv?.atPos && x.boundary === mv?.boundary);
          if (known) {
            if (known.end !== mv.end) throw new Error(`a move at ${known.atPos} of boundary ${known.boundary} to ${String(mv.end)}, known to ${known.end}`);
            continue;
          }
          // A new move: the first stage dates them (it takes none from others); the rest learn each
          // with the residuals of the position before it takes effect, for a boundary of the ring.
          const ok = (v: unknown, lo: number, hi: number): boolean => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
          if (first || m.kind !== 'activations' || !ok(mv?.atPos, m.pos + m.count, job.steps) || !ok(mv?.boundary, 0, count - 2) || !ok(mv?.end, 1, model.config.nLayers - 1) || moves.length >= 64) {
            throw new Error(`a move this stage cannot take: ${JSON.stringify(mv).slice(0, 200)}`);
          }
          moves.push({ atPos: mv.atPos, boundary: mv.boundary, end: mv.end });
        }
        if (m.kind === 'token') {
          const token = new DataView(body.buffer, body.byteOffset, body.byteLength).getUint32(0, true);
          return run(m.pos, 1, { tokens: [token] }, null);
        }
        const xBytes = 4 * m.count * dim;
        const given = body.byteLength > xBytes ? body.subarray(0, body.byteLength - xBytes) : null;
        return run(m.pos, m.count, { x: payloadF32(body.subarray(body.byteLength - xBytes), m.count * dim) }, given);
      })
      .catch((e: Error) => report({ kind: 'error', index, message: e.message }))
      .finally(() => waiting--);
    senders.set(signer, queue);
  };
  const wire = await startWireServer('127.0.0.1', 0, Math.min(data.maxPayload, runPayload) + CHANNEL_ITEM_OVERHEAD, take);
  process.on('message', (msg: RingControl) => {
    if (msg.kind === 'peers') {
      postNext = wireSender(msg.next, failWire);
      postPrev = wireSender(msg.prev, failWire);
    } else if (msg.kind === 'move') pending.push(msg.move);
    else if (msg.kind === 'slow') slowdown = msg.slowdown;
    else if (msg.kind === 'collect') {
      stage.close();
      void wire.close();
      // Once the record is through, the channel closes and the process ends by itself.
      process.send!({ kind: 'record', index, leaves, heads } satisfies RingReport, () => process.disconnect());
    } else if (msg.kind === 'start' && first) {
      // The prompt, in batches (the positions before the first sampled token).
      chain = chain.then(async () => {
        const prompt = job.promptTokens;
        for (let pos = 0; pos < promptEnd; ) {
          const n = Math.max(1, Math.min(data.promptBatch, promptEnd - pos));
          await run(pos, n, { tokens: prompt.slice(pos, pos + n) }, null);
          pos += n;
        }
      });
    }
  });
  report({ kind: 'ready', index, heldBytes: model.heldBytes ?? model.arena.usage().top, nLayers: model.config.nLayers, url: wire.url });
}

process.once('message', (msg: RingControl) => {
  if (msg.kind !== 'init') return;
  main(msg.data).catch((e: Error) => report({ kind: 'error', index: msg.data.index, message: e.message }));
});
