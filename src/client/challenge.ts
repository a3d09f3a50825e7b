// `verity verify --challenge`: the challenger's side of a dispute, driven from the command line.
// The wallet must be an active staked node (the coordinator's rule: docs/network.md "Verification").
// The challenge carries this machine's trace of the job; the dispute's rounds and the one-step
// proof are answered with the node's own honest behaviour (src/node/behaviour.ts: post, open), from
// the duties the coordinator's `Tasks` reply lists for the wallet. A node running with the same
// wallet answers them too: whichever comes second is refused as already answered, which is fine.
import { aoClient, expectReply, RefusedError } from '../ao/client.js';
import type { Model } from '../engine/index.js';
import { claimOf, honest, type BehaviourContext } from '../node/behaviour.js';
import type { Completion } from '../node/work.js';
import type { DisputeView, TasksReply, TaskView } from '../processes/protocol.js';
import { encodeOpening, type Job, type Trace } from '../proof/index.js';
import { createItem } from '../store/items.js';
import type { Store } from '../store/store.js';
import { walletAddress, walletSigner, type Wallet } from '../store/wallet.js';

export interface ChallengeReport {
  opened: boolean;
  /** The Challenge message id. */
  message?: string;
  /** The coordinator's refusal, when it did not open. */
  refused?: { code: number; message: string };
  /** The stored trace item the challenge names. */
  trace?: string;
  /** The dispute as the task view shows it at the end (outcome null: still running at --wait-ms). */
  dispute?: DisputeView | null;
  winner?: 'challenger' | 'asserter' | 'none' | null;
  taskStatus?: TaskView['status'];
  corrected?: boolean;
  /** Dispute messages this command sent (rounds posted, openings). */
  answered: number;
}

export interface ChallengeInput {
  connection: { mu: string; cu: string; coordinator: string; wallet: Wallet };
  store: Store;
  task: string;
  model: Model;
  job: Job;
  trace: Trace;
  text: string;
  /** Reads the task view (the SDK's task()). */
  view(task: string): Promise<TaskView>;
  waitMs: number;
  progress?: (line: string) => void;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function challengeTask(input: ChallengeInput): Promise<ChallengeReport> {
  const { connection, store, task, model, job, trace } = input;
  const progress = input.progress ?? (() => {});
  const ao = aoClient(connection);
  const address = walletAddress(connection.wallet);
  const { coordinator } = connection;
  const completion: Completion = { job, trace, tokens: trace.tokens.slice(job.promptTokens.length - 1), text: input.text };
  const claim = claimOf(task, completion);
  const item = await createItem(claim.document.data, walletSigner(connection.wallet), { tags: claim.document.tags });
  await store.put(item.raw);
  const report: ChallengeReport = { opened: false, trace: item.id, answered: 0 };
  const id = await ao.message(coordinator, {
    tags: [
      { name: 'Action', value: 'Challenge' }, { name: 'Task', value: task }, { name: 'Trace-Root', value: claim.root },
      { name: 'Trace', value: item.id }, { name: 'Tokens', value: String(claim.tokens.length) },
    ],
    data: JSON.stringify({ tokens: claim.tokens }),
  });
  report.message = id;
  try {
    expectReply(await ao.result(coordinator, id), 'Challenge-Response');
  } catch (e) {
    if (!(e instanceof RefusedError)) throw e;
    report.refused = { code: e.code, message: e.message };
    return report;
  }
  report.opened = true;
  progress(`challenge ${id} opened: playing the dispute (up to ${input.waitMs} ms)`);

  const ctx: BehaviourContext = {
    address, engine: {}, view: async (t) => input.view(t).catch(() => null), copyOf: () => model, log: progress,
  };
  const answered = new Set<string>();
  const deadline = Date.now() + input.waitMs;
  const mine = (v: TaskView): DisputeView | null => v.disputes.filter((d) => d.challenger === address).at(-1) ?? null;
  let lastBeat = 0;
  for (;;) {
    const view = await input.view(task);
    const dispute = mine(view);
    report.dispute = dispute;
    report.taskStatus = view.status;
    report.corrected = view.corrected;
    if (dispute?.outcome) {
      const w = dispute.outcome.winner;
      report.winner = w === address ? 'challenger' : w === dispute.asserter ? 'asserter' : 'none';
      return report;
    }
    if (Date.now() >= deadline) {
      report.winner = null;
      return report;
    }
    const reply = JSON.parse(expectReply(await ao.dryRun(coordinator, { tags: [{ name: 'Action', value: 'Tasks' }, { name: 'Node', value: address }], from: address }), 'Tasks-Response').data) as TasksReply;
    for (const d of reply.duties ?? []) {
      if (d.task !== task || (d.kind !== 'post' && d.kind !== 'open')) continue;
      const key = `${d.kind}:${d.round ?? d.step}@${d.deadline}`;
      if (answered.has(key)) continue;
      answered.add(key);
      let message: { tags: { name: string; value: string }[]; data?: string } | null = null;
      if (d.kind === 'post' && d.points) {
        const values = honest.post(d.assignment, claim, d.points, ctx);
        if (values) message = { tags: [{ name: 'Action', value: 'Dispute-Post' }, { name: 'Task', value: task }, { name: 'Round', value: String(d.round) }], data: JSON.stringify(values) };
      } else if (d.kind === 'open' && d.step !== undefined) {
        progress(`dispute: opening step ${d.step} (a re-run keeping every layer's outputs)`);
        const opening = await honest.open(model, d.assignment, claim, d.step, ctx);
        if (opening) message = { tags: [{ name: 'Action', value: 'Dispute-Open' }, { name: 'Task', value: task }, { name: 'Step', value: String(d.step) }], data: JSON.stringify(encodeOpening(opening)) };
      }
      if (!message) continue;
      const sent = await ao.message(coordinator, message);
      try {
        expectReply(await ao.result(coordinator, sent), `${message.tags[0].value}-Response`);
        report.answered += 1;
        progress(`dispute: ${message.tags[0].value} ${d.kind === 'post' ? `round ${d.round}` : `step ${d.step}`} accepted`);
      } catch (e) {
        // Already answered (a node with this wallet was quicker), or the duty is over.
        if (!(e instanceof RefusedError)) throw e;
      }
    }
    // The coordinator's clock moves with its messages: a silent opponent's clock runs out only then.
    if (Date.now() - lastBeat > 2000) {
      lastBeat = Date.now();
      await ao.message(coordinator, { tags: [{ name: 'Action', value: 'Heartbeat' }] });
    }
    await sleep(300);
  }
}
