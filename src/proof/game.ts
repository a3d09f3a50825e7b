// The k-ary dissection game. Two parties ran the same job into hash-chain traces of N steps
// (acc[s] = H(acc[s-1] ‖ leaf[s]), acc[0] agreed) and claim different acc[N]. Each round both post
// their accumulators at k−1 split points of the disputed interval [lo, hi]; the interval shrinks to
// the first sub-interval whose right end they disagree on. Agreement at lo and disagreement at hi
// hold throughout, so after ⌈log_k N⌉ rounds one step s = hi remains with acc[s-1] agreed: a referee
// re-executes it and the party whose acc[s] matches wins.
//
// The state is plain JSON so that it can be stored in a process's memory, sent in messages and
// replayed; every function is pure and returns a new state (shared parts are never mutated).

export type Hash = string; // 64 lowercase hex chars (sha256)
export type Party = 'asserter' | 'challenger';
export type Phase = 'bisect' | 'prove' | 'done';

export interface GameParams {
  k: number; // arity, integer 2..64
  steps: number; // N, integer ≥ 1
  start: Hash; // acc[0], agreed
  roots: Record<Party, Hash>; // each party's claimed acc[N]; must differ
  clock: number; // each party's time budget in slots (integer ≥ 1), chess-clock style
  bond: number; // bond each party posts per round it answers (integer ≥ 0)
  now: number; // slot at which the game opens (integer)
}

/** One finished bisection round, as the CLI prints it. */
export interface Round {
  readonly round: number; // 1-based
  readonly interval: readonly [number, number];
  readonly points: readonly number[];
  readonly values: Readonly<Record<Party, readonly Hash[]>>; // each party's values at `points`
  readonly openedAt: number;
  readonly postedAt: Readonly<Record<Party, number>>;
  readonly next: readonly [number, number];
}

export type Outcome = { winner: Party | null; reason: 'proof' | 'timeout' | 'both-wrong' | 'both-timeout' };

/** What happens to each party's bonds when the game ends: the winner's come back, a loser's are forfeit. */
export type Settlement = Record<Party, { returned: number; forfeited: number }>;

export interface GameState {
  readonly k: number;
  readonly steps: number;
  readonly bond: number;
  readonly phase: Phase;
  readonly lo: number; // acc[lo] agreed
  readonly hi: number; // acc[hi] disputed
  readonly openedAt: number; // slot at which the current round (or the prove phase) opened
  readonly lastSlot: number; // latest slot recorded; no move may be earlier
  readonly postedAt: Readonly<Record<Party, number | null>>; // slot of each party's post this round
  readonly clocks: Readonly<Record<Party, number>>; // slots each party has left
  readonly values: Readonly<Record<Party, Readonly<Record<string, Hash>>>>; // every value posted, by step index
  readonly bonded: Readonly<Record<Party, number>>;
  readonly log: readonly Round[];
  readonly outcome: Outcome | null;
  readonly settlement: Settlement | null;
  readonly endedAt: number | null;
}

export type GameErrorCode = 'bad-params' | 'bad-party' | 'bad-values' | 'bad-time' | 'out-of-turn' | 'clock' | 'finished';

export class GameError extends Error {
  constructor(
    readonly code: GameErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'GameError';
  }
}

const PARTIES: readonly Party[] = ['asserter', 'challenger'];
const other = (party: Party): Party => (party === 'asserter' ? 'challenger' : 'asserter');

/** Keeps i·(hi−lo) in the split rule an exact double. */
const MAX_STEPS = Math.floor(Number.MAX_SAFE_INTEGER / 64);
const HASH = /^[0-9a-f]{64}$/;

const isHash = (value: unknown): value is Hash => typeof value === 'string' && HASH.test(value);
const isInt = (value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): value is number =>
  Number.isSafeInteger(value) && (value as number) >= min && (value as number) <= max;

/** Bisection rounds the split rule needs in the worst case: ⌈log_k steps⌉ (0 for one step). */
export function roundsNeeded(steps: number, k: number): number {
  if (!isInt(steps, 1, MAX_STEPS) || !isInt(k, 2, 64)) {
    throw new GameError('bad-params', `no game has ${steps} steps and arity ${k}`);
  }
  // The longest sub-interval of d steps has ceil(d/k) of them, and ceil(ceil(d/k)/k) = ceil(d/k²).
  let rounds = 0;
  for (let d = steps; d > 1; d = Math.ceil(d / k)) rounds++;
  return rounds;
}

