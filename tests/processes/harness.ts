// Drives a process module through the real runtime (QuickJS, src/ao/runtime.ts) without the SU,
// CU and MU: each send() is one slot of the process's log, evaluated the way the CU evaluates it
// (in the process's own VM, its state kept in place).
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import {
  DEFAULT_LIMITS, MODULE_FORMAT, ProcessVM, hostCallOf, loadRuntime, type Evaluation, type Extensions, type Limits, type ProcessEnv, type ProcessMessage, type Tag,
} from '../../src/ao/runtime.js';

/** Tags as a list (order and repeats kept) or, for brevity, as a record. */
export type Tags = Tag[] | Record<string, string>;

export interface OpenOptions {
  /** Defaults to a fresh id; pass one for runs that must reproduce byte for byte. */
  id?: string;
  owner: string;
  /** The spawn tags: env.Process.Tags and the boot message's tags. */
  tags: Tags;
  extensions?: Extensions;
  limits?: Limits;
}

export interface SendOptions {
  from: string;
  tags: Tags;
  data?: string;
  /** The signer; defaults to `from`. When it differs, the message is one an MU pushed for `from`. */
  owner?: string;
  /** Defaults to 1 s after the previous message. */
  timestamp?: number;
  id?: string;
  hashChain?: string;
  /** The item's own target; defaults to this process (another one: an item assigned from elsewhere). */
  target?: string;
}

export interface OpenProcess {
  id: string;
  env: ProcessEnv;
  /** The evaluation of the boot message (slot 0); not thrown, so tests can check a failed boot. */
  boot: Evaluation;
  /** Evaluates the next slot; the state moves on only when the evaluation has no Error. */
  send(message: SendOptions): Promise<Evaluation>;
  /** Evaluates a Read-Only message against the current state and keeps nothing. */
  dryRun(message: SendOptions): Promise<Evaluation>;
  state(): unknown;
  /** The nonce of the last slot evaluated. */
  nonce(): number;
}

/** The first timestamp the harness hands out (ms), well inside the present era. */
export const START_TIMESTAMP = 1_700_000_000_000;

const id43 = (text: string): string => createHash('sha256').update(text).digest('base64url');

let processCount = 0;

/** The bundled source of `src/processes/<name>.ts`, as a CU would read it from a module item. */
export async function processSource(name: string): Promise<string> {
  return readFile(new URL(`../../src/processes/bundled/${name}.js`, import.meta.url), 'utf8');
}

export function toTags(tags: Tags): Tag[] {
  return Array.isArray(tags) ? tags.map((t) => ({ ...t })) : Object.entries(tags).map(([name, value]) => ({ name, value }));
}

/** The first value of a tag of a message (or an outbox message). */
export function tagOf(message: { Tags: Tag[] }, name: string): string | undefined {
  return message.Tags.find((t) => t.name === name)?.value;
}

/** A message's tags as a record (the last value wins on repeats). */
export function tagsOf(message: { Tags: Tag[] }): Record<string, string> {
  return Object.fromEntries(message.Tags.map((t) => [t.name, t.value]));
}

export async function openProcess(source: string, options: OpenOptions): Promise<OpenProcess> {
  await loadRuntime();
  const id = options.id ?? id43(`harness-process-${++processCount}`);
  const spawnTags = toTags(options.tags);
  const env: ProcessEnv = {
    Process: { Id: id, Owner: options.owner, Tags: spawnTags },
    Module: {
      Id: id43(source),
      Owner: options.owner,
      Tags: toTags({ 'Data-Protocol': 'ao', Type: 'Module', 'Module-Format': MODULE_FORMAT, 'Input-Encoding': 'JSON-1', 'Output-Encoding': 'JSON-1' }),
    },
  };
  const limits = options.limits ?? DEFAULT_LIMITS;
  // The process's own VM, its state kept in place between messages, as the CU runs it.
  let vm = await ProcessVM.open({ source, env, limits, hostNames: Object.keys(options.extensions ?? {}) }, 'null', hostCallOf(options.extensions ?? {}));
  let state: unknown = null; // the state after the last kept message, as JSON gives it
  let nonce = -1;
  let timestamp = START_TIMESTAMP - 1000;
  // Sends not awaited one by one still take their slots in order.
  let queue: Promise<unknown> = Promise.resolve();

  const message = (m: SendOptions, slot: number, readOnly: boolean): ProcessMessage => {
    const owner = m.owner ?? m.from;
    const tags = toTags(m.tags);
    const pushed = owner !== m.from;
    if (pushed && !tags.some((t) => t.name === 'From-Process')) tags.push({ name: 'From-Process', value: m.from });
    return {
      Id: m.id ?? id43(`${id}:message:${slot}${readOnly ? ':dry-run' : ''}`),
      Data: m.data ?? '',
      Owner: owner,
      Anchor: null,
      From: m.from,
      ...(pushed ? { 'Forwarded-By': owner } : {}),
      Tags: tags,
      Target: m.target ?? id,
      Epoch: 0,
      Nonce: slot,
      Timestamp: m.timestamp ?? timestamp + 1000,
      'Block-Height': 1_000_000 + slot,
      'Hash-Chain': m.hashChain ?? id43(`${id}:hash-chain:${slot}`),
      Cron: false,
      ...(readOnly ? { 'Read-Only': true } : {}),
    };
  };

  const run = (m: SendOptions): Promise<Evaluation> => {
    const next = queue.then(async () => {
      const msg = message(m, nonce + 1, false);
      const { outcome, vm: after } = await vm.apply(msg);
      vm = after;
      // A failed message still takes its slot, as in the CU; only its state change is dropped.
      nonce = msg.Nonce;
      timestamp = Math.max(timestamp, msg.Timestamp);
      if (outcome.Error === undefined) state = JSON.parse(await vm.state()) as unknown;
      return { ...outcome, state };
    });
    queue = next.catch(() => undefined);
    return next;
  };

  const boot = await run({ from: options.owner, tags: spawnTags, id });
  return {
    id,
    env,
    boot,
    send: run,
    dryRun: (m) => {
      const next = queue.then(async () => ({ ...(await vm.dryRun(message(m, nonce + 1, true))), state }));
      queue = next.catch(() => undefined);
      return next;
    },
    state: () => state,
    nonce: () => nonce,
  };
}
