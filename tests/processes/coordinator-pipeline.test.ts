// The coordinator's pipeline rules (docs/pipeline.md "Pipelines on the network"), through the real
// QuickJS runtime and host extensions, with nodes that declare too little memory for stories260K
// (1,826,560 bytes): the pipeline drawn (stages, layers, urls, locks), what is refused (an Infer the
// stage nodes cannot hold together, a Submit-Result from a stage that is not the last, a Reveal
// without the stage records), an expired pipeline lease (the silent stage alone held responsible,
// drawn again without it; all lose reputation, none stake, when none was silent), and a dispute an honest
// pipeline wins against a lying challenger, its last stage unable to post values that are not its
// stored trace's (framing another stage) and its steps opened by their owners only. Money is
// conserved throughout.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { OutboxMessage } from '../../src/ao/runtime.js';
import { loadModel, modelIdentity } from '../../src/engine/index.js';
import { traceItem } from '../../src/node/work.js';
import { readStageRecord, stageOpening, startNetStage, type NetStage } from '../../src/pipeline/net-stage.js';
import { describeRequest } from '../../src/processes/host.js';
import { resultCommitment, type Assignment, type Participant, type TaskView } from '../../src/processes/protocol.js';
import { accumulators, encodeOpening } from '../../src/proof/index.js';
import { createItem } from '../../src/store/items.js';
import { walletDid, walletSigner, type Wallet } from '../../src/store/wallet.js';
import { stories260K, tok512 } from '../helpers.js';
import { tagOf, tagsOf } from './harness.js';
import { ALICE, OWNER, PROMPT, Player, TOKEN, World, actionOf, answer, fx, useFixture } from './players.js';

const SPAWN = {
  Token: TOKEN, 'Min-Stake': '600', Slash: '600', 'Miss-Slash': '60', 'Challenge-Bond': '600', 'Round-Bond': '5', 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0',
  'Max-Tokens': '64', 'Lease-Ms': '10000', 'Reveal-Ms': '5000', 'Clock-Ms': '5000', 'Challenge-Window-Ms': '3000', 'Unstake-Cooldown-Ms': '1000',
};
useFixture({ prefix: 'verity-coordinator-pipeline-', spawn: SPAWN, wallets: 8 });

/** A coordinator with `n` stage-capable nodes declaring `memory` bytes each. */
async function world(n: number, memory: number): Promise<World> {
  const w = await World.open();
  await w.send({ from: OWNER, tags: { Action: 'Register-Model', Model: fx.modelId, Manifest: fx.manifestId } });
  for (let i = 0; i < n; i++) {
    await w.credit(fx.addrs[i], '3000', 'Stake');
    const r = await w.send({ from: fx.addrs[i], tags: { Action: 'Register-Node', DID: walletDid(fx.wallets[i]), Models: fx.modelId, Memory: String(memory), 'Stream-Url': `http://127.0.0.1:${9000 + i}` } });
    assert.equal(tagOf(r.Messages.at(-1)!, 'Action'), 'Register-Node-Response', JSON.stringify(r.Messages.map(tagsOf)));
  }
  await w.credit(ALICE, '100000', 'Deposit');
  return w;
}

const assigned = (messages: OutboxMessage[]): OutboxMessage[] => messages.filter((m) => actionOf(m) === 'Task-Assigned');
const taskView = async (w: World, task: string): Promise<TaskView> => JSON.parse((await w.send({ from: ALICE, tags: { Action: 'Task', Task: task } })).Messages.at(-1)!.Data!) as TaskView;
const pipelines = (view: TaskView): Participant[] => view.participants.filter((p) => p.stages);

