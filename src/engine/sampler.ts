// The run.c sampler made canonical (docs/numerics.md §7): xorshift64* RNG, temperature, top-p
// (nucleus) and greedy decoding, every arithmetic step in f32 as C's float arithmetic. The passes
// over the vocabulary are kernels; the RNG and the sort of the nucleus candidates are here. A double
// operation on two f32 values followed by Math.fround equals the f32 operation for + − × ÷ (53 ≥
// 2·24 + 2 bits), so Math.fround is exact. Ties break to the lowest token id.
import type { Ptr } from './memory.js';
import type { Kernels } from './numerics/index.js';


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

/** Where sampling works: the logits (turned into probabilities in place) and room for one f64 key per id. */
export interface SamplerBuffers {
  logits: Ptr;
  keys: Ptr;
  vocab: number;
}

/** run.c sample_topp on the probabilities at buf.logits: candidates sorted by the host, passes in the kernels. */
export function pickTopp(k: Kernels, memory: WebAssembly.Memory, buf: SamplerBuffers, topp: number, coin: number): number {
  const cutoff = f32(f32(1 - topp) / (buf.vocab - 1));
  const count = k.toppKeys(buf.keys, buf.logits, buf.vocab, cutoff);
  // No id reaches the cutoff (top-p below 1/vocab on a flat distribution, or NaN probabilities):
  // run.c reads probindex[-1] there; the spec (numerics.md §7) takes the argmax, as greedy does.
  if (count === 0) return k.argmax(buf.logits, buf.vocab);
  new Float64Array(memory.buffer, buf.keys, count).sort();
  return k.toppPick(buf.keys, count, buf.logits, topp, coin);
}

/**
 * Picks the next token from the logits at buf.logits (run.c `sample`), overwriting them. Returns
 * the token and the RNG state after the draw; greedy decoding draws nothing.
 */
export function sampleToken(
  k: Kernels,
  memory: WebAssembly.Memory,
  buf: SamplerBuffers,
  params: SamplingParams,
  rngState: bigint,
): { token: number; rngState: bigint } {
  if (params.temperature === 0) return { token: k.argmax(buf.logits, buf.vocab), rngState };
  k.divideBy(buf.logits, buf.vocab, params.temperature);
  k.softmax(buf.logits, buf.vocab);
  const { state, value: coin } = randomF32(rngState);
  const token =
    params.topp <= 0 || params.topp >= 1 ? k.sampleMult(buf.logits, buf.vocab, coin) : pickTopp(k, memory, buf, params.topp, coin);
  return { token, rngState: state };
}
