// The host extensions the coordinator calls (AO's extension idea, like WeaveDrive): each reads
// content-addressed data or computes, so every CU gives the same answer. A process calls them as
// `host.model(id)`, `host.job(json)`, `host.didAddress(did)`, and for verification `host.trace(json)`
// and `host.step(json)`; an error reaches it as a thrown Error (docs/network.md).
import { HostUnavailable, type Extensions } from '../ao/runtime.js';
import { completionText, encode, rangeProof, toHex, type Hash, type ModelConfig, type Tokenizer } from '../engine/index.js';
import type { TraceDocument } from '../node/work.js';
import {
  BOS, ProofError, accNext, createReferee, decodeOpening, describeJob, jobCommitment, leafHash, schedule, traceStart,
  type Job, type LeafPreimage, type OpeningJson, type Referee, type WeightSource,
} from '../proof/index.js';
import { ModelStoreError, checkChunk, chunksFor, readManifest, readModelHeader, type Manifest, type ModelHeader } from '../store/models.js';
import { ITEM_ID, tagValue, type Item } from '../store/items.js';
import type { Store } from '../store/store.js';
import { didAddress } from '../store/wallet.js';

export interface ModelInfo {
  id: string;
  name: string;
  contextLength: number;
  vocabSize: number;
  tokenizerHash: string;
}

export interface ModelRef {
  model: string;
  /** The manifest item the coordinator registered: every CU reads the same one. */
  manifest: string;
}

export interface JobInput extends ModelRef {
  prompt: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  /** A u64 as a decimal string. */
  seed: string;
}

export interface JobInfo {
  commitment: string;
  /** The prompt's tokens, BOS not counted. */
  promptTokens: number;
  /** Positions to run, prompt included (run.c's -n). */
  steps: number;
}

const MODEL_ID = /^[0-9a-f]{64}$/;
const U64 = /^(0|[1-9][0-9]{0,19})$/;

/** The prompt's own tokens, BOS not counted (what usage.prompt_tokens reports). */
export const promptTokenCount = (promptWithBos: number[]): number => promptWithBos.length - 1;

/** The job a request describes: the same function the node and the client use, so all three agree. */
export interface JobModel {
  modelId: string;
  tokenizerHash: string;
  tokenizer: Tokenizer;
  seqLen: number;
}

export function describeRequest(model: JobModel, input: Omit<JobInput, keyof ModelRef>): Job {
  if (typeof input.prompt !== 'string') throw new Error('prompt must be text');
  if (!Number.isInteger(input.maxTokens) || input.maxTokens < 1) throw new Error('max_tokens must be a whole number ≥ 1');
  if (typeof input.seed !== 'string' || !U64.test(input.seed) || BigInt(input.seed) >= 2n ** 64n) throw new Error('seed must be an integer in [0, 2^64)');
  if (typeof input.temperature !== 'number' || typeof input.topP !== 'number') throw new Error('temperature and top_p must be numbers');
  const prompt = encode(model.tokenizer, input.prompt);
  // BOS then n prompt tokens then max_tokens sampled ones: the last prompt position samples the
  // first new token, so n + max_tokens positions (run.c's -n) make exactly max_tokens.
  const steps = promptTokenCount(prompt) + input.maxTokens;
  const context = model.seqLen;
  if (steps > context) throw new Error(`prompt (${promptTokenCount(prompt)} tokens) + max_tokens (${input.maxTokens}) exceeds the model's context of ${context}`);
  return describeJob(model, { prompt, steps, sampling: { temperature: input.temperature, topp: input.topP }, seed: BigInt(input.seed) });
}

/** host.trace's input: the job (as for host.job), the task, and what the node revealed. */
export interface TraceInput extends JobInput {
  task: string;
  /** The AO address of the node whose trace this is: the item must be signed by it. */
  node: string;
  commitment: string;
  root: string;
  /** The trace item's id. */
  trace: string;
  /** The generated tokens (after the prompt, the BOS that ended generation not included), as Submit-Result gave them. */
  tokens: number[];
}

export interface TraceInfo {
  /** The schedule's step count N: the trace has N leaves and root acc[N]. */
  steps: number;
}

/** host.step's input: the job, the agreed acc[step − 1], the disputed step, and the opening as JSON text. */
export interface StepInput extends JobInput {
  agreed: string;
  step: number;
  /** encodeOpening's output, JSON.stringified (the message Data, passed through unparsed). */
  opening: string;
}

