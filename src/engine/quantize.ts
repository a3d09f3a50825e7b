// Q8_0 weight quantisation, as llama.cpp's reference quantize_row_q8_0 does it (so files we write
// look like llama.cpp's): per block of 32, d = max|x| / 127, q = round(x / d) with ties away from
// zero, and d stored as f16. Offline work: it defines a new model (and model id), not a step.
import { Q8_BLOCK, Q8_BLOCK_BYTES } from './model.js';

const f32 = Math.fround;

/** f32 → IEEE binary16 bits, round to nearest even (subnormals and overflow to ±inf included). */
export function f32ToF16(value: number): number {
  const bits = new Uint32Array(Float32Array.of(value).buffer)[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rest > mid || (rest === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++; // may carry into the exponent: correct
  return sign | half;
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

const roundHalfAway = (v: number): number => Math.sign(v) * Math.floor(Math.abs(v) + 0.5);

/** Rows of f32 values (a multiple of 32 per row) → GGUF Q8_0 blocks. */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  const blocks = values.length / Q8_BLOCK;
  const out = new Uint8Array(blocks * Q8_BLOCK_BYTES);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const x = values.subarray(b * Q8_BLOCK, (b + 1) * Q8_BLOCK);
    let amax = 0;
    for (const v of x) amax = Math.max(amax, Math.abs(v));
    const d = f32(amax / 127);
    const id = d ? f32(1 / d) : 0;
    const at = b * Q8_BLOCK_BYTES;
    view.setUint16(at, f32ToF16(d), true);
    for (let j = 0; j < Q8_BLOCK; j++) view.setInt8(at + 2 + j, roundHalfAway(f32(x[j] * id)));
  }
  return out;
}

/** GGUF Q8_0 blocks → f32 (exact: an f16 scale times an int8). */
export function dequantizeQ8_0(blocks: Uint8Array): Float32Array {
  const n = (blocks.length / Q8_BLOCK_BYTES) * Q8_BLOCK;
  const out = new Float32Array(n);
  const view = new DataView(blocks.buffer, blocks.byteOffset, blocks.byteLength);
  for (let b = 0; b < n / Q8_BLOCK; b++) {
    const d = f16ToF32(view.getUint16(b * Q8_BLOCK_BYTES, true));
    for (let j = 0; j < Q8_BLOCK; j++) out[b * Q8_BLOCK + j] = f32(d * view.getInt8(b * Q8_BLOCK_BYTES + 2 + j));
  }
  return out;
}
