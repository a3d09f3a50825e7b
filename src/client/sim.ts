// `npm run sim` / `verity sim`: the verification economics on the real devnet. A fresh devnet
// (embedded units, the real coordinator, real nodes in this process) runs honest nodes beside nodes
// of each cheating strategy (src/node/strategies.ts), the devnet user sends K requests through the
// SDK, a bounded pool at a time, and the outcome is read back from the coordinator's own results:
// every final Infer-Response (the whole task: participants, commitments, roots, disputes) and every
// Slash-Notice. Each request's honest trace root is computed here with the engine, so a result,
// a commitment or a revealed root can be told honest or not without trusting any node.
//
// runSim does the effects and gathers SimObservations; buildReport (pure) turns them into the
// SimReport, and formatReport (pure) into the text the command prints.
import { createWriteStream, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { aoClient, expectReply, RefusedError } from '../ao/client.js';
import type { Extension, Extensions } from '../ao/runtime.js';
import { loadModel, modelIdentity } from '../engine/index.js';
import { resultCommitment, STRATEGIES, type NodeActivity, type StrategyName } from '../node/index.js';
import { coordinatorExtensions, describeRequest } from '../processes/index.js';
import type { Params, Participant, TaskView } from '../processes/protocol.js';
import { cheatProfitPpm, economicViolation, PPM } from '../proof/economics.js';
import { jobCommitment, recordTrace } from '../proof/index.js';
import type { Store } from '../store/store.js';
import { BUNDLED_MODEL, DEVNET_STAKE, startDevnet, type NodeSpec } from './devnet.js';
import { Verity } from './sdk.js';
import { VerityError } from '../errors.js';

export class SimError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'SimError';
  }
}

/** The cheating strategies a default run has one (or --per-strategy) of each; colluding-pair comes as pairs. */
export const CHEATS = STRATEGIES.filter((s) => s !== 'honest') as Exclude<StrategyName, 'honest'>[];

export interface SimOptions {
  /** Honest nodes (default 6). */
  honest?: number;
  /** Nodes of each cheating strategy; colluding-pair: pairs (default 1). */
  perStrategy?: number;
  /** Which cheating strategies run (default all of CHEATS). */
  strategies?: string[];
  /** Requests the user sends (default 300). */
  requests?: number;
  /** max_tokens of every request, and the coordinator's Max-Tokens (the job size the rule is checked at). Default 32. */
  maxTokens?: number;
  /** Requests in flight at once (default 8). */
  concurrency?: number;
  /** Audit-Ppm (default 100000). */
  auditPpm?: number;
  /** Slash S; Min-Stake and Challenge-Bond follow it (default 6000). */
  slash?: bigint;
  /** More coordinator spawn tags, over the sim's own (e.g. Lease-Ms, Clock-Ms). */
  params?: Record<string, string>;
  /** Sampling temperature of the requests (default 0.8; every request has its own seed). */
  temperature?: number;
  /** The devnet's folder: must not hold a devnet already. Default: a temporary folder, removed afterwards unless something looked wrong. */
  dir?: string;
  /** How long one request may take to become final (default 180 s): longer counts as stuck. */
  requestTimeoutMs?: number;
  /**
   * Send a Heartbeat from the user every this many ms while requests run (default 0: none). Time
   * passes at the coordinator only with messages: an audit is drawn from the message after the last
   * commit, and a window or clock ends at the first message after it; without traffic that is the
   * nodes' next heartbeat.
   */
  tickMs?: number;
  /** Progress lines (default stderr). */
  log?: (line: string) => void;
  /** The devnet's and nodes' own log lines (default: `<dir>/sim.log`). */
  nodeLog?: (line: string) => void;
}

/** The sim's coordinator parameters: short clocks for a run of minutes; stakes that survive a few slashes. */
export function simParams(o: { maxTokens: number; auditPpm: number; slash: bigint }): Record<string, string> {
  const missSlash = o.slash / 10n;
  return {
    'Audit-Ppm': String(o.auditPpm),
    Slash: o.slash.toString(),
    'Min-Stake': o.slash.toString(),
    'Challenge-Bond': o.slash.toString(),
    'Miss-Slash': missSlash.toString(),
    'Max-Tokens': String(o.maxTokens),
    'Lease-Ms': '10000',
    'Reveal-Ms': '10000',
    'Clock-Ms': '15000',
    'Challenge-Window-Ms': '2000',
  };
}

// ---- what a run observes ----

export interface SimNode {
  index: number;
  address: string;
  strategy: string;
  /** colluding-pair: which pair (0, 1, …). */
  pair?: number;
  start: { stake: string; reputation: number };
  end: { stake: string; earnings: string; reputation: number | null };
  activity: NodeActivity;
}

export interface SimRequest {
  index: number;
  prompt: string;
  seed: number;
  /** The job's commitment and honest trace root, computed here. */
  commitment: string;
  honestRoot: string;
  task?: string;
  outcome: 'final' | 'failed' | 'error' | 'timeout';
  error?: string;
  /** Client time from sending the Infer to its final (or failed) answer. */
  ms?: number;
}

export interface SlashEvent {
  task: string;
  node: string;
  quantity: string;
  reason: string;
}

export interface SimObservations {
  setup: { honest: number; perStrategy: number; strategies: string[]; requests: number; maxTokens: number; concurrency: number; temperature: number };
  params: Params;
  nodes: SimNode[];
  requests: SimRequest[];
  /** Every ended task's last view (final or failed), by task id. */
  views: Record<string, TaskView>;
  slashes: SlashEvent[];
  /** host.step calls: how long each took and whether the opening checked. */
  proofs: { ms: number; ok: boolean }[];
  /** Tasks still live at the end. */
  live: number;
  wallMs: number;
  /** Gaps of at least IDLE_MS between consecutive coordinator messages while the requests ran. */
  idleGaps: number[];
  dir: string;
}

