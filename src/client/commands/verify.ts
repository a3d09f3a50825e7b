// verity verify <task-id|receipt.json> [--challenge]: re-runs a task's job here and compares it
// with the stored trace, step by step (src/client/verify.ts). Exit codes: 0 match, 1 mismatch,
// 2 cannot check (missing data, the network out of reach, bad input). docs/network.md "verity verify".
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError } from 'commander';
import { loadModel } from '../../engine/index.js';
import { fetchModel } from '../../store/models.js';
import { openGatewayStore } from '../../store/gateway-store.js';
import type { Store } from '../../store/store.js';
import { challengeTask, type ChallengeReport } from '../challenge.js';
import { Verity, type Receipt } from '../sdk.js';
import { checkAnswer, describeStepName, type VerifyReport } from '../verify.js';
import { need, networkOf, walletOf, type NetworkFlags } from './network.js';
import { DEFAULT_HOME } from './store.js';

export interface VerifyFlags extends NetworkFlags {
  challenge?: boolean;
  waitMs?: string;
  cache?: string;
}

export const VERIFY_EXIT = { match: 0, mismatch: 1, cannotCheck: 2 } as const;

const TASK_ID = /^[A-Za-z0-9_-]{43}$/;
const MODEL_ID = /^[0-9a-f]{64}$/;

interface Answer {
  task: string;
  text: string;
  receipt: Receipt | null;
}

/**
 * A receipt file: what `verity infer --json` prints ({ task, text, status, usage, receipt }), or
 * an answer of the OpenAI-compatible API (a completion or chat completion with its `verity`
 * object; the text checked is the whole generated text, `full_text` when a stop sequence cut it).
 */
export function readReceiptFile(path: string): Answer {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new InvalidArgumentError(`${path}: not a receipt JSON file (${(e as Error).message})`);
  }
  const answer = doc !== null && typeof doc === 'object' && !Array.isArray(doc) ? (typeof doc.verity === 'object' ? fromApiAnswer(doc) : doc) : {};
  const r = answer.receipt as Receipt | null | undefined;
  const task = typeof answer.task === 'string' ? answer.task : r?.task;
  if (typeof answer.text !== 'string' || !r || typeof r !== 'object' || typeof task !== 'string' || typeof r.trace !== 'string' || typeof r.traceRoot !== 'string' || typeof r.commitment !== 'string' || typeof r.model !== 'string' || !MODEL_ID.test(r.model)) {
    throw new InvalidArgumentError(`${path}: not a receipt file (want verity infer --json's { task, text, receipt: { model, commitment, traceRoot, trace, … } }, or a final answer of the API)`);
  }
  return { task, text: answer.text, receipt: r };
}

/** An API answer's task, text and receipt (its first choice). */
function fromApiAnswer(doc: Record<string, unknown>): Record<string, unknown> {
  const verity = doc.verity as Record<string, unknown> | null;
  const choice = (Array.isArray(doc.choices) ? doc.choices[0] : null) as { text?: unknown; message?: { content?: unknown } } | null;
  const shown = choice?.text ?? choice?.message?.content;
  const text = verity?.full_text ?? shown;
  // full_text is the text a stop sequence cut: what the answer shows is its beginning. Otherwise
  // a match would be for a text no reader of the answer sees.
  if (verity?.full_text !== undefined && (typeof shown !== 'string' || typeof text !== 'string' || !text.startsWith(shown)))
    throw new InvalidArgumentError('the answer\'s text is not the beginning of its verity.full_text: the receipt is not for the text it shows');
  return { task: verity?.task, text, receipt: verity?.receipt };
}

