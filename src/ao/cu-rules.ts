// The CU's rules, as pure functions: what the next slot of a log must be, what a process sees of a
// message, a module's limits, the results chain, and when a checkpoint is due. cu.ts reads the
// log, the store and its SQLite (the effects) and applies these.
import { createHash } from 'node:crypto';
import { tagValue, type Item, type Tag } from '../store/items.js';
import { nextHashChain } from './protocol.js';
import { HOST_EXTENSION, LLAMA_EXTENSION, LLAMA_EXTENSION_NAMES, type Extensions, type Limits, type ProcessEnv, type ProcessMessage } from './runtime.js';

export const sha256hex = (text: string): string => createHash('sha256').update(text).digest('hex');

/** The wallets a process trusts to push messages from other processes: its `Authority` tags (comma-separated lists allowed). */
export const authorities = (tags: Tag[]): Set<string> =>
  new Set(tags.filter((t) => t.name === 'Authority').flatMap((t) => t.value.split(',').map((a) => a.trim())));

/** A module's Memory-Limit ("<n>-b") and Compute-Limit tags, capped by the CU's own limits. */
export function moduleLimits(module: Pick<Item, 'tags'>, cap: Limits): Limits {
  const memory = Number(/^(\d+)-b$/.exec(tagValue(module, 'Memory-Limit') ?? '')?.[1] ?? NaN);
  const compute = Number(tagValue(module, 'Compute-Limit') ?? NaN);
  return {
    memory: Number.isSafeInteger(memory) && memory > 0 ? Math.min(memory, cap.memory) : cap.memory,
    compute: Number.isSafeInteger(compute) && compute > 0 ? Math.min(compute, cap.compute) : cap.compute,
  };
}

/**
 * The host functions of `offered` a module is given, by the Extension tags it declares: the llama
 * functions with `Llama`, the others (the coordinator's) with `Verity-Host`; none without a tag.
 */
export function moduleExtensions(module: Pick<Item, 'tags'>, offered: Extensions): Extensions {
  const declared = new Set(module.tags.filter((t) => t.name === 'Extension').map((t) => t.value));
  const llama: readonly string[] = LLAMA_EXTENSION_NAMES;
  return Object.fromEntries(Object.entries(offered).filter(([name]) => declared.has(llama.includes(name) ? LLAMA_EXTENSION : HOST_EXTENSION)));
}

/** Where a process's log stands: the last slot evaluated and the link it ended with. */
export interface LogPosition {
  processId: string;
  /** The scheduler wallet its Process item names: only its signed assignments count. */
  scheduler: string;
  /** The last evaluated slot, −1 before the Process itself. */
  nonce: number;
  hashChain: string | null;
  lastAssignment: string | null;
}

/**
 * Why `assignment` cannot be the next slot of the log at `at`, or null: it must be signed by the
 * process's scheduler, for this process, the very next slot, and the next link of the hash chain —
 * so an SU (or a unit between it and the CU) that lies is caught here.
 */
export function nextSlotProblem(at: LogPosition, assignment: Pick<Item, 'id' | 'address' | 'tags'>): string | null {
  if (assignment.address !== at.scheduler) return `assignment ${assignment.id} is not signed by the scheduler of ${at.processId}`;
  if (tagValue(assignment, 'Process') !== at.processId) return `assignment ${assignment.id} is for another process`;
  const nonce = Number(tagValue(assignment, 'Nonce'));
  if (nonce !== at.nonce + 1) return `the SU skipped from slot ${at.nonce} to ${nonce} of ${at.processId}`;
  const chain = nextHashChain(at.processId, at.lastAssignment && at.hashChain ? { assignment: at.lastAssignment, chain: at.hashChain } : null);
  if (tagValue(assignment, 'Hash-Chain') !== chain) return `the SU's hash chain breaks at slot ${nonce} of ${at.processId}`;
  return null;
}

/** A message as the SU or the store gives it. */
export interface LogMessage {
  id: string;
  owner: { address: string; key: string };
  data: string | null;
  tags: Tag[];
  signature: string;
  anchor: string | null;
  target: string | null;
}