/** A pause between two coordinator messages counted as idle. */
export const IDLE_MS = 1000;

// ---- the report ----

export interface StrategyReport {
  strategy: string;
  nodes: number;
  /** Leases it answered or let expire (asserter, validator), and challenges. */
  jobs: number;
  /** Final results whose node it was. */
  served: number;
  /** Jobs where it deviated: a commitment to another root than the honest one, or a lease left to expire. */
  cheats: number;
  cheatsByRole: Record<string, number>;
  /** Deviations that cost it a slash in that task. */
  caught: number;
  /** Slashes in tasks where it had not deviated (should be 0). */
  slashedHonestly: number;
  /** Sum of its Slash-Notices, and its stake's change over the run. */
  slashed: string;
  stakeDelta: string;
  earnings: string;
  /** Its final results whose root is not the honest one: after an audit or dispute, or unaudited. */
  wrongFinal: { audited: number; unaudited: number };
  /** (earnings − slashed) / jobs, in tokens (compute not counted). */
  profitPerJob: number | null;
  /** cheatProfitPpm at T = max_tokens with its catch probability q (honest: (R − C)·T). */
  /**
   * economics.ts on the same basis: caughtPpm is the catch probability q of its deviations (mixed by
   * their roles), perCheat cheatProfitPpm per deviating job, profitPerJob over all its jobs.
   */
  analytical: { caughtPpm: number; perCheat: number | null; profitPerJob: number; note: string };
  activity: NodeActivity;
}

export interface SimReport {
  setup: SimObservations['setup'] & { nodes: number };
  params: Params;
  rule: { p: number; R: string; C: string; S: string; T: number; marginPpm: number; lhs: number; rhs: number; holds: boolean; text: string };
  requests: { sent: number; final: number; failed: number; errors: number; timeouts: number; corrected: number; failures: Record<string, number> };
  /** The coordinator with no message at all for ≥ IDLE_MS: time stood still there. */
  idle: { gaps: number; totalMs: number; maxMs: number | null };
  timing: { wallMs: number; meanToFinalMs: number | null; p50ToFinalMs: number | null; p90ToFinalMs: number | null; maxToFinalMs: number | null; meanCoordinatorMs: number | null };
  audits: { audited: number; unaudited: number };
  disputes: { count: number; meanRounds: number | null; byReason: Record<string, number> };
  referee: { proofs: number; refused: number; meanMs: number | null; maxMs: number | null };
  strategies: StrategyReport[];
  honestSlashed: number;
  wrongFinal: { audited: number; unaudited: number; list: { task: string; node: string; strategy: string; audited: boolean; agreeingValidators: string[] }[] };
  collusion: null | {
    pairs: number;
    /** p × partner weight / Σ weight of the other nodes (stake × reputation at the start), per job of theirs. */
    perJobPpm: number;
    /** The same, given an audit: the chance the sole validator drawn is the partner. */
    givenAuditPpm: number;
    wrongFinal: { audited: number; unaudited: number };
  };
  /** Things that should not happen: each a possible coordinator or node bug. */
  anomalies: string[];
  live: number;
  dir: string;
}

const num = (v: bigint): number => Number(v);
const round2 = (x: number): number => Math.round(x * 100) / 100;
const mean = (xs: number[]): number | null => (xs.length === 0 ? null : xs.reduce((a, b) => a + b, 0) / xs.length);
const quantile = (xs: number[], q: number): number | null => {
  if (xs.length === 0) return null;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};
const weightOf = (n: SimNode): bigint => (BigInt(n.start.stake) + 1n) * BigInt(n.start.reputation);

/** How a participant's job went, against the honest root of its task. */
function judge(p: Participant, task: string, honestRoot: string): 'honest' | 'deviated' | 'expired' | 'none' {
  if (p.role === 'challenger') return p.traceRoot === honestRoot ? 'honest' : 'deviated';
  if (p.commitment !== undefined) return p.commitment === resultCommitment(task, p.node, honestRoot) ? 'honest' : 'deviated';
  if (p.status === 'expired') return 'expired';
  return 'none'; // cancelled before it committed: no job done
}

