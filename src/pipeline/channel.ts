// The direct channel between the stages of a pipelined lease (docs/pipeline.md "The channel").
// Every message a stage sends another — the residuals of a position, the sampled token going back
// to the first stage, layers handed over by the load balancer — is an ANS-104 data item signed by
// the sending node's wallet, bound to the lease (task, job commitment, lease end) and numbered per
// sender and receiver. A receiver takes a message only from the node the lease names for that
// stage, only for its own lease, only the next in order, and only within a size bound checked
// before any hashing: a stranger, a replay, a reorder or an oversized blob is refused with a reason.
import type { Signer } from '@dha-team/arbundles';
import { VerityError } from '../errors.js';
import { createItem, tagValue, verifyItem, type Tag } from '../store/items.js';

export const CHANNEL_PROTOCOL = 'verity-pipe/1';

/** What the channel binds every message to: one lease of one task, and who holds each stage. */
export interface PipelineLease {
  task: string;
  /** The job commitment (hex): a message of another job of the same task is not this lease's. */
  commitment: string;
  /** The lease's end (ms): a lease drawn again is another lease, whose messages these are not. */
  leaseEnd: number;
  /** The address of the node holding each stage, in pipeline order. */
  nodes: string[];
}

/** Residuals, a sampled token, layers handed over; on the network also the run's end and the stage records (net-stage.ts). */
export type ChannelKind = 'activations' | 'token' | 'handover' | 'done' | 'record';
const KINDS: readonly ChannelKind[] = ['activations', 'token', 'handover', 'done', 'record'];

export interface ChannelMessage {
  kind: ChannelKind;
  from: number;
  to: number;
  /** 0, 1, 2, … per (from, to) pair. */
  seq: number;
  /** The first position the message is about, and how many positions. */
  pos: number;
  count: number;
  payload: Uint8Array;
}

export class ChannelError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'ChannelError';
  }
}

/** Room an item needs beyond its payload: signature, owner (RSA's are 512 bytes each), tags. */
export const CHANNEL_ITEM_OVERHEAD = 2 * 512 + 4096 + 256;

const u = (n: number): string => String(n);

/** Signs one message of the lease as stage `msg.from`'s node. */
export async function sealMessage(lease: PipelineLease, signer: Signer, msg: ChannelMessage): Promise<Uint8Array> {
  const tags: Tag[] = [
    { name: 'Protocol', value: CHANNEL_PROTOCOL },
    { name: 'Task', value: lease.task },
    { name: 'Commitment', value: lease.commitment },
    { name: 'Lease-End', value: u(lease.leaseEnd) },
    { name: 'Kind', value: msg.kind },
    { name: 'From-Stage', value: u(msg.from) },
    { name: 'To-Stage', value: u(msg.to) },
    { name: 'Seq', value: u(msg.seq) },
    { name: 'Pos', value: u(msg.pos) },
    { name: 'Count', value: u(msg.count) },
  ];
  return (await createItem(msg.payload, signer, { tags })).raw;
}

/** A tag the channel writes once: given twice, a reader taking the first and one taking the last would disagree. */
function one(tags: Tag[], name: string): string {
  const values = tags.filter((t) => t.name === name);
  if (values.length !== 1) throw new ChannelError(`${name}: ${values.length === 0 ? 'missing' : 'given twice'}`);
  return values[0].value;
}

/** A whole number as the channel writes it (no sign, no leading zeros, at most 2^53 − 1). */
function count(tags: Tag[], name: string): number {
  const v = one(tags, name);
  if (!/^(0|[1-9][0-9]{0,15})$/.test(v) || !Number.isSafeInteger(Number(v))) throw new ChannelError(`${name}: not a whole number`);
  return Number(v);
}

/**
 * One stage's inbox: opens the messages sent to it, in order per sender. `maxPayload` bounds a
 * message's data (e.g. a prompt batch's residuals, or a handover's K/V rows); the raw item is
 * refused past maxPayload + the item's overhead before it is parsed or hashed.
 */
export class ChannelInbox {
  private readonly next = new Map<number, number>();
  constructor(
    private readonly lease: PipelineLease,
    readonly stage: number,
    private readonly maxPayload: number,
  ) {
    if (!Number.isInteger(stage) || stage < 0 || stage >= lease.nodes.length) throw new ChannelError(`stage ${stage} is not one of the lease's ${lease.nodes.length}`);
  }

