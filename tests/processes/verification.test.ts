// The coordinator's verification (docs/network.md "Verification") driven through the real QuickJS
// runtime with the real host extensions over a real embedded store holding stories260K. Nodes are
// played in-process: each runs the real engine, records a real trace, stores real signed trace
// items, and answers the dispute game with real accumulators and openings — honestly, or with a
// deviation (a wrong token) or garbage.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import type { OutboxMessage } from '../../src/ao/runtime.js';
import { resultCommitment } from '../../src/processes/coordinator.js';
import type { Assignment, TaskView } from '../../src/processes/protocol.js';
import { walletDid } from '../../src/store/wallet.js';
import { openProcess, tagOf, tagsOf, type SendOptions } from './harness.js';
import { ALICE, OWNER, PROMPT, Player, TOKEN, World, actionOf, answer, fx, id43, play, source, until, useFixture, type Behaviour, type Net, type Sent } from './players.js';

/** Always audited, short windows: every path of the flow in a few messages. */
const SPAWN = {
  Token: TOKEN, 'Min-Stake': '600', Slash: '600', 'Miss-Slash': '60', 'Challenge-Bond': '600', 'Round-Bond': '5', 'Audit-Ppm': '1000000',
  'Max-Tokens': '64', 'Lease-Ms': '5000', 'Reveal-Ms': '5000', 'Clock-Ms': '5000', 'Challenge-Window-Ms': '3000', 'Unstake-Cooldown-Ms': '1000',
};


useFixture({ prefix: 'verity-verification-', spawn: SPAWN });

async function network(behaviours: Behaviour[], spawn: Record<string, string> = {}, stake = '3000'): Promise<Net> {
  const w = await World.open(spawn);
  await w.send({ from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: fx.manifestId } });
  const players = behaviours.map((b, i) => new Player(fx.wallets[i], b));
  for (const [i, p] of players.entries()) {
    await w.credit(p.address, stake, 'Stake');
    const r = await w.send({ from: p.address, tags: { Action: 'Register-Node', DID: walletDid(fx.wallets[i]), Models: fx.modelId } });
    assert.equal(tagOf(r.Messages.at(-1)!, 'Action'), 'Register-Node-Response', JSON.stringify(r.Messages.map(tagsOf)));
  }
  await w.credit(ALICE, '100000', 'Deposit');
  return { w, players };
}


const infer = (w: World, options: object = { max_tokens: 24 }, tags: Record<string, string> = {}, prompt = PROMPT): Promise<Sent> =>
  w.send({ from: ALICE, data: prompt, tags: { Action: 'Infer', 'X-Options': JSON.stringify(options), ...tags } });

const finalOf = (responses: OutboxMessage[]): { tags: Record<string, string>; view: TaskView } => {
  const last = responses.at(-1)!;
  return { tags: tagsOf(last), view: JSON.parse(last.Data!) as TaskView };
};

// ---- the flow ----

test('honest asserter and validator: pending answer at once, final when the blind audit agrees; both paid price × tokens, locks released', async () => {
  const net = await network(['honest', 'honest', 'honest']);
  const { w } = net;
  const r = await infer(w);
  const responses = await play(net, r);
  assert.deepEqual(responses.map((m) => tagOf(m, 'Status')), ['pending', 'final']);
  const { view } = finalOf(responses);
  const honest = new Player(fx.wallets[5]).run(JSON.parse(r.Messages.find((m) => actionOf(m) === 'Task-Assigned')!.Data!) as Assignment);
  assert.equal(view.receipt!.traceRoot, honest.trace.root, 'the receipt is the honest root');
  assert.deepEqual(view.tokens, honest.tokens);
  assert.equal(view.participants.filter((p) => p.status === 'revealed').length, 2, 'asserter and one validator');
  assert.deepEqual(view.participants.map((p) => p.role), ['asserter', 'validator']);
  const s = w.state();
  for (const p of view.participants) assert.equal(s.earnings[p.node], String(honest.tokens.length), 'each is paid price × its tokens');
  assert.deepEqual(Object.values(s.locked).filter((v) => v !== '0'), [], 'no stake stays locked');
  assert.equal(s.deposits[ALICE], String(100000 - 2 * honest.tokens.length), 'the requester pays for what was used');
  assert.deepEqual(s.tasks, {}, 'the final task left the live state');
  w.assertConserved('after a final task');
});

