// The Scheduler Unit's rules, apart from its storage (SQLite) and wiring (HTTP, the store): what
// the next slot of a process is — its nonce, timestamp, block height and link in the Hash-Chain —
// and the tags of the assignment that records it. Pure functions of their arguments: the clock is
// passed in, so the same head and time always give the same slot.
import type { Tag } from '../store/items.js';
import { nextHashChain } from './protocol.js';

// There are no Arweave blocks here, so the height is derived from the timestamp alone, the same
// way on every run: one block per 2 minutes (Arweave's target) counted from 2023-11-14
// (1,700,000,000,000 ms). Deterministic, monotonic with the timestamp, and 12 digits as AO pads it.
const HEIGHT_EPOCH_MS = 1_700_000_000_000;
const BLOCK_MS = 120_000;
export const blockHeightOf = (timestamp: number): string => String(Math.max(0, Math.floor((timestamp - HEIGHT_EPOCH_MS) / BLOCK_MS))).padStart(12, '0');

/** The last slot of a process, as far as the next one needs it. */
export interface SlotHead {
  nonce: number;
  timestamp: number;
  /** Its assignment's id. */
  assignment: string;
  hashChain: string;
}

export interface NextSlot {
  nonce: number;
  timestamp: number;
  blockHeight: string;
  hashChain: string;
}

/**
 * The slot after `head` (null: the process's own slot 0) at clock time `now` (ms). The nonce is the
 * next integer; the timestamp is strictly increasing, not merely monotonic — it is the page cursor
 * and AO's `from` is exclusive, so two slots sharing one could be skipped at a page boundary — and
 * the chain links the previous assignment (AO's rule, protocol.ts).
 */
export function nextSlot(processId: string, head: SlotHead | null, now: number): NextSlot {
  const clock = Math.floor(now);
  const nonce = head ? head.nonce + 1 : 0;
  const timestamp = head ? Math.max(clock, head.timestamp + 1) : clock;
  const hashChain = nextHashChain(processId, head ? { assignment: head.assignment, chain: head.hashChain } : null);
  return { nonce, timestamp, blockHeight: blockHeightOf(timestamp), hashChain };
}

/** The tags of the Assignment item for `slot` of `processId`, which schedules `messageId`. */
export function assignmentTags(processId: string, slot: NextSlot, messageId: string, exclude?: string): Tag[] {
  return [
    { name: 'Process', value: processId },
    { name: 'Epoch', value: '0' },
    { name: 'Nonce', value: String(slot.nonce) },
    { name: 'Hash-Chain', value: slot.hashChain },
    { name: 'Block-Height', value: slot.blockHeight },
    { name: 'Timestamp', value: String(slot.timestamp) },
    { name: 'Data-Protocol', value: 'ao' },
    { name: 'Type', value: 'Assignment' },
    { name: 'Variant', value: 'ao.TN.1' },
    { name: 'Message', value: messageId },
    ...(exclude ? [{ name: 'Exclude', value: exclude }] : []),
  ];
}