/** The sim's numbers from what it observed: no I/O. */
export function buildReport(obs: SimObservations): SimReport {
  const { params } = obs;
  const R = BigInt(params.price);
  const C = BigInt(params.computeCost);
  const S = BigInt(params.slash);
  const T = params.maxTokens;
  const p = params.auditPpm;
  const lhs = (p / 1e6) * (num(R) * T + num(S));
  const rhs = (1 + params.marginPpm / 1e6) * num(C) * T;
  const ruleHolds =
    economicViolation({
      price: R, computeCost: C, auditPpm: BigInt(p), slash: S, marginPpm: BigInt(params.marginPpm), maxTokens: BigInt(T), minStake: BigInt(params.minStake), challengeBond: BigInt(params.challengeBond),
    }) === null;
  const rule = {
    p: p / 1e6, R: params.price, C: params.computeCost, S: params.slash, T, marginPpm: params.marginPpm, lhs: round2(lhs), rhs: round2(rhs), holds: ruleHolds,
    text: `p·(R·T+S) ≥ (1+margin)·C·T: ${p / 1e6}·(${params.price}·${T}+${params.slash}) = ${round2(lhs)} ${ruleHolds ? '≥' : '<'} ${1 + params.marginPpm / 1e6}·${params.computeCost}·${T} = ${round2(rhs)}`,
  };

  const byAddress = new Map(obs.nodes.map((n) => [n.address, n]));
  const strategyOf = (address: string): string => byAddress.get(address)?.strategy ?? 'unknown';
  const byTask = new Map(obs.requests.filter((r) => r.task).map((r) => [r.task!, r]));
  const slashesByTaskNode = new Map<string, bigint>();
  for (const s of obs.slashes) slashesByTaskNode.set(`${s.task} ${s.node}`, (slashesByTaskNode.get(`${s.task} ${s.node}`) ?? 0n) + BigInt(s.quantity));
  const anomalies: string[] = [];

  // Per strategy tallies, over every ended task the sim asked for.
  type Tally = Pick<StrategyReport, 'jobs' | 'served' | 'cheats' | 'cheatsByRole' | 'caught' | 'slashedHonestly' | 'wrongFinal'>;
  const names = ['honest', ...obs.setup.strategies];
  const tallies = new Map<string, Tally>(names.map((s) => [s, { jobs: 0, served: 0, cheats: 0, cheatsByRole: {}, caught: 0, slashedHonestly: 0, wrongFinal: { audited: 0, unaudited: 0 } }]));
  const tally = (strategy: string): Tally => {
    let t = tallies.get(strategy);
    if (!t) tallies.set(strategy, (t = { jobs: 0, served: 0, cheats: 0, cheatsByRole: {}, caught: 0, slashedHonestly: 0, wrongFinal: { audited: 0, unaudited: 0 } }));
    return t;
  };

  const wrongList: SimReport['wrongFinal']['list'] = [];
  const rounds: number[] = [];
  const byReason: Record<string, number> = {};
  const coordinatorMs: number[] = [];
  let audited = 0;
  let unaudited = 0;
  let corrected = 0;
  for (const [id, view] of Object.entries(obs.views)) {
    const request = byTask.get(id);
    if (!request) continue; // a canary or another requester's task
    const H = request.honestRoot;
    if (view.receipt && view.receipt.commitment !== request.commitment) anomalies.push(`task ${id}: the coordinator's job commitment ${view.receipt.commitment.slice(0, 12)}… is not the request's ${request.commitment.slice(0, 12)}…`);
    for (const d of view.disputes) {
      rounds.push(d.rounds.length);
      const loser = d.outcome?.winner === d.asserter ? d.challenger : d.asserter;
      const reason = !d.outcome ? 'unsettled' : d.outcome.winner ? `${strategyOf(d.outcome.winner)} beat ${strategyOf(loser)} (${d.outcome.reason})` : `no winner between ${strategyOf(d.asserter)} and ${strategyOf(d.challenger)} (${d.outcome.reason})`;
      byReason[reason] = (byReason[reason] ?? 0) + 1;
    }
    for (const part of view.participants) {
      const verdict = judge(part, id, H);
      const strategy = strategyOf(part.node);
      const t = tally(strategy);
      if (verdict === 'none') continue;
      t.jobs += 1;
      const slashed = slashesByTaskNode.get(`${id} ${part.node}`) ?? 0n;
      if (verdict === 'honest') {
        if (slashed > 0n) {
          t.slashedHonestly += 1;
          anomalies.push(`task ${id}: ${strategy} node ${part.node.slice(0, 8)} (${part.role}) committed the honest root and was slashed ${slashed} (status ${part.status})`);
        }
        continue;
      }
      t.cheats += 1;
      const role = verdict === 'expired' ? `${part.role} (expired)` : part.role;
      t.cheatsByRole[role] = (t.cheatsByRole[role] ?? 0) + 1;
      if (slashed > 0n || part.status === 'slashed') t.caught += 1;
      if (strategy === 'honest') anomalies.push(`task ${id}: honest node ${part.node.slice(0, 8)} (${part.role}) ${verdict === 'expired' ? 'let its lease expire' : 'committed a root that is not the honest one'}`);
    }
    if (view.status !== 'final') continue;
    if (view.corrected) corrected += 1;
    if (view.endedAt !== null) coordinatorMs.push(view.endedAt - view.createdAt);
    const checked = view.audited || view.disputes.length > 0;
    if (checked) audited += 1;
    else unaudited += 1;
    const receipt = view.receipt;
    if (!receipt) {
      anomalies.push(`task ${id}: final without a receipt`);
      continue;
    }
    const servedBy = strategyOf(receipt.node);
    tally(servedBy).served += 1;
    if (receipt.traceRoot === H) continue;
    const agreeing = view.participants.filter((q) => q.role === 'validator' && q.node !== receipt.node && q.traceRoot === receipt.traceRoot && q.status === 'revealed').map((q) => strategyOf(q.node));
    tally(servedBy).wrongFinal[checked ? 'audited' : 'unaudited'] += 1;
    wrongList.push({ task: id, node: receipt.node, strategy: servedBy, audited: checked, agreeingValidators: agreeing });
    // A wrong result may pass an audit only when the validator that agreed lied the same way.
    if (checked && (agreeing.length === 0 || agreeing.includes('honest'))) {
      anomalies.push(`task ${id}: a wrong result (${servedBy} node ${receipt.node.slice(0, 8)}) became final after an audit or dispute, agreed by ${agreeing.length ? agreeing.join(', ') : 'no validator'}`);
    }
  }

  // Requests
  const finals = obs.requests.filter((r) => r.outcome === 'final');
  const failures: Record<string, number> = {};
  for (const r of obs.requests) if (r.outcome !== 'final') failures[r.error ?? r.outcome] = (failures[r.error ?? r.outcome] ?? 0) + 1;
  for (const r of obs.requests) if (r.outcome === 'timeout') anomalies.push(`request ${r.index} (task ${r.task ?? '?'}) was not final within the timeout: stuck?`);
  if (obs.live > 0) anomalies.push(`${obs.live} tasks were still live at the end`);
  // A failed task where an honest node had committed the honest root threw away a good result.
  for (const r of obs.requests) {
    const view = r.task ? obs.views[r.task] : undefined;
    if (r.outcome === 'final' && !view) anomalies.push(`request ${r.index}: final for the SDK, but no final Infer-Response in the coordinator's results`);
    if (!view || view.status !== 'failed') continue;
    const good = view.participants.filter((q) => judge(q, r.task!, r.honestRoot) === 'honest');
    if (good.length > 0) anomalies.push(`task ${r.task}: failed although ${good.map((q) => `${strategyOf(q.node)} ${q.node.slice(0, 8)} (${q.role}, ${q.status})`).join(', ')} committed the honest root`);
  }

  // Collusion: the chance a pair member, as asserter, gets its partner as the sole validator.
  const pairs = new Map<number, SimNode[]>();
  for (const n of obs.nodes) if (n.pair !== undefined) pairs.set(n.pair, [...(pairs.get(n.pair) ?? []), n]);
  let collusion: SimReport['collusion'] = null;
  let givenAudit = 0;
  if (pairs.size > 0) {
    const total = obs.nodes.reduce((a, n) => a + weightOf(n), 0n);
    const chances: number[] = [];
    for (const members of pairs.values()) {
      for (const m of members) {
        const partner = members.find((x) => x !== m);
        if (partner) chances.push(num((weightOf(partner) * PPM) / (total - weightOf(m))));
      }
    }
    givenAudit = mean(chances) ?? 0;
    const t = tally('colluding-pair');
    collusion = { pairs: pairs.size, perJobPpm: Math.round((p * givenAudit) / 1e6), givenAuditPpm: Math.round(givenAudit), wrongFinal: { ...t.wrongFinal } };
  }

  // Per strategy: money, and the expected profit per job measured and by economics.ts.
  const strategies: StrategyReport[] = [];
  for (const name of names) {
    const members = obs.nodes.filter((n) => n.strategy === name);
    if (members.length === 0) continue;
    const t = tally(name);
    const slashed = obs.slashes.filter((s) => members.some((m) => m.address === s.node)).reduce((a, s) => a + BigInt(s.quantity), 0n);
    const stakeDelta = members.reduce((a, m) => a + BigInt(m.end.stake) - BigInt(m.start.stake), 0n);
    const earnings = members.reduce((a, m) => a + BigInt(m.end.earnings), 0n);
    const activity = members.reduce<NodeActivity>((a, m) => {
      const sum = { ...a };
      for (const k of Object.keys(m.activity) as (keyof NodeActivity)[]) sum[k] = (a[k] ?? 0) + m.activity[k];
      return sum;
    }, {} as NodeActivity);
    strategies.push({
      strategy: name,
      nodes: members.length,
      jobs: t.jobs,
      served: t.served,
      cheats: t.cheats,
      cheatsByRole: t.cheatsByRole,
      caught: t.caught,
      slashedHonestly: t.slashedHonestly,
      slashed: slashed.toString(),
      stakeDelta: stakeDelta.toString(),
      earnings: earnings.toString(),
      wrongFinal: t.wrongFinal,
      profitPerJob: t.jobs === 0 ? null : round2(num(earnings - slashed) / t.jobs),
      analytical: analytical(name, t, { T, p, slash: S, missSlash: BigInt(params.missSlash), R, C, givenAudit }),
      activity,
    });
  }
  const honestNodes = obs.nodes.filter((n) => n.strategy === 'honest');
  const honestSlashed = honestNodes.filter((n) => obs.slashes.some((s) => s.node === n.address)).length;
  if (honestSlashed > 0) {
    for (const s of obs.slashes.filter((x) => honestNodes.some((n) => n.address === x.node))) anomalies.push(`honest node ${s.node.slice(0, 8)} slashed ${s.quantity} in task ${s.task}: ${s.reason}`);
  }
  const times = finals.map((r) => r.ms!).filter((x) => x !== undefined);
  const proofs = obs.proofs.filter((x) => x.ok).map((x) => x.ms);
  return {
    setup: { ...obs.setup, nodes: obs.nodes.length },
    params,
    rule,
    requests: {
      sent: obs.requests.length,
      final: finals.length,
      failed: obs.requests.filter((r) => r.outcome === 'failed').length,
      errors: obs.requests.filter((r) => r.outcome === 'error').length,
      timeouts: obs.requests.filter((r) => r.outcome === 'timeout').length,
      corrected,
      failures,
    },
    timing: {
      wallMs: obs.wallMs,
      meanToFinalMs: mean(times) === null ? null : Math.round(mean(times)!),
      p50ToFinalMs: quantile(times, 0.5),
      p90ToFinalMs: quantile(times, 0.9),
      maxToFinalMs: times.length ? Math.max(...times) : null,
      meanCoordinatorMs: mean(coordinatorMs) === null ? null : Math.round(mean(coordinatorMs)!),
    },
    idle: { gaps: (obs.idleGaps ?? []).length, totalMs: (obs.idleGaps ?? []).reduce((a, b) => a + b, 0), maxMs: obs.idleGaps?.length ? Math.max(...obs.idleGaps) : null },
    audits: { audited, unaudited },
    disputes: { count: rounds.length, meanRounds: mean(rounds) === null ? null : round2(mean(rounds)!), byReason },
    referee: { proofs: proofs.length, refused: obs.proofs.length - proofs.length, meanMs: mean(proofs) === null ? null : round2(mean(proofs)!), maxMs: proofs.length ? round2(Math.max(...proofs)) : null },
    strategies,
    honestSlashed,
    wrongFinal: { audited: wrongList.filter((w) => w.audited).length, unaudited: wrongList.filter((w) => !w.audited).length, list: wrongList },
    collusion,
    anomalies,
    live: obs.live,
    dir: obs.dir,
  };
}