test('the validator cannot see the asserter\'s root before it commits: the commit phase shows only commitments', async () => {
  const net = await network(['honest', 'honest', 'honest']);
  const { w, players } = net;
  const r = await infer(w);
  const assigned = r.Messages.find((m) => actionOf(m) === 'Task-Assigned')!;
  const asserter = players.find((p) => p.address === assigned.Target)!;
  const a = JSON.parse(assigned.Data!) as Assignment;
  const commit = await answer(w, asserter, assigned);
  const root = asserter.runs.get(a.task)!.root;
  // Everything the coordinator says until the validator commits: no message, view or state holds the root.
  let seen = JSON.stringify(commit!.Messages);
  const hb = await w.send({ from: players[0].address, tags: { Action: 'Heartbeat' } });
  seen += JSON.stringify(hb.Messages);
  const view = await w.send({ from: ALICE, tags: { Action: 'Task', Task: a.task } });
  seen += JSON.stringify(view.Messages) + JSON.stringify(w.state());
  assert.ok(hb.Messages.some((m) => actionOf(m) === 'Task-Assigned'), 'the next message draws the audit');
  assert.ok(!seen.includes(root), 'the asserter\'s root is nowhere before the reveal');
});

test('a wrong-token asserter is audited, loses the dispute at the token\'s head step, is slashed; the requester gets a corrected final answer', async () => {
  const net = await network(['wrong-token', 'honest', 'honest', 'honest'], { Validators: '1' });
  const { w, players } = net;
  // Make the liar the asserter: give it the only free slot first.
  const liar = players[0];
  let r: Sent | null = null;
  for (let attempt = 0; attempt < 20 && !r; attempt++) {
    const sent = await infer(w, { max_tokens: 24 }, { Nodes: liar.address }, `${PROMPT}${' '.repeat(attempt)}`);
    if (sent.Messages.some((m) => actionOf(m) === 'Task-Assigned' && m.Target === liar.address)) r = sent;
  }
  assert.ok(r, 'the liar took the lease');
  const stakeBefore = BigInt(w.state().stakes[liar.address]);
  const responses = await play(net, r!);
  const { tags, view } = finalOf(responses);
  assert.deepEqual(responses.map((m) => tagOf(m, 'Status')), ['pending', 'final']);
  assert.equal(tags.Corrected, 'true');
  assert.equal(view.disputes.length, 1);
  const d = view.disputes[0];
  assert.equal(d.outcome!.winner, view.receipt!.node);
  assert.notEqual(view.receipt!.node, liar.address);
  assert.equal(d.proof!.kind, 'head', 'the wrong token is found at a head step');
  assert.ok(d.rounds.length >= 1 && d.rounds.length <= Math.ceil(Math.log(d.steps) / Math.log(8)), `${d.rounds.length} rounds for ${d.steps} steps`);
  const honest = new Player(fx.wallets[5]).run(JSON.parse(r!.Messages.find((m) => actionOf(m) === 'Task-Assigned')!.Data!) as Assignment);
  assert.deepEqual(view.tokens, honest.tokens, 'the corrected result is the honest one');
  assert.equal(view.receipt!.traceRoot, honest.trace.root);
  const s = w.state();
  assert.equal(BigInt(s.stakes[liar.address] ?? '0'), stakeBefore - 600n - 5n * BigInt(d.rounds.length), 'the liar lost its lock and its round bonds');
  assert.equal(s.earnings[liar.address] ?? '0', '0', 'the liar is paid nothing');
  const liarNode = s.nodes.find((n) => n.address === liar.address)!;
  assert.equal(liarNode.reputation, 50);
  w.assertConserved('after a dispute');
});

test('a lying validator loses against an honest asserter, whose result is final after a fresh audit', async () => {
  const net = await network(['honest', 'garbage', 'honest'], {});
  const { w, players } = net;
  // Stake the liar far above the rest so that it is drawn as validator.
  await w.credit(players[1].address, '1000000', 'Stake');
  let r: Sent | null = null;
  for (let attempt = 0; attempt < 20 && !r; attempt++) {
    const sent = await infer(w, { max_tokens: 16 }, { Nodes: players[0].address }, `${PROMPT}${'!'.repeat(attempt)}`);
    r = sent;
  }
  const responses = await play(net, r!, { tickMs: 700 });
  const { view } = finalOf(responses);
  assert.equal(tagOf(responses.at(-1)!, 'Status'), 'final');
  assert.equal(view.receipt!.node, players[0].address, 'the honest asserter\'s result stands');
  assert.ok(view.participants.some((p) => p.node === players[1].address && p.status === 'slashed'), 'the liar is slashed');
  w.assertConserved('after a lying validator');
});