export function openGame(params: GameParams): GameState {
  const { k, steps, start, roots, clock, bond, now } = params ?? ({} as GameParams);
  const fail = (why: string): never => {
    throw new GameError('bad-params', why);
  };
  if (!isInt(k, 2, 64)) fail(`k must be an integer in 2..64, got ${k}`);
  if (!isInt(steps, 1, MAX_STEPS)) fail(`steps must be an integer in 1..${MAX_STEPS}, got ${steps}`);
  if (!isHash(start)) fail('start must be 64 lowercase hex characters');
  if (!roots || !PARTIES.every((p) => isHash(roots[p]))) fail('both roots must be 64 lowercase hex characters');
  if (roots.asserter === roots.challenger) fail('the roots are the same: there is nothing to dispute');
  if (!isInt(clock, 1)) fail(`clock must be an integer ≥ 1, got ${clock}`);
  if (!isInt(bond, 0)) fail(`bond must be an integer ≥ 0, got ${bond}`);
  if (!isInt(now, Number.MIN_SAFE_INTEGER)) fail(`now must be an integer, got ${now}`);
  const known = (p: Party): Record<string, Hash> => ({ 0: start, [steps]: roots[p] });
  return {
    k,
    steps,
    bond,
    phase: steps > 1 ? 'bisect' : 'prove',
    lo: 0,
    hi: steps,
    openedAt: now,
    lastSlot: now,
    postedAt: { asserter: null, challenger: null },
    clocks: { asserter: clock, challenger: clock },
    values: { asserter: known('asserter'), challenger: known('challenger') },
    bonded: { asserter: 0, challenger: 0 },
    log: [],
    outcome: null,
    settlement: null,
    endedAt: null,
  };
}

/** p_i = lo + floor(i·(hi−lo)/k) for i = 1..k−1, distinct and strictly inside (lo, hi). */
function pointsBetween(lo: number, hi: number, k: number): number[] {
  const points: number[] = [];
  for (let i = 1; i < k; i++) {
    const p = lo + Math.floor((i * (hi - lo)) / k);
    // Non-decreasing in i, so comparing with the last kept point removes duplicates.
    if (p > lo && p < hi && p !== points[points.length - 1]) points.push(p);
  }
  return points;
}

/** The indices both parties must post values for in the current round (empty unless phase is 'bisect'). */
export function splitPoints(state: GameState): number[] {
  return state.phase === 'bisect' ? pointsBetween(state.lo, state.hi, state.k) : [];
}

function checkLive(state: GameState): void {
  if (state.phase === 'done') throw new GameError('finished', 'the game is over');
}

function checkParty(party: unknown): asserts party is Party {
  if (!PARTIES.includes(party as Party)) throw new GameError('bad-party', `unknown party ${String(party)}`);
}

function checkNow(state: GameState, now: number): void {
  if (!isInt(now, Number.MIN_SAFE_INTEGER)) throw new GameError('bad-time', `now must be an integer, got ${now}`);
  if (now < state.lastSlot) throw new GameError('bad-time', `slot ${now} is before the last recorded slot ${state.lastSlot}`);
}

/** A party posts its acc values at splitPoints(state), in order. Returns the new state; throws GameError on any invalid move. */
export function post(state: GameState, party: Party, values: Hash[], now: number): GameState {
  checkLive(state);
  checkParty(party);
  if (state.phase !== 'bisect') throw new GameError('out-of-turn', `no values are asked for in phase ${state.phase}`);
  if (state.postedAt[party] !== null) {
    throw new GameError('out-of-turn', `${party} already posted in round ${state.log.length + 1}`);
  }
  checkNow(state, now);
  const points = splitPoints(state);
  if (!Array.isArray(values) || values.length !== points.length) {
    const got = Array.isArray(values) ? values.length : typeof values;
    throw new GameError('bad-values', `expected ${points.length} values, got ${got}`);
  }
  const known = state.values[party];
  const own: Record<string, Hash> = { ...known };
  points.forEach((p, i) => {
    const value = values[i];
    if (!isHash(value)) throw new GameError('bad-values', `value ${i} (step ${p}) is not 64 lowercase hex characters`);
    // Split points are always fresh indices, so this only fires on a tampered state; a posted value is final.
    if (known[p] !== undefined && known[p] !== value) {
      throw new GameError('bad-values', `${party} already posted another value at step ${p}`);
    }
    own[p] = value;
  });
  const spent = now - state.openedAt;
  if (spent > state.clocks[party]) {
    throw new GameError('clock', `${party} needs ${spent} slots but has ${state.clocks[party]} left`);
  }
  const next: GameState = {
    ...state,
    lastSlot: now,
    postedAt: { ...state.postedAt, [party]: now },
    clocks: { ...state.clocks, [party]: state.clocks[party] - spent },
    values: { ...state.values, [party]: own },
    bonded: { ...state.bonded, [party]: state.bonded[party] + state.bond },
  };
  return next.postedAt[other(party)] === null ? next : closeRound(next, points, now);
}