/**
 * The expected profit by economics.ts, on the measured basis (pay − slashes, compute not counted).
 * A lie an audit exposes is caught with probability p as asserter and always as validator (the
 * asserter it contradicts disputes it): cheatProfitPpm per deviating job at its role's q. offline-
 * mid-task loses Miss-Slash per lease and earns nothing; colluding-pair's asserter escapes when its
 * partner is the sole validator drawn, and its copying validator always agrees (q = 0). Per job of
 * the strategy, its honest jobs count R·T each (honest work nets (R − C)·T once compute is paid).
 */
function analytical(
  name: string, t: { jobs: number; cheats: number; cheatsByRole: Record<string, number> }, k: { T: number; p: number; slash: bigint; missSlash: bigint; R: bigint; C: bigint; givenAudit: number },
): StrategyReport['analytical'] {
  const T = BigInt(k.T);
  const tokens = (ppm: bigint): number => round2(num(ppm) / 1e6);
  const e = { price: k.R, slash: k.slash };
  if (name === 'honest') return { caughtPpm: 0, perCheat: null, profitPerJob: num(k.R * T), note: `R·T per job; net of compute (R − C)·T = ${num((k.R - k.C) * T)}` };
  // q per role, and what one deviation there is worth.
  const roles: Record<string, { q: number; ppm: bigint }> = {};
  const at = (q: number, slash = k.slash): { q: number; ppm: bigint } => ({ q, ppm: cheatProfitPpm({ ...e, slash }, T, BigInt(q)) });
  if (name === 'offline-mid-task') {
    for (const role of Object.keys(t.cheatsByRole)) roles[role] = at(1_000_000, k.missSlash);
  } else {
    roles.asserter = at(name === 'colluding-pair' ? Math.round(k.p * (1 - k.givenAudit / 1e6)) : k.p);
    roles.validator = at(name === 'colluding-pair' ? 0 : 1_000_000);
    roles.challenger = roles.validator;
  }
  const counted = Object.entries(t.cheatsByRole).filter(([role]) => roles[role]);
  const n = counted.reduce((a, [, c]) => a + c, 0);
  const fallback = name === 'offline-mid-task' ? at(1_000_000, k.missSlash) : name === 'lazy' || name === 'lying-validator' ? roles.validator : roles.asserter;
  const sumPpm = n === 0 ? fallback.ppm : counted.reduce((a, [role, c]) => a + BigInt(c) * roles[role].ppm, 0n);
  const q = n === 0 ? fallback.q : Math.round(counted.reduce((a, [role, c]) => a + c * roles[role].q, 0) / n);
  const perCheat = n === 0 ? tokens(sumPpm) : round2(num(sumPpm) / 1e6 / n);
  const honestJobs = Math.max(0, t.jobs - t.cheats);
  const profitPerJob = t.jobs === 0 ? perCheat : round2((honestJobs * num(k.R * T) + (n === 0 ? 0 : num(sumPpm) / 1e6)) / t.jobs);
  const note =
    name === 'offline-mid-task' ? 'every lease expires: −Miss-Slash'
      : name === 'colluding-pair' ? `asserter q = p·(1 − ${(k.givenAudit / 1e6).toFixed(3)}), copying validator q = 0`
      : name === 'lazy' || name === 'lying-validator' ? 'cheats as validator only: q = 1'
      : 'asserter q = p, validator q = 1';
  return { caughtPpm: q, perCheat, profitPerJob, note };
}

