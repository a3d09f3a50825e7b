// The host extensions the coordinator calls (AO's extension idea, like WeaveDrive): each reads
// content-addressed data or computes, so every CU gives the same answer. A process calls them as
// `host.model(id)`, `host.job(json)`, `host.didAddress(did)`, and for verification `host.trace(json)`
// and `host.step(json)`; an error reaches it as a thrown Error (docs/network.md).
//
// A process chooses their arguments, so each one is bounded before it is parsed (HOST_CAPS and
// ARGUMENT_CHARS), what they keep between calls is bounded in bytes (HostOptions), and each
// carries its price in compute ticks (hostCallTicks), which the runtime charges against the
// process's compute limit like its own work.
import { HostError, HostUnavailable } from '../ao/runtime.js';
import { createHash } from 'node:crypto';
import {
  completionText, encode, parseCanonicalConfig, parseCanonicalTokenizer, rangeProof, rowBytes, toHex, type CanonicalConfig, type Hash, type ModelConfig, type Tokenizer,
} from '../engine/index.js';
import type { TraceDocument } from '../node/work.js';
import {
  BOS, ProofError, accNext, accumulators, createReferee, decodeOpening, describeJob, jobCommitment, leafHash, schedule, traceStart,
  type Job, type LeafPreimage, type OpeningJson, type Referee, type WeightSource,
} from '../proof/index.js';
import { ModelStoreError, checkChunk, chunksFor, readManifest, type Manifest, type ModelHeader } from '../store/models.js';
import { ITEM_ID, tagValue, type Item } from '../store/items.js';
import type { Store } from '../store/store.js';
import { didAddress } from '../store/wallet.js';
import { HOST_CAPS, type ServingProfile } from './protocol.js';
import { MAX_PLACEMENT_NODES } from '../pipeline/placement.js';
import { checkStageRecords } from '../pipeline/net-stage.js';

export interface ModelInfo {
  id: string;
  name: string;
  contextLength: number;
  vocabSize: number;
  tokenizerHash: string;
  /** What a node needs to hold to serve it: the weights as stored, and a K/V cache for the whole context. */
  bytes: number;
  /** The same per part, for splitting it over a pipeline's stages (servingProfile). */
  profile: ServingProfile;
}

/** A canonical tensor's bytes as stored. */
const storedBytes = (t: CanonicalConfig['tensors'][number]): number => (t.shape.length > 1 ? t.shape[0] : 1) * rowBytes(t.dtype, t.shape[t.shape.length - 1]);

/**
 * A model's weights as its canonical form stores them (every tensor's bytes; a classifier tied to
 * the embedding is its own tensor there, so it counts twice: an upper bound) plus a K/V cache of
 * f32 for the whole context.
 */
export function servingBytes(c: CanonicalConfig): number {
  const { seqLen, kvDim, nLayers } = c.config;
  return c.tensors.reduce((n, t) => n + storedBytes(t), 0) + 4 * 2 * seqLen * kvDim * nLayers;
}

/** servingBytes part by part: by tensor name (GGUF's, as canonicalTensors lists them). */
export function servingProfile(c: CanonicalConfig): ServingProfile {
  const { seqLen, kvDim, nLayers, dim } = c.config;
  const layerBytes: number[] = new Array(nLayers).fill(4 * 2 * seqLen * kvDim);
  let embedBytes = 0;
  let headBytes = 0;
  for (const t of c.tensors) {
    const bytes = storedBytes(t);
    const layer = /^blk\.([0-9]+)\./.exec(t.name);
    if (layer && Number(layer[1]) < nLayers) layerBytes[Number(layer[1])] += bytes;
    else if (t.name === 'token_embd.weight') embedBytes += bytes;
    else if (t.name === 'rope_freqs.weight') for (let l = 0; l < nLayers; l++) layerBytes[l] += bytes;
    else headBytes += bytes;
  }
  return { nLayers, layerBytes, embedBytes, headBytes, residualBytes: 4 * dim };
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

/**
 * The prompt's own tokens, a leading BOS not counted (what usage.prompt_tokens reports). A
 * tokenizer that adds no BOS (Qwen2's) starts the prompt with its first own token.
 */
export const promptTokenCount = (prompt: number[], bosId: number): number => (prompt[0] === bosId ? prompt.length - 1 : prompt.length);

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
  const steps = prompt.length - 1 + input.maxTokens;
  const context = model.seqLen;
  if (steps > context) throw new Error(`prompt (${promptTokenCount(prompt, model.tokenizer.bosId)} tokens) + max_tokens (${input.maxTokens}) exceeds the model's context of ${context}`);
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
  /** A pipelined participant: its stages and the record item each signed; `node` is the last stage's. */
  stages?: { node: string; first: number; end: number; record: string }[];
  /** The lease's end (a stage record is bound to it). */
  leaseEnd?: number;
  /** Accumulator indices (0..N) to answer acc[p] for, from the checked trace; at most 64. */
  points?: number[];
}

