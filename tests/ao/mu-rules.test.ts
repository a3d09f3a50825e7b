// The MU's rules alone (mu-rules.ts): outbox planning with its caps, the push budget, the retry
// schedule and the crank loop's timer — pure functions, no queue, no HTTP.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_TIMER_MS, afterFailure, backoff, crankJob, outboxLists, planOutbox, refusesForGood, timerDelay, withinBudget, type CrankContext } from '../../src/ao/mu-rules.js';

const id = (n: number): string => Buffer.alloc(32, n).toString('base64url');
const ctx = (over: Partial<CrankContext> = {}): CrankContext => ({
  message: id(1),
  process: id(2),
  root: id(3),
  depth: 0,
  module: id(4),
  scheduler: id(5),
  limits: { depth: 128, fanout: 256 },
  ...over,
});

test('outboxLists: three lists from a result; absent or null lists are empty; anything else is a reason', () => {
  assert.deepEqual(outboxLists({ Messages: [1], Spawns: null }), { messages: [1], spawns: [], assignments: [] });
  assert.equal(outboxLists(null), 'the CU result is not a JSON object');
  assert.equal(outboxLists('x'), 'the CU result is not a JSON object');
  assert.equal(outboxLists({ Messages: {} }), "the CU result's Messages is not a list");
  assert.equal(outboxLists({ Assignments: 'a' }), "the CU result's Assignments is not a list");
});

test('planOutbox: each entry becomes one unit of work, one hop deeper, keyed and laned as the queue needs', () => {
  const lists = {
    messages: [{ Target: id(7), Data: 'a' }, { Target: 42 }],
    spawns: [{ Data: 'child' }],
    assignments: [{ Processes: [id(8), id(9)], Message: id(10) }, { Processes: 'no' }],
  };
  const plan = planOutbox(lists, ctx({ depth: 3 }));
  assert.deepEqual(plan.capped, []);
  assert.deepEqual(plan.children.map((c) => [c.kind, c.key, c.lane, c.depth, c.root]), [
    ['push', `push:${id(2)}:${id(1)}:0`, id(7), 4, id(3)],
    ['push', `push:${id(2)}:${id(1)}:1`, null, 4, id(3)], // no target: no lane (its push fails with the reason)
    ['spawn', `spawn:${id(2)}:${id(1)}:0`, null, 4, id(3)],
    ['assign', `assign:${id(2)}:${id(1)}:0:0`, id(8), 4, id(3)],
    ['assign', `assign:${id(2)}:${id(1)}:0:1`, id(9), 4, id(3)],
  ]);
  assert.deepEqual(plan.children[0].payload, { from: id(2), root: id(3), entry: lists.messages[0], module: id(4) });
  assert.deepEqual(plan.children[2].payload, { from: id(2), root: id(3), entry: lists.spawns[0], module: id(4), scheduler: id(5) });
  assert.equal(plan.skipped.length, 1);
  assert.match(plan.skipped[0], /assignment 1 is not/);
  assert.deepEqual(planOutbox({ messages: [], spawns: [], assignments: [] }, ctx()), { children: [], capped: [], skipped: [] });
});

test('planOutbox: nothing past the depth cap; the fan-out cap keeps the first entries and names the cut', () => {
  const messages = Array.from({ length: 10 }, (_, i) => ({ Target: id(20 + i) }));
  const deep = planOutbox({ messages, spawns: [], assignments: [] }, ctx({ depth: 5, limits: { depth: 5, fanout: 256 } }));
  assert.deepEqual(deep.children, []);
  assert.equal(deep.capped[0].name, 'depth cap');
  assert.match(deep.capped[0].reason, /depth cap 5: 10 outbox entries/);
  const wide = planOutbox({ messages, spawns: [], assignments: [] }, ctx({ limits: { depth: 128, fanout: 4 } }));
  assert.deepEqual(wide.children.map((c) => c.lane), [id(20), id(21), id(22), id(23)]);
  assert.equal(wide.capped[0].name, 'fan-out cap');
  assert.match(wide.capped[0].reason, /6 of 10 outbox entries/);
});

test('withinBudget: what fits in the chain budget goes, the rest is cut with a reason', () => {
  const children = Array.from({ length: 5 }, (_, k) => crankJob(id(k), id(2), id(3), 1));
  assert.deepEqual(withinBudget(children, 10, 100, 'x'), { children, cap: null });
  const cut = withinBudget(children, 98, 100, 'x');
  assert.equal(cut.children.length, 2);
  assert.match(cut.cap!.reason, /push budget 100 for Pushed-For .* 3 of 5/);
  assert.equal(withinBudget(children, 200, 100, 'x').children.length, 0, 'overspent: nothing, never a negative slice');
});

test('retries: exponential backoff to the cap; permanent failures, the attempt cap and the age cap end a row with reasons', () => {
  assert.deepEqual([1, 2, 3, 4, 10, 1000].map((n) => backoff(n, 250, 30_000)), [250, 500, 1000, 2000, 30_000, 30_000]);
  assert.equal(backoff(0, 250, 30_000), 250);
  const policy = { attempts: 5, baseMs: 250, maxMs: 30_000, maxAgeMs: 60_000 };
  assert.deepEqual(afterFailure(policy, { tries: 2, since: 1000, now: 2000, permanent: false, why: 'down' }), { at: 2500 });
  assert.deepEqual(afterFailure(policy, { tries: 1, since: 0, now: 0, permanent: true, why: 'refused' }), { failed: 'refused' });
  assert.match((afterFailure(policy, { tries: 5, since: 0, now: 1000, permanent: false, why: 'down' }) as { failed: string }).failed, /gave up after 5 tries .*retry.attempts 5.*: down/);
  assert.match((afterFailure(policy, { tries: 2, since: 0, now: 60_000, permanent: false, why: 'down' }) as { failed: string }).failed, /retry.maxAgeMs 60000/);
  for (const s of [400, 401, 404, 413, 422]) assert.equal(refusesForGood(s), true, String(s));
  for (const s of [200, 202, 408, 425, 429, 500, 502, 503]) assert.equal(refusesForGood(s), false, String(s));
});

test('timerDelay: within 1 ms .. 2^31 − 1 ms whatever the due time; none for no time', () => {
  assert.equal(timerDelay(1500, 1000), 500);
  assert.equal(timerDelay(1000, 1000), 1);
  assert.equal(timerDelay(0, 1000), 1, 'overdue: soon, not a negative delay');
  assert.equal(timerDelay(1000.2, 1000), 1);
  assert.equal(timerDelay(Number.MAX_SAFE_INTEGER, 1000), MAX_TIMER_MS, 'a parked or far row: the longest timer Node takes, not an overflow to 1 ms');
  assert.equal(timerDelay(2 ** 40, 0), MAX_TIMER_MS);
  assert.equal(timerDelay(null, 1000), null);
  assert.equal(timerDelay(Number.NaN, 1000), null);
  assert.equal(timerDelay(Number.POSITIVE_INFINITY, 1000), null);
  assert.equal(timerDelay(1000, Number.NaN), null);
});
