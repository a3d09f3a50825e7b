// "Verify in your browser": the stored trace item against the receipt, with the browser's own
// SHA-256 (WebCrypto). The definitions are src/proof/trace.ts's, byte for byte:
//   job commitment = H("verity-job/1", model id, tokenizer hash, u32 len(numerics), numerics,
//                      u32 n, u32 prompt tokens…, f32 temperature, f32 top-p, u64 seed, u32 steps)
//   acc[0] = H("verity-trace/1", commitment), acc[i] = H(acc[i-1], leaf[i]), trace root = acc[N]
// (little-endian integers; each leaf is the SHA-256 of its step's preimage, as the node stored it).

// The receipt as the coordinator writes it: one definition, the protocol's.
export type { Receipt } from '../../src/processes/protocol.js';
import type { Receipt } from '../../src/processes/protocol.js';

export interface Job {
  modelId: string;
  tokenizerHash: string;
  numerics: string;
  promptTokens: number[];
  temperature: number;
  topp: number;
  seed: string;
  steps: number;
}

export interface StoredTrace {
  job?: Job;
  commitment?: string;
  root?: string;
  leaves?: string[];
}

export interface BrowserVerdict {
  ok: boolean;
  /** "verified: root matches" or "mismatch: …". */
  summary: string;
  reasons: string[];
  leaves: number;
  root: string | null;
}

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

export function unhex(h: string): Uint8Array {
  if (!/^([0-9a-f]{2})*$/i.test(h)) throw new Error(`not hex: ${h.slice(0, 20)}`);
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export const hex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

function concat(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export async function sha256(...parts: Uint8Array[]): Promise<Uint8Array> {
  if (!globalThis.crypto?.subtle) throw new Error('this page has no WebCrypto (open it over https or from 127.0.0.1/localhost)');
  return new Uint8Array(await crypto.subtle.digest('SHA-256', concat(parts)));
}

function u32(...values: number[]): Uint8Array {
  const v = new DataView(new ArrayBuffer(4 * values.length));
  values.forEach((x, i) => v.setUint32(4 * i, x, true));
  return new Uint8Array(v.buffer);
}

function u64(x: bigint): Uint8Array {
  const v = new DataView(new ArrayBuffer(8));
  v.setBigUint64(0, x, true);
  return new Uint8Array(v.buffer);
}

function f32(x: number): Uint8Array {
  const v = new DataView(new ArrayBuffer(4));
  v.setFloat32(0, x, true);
  return new Uint8Array(v.buffer);
}

export async function jobCommitment(job: Job): Promise<string> {
  const numerics = text(job.numerics);
  return hex(
    await sha256(
      text('verity-job/1'), unhex(job.modelId), unhex(job.tokenizerHash), u32(numerics.length), numerics,
      u32(job.promptTokens.length, ...job.promptTokens), f32(job.temperature), f32(job.topp),
      u64(BigInt(job.seed)), u32(job.steps),
    ),
  );
}

/** acc[N] over the leaves, from acc[0] = H("verity-trace/1", commitment). */
export async function traceRoot(commitment: string, leaves: string[]): Promise<string> {
  let acc = await sha256(text('verity-trace/1'), unhex(commitment));
  for (const leaf of leaves) acc = await sha256(acc, unhex(leaf));
  return hex(acc);
}

/** Checks a stored trace document (the item's bytes as text) against a receipt. */
export async function verifyTrace(receipt: Receipt, itemText: string): Promise<BrowserVerdict> {
  const reasons: string[] = [];
  let stored: StoredTrace;
  try {
    stored = JSON.parse(itemText) as StoredTrace;
  } catch {
    stored = {};
  }
  const leaves = Array.isArray(stored.leaves) ? stored.leaves : null;
  let root: string | null = null;
  if (!leaves || !stored.job) reasons.push('the stored item is not a trace document (job, leaves)');
  else {
    root = await traceRoot(receipt.commitment, leaves);
    if (root !== receipt.traceRoot) reasons.push(`the leaves chain to ${root.slice(0, 16)}…, the receipt says ${receipt.traceRoot.slice(0, 16)}…`);
    const commitment = await jobCommitment(stored.job);
    if (commitment !== receipt.commitment) reasons.push('the stored job is not the job the receipt commits to');
  }
  if (stored.root !== receipt.traceRoot) reasons.push("the stored root is not the receipt's");
  if (stored.commitment !== receipt.commitment) reasons.push("the stored commitment is not the receipt's");
  const ok = reasons.length === 0;
  return { ok, summary: ok ? 'verified: root matches' : `mismatch: ${reasons[0]}`, reasons, leaves: leaves?.length ?? 0, root };
}