export interface TraceInfo {
  /** The schedule's step count N: the trace has N leaves and root acc[N]. */
  steps: number;
  /** With `points`: the checked trace's accumulators acc[p] at each (a pipeline's dispute rounds are its stored trace's). */
  accs?: string[];
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
  /** The weight bytes the step multiplies by (read, and verified the first time): what prices it. */
  weightBytes: number;
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
export const openingBound = (job: Pick<Job, 'steps'>, config: Pick<ModelConfig, 'dim' | 'kvDim'>): number =>
  Math.ceil(((job.steps * config.kvDim * 2 + config.dim) * 4 * 4) / 3) + MIB;

// ---- what a call may carry ----

export type ExtensionName = 'model' | 'job' | 'decode' | 'didAddress' | 'trace' | 'step';

/**
 * The longest argument text each extension reads, checked before it is parsed (so a process cannot
 * make the host parse megabytes to be told they were too many). Derived from HOST_CAPS: a prompt
 * of P bytes is at most 6·P characters of JSON (JSON.stringify writes a control character as
 * \u00XX), a token id at most 11 characters with its comma, and an opening's text, itself JSON,
 * at most doubles when it is quoted again (every `"` becomes `\"`). 1–2 KiB cover the ids, the
 * hashes, the numbers and the field names.
 */
export const ARGUMENT_CHARS: Readonly<Record<ExtensionName, number>> = {
  model: KIB,
  didAddress: 256,
  job: 6 * HOST_CAPS.promptBytes + KIB,
  decode: 6 * HOST_CAPS.promptBytes + 12 * HOST_CAPS.tokens + KIB,
  trace: 6 * HOST_CAPS.promptBytes + 12 * HOST_CAPS.tokens + 2 * KIB,
  step: 6 * HOST_CAPS.promptBytes + 2 * HOST_CAPS.openingChars + 2 * KIB,
};

/** The argument, refused (one line) when it is longer than the extension ever needs. */
function capped(name: ExtensionName, argument: string): string {
  if (typeof argument !== 'string') throw new Error(`the argument of host.${name} must be text`);
  const cap = ARGUMENT_CHARS[name];
  if (argument.length > cap) throw new Error(`the argument is ${argument.length} characters, more than the ${cap} this call takes`);
  return argument;
}

/** The prompt of a parsed request, refused over HOST_CAPS.promptBytes before anything tokenises it. */
function promptOf(input: { prompt?: unknown }): string {
  if (typeof input.prompt !== 'string') throw new Error('prompt must be text');
  const bytes = Buffer.byteLength(input.prompt, 'utf8');
  if (bytes > HOST_CAPS.promptBytes) throw new Error(`the prompt is ${bytes} bytes of UTF-8, more than the ${HOST_CAPS.promptBytes} a host call takes`);
  return input.prompt;
}

/** A token list of at most `most` entries (the model's context, and never over HOST_CAPS.tokens). */
function tokenListOf(tokens: unknown, most: number): number[] {
  const bound = Math.min(most, HOST_CAPS.tokens);
  if (!Array.isArray(tokens)) throw new Error('the tokens must be a list of token ids');
  if (tokens.length > bound) throw new Error(`the tokens must be a list of at most ${bound} token ids (the model's context), not ${tokens.length}`);
  return tokens as number[];
}

// ---- what a call costs ----

/**
 * What each unit of host work costs in compute ticks, the runtime's unit (src/ao/runtime.ts: one
 * interrupt tick is ~10,000 QuickJS steps). Calibrated once on the 2-core development machine
 * against a plain QuickJS loop (`x = (x + i) | 0`, 5,000 iterations a tick; 1.5–1.9 ms a tick
 * there, busy with other work) timed in the same run, so that a host call is charged about what
 * QuickJS would have done in the same time. Best of 3, ms → ticks charged (charged ÷ used):
 *   - host.model, header not cached: stories260K (512-entry tokenizer, 1 MiB chunk hashed) 8.0 →
 *     6 (1.1); a 32,000-entry tokenizer 59–70 → 37 (0.8–0.9).
 *   - tokenising (host.job, and the prompt again in host.decode, host.trace, host.step), either
 *     tokenizer: 4 KiB 17–45 → 17 (0.6–1.5); 64 KiB 362–502 → 257 (0.8–1.1).
 *   - host.decode of 200 tokens: 0.3–0.5 → 3 (the call's floor).
 *   - host.trace of 1,220–1,424 leaves (the item's JSON parse and its sha256 chain): 6–13 → 7–8 (0.8–1.9).
 *   - host.step, cold (the weights it multiplies read and hashed): stories260K 13–36 → 21;
 *     stories15M shape, a layer (4 MB, opening 16–310 KB) 103–181 → 50–54 (0.4–0.8), the
 *     classifier (37 MB) 376 → 301 (1.2). Warm (weights kept) the same steps take 0.5–6 ms:
 *     a step is charged as if cold every time, since what a referee kept is not the same on every CU.
 * A price is a function of the argument and the result only, never of what a cache holds or how
 * long the call took, so every CU charges the same.
 */
export const HOST_TICKS = {
  /** Every call: crossing into the host and back. */
  call: 1,
  /** A model header read and checked (config and tokenizer chunk). */
  header: 4,
  vocabPerTick: 1024,
  /** A byte-level BPE tokenizer's merges (a rank table entry each). */
  mergesPerTick: 4096,
  promptBytesPerTick: 256,
  tokensPerTick: 4096,
  leavesPerTick: 256,
  /** A referee step's fixed part (the opening's checks, the step's kernels, an embedding chunk). */
  step: 16,
  openingCharsPerTick: 64 * KIB,
  weightBytesPerTick: 128 * KIB,
} as const;

/** What an argument that parsed holds, for pricing; an argument that does not parse is priced by its length. */
function sizesOf(argument: string): { promptBytes: number; tokens: number; openingChars: number } {
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(argument);
  } catch {
    // A refused call did no work past its parse.
  }
  if (parsed === null || typeof parsed !== 'object') return { promptBytes: 0, tokens: 0, openingChars: 0 };
  const input = parsed as { prompt?: unknown; tokens?: unknown; opening?: unknown };
  return {
    promptBytes: typeof input.prompt === 'string' ? Buffer.byteLength(input.prompt, 'utf8') : 0,
    tokens: Array.isArray(input.tokens) ? input.tokens.length : 0,
    openingChars: typeof input.opening === 'string' ? input.opening.length : 0,
  };
}

