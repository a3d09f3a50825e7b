// The simulator (src/client/sim.ts): its report from made-up observations (pure), and a small real
// run on a fresh devnet with honest and cheating nodes, every result audited.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { buildReport, formatReport, runSim, SimError, type SimObservations } from '../../src/client/sim.js';
import { resultCommitment } from '../../src/node/index.js';
import type { Params, Participant, TaskView } from '../../src/processes/protocol.js';
import { withTempDir } from '../helpers.js';

const ID = (c: string): string => c.repeat(43);
const ROOT = (c: string): string => c.repeat(64);
const PARAMS: Params = {
  price: '1', computeCost: '1', auditPpm: 100_000, validators: 1, slash: '6000', missSlash: '600', marginPpm: 100_000, maxTokens: 32, minStake: '6000',
  challengeWindowMs: 2000, challengeBond: '6000', roundBond: '10', clockMs: 15_000, arity: 8, revealMs: 10_000, canaryPpm: 0, leaseMs: 10_000,
  cooldownMs: 600_000, maxPromptBytes: 4096, maxAttempts: 3, maxWaitMs: 600_000, maxNodes: 1000,
};
const ACTIVITY = { committed: 0, abandoned: 0, reveals: 0, posts: 0, openings: 0, silent: 0, refused: 0, watched: 0, challenges: 0 };

function view(task: string, participants: Participant[], o: { root: string; node: string; audited: boolean; status?: 'final' | 'failed' }): TaskView {
  return {
    task, reference: task, status: o.status ?? 'final', model: 'm', options: { max_tokens: 32, temperature: 0.8, top_p: 0.9, seed: '1' }, result: '', tokens: [],
    usage: { prompt_tokens: 4, completion_tokens: 32 },
    receipt: o.status === 'failed' ? null : { task, model: 'm', commitment: ROOT('c'), traceRoot: o.root, node: o.node, result: ID('r'), trace: ID('t') },
    audited: o.audited, corrected: false, participants, disputes: [], windowEnd: null, createdAt: 1000, endedAt: 3000,
  };
}

const part = (node: string, role: Participant['role'], task: string, root: string | null, status: Participant['status'] = 'revealed'): Participant => ({
  node, role, start: 0, end: 1, status, locked: '0', ...(root === null ? {} : { commitment: resultCommitment(task, node, root), traceRoot: root }),
});

test('buildReport: served, cheats, caught, slashes and wrong finals per strategy, and the anomalies it flags', () => {
  const [h1, h2, wt, lv] = [ID('a'), ID('b'), ID('c'), ID('d')];
  const [t1, t2, t3, t4] = [ID('1'), ID('2'), ID('3'), ID('4')];
  const honest = ROOT('0');
  const wrong = ROOT('f');
  const node = (address: string, strategy: string, index: number, earnings: string, stake: string) => ({
    index, address, strategy, start: { stake: '30000', reputation: 100 }, end: { stake, earnings, reputation: 100 }, activity: { ...ACTIVITY },
  });
  const obs: SimObservations = {
    setup: { honest: 2, perStrategy: 1, strategies: ['wrong-token', 'lying-validator'], requests: 5, maxTokens: 32, concurrency: 2, temperature: 0.8 },
    params: PARAMS,
    nodes: [node(h1, 'honest', 0, '96', '30000'), node(h2, 'honest', 1, '32', '30000'), node(wt, 'wrong-token', 2, '32', '24000'), node(lv, 'lying-validator', 3, '0', '30000')],
    requests: [
      ...[t1, t2, t3, t4].map((task, index) => ({ index, prompt: 'p', seed: index + 1, commitment: ROOT('c'), honestRoot: honest, task, outcome: 'final' as const, ms: 1000 * (index + 1) })),
      { index: 4, prompt: 'p', seed: 5, commitment: ROOT('c'), honestRoot: honest, outcome: 'timeout' as const, ms: 9000 },
    ],
    views: {
      // t1: honest asserter, honest validator.
      [t1]: view(t1, [part(h1, 'asserter', t1, honest), part(h2, 'validator', t1, honest)], { root: honest, node: h1, audited: true }),
      // t2: wrong-token asserter, audited, caught and slashed; h1 wins and serves.
      [t2]: view(t2, [part(wt, 'asserter', t2, wrong, 'slashed'), part(h1, 'validator', t2, honest)], { root: honest, node: h1, audited: true }),
      // t3: wrong-token asserter through the window: a wrong result final, unaudited.
      [t3]: view(t3, [part(wt, 'asserter', t3, wrong)], { root: wrong, node: wt, audited: false }),
      // t4: a wrong result final after an audit, agreed by an honest validator: a bug.
      [t4]: view(t4, [part(lv, 'asserter', t4, wrong), part(h2, 'validator', t4, wrong)], { root: wrong, node: lv, audited: true }),
    },
    slashes: [{ task: t2, node: wt, quantity: '6000', reason: 'lost the dispute at step 5' }],
    proofs: [{ ms: 4, ok: true }, { ms: 6, ok: true }, { ms: 1, ok: false }],
    live: 0,
    wallMs: 10_000,
    idleGaps: [1500, 5000],
    dir: '/tmp/x',
  };
  const r = buildReport(obs);
  const s = Object.fromEntries(r.strategies.map((x) => [x.strategy, x]));
  assert.equal(r.requests.final, 4);
  assert.equal(r.requests.timeouts, 1);
  assert.deepEqual([s.honest.jobs, s.honest.served, s.honest.cheats], [4, 2, 1]); // h2 agreed with a wrong root in t4
  assert.deepEqual([s['wrong-token'].jobs, s['wrong-token'].served, s['wrong-token'].cheats, s['wrong-token'].caught, s['wrong-token'].slashed], [2, 1, 2, 1, '6000']);
  assert.deepEqual(s['wrong-token'].wrongFinal, { audited: 0, unaudited: 1 });
  assert.equal(s['wrong-token'].stakeDelta, '-6000');
  assert.equal(s['wrong-token'].profitPerJob, (32 - 6000) / 2);
  assert.deepEqual(s['lying-validator'].wrongFinal, { audited: 1, unaudited: 0 });
  assert.deepEqual(r.wrongFinal, { audited: 1, unaudited: 1, list: r.wrongFinal.list });
  assert.equal(r.honestSlashed, 0);
  assert.equal(r.audits.audited, 3);
  assert.equal(r.referee.proofs, 2);
  assert.deepEqual(r.idle, { gaps: 2, totalMs: 6500, maxMs: 5000 });
  assert.equal(r.referee.meanMs, 5);
  assert.equal(r.timing.meanToFinalMs, 2500);
  assert.ok(r.rule.holds);
  // cheatProfitPpm(R = 1, S = 6000, T = 32, q = p = 0.1) = 0.9·32 − 0.1·6000.
  assert.equal(s['wrong-token'].analytical.caughtPpm, 100_000);
  assert.equal(s['wrong-token'].analytical.perCheat, -571.2);
  assert.equal(s['wrong-token'].analytical.profitPerJob, -571.2);
  // lying-validator's one job was a lie as asserter: q = 1 is for validators; as asserter q = p.
  assert.equal(s['lying-validator'].analytical.caughtPpm, 100_000);
  assert.equal(s.honest.analytical.profitPerJob, 32);
  assert.ok(r.anomalies.some((a) => a.includes(t4) && a.includes('after an audit')), r.anomalies.join('\n'));
  assert.ok(r.anomalies.some((a) => a.includes('honest node') && a.includes(t4)), r.anomalies.join('\n'));
  assert.ok(r.anomalies.some((a) => a.includes('stuck')), r.anomalies.join('\n'));
  assert.match(formatReport(r), /honest nodes slashed: 0/);
});