test('a silent leaseholder loses Miss-Slash and reputation; a node that commits but never reveals is slashed S', async () => {
  const net = await network(['silent', 'no-reveal', 'honest', 'honest']);
  const { w, players } = net;
  const before = players.map((p) => BigInt(w.state().stakes[p.address]));
  for (let i = 0; i < 4; i++) {
    const r = await infer(w, { max_tokens: 8 }, {}, `${PROMPT} ${i}`);
    await play(net, r, { tickMs: 1500 });
  }
  const s = w.state();
  const lost = players.map((p, i) => before[i] - BigInt(s.stakes[p.address] ?? '0'));
  assert.equal(lost[2], 0n, 'honest nodes lose nothing');
  assert.equal(lost[3], 0n);
  const silent = s.nodes.find((n) => n.address === players[0].address);
  if (silent && silent.expired > 0) assert.equal(lost[0], 60n * BigInt(silent.expired));
  const tried = players.slice(0, 2).map((p) => s.nodes.find((n) => n.address === p.address));
  assert.ok(lost[0] > 0n || lost[1] > 0n, `a cheater was drawn and paid for it: ${lost} ${JSON.stringify(tried)}`);
  if (lost[1] > 0n) assert.equal(lost[1] % 600n, 0n, 'no-reveal loses whole locks');
  w.assertConserved('after silence');
});

// ---- refusals ----

async function refused(w: World, m: Omit<SendOptions, 'timestamp'> & { timestamp?: number }, code: number, pattern?: RegExp): Promise<void> {
  const before = structuredClone(w.state());
  const r = await w.send(m);
  if (process.env.DEBUG_REFUSED) process.stderr.write(`${JSON.stringify(r.Messages.map(tagsOf))}\n${JSON.stringify(before.locked)} ${JSON.stringify(w.state().locked)}\n`);
  const replies = r.Messages.filter((x) => x.Target === m.from);
  const last = replies.at(-1)!;
  const tags = tagsOf(last);
  const action = (m.tags as Record<string, string>).Action;
  assert.equal(tags.Action, `${action}-Error`, JSON.stringify(r.Messages.map(tagsOf)));
  assert.equal(tags.Code, String(code), tags.Message);
  if (pattern) assert.match(tags.Message, pattern);
  assert.ok(!tags.Message.includes('\n'));
  // Nothing else happened: the message's own Timestamp moved nothing in this test (no deadline passed).
  assert.deepEqual(w.state(), before, `${action}: the state is unchanged`);
}

test('dispute refusals change nothing: wrong party, wrong turn, replayed post, bad values, bond too small, an opening that does not check, a move after the clock', async () => {
  const net = await network(['wrong-token', 'honest', 'honest'], { 'Clock-Ms': '100000', 'Round-Bond': '2000' }, '2700');
  const { w, players } = net;
  const liar = players[0];
  const r = await infer(w, { max_tokens: 24 }, { Nodes: liar.address });
  assert.ok(r.Messages.some((m) => actionOf(m) === 'Task-Assigned' && m.Target === liar.address));
  const task = r.id;
  const rounds = (await until(net, r, (m) => m !== undefined && actionOf(m) === 'Dispute-Round')).filter((m) => actionOf(m) === 'Dispute-Round');
  const s = w.state();
  assert.equal(s.tasks[task].status, 'disputed');
  const d = s.tasks[task].disputes[0];
  const a = s.tasks[task].participants[d.asserter].node;
  const c = s.tasks[task].participants[d.challenger].node;
  const points = (JSON.parse(rounds[0].Data!) as { points: number[] }).points;
  const values = JSON.stringify(points.map(() => 'c'.repeat(64)));
  await refused(w, { from: players[2].address === a || players[2].address === c ? ALICE : players[2].address, tags: { Action: 'Dispute-Post', Task: task, Round: '1' }, data: values }, 403, /not a party/);
  await refused(w, { from: a, tags: { Action: 'Dispute-Post', Task: task, Round: '2' }, data: values }, 409, /round 1/);
  await refused(w, { from: a, tags: { Action: 'Dispute-Post', Task: task, Round: '1' }, data: JSON.stringify(['c'.repeat(64)]) }, 400, /bad-values/);
  await refused(w, { from: a, tags: { Action: 'Dispute-Post', Task: task, Round: '1' }, data: 'not json' }, 400);
  await refused(w, { from: a, tags: { Action: 'Dispute-Open', Task: task, Step: '1' }, data: '{}' }, 409, /phase bisect/);
  // The liar (stake 2700 − lock 600) can afford one 2000 bond; a second post in the same round is a replay.
  const liarParty = a === liar.address ? a : c;
  const ok = await w.send({ from: liarParty, tags: { Action: 'Dispute-Post', Task: task, Round: '1' }, data: values });
  assert.equal(tagOf(ok.Messages.find((m) => m.Target === liarParty)!, 'Action'), 'Dispute-Post-Response');
  await refused(w, { from: liarParty, tags: { Action: 'Dispute-Post', Task: task, Round: '1' }, data: values }, 409, /already posted/);
  const other = liarParty === a ? c : a;
  // The honest party's clock runs out if it waits: a post after its clock is refused... and the sweep of that message ends the game first.
  const late = await w.send({ from: other, tags: { Action: 'Dispute-Post', Task: task, Round: '1' }, data: values, timestamp: w.now + 200_000 });
  assert.equal(tagOf(late.Messages.find((m) => m.Target === other && /Dispute-Post/.test(tagOf(m, 'Action')!))!, 'Action'), 'Dispute-Post-Error');
  assert.ok(late.Messages.some((m) => actionOf(m) === 'Slash-Notice' && m.Target === other), 'the party whose clock ran out is slashed');
  w.assertConserved('after refusals');
});

