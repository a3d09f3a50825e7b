// ANS-104 data items: every message, module, model chunk and result is one. Created and verified
// with @dha-team/arbundles (the library aoconnect uses); parsed here first with bounds checks so
// that a malformed, truncated or forged item gets a clear reason instead of an exception.
import { createHash, createPublicKey, verify as edVerify } from 'node:crypto';
import { DataItem, createData, deserializeTags, type Signer } from '@dha-team/arbundles';
import { b64url, ownerAddress } from './wallet.js';
import { VerityError } from '../errors.js';

export interface Tag {
  name: string;
  value: string;
}

/** A verified data item. */
export interface Item {
  id: string;
  signatureType: number;
  signature: string;
  /** The owner key, base64url, and its address. */
  owner: string;
  address: string;
  target: string | null;
  anchor: string | null;
  tags: Tag[];
  data: Buffer;
  raw: Buffer;
}

export class ItemError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'ItemError';
  }
}

/** Signature types Verity accepts: Arweave RSA-PSS, Ed25519, Solana (Ed25519 too). */
const SIGNATURES: Record<number, { sig: number; owner: number; name: string }> = {
  1: { sig: 512, owner: 512, name: 'arweave' },
  2: { sig: 64, owner: 32, name: 'ed25519' },
  4: { sig: 64, owner: 32, name: 'solana' },
};

export const TAG_LIMITS = { count: 128, name: 1024, value: 3072, bytes: 4096 };

/** Why a tag list breaks ANS-104's limits, or null. */
export function tagProblem(tags: Tag[]): string | null {
  if (tags.length > TAG_LIMITS.count) return `${tags.length} tags, at most ${TAG_LIMITS.count}`;
  for (const [i, t] of tags.entries()) {
    if (typeof t?.name !== 'string' || typeof t?.value !== 'string') return `tag ${i} is not a {name, value} pair of strings`;
    const name = Buffer.byteLength(t.name);
    const value = Buffer.byteLength(t.value);
    if (name === 0 || name > TAG_LIMITS.name) return `tag ${i} name is ${name} bytes, must be 1..${TAG_LIMITS.name}`;
    if (value === 0 || value > TAG_LIMITS.value) return `tag ${i} (${t.name}) value is ${value} bytes, must be 1..${TAG_LIMITS.value}`;
  }
  return null;
}

export interface ItemOptions {
  tags?: Tag[];
  /** base64url of 32 bytes: the process or wallet the item is for. */
  target?: string;
  /** 32 bytes, as AO uses it (a nonce). */
  anchor?: string;
}

/** Creates and signs a data item. */
export async function createItem(data: string | Uint8Array, signer: Signer, options: ItemOptions = {}): Promise<Item> {
  const tags = options.tags ?? [];
  const problem = tagProblem(tags);
  if (problem) throw new ItemError(`bad tags: ${problem}`);
  if (options.target !== undefined && (Buffer.from(options.target, 'base64url').length !== 32 || b64url(Buffer.from(options.target, 'base64url')) !== options.target)) throw new ItemError('bad target: not 32 bytes in canonical base64url');
  if (options.anchor !== undefined && Buffer.byteLength(options.anchor) !== 32) throw new ItemError('bad anchor: must be 32 bytes');
  // Whatever goes wrong from here is about this item (arbundles throws plain Errors, e.g. "Too many
  // tag bytes (4120 > 4096)"): an ItemError, so that a caller never mistakes it for a passing fault.
  let raw: Buffer;
  try {
    const item = createData(typeof data === 'string' ? data : Buffer.from(data), signer, { tags, target: options.target, anchor: options.anchor });
    await item.sign(signer);
    raw = item.getRaw();
  } catch (e) {
    throw new ItemError(`cannot build the item: ${(e as Error)?.message ?? String(e)}`);
  }
  return parseItem(raw);
}

/** Ed25519 with node:crypto (native) over arbundles' signature data: the same check, much faster. */
async function verifyEd25519(item: Item): Promise<boolean> {
  const message = await new DataItem(item.raw).getSignatureData();
  const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: item.owner }, format: 'jwk' });
  return edVerify(null, message, key, Buffer.from(item.signature, 'base64url'));
}

/**
 * The items whose exact bytes passed verification, as id → sha256 of the bytes, least recently
 * used out past `capacity`. A message is checked by the MU, the SU, the store's put and every get:
 * the same bytes give the same answer, so once is enough. Never keyed by the id alone: the id is
 * the hash of the signature only, so an item with the same signature and tampered data has the same
 * id and different bytes; it misses here and fails the full check.
 */
export class VerifiedItems {
  private readonly digests = new Map<string, string>();
  constructor(readonly capacity: number) {}
  get size(): number {
    return this.digests.size;
  }
  has(id: string, digest: string): boolean {
    if (this.digests.get(id) !== digest) return false;
    // Refreshed: a hot item (a process, a module) stays while a stream of one-off messages passes.
    this.digests.delete(id);
    this.digests.set(id, digest);
    return true;
  }
  add(id: string, digest: string): void {
    this.digests.delete(id);
    this.digests.set(id, digest);
    while (this.digests.size > this.capacity) this.digests.delete(this.digests.keys().next().value!);
  }
  clear(): void {
    this.digests.clear();
  }
}

/** 16,384 entries of two 43-character strings: about 3 MB at most. */
export const VERIFIED_ITEMS = 16_384;
/** The one cache verifyItem uses (exported for tests and for a caller that must drop it). */
export const verifiedItems = new VerifiedItems(VERIFIED_ITEMS);