const per = (amount: number, unit: number): number => Math.ceil(amount / unit);

/**
 * The compute ticks host.<name>(argument) costs when it answered `result` (undefined: it threw).
 * Deterministic: sizes only (see HOST_TICKS for the calibration). An argument over its cap costs
 * one call, as it was refused before any work; a call that threw later is priced by its argument
 * alone (the prompt it tokenised), since the counts a result gives — vocabulary, leaves, weights —
 * are not known.
 */
export function hostCallTicks(name: string, argument: string, result?: string): number {
  const { call } = HOST_TICKS;
  if (!(name in ARGUMENT_CHARS) || typeof argument !== 'string' || argument.length > ARGUMENT_CHARS[name as ExtensionName]) return call;
  const out = (): Record<string, unknown> => {
    try {
      const parsed = result === undefined ? null : (JSON.parse(result) as unknown);
      return parsed !== null && typeof parsed === 'object' ? (parsed as Record<string, unknown>) : {};
    } catch {
      return {};
    }
  };
  const count = (v: unknown): number => (typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : 0);
  switch (name as ExtensionName) {
    case 'didAddress':
      return call;
    case 'model':
      return call; // its work is the header: headerTicks
    default:
      break;
  }
  const { promptBytes, tokens, openingChars } = sizesOf(argument);
  const prompt = per(promptBytes, HOST_TICKS.promptBytesPerTick);
  switch (name as ExtensionName) {
    case 'job':
      return call + prompt;
    case 'decode':
      return call + prompt + per(tokens, HOST_TICKS.tokensPerTick);
    case 'trace':
      return call + prompt + per(count(out().steps), HOST_TICKS.leavesPerTick);
    default: // step
      return call + HOST_TICKS.step + prompt + per(openingChars, HOST_TICKS.openingCharsPerTick) + per(count(out().weightBytes), HOST_TICKS.weightBytesPerTick);
  }
}

/** What a call did that its argument and result do not show: the price of the model header it read. */
interface Meter {
  headerTicks: number;
}

/**
 * The price of reading a model header, charged to every call that reads one, cached or not (a
 * price never depends on what a CU's cache holds): by its vocabulary and, for byte-level BPE, its
 * merges — a 128,000-token Llama 3 tokenizer with 280,000 merges costs 4 + 126 + 69 ticks.
 */
export function headerTicks(c: Pick<ModelContent, 'tokenizer'>): number {
  const t = c.tokenizer;
  const merges = t.kind === 'bpe' ? t.merges.length / 2 : 0;
  return HOST_TICKS.header + per(t.vocab.length, HOST_TICKS.vocabPerTick) + per(merges, HOST_TICKS.mergesPerTick);
}

