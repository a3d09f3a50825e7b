// The dissection game: the honest party wins in either role against a wrong step, garbage posted
// mid-game or silence, within ⌈log_k N⌉ rounds; invalid moves are refused and leave the state as it
// was; states survive JSON; clocks and bonds add up.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  decide,
  disputedStep,
  GameError,
  openGame,
  outcome,
  post,
  roundsNeeded,
  splitPoints,
  tick,
  type GameParams,
  type GameState,
  type Hash,
  type Party,
} from '../../src/proof/game.js';

const sha256 = (...parts: (string | Buffer)[]): Hash => {
  const h = createHash('sha256');
  for (const part of parts) h.update(part);
  return h.digest('hex');
};

// Leaves are pseudo-random but fixed, so that a seed fast-check reports replays the same games.
const MAX_STEPS = 5000;
const START = sha256('job commitment');
const leaf = (s: number, variant = ''): Buffer => Buffer.from(sha256(`leaf ${s}${variant}`), 'hex');
const extend = (acc: Hash, l: Buffer): Hash => sha256(Buffer.from(acc, 'hex'), l);

/** acc[0..n] of a chain that follows `base` before step f and uses another leaf at f. */
function forge(base: Hash[], f: number, n: number): Hash[] {
  const acc = base.slice(0, f);
  acc.push(extend(acc[f - 1], leaf(f, ' forged')));
  for (let s = f + 1; s <= n; s++) acc.push(extend(acc[s - 1], leaf(s)));
  return acc;
}

const TRUTH: Hash[] = [START];
for (let s = 1; s <= MAX_STEPS; s++) TRUTH.push(extend(TRUTH[s - 1], leaf(s)));

const other = (p: Party): Party => (p === 'asserter' ? 'challenger' : 'asserter');
const CLOCK = 1000;
const BOND = 3;

interface Player {
  root: Hash;
  /** Values at the round's split points, or null to stay silent. */
  answer(points: number[], round: number): Hash[] | null;
}

const honest = (n: number): Player => ({ root: TRUTH[n], answer: (points) => points.map((p) => TRUTH[p]) });

type Behaviour = 'fault' | 'garbage' | 'silent';

/** A party whose trace has a wrong leaf at step f; it also posts garbage at round g, or goes silent from it. */
function cheat(behaviour: Behaviour, n: number, f: number, g: number, seed: number): Player {
  const trace = forge(TRUTH, f, n);
  return {
    root: trace[n],
    answer: (points, round) => {
      if (behaviour === 'silent' && round >= g) return null;
      if (behaviour === 'garbage' && round === g) return points.map((p) => sha256(`garbage ${seed} ${p}`));
      return points.map((p) => trace[p]);
    },
  };
}

interface Played {
  state: GameState;
  rounds: number;
  posts: Record<Party, number>;
}

/** Runs a game to its end: the referee answers with the true acc at the disputed step. */
function play(n: number, k: number, players: Record<Party, Player>, firstMover: Party, viaJson = false): Played {
  const wire = (s: GameState): GameState => (viaJson ? JSON.parse(JSON.stringify(s)) : s);
  const roots = { asserter: players.asserter.root, challenger: players.challenger.root };
  let state = wire(openGame({ k, steps: n, start: START, roots, clock: CLOCK, bond: BOND, now: 0 }));
  let now = 0;
  let rounds = 0;
  const posts = { asserter: 0, challenger: 0 };
  while (state.phase === 'bisect') {
    rounds++;
    const points = splitPoints(state);
    const first = rounds % 2 ? firstMover : other(firstMover);
    for (const party of [first, other(first)]) {
      const values = players[party].answer(points, rounds);
      if (!values) continue;
      state = wire(post(state, party, values, ++now));
      posts[party]++;
    }
    if (state.log.length < rounds) {
      state = wire(tick(state, now + 10 * CLOCK));
      assert.equal(state.phase, 'done');
    }
  }
  if (state.phase === 'prove') state = wire(decide(state, TRUTH[disputedStep(state).step], ++now));
  return { state, rounds, posts };
}

const scenario = fc.integer({ min: 1, max: MAX_STEPS }).chain((n) =>
  fc.record({
    n: fc.constant(n),
    k: fc.integer({ min: 2, max: 16 }),
    fault: fc.integer({ min: 1, max: n }),
    behaviour: fc.constantFrom<Behaviour>('fault', 'garbage', 'silent'),
    honestRole: fc.constantFrom<Party>('asserter', 'challenger'),
    firstMover: fc.constantFrom<Party>('asserter', 'challenger'),
    round: fc.nat({ max: 15 }),
    seed: fc.nat(),
    viaJson: fc.boolean(),
  }),
);