const digestOf = (raw: Buffer): string => createHash('sha256').update(raw).digest('base64url');

/**
 * Parses and verifies a data item; throws ItemError with the reason when it is not a valid one.
 * Bytes verified before (the same id and the same sha256, see VerifiedItems) are not checked
 * again: a sha256 over the bytes costs a fraction of the signature's deep hash and key check.
 */
export async function verifyItem(raw: Uint8Array): Promise<Item> {
  const item = parseItem(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength));
  const digest = digestOf(item.raw);
  if (verifiedItems.has(item.id, digest)) return item;
  let valid = false;
  try {
    valid = item.signatureType === 1 ? await DataItem.verify(item.raw) : await verifyEd25519(item);
  } catch {
    valid = false;
  }
  if (!valid) throw new ItemError(`bad signature: the ${SIGNATURES[item.signatureType].name} signature does not match the item`);
  verifiedItems.add(item.id, digest);
  return item;
}

/**
 * Walks an Avro tag block without trusting it: arbundles' reader believes every count and length
 * (a huge count with a length of −1 makes it loop until memory runs out), so this runs first.
 * Avro arrays are blocks of a zigzag-varint count (negative: then the block's byte size), then that
 * many {name, value} pairs of length-prefixed bytes; a count of 0 ends the array.
 */
function avroProblem(block: Buffer): string | null {
  let at = 0;
  const varint = (): number => {
    let n = 0;
    for (let shift = 0; shift < 28; shift += 7) {
      if (at >= block.length) return NaN;
      const b = block[at++];
      n += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return n % 2 ? -(n + 1) / 2 : n / 2;
    }
    return NaN; // no count or length is anywhere near 28 bits
  };
  for (let tags = 0; ; ) {
    let count = varint();
    if (Number.isNaN(count)) return 'bad tags: the Avro tag block ends early or has an oversized count';
    if (count === 0) return at === block.length ? null : 'bad tags: bytes after the end of the Avro tag block';
    if (count < 0) {
      count = -count;
      if (Number.isNaN(varint())) return 'bad tags: the Avro tag block has a bad block size';
    }
    tags += count;
    if (tags > TAG_LIMITS.count) return `bad tags: the Avro tag block holds more than ${TAG_LIMITS.count} tags`;
    for (let i = 0; i < 2 * count; i++) {
      const length = varint();
      if (!(length >= 0) || at + length > block.length) return 'bad tags: a tag length in the Avro block is out of range';
      at += length;
    }
  }
}

/** The structure of a data item, checked against its length at every field (no signature check). */
export function parseItem(raw: Buffer): Item {
  const fail = (why: string): never => {
    throw new ItemError(why);
  };
  let at = 0;
  const need = (n: number, what: string): void => {
    if (at + n > raw.length) fail(`truncated: ${raw.length} bytes, ${what} needs ${at + n}`);
  };
  need(2, 'the signature type');
  const signatureType = raw.readUInt16LE(0);
  const config = SIGNATURES[signatureType] ?? fail(`unsupported signature type ${signatureType} (1 Arweave, 2 Ed25519, 4 Solana)`);
  at = 2;
  need(config.sig, 'the signature');
  const signature = raw.subarray(at, at + config.sig);
  at += config.sig;
  need(config.owner, 'the owner');
  const owner = raw.subarray(at, at + config.owner);
  at += config.owner;
  const optional = (what: string): Buffer | null => {
    need(1, `the ${what} flag`);
    const flag = raw[at++];
    if (flag > 1) fail(`bad ${what} flag ${flag}`);
    if (flag === 0) return null;
    need(32, `the ${what}`);
    at += 32;
    return raw.subarray(at - 32, at);
  };
  const target = optional('target');
  const anchor = optional('anchor');
  need(16, 'the tag counts');
  const count = Number(raw.readBigUInt64LE(at));
  const tagBytes = Number(raw.readBigUInt64LE(at + 8));
  at += 16;
  if (count > TAG_LIMITS.count) fail(`bad tags: ${count} tags, at most ${TAG_LIMITS.count}`);
  if (tagBytes > TAG_LIMITS.bytes) fail(`bad tags: ${tagBytes} bytes of tags, at most ${TAG_LIMITS.bytes}`);
  need(tagBytes, 'the tags');
  let tags: Tag[] = [];
  if (count > 0) {
    const avro = avroProblem(raw.subarray(at, at + tagBytes));
    if (avro) fail(avro);
    try {
      tags = deserializeTags(Buffer.from(raw.subarray(at, at + tagBytes)));
    } catch {
      fail('bad tags: not an Avro array of {name, value} records');
    }
    if (tags.length !== count) fail(`bad tags: the header says ${count} tags, there are ${tags.length}`);
    const problem = tagProblem(tags);
    if (problem) fail(`bad tags: ${problem}`);
  } else if (tagBytes !== 0) fail('bad tags: no tags but tag bytes');
  at += tagBytes;
  return {
    id: b64url(createHash('sha256').update(signature).digest()),
    signatureType,
    signature: b64url(signature),
    owner: b64url(owner),
    address: ownerAddress(owner),
    target: target ? b64url(target) : null,
    anchor: anchor ? anchor.toString('utf8') : null,
    tags,
    data: raw.subarray(at),
    raw,
  };
}

/** An item id (and an AO process id, an address): 32 bytes in base64url. */
export const ITEM_ID = /^[A-Za-z0-9_-]{43}$/;

export const tagValue = (item: Pick<Item, 'tags'>, name: string): string | undefined => item.tags.find((t) => t.name === name)?.value;