export interface StepInfo {
  acc: string;
  leaf: string;
  kind: 'layer' | 'head' | 'end';
}

const HEX64 = /^[0-9a-f]{64}$/;
const isU64 = (v: unknown): v is string => typeof v === 'string' && U64.test(v) && BigInt(v) < 2n ** 64n;
const isU32 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32;
const KIB = 1024;
const MIB = 1024 * KIB;

/**
 * The most bytes a trace document of this job may hold, checked before it is parsed: 70 bytes per
 * leaf (64 hex, quotes, comma) plus 48 per position (an RNG state of ≤ 20 digits and two token ids
 * of ≤ 11 characters, in `rngs`, `tokens` and the job's prompt, with their punctuation), plus
 * 64 KiB for the rest (task, job, commitment, root, field names).
 */
export const traceDocumentBound = (job: Job, steps: number): number => 70 * steps + 48 * job.steps + 64 * KIB;

/**
 * The longest opening text host.step parses: the K/V rows of one layer for every position and the
 * input x as base64 f32 ((positions·kvDim·2 + dim)·4 bytes, ×4/3), plus 1 MiB for the chain
 * segment and the preimages (about L + 2 leaves of 70 bytes each; 1 MiB is far more).
 */
export const openingBound = (job: Job, config: Pick<ModelConfig, 'dim' | 'kvDim'>): number =>
  Math.ceil(((job.steps * config.kvDim * 2 + config.dim) * 4 * 4) / 3) + MIB;

/** Referees kept, one per (model, manifest); each holds the verified tensors disputes touched. */
const REFEREES = 4;

/**
 * Thrown by the store-backed weight source when the referee asks for leaves not fetched yet: the
 * referee's read is synchronous, the store is not. host.step fetches them and runs the referee
 * again — the referee keeps a tensor only once its read succeeded, so a retry starts clean.
 */
class NeedLeaves extends Error {
  constructor(
    readonly from: number,
    readonly to: number,
  ) {
    super(`leaves ${from}..${to - 1} are not fetched yet`);
  }
}

/** A referee over the store's copy of one model, with the leaves fetched for the step in progress. */
interface RefereeEntry {
  referee: Referee;
  /** Fetches the chunk items holding leaves from..to−1, each leaf checked against the manifest. */
  fetch(from: number, to: number): Promise<void>;
  /** Drops the fetched leaves: the referee keeps what it verified, so nothing else must stay. */
  clear(): void;
  /** One step at a time: the fetched leaves are shared, and cleared after each step. */
  turn: Promise<unknown>;
}

function storeReferee(store: Store, manifest: Manifest): RefereeEntry {
  const hashes: Hash[] = manifest.leaves.map((h) => Buffer.from(h, 'hex'));
  const fetched = new Map<number, Uint8Array>();
  const source: WeightSource = {
    modelId: manifest.modelId,
    leafCount: hashes.length,
    read(from, to) {
      const leaves: Uint8Array[] = [];
      for (let i = from; i < to; i++) {
        const leaf = fetched.get(i);
        if (!leaf) throw new NeedLeaves(from, to);
        // A copy: a leaf is a view into its whole chunk item, which the referee must not pin (it
        // keeps the embedding chunks it read).
        leaves.push(new Uint8Array(leaf));
      }
      return { leaves, proof: rangeProof(hashes, from, to).map(toHex) };
    },
  };
  return {
    referee: createReferee(source),
    async fetch(from, to) {
      for (const chunk of chunksFor(manifest, from, to)) {
        if (chunk.sizes.every((_, k) => fetched.has(chunk.from + k))) continue;
        let item: Item | null;
        try {
          item = await store.get(chunk.id);
        } catch (e) {
          throw new HostUnavailable(`the store cannot give chunk ${chunk.id}: ${(e as Error).message}`);
        }
        // A missing or corrupt chunk of the pinned manifest is the same on every CU (ModelStoreError).
        checkChunk(manifest, chunk, item).forEach((leaf, k) => fetched.set(chunk.from + k, leaf));
      }
    },
    clear: () => fetched.clear(),
    turn: Promise.resolve(),
  };
}