test('a round bond the party cannot cover is refused (402) and changes nothing', async () => {
  const net = await network(['wrong-token', 'honest', 'honest'], { 'Round-Bond': '5000', 'Clock-Ms': '100000' }, '3000');
  const { w, players } = net;
  const r = await infer(w, { max_tokens: 24 }, { Nodes: players[0].address });
  const round = (await until(net, r, (m) => m !== undefined && actionOf(m) === 'Dispute-Round'))[0];
  assert.ok(round);
  const points = (JSON.parse(round.Data!) as { points: number[] }).points;
  await refused(w, { from: round.Target, tags: { Action: 'Dispute-Post', Task: r.id, Round: '1' }, data: JSON.stringify(points.map(() => 'd'.repeat(64))) }, 402, /Round-Bond/);
});

test('commit and reveal refusals change nothing: not the leaseholder, replayed commit, reveal before asked, a root that does not open the commitment, a trace that does not exist', async () => {
  const net = await network(['honest', 'honest', 'honest'], { 'Audit-Ppm': '1000000' });
  const { w, players } = net;
  const r = await infer(w);
  const assigned = r.Messages.find((m) => actionOf(m) === 'Task-Assigned')!;
  const a = JSON.parse(assigned.Data!) as Assignment;
  const asserter = players.find((p) => p.address === assigned.Target)!;
  const other = players.find((p) => p !== asserter)!;
  const run = asserter.run(a);
  const commitTags = { Action: 'Submit-Result', Task: a.task, 'Job-Commitment': a.commitment, 'Result-Commitment': resultCommitment(a.task, asserter.address, run.root), Tokens: String(run.tokens.length) };
  const data = JSON.stringify({ tokens: run.tokens });
  await refused(w, { from: other.address, tags: commitTags, data }, 403, /no lease/);
  await refused(w, { from: asserter.address, tags: { ...commitTags, 'Result-Commitment': 'xyz' }, data }, 400, /Result-Commitment/);
  await refused(w, { from: asserter.address, tags: { ...commitTags, Tokens: '3' }, data }, 400, /Tokens/);
  await w.send({ from: asserter.address, tags: commitTags, data });
  // The next message draws the audit (a validator's lease); only then is the state still.
  const hb = await w.send({ from: players[0].address, tags: { Action: 'Heartbeat' } });
  const vAssigned = hb.Messages.find((m) => actionOf(m) === 'Task-Assigned')!;
  await refused(w, { from: asserter.address, tags: commitTags, data }, 409, /already in/);
  await refused(w, { from: asserter.address, tags: { Action: 'Reveal', Task: a.task, 'Trace-Root': run.root, Trace: id43('nothing') } }, 409, /when asked/);
  const validator = players.find((p) => p.address === vAssigned.Target)!;
  await answer(w, validator, vAssigned);
  assert.equal(w.state().tasks[a.task].status, 'revealing');
  await refused(w, { from: asserter.address, tags: { Action: 'Reveal', Task: a.task, 'Trace-Root': 'e'.repeat(64), Trace: id43('nothing') } }, 400, /does not open/);
  await refused(w, { from: asserter.address, tags: { Action: 'Reveal', Task: a.task, 'Trace-Root': run.root, Trace: id43('nothing') } }, 400, /trace does not check/);
  const outsider = players.find((p) => p !== asserter && p !== validator)!;
  await refused(w, { from: outsider.address, tags: { Action: 'Reveal', Task: a.task, 'Trace-Root': run.root, Trace: id43('nothing') } }, 403, /no part/);
  // The validator's trace item under the asserter's reveal: signed by another node.
  const validatorItem = await validator.traceItem(a.task);
  await refused(w, { from: asserter.address, tags: { Action: 'Reveal', Task: a.task, 'Trace-Root': run.root, Trace: validatorItem } }, 400, /trace does not check/);
});