/** What the process sees of slot `assignment`'s message (AO's CU message object). */
export function processMessage(processId: string, env: ProcessEnv, assignment: { tags: Tag[] }, msg: LogMessage, readOnly = false): ProcessMessage {
  const tag = (name: string): string => assignment.tags.find((t) => t.name === name)?.value ?? '';
  // A From-Process tag is a claim anyone can write: it names the sender only when the item is
  // signed by one of the process's Authority wallets (its MUs), as in AO.
  const claimed = msg.tags.find((t) => t.name === 'From-Process')?.value;
  const fromProcess = claimed !== undefined && authorities(env.Process.Tags).has(msg.owner.address) ? claimed : undefined;
  return {
    Id: msg.id,
    Signature: msg.signature,
    Data: msg.data ?? '',
    Owner: msg.owner.address,
    Anchor: msg.anchor,
    From: fromProcess ?? msg.owner.address,
    ...(fromProcess ? { 'Forwarded-By': msg.owner.address } : {}),
    Tags: msg.tags,
    // The item's own target: an item assigned here from another process's log says so (slot 0,
    // the process itself, has none). A process acts only on what is addressed to it.
    Target: Number(tag('Nonce')) === 0 ? processId : (msg.target ?? ''),
    Epoch: Number(tag('Epoch') || 0),
    Nonce: Number(tag('Nonce')),
    Timestamp: Number(tag('Timestamp')),
    'Block-Height': Number(tag('Block-Height')),
    'Hash-Chain': tag('Hash-Chain'),
    Cron: false,
    ...(readOnly ? { 'Read-Only': true } : {}),
  };
}

/**
 * A slot made by an assignment carries no message: it is the stored item the assignment names,
 * without the fields its Exclude tag lists.
 */
export function assignedMessage(assignment: Pick<Item, 'tags'>, item: Item): LogMessage {
  const exclude = new Set((tagValue(assignment, 'Exclude') ?? '').split(',').map((s) => s.trim()));
  return {
    id: item.id,
    owner: { address: item.address, key: item.owner },
    data: exclude.has('Data') ? null : item.data.toString('utf8'),
    tags: item.tags,
    signature: item.signature,
    anchor: exclude.has('Anchor') ? null : item.anchor,
    target: item.target,
  };
}

/** The hash a result's attestation signs: its whole outcome. */
export const outputHash = (outcome: object): string => sha256hex(JSON.stringify(outcome));

/**
 * The results chain after a slot: sha256(the chain before it ‖ its Output-Hash), from
 * sha256('') before slot 0. Two CUs with one chain at slot n gave the same results for every slot
 * up to n. It is what a result attests instead of a hash of the whole state, which would cost
 * every message the state's size; the state's own hash is in each checkpoint.
 */
export const nextResultsChain = (previous: string, output: string): string => sha256hex(previous + output);
export const RESULTS_CHAIN_START = sha256hex('');

/**
 * When a CU writes a checkpoint of a process. A checkpoint costs the state's size (it serialises,
 * signs and stores it); a restart costs the messages since the last one (it evaluates them again).
 * So a process checkpoints every `messages` slots while its state is small, and every
 * stateBytes / `bytesPerMessage` slots once it is large — a checkpoint then adds at most
 * `bytesPerMessage` of serialising per message, whatever the state weighs — or after `ms` of work
 * with at least one new slot, so a slow process is saved too.
 */
export interface CheckpointPolicy {
  messages: number;
  bytesPerMessage: number;
  ms: number;
}

export const checkpointInterval = (lastStateBytes: number, policy: CheckpointPolicy): number =>
  Math.max(policy.messages, Math.ceil(lastStateBytes / policy.bytesPerMessage));

export const checkpointDue = (since: { messages: number; ms: number }, lastStateBytes: number, policy: CheckpointPolicy): boolean =>
  since.messages >= checkpointInterval(lastStateBytes, policy) || (since.messages > 0 && since.ms >= policy.ms);