test('a model no node holds is leased to a pipeline: stages in order over the five layers, each with its url and its own lock', async () => {
  const w = await world(4, 800_000);
  const r = await w.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': JSON.stringify({ max_tokens: 16 }) } });
  const leases = assigned(r.Messages);
  assert.equal(leases.length, 3, 'three stages (two nodes cannot hold 1,826,560 bytes in 800,000 each)');
  const task = tagOf(r.Messages.at(-1)!, 'Task')!;
  const a = leases.map((m) => JSON.parse(m.Data!) as Assignment);
  a.forEach((x, i) => {
    assert.equal(tagOf(leases[i], 'Stage'), String(i));
    assert.equal(x.pipeline!.stage, i);
    assert.equal(x.pipeline!.stages[i].node, leases[i].Target);
  });
  const stages = a[0].pipeline!.stages;
  assert.deepEqual(stages.map((st) => st.first), [0, stages[0].end, stages[1].end]);
  assert.equal(stages[2].end, 5);
  for (const st of stages) assert.match(st.url, new RegExp(`^http://127\\.0\\.0\\.1:90\\d\\d/pipe/${task}$`));
  const s = w.state();
  for (const st of stages) assert.equal(s.locked[st.node], '600', 'each stage locks S');
  // The Tasks reply of each stage node lists its lease with its stage.
  for (const [i, st] of stages.entries()) {
    const t = await w.send({ from: st.node, tags: { Action: 'Tasks' } });
    const reply = JSON.parse(t.Messages.at(-1)!.Data!) as { leases: Assignment[] };
    assert.equal(reply.leases[0].pipeline!.stage, i);
  }
  // Only the last stage submits for the pipeline.
  const early = await w.send({ from: stages[0].node, tags: { Action: 'Submit-Result', Task: task, 'Job-Commitment': a[0].commitment, 'Result-Commitment': 'ab'.repeat(32), Tokens: '1' }, data: JSON.stringify({ tokens: [5] }) });
  assert.equal(tagOf(early.Messages.at(-1)!, 'Code'), '403');
  w.assertConserved('after drawing a pipeline');
});

