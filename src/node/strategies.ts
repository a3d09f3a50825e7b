// Cheating nodes, for testing the network: each strategy wraps the honest behaviour (behaviour.ts)
// and changes only the decisions it cheats on. `verity node start --strategy <name>`, or
// startNode({ strategy }). A cheater reveals and answers disputes consistently with its own claimed
// trace where it can (a recipe in the claim says how to make the same run again); where it cannot
// (a fabricated trace has no layer outputs to open) it stays silent and loses on the clock.
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { completionText, ownedMatrix, rngNext, rowBytes, type Model } from '../engine/index.js';
import type { Participant, Role } from '../processes/protocol.js';
import {
  BOS, KV_CHAIN_START, accNext, jobCommitment, leafHash, schedule, traceStart, type Deviation, type Hex, type Job, type LeafPreimage, type Trace,
} from '../proof/index.js';
import { kvChainNext } from '../proof/trace.js';
import {
  claimOf, honest, openingFrom, runJob, type Behaviour, type BehaviourContext, type Claim, type EngineOptions, type Json,
} from './behaviour.js';
import { jobOf, type Assignment, type Completion } from './work.js';

export const STRATEGIES = ['honest', 'wrong-token', 'cheap-model', 'lazy', 'skip', 'offline-mid-task', 'lying-validator', 'colluding-pair', 'wrong-stage'] as const;
export type StrategyName = (typeof STRATEGIES)[number];

export interface StrategyOptions {
  /** colluding-pair: the folder both partners share. */
  colludeDir?: string;
  /** cheap-model: the layer whose weights are changed (default: the middle one). */
  layer?: number;
}

export class StrategyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StrategyError';
  }
}

/** How a strategy's claimed run is made again (kept in the claim, so a re-run after a restart is the same run). */
interface Recipe {
  /** wrong-token: the one token replaced. */
  deviation?: Deviation;
  /** cheap-model: the layer whose weights were scaled. */
  layer?: number;
  /** A trace made up without running: it cannot be opened. */
  fabricated?: boolean;
  /** lazy: it also posts garbage. */
  garbage?: boolean;
}

const recipeOf = (claim: Claim): Recipe => (claim.recipe ?? {}) as Recipe;

/** A completion from a trace of the lease's job (whatever model made it). */
function completionOf(lease: Model, job: Job, trace: Trace): Completion {
  const tokens = trace.tokens.slice(job.promptTokens.length - 1);
  return { job, trace, tokens, text: completionText(lease.tokenizer, job.promptTokens[job.promptTokens.length - 1], tokens) };
}

/**
 * A "cheaper model": layer `layer`'s feed-forward down-projection scaled by 1 − 2⁻¹⁰, in place (for
 * Q8_0 weights, the block scales the kernels read). Applied to a second copy of the model, loaded
 * again from its file, so the node's own copy stays intact.
 */
export function perturbLayer(model: Model, layer: number): void {
  const { dim, hiddenDim } = model.config;
  const lw = model.weights.layers[layer];
  // Mapped weights are read-only: the matrix is copied into the arena first (the file stays intact).
  const w = (lw.w2 = ownedMatrix(model, lw.w2, dim * rowBytes(lw.w2.dtype, hiddenDim)));
  const values = w.dtype === 'q8_0' ? model.arena.f32(w.scales, (dim * hiddenDim) / 32) : model.arena.f32(w.ptr, dim * hiddenDim);
  for (let i = 0; i < values.length; i++) values[i] = Math.fround(values[i] * (1 - 2 ** -10));
}

/** The run a recipe describes, with every layer's outputs kept; null for a fabricated trace. */
function rerun(model: Model, a: Assignment, recipe: Recipe, ctx: BehaviourContext, cheap: CheapCopies): Trace | null {
  if (recipe.fabricated) return null;
  const runner = recipe.layer !== undefined ? cheap.get(a.model, recipe.layer, ctx) : model;
  return runJob(runner, model, a, ctx.engine, { deviation: recipe.deviation, keepOutputs: true });
}