test('the honest party wins in either role, within roundsNeeded(N, k) rounds', () => {
  fc.assert(
    fc.property(scenario, ({ n, k, fault, behaviour, honestRole, firstMover, round, seed, viaJson }) => {
      const needed = roundsNeeded(n, k);
      const g = 1 + (round % Math.max(1, needed));
      const cheater = other(honestRole);
      const players = { [honestRole]: honest(n), [cheater]: cheat(behaviour, n, fault, g, seed) } as Record<Party, Player>;
      const { state, rounds, posts } = play(n, k, players, firstMover, viaJson);

      const result = outcome(state)!;
      assert.equal(result.winner, honestRole);
      assert.ok(state.log.length <= needed);
      const silenced = behaviour === 'silent' && g <= rounds;
      assert.equal(result.reason, silenced ? 'timeout' : 'proof');
      if (!silenced) {
        assert.equal(rounds, state.log.length);
        const d = disputedStep(state);
        // The agreed pre-state is the true one, so the referee can open it.
        assert.equal(d.agreed, TRUTH[d.step - 1]);
        assert.equal(d.claims[honestRole], TRUTH[d.step]);
        // A hash chain differs from the wrong leaf on and agrees before it: that leaf's step is found.
        if (behaviour === 'fault') assert.equal(d.step, fault);
      }
      for (const entry of state.log) {
        const [lo, hi] = entry.interval;
        assert.ok(entry.next[0] >= lo && entry.next[1] <= hi && entry.next[1] - entry.next[0] >= 1);
        assert.ok(entry.next[1] - entry.next[0] <= Math.ceil((hi - lo) / k));
        assert.deepEqual(entry.values[honestRole], entry.points.map((p) => TRUTH[p]));
      }
      for (const p of ['asserter', 'challenger'] as const) assert.equal(state.bonded[p], BOND * posts[p]);
      assert.deepEqual(state.settlement, {
        [honestRole]: { returned: BOND * posts[honestRole], forfeited: 0 },
        [cheater]: { returned: 0, forfeited: BOND * posts[cheater] },
      });
    }),
    { numRuns: 200 },
  );
});

test('two honest parties cannot open a game', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: MAX_STEPS }), fc.integer({ min: 2, max: 64 }), (n, k) => {
      const roots = { asserter: honest(n).root, challenger: honest(n).root };
      assert.throws(() => openGame({ k, steps: n, start: START, roots, clock: CLOCK, bond: BOND, now: 0 }), code('bad-params'));
    }),
    { numRuns: 200 },
  );
});

test('roundsNeeded is ⌈log_k N⌉, and 0 for one step', () => {
  for (let k = 2; k <= 64; k++) {
    for (let n = 1; n <= 3000; n++) {
      let r = 0;
      for (let reach = 1; reach < n; reach *= k) r++;
      assert.equal(roundsNeeded(n, k), r, `N=${n} k=${k}`);
    }
  }
  assert.equal(roundsNeeded(2 ** 40, 2), 40);
  assert.equal(roundsNeeded(8 ** 12 + 1, 8), 13);
  for (const [n, k] of [[0, 8], [1.5, 8], [10, 1], [10, 65], [10, 2.5], [NaN, 8]]) {
    assert.throws(() => roundsNeeded(n, k), code('bad-params'));
  }
});

