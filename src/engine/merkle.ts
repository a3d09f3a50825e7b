// Merkle trees as in RFC 6962 (Certificate Transparency): domain-separated leaf and node hashes,
// and for n leaves the left subtree holds the largest power of two smaller than n.
import { createHash } from 'node:crypto';

export type Hash = Uint8Array;

export function leafHash(...parts: Uint8Array[]): Hash {
  const h = createHash('sha256').update(Uint8Array.of(0));
  for (const p of parts) h.update(p);
  return h.digest();
}

export function nodeHash(left: Hash, right: Hash): Hash {
  return createHash('sha256').update(Uint8Array.of(1)).update(left).update(right).digest();
}

/** The largest power of two smaller than n (n ≥ 2). */
function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** Root over leaf hashes; the empty tree's root is sha256(""). */
export function merkleRoot(leaves: Hash[]): Hash {
  if (leaves.length === 0) return createHash('sha256').digest();
  const root = (lo: number, hi: number): Hash => {
    if (hi - lo === 1) return leaves[lo];
    const k = splitPoint(hi - lo);
    return nodeHash(root(lo, lo + k), root(lo + k, hi));
  };
  return root(0, leaves.length);
}

export const toHex = (h: Hash): string => Buffer.from(h).toString('hex');
