// The run.c sampler made canonical: xorshift64* RNG, temperature, top-p (nucleus) and greedy
// decoding, with every arithmetic step rounded to f32 as C's float arithmetic does. A double
// operation on two f32 values followed by Math.fround equals the f32 operation for + − × ÷ (53 ≥
// 2·24 + 2 bits), so Math.fround is exact here. Ties break to the lowest token id.

const f32 = Math.fround;
const MASK64 = (1n << 64n) - 1n;

export interface SamplingParams {
  /** 0 means greedy (argmax). Stored as f32, like run.c's `float temperature`. */
  temperature: number;
  /** Nucleus threshold; ≤ 0 or ≥ 1 means sampling from the whole distribution. */
  topp: number;
}

/** One xorshift64* draw: the new state and run.c's `random_u32` output. */
export function rngNext(state: bigint): { state: bigint; u32: number } {
  let s = state;
  s ^= s >> 12n;
  s ^= (s << 25n) & MASK64;
  s ^= s >> 27n;
  const u32 = Number(((s * 0x2545f4914f6cdd1dn) & MASK64) >> 32n);
  return { state: s, u32 };
}

/** run.c `random_f32`: a uniform f32 in [0, 1) and the new state. */
export function randomF32(state: bigint): { state: bigint; value: number } {
  const { state: next, u32 } = rngNext(state);
  return { state: next, value: (u32 >>> 8) / 16777216 };
}

export function sampleArgmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

export function sampleMult(probs: Float32Array, coin: number): number {
  let cdf = 0;
  for (let i = 0; i < probs.length; i++) {
    cdf = f32(cdf + probs[i]);
    if (coin < cdf) return i;
  }
  return probs.length - 1;
}

export function sampleTopp(probs: Float32Array, topp: number, coin: number): number {
  const n = probs.length;
  const cutoff = f32(f32(1 - topp) / (n - 1));
  const candidates: number[] = [];
  for (let i = 0; i < n; i++) if (probs[i] >= cutoff) candidates.push(i);
  // Array.prototype.sort is stable: equal probabilities stay in increasing id order.
  candidates.sort((a, b) => (probs[a] > probs[b] ? -1 : probs[a] < probs[b] ? 1 : 0));

  let cumulative = 0;
  let last = candidates.length - 1;
  for (let i = 0; i < candidates.length; i++) {
    cumulative = f32(cumulative + probs[candidates[i]]);
    if (cumulative > topp) {
      last = i;
      break;
    }
  }
  const r = f32(coin * cumulative);
  let cdf = 0;
  for (let i = 0; i <= last; i++) {
    cdf = f32(cdf + probs[candidates[i]]);
    if (r < cdf) return candidates[i];
  }
  return candidates[last];
}

/**
 * Picks the next token from `logits` (run.c `sample`). `softmaxInPlace` turns the logits into
 * probabilities with the canonical kernel. Returns the token and the RNG state after the draw;
 * greedy decoding draws nothing.
 */
export function sampleToken(
  logits: Float32Array,
  params: SamplingParams,
  rngState: bigint,
  softmaxInPlace: () => void,
): { token: number; rngState: bigint } {
  if (params.temperature === 0) return { token: sampleArgmax(logits), rngState };
  for (let i = 0; i < logits.length; i++) logits[i] = f32(logits[i] / params.temperature);
  softmaxInPlace();
  const { state, value: coin } = randomF32(rngState);
  const token =
    params.topp <= 0 || params.topp >= 1 ? sampleMult(logits, coin) : sampleTopp(logits, params.topp, coin);
  return { token, rngState: state };
}