function lines(report: VerifyReport, challenge: ChallengeReport | undefined): string {
  const out = [`task: ${report.task}`, `model: ${report.model}`, `trace root: receipt ${report.traceRoot.receipt}, stored ${report.traceRoot.stored ?? '-'}, local ${report.traceRoot.local ?? '-'}`];
  if (report.steps !== null) out.push(`steps: ${report.steps}`);
  if (!report.commitmentChecked) out.push('job commitment: the receipt\'s, not compared with the coordinator\'s');
  const d = report.firstDifference;
  if (d) out.push(`first difference: ${describeStepName(d)}`, `  stored leaf ${d.stored ?? '-'}`, `  local leaf  ${d.local ?? '-'}`);
  out.push(`text: ${report.text.match ? 'matches' : 'differs'}`);
  if (!report.text.match && report.text.local !== null) out.push(`  answer: ${JSON.stringify(report.text.answer)}`, `  local:  ${JSON.stringify(report.text.local)}`);
  for (const reason of report.reasons) out.push(`mismatch: ${reason}`);
  if (challenge) {
    if (!challenge.opened) out.push(`challenge refused${challenge.refused ? ` (${challenge.refused.code}): ${challenge.refused.message}` : ''}`);
    else {
      out.push(`challenge: ${challenge.message} opened, ${challenge.answered} dispute messages sent from here`);
      const o = challenge.dispute?.outcome;
      out.push(o ? `dispute outcome: ${challenge.winner} won (${o.reason}); task ${challenge.taskStatus}${challenge.corrected ? ', result corrected' : ''}` : `dispute still running after --wait-ms (task ${challenge.taskStatus})`);
    }
  }
  return `${out.join('\n')}\n`;
}

export async function verifyCommand(target: string, flags: VerifyFlags): Promise<void> {
  const json = flags.json === true;
  // Progress goes to stderr (stdout is the verdict, or the one JSON object).
  const progress = (line: string): void => void process.stderr.write(`verify: ${line}\n`);
  let store: Store | undefined;
  try {
    const waitMs = flags.waitMs === undefined ? 120_000 : Number(flags.waitMs);
    if (!Number.isInteger(waitMs) || waitMs < 0 || waitMs > 86_400_000) throw new InvalidArgumentError('--wait-ms must be a whole number of ms');
    const net = networkOf(flags);
    const connect = () => Verity.connect({ mu: need(net.mu, 'mu'), cu: need(net.cu, 'cu'), coordinator: need(net.coordinator, 'coordinator'), token: net.token, wallet: walletOf(flags, net.dir) });
    let answer: Answer;
    /** The coordinator's job commitment for the task: what the request describes. */
    let commitment: string | undefined;
    if (existsSync(target)) {
      answer = readReceiptFile(target);
      // A receipt file is checked against the coordinator's task when the network answers; offline, against itself only.
      try {
        commitment = (await connect().task(answer.task)).receipt?.commitment;
      } catch (e) {
        progress(`the receipt's job commitment is not compared with the coordinator's: ${(e as Error).message.split('\n')[0]}`);
      }
    } else if (TASK_ID.test(target)) {
      const view = await connect().task(target);
      answer = { task: view.task, text: view.result ?? '', receipt: view.receipt };
      commitment = view.receipt?.commitment;
    } else throw new InvalidArgumentError(`${target} is neither a receipt file nor a task id (43 base64url characters)`);
    store = openGatewayStore(need(net.gateway, 'gateway'));
    const cacheDir = flags.cache ?? join(net.dir ?? DEFAULT_HOME, 'verify');
    const { report, job, trace } = await checkAnswer(store, answer, cacheDir, progress, commitment);
    let challenge: ChallengeReport | undefined;
    if (flags.challenge && report.verdict === 'mismatch') {
      if (!job || !trace) throw new InvalidArgumentError('cannot challenge: the receipt names no job this machine could run');
      const verity = connect();
      const model = loadModel(await fetchModel(store, report.model, cacheDir));
      challenge = await challengeTask({
        connection: { mu: need(net.mu, 'mu'), cu: need(net.cu, 'cu'), coordinator: need(net.coordinator, 'coordinator'), wallet: walletOf(flags, net.dir) },
        store, task: answer.task, model, job, trace, text: report.text.local ?? '', view: (t) => verity.task(t), waitMs, progress,
      });
    }
    if (json) process.stdout.write(`${JSON.stringify({ ...report, ...(challenge ? { challenge } : {}) })}\n`);
    else {
      process.stdout.write(`${report.verdict}\n`);
      process.stderr.write(lines(report, challenge));
    }
    process.exitCode = report.verdict === 'match' ? VERIFY_EXIT.match : VERIFY_EXIT.mismatch;
  } catch (e) {
    const message = e instanceof Error ? e.message.split('\n')[0] : String(e);
    if (json) process.stdout.write(`${JSON.stringify({ verdict: 'cannot-check', error: message })}\n`);
    process.stderr.write(`verity: cannot check: ${message}\n`);
    process.exitCode = VERIFY_EXIT.cannotCheck;
  } finally {
    await store?.close();
  }
}