test('the worst fault position takes exactly roundsNeeded rounds', () => {
  // Synthetic chains (distinct hex per index) make this cheap: only the indices matter here.
  const hex = (text: string): Hash => text.padStart(64, '0');
  for (const k of [2, 3, 8]) {
    for (let n = 2; n <= 80; n++) {
      let worst = 0;
      for (let f = 1; f <= n; f++) {
        const value = (p: number): Hash => (p < f ? hex(p.toString(16)) : hex(`f${p.toString(16)}`));
        const roots = { asserter: hex(n.toString(16)), challenger: value(n) };
        let state = openGame({ k, steps: n, start: value(0), roots, clock: 10, bond: 0, now: 0 });
        while (state.phase === 'bisect') {
          const points = splitPoints(state);
          state = post(state, 'asserter', points.map((p) => hex(p.toString(16))), 0);
          state = post(state, 'challenger', points.map(value), 0);
        }
        assert.equal(disputedStep(state).step, f);
        worst = Math.max(worst, state.log.length);
      }
      assert.equal(worst, roundsNeeded(n, k), `N=${n} k=${k}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Unit tests on a small game: N = 20, k = 4; the challenger's trace has a wrong leaf at step 7.

const N = 20;
const FORGED = forge(TRUTH, 7, N);
const PARAMS: GameParams = {
  k: 4,
  steps: N,
  start: START,
  roots: { asserter: TRUTH[N], challenger: FORGED[N] },
  clock: 10,
  bond: 5,
  now: 100,
};
const truthAt = (state: GameState): Hash[] => splitPoints(state).map((p) => TRUTH[p]);
const forgedAt = (state: GameState): Hash[] => splitPoints(state).map((p) => FORGED[p]);

function code(expected: string): (e: unknown) => boolean {
  return (e) => e instanceof GameError && e.code === expected;
}

/** Plays the small game round by round; returns the state after each round. */
function smallGame(): GameState[] {
  const states = [openGame(PARAMS)];
  let now = 100;
  while (states[states.length - 1].phase === 'bisect') {
    const s = states[states.length - 1];
    states.push(post(post(s, 'asserter', truthAt(s), ++now), 'challenger', forgedAt(s), ++now));
  }
  return states;
}

test('split points are lo + floor(i·(hi−lo)/k), distinct and strictly inside', () => {
  const points = (steps: number, k: number): number[] =>
    splitPoints(openGame({ ...PARAMS, steps, k }));
  assert.deepEqual(points(100, 8), [12, 25, 37, 50, 62, 75, 87]);
  assert.deepEqual(points(20, 4), [5, 10, 15]);
  assert.deepEqual(points(5, 8), [1, 2, 3, 4]);
  assert.deepEqual(points(5, 2), [2]);
  assert.deepEqual(points(2, 64), [1]);
  assert.deepEqual(points(1, 8), []);
});

test('a round narrows to the first disagreement, and the log records it', () => {
  const states = smallGame();
  assert.equal(states.length, 3);
  const end = states[2];
  assert.equal(end.phase, 'prove');
  assert.deepEqual(end.log.map((r) => [r.round, r.interval, r.points, r.next]), [
    [1, [0, 20], [5, 10, 15], [5, 10]],
    [2, [5, 10], [6, 7, 8], [6, 7]],
  ]);
  assert.deepEqual(end.log[1].values, { asserter: [6, 7, 8].map((p) => TRUTH[p]), challenger: [6, 7, 8].map((p) => FORGED[p]) });
  assert.deepEqual(end.log[1].postedAt, { asserter: 103, challenger: 104 });
  // Bytes exchanged: 32 per value per party.
  assert.equal(end.log.reduce((bytes, r) => bytes + 2 * 32 * r.points.length, 0), 384);
  assert.deepEqual(splitPoints(end), []);
  assert.deepEqual(disputedStep(end), { step: 7, agreed: TRUTH[6], claims: { asserter: TRUTH[7], challenger: FORGED[7] } });
  assert.deepEqual(end.values.asserter, Object.fromEntries([0, 5, 6, 7, 8, 10, 15, 20].map((p) => [p, TRUTH[p]])));
  // All agree: the interval is the last sub-interval (the roots still differ).
  const s = post(post(states[0], 'asserter', truthAt(states[0]), 101), 'challenger', truthAt(states[0]), 101);
  assert.deepEqual([s.lo, s.hi], [15, 20]);
});

test('decide: the party whose claim is correct wins; otherwise both are wrong', () => {
  const prove = smallGame()[2];
  const won = decide(prove, TRUTH[7], 200);
  assert.equal(won.phase, 'done');
  assert.deepEqual(outcome(won), { winner: 'asserter', reason: 'proof' });
  assert.equal(won.endedAt, 200);
  assert.deepEqual(outcome(decide(prove, FORGED[7], 200)), { winner: 'challenger', reason: 'proof' });
  const wrong = decide(prove, sha256('neither'), 200);
  assert.deepEqual(outcome(wrong), { winner: null, reason: 'both-wrong' });
  assert.deepEqual(wrong.settlement, { asserter: { returned: 0, forfeited: 10 }, challenger: { returned: 0, forfeited: 10 } });
  assert.deepEqual(outcome(decide(prove, null, 200)), { winner: null, reason: 'both-wrong' });
  assert.deepEqual(disputedStep(won), disputedStep(prove));
  assert.equal(outcome(prove), null);
  assert.throws(() => decide(prove, 'ABC', 200), code('bad-values'));
  assert.throws(() => decide(prove, TRUTH[7], 103), code('bad-time'));
});

test('one step goes straight to the proof', () => {
  const state = openGame({ ...PARAMS, steps: 1, roots: { asserter: TRUTH[1], challenger: forge(TRUTH, 1, 1)[1] } });
  assert.equal(state.phase, 'prove');
  assert.deepEqual(splitPoints(state), []);
  assert.equal(disputedStep(state).step, 1);
  assert.equal(disputedStep(state).agreed, START);
  assert.deepEqual(outcome(decide(state, TRUTH[1], 100)), { winner: 'asserter', reason: 'proof' });
  assert.equal(roundsNeeded(1, 8), 0);
});

test('openGame rejects parameters out of range', () => {
  const bad: Partial<GameParams>[] = [
    { k: 1 }, { k: 65 }, { k: 2.5 }, { k: NaN },
    { steps: 0 }, { steps: -3 }, { steps: 1.5 }, { steps: 2 ** 60 },
    { start: 'ab' }, { start: START.toUpperCase() }, { start: `${START.slice(1)}g` },
    { roots: { asserter: TRUTH[N], challenger: TRUTH[N] } }, { roots: { asserter: TRUTH[N] } as Record<Party, Hash> },
    { clock: 0 }, { clock: 1.5 }, { bond: -1 }, { bond: 0.5 }, { now: 1.5 }, { now: Infinity },
  ];
  for (const change of bad) assert.throws(() => openGame({ ...PARAMS, ...change }), code('bad-params'), JSON.stringify(change));
  assert.throws(() => openGame(undefined as unknown as GameParams), code('bad-params'));
  assert.doesNotThrow(() => openGame({ ...PARAMS, bond: 0, now: -5, k: 64 }));
});

test('invalid posts are refused and leave the state as it was', () => {
  const s = openGame(PARAMS);
  const good = truthAt(s);
  const once = post(s, 'asserter', good, 101);
  const before = JSON.stringify(s);
  const beforeOnce = JSON.stringify(once);
  assert.throws(() => post(s, 'asserter', good.slice(1), 101), code('bad-values'));
  assert.throws(() => post(s, 'asserter', [...good, good[0]], 101), code('bad-values'));
  assert.throws(() => post(s, 'asserter', 'x' as unknown as Hash[], 101), code('bad-values'));
  assert.throws(() => post(s, 'asserter', [good[0], good[1].toUpperCase(), good[2]], 101), code('bad-values'));
  assert.throws(() => post(s, 'asserter', [good[0], good[1].slice(2), good[2]], 101), code('bad-values'));
  assert.throws(() => post(s, 'asserter', [good[0], 7 as unknown as Hash, good[2]], 101), code('bad-values'));
  assert.throws(() => post(s, 'referee' as Party, good, 101), code('bad-party'));
  assert.throws(() => post(s, 'asserter', good, 99), code('bad-time'));
  assert.throws(() => post(s, 'asserter', good, 100.5), code('bad-time'));
  assert.throws(() => post(once, 'asserter', good, 102), code('out-of-turn'));
  assert.throws(() => post(once, 'challenger', good, 100), code('bad-time'));
  assert.equal(JSON.stringify(s), before);
  assert.equal(JSON.stringify(once), beforeOnce);
});

test('a posted value cannot be changed (checked even though split points are always fresh)', () => {
  const s = openGame(PARAMS);
  // A tampered state claiming the asserter already posted at step 10.
  const tampered: GameState = { ...s, values: { ...s.values, asserter: { ...s.values.asserter, 10: sha256('earlier') } } };
  assert.throws(() => post(tampered, 'asserter', truthAt(s), 101), code('bad-values'));
  const same: GameState = { ...s, values: { ...s.values, asserter: { ...s.values.asserter, 10: TRUTH[10] } } };
  assert.doesNotThrow(() => post(same, 'asserter', truthAt(s), 101));
});

test('moves outside their phase are refused', () => {
  const [open, , prove] = smallGame();
  assert.throws(() => decide(open, TRUTH[7], 200), code('out-of-turn'));
  assert.throws(() => disputedStep(open), code('out-of-turn'));
  assert.throws(() => post(prove, 'asserter', [], 200), code('out-of-turn'));
  const done = decide(prove, TRUTH[7], 200);
  assert.throws(() => post(done, 'asserter', [], 300), code('finished'));
  assert.throws(() => decide(done, TRUTH[7], 300), code('finished'));
  assert.equal(tick(done, 10_000), done);
  assert.equal(tick(prove, 10_000), prove); // the referee acts: no clock runs
  assert.throws(() => tick(open, 99), code('bad-time'));
});

test('states are never mutated, so a game can branch from any state', () => {
  const s = openGame(PARAMS);
  const snapshot = structuredClone(s);
  const a = post(s, 'asserter', truthAt(s), 101);
  const a2 = post(s, 'asserter', truthAt(s), 101);
  const c = post(s, 'challenger', forgedAt(s), 102);
  post(a, 'challenger', forgedAt(s), 103);
  tick(a, 10_000);
  assert.deepEqual(s, snapshot);
  assert.deepEqual(a, a2);
  assert.equal(a.postedAt.challenger, null);
  assert.equal(c.postedAt.asserter, null);
});

test('a state round-trips through JSON and every function accepts it', () => {
  const direct = smallGame();
  const wire = (s: GameState): GameState => JSON.parse(JSON.stringify(s));
  let s = wire(openGame(PARAMS));
  let now = 100;
  while (s.phase === 'bisect') s = wire(post(wire(post(s, 'asserter', truthAt(s), ++now)), 'challenger', forgedAt(s), ++now));
  assert.deepEqual(s, direct[direct.length - 1]);
  assert.deepEqual(disputedStep(s), disputedStep(direct[2]));
  const done = wire(decide(s, TRUTH[7], 200));
  assert.deepEqual(done, decide(direct[2], TRUTH[7], 200));
  assert.deepEqual(outcome(done), { winner: 'asserter', reason: 'proof' });
  assert.deepEqual(wire(tick(wire(openGame(PARAMS)), 500)), tick(openGame(PARAMS), 500));
});

test('chess clocks: each party spends only its own waiting time; running out loses', () => {
  let s = openGame(PARAMS); // clock 10, opens at slot 100
  s = post(s, 'asserter', truthAt(s), 104);
  assert.deepEqual(s.clocks, { asserter: 6, challenger: 10 });
  assert.equal(tick(s, 110), s);
  s = post(s, 'challenger', forgedAt(s), 110); // all of its time, which is allowed
  assert.deepEqual(s.clocks, { asserter: 6, challenger: 0 });
  assert.equal(s.openedAt, 110);
  const round2 = s;
  assert.throws(() => post(round2, 'asserter', truthAt(round2), 117), code('clock'));
  assert.equal(post(round2, 'asserter', truthAt(round2), 116).clocks.asserter, 0);
  assert.equal(tick(round2, 110), round2);

  const late = tick(round2, 111);
  assert.deepEqual(outcome(late), { winner: 'asserter', reason: 'timeout' });
  assert.deepEqual(late.clocks, { asserter: 5, challenger: 0 });
  assert.deepEqual(late.settlement, { asserter: { returned: 5, forfeited: 0 }, challenger: { returned: 0, forfeited: 5 } });
  assert.equal(late.endedAt, 111);

  // A party that has posted this round is not on the clock.
  const answered = post(round2, 'challenger', forgedAt(round2), 110);
  assert.deepEqual(outcome(tick(answered, 1000)), { winner: 'challenger', reason: 'timeout' });
  assert.deepEqual(tick(answered, 1000).settlement, {
    asserter: { returned: 0, forfeited: 5 },
    challenger: { returned: 10, forfeited: 0 },
  });

  const both = tick(openGame(PARAMS), 111);
  assert.deepEqual(outcome(both), { winner: null, reason: 'both-timeout' });
  assert.deepEqual(both.settlement, { asserter: { returned: 0, forfeited: 0 }, challenger: { returned: 0, forfeited: 0 } });
});

test('bonds: each post bonds once; the winner gets all of its bonds back', () => {
  const states = smallGame();
  assert.deepEqual(states.map((s) => s.bonded.asserter), [0, 5, 10]);
  const half = post(states[1], 'challenger', forgedAt(states[1]), 103);
  assert.deepEqual(half.bonded, { asserter: 5, challenger: 10 });
  assert.equal(states[2].settlement, null);
  assert.deepEqual(decide(states[2], FORGED[7], 200).settlement, {
    asserter: { returned: 0, forfeited: 10 },
    challenger: { returned: 10, forfeited: 0 },
  });
});