// ---- what the host keeps between calls ----

export interface HostOptions {
  /** Bytes of model headers kept between calls: each model's parsed config and tokenizer, and each manifest checked to hold them. */
  headerCacheBytes?: number;
  /** Bytes of verified weights (and manifests) the referees keep between steps, all models together. */
  refereeCacheBytes?: number;
}

/**
 * 256 MiB of headers is four Llama-3-sized byte-level BPE tokenizers (~60 MB each), forty-five
 * 32,000-entry SentencePiece ones, or thousands of small ones; 512 MiB of
 * referees holds a few small models whole, or the layers of a big one that disputes touch. Neither
 * changes an answer (everything kept can be read again), only how often the store is read.
 */
export const DEFAULT_HOST_OPTIONS: Required<HostOptions> = { headerCacheBytes: 256 * MIB, refereeCacheBytes: 512 * MIB };

export interface CacheStats {
  entries: number;
  /** The estimated bytes the entries hold; never more than the budget once a call has returned. */
  bytes: number;
  budget: number;
}

export interface HostCacheStats {
  headers: CacheStats;
  referees: CacheStats;
}

/**
 * Least recently used entries go first once the bytes they are estimated to hold pass the budget.
 * A value may be a promise whose size is known only once it resolves: it weighs nothing until
 * resize() gives its weight. An entry larger than the whole budget is not kept at all.
 */
class ByteBudgetCache<V> {
  // A Map iterates in insertion order, and a touched entry is re-inserted: the first key is the least recent.
  private readonly entries = new Map<string, { value: V; bytes: number }>();
  private total = 0;
  constructor(readonly budget: number) {}

  get(key: string): V | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    this.entries.delete(key);
    this.entries.set(key, e);
    return e.value;
  }

  set(key: string, value: V, bytes: number): void {
    this.delete(key);
    // Kept, it would only push everything else out before going itself.
    if (bytes > this.budget) return;
    this.entries.set(key, { value, bytes });
    this.total += bytes;
    this.fit();
  }

  /** Gives an entry its (new) weight, if it still holds `value`, and evicts down to the budget. */
  resize(key: string, value: V, bytes: number): void {
    const e = this.entries.get(key);
    if (!e || e.value !== value) return;
    this.total += bytes - e.bytes;
    e.bytes = bytes;
    if (bytes > this.budget) this.delete(key);
    this.fit();
  }

  /** Drops the entry (only if it still holds `value`, when given). */
  delete(key: string, value?: V): void {
    const e = this.entries.get(key);
    if (!e || (value !== undefined && e.value !== value)) return;
    this.entries.delete(key);
    this.total -= e.bytes;
  }

  private fit(): void {
    for (const [key, e] of this.entries) {
      if (this.total <= this.budget) break;
      this.entries.delete(key);
      this.total -= e.bytes;
    }
  }

  stats(): CacheStats {
    return { entries: this.entries.size, bytes: this.total, budget: this.budget };
  }
}

/** What a model id pins of its header: the config and tokenizer leaves, parsed, whichever manifest they were read through. */
interface ModelContent {
  config: CanonicalConfig;
  tokenizer: Tokenizer;
  /** sha256 of the tokenizer leaf, as in the job commitment. */
  tokenizerHash: string;
}

/**
 * What parsed model content holds in memory, estimated from its parts. Measured with
 * process.memoryUsage() over 20 copies of the 32,000-entry llama2 tokenizer (177,865 bytes of
 * pieces): 5.36 MB each (this estimate: 5.61 MB); ~150 bytes of V8 heap per piece (its Uint8Array
 * view, the index Map's entry and latin1 key string), the pieces twice (their buffer and the key
 * strings), the f32 scores; the config's tensor list is ~200 bytes a tensor.
 */
export function contentBytes(c: Pick<ModelContent, 'config' | 'tokenizer'>): number {
  const t = c.tokenizer;
  let pieces = 0;
  for (const piece of t.vocab) pieces += piece.length;
  // The parsed tokenizer keeps its leaf (8 bytes of score and length per token beside the pieces).
  const common = 4 * KIB + 168 * t.vocab.length + 2 * pieces + t.scores.byteLength + 200 * c.config.tensors.length;
  if (t.kind !== 'bpe') return common;
  // A BPE tokenizer also keeps a decoded piece per token (a view each), its types, the rank table
  // and the leaf it was parsed from: Llama 3's (128,256 tokens, 280,147 merges) measured 56 MB, Qwen2.5's
  // (151,665 tokens, 151,387 merges) 55 MB; this estimate gives 59 and 64 MB.
  return common + 200 * t.vocab.length + 32 * (t.merges.length / 2) + pieces;
}