/** Opens a step of a claim by running its recipe again (null when it cannot be had). */
function openByRecipe(cheap: CheapCopies): Behaviour['open'] {
  return async (model, a, claim, step, ctx) => {
    const trace = rerun(model, a, recipeOf(claim), ctx, cheap);
    return trace ? openingFrom(model, trace, claim, step) : null;
  };
}

/** Perturbed copies of the served models, one per (model, layer), loaded on first use. */
class CheapCopies {
  private readonly copies = new Map<string, Model>();
  get(modelId: string, layer: number, ctx: BehaviourContext): Model {
    const key = `${modelId}/${layer}`;
    let copy = this.copies.get(key);
    if (!copy) {
      copy = ctx.copyOf(modelId);
      if (!Number.isInteger(layer) || layer < 0 || layer >= copy.config.nLayers) throw new StrategyError(`cheap-model: layer ${layer} is outside 0..${copy.config.nLayers - 1}`);
      perturbLayer(copy, layer);
      this.copies.set(key, copy);
    }
    return copy;
  }
}

/**
 * The wrong-token lie: the honest run, then the same job again with the last sampled token replaced
 * by another id (skipping BOS) that depends on the liar, so that two liars who do not collude do
 * not tell the same lie. Its trace is a real run of that deviation, so it can answer every
 * round and open every step consistently — and the trace differs from the honest one first at that
 * head step (only there, when the run went the full length).
 */
export function wrongTokenClaim(model: Model, a: Assignment, engine: EngineOptions, liar: string): Claim {
  const job = jobOf(model, a);
  const truth = runJob(model, model, a, engine);
  let last = -1;
  truth.preimages.forEach((p, i) => {
    if (p.kind === 'head') last = i;
  });
  const head = truth.preimages[last];
  if (head?.kind !== 'head') throw new StrategyError(`task ${a.task}: the run sampled nothing`);
  const { vocabSize } = model.config;
  const shift = 1 + (createHash('sha256').update(liar).digest().readUInt32LE(0) % (vocabSize - 2));
  let token = (head.token + shift) % vocabSize;
  if (token === BOS) token = (token + 1) % vocabSize;
  if (token === head.token) token = (token + 1) % vocabSize;
  const deviation: Deviation = { token: { pos: head.pos, token } };
  const trace = runJob(model, model, a, engine, { deviation });
  return claimOf(a.task, completionOf(model, job, trace), { deviation } as unknown as Json);
}

const randomHex = (): Hex => randomBytes(32).toString('hex');

/**
 * A trace made up without running the model: random layer leaves (K/V chains kept consistent),
 * head leaves for `generated` (then BOS if they run out, then end leaves), RNG states as the sampler
 * would advance them. It chains to its root and its head leaves are its tokens, so it passes the
 * coordinator's trace check; it has no layer outputs, so no step of it can be opened.
 */
export function fabricateTrace(model: Model, a: Assignment, generated: number[]): Completion {
  const job = jobOf(model, a);
  const { nLayers } = model.config;
  const sched = schedule(job, nLayers);
  const commitment = jobCommitment(job);
  const chains: Hex[] = Array.from({ length: nLayers }, () => KV_CHAIN_START);
  const preimages: LeafPreimage[] = [];
  const tokens: number[] = job.promptTokens.slice(1);
  let rng = BigInt(job.seed);
  let next = 0;
  let stopped = false;
  for (let s = 1; s <= sched.steps; s++) {
    const ref = sched.at(s);
    // A BOS inside the prompt ends generation there, as the engine does (and host.trace checks).
    if (ref.kind === 'layer' && ref.layer === 0 && ref.pos > 0 && ref.pos < job.promptTokens.length && job.promptTokens[ref.pos] === BOS) stopped = true;
    if (stopped) preimages.push({ kind: 'end', step: s });
    else if (ref.kind === 'layer') {
      const kvHash = randomHex();
      chains[ref.layer] = kvChainNext(chains[ref.layer], kvHash);
      preimages.push({ kind: 'layer', pos: ref.pos, layer: ref.layer, xHash: randomHex(), kvHash, kvChain: chains[ref.layer] });
    } else {
      if (job.temperature !== 0) rng = rngNext(rng).state;
      const token = next < generated.length ? generated[next++] : BOS;
      preimages.push({ kind: 'head', pos: ref.pos, token, rng: rng.toString() });
      if (token === BOS) stopped = true;
      else tokens.push(token);
    }
  }
  const leaves = preimages.map(leafHash);
  const trace: Trace = { job, commitment, nLayers, root: leaves.reduce(accNext, traceStart(commitment)), tokens, leaves, preimages, layers: new Map() };
  return completionOf(model, job, trace);
}