test('an Infer that the stage nodes cannot hold together, as many pipelines as its Redundancy of at most 6 stages each, is refused (503) with the numbers', async () => {
  const w = await world(3, 400_000);
  const r = await w.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': JSON.stringify({ max_tokens: 16 }) } });
  const last = r.Messages.at(-1)!;
  assert.equal(tagOf(last, 'Code'), '503');
  assert.match(tagOf(last, 'Message')!, /1826560 bytes.*hold 1200000 bytes together/);
  assert.deepEqual(w.state().tasks, {});
  // Redundancy counts pipelines: four nodes of 800,000 bytes make one, not two.
  const four = await world(4, 800_000);
  const two = (await four.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', Redundancy: '2', 'X-Options': JSON.stringify({ max_tokens: 16 }) } })).Messages.at(-1)!;
  assert.equal(tagOf(two, 'Code'), '503');
  assert.match(tagOf(two, 'Message')!, /hold 3200000 bytes together, for 2 pipelines/);
  // A pipeline is at most 6 stages: eight nodes of 300,000 bytes hold it together, but not in six.
  const eight = await world(8, 300_000);
  const many = (await eight.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': JSON.stringify({ max_tokens: 16 }) } })).Messages.at(-1)!;
  assert.equal(tagOf(many, 'Code'), '503');
  assert.match(tagOf(many, 'Message')!, /needs more than 6 pipeline stages/);
});

test('an expired pipeline lease: the stage not heard from in its second half alone is held responsible, and the new pipeline is drawn without it', async () => {
  const w = await world(4, 800_000);
  const r = await w.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': JSON.stringify({ max_tokens: 16 }) } });
  const task = tagOf(r.Messages.at(-1)!, 'Task')!;
  const first = (JSON.parse(assigned(r.Messages)[0].Data!) as Assignment).pipeline!.stages;
  const silent = first[1].node;
  // The two other stages say they are alive in the lease's second half; the middle one is gone.
  for (const st of [first[0], first[2]]) await w.send({ from: st.node, tags: { Action: 'Heartbeat' }, timestamp: r.timestamp + 7_000 });
  const next = await w.send({ from: first[0].node, tags: { Action: 'Heartbeat' }, timestamp: r.timestamp + 10_001 });
  const view = await taskView(w, task);
  const [expired, drawn] = pipelines(view);
  assert.equal(expired.status, 'expired');
  assert.deepEqual(expired.stages!.map((st) => st.status), expired.stages!.map((st) => (st.node === silent ? 'expired' : 'released')));
  const s = w.state();
  assert.equal(s.stakes[silent], '2940', 'the silent stage loses Miss-Slash');
  for (const st of [first[0], first[2]]) assert.equal(s.stakes[st.node], '3000', 'the others lose nothing');
  // Drawn again at once, among the three others (the two let go may serve again).
  assert.equal(assigned(next.Messages).length, 3);
  assert.ok(drawn && !drawn.stages!.some((st) => st.node === silent), 'the new pipeline leaves the silent node out');
  w.assertConserved('after an expired pipeline lease');
});

test('when every stage was heard from, an expired pipeline lease holds them all responsible: reputation, not stake', async () => {
  const w = await world(3, 800_000);
  const r = await w.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': JSON.stringify({ max_tokens: 16 }), 'X-Reference': 'all-heard' } });
  const task = tagOf(r.Messages.at(-1)!, 'Task')!;
  const stages = (JSON.parse(assigned(r.Messages)[0].Data!) as Assignment).pipeline!.stages;
  for (const st of stages) await w.send({ from: st.node, tags: { Action: 'Heartbeat' }, timestamp: r.timestamp + 7_000 });
  await w.send({ from: OWNER, tags: { Action: 'Info' }, timestamp: r.timestamp + 10_001 });
  const s = w.state();
  // None can be told apart (a stage that stalls the others while it heartbeats, or a stranger
  // between them): all lose reputation, none is slashed.
  for (const st of stages) {
    assert.equal(s.stakes[st.node], '3000', 'no one is slashed');
    assert.equal(s.nodes.find((n) => n.address === st.node)!.reputation, 80);
  }
  // No node is left to draw a new pipeline from: the task waits (and fails at Max-Wait-Ms).
  const view = s.tasks[task] as unknown as { participants: Participant[] };
  assert.deepEqual(view.participants[0].stages!.map((st) => st.status), ['expired', 'expired', 'expired']);
  w.assertConserved('after a lease that expired with everyone heard from');
});

test('a dispute against an honest pipeline: a last stage\'s posts that are not its stored trace are refused, an opening from a stage that does not own the step is refused, the owner\'s opening wins; the lying challenger is slashed and the stages are paid by layers', { timeout: 120_000 }, async () => {
  const w = await world(4, 800_000);
  const r = await w.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': JSON.stringify({ max_tokens: 8 }) } });
  const task = tagOf(r.Messages.at(-1)!, 'Task')!;
  const a = JSON.parse(assigned(r.Messages)[0].Data!) as Assignment;
  const stages = a.pipeline!.stages;
  const walletOf = (address: string): Wallet => fx.wallets[fx.addrs.indexOf(address)];
  const challengerAddress = fx.addrs.slice(0, 4).find((x) => !stages.some((st) => st.node === x))!;
  const challenger = new Player(walletOf(challengerAddress), 'wrong-token');
  // The three stages run for real, wired in-process.
  const job = describeRequest({ ...modelIdentity(fx.model), tokenizer: fx.model.tokenizer, seqLen: fx.model.config.seqLen },
    { prompt: a.prompt, maxTokens: a.options.max_tokens, temperature: a.options.temperature, topP: a.options.top_p, seed: a.options.seed });
  const ranges = stages.map((st) => ({ first: st.first, end: st.end }));
  const lease = { task, commitment: a.commitment, leaseEnd: a.leaseEnd, nodes: stages.map((st) => st.node) };
  const specs = ranges.map((range, i) => ({ model: loadModel(stories260K, { tokenizer: tok512, layers: range, embedding: i === 0, head: i === ranges.length - 1 }), job, index: i, ranges }));
  const net: NetStage[] = [];
  for (let i = stages.length - 1; i >= 0; i--) net[i] = startNetStage({ ...specs[i], lease, signer: walletSigner(walletOf(stages[i].node)), post: (to, raw) => setImmediate(() => void net[to].take(raw)) });
  const claim = (await net[2].done).claim!;
  const last = stages[2].node;
  const inbox: OutboxMessage[] = [...(await w.send({ from: last, tags: { Action: 'Submit-Result', Task: task, 'Job-Commitment': a.commitment, 'Result-Commitment': resultCommitment(task, last, claim.root), Tokens: String(claim.tokens.length) }, data: JSON.stringify({ tokens: claim.tokens }) })).Messages];
  const doc = traceItem({ task, job, commitment: a.commitment, root: claim.root, tokens: [...job.promptTokens.slice(1), ...claim.tokens], leaves: claim.leaves, rngs: claim.rngs });
  const item = await createItem(doc.data, walletSigner(walletOf(last)), { tags: doc.tags });
  await fx.store.put(item.raw);
  for (const rec of claim.records) await fx.store.put(rec.raw);
  const records = claim.records.map((rec, i) => readStageRecord(rec, lease, i, ranges[i]));
  const accs = accumulators({ commitment: a.commitment, leaves: claim.leaves });
  const before = w.snapshot();
  let challenged = false;
  const refused: string[] = [];
  for (let n = 0; n < 400; n++) {
    const m = inbox.shift();
    if (!m) {
      const live = w.state().tasks[task];
      if (!live) break;
      if (live.status === 'challengeable' && !challenged) {
        challenged = true;
        challenger.run(a);
        const run = challenger.runs.get(task)!;
        inbox.push(...(await w.send({ from: challengerAddress, tags: { Action: 'Challenge', Task: task, 'Trace-Root': run.root, Trace: await challenger.traceItem(task), Tokens: String(run.tokens.length) }, data: JSON.stringify({ tokens: run.tokens }) })).Messages);
      } else inbox.push(...(await w.send({ from: OWNER, tags: { Action: 'Heartbeat' }, timestamp: w.now + 500 })).Messages);
      continue;
    }
    const tags = tagsOf(m);
    if (m.Target === last && tags.Action === 'Reveal-Requested') {
      // A reveal without the stage records, or short of one, is refused and changes nothing.
      for (const records of [undefined, claim.records.slice(0, 2).map((x) => x.id).join(',')]) {
        const kept = w.snapshot();
        const bad = await w.send({ from: last, tags: { Action: 'Reveal', Task: task, 'Trace-Root': claim.root, Trace: item.id, ...(records === undefined ? {} : { 'Stage-Records': records }) } });
        refused.push(`${tagOf(bad.Messages.at(-1)!, 'Code')} ${tagOf(bad.Messages.at(-1)!, 'Message')}`);
        assert.deepEqual(w.state().tasks[task].participants, kept.tasks[task].participants, 'a refused reveal changes no participant');
      }
      inbox.push(...(await w.send({ from: last, tags: { Action: 'Reveal', Task: task, 'Trace-Root': claim.root, Trace: item.id, 'Stage-Records': claim.records.map((x) => x.id).join(',') } })).Messages);
    } else if (m.Target === last && tags.Action === 'Dispute-Round') {
      const { points } = JSON.parse(m.Data!) as { points: number[] };
      // The framing attempt: honest values up to the first point, garbage after (the game would narrow onto stage 0).
      const framed = await w.send({ from: last, tags: { Action: 'Dispute-Post', Task: task, Round: tags.Round }, data: JSON.stringify(points.map((p, k) => (k === 0 ? accs[p] : 'ee'.repeat(32)))) });
      refused.push(`${tagOf(framed.Messages.at(-1)!, 'Code')} ${tagOf(framed.Messages.at(-1)!, 'Message')}`);
      inbox.push(...(await w.send({ from: last, tags: { Action: 'Dispute-Post', Task: task, Round: tags.Round }, data: JSON.stringify(points.map((p) => accs[p])) })).Messages);
    } else if (tags.Action === 'Dispute-Prove' && stages.some((st) => st.node === m.Target)) {
      const step = Number(tags.Step);
      const owner = stages.findIndex((st) => st.node === m.Target);
      const opening = JSON.stringify(encodeOpening(stageOpening(specs[owner], net[owner].replay(), claim.leaves, records, step)));
      const other = stages[(owner + 1) % stages.length].node;
      const wrong = await w.send({ from: other, tags: { Action: 'Dispute-Open', Task: task, Step: String(step) }, data: opening });
      refused.push(`${tagOf(wrong.Messages.at(-1)!, 'Code')} ${tagOf(wrong.Messages.at(-1)!, 'Message')}`);
      inbox.push(...(await w.send({ from: m.Target, tags: { Action: 'Dispute-Open', Task: task, Step: String(step) }, data: opening })).Messages);
    } else if (m.Target === challengerAddress) {
      const s = await answer(w, challenger, m);
      if (s) inbox.push(...s.Messages);
    }
  }
  assert.equal(refused.filter((x) => /^400 Stage-Records must name the 3 stages' record items, in stage order/.test(x)).length, 2, refused.join(' | '));
  assert.ok(refused.some((x) => /^400 a pipeline posts the accumulators of its stored trace/.test(x)), refused.join(' | '));
  assert.ok(refused.some((x) => /^403 step \d+ is stage \S+'s to open/.test(x)), refused.join(' | '));
  const s = w.state();
  // The pipeline won; its result (the candidate) is audited next, by a pipeline this test leaves undrawn (no node is free).
  const view = await taskView(w, task);
  assert.equal(view.disputes[0].outcome?.winner, last, 'the pipeline won the dispute');
  assert.equal(view.receipt?.traceRoot, claim.root, 'its result stays the candidate');
  const rounds = BigInt(view.disputes[0].rounds.length);
  assert.equal(BigInt(s.stakes[challengerAddress]), BigInt(before.stakes[challengerAddress]) - 600n - 5n * rounds, 'the lying challenger loses its bond and its round bonds');
  for (const st of stages) assert.equal(s.stakes[st.node], '3000', 'no stage loses stake');
  w.assertConserved('after a pipeline defended its result');
  for (const x of net) x.close();
});
