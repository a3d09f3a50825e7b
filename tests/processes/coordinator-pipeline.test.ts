// The coordinator's pipeline rules (docs/pipeline.md "Pipelines on the network"), through the real
// QuickJS runtime and host extensions, with nodes that declare too little memory for stories260K
// (1,826,560 bytes): the pipeline drawn (stages, layers, urls, locks), what is refused (an Infer the
// stage nodes cannot hold together, a Submit-Result from a stage that is not the last, a Reveal
// without the stage records), and an expired pipeline lease (the silent stage alone held
// responsible, drawn again without it; all held responsible when none was silent). Money is
// conserved throughout.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { OutboxMessage } from '../../src/ao/runtime.js';
import type { Assignment, Participant, TaskView } from '../../src/processes/protocol.js';
import { walletDid } from '../../src/store/wallet.js';
import { tagOf, tagsOf } from './harness.js';
import { ALICE, OWNER, PROMPT, TOKEN, World, actionOf, fx, useFixture } from './players.js';

const SPAWN = {
  Token: TOKEN, 'Min-Stake': '600', Slash: '600', 'Miss-Slash': '60', 'Challenge-Bond': '600', 'Round-Bond': '5', 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0',
  'Max-Tokens': '64', 'Lease-Ms': '10000', 'Reveal-Ms': '5000', 'Clock-Ms': '5000', 'Challenge-Window-Ms': '3000', 'Unstake-Cooldown-Ms': '1000',
};
useFixture({ prefix: 'verity-coordinator-pipeline-', spawn: SPAWN });

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

test('an Infer that even the stage nodes together cannot hold is refused (503) with the numbers', async () => {
  const w = await world(3, 400_000);
  const r = await w.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': JSON.stringify({ max_tokens: 16 }) } });
  const last = r.Messages.at(-1)!;
  assert.equal(tagOf(last, 'Code'), '503');
  assert.match(tagOf(last, 'Message')!, /1826560 bytes.*hold 1200000 bytes together/);
  assert.deepEqual(w.state().tasks, {});
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

test('when every stage was heard from, an expired pipeline lease holds them all responsible', async () => {
  const w = await world(3, 800_000);
  const r = await w.send({ from: ALICE, data: PROMPT, tags: { Action: 'Infer', 'X-Options': JSON.stringify({ max_tokens: 16 }), 'X-Reference': 'all-heard' } });
  const task = tagOf(r.Messages.at(-1)!, 'Task')!;
  const stages = (JSON.parse(assigned(r.Messages)[0].Data!) as Assignment).pipeline!.stages;
  for (const st of stages) await w.send({ from: st.node, tags: { Action: 'Heartbeat' }, timestamp: r.timestamp + 7_000 });
  await w.send({ from: OWNER, tags: { Action: 'Info' }, timestamp: r.timestamp + 10_001 });
  const s = w.state();
  for (const st of stages) assert.equal(s.stakes[st.node], '2940', 'each loses Miss-Slash');
  // No node is left to draw a new pipeline from: the task waits (and fails at Max-Wait-Ms).
  const view = s.tasks[task] as unknown as { participants: Participant[] };
  assert.deepEqual(view.participants[0].stages!.map((st) => st.status), ['expired', 'expired', 'expired']);
  w.assertConserved('after a lease that expired with everyone heard from');
});