test('Challenge: only in the window, only an active staked outsider, bond covered, a root that differs and a trace that checks', async () => {
  // Audit-Ppm 0 is honest only when running costs nothing: such a network lives on challenges.
  const net = await network(['honest', 'honest', 'wrong-token'], { 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0', 'Challenge-Window-Ms': '100000' });
  const { w, players } = net;
  const r = await infer(w, { max_tokens: 24 }, { Nodes: players[0].address });
  await until(net, r, () => w.state().tasks[r.id]?.status === 'challengeable');
  assert.equal(w.state().tasks[r.id].status, 'challengeable');
  const a = JSON.parse(r.Messages.find((m) => actionOf(m) === 'Task-Assigned')!.Data!) as Assignment;
  const challenger = players[2];
  const run = challenger.run(a);
  const item = await challenger.traceItem(a.task);
  const tags = { Action: 'Challenge', Task: a.task, 'Trace-Root': run.root, Trace: item, Tokens: String(run.tokens.length) };
  const data = JSON.stringify({ tokens: run.tokens });
  await refused(w, { from: players[0].address, tags, data }, 409, /already takes part/);
  await refused(w, { from: ALICE, tags, data }, 403, /active staked node/);
  await refused(w, { from: challenger.address, tags: { ...tags, 'Trace-Root': players[0].runs.get(a.task)!.root }, data }, 400, /agrees/);
  await refused(w, { from: challenger.address, tags: { ...tags, Trace: id43('none') }, data }, 400, /trace does not check/);
  // A wrong challenge opens a dispute that the challenger loses.
  const sent = await w.send({ from: challenger.address, tags, data });
  assert.equal(w.state().tasks[a.task].status, 'disputed');
  const responses = await play(net, sent);
  const { view } = finalOf(responses);
  assert.equal(tagOf(responses.at(-1)!, 'Status'), 'final');
  assert.equal(view.receipt!.node, players[0].address);
  assert.ok(view.participants.some((p) => p.role === 'challenger' && p.status === 'slashed'));
  w.assertConserved('after a lost challenge');
});

// ---- parameters ----

test('parameters that let cheating pay are refused, naming the bound and its numbers; Set-Params is the owner\'s', async () => {
  const bad = await openProcess(source, { owner: OWNER, tags: { ...SPAWN, 'Audit-Ppm': '10000', Slash: '100', 'Min-Stake': '100', 'Challenge-Bond': '100' }, extensions: fx.ext });
  assert.match(bad.boot.Error ?? '', /honesty must pay: p·\(R·T \+ S\) ≥ \(1 \+ margin\)·C·T at T = 64 tokens.*Slash must be at least 6976/);
  const w = await World.open();
  await refused(w, { from: OWNER, tags: { Action: 'Set-Params', 'Audit-Ppm': '1000', Slash: '600' } }, 400, /honesty must pay/);
  await refused(w, { from: OWNER, tags: { Action: 'Set-Params', 'Min-Stake': '10' } }, 400, /stake rule: Min-Stake \(10\) must cover one lease's lock, Slash \(600\)/);
  await refused(w, { from: OWNER, tags: { Action: 'Set-Params', 'Challenge-Bond': '10' } }, 400, /Challenge-Bond \(10\) must be at least Slash/);
  await refused(w, { from: OWNER, tags: { Action: 'Set-Params', Validators: '9' } }, 400, /Validators must be a whole number in 1..3/);
  await refused(w, { from: ALICE, tags: { Action: 'Set-Params', 'Audit-Ppm': '500000' } }, 403, /owner/);
  const ok = await w.send({ from: OWNER, tags: { Action: 'Set-Params', 'Audit-Ppm': '500000', Slash: '500' } });
  assert.equal(tagOf(ok.Messages[0], 'Action'), 'Set-Params-Response');
  assert.equal(w.state().params.auditPpm, 500000);
});

test('registration costs stake, and the number of node entries is bounded', async () => {
  const w = await World.open({ 'Max-Nodes': '2' });
  await w.send({ from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: fx.manifestId } });
  const reg = (i: number) => ({ from: fx.addrs[i], tags: { Action: 'Register-Node', DID: walletDid(fx.wallets[i]), Models: fx.modelId } });
  await refused(w, reg(0), 402, /stake at least Min-Stake/);
  for (const i of [0, 1, 2]) await w.credit(fx.addrs[i], '600', 'Stake');
  await w.send(reg(0));
  await w.send(reg(1));
  await refused(w, reg(2), 503, /limit of 2 nodes/);
});

// ---- money ----

test('money is conserved after every message of random flows with honest and cheating nodes, disputes, slashes and withdrawals', async () => {
  const behaviours: Behaviour[] = ['honest', 'wrong-token', 'garbage', 'silent', 'no-reveal'];
  const seen = { final: 0, failed: 0, disputes: 0, slashed: 0, withdrawn: 0 };
  await fc.assert(
    fc.asyncProperty(
      fc.shuffledSubarray(behaviours, { minLength: 2, maxLength: 4 }).map((b) => (b.includes('wrong-token') ? b : ['wrong-token' as Behaviour, ...b])),
      fc.array(fc.record({ tokens: fc.integer({ min: 3, max: 12 }), withdraw: fc.boolean(), tick: fc.integer({ min: 1, max: 3000 }) }), { minLength: 2, maxLength: 4 }),
      async (cheaters, requests) => {
        const net = await network(['honest', 'honest', ...cheaters], { 'Audit-Ppm': '800000', Slash: '400', 'Min-Stake': '400', 'Challenge-Bond': '400', 'Miss-Slash': '40' }, '1500');
        const { w } = net;
        const check = (): void => w.assertConserved(`with ${cheaters}`);
        const send = w.send.bind(w);
        w.send = async (m) => {
          const r = await send(m);
          check();
          return r;
        };
        for (const [i, q] of requests.entries()) {
          const r = await infer(w, { max_tokens: q.tokens }, {}, `${PROMPT} ${i}`);
          const responses = await play(net, r, { tickMs: q.tick });
          const status = tagOf(responses.at(-1)!, 'Status');
          if (status === 'final') seen.final++;
          if (status === 'failed') seen.failed++;
          if (q.withdraw) {
            const wr = await w.send({ from: ALICE, tags: { Action: 'Withdraw', Quantity: '10' } });
            if (wr.Messages.some((m) => actionOf(m) === 'Withdraw-Response')) seen.withdrawn++;
          }
        }
        seen.disputes += w.state().totals.disputes;
        if (process.env.DEBUG_SIM) process.stderr.write(`${cheaters} ${JSON.stringify(requests)} ${JSON.stringify(w.state().totals)} ${JSON.stringify(w.state().nodes.map((n) => [n.completed, n.audited, n.disputesLost]))}\n`);
        if (BigInt(w.state().totals.slashed) > 0n) seen.slashed++;
      },
    ),
    { numRuns: 8, seed: 20261201 },
  );
  for (const [what, count] of Object.entries(seen)) if (what !== 'failed') assert.ok(count > 0, `no run had ${what}: ${JSON.stringify(seen)}`);
});

test('the live state does not grow with tasks served: final tasks leave it', async () => {
  const net = await network(['honest', 'honest'], { 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0', 'Challenge-Window-Ms': '0' });
  const { w } = net;
  const sizes: number[] = [];
  for (let i = 0; i < 12; i++) {
    const r = await infer(w, { max_tokens: 4 }, {}, `${PROMPT} ${i}`);
    await play(net, r, { tickMs: 10 });
    sizes.push(JSON.stringify(w.state()).length);
  }
  // Once every account has its ledger entries only the counters grow (a few digits).
  assert.ok(sizes[11] - sizes[3] < 16, `state sizes ${sizes}`);
  assert.equal(w.state().totals.final, 12);
});