/** Random plausible tokens (no BOS, EOS or unknown) for every head step of the job. */
export function randomTokens(model: Model, a: Assignment): number[] {
  const job = jobOf(model, a);
  const heads = schedule(job, model.config.nLayers).steps - job.steps * model.config.nLayers;
  const { vocabSize } = model.config;
  return Array.from({ length: heads }, () => 3 + (randomBytes(4).readUInt32LE(0) % Math.max(1, vocabSize - 3)));
}

/** This node's role on the task as the coordinator shows it, and the other participants that have committed. */
export async function roleOf(a: Assignment, ctx: BehaviourContext): Promise<{ role: Role; committed: Participant[]; tokens: number[] | null }> {
  const view = await ctx.view(a.task);
  const participants = view?.participants ?? [];
  const mine = participants.filter((p) => p.node === ctx.address);
  const committed = participants.filter((p) => p.node !== ctx.address && p.commitment !== undefined);
  const current = mine.find((p) => p.status === 'open') ?? mine.at(-1);
  return { role: current?.role ?? (committed.length > 0 ? 'validator' : 'asserter'), committed, tokens: view?.tokens ?? committed.find((p) => p.tokens)?.tokens ?? null };
}

/** Changes one sampled token and defends that run consistently. */
function wrongToken(): Behaviour {
  const cheap = new CheapCopies();
  return {
    ...honest,
    name: 'wrong-token',
    claim: async (model, a, ctx) => wrongTokenClaim(model, a, ctx.engine, ctx.address),
    open: openByRecipe(cheap),
  };
}

/** Runs a copy of the model with one layer's weights changed (a stand-in for a cheaper model). */
function cheapModel(layerOption?: number): Behaviour {
  const cheap = new CheapCopies();
  return {
    ...honest,
    name: 'cheap-model',
    async claim(model, a, ctx) {
      const layer = layerOption ?? Math.floor(model.config.nLayers / 2);
      const trace = runJob(cheap.get(a.model, layer, ctx), model, a, ctx.engine);
      return claimOf(a.task, completionOf(model, jobOf(model, a), trace), { layer });
    },
    open: openByRecipe(cheap),
  };
}

/**
 * Honest as the first asserter; as a validator (another node has committed) it copies instead of
 * computing: the asserter's tokens (visible) with a made-up trace (the root is not visible), and
 * posts garbage in a dispute.
 */
function lazy(): Behaviour {
  const cheap = new CheapCopies();
  return {
    ...honest,
    name: 'lazy',
    async claim(model, a, ctx) {
      const { role, tokens } = await roleOf(a, ctx);
      if (role === 'asserter') return honest.claim(model, a, ctx);
      ctx.log(`lazy: copying the asserter's ${tokens?.length ?? 0} tokens for ${a.task} instead of running it`);
      return claimOf(a.task, fabricateTrace(model, a, tokens ?? randomTokens(model, a)), { fabricated: true, garbage: true });
    },
    post: (a, claim, points, ctx) => (recipeOf(claim).garbage ? points.map(randomHex) : honest.post(a, claim, points, ctx)),
    open: openByRecipe(cheap),
  };
}