/** What a manifest checked to hold its model's header leaves weighs in the cache: its name and key. */
const manifestBytes = (key: string, name: string): number => 256 + 2 * (key.length + name.length);

/** The longest model name a manifest may give: the coordinator keeps it in its state. */
const MODEL_NAME_CHARS = 256;

/**
 * A manifest and its model's config and tokenizer leaves (0 and 1), each leaf checked against the
 * manifest's leaf hashes, which readManifest checked against the model id. A store out of reach is
 * HostUnavailable; what the store holds (missing, corrupt, not this model's) is a ModelStoreError,
 * the same on every CU.
 */
async function headerLeaves(store: Store, modelId: string, manifestId: string): Promise<{ manifest: Manifest; config: Buffer; tokenizer: Buffer }> {
  let manifest: Manifest;
  try {
    manifest = await readManifest(store, modelId, manifestId);
  } catch (e) {
    throw e instanceof ModelStoreError ? e : new HostUnavailable(`the store cannot give manifest ${manifestId}: ${(e as Error).message}`);
  }
  const leaves = new Map<number, Buffer>();
  for (const chunk of chunksFor(manifest, 0, 2)) {
    const item = await storeItem(store, chunk.id, 'chunk');
    checkChunk(manifest, chunk, item).forEach((leaf, k) => leaves.set(chunk.from + k, leaf));
  }
  const config = leaves.get(0);
  const tokenizer = leaves.get(1);
  if (!config || !tokenizer) throw new ModelStoreError(`model ${modelId} has no tokenizer leaf`);
  return { manifest, config, tokenizer };
}

/** The config and tokenizer of checked leaves; a leaf the id pins but that does not parse is the same error on every CU. */
function parseContent(modelId: string, leaves: { config: Buffer; tokenizer: Buffer }): ModelContent {
  try {
    const config = parseCanonicalConfig(leaves.config);
    const tokenizer = parseCanonicalTokenizer(leaves.tokenizer); // its own copy of the leaf, not views of the chunk item
    // A token id the embedding has no row for would be committed to and then read past the tensor.
    if (tokenizer.vocab.length !== config.config.vocabSize) {
      throw new Error(`the tokenizer has ${tokenizer.vocab.length} tokens, the config's vocabulary ${config.config.vocabSize}`);
    }
    return { config, tokenizer, tokenizerHash: createHash('sha256').update(leaves.tokenizer).digest('hex') };
  } catch (e) {
    throw new ModelStoreError(`model ${modelId}: ${(e as Error).message}`);
  }
}

/**
 * A referee's weight: its WebAssembly arena's first two pages and the config (256 KiB), its
 * manifest's leaf hashes (hex and bytes, ~200 a leaf), and what it has verified (f32, or Q8_0 with
 * its f32 scales: at most 9/8 of the bytes read).
 */
const refereeBytes = (leaves: number, verified: number): number => 256 * KIB + 200 * leaves + Math.ceil((verified * 9) / 8);

/** An extension with its price: the runtime charges `ticks(argument, result)` against the compute limit. */
export interface PricedExtension {
  (argument: string): string | Promise<string>;
  /** The price its argument and result show. */
  ticks(argument: string, result?: string): number;
  /** The call and its whole price: `ticks` plus the model header it read (see headerTicks). */
  priced(argument: string): Promise<{ value: string; ticks: number }>;
}

export type CoordinatorExtensions = Record<ExtensionName, PricedExtension>;

// Kept beside the extensions, not on them: the runtime offers every own key of the object to the
// process, and what a CU's caches hold is not the same on every CU.
const cacheStats = new WeakMap<object, () => HostCacheStats>();

/** What the caches of coordinatorExtensions() hold now (headers, referees): their entries, estimated bytes and budgets. */
export function hostCacheStats(extensions: object): HostCacheStats {
  const stats = cacheStats.get(extensions);
  if (!stats) throw new Error('these extensions were not made by coordinatorExtensions()');
  return stats();
}
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
  /** What it holds, estimated (refereeBytes): its manifest's hashes and every leaf it was given to verify and keep. */
  bytes(): number;
}

