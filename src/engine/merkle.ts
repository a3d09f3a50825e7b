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

/**
 * Proof that leaves[from..to) belong to the tree over all `leaves`: the roots of the maximal
 * subtrees outside the range, left to right (depth first). With the range's own leaf hashes it
 * recomputes the root (rootFromRange); a single leaf's proof is its audit path.
 */
export function rangeProof(leaves: Hash[], from: number, to: number): Hash[] {
  if (!(from >= 0 && from < to && to <= leaves.length)) throw new RangeError(`bad range ${from}..${to} of ${leaves.length}`);
  const proof: Hash[] = [];
  const walk = (lo: number, hi: number): void => {
    if (hi <= from || lo >= to) proof.push(merkleRoot(leaves.slice(lo, hi)));
    else if (lo < from || hi > to) {
      const k = splitPoint(hi - lo);
      walk(lo, lo + k);
      walk(lo + k, hi);
    }
  };
  walk(0, leaves.length);
  return proof;
}

/** The root of a tree of `size` leaves whose leaves from `from` on are `range`, given its rangeProof. */
export function rootFromRange(size: number, from: number, range: Hash[], proof: Hash[]): Hash {
  const to = from + range.length;
  if (!(from >= 0 && range.length > 0 && to <= size)) throw new RangeError(`bad range ${from}..${to} of ${size}`);
  let next = 0;
  const walk = (lo: number, hi: number): Hash => {
    if (hi <= from || lo >= to) {
      if (next >= proof.length) throw new RangeError('range proof too short');
      return proof[next++];
    }
    if (lo >= from && hi <= to) return merkleRoot(range.slice(lo - from, hi - from));
    const k = splitPoint(hi - lo);
    return nodeHash(walk(lo, lo + k), walk(lo + k, hi));
  };
  const root = walk(0, size);
  if (next !== proof.length) throw new RangeError('range proof too long');
  return root;
}
