// What this MU can push. A process's result lists outbox entries (`Messages[i]`: {Target, Data,
// Anchor, Tags}; `Spawns[i]`: {Data, Anchor, Tags}); the MU turns each into a data item signed by its
// Ed25519 wallet, with tags of its own added. Some entries can never become an item any SU accepts
// (too many tag bytes once the MU's tags are added, an anchor past 32 bytes, a Target that is no id):
// `outboxProblem` says so before anything is built.
//
// Pure and dependency-free (no node: modules, no clock, no globals beyond the language), so that the
// CU can run the same rule while it evaluates, in a worker thread too: a process whose outbox could
// never be delivered then gets an Error and keeps its state, instead of an outbox that the MU drops.
// The MU builds every pushed tag list with `outboxTags` from the one table `MU_ADDED_TAGS`, so the
// check and the MU cannot disagree.

export type OutboxKind = 'message' | 'spawn';

export interface OutboxTag {
  name: string;
  value: string;
}

// ANS-104's limits, as arbundles and our parser (src/store/items.ts) enforce them.
export const MAX_TAGS = 128;
export const MAX_TAG_NAME_BYTES = 1024;
export const MAX_TAG_VALUE_BYTES = 3072;
/** On the Avro encoding of the whole tag list (counts and lengths included). */
export const MAX_TAG_BYTES = 4096;
/** AO's anchor (a nonce): the MU left-pads a shorter one with '0' to exactly this many bytes. */
export const MAX_ANCHOR_BYTES = 32;
/** The largest item an SU takes: su.ts's MAX_ITEM_BYTES (tests/ao/mu-attacks.test.ts pins them equal). */
export const MAX_ITEM_BYTES = 16 * 1024 * 1024;

/** An id the MU fills into its tags; each is 43 base64url characters (an item id or a wallet address). */
export type PushedId = 'from-process' | 'from-module' | 'pushed-for' | 'scheduler' | 'module';
export type PushedIds = Record<PushedId, string>;

type AddedTag = { readonly name: string; readonly value: string } | { readonly name: string; readonly id: PushedId };

/** The tags the MU adds after a process's own, in this order (AO's MU adds the same). */
export const MU_ADDED_TAGS: Readonly<Record<OutboxKind, readonly AddedTag[]>> = {
  message: [
    { name: 'Data-Protocol', value: 'ao' },
    { name: 'Type', value: 'Message' },
    { name: 'Variant', value: 'ao.TN.1' },
    { name: 'From-Process', id: 'from-process' },
    { name: 'From-Module', id: 'from-module' },
    { name: 'Pushed-For', id: 'pushed-for' },
  ],
  spawn: [
    { name: 'Data-Protocol', value: 'ao' },
    { name: 'Type', value: 'Process' },
    { name: 'Variant', value: 'ao.TN.1' },
    { name: 'From-Process', id: 'from-process' },
    { name: 'Pushed-For', id: 'pushed-for' },
    // The parent's scheduler: a child lives where its parent does.
    { name: 'Scheduler', id: 'scheduler' },
    // The spawn's own Module tag, or else its parent's.
    { name: 'Module', id: 'module' },
  ],
};

/** Tags a process may not set on what the MU pushes for it (the MU vouches for these): dropped, then the MU's own are added. */
export const MU_RESERVED_TAGS: Readonly<Record<OutboxKind, ReadonlySet<string>>> = {
  message: new Set(['Data-Protocol', 'Type', 'Variant', 'From-Process', 'From-Module', 'Pushed-For', 'Assignments']),
  spawn: new Set(['Data-Protocol', 'Type', 'Variant', 'From-Process', 'From-Module', 'Pushed-For', 'Assignments', 'Scheduler', 'Module']),
};

// The Ed25519 item layout (the MU's wallet is Ed25519): type, signature, owner, target and anchor
// (presence byte + 32), tag count and tag byte count.
const ITEM_HEADER_BYTES: Record<OutboxKind, number> = { message: 2 + 64 + 32 + 33 + 33 + 16, spawn: 2 + 64 + 32 + 1 + 33 + 16 };

/** Stands in for an id the check is not given: every id the MU fills in has this length. */
const SOME_ID = 'A'.repeat(43);