function storeReferee(store: Store, manifest: Manifest): RefereeEntry {
  const hashes: Hash[] = manifest.leaves.map((h) => Buffer.from(h, 'hex'));
  const fetched = new Map<number, Uint8Array>();
  let verified = 0;
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
      // Every leaf read is one the referee verifies and keeps (a tensor, an embedding chunk) or parses once (the config).
      for (const leaf of leaves) verified += leaf.length;
      return { leaves, proof: rangeProof(hashes, from, to).map(toHex) };
    },
  };
  return {
    referee: createReferee(source),
    async fetch(from, to) {
      for (const chunk of chunksFor(manifest, from, to)) {
        if (chunk.sizes.every((_, k) => fetched.has(chunk.from + k))) continue;
        const item = await storeItem(store, chunk.id, 'chunk');
        // A missing or corrupt chunk of the pinned manifest is the same on every CU (ModelStoreError).
        checkChunk(manifest, chunk, item).forEach((leaf, k) => fetched.set(chunk.from + k, leaf));
      }
    },
    clear: () => fetched.clear(),
    turn: Promise.resolve(),
    bytes: () => refereeBytes(hashes.length, verified),
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

/** A call's argument parsed, once it is within its cap: a JSON object, or a one-line error. */
function requestOf<T extends object>(name: ExtensionName, argument: string, what: string): T {
  const text = capped(name, argument);
  let input: unknown;
  try {
    input = JSON.parse(text);
  } catch {
    throw new Error(`the ${what} is not JSON`);
  }
  if (input === null || typeof input !== 'object' || Array.isArray(input)) throw new Error(`the ${what} must be a JSON object`);
  return input as T;
}

/** The job of a request, from the model header exactly as host.job computes it. */
const jobFrom = (h: ModelHeader, input: JobInput): Job => describeRequest({ ...h, seqLen: h.config.config.seqLen }, input);

export function coordinatorExtensions(store: Store, options: HostOptions = {}): CoordinatorExtensions {
  const headerBudget = options.headerCacheBytes ?? DEFAULT_HOST_OPTIONS.headerCacheBytes;
  const refereeBudget = options.refereeCacheBytes ?? DEFAULT_HOST_OPTIONS.refereeCacheBytes;
  // Content-addressed all of it: a model id pins its config and tokenizer, whichever manifest they
  // are read through, so they are parsed once per model and shared by its manifests (a thousand
  // re-signed manifests of one model are one tokenizer); each manifest is still checked once to
  // hold them (its chunks can be missing or corrupt where another's are not). Both kinds of entry
  // share one byte budget. Evicting either changes no answer, only how often the store is read.
  const headers = new ByteBudgetCache<ModelContent | string>(headerBudget);
  const header = async (ref: ModelRef, meter: Meter): Promise<ModelHeader> => {
    const modelId = String(ref.model);
    const manifestId = String(ref.manifest);
    if (!MODEL_ID.test(modelId)) throw new Error(`${modelId.slice(0, 80)} is not a model id`);
    if (!ITEM_ID.test(manifestId)) throw new Error('the manifest must be an item id');
    const checkedKey = `${modelId} ${manifestId}`;
    const contentKey = modelId;
    let name = headers.get(checkedKey) as string | undefined;
    let read: Awaited<ReturnType<typeof headerLeaves>> | null = null;
    if (name === undefined) {
      read = await headerLeaves(store, modelId, manifestId);
      const given: unknown = read.manifest.name;
      if (typeof given !== 'string' || given.length > MODEL_NAME_CHARS) throw new ModelStoreError(`manifest ${manifestId}: its name must be text of at most ${MODEL_NAME_CHARS} characters`);
      name = given;
      headers.set(checkedKey, name, manifestBytes(checkedKey, name));
    }
    let content = headers.get(contentKey) as ModelContent | undefined;
    if (!content) {
      read ??= await headerLeaves(store, modelId, manifestId);
      content = parseContent(modelId, read);
      // Larger than the whole budget: answered, not kept.
      headers.set(contentKey, content, contentBytes(content));
    }
    meter.headerTicks = headerTicks(content);
    return { modelId, name, ...content };
  };

  // Opening a model's referee reads its manifest; the referee then keeps the verified tensors it
  // read. Each is weighed by what it holds (refereeBytes) after every step, and the least recently
  // used go once together they pass the budget: a referee made again verifies again, and answers
  // the same.
  const referees = new ByteBudgetCache<Promise<RefereeEntry>>(refereeBudget);
  const refereeFor = (key: string, ref: ModelRef): Promise<RefereeEntry> => {
    const known = referees.get(key);
    if (known) return known;
    const opening: Promise<RefereeEntry> = readManifest(store, ref.model, ref.manifest).then(
      (manifest) => {
        const entry = storeReferee(store, manifest);
        referees.resize(key, opening, entry.bytes());
        return entry;
      },
      (e: Error) => {
        referees.delete(key, opening);
        throw e instanceof ModelStoreError ? e : new HostUnavailable(e.message);
      },
    );
    referees.set(key, opening, 0);
    return opening;
  };

  // Every call that reads a model header pays for parsing it, cached or not (headerTicks): a
  // process cannot make the CU parse a thousand tokenizers for the price of a thousand prompts.
  const priced = (name: ExtensionName, fn: (argument: string, meter: Meter) => string | Promise<string>): PricedExtension => {
    const ticks = (argument: string, result?: string): number => hostCallTicks(name, argument, result);
    const call = (argument: string): string | Promise<string> => fn(argument, { headerTicks: 0 });
    const pricedCall = async (argument: string): Promise<{ value: string; ticks: number }> => {
      const meter: Meter = { headerTicks: 0 };
      try {
        const value = await fn(argument, meter);
        return { value, ticks: ticks(argument, value) + meter.headerTicks };
      } catch (e) {
        if (e instanceof HostUnavailable) throw e;
        throw new HostError((e as Error).message, ticks(argument) + meter.headerTicks);
      }
    };
    return Object.assign(call, { ticks, priced: pricedCall });
  };

  const extensions: CoordinatorExtensions = {
    model: priced('model', async (argument, meter) => {
      const ref = requestOf<ModelRef>('model', argument, 'model reference');
      const h = await header(ref, meter);
      const info: ModelInfo = { id: ref.model, name: h.name, contextLength: h.config.config.seqLen, vocabSize: h.config.config.vocabSize, tokenizerHash: h.tokenizerHash, bytes: servingBytes(h.config), profile: servingProfile(h.config) };
      return JSON.stringify(info);
    }),

    job: priced('job', async (argument, meter) => {
      const input = requestOf<JobInput>('job', argument, 'job');
      promptOf(input);
      const h = await header(input, meter);
      const job = jobFrom(h, input);
      const info: JobInfo = { commitment: jobCommitment(job), promptTokens: promptTokenCount(job.promptTokens, h.tokenizer.bosId), steps: job.steps };
      return JSON.stringify(info);
    }),

    decode: priced('decode', async (argument, meter) => {
      const input = requestOf<ModelRef & { prompt: string; tokens: number[] }>('decode', argument, 'completion');
      const prompt = promptOf(input);
      const h = await header(input, meter);
      const tokens = tokenListOf(input.tokens, h.config.config.seqLen);
      const encoded = encode(h.tokenizer, prompt);
      return completionText(h.tokenizer, encoded[encoded.length - 1], tokens);
    }),

    didAddress: priced('didAddress', (did) => didAddress(capped('didAddress', did))),

    trace: priced('trace', async (argument, meter) => {
      const input = requestOf<TraceInput>('trace', argument, 'trace reference');
      promptOf(input);
      const h = await header(input, meter);
      // What needs no tokens first: the prompt is tokenised only for a well-formed check.
      checkTraceInput(input, h.config.config.seqLen);
      return JSON.stringify(await checkTrace(store, h, jobFrom(h, input), input));
    }),

    step: priced('step', async (argument, meter) => {
      const input = requestOf<StepInput>('step', argument, 'step');
      promptOf(input);
      if (typeof input.opening !== 'string') throw new Error('the opening must be JSON text');
      const length = input.opening.length;
      if (length > HOST_CAPS.openingChars) throw new Error(`shape: the opening is ${length} characters, more than the ${HOST_CAPS.openingChars} a message can carry`);
      const h = await header(input, meter);
      const config = h.config.config;
      // Before tokenising the prompt: no job of this model runs more positions than its context.
      const most = openingBound({ steps: config.seqLen }, config);
      if (length > most) throw new Error(`shape: the opening is ${length} characters, more than the ${most} an opening of this model can need`);
      const job = jobFrom(h, input);
      const steps = schedule(job, config.nLayers).steps;
      if (!Number.isInteger(input.step) || input.step < 1 || input.step > steps) throw new Error(`step must be a whole number in 1..${steps}`);
      if (typeof input.agreed !== 'string' || !HEX64.test(input.agreed)) throw new Error('agreed must be an accumulator (64 hex characters)');
      const bound = openingBound(job, config);
      if (length > bound) throw new Error(`shape: the opening is ${length} characters, more than the ${bound} this job's openings can need`);
      const key = `${input.model} ${input.manifest}`;
      const opened = refereeFor(key, input);
      const entry = await opened;
      const run = entry.turn.then(() => resolveStep(entry, job, input));
      entry.turn = run.catch(() => undefined);
      try {
        return JSON.stringify(await run);
      } finally {
        // What the step verified now weighs on the budget (a referee over the whole budget is dropped).
        referees.resize(key, opened, entry.bytes());
      }
    }),
  };
  cacheStats.set(extensions, () => ({ headers: headers.stats(), referees: referees.stats() }));
  return extensions;
}

/** Runs the referee until it has every leaf the step reads (each fetch makes progress, or it stops). */
async function resolveStep(entry: RefereeEntry, job: Job, input: StepInput): Promise<StepInfo> {
  try {
    const opening = decodeOpening(openingFromText(input.opening));
    if (opening.step !== input.step) throw new ProofError('shape', `the opening is for step ${opening.step}, not step ${input.step}`);
    let last = '';
    for (;;) {
      try {
        // Only what every CU computes alike reaches the process: the referee's clock readings
        // (fetchMs, checkMs, executeMs) stay here, and weightBytes counts every tensor the step
        // reads, cached or not.
        const { acc, leaf, kind, weightBytes } = entry.referee.resolve(job, input.agreed, opening);
        return { acc, leaf, kind, weightBytes };
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

/** host.trace's checks of its input that need no job (so no tokenising): one-line Errors. */
function checkTraceInput(input: TraceInput, contextLength: number): void {
  if (typeof input.task !== 'string' || typeof input.node !== 'string') throw new Error('a trace check needs the task and the node');
  if (typeof input.root !== 'string' || !HEX64.test(input.root)) throw new Error('the trace root must be 64 hex characters');
  if (typeof input.trace !== 'string' || !ITEM_ID.test(input.trace)) throw new Error('the trace must be an item id');
  tokenListOf(input.tokens, contextLength);
}

/**
 * An item from the store; null when the store does not hold it. A store that cannot answer is
 * HostUnavailable (the CU tries the message again), never an answer the process would see.
 */
async function storeItem(store: Store, id: string, what: string): Promise<Item | null> {
  try {
    return await store.get(id);
  } catch (e) {
    throw new HostUnavailable(`the store cannot give ${what} ${id}: ${(e as Error).message}`);
  }
}

/** A pipelined trace: every stage's record exists and vouches for its steps (net-stage.ts checkStageRecords). */
async function checkStages(store: Store, job: Job, nLayers: number, leaves: string[], tokens: number[], input: TraceInput): Promise<void> {
  const stages = input.stages!;
  const chained = Array.isArray(stages) && stages.length >= 2 && stages.length <= MAX_PLACEMENT_NODES && stages.every((st, i) =>
    typeof st?.node === 'string' && typeof st.record === 'string' && ITEM_ID.test(st.record) && Number.isInteger(st.first) && Number.isInteger(st.end) && st.first === (i === 0 ? 0 : stages[i - 1].end) && st.end > st.first);
  if (!chained || stages[stages.length - 1].end !== nLayers || stages[stages.length - 1].node !== input.node || !Number.isInteger(input.leaseEnd)) {
    throw new Error(`the stages must split the ${nLayers} layers in order, the last being the node's, each with a record id`);
  }
  const items: Item[] = [];
  for (const st of stages) {
    const item = await storeItem(store, st.record, 'stage record');
    if (!item) throw new Error(`stage record ${st.record} is not in the store`);
    items.push(item);
  }
  const lease = { task: input.task, commitment: input.commitment, leaseEnd: input.leaseEnd!, nodes: stages.map((st) => st.node) };
  try {
    checkStageRecords(job, nLayers, leaves, tokens, lease, stages.map((st) => ({ first: st.first, end: st.end })), items);
  } catch (e) {
    throw new Error(oneLine((e as Error).message));
  }
}

/** host.trace's checks, in the order docs/network.md lists them; every failure is a one-line Error. */
async function checkTrace(store: Store, h: ModelHeader, job: Job, input: TraceInput): Promise<TraceInfo> {
  const commitment = jobCommitment(job);
  if (input.commitment !== commitment) throw new Error(`the job's commitment is ${commitment}, not ${String(input.commitment).slice(0, 64)}`);
  const { vocabSize, nLayers } = h.config.config;
  const tokens = input.tokens;
  if (!Array.isArray(tokens) || tokens.length > job.steps || !tokens.every((t) => Number.isInteger(t) && t >= 0 && t < vocabSize)) {
    throw new Error(`the tokens must be a list of at most ${job.steps} token ids below ${vocabSize}`);
  }
  const id = input.trace;
  const item = await storeItem(store, id, 'trace item');
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
  if (input.stages !== undefined) await checkStages(store, job, nLayers, leaves as string[], tokens, input);
  if (input.points === undefined) return { steps: N };
  const points = input.points;
  if (!Array.isArray(points) || points.length > 64 || !points.every((p) => Number.isInteger(p) && p >= 0 && p <= N)) throw new Error(`points must be at most 64 accumulator indices in 0..${N}`);
  const accs = accumulators({ commitment, leaves: leaves as string[] });
  return { steps: N, accs: points.map((p) => accs[p]) };
}