/** An opening's JSON checked for shape before the referee sees it (a malformed one is a `shape` error). */
function openingFromText(text: string): OpeningJson {
  let o: OpeningJson;
  try {
    o = JSON.parse(text) as OpeningJson;
  } catch {
    throw new ProofError('shape', 'the opening is not JSON');
  }
  const fail = (why: string): never => {
    throw new ProofError('shape', `the opening ${why}`);
  };
  if (o === null || typeof o !== 'object' || Array.isArray(o)) fail('is not an object');
  if (!Number.isInteger(o.step) || !Number.isInteger(o.from)) fail('needs whole numbers step and from');
  if (typeof o.accBefore !== 'string' || !HEX64.test(o.accBefore)) fail('needs accBefore as 64 hex characters');
  if (!Array.isArray(o.leaves) || !o.leaves.every((l) => typeof l === 'string' && HEX64.test(l))) fail('needs leaves as a list of 64-hex hashes');
  if (o.preimages === null || typeof o.preimages !== 'object' || Array.isArray(o.preimages)) fail('needs preimages as an object by step');
  for (const [key, p] of Object.entries(o.preimages as Record<string, LeafPreimage>)) {
    if (!/^[1-9][0-9]{0,9}$/.test(key)) fail(`lists a preimage for "${key.slice(0, 20)}", not a step`);
    const ok =
      p !== null && typeof p === 'object' &&
      ((p.kind === 'layer' && isU32(p.pos) && isU32(p.layer) && [p.xHash, p.kvHash, p.kvChain].every((h) => typeof h === 'string' && HEX64.test(h))) ||
        (p.kind === 'head' && isU32(p.pos) && isU32(p.token) && isU64(p.rng)) ||
        (p.kind === 'end' && isU32(p.step)));
    if (!ok) fail(`preimage of step ${key} is not a layer, head or end preimage`);
  }
  for (const name of ['x', 'keys', 'values'] as const) {
    if (o[name] !== undefined && (typeof o[name] !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(o[name]!))) fail(`${name} is not base64`);
  }
  return o;
}

export function coordinatorExtensions(store: Store): Extensions {
  // A pinned manifest and its chunk are content-addressed, so a header read once holds forever.
  const headers = new Map<string, Promise<ModelHeader>>();
  const header = (ref: ModelRef): Promise<ModelHeader> => {
    if (!MODEL_ID.test(String(ref?.model))) return Promise.reject(new Error(`${String(ref?.model).slice(0, 80)} is not a model id`));
    if (!ITEM_ID.test(String(ref?.manifest))) return Promise.reject(new Error('the manifest must be an item id'));
    const key = `${ref.model} ${ref.manifest}`;
    let known = headers.get(key);
    if (!known) {
      known = readModelHeader(store, ref.model, ref.manifest).catch((e: Error) => {
        headers.delete(key);
        // Out of reach is not "not there": the message waits for the store rather than failing here only.
        throw e instanceof ModelStoreError ? e : new HostUnavailable(e.message);
      });
      headers.set(key, known);
    }
    return known;
  };
  const parse = <T>(json: string, what: string): T => {
    try {
      return JSON.parse(json) as T;
    } catch {
      throw new Error(`the ${what} is not JSON`);
    }
  };
  // Opening a model's referee reads its manifest; the referee then keeps the verified tensors it
  // read. At most REFEREES models are kept (least recently used goes), so memory is bounded by
  // REFEREES models' weights at the very worst — in practice by the layers disputes touched.
  const referees = new Map<string, Promise<RefereeEntry>>();
  const refereeFor = (ref: ModelRef): Promise<RefereeEntry> => {
    const key = `${ref.model} ${ref.manifest}`;
    let entry = referees.get(key);
    if (entry) referees.delete(key); // re-inserted below: the Map's order is the recency order
    else {
      const opening: Promise<RefereeEntry> = readManifest(store, ref.model, ref.manifest).then(
        (manifest) => storeReferee(store, manifest),
        (e: Error) => {
          if (referees.get(key) === opening) referees.delete(key);
          throw e instanceof ModelStoreError ? e : new HostUnavailable(e.message);
        },
      );
      entry = opening;
    }
    referees.set(key, entry);
    while (referees.size > REFEREES) referees.delete(referees.keys().next().value!);
    return entry;
  };

  /** The job of an input, recomputed from the model header exactly as host.job does. */
  const jobOf = async (input: JobInput): Promise<{ h: ModelHeader; job: Job }> => {
    const h = await header(input);
    return { h, job: describeRequest({ ...h, seqLen: h.config.config.seqLen }, input) };
  };

  return {
    async model(json) {
      const ref = parse<ModelRef>(json, 'model reference');
      const h = await header(ref);
      const info: ModelInfo = { id: ref.model, name: h.name, contextLength: h.config.config.seqLen, vocabSize: h.config.config.vocabSize, tokenizerHash: h.tokenizerHash };
      return JSON.stringify(info);
    },
    async job(json) {
      const input = parse<JobInput>(json, 'job');
      const h = await header(input);
      const job = describeRequest({ ...h, seqLen: h.config.config.seqLen }, input);
      const info: JobInfo = { commitment: jobCommitment(job), promptTokens: promptTokenCount(job.promptTokens), steps: job.steps };
      return JSON.stringify(info);
    },
    async decode(json) {
      const input = parse<ModelRef & { prompt: string; tokens: number[] }>(json, 'completion');
      const h = await header(input);
      if (typeof input.prompt !== 'string' || !Array.isArray(input.tokens)) throw new Error('a completion needs its prompt and a list of tokens');
      const prompt = encode(h.tokenizer, input.prompt);
      return completionText(h.tokenizer, prompt[prompt.length - 1], input.tokens);
    },
    didAddress: (did) => didAddress(did),

    async trace(json) {
      const input = parse<TraceInput>(json, 'trace reference');
      const { h, job } = await jobOf(input);
      return JSON.stringify(await checkTrace(store, h, job, input));
    },

    async step(json) {
      const input = parse<StepInput>(json, 'step');
      const { h, job } = await jobOf(input);
      const config = h.config.config;
      const steps = schedule(job, config.nLayers).steps;
      if (!Number.isInteger(input.step) || input.step < 1 || input.step > steps) throw new Error(`step must be a whole number in 1..${steps}`);
      if (typeof input.agreed !== 'string' || !HEX64.test(input.agreed)) throw new Error('agreed must be an accumulator (64 hex characters)');
      if (typeof input.opening !== 'string') throw new Error('the opening must be JSON text');
      const bound = openingBound(job, config);
      if (input.opening.length > bound) throw new Error(`shape: the opening is ${input.opening.length} characters, more than the ${bound} this job's openings can need`);
      const entry = await refereeFor(input);
      const run = entry.turn.then(() => resolveStep(entry, job, input));
      entry.turn = run.catch(() => undefined);
      return JSON.stringify(await run);
    },
  };
}

