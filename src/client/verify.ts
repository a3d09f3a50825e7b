// Checking an answer without trusting anyone: the stored trace must be the one the receipt names,
// the job must be the one the request describes, re-running that job here must give the same trace
// root — the engine is bit-exact, so an honest node's root is the only root — and the text must be
// the text of the tokens that run produced.
import { completionText, loadModel, modelIdentity } from '../engine/index.js';
import { jobCommitment, recordTrace } from '../proof/index.js';
import { describeRequest } from '../processes/host.js';
import { fetchModel } from '../store/models.js';
import type { Store } from '../store/store.js';
import { RefusedError } from '../ao/client.js';
import type { Receipt } from './sdk.js';

export interface ReceiptRequest {
  prompt: string;
  maxTokens: number;
  temperature?: number;
  topP?: number;
  seed?: number | string;
}

export async function verifyReceipt(
  store: Store, answer: { receipt: Receipt | null; text: string }, request: ReceiptRequest, cacheDir: string,
): Promise<{ traceRoot: string; steps: number }> {
  const { receipt } = answer;
  if (!receipt) throw new RefusedError(409, 'the task has no receipt: it did not complete');
  const item = await store.get(receipt.trace);
  if (!item) throw new RefusedError(404, `trace item ${receipt.trace} is not in the store`);
  const stored = JSON.parse(item.data.toString('utf8')) as { root?: string; commitment?: string };
  if (stored.root !== receipt.traceRoot || stored.commitment !== receipt.commitment) throw new RefusedError(409, 'the stored trace is not the one the receipt names');
  const model = loadModel(await fetchModel(store, receipt.model, cacheDir));
  const job = describeRequest(
    { ...modelIdentity(model), tokenizer: model.tokenizer, seqLen: model.config.seqLen },
    { prompt: request.prompt, maxTokens: request.maxTokens, temperature: request.temperature ?? 0, topP: request.topP ?? 0.9, seed: String(request.seed ?? 0) },
  );
  if (jobCommitment(job) !== receipt.commitment) throw new RefusedError(409, 'the receipt is for another job than this request');
  const trace = recordTrace(model, job);
  if (trace.root !== receipt.traceRoot) throw new RefusedError(409, `a local re-run gives trace root ${trace.root}, the receipt says ${receipt.traceRoot}`);
  const generated = trace.tokens.slice(job.promptTokens.length - 1);
  if (completionText(model.tokenizer, job.promptTokens[job.promptTokens.length - 1], generated) !== answer.text) {
    throw new RefusedError(409, 'the text is not what the job generates');
  }
  return { traceRoot: trace.root, steps: trace.leaves.length };
}
