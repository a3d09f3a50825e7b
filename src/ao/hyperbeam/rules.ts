// The HyperBEAM interface's rules, pure: which signed item may do what (a request's item in, the
// process it acts on or a refusal out), and how an outcome of the units is answered in HyperBEAM's
// shapes (the results message aoconnect's mainnet mode reads, the slot message, the node's info).
import { ITEM_ID, tagValue, type Item, type Tag } from '../../store/items.js';
import type { OutboxMessage } from '../runtime.js';
import type { Route } from './paths.js';

export class RuleError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'RuleError';
  }
}

/** How a request was signed: an ANS-104 item in the body, an HTTP message signature, or not at all. */
export type Signing = 'ans104' | 'httpsig' | 'none';

/**
 * The signing form a request's headers declare. aoconnect's ans104 requests carry
 * `codec-device: ans104@1.0` (and `Content-Type: application/ans104`); its httpsig requests carry
 * `Signature-Input`. A body with no codec named is read as an ANS-104 item too (it is verified all
 * the same); another codec is refused rather than misread.
 */
export function signingOf(headers: { codecDevice?: string; contentType?: string; signatureInput?: boolean }, bodyBytes: number): Signing {
  const codec = headers.codecDevice?.trim().toLowerCase();
  if (codec !== undefined && codec !== 'ans104@1.0') throw new RuleError(415, `codec-device ${codec.slice(0, 40)} is not read here: send an ANS-104 item with codec-device ans104@1.0, or sign the request with httpsig and no body`);
  if (codec === 'ans104@1.0' || headers.contentType?.trim().toLowerCase().startsWith('application/ans104')) {
    if (bodyBytes === 0) throw new RuleError(400, 'an ans104 request carries its signed data item as the body: the body is empty');
    return 'ans104';
  }
  if (headers.signatureInput) return 'httpsig';
  return bodyBytes > 0 ? 'ans104' : 'none';
}

export interface PushPlan {
  type: 'Process' | 'Message';
  /** The process the item is scheduled on: its own id for a Process, its Target for a Message. */
  process: string;
  /**
   * HyperBEAM's `push-mode` (a key of the request, here the item's tag): `sync`, the default, answers
   * with the message's result too (what aoconnect's `message({ opts: { fullResponse } })` reads);
   * `async` answers once the message is in the log. A spawn is answered with its assignment only.
   */
  mode: 'sync' | 'async';
}

/**
 * What a push may do with this (parsed, not yet verified) item. A Process is spawned only by the
 * base-less `/push` and only with this node's scheduler; a Message goes to its own signed Target,
 * which must be the process the path names: the path is not signed, the Target is.
 */
export function pushPlan(route: Extract<Route, { kind: 'push' }>, item: Pick<Item, 'id' | 'target' | 'tags'>, scheduler: string): PushPlan {
  const type = tagValue(item, 'Type');
  const path = 'process' in route ? route.process : undefined;
  const mode = (tagValue(item, 'push-mode') ?? 'sync').toLowerCase();
  if (mode !== 'sync' && mode !== 'async') throw new RuleError(400, `push-mode is sync or async, not ${JSON.stringify(mode.slice(0, 32))}`);
  if (type === 'Process') {
    if (path !== undefined) throw new RuleError(400, `a Process item is spawned with POST /push, not pushed to process ${path}`);
    const named = tagValue(item, 'Scheduler');
    if (named !== scheduler) throw new RuleError(400, `the process's Scheduler tag must be this node's scheduler ${scheduler} (GET /~meta@1.0/info/address), not ${JSON.stringify((named ?? 'absent').slice(0, 64))}`);
    if (!ITEM_ID.test(tagValue(item, 'Module') ?? '')) throw new RuleError(400, 'the process needs a Module tag holding a module id');
    return { type, process: item.id, mode: 'async' };
  }
  if (type === 'Message') {
    if (!item.target) throw new RuleError(400, 'a Message needs a Target: the process it is for');
    if (path !== undefined && item.target !== path) throw new RuleError(400, `the item's Target ${item.target} is not the process in the path ${path}: the Target is what the signature covers`);
    return { type, process: item.target, mode };
  }
  throw new RuleError(400, `a pushed item's Type tag must be Process or Message, not ${type === undefined ? 'absent' : JSON.stringify(type.slice(0, 64))}`);
}

/** A read's signed item, when it names a Target, must name the process read. */
export function checkReadTarget(process: string | undefined, item: Pick<Item, 'target'>): void {
  if (process !== undefined && item.target && item.target !== process) throw new RuleError(400, `the item's Target ${item.target} is not the process in the path ${process}`);
}

/** Tags that say how a request travels, not what it means: left out of a dry run's message. */
const TRANSPORT = new Set(['signing-format', 'accept-bundle', 'accept-codec', 'require-codec', 'codec-device']);

/** A dry run's tags: the path's pairs first (aoconnect puts the caller's tags there), then the item's own. */
export function dryRunTags(pathTags: Tag[], item: Pick<Item, 'tags'> | null): Tag[] {
  return [...pathTags, ...(item?.tags ?? []).filter((t) => !TRANSPORT.has(t.name.toLowerCase()))];
}

/** The shape of an AO result this file needs (the CU's Result, or a dry run's outcome). */
export interface AoResult {
  Output: unknown;
  Messages: OutboxMessage[];
  Error?: string;
  [key: string]: unknown;
}

/** HyperBEAM's outbox: the result's messages keyed from "1", each its target and data with its tags as keys. */
export function outboxOf(messages: OutboxMessage[]): Record<string, Record<string, string>> {
  const outbox: Record<string, Record<string, string>> = {};
  messages.forEach((m, i) => {
    const entry: Record<string, string> = {};
    for (const t of m.Tags ?? []) entry[t.name] = t.value;
    entry.target = m.Target;
    entry.data = m.Data ?? '';
    outbox[String(i + 1)] = entry;
  });
  return outbox;
}

/** The result's `data`: the Output's `data` field when it has one (aos's shape), else the Output. */
const dataOf = (output: unknown): unknown => (output !== null && typeof output === 'object' && 'data' in output ? (output as { data: unknown }).data : output);

/**
 * A results message as HyperBEAM answers `compute/results` with `require-codec: application/json`:
 * `raw` is the AO result itself (what aoconnect's mainnet `result`, `results` and `dryrun` return,
 * the CU's Attestation included), `outbox` and `data` its HyperBEAM views.
 */
export function resultsMessage(process: string, at: { slot: number; message: string } | null, result: AoResult): Record<string, unknown> {
  return {
    process,
    ...(at ? { slot: at.slot, message: at.message } : {}),
    raw: result,
    outbox: outboxOf(result.Messages ?? []),
    data: dataOf(result.Output),
  };
}

/** The slot message (`/slot`): the log's head. */
export function slotMessage(process: string, head: { nonce: number; timestamp: number; blockHeight: string }): Record<string, unknown> {
  return { process, current: head.nonce, timestamp: head.timestamp, 'block-height': head.blockHeight };
}

/** A place in a log, from an assignment's tags (Nonce, Timestamp, Block-Height, Message). */
export function assignmentPlace(assignment: Pick<Item, 'tags'>): { nonce: number; timestamp: number; blockHeight: string; message: string | undefined } {
  return {
    nonce: Number(tagValue(assignment, 'Nonce')),
    timestamp: Number(tagValue(assignment, 'Timestamp')),
    blockHeight: tagValue(assignment, 'Block-Height') ?? '',
    message: tagValue(assignment, 'Message'),
  };
}