/** UTF-8 length of a JS string, as Buffer.byteLength counts it (a lone surrogate is 3 bytes). */
export function utf8Bytes(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/** Bytes of an Avro zigzag varint for n ≥ 0. */
function varintBytes(n: number): number {
  let m = n * 2;
  let bytes = 1;
  while (m >= 128) {
    m = Math.floor(m / 128);
    bytes++;
  }
  return bytes;
}

/** The size of a tag list as ANS-104 stores it: an Avro array (count, then each name and value length-prefixed, then 0); no tags: 0 bytes. */
export function tagBytes(tags: readonly OutboxTag[]): number {
  if (tags.length === 0) return 0;
  let n = varintBytes(tags.length) + 1;
  for (const t of tags) {
    const name = utf8Bytes(t.name);
    const value = utf8Bytes(t.value);
    n += varintBytes(name) + name + varintBytes(value) + value;
  }
  return n;
}

/** Why a complete tag list breaks ANS-104's limits, or null. */
export function tagListProblem(tags: readonly OutboxTag[]): string | null {
  if (tags.length > MAX_TAGS) return `${tags.length} tags, at most ${MAX_TAGS}`;
  for (const [i, t] of tags.entries()) {
    const name = utf8Bytes(t.name);
    const value = utf8Bytes(t.value);
    if (name === 0 || name > MAX_TAG_NAME_BYTES) return `tag ${i} name is ${name} bytes, must be 1..${MAX_TAG_NAME_BYTES}`;
    if (value === 0 || value > MAX_TAG_VALUE_BYTES) return `tag ${i} (${t.name.slice(0, 40)}) value is ${value} bytes, must be 1..${MAX_TAG_VALUE_BYTES}`;
  }
  const bytes = tagBytes(tags);
  if (bytes > MAX_TAG_BYTES) return `${bytes} bytes of tags, at most ${MAX_TAG_BYTES}`;
  return null;
}

/** An entry's Tags as a list of {name, value} strings, or why not. Absent: none. */
export function entryTags(value: unknown): OutboxTag[] | string {
  if (value === undefined) return [];
  if (!Array.isArray(value)) return 'Tags must be a list of {name, value} strings';
  const tags: OutboxTag[] = [];
  for (const t of value as unknown[]) {
    const { name, value: v } = (t ?? {}) as { name?: unknown; value?: unknown };
    if (typeof name !== 'string' || typeof v !== 'string') return 'Tags must be a list of {name, value} strings';
    tags.push({ name, value: v });
  }
  return tags;
}

/**
 * The tags the MU writes on an item: the process's own, less the reserved ones, then the MU's. An
 * id the kind needs but `ids` lacks becomes an empty value, which no item may carry: it cannot pass.
 */
export function outboxTags(kind: OutboxKind, own: readonly OutboxTag[], ids: Partial<PushedIds>): OutboxTag[] {
  const reserved = MU_RESERVED_TAGS[kind];
  return [
    ...own.filter((t) => !reserved.has(t.name)).map((t) => ({ name: t.name, value: t.value })),
    ...MU_ADDED_TAGS[kind].map((t) => ({ name: t.name, value: 'value' in t ? t.value : (ids[t.id] ?? '') })),
  ];
}

/** Why an Anchor cannot be used, or null. Absent or empty: the MU derives one. */
export function anchorProblem(anchor: unknown): string | null {
  if (anchor === undefined || anchor === null || anchor === '') return null;
  if (typeof anchor !== 'string') return 'Anchor must be a string';
  const bytes = utf8Bytes(anchor);
  return bytes > MAX_ANCHOR_BYTES ? `Anchor is ${bytes} bytes, at most ${MAX_ANCHOR_BYTES}` : null;
}

/** aos pads its Reference to 32 digits ("%032d"); other short anchors get the same treatment. */
export const paddedAnchor = (anchor: string): string => '0'.repeat(MAX_ANCHOR_BYTES - utf8Bytes(anchor)) + anchor;

// Base64url of 32 bytes is 43 characters whose last one carries 2 unused bits, which must be 0.
const ID = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/;
/** An id that decodes to 32 bytes and encodes back to itself (createItem refuses any other target). */
export const isCanonicalId = (value: unknown): value is string => typeof value === 'string' && ID.test(value);

/** An entry's Data as the item's data: a string as it is, anything else as JSON, none as ''. */
export function outboxData(value: unknown): string {
  if (value === undefined || value === null) return '';
  return typeof value === 'string' ? value : (JSON.stringify(value) ?? '');
}

/**
 * Why this MU can never push an outbox entry, or null when it can. `ids` are the values the MU
 * fills in (the sender, its module, the Pushed-For message, and for a spawn its scheduler and
 * module); those not given count as 43-character ids, which is what they are. Deterministic: the
 * same entry gets the same answer on every machine.
 */
export function outboxProblem(kind: OutboxKind, entry: unknown, ids: Partial<PushedIds> = {}): string | null {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) return `an outbox ${kind} must be an object`;
  const e = entry as { Target?: unknown; Anchor?: unknown; Data?: unknown; Tags?: unknown };
  if (kind === 'message' && !isCanonicalId(e.Target)) return 'an outbox message needs a Target id (43 base64url characters, 32 bytes)';
  const own = entryTags(e.Tags);
  if (typeof own === 'string') return own;
  const anchor = anchorProblem(e.Anchor);
  if (anchor) return anchor;
  const spawnModule = kind === 'spawn' ? own.find((t) => t.name === 'Module')?.value : undefined;
  const tags = outboxTags(kind, own, {
    'from-process': ids['from-process'] ?? SOME_ID,
    'from-module': ids['from-module'] ?? SOME_ID,
    'pushed-for': ids['pushed-for'] ?? SOME_ID,
    scheduler: ids.scheduler ?? SOME_ID,
    module: ids.module ?? spawnModule ?? SOME_ID,
  });
  const problem = tagListProblem(tags);
  if (problem) return `with the ${MU_ADDED_TAGS[kind].length} tags the MU adds: ${problem}`;
  let data: string;
  try {
    data = outboxData(e.Data);
  } catch {
    return 'Data cannot be written as JSON';
  }
  const size = ITEM_HEADER_BYTES[kind] + tagBytes(tags) + utf8Bytes(data);
  if (size > MAX_ITEM_BYTES) return `the item would be ${size} bytes, at most ${MAX_ITEM_BYTES}`;
  return null;
}
