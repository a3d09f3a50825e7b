// Weight sources for the referee. Storage will serve a published model's chunks by id; here a
// loaded model serves its own, with range proofs against its model id.
import { leafHash, merkleRoot, modelTreeLeaves, rangeProof, type Hash, type Model } from '../engine/index.js';
import { hex } from './trace.js';
import type { WeightSource } from './referee.js';

/** Serves a loaded model's chunks; hashes every leaf once, up front. */
export function modelWeightSource(model: Model): WeightSource {
  const leaves = modelTreeLeaves(model);
  const hashes: Hash[] = leaves.map((l) => leafHash(l));
  return {
    modelId: hex(merkleRoot(hashes)),
    leafCount: leaves.length,
    read: (from, to) => ({ leaves: leaves.slice(from, to), proof: rangeProof(hashes, from, to).map(hex) }),
  };
}

/** A source that serves `source`'s chunks with one byte changed in leaf `index` (for the tests). */
export function tamperedSource(source: WeightSource, index: number): WeightSource {
  return {
    ...source,
    read(from, to) {
      const out = source.read(from, to);
      const leaves = out.leaves.map((l, i) => {
        if (from + i !== index) return l;
        const copy = l.slice();
        copy[copy.length >> 1] ^= 0x01;
        return copy;
      });
      return { leaves, proof: out.proof };
    },
  };
}