/** Runs the referee until it has every leaf the step reads (each fetch makes progress, or it stops). */
async function resolveStep(entry: RefereeEntry, job: Job, input: StepInput): Promise<StepInfo> {
  try {
    const opening = decodeOpening(openingFromText(input.opening));
    if (opening.step !== input.step) throw new ProofError('shape', `the opening is for step ${opening.step}, not step ${input.step}`);
    let last = '';
    for (;;) {
      try {
        const { acc, leaf, kind } = entry.referee.resolve(job, input.agreed, opening);
        return { acc, leaf, kind };
      } catch (e) {
        if (!(e instanceof NeedLeaves)) throw e;
        const asked = `${e.from} ${e.to}`;
        // The same leaves asked for twice: the manifest's chunks do not hold them (cannot happen
        // for a checked manifest, but a loop must end).
        if (asked === last) throw new ProofError('weights', `leaves ${e.from}..${e.to - 1} are not in the model's chunks`);
        last = asked;
        await entry.fetch(e.from, e.to);
      }
    }
  } catch (e) {
    if (e instanceof HostUnavailable) throw e;
    // One line, the proof code first: the coordinator tells a refused opening by it.
    if (e instanceof ProofError) throw new Error(`${e.code}: ${oneLine(e.message)}`);
    throw new Error(oneLine((e as Error).message));
  } finally {
    entry.clear();
  }
}

const oneLine = (text: string): string => text.replace(/\s+/g, ' ').trim();