  async open(raw: Uint8Array): Promise<ChannelMessage> {
    if (raw.byteLength > this.maxPayload + CHANNEL_ITEM_OVERHEAD) throw new ChannelError(`a message of ${raw.byteLength} bytes is over this channel's bound of ${this.maxPayload} bytes of data`);
    let item;
    try {
      item = await verifyItem(raw);
    } catch (e) {
      throw new ChannelError(`not a valid signed item: ${(e as Error).message}`);
    }
    const { tags } = item;
    if (tagValue(item, 'Protocol') !== CHANNEL_PROTOCOL) throw new ChannelError(`not a ${CHANNEL_PROTOCOL} message`);
    one(tags, 'Protocol');
    if (one(tags, 'Task') !== this.lease.task || one(tags, 'Commitment') !== this.lease.commitment || count(tags, 'Lease-End') !== this.lease.leaseEnd) {
      throw new ChannelError('a message of another lease');
    }
    const kind = one(tags, 'Kind') as ChannelKind;
    if (!KINDS.includes(kind)) throw new ChannelError(`unknown kind ${String(kind).slice(0, 40)}`);
    const from = count(tags, 'From-Stage');
    const to = count(tags, 'To-Stage');
    if (to !== this.stage) throw new ChannelError(`a message for stage ${to}, this is stage ${this.stage}`);
    if (from >= this.lease.nodes.length || from === to) throw new ChannelError(`no stage ${from} sends to this one`);
    // The signature says who sent it; the lease says who may.
    if (item.address !== this.lease.nodes[from]) throw new ChannelError(`signed by ${item.address}, but stage ${from} is ${this.lease.nodes[from]}'s`);
    const seq = count(tags, 'Seq');
    const expected = this.next.get(from) ?? 0;
    if (seq !== expected) throw new ChannelError(`message ${seq} from stage ${from}, expected ${expected} (a replay or a reorder)`);
    if (item.data.byteLength > this.maxPayload) throw new ChannelError(`${item.data.byteLength} bytes of data, over the bound of ${this.maxPayload}`);
    const pos = count(tags, 'Pos');
    const n = count(tags, 'Count');
    this.next.set(from, seq + 1);
    return { kind, from, to, seq, pos, count: n, payload: item.data };
  }
}

/** One stage's outbox: numbers and signs what it sends, per receiver. */
export class ChannelOutbox {
  private readonly next = new Map<number, number>();
  constructor(
    private readonly lease: PipelineLease,
    readonly stage: number,
    private readonly signer: Signer,
  ) {}

  seal(to: number, kind: ChannelKind, pos: number, count: number, payload: Uint8Array): Promise<Uint8Array> {
    const seq = this.next.get(to) ?? 0;
    this.next.set(to, seq + 1);
    return sealMessage(this.lease, this.signer, { kind, from: this.stage, to, seq, pos, count, payload });
  }
}

/** f32 values as the channel's payload bytes (little-endian, as the engine's memory holds them). */
export const f32Payload = (x: Float32Array): Uint8Array => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);

/** A payload back as f32 values (copied: the bytes may not be 4-aligned). */
export function payloadF32(payload: Uint8Array, expected: number): Float32Array {
  if (payload.byteLength !== 4 * expected) throw new ChannelError(`${payload.byteLength} bytes of residuals, expected ${4 * expected}`);
  const out = new Float32Array(expected);
  new Uint8Array(out.buffer).set(payload);
  return out;
}

/** A message's JSON header and binary body, as one payload: u32 header length, header, body. */
export function framePayload(header: unknown, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(4 + json.length + body.length);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 4);
  out.set(body, 4 + json.length);
  return out;
}

export function unframePayload<T>(payload: Uint8Array, maxHeader: number): { header: T; body: Uint8Array } {
  if (payload.byteLength < 4) throw new ChannelError('a message shorter than its header length');
  const n = new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(0, true);
  if (n > maxHeader || 4 + n > payload.byteLength) throw new ChannelError(`a message header of ${n} bytes, over its bound of ${maxHeader}`);
  let header: T;
  try {
    header = JSON.parse(new TextDecoder().decode(payload.subarray(4, 4 + n))) as T;
  } catch {
    throw new ChannelError('a message header that is not JSON');
  }
  return { header, body: payload.subarray(4 + n) };
}
