// The verification economics as arithmetic (docs/network.md "Verification"): when honesty is a
// node's best strategy, and what each way of cheating earns on average. Integer (BigInt) maths in
// parts per million, so the process, the simulator and the tests compute the same numbers.

export const PPM = 1_000_000n;

export interface Economics {
  /** R per generated token. */
  price: bigint;
  /** C per token: what a node saves by not running the model. */
  computeCost: bigint;
  /** p, ppm. */
  auditPpm: bigint;
  /** S, the stake locked per lease and slashed from a liar. */
  slash: bigint;
  marginPpm: bigint;
  /** T, the largest job (tokens): the rule is checked there, where a cheat saves the most. */
  maxTokens: bigint;
  minStake: bigint;
  challengeBond: bigint;
}

/**
 * Why the parameters let cheating pay, or null. A cheat saves C·T, keeps R·T unless audited, and
 * loses S when audited, so honesty is best when p·(R·T + S) ≥ (1 + margin)·C·T. The bound is
 * linear in T with a fixed S, so it is checked at the largest T. Locks need Min-Stake ≥ S (a node
 * with free stake < S takes no lease) and a challenger risks at least what it can take.
 */
export function economicViolation(e: Economics): string | null {
  const T = e.maxTokens;
  const lhs = e.auditPpm * (e.price * T + e.slash);
  const rhs = (PPM + e.marginPpm) * e.computeCost * T;
  if (lhs < rhs) {
    // The smallest S that satisfies the rule at this p: S ≥ (1+m)·C·T/p − R·T.
    const need = e.auditPpm === 0n ? null : ceilDiv(rhs, e.auditPpm) - e.price * T;
    return (
      `honesty must pay: p·(R·T + S) ≥ (1 + margin)·C·T at T = ${T} tokens, but p = ${e.auditPpm} ppm, R·T = ${e.price * T}, S = ${e.slash} ` +
      `give ${lhs} < ${rhs} (ppm-scaled) with margin ${e.marginPpm} ppm and C·T = ${e.computeCost * T}` +
      (need === null ? '; Audit-Ppm 0 never audits' : `; Slash must be at least ${need} at this Audit-Ppm`)
    );
  }
  if (e.minStake < e.slash) return `stake rule: Min-Stake (${e.minStake}) must cover one lease's lock, Slash (${e.slash})`;
  if (e.challengeBond < e.slash) return `stake rule: Challenge-Bond (${e.challengeBond}) must be at least Slash (${e.slash})`;
  return null;
}

const ceilDiv = (a: bigint, b: bigint): bigint => (a + b - 1n) / b;

/**
 * A cheat's expected profit per job of `tokens` tokens, in token units × 1e6 (ppm-scaled): it keeps
 * R·T with probability 1 − q and loses S with probability q, where q is the chance it is caught
 * (p for a lone cheat, 1 for a cheat every audit or dispute exposes), and it spends nothing on
 * compute. Honest work earns (R − C)·T.
 */
export function cheatProfitPpm(e: Pick<Economics, 'price' | 'slash'>, tokens: bigint, caughtPpm: bigint): bigint {
  return (PPM - caughtPpm) * e.price * tokens - caughtPpm * e.slash;
}