/** host.trace's checks, in the order docs/network.md lists them; every failure is a one-line Error. */
async function checkTrace(store: Store, h: ModelHeader, job: Job, input: TraceInput): Promise<TraceInfo> {
  const commitment = jobCommitment(job);
  if (input.commitment !== commitment) throw new Error(`the job's commitment is ${commitment}, not ${String(input.commitment).slice(0, 64)}`);
  if (typeof input.task !== 'string' || typeof input.node !== 'string') throw new Error('a trace check needs the task and the node');
  if (typeof input.root !== 'string' || !HEX64.test(input.root)) throw new Error('the trace root must be 64 hex characters');
  if (typeof input.trace !== 'string' || !ITEM_ID.test(input.trace)) throw new Error('the trace must be an item id');
  const { vocabSize, nLayers } = h.config.config;
  const tokens = input.tokens;
  if (!Array.isArray(tokens) || tokens.length > job.steps || !tokens.every((t) => Number.isInteger(t) && t >= 0 && t < vocabSize)) {
    throw new Error(`the tokens must be a list of at most ${job.steps} token ids below ${vocabSize}`);
  }
  const id = input.trace;
  let item: Item | null;
  try {
    item = await store.get(id);
  } catch (e) {
    throw new HostUnavailable(`the store cannot give trace item ${id}: ${(e as Error).message}`);
  }
  if (!item) throw new Error(`trace item ${id} is not in the store`);
  if (item.address !== input.node) throw new Error(`trace item ${id} is signed by ${item.address}, not by the node ${input.node.slice(0, 64)}`);
  const wanted: [string, string][] = [['Type', 'Trace'], ['Task', input.task], ['Job-Commitment', commitment], ['Trace-Root', input.root]];
  for (const [name, value] of wanted) {
    if (tagValue(item, name) !== value) throw new Error(`trace item ${id}: its ${name} tag is not ${value.slice(0, 64)}`);
  }

  const sched = schedule(job, nLayers);
  const N = sched.steps;
  const bound = traceDocumentBound(job, N);
  if (item.data.length > bound) throw new Error(`trace item ${id} holds ${item.data.length} bytes, more than the ${bound} a trace of this job can need`);
  let doc: Partial<TraceDocument>;
  try {
    doc = JSON.parse(item.data.toString('utf8')) as Partial<TraceDocument>;
  } catch {
    throw new Error(`trace item ${id} is not JSON`);
  }
  const leaves = doc?.leaves;
  if (!Array.isArray(leaves) || leaves.length !== N || !leaves.every((l) => typeof l === 'string' && HEX64.test(l))) {
    throw new Error(`trace item ${id} must list ${N} leaves of 64 hex characters (the schedule's steps)`);
  }
  const rngs = doc.rngs;
  if (!Array.isArray(rngs) || rngs.length > N || !rngs.every(isU64)) throw new Error(`trace item ${id} must list its head steps' RNG states (u64 decimal strings)`);
  const acc = leaves.reduce(accNext, traceStart(commitment));
  if (acc !== input.root) throw new Error(`trace item ${id}: its leaves chain to ${acc}, not to the root ${input.root}`);

  // Walk the schedule as generation ran (src/proof/opening.ts decides "stopped" the same way): a
  // position whose token is BOS — a prompt token, or the one the head step before it chose — ends
  // generation, and every step from there is an end step.
  const prompt = job.promptTokens;
  let stopped = false;
  let heads = 0; // head steps that ran, i.e. rngs used
  let used = 0; // submitted tokens accounted for
  for (let s = 1; s <= N; s++) {
    const ref = sched.at(s);
    if (!stopped && ref.kind === 'layer' && ref.layer === 0 && ref.pos > 0 && ref.pos < prompt.length && prompt[ref.pos] === BOS) stopped = true;
    if (stopped) {
      if (leaves[s - 1] !== leafHash({ kind: 'end', step: s })) throw new Error(`trace item ${id}: step ${s} comes after generation stopped, but its leaf is not the end leaf`);
      continue;
    }
    if (ref.kind !== 'head') continue;
    // The token this head step sampled: the next submitted one, or BOS once they are used up.
    const token = used < tokens.length ? tokens[used] : BOS;
    if (heads >= rngs.length) throw new Error(`trace item ${id} lists ${rngs.length} RNG states, but more head steps ran`);
    const rng = rngs[heads++];
    if (leaves[s - 1] !== leafHash({ kind: 'head', pos: ref.pos, token, rng })) {
      const what = used < tokens.length ? `token ${used} (${token})` : 'BOS (the submitted tokens ended)';
      throw new Error(`trace item ${id}: step ${s} (head at position ${ref.pos}) is not the head leaf of ${what} with RNG state ${heads - 1}`);
    }
    if (token === BOS) stopped = true;
    else used++;
  }
  if (used !== tokens.length) throw new Error(`trace item ${id} accounts for ${used} generated tokens, ${tokens.length} were submitted`);
  if (heads !== rngs.length) throw new Error(`trace item ${id} lists ${rngs.length} RNG states, ${heads} head steps ran`);
  return { steps: N };
}