test('runSim refuses parameters the coordinator would refuse, before starting anything', async () => {
  await assert.rejects(runSim({ auditPpm: 1000, slash: 100n, maxTokens: 32, requests: 1 }), (e: Error) => e instanceof SimError && /honesty must pay/.test(e.message));
});

test('a small real run: 3 honest nodes, wrong-token and lying-validator, 8 requests all audited', { timeout: 180_000 }, () =>
  withTempDir(async (dir) => {
    const t0 = Date.now();
    const lines: string[] = [];
    const r = await runSim({
      honest: 3, strategies: ['wrong-token', 'lying-validator'], perStrategy: 1, requests: 8, concurrency: 4, maxTokens: 16, auditPpm: 1_000_000,
      dir: join(dir, 'sim'), log: (line) => lines.push(line), nodeLog: () => {},
    });
    const text = formatReport(r);
    const elapsed = Date.now() - t0;
    assert.ok(elapsed < 150_000, `the run took ${elapsed} ms`);
    assert.equal(r.honestSlashed, 0, text);
    assert.deepEqual(r.anomalies, [], text);
    assert.equal(r.requests.sent, 8);
    assert.equal(r.requests.final + r.requests.failed + r.requests.errors + r.requests.timeouts, 8, text);
    assert.equal(r.requests.timeouts, 0, text);
    assert.equal(r.live, 0, text);
    // Every result is audited; a wrong one can pass an audit only when the validator drawn lied the
    // same way (lying-validator's lie is wrong-token's: the last token + 1) — never past an honest one.
    assert.equal(r.audits.unaudited, 0, text);
    assert.equal(r.wrongFinal.unaudited, 0, text);
    for (const w of r.wrongFinal.list) assert.ok(w.agreeingValidators.length > 0 && !w.agreeingValidators.includes('honest'), text);
    const served = r.strategies.reduce((a, s) => a + s.served, 0);
    assert.equal(served, r.requests.final, text);
    for (const s of r.strategies) {
      assert.ok(s.served <= r.requests.sent && s.caught <= s.cheats && s.cheats <= s.jobs, text);
      assert.equal(BigInt(s.stakeDelta), -BigInt(s.slashed), text);
      if (s.strategy === 'honest') assert.deepEqual([s.cheats, s.slashed, s.slashedHonestly], [0, '0', 0], text);
    }
    const wt = r.strategies.find((s) => s.strategy === 'wrong-token')!;
    const lv = r.strategies.find((s) => s.strategy === 'lying-validator')!;
    // wrong-token lies in every job; lying-validator only as a validator.
    assert.equal(wt.cheats, wt.jobs, text);
    assert.equal(lv.cheatsByRole.asserter ?? 0, 0, text);
    if (r.strategies.some((s) => s.caught > 0)) assert.ok(r.disputes.count > 0, text);
    if (r.disputes.count > 0) assert.ok(r.referee.proofs > 0 && r.referee.meanMs !== null, text);
    assert.match(text, /rule: p·\(R·T\+S\) ≥ \(1\+margin\)·C·T: 1·\(1·16\+6000\) = 6016 ≥ 1\.1·1·16 = 17\.6 — holds/);
    assert.ok(lines.some((l) => l.includes('8/8 requests done')), lines.join('\n'));
  }),
);