/** The report as the command prints it. */
export function formatReport(r: SimReport): string {
  const L: string[] = [];
  const pad = (s: string | number, n: number): string => String(s).padStart(n);
  const ms = (x: number | null): string => (x === null ? '-' : x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${Math.round(x)} ms`);
  const { setup, params } = r;
  L.push(`verity sim: ${setup.honest} honest nodes, ${setup.perStrategy} of each of ${setup.strategies.join(', ')} (${setup.nodes} nodes); ${setup.requests} requests of ${setup.maxTokens} tokens, ${setup.concurrency} at a time, temperature ${setup.temperature}`);
  L.push(
    `parameters: R ${params.price}, C ${params.computeCost}, p ${params.auditPpm} ppm, validators ${params.validators}, S ${params.slash}, Miss-Slash ${params.missSlash}, margin ${params.marginPpm} ppm, T (Max-Tokens) ${params.maxTokens}, ` +
      `Min-Stake ${params.minStake}, node stake ${DEVNET_STAKE}, Challenge-Bond ${params.challengeBond}, Round-Bond ${params.roundBond}, Lease ${params.leaseMs} ms, Reveal ${params.revealMs} ms, Clock ${params.clockMs} ms, window ${params.challengeWindowMs} ms, arity ${params.arity}`,
  );
  L.push(`rule: ${r.rule.text} — ${r.rule.holds ? 'holds' : 'VIOLATED'}`);
  const q = r.requests;
  L.push(`requests: ${q.sent} sent, ${q.final} final (${r.audits.audited} audited or disputed, ${r.audits.unaudited} through the window), ${q.failed} failed, ${q.errors} errors, ${q.timeouts} timed out; ${q.corrected} corrected by a dispute`);
  for (const [why, n] of Object.entries(q.failures)) L.push(`  ${n} × ${why}`);
  const t = r.timing;
  L.push(`time to final: mean ${ms(t.meanToFinalMs)}, p50 ${ms(t.p50ToFinalMs)}, p90 ${ms(t.p90ToFinalMs)}, max ${ms(t.maxToFinalMs)} (coordinator clock: mean ${ms(t.meanCoordinatorMs)}); whole run ${ms(t.wallMs)}`);
  L.push(
    `coordinator idle: ${r.idle.gaps} gaps of ≥ ${IDLE_MS} ms without any message, ${ms(r.idle.totalMs)} in all (longest ${ms(r.idle.maxMs)}) of the ${ms(t.wallMs)} run` +
      (r.idle.gaps ? ' — a committed task waits for the next message to draw its audit, a window for the first message after it' : ''),
  );
  L.push(`disputes: ${r.disputes.count}, mean rounds ${r.disputes.meanRounds ?? '-'}; ${Object.entries(r.disputes.byReason).map(([k, n]) => `${n} × ${k}`).join(', ') || 'none'}`);
  L.push(`referee (host.step): ${r.referee.proofs} one-step proofs, mean ${r.referee.meanMs ?? '-'} ms, max ${r.referee.maxMs ?? '-'} ms${r.referee.refused ? `; ${r.referee.refused} openings refused` : ''}`);
  L.push('');
  const head = ['strategy', 'nodes', 'jobs', 'served', 'cheats', 'caught', 'slashed', 'earned', 'wrong final a/u', 'profit/job', 'expected/job', 'q', 'per cheat'];
  const widths = [17, 5, 5, 6, 6, 6, 7, 7, 15, 10, 12, 6, 9];
  L.push(head.map((h, i) => (i === 0 ? h.padEnd(widths[i]) : pad(h, widths[i]))).join(' '));
  for (const s of r.strategies) {
    const row = [
      s.strategy.padEnd(widths[0]), pad(s.nodes, widths[1]), pad(s.jobs, widths[2]), pad(s.served, widths[3]), pad(s.cheats, widths[4]), pad(s.caught, widths[5]), pad(s.slashed, widths[6]),
      pad(s.earnings, widths[7]), pad(`${s.wrongFinal.audited}/${s.wrongFinal.unaudited}`, widths[8]), pad(s.profitPerJob ?? '-', widths[9]),
      pad(s.analytical.profitPerJob, widths[10]), pad((s.analytical.caughtPpm / 1e6).toFixed(3), widths[11]), pad(s.analytical.perCheat ?? '-', widths[12]),
    ];
    L.push(row.join(' '));
  }
  L.push('');
  for (const s of r.strategies) {
    const roles = Object.entries(s.cheatsByRole).map(([k, n]) => `${n} as ${k}`).join(', ');
    const a = s.activity;
    L.push(
      `  ${s.strategy}: ${roles ? `cheats ${roles}, caught ${s.caught}/${s.cheats} (q ${(s.analytical.caughtPpm / 1e6).toFixed(3)}); ` : ''}stake change ${s.stakeDelta}; ${s.analytical.note}; ` +
        `activity: committed ${a.committed}, abandoned ${a.abandoned}, reveals ${a.reveals}, posts ${a.posts}, openings ${a.openings}, silent ${a.silent}, refused ${a.refused}` +
        (s.slashedHonestly ? `; SLASHED ${s.slashedHonestly} times without deviating` : ''),
    );
  }
  L.push(
    `wrong final a/u: its wrong results final after an audit or dispute / unaudited. profit/job = (earnings − slashed) / jobs, in tokens, compute not counted (earnings include dispute winners' half of the pot). ` +
      `expected/job: economics.ts on that basis — honest jobs R·T, each deviation cheatProfitPpm at T = ${params.maxTokens} with its catch probability q; per cheat: that expectation per deviating job, against (R − C)·T = ${num((BigInt(params.price) - BigInt(params.computeCost)) * BigInt(params.maxTokens))} for honest work`,
  );
  L.push('');
  L.push(`honest nodes slashed: ${r.honestSlashed}`);
  L.push(`wrong results final: ${r.wrongFinal.audited} after an audit or dispute, ${r.wrongFinal.unaudited} unaudited (through the challenge window)`);
  for (const w of r.wrongFinal.list.filter((x) => x.audited)) L.push(`  ${w.task} by ${w.strategy} ${w.node.slice(0, 8)}, agreed by ${w.agreeingValidators.join(', ') || 'no validator'}`);
  if (r.collusion) {
    const c = r.collusion;
    L.push(
      `colluding-pair: P(pair drawn as asserter and sole validator) per audited-or-not job of theirs = p × w(partner)/Σ w(others) = ${(c.perJobPpm / 1e6).toFixed(4)} ` +
        `(${(c.givenAuditPpm / 1e6).toFixed(4)} given an audit; stake × reputation at the start); their wrong results final: ${c.wrongFinal.audited} audited, ${c.wrongFinal.unaudited} unaudited`,
    );
  }
  if (r.live) L.push(`tasks still live at the end: ${r.live}`);
  L.push(r.anomalies.length === 0 ? 'anomalies: none' : `ANOMALIES (${r.anomalies.length}):`);
  for (const a of r.anomalies.slice(0, 50)) L.push(`  ${a}`);
  if (r.anomalies.length > 50) L.push(`  … and ${r.anomalies.length - 50} more`);
  return `${L.join('\n')}\n`;
}

// ---- the run ----

/** The X-Reference of request i: it names the request in the task's view, even when the SDK gave up waiting. */
const referenceOf = (index: number): string => `sim-${index}`;

const PROMPTS = ['Once upon a time', 'The little dog', 'One day, a girl named Lily', 'Tom and his mom went to the park', 'There was a big tree', 'The cat was sad because', 'A boy found a red ball', 'In the garden, a bird'];

/** Runs a simulation: a fresh devnet, the requests, then everything read back from the coordinator. */
export async function runSim(options: SimOptions = {}): Promise<SimReport> {
  const o = {
    honest: options.honest ?? 6,
    perStrategy: options.perStrategy ?? 1,
    strategies: options.strategies ?? [...CHEATS],
    requests: options.requests ?? 300,
    maxTokens: options.maxTokens ?? 32,
    concurrency: options.concurrency ?? 8,
    auditPpm: options.auditPpm ?? 100_000,
    slash: options.slash ?? 6000n,
    temperature: options.temperature ?? 0.8,
    requestTimeoutMs: options.requestTimeoutMs ?? 180_000,
    tickMs: options.tickMs ?? 0,
  };
  for (const s of o.strategies) if (!(CHEATS as string[]).includes(s)) throw new SimError(`unknown cheating strategy '${s}' (use ${CHEATS.join(', ')})`);
  for (const [k, v, min] of [['honest', o.honest, 0], ['perStrategy', o.perStrategy, 0], ['requests', o.requests, 1], ['maxTokens', o.maxTokens, 1], ['concurrency', o.concurrency, 1]] as const) {
    if (!Number.isInteger(v) || v < min) throw new SimError(`${k} must be a whole number ≥ ${min}`);
  }
  const params = { ...simParams(o), ...options.params };
  const violation = economicViolation({
    price: BigInt(params['Price-Per-Token'] ?? '1'), computeCost: BigInt(params['Compute-Cost-Per-Token'] ?? '1'), auditPpm: BigInt(params['Audit-Ppm']), slash: BigInt(params.Slash),
    marginPpm: BigInt(params['Margin-Ppm'] ?? '100000'), maxTokens: BigInt(params['Max-Tokens']), minStake: BigInt(params['Min-Stake']), challengeBond: BigInt(params['Challenge-Bond']),
  });
  if (violation) throw new SimError(`the coordinator would refuse these parameters: ${violation}`);
  if (BigInt(params['Min-Stake']) > DEVNET_STAKE) throw new SimError(`Slash/Min-Stake ${params['Min-Stake']} is more than a devnet node's stake (${DEVNET_STAKE})`);

  const temp = options.dir === undefined;
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'verity-sim-'));
  if (existsSync(join(dir, 'processes.json'))) throw new SimError(`${dir} holds a devnet already: the sim needs a fresh folder`);
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const logFile = options.nodeLog ? null : createWriteStream(join(dir, 'sim.log'), { flags: 'a' });
  const nodeLog = options.nodeLog ?? ((line: string) => logFile!.write(`${new Date().toISOString()} ${line}\n`));

  // The nodes: honest first, then perStrategy of each cheat (colluding-pair: perStrategy pairs).
  const specs: NodeSpec[] = [];
  const roster: { strategy: string; pair?: number }[] = [];
  for (let i = 0; i < o.honest; i++) {
    specs.push({ strategy: 'honest' });
    roster.push({ strategy: 'honest' });
  }
  for (const s of o.strategies) {
    for (let j = 0; j < o.perStrategy; j++) {
      if (s === 'colluding-pair') {
        for (let k = 0; k < 2; k++) {
          specs.push({ strategy: s, strategyOptions: { colludeDir: join(dir, `collude-${j}`) } });
          roster.push({ strategy: s, pair: j });
        }
      } else {
        specs.push({ strategy: s });
        roster.push({ strategy: s });
      }
    }
  }
  if (specs.length < 2) throw new SimError('the sim needs at least two nodes (an audit draws a validator other than the asserter)');

  // The referee's time per one-step proof: host.step, timed where the CU calls it.
  const proofs: { ms: number; ok: boolean }[] = [];
  const extensions = (store: Store): Extensions => {
    const ext = coordinatorExtensions(store);
    const step = ext.step;
    const timedStep: Extension = async (json) => {
      const t0 = performance.now();
      let ok = false;
      try {
        const out = await step(json);
        ok = true;
        return out;
      } finally {
        proofs.push({ ms: performance.now() - t0, ok });
      }
    };
    // The same price as the step it times.
    timedStep.ticks = step.ticks;
    return { ...ext, step: timedStep };
  };

  // Each request's honest answer, computed here before anything runs.
  const model = loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer });
  const identity = modelIdentity(model);
  const requests: SimRequest[] = Array.from({ length: o.requests }, (_, index) => {
    const prompt = PROMPTS[index % PROMPTS.length];
    const seed = index + 1;
    const job = describeRequest({ ...identity, tokenizer: model.tokenizer, seqLen: model.config.seqLen }, { prompt, maxTokens: o.maxTokens, temperature: o.temperature, topP: 0.9, seed: String(seed) });
    return { index, prompt, seed, commitment: jobCommitment(job), honestRoot: recordTrace(model, job).root, outcome: 'error' };
  });

  log(`sim: starting a devnet of ${specs.length} nodes in ${dir}`);
  const started = Date.now();
  const devnet = await startDevnet({ dir, nodes: specs.length, params, strategies: specs, log: nodeLog, extensions });
  let keep = !temp;
  try {
    const { info } = devnet;
    const verity = Verity.connect({ mu: info.mu, cu: info.cu, coordinator: info.coordinator, token: info.token, wallet: devnet.user });
    const userAddress = verity.address;
    const ao = aoClient({ mu: info.mu, cu: info.cu, wallet: devnet.user });
    const dry = async (action: string, tags: { name: string; value: string }[] = []) =>
      expectReply(await ao.dryRun(info.coordinator, { tags: [{ name: 'Action', value: action }, ...tags], from: userAddress }), `${action}-Response`);
    const coordinatorParams = JSON.parse((await dry('Params')).data) as Params;
    type NodeRow = { address: string; reputation: number; stake: string };
    const nodesAtStart = JSON.parse((await dry('Nodes')).data) as NodeRow[];

    // The requests: a bounded pool of SDK infers, each waiting for its final answer.
    log(`sim: ${o.requests} requests, ${o.concurrency} at a time`);
    const runStart = Date.now();
    const firstNonce = Number((await devnet.units.scheduler.latest(info.coordinator))?.assignment.tags.find((x) => x.name === 'Nonce')?.value ?? 0);
    let ticking = o.tickMs > 0;
    const ticker = (async () => {
      while (ticking) {
        await new Promise((resolve) => setTimeout(resolve, o.tickMs));
        if (ticking) await ao.message(info.coordinator, { tags: [{ name: 'Action', value: 'Heartbeat' }] }).catch(() => undefined);
      }
    })();
    let next = 0;
    let done = 0;
    const worker = async (): Promise<void> => {
      while (next < requests.length) {
        const r = requests[next++];
        const t0 = Date.now();
        try {
          const result = await verity.infer(r.prompt, { maxTokens: o.maxTokens, temperature: o.temperature, topP: 0.9, seed: r.seed, reference: referenceOf(r.index), timeoutMs: o.requestTimeoutMs });
          r.task = result.task;
          r.outcome = result.status === 'final' ? 'final' : 'failed';
        } catch (e) {
          const message = (e as Error).message;
          const code = e instanceof RefusedError ? e.code : 0;
          r.task = /^task ([A-Za-z0-9_-]{43}): /.exec(message)?.[1];
          // The SDK's own wait running out (the task is stuck or slow), a 504 from the coordinator (no valid result), or a refusal.
          r.outcome = /^no Infer-Response .* within/.test(message) ? 'timeout' : code === 504 && r.task ? 'failed' : 'error';
          // One line per kind of failure: ids and numbers vary.
          r.error = `${code ? `${code} ` : ''}${message.replace(/^task [A-Za-z0-9_-]{43}: /, '').replace(/[A-Za-z0-9_-]{43}/g, '<id>').replace(/\d+/g, 'N').slice(0, 160)}`;
        }
        r.ms = Date.now() - t0;
        done += 1;
        if (done % Math.max(1, Math.round(o.requests / 10)) === 0 || done === o.requests) {
          log(`sim: ${done}/${o.requests} requests done (${requests.filter((x) => x.outcome === 'final' && x.ms !== undefined).length} final) after ${((Date.now() - runStart) / 1000).toFixed(0)} s`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(o.concurrency, requests.length) }, worker));
    const wallMs = Date.now() - runStart;
    ticking = false;
    await ticker;

    // The coordinator's log while the requests ran: how long it went without any message.
    const idleGaps: number[] = [];
    let last: number | null = null;
    let nonce = firstNonce;
    for (;;) {
      const page = await devnet.units.scheduler.messages(info.coordinator, { fromNonce: nonce, limit: 1000 });
      if (!page || page.edges.length === 0) break;
      for (const { node, cursor } of page.edges) {
        const at = Number(node.assignment.tags.find((x) => x.name === 'Timestamp')?.value);
        if (last !== null && at - last >= IDLE_MS && at <= runStart + wallMs) idleGaps.push(at - last);
        last = at;
        nonce = Number(cursor);
      }
      if (!page.page_info.has_next_page) break;
    }

    // Everything the coordinator said, from its first result: final answers and slashes.
    log('sim: reading the coordinator\'s results');
    const views: Record<string, TaskView> = {};
    const slashes: SlashEvent[] = [];
    const nodeSet = new Set(devnet.nodes.map((n) => n.address));
    let from: string | undefined;
    for (;;) {
      const page = await ao.results(info.coordinator, from === undefined ? { limit: 1000 } : { from, limit: 1000 });
      for (const { node } of page.edges) {
        for (const m of node.Messages) {
          const tags = Object.fromEntries(m.Tags.map((x) => [x.name, x.value])) as Record<string, string>;
          if (tags.Action === 'Infer-Response' && (tags.Status === 'final' || tags.Status === 'failed')) views[tags.Task] = JSON.parse(m.Data ?? '') as TaskView;
          else if (tags.Action === 'Slash-Notice' && nodeSet.has(m.Target)) slashes.push({ task: tags.Task, node: m.Target, quantity: tags.Quantity ?? '0', reason: tags.Reason ?? '' });
        }
      }
      if (!page.pageInfo.hasNextPage || page.edges.length === 0) break;
      from = page.edges.at(-1)!.cursor;
    }
    for (const view of Object.values(views)) {
      const r = requests.find((x) => referenceOf(x.index) === view.reference);
      if (r && r.task === undefined) r.task = view.task;
    }
    const live = (JSON.parse((await dry('Info')).data) as { openTasks: number }).openTasks;
    const nodesAtEnd = JSON.parse((await dry('Nodes')).data) as NodeRow[];
    const nodes: SimNode[] = [];
    for (const [index, n] of devnet.nodes.entries()) {
      const start = nodesAtStart.find((x) => x.address === n.address);
      const end = nodesAtEnd.find((x) => x.address === n.address);
      const balance = await dry('Balance', [{ name: 'Target', value: n.address }]);
      nodes.push({
        index, address: n.address, strategy: roster[index].strategy, pair: roster[index].pair,
        start: { stake: start?.stake ?? DEVNET_STAKE.toString(), reputation: start?.reputation ?? 100 },
        end: { stake: balance.tags.Stake ?? '0', earnings: balance.tags.Earnings ?? '0', reputation: end?.reputation ?? null },
        activity: n.activity(),
      });
    }
    const observations: SimObservations = {
      setup: { honest: o.honest, perStrategy: o.perStrategy, strategies: o.strategies, requests: o.requests, maxTokens: o.maxTokens, concurrency: o.concurrency, temperature: o.temperature },
      params: coordinatorParams, nodes, requests, views, slashes, proofs: [...proofs], live, wallMs, idleGaps, dir,
    };
    // What was seen, beside the devnet's state: buildReport(JSON.parse(…)) gives the report again.
    writeFileSync(join(dir, 'observations.json'), JSON.stringify(observations));
    const report = buildReport(observations);
    log(`sim: done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
    if (report.anomalies.length > 0) keep = true;
    report.dir = keep ? dir : '';
    return report;
  } catch (e) {
    keep = true;
    throw e;
  } finally {
    await devnet.close();
    await new Promise<void>((resolve) => (logFile ? logFile.end(resolve) : resolve()));
    if (!keep) rmSync(dir, { recursive: true, force: true });
    else log(`sim: the devnet's state and log are kept in ${dir}`);
  }
}