/** Both parties have posted: keep the first sub-interval whose right end they disagree on. */
function closeRound(state: GameState, points: number[], now: number): GameState {
  const a = points.map((p) => state.values.asserter[p]);
  const c = points.map((p) => state.values.challenger[p]);
  const i = points.findIndex((_, j) => a[j] !== c[j]);
  const lo = i < 0 ? points[points.length - 1] : i === 0 ? state.lo : points[i - 1];
  const hi = i < 0 ? state.hi : points[i];
  const round: Round = {
    round: state.log.length + 1,
    interval: [state.lo, state.hi],
    points,
    values: { asserter: a, challenger: c },
    openedAt: state.openedAt,
    postedAt: { asserter: state.postedAt.asserter!, challenger: state.postedAt.challenger! },
    next: [lo, hi],
  };
  return {
    ...state,
    phase: hi - lo > 1 ? 'bisect' : 'prove',
    lo,
    hi,
    openedAt: now,
    postedAt: { asserter: null, challenger: null },
    log: [...state.log, round],
  };
}

/** The disputed step once the game reached phase 'prove' (also after it was decided). */
export function disputedStep(state: GameState): { step: number; agreed: Hash; claims: Record<Party, Hash> } {
  if (state.hi - state.lo !== 1) throw new GameError('out-of-turn', 'the dispute has not been narrowed to one step');
  return {
    step: state.hi,
    agreed: state.values.asserter[state.lo],
    claims: { asserter: state.values.asserter[state.hi], challenger: state.values.challenger[state.hi] },
  };
}

function finish(state: GameState, winner: Party | null, reason: Outcome['reason'], now: number): GameState {
  const settle = (p: Party) =>
    p === winner ? { returned: state.bonded[p], forfeited: 0 } : { returned: 0, forfeited: state.bonded[p] };
  return {
    ...state,
    phase: 'done',
    lastSlot: now,
    postedAt: { asserter: null, challenger: null },
    outcome: { winner, reason },
    settlement: { asserter: settle('asserter'), challenger: settle('challenger') },
    endedAt: now,
  };
}

/**
 * The referee's result for the disputed step: the correct acc[s] (computed by re-executing the step),
 * or null if the step could not be re-executed from any valid opening. Ends the game.
 */
export function decide(state: GameState, correct: Hash | null, now: number): GameState {
  checkLive(state);
  if (state.phase !== 'prove') throw new GameError('out-of-turn', `nothing to decide in phase ${state.phase}`);
  checkNow(state, now);
  if (correct !== null && !isHash(correct)) {
    throw new GameError('bad-values', 'the correct value is not 64 lowercase hex characters');
  }
  const { claims } = disputedStep(state);
  const winner = PARTIES.find((p) => claims[p] === correct) ?? null;
  return finish(state, winner, winner ? 'proof' : 'both-wrong', now);
}

/**
 * Ends the game if a party's clock has run out by `now`; otherwise returns the state unchanged
 * (also when the game is already over: ticking is not a move). Clocks run only while bisecting,
 * and only for a party that has not posted in the current round.
 */
export function tick(state: GameState, now: number): GameState {
  if (state.phase === 'done') return state;
  checkNow(state, now);
  if (state.phase !== 'bisect') return state;
  const waited = now - state.openedAt;
  const waiting = PARTIES.filter((p) => state.postedAt[p] === null);
  const late = waiting.filter((p) => waited > state.clocks[p]);
  if (late.length === 0) return state;
  const clocks = { ...state.clocks };
  for (const p of waiting) clocks[p] = Math.max(0, clocks[p] - waited);
  if (late.length === 2) return finish({ ...state, clocks }, null, 'both-timeout', now);
  return finish({ ...state, clocks }, other(late[0]), 'timeout', now);
}

export function outcome(state: GameState): Outcome | null {
  return state.outcome && { ...state.outcome };
}