/** Never runs the model: random tokens and a fabricated trace that chains to its root. */
function skip(): Behaviour {
  const cheap = new CheapCopies();
  return {
    ...honest,
    name: 'skip',
    claim: async (model, a) => claimOf(a.task, fabricateTrace(model, a, randomTokens(model, a)), { fabricated: true }),
    open: openByRecipe(cheap),
  };
}

/** Takes leases and never submits. */
function offlineMidTask(): Behaviour {
  return {
    ...honest,
    name: 'offline-mid-task',
    async claim(_model, a, ctx) {
      ctx.log(`offline-mid-task: holding the lease on ${a.task} without submitting`);
      return null;
    },
  };
}

/** Honest as an asserter; as a validator it submits the wrong-token lie. */
function lyingValidator(): Behaviour {
  const cheap = new CheapCopies();
  return {
    ...honest,
    name: 'lying-validator',
    async claim(model, a, ctx) {
      const { role } = await roleOf(a, ctx);
      return role === 'validator' ? wrongTokenClaim(model, a, ctx.engine, ctx.address) : honest.claim(model, a, ctx);
    },
    open: openByRecipe(cheap),
  };
}

interface CollusionNote {
  task: string;
  node: string;
  claim: Claim;
}

/**
 * Two nodes sharing a folder: as an asserter it lies like wrong-token and leaves its claim (the
 * faulty trace document, tokens, root and recipe) in the folder; on a task whose claim its partner
 * left there it copies that claim (the same leaves, root and tokens; its own Result-Commitment and
 * its own signed trace item, which the node makes); otherwise it is honest.
 */
function colludingPair(dir: string | undefined): Behaviour {
  if (!dir) throw new StrategyError('colluding-pair needs a shared folder (--collude-dir <dir>)');
  const cheap = new CheapCopies();
  const file = (task: string): string => join(dir, `${task}.json`);
  return {
    ...honest,
    name: 'colluding-pair',
    async claim(model, a, ctx) {
      if (existsSync(file(a.task))) {
        const note = JSON.parse(readFileSync(file(a.task), 'utf8')) as CollusionNote;
        if (note.node !== ctx.address) {
          ctx.log(`colluding-pair: copying partner ${note.node.slice(0, 8)}'s claim on ${a.task}`);
          return note.claim;
        }
      }
      const { role } = await roleOf(a, ctx);
      if (role !== 'asserter') return honest.claim(model, a, ctx);
      const claim = wrongTokenClaim(model, a, ctx.engine, ctx.address);
      mkdirSync(dir, { recursive: true });
      const note: CollusionNote = { task: a.task, node: ctx.address, claim };
      writeFileSync(`${file(a.task)}.tmp`, JSON.stringify(note));
      renameSync(`${file(a.task)}.tmp`, file(a.task));
      return claim;
    },
    open: openByRecipe(cheap),
  };
}

/**
 * Honest, but as a middle stage of a pipeline it alters the residuals it sends on after position 1
 * (and its own leaf there, so that the stages after it take them): a consistent liar, whom the
 * dispute's one-step proof at that leaf convicts.
 */
function wrongStage(): Behaviour {
  return {
    ...honest,
    name: 'wrong-stage',
    stage(a) {
      const p = a.pipeline;
      return p && p.stage > 0 && p.stage < p.stages.length - 1 ? { corrupt: { pos: 1 } } : {};
    },
  };
}

/** The behaviour a strategy name stands for. */
export function strategy(name: string, options: StrategyOptions = {}): Behaviour {
  switch (name as StrategyName) {
    case 'honest':
      return honest;
    case 'wrong-token':
      return wrongToken();
    case 'cheap-model':
      return cheapModel(options.layer);
    case 'lazy':
      return lazy();
    case 'skip':
      return skip();
    case 'offline-mid-task':
      return offlineMidTask();
    case 'lying-validator':
      return lyingValidator();
    case 'colluding-pair':
      return colludingPair(options.colludeDir);
    case 'wrong-stage':
      return wrongStage();
    default:
      throw new StrategyError(`unknown strategy '${name}' (use ${STRATEGIES.join(', ')})`);
  }
}
