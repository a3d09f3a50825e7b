// Weight quantisation, as llama.cpp's reference quantisers do it (so files we write look like
// llama.cpp's, with comparable error): Q8_0 (per block of 32, d = max|x| / 127, q = round(x / d)
// with ties away from zero, d stored as f16), Q4_0, and the k-quants Q4_K, Q5_K, Q6_K. Offline work:
// it defines a new model (and model id), not a step. The exact dequantisation of every type is here
// too (docs/numerics.md §4a, §4c): embedding rows, exports and the referee use it.
import { DTYPES, type DType } from './dtypes.js';

const Q8_BLOCK = DTYPES.q8_0.block;
const Q8_BLOCK_BYTES = DTYPES.q8_0.blockBytes;

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

// ---------------------------------------------------------------------------------------------
// Q4_0 and the k-quants. All arithmetic is f32 (every operation rounded with Math.fround), in the
// order of llama.cpp's reference code (ggml-quants.c), so the error matches llama.cpp's.

const QK_K = 256;
const GROUP_MAX_EPS = 1e-15;

/** llama.cpp's nearest_int: round half to even (the 1.5·2^23 trick), for |v| < 2^22. NaN → 0. */
function nearestInt(v: number): number {
  const r = f32(f32(v) + 12582912) - 12582912;
  return r === r ? r : 0;
}

const clamp = (v: number, lo: number, hi: number): number => Math.max(lo, Math.min(hi, v));

/** Rows of f32 values → GGUF Q4_0 blocks (d = max / −8 with the signed extreme, q = x / d + 8). */
export function quantizeQ4_0(values: Float32Array): Uint8Array {
  const { block, blockBytes } = DTYPES.q4_0;
  const blocks = values.length / block;
  const out = new Uint8Array(blocks * blockBytes);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const x = values.subarray(b * block, (b + 1) * block);
    let amax = 0;
    let max = 0;
    for (const v of x) {
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = f32(max / -8);
    const id = d ? f32(1 / d) : 0;
    const at = b * blockBytes;
    view.setUint16(at, f32ToF16(d), true);
    for (let j = 0; j < 16; j++) {
      const lo = Math.min(15, Math.trunc(f32(f32(x[j] * id) + 8.5)) | 0);
      const hi = Math.min(15, Math.trunc(f32(f32(x[16 + j] * id) + 8.5)) | 0);
      out[at + 2 + j] = (lo & 15) | ((hi & 15) << 4);
    }
  }
  return out;
}

/**
 * llama.cpp's make_qkx2_quants: an asymmetric fit x ≈ scale·L − min (L in 0..nmax) by weighted
 * least squares over a few trial scales. Fills L; returns the scale and the (non-negative) min.
 */
function fitScaleMin(
  x: Float32Array, weights: Float32Array, L: Uint8Array, nmax: number, rmin: number, rdelta: number, nstep: number,
): { scale: number; min: number } {
  const n = x.length;
  const aux = new Uint8Array(n);
  let min = x[0];
  let max = x[0];
  let sumW = weights[0];
  let sumX = f32(sumW * x[0]);
  for (let i = 1; i < n; i++) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sumW = f32(sumW + weights[i]);
    sumX = f32(sumX + f32(weights[i] * x[i]));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0);
    return { scale: 0, min: -min };
  }
  let iscale = f32(nmax / f32(max - min));
  let scale = f32(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    L[i] = clamp(nearestInt(f32(iscale * f32(x[i] - min))), 0, nmax);
    const diff = f32(f32(f32(scale * L[i]) + min) - x[i]);
    bestError = f32(bestError + f32(weights[i] * f32(diff * diff)));
  }
  for (let is = 0; is <= nstep; is++) {
    iscale = f32(f32(f32(rmin + f32(rdelta * is)) + nmax) / f32(max - min));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = clamp(nearestInt(f32(iscale * f32(x[i] - min))), 0, nmax);
      aux[i] = l;
      const wl = f32(weights[i] * l);
      sumL = f32(sumL + wl);
      sumL2 = f32(sumL2 + f32(wl * l));
      sumXL = f32(sumXL + f32(wl * x[i]));
    }
    const D = f32(f32(sumW * sumL2) - f32(sumL * sumL));
    if (D > 0) {
      let thisScale = f32(f32(f32(sumW * sumXL) - f32(sumX * sumL)) / D);
      let thisMin = f32(f32(f32(sumL2 * sumX) - f32(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = f32(sumXL / sumL2);
      }
      let error = 0;
      for (let i = 0; i < n; i++) {
        const diff = f32(f32(f32(thisScale * aux[i]) + thisMin) - x[i]);
        error = f32(error + f32(weights[i] * f32(diff * diff)));
      }
      if (error < bestError) {
        L.set(aux);
        bestError = error;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  return { scale, min: -min };
}

/** llama.cpp's make_qx_quants with rmse_type 1: a symmetric fit x ≈ scale·(L − nmax), weights x². */
function fitScale(x: Float32Array, L: Uint8Array, nmax: number): number {
  const n = x.length;
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L.fill(0);
    return 0;
  }
  const trial = (iscale: number, write: boolean): { sumLX: number; sumL2: number } => {
    let sumLX = 0;
    let sumL2 = 0;
    for (let i = 0; i < n; i++) {
      const l = clamp(nearestInt(f32(iscale * x[i])), -nmax, nmax - 1);
      if (write) L[i] = nmax + l;
      const w = f32(x[i] * x[i]);
      sumLX = f32(sumLX + f32(f32(w * x[i]) * l));
      sumL2 = f32(sumL2 + f32(f32(w * l) * l));
    }
    return { sumLX, sumL2 };
  };
  const first = trial(f32(-nmax / max), true);
  let scale = first.sumL2 ? f32(first.sumLX / first.sumL2) : 0;
  let best = f32(scale * first.sumLX);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    const iscale = f32(f32(-f32(nmax + f32(0.1 * is))) / max);
    const { sumLX, sumL2 } = trial(iscale, false);
    if (sumL2 > 0 && f32(sumLX * sumLX) > f32(best * sumL2)) {
      trial(iscale, true);
      scale = f32(sumLX / sumL2);
      best = f32(scale * sumLX);
    }
  }
  return scale;
}

/** Q4_K/Q5_K's scale and min of sub-block j (0..7) from the 12 packed bytes at `at`. */
export function scaleMinK4(bytes: Uint8Array, at: number, j: number): [number, number] {
  if (j < 4) return [bytes[at + j] & 63, bytes[at + j + 4] & 63];
  return [(bytes[at + j + 4] & 0xf) | ((bytes[at + j - 4] >> 6) << 4), (bytes[at + j + 4] >> 4) | ((bytes[at + j] >> 6) << 4)];
}

/** Q4_K (bits 4) or Q5_K (bits 5): 8 sub-blocks of 32 with 6-bit scales and mins per 256. */
function quantizeQxK(values: Float32Array, bits: 4 | 5): Uint8Array {
  const t = bits === 4 ? DTYPES.q4_k : DTYPES.q5_k;
  const nmax = (1 << bits) - 1;
  const blocks = values.length / QK_K;
  const out = new Uint8Array(blocks * t.blockBytes);
  const L = new Uint8Array(QK_K);
  const weights = new Float32Array(32);
  const scales = new Float32Array(8);
  const mins = new Float32Array(8);
  for (let b = 0; b < blocks; b++) {
    const x = values.subarray(b * QK_K, (b + 1) * QK_K);
    const at = b * t.blockBytes;
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 8; j++) {
      const xs = x.subarray(32 * j, 32 * j + 32);
      let sumX2 = 0;
      for (const v of xs) sumX2 = f32(sumX2 + f32(v * v));
      const avX = f32(Math.sqrt(f32(sumX2 / 32)));
      for (let l = 0; l < 32; l++) weights[l] = f32(avX + Math.abs(xs[l]));
      const fit = bits === 4
        ? fitScaleMin(xs, weights, L.subarray(32 * j, 32 * j + 32), nmax, -1, 0.1, 20)
        : fitScaleMin(xs, weights, L.subarray(32 * j, 32 * j + 32), nmax, -0.5, 0.1, 15);
      scales[j] = fit.scale;
      mins[j] = fit.min;
      if (fit.scale > maxScale) maxScale = fit.scale;
      if (fit.min > maxMin) maxMin = fit.min;
    }
    const invScale = maxScale > 0 ? f32(63 / maxScale) : 0;
    const invMin = maxMin > 0 ? f32(63 / maxMin) : 0;
    const sc = at + 4;
    for (let j = 0; j < 8; j++) {
      const ls = clamp(nearestInt(f32(invScale * scales[j])), 0, 63);
      const lm = clamp(nearestInt(f32(invMin * mins[j])), 0, 63);
      if (j < 4) {
        out[sc + j] = ls;
        out[sc + j + 4] = lm;
      } else {
        out[sc + j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
        out[sc + j - 4] |= (ls >> 4) << 6;
        out[sc + j] |= (lm >> 4) << 6;
      }
    }
    const dBits = f32ToF16(f32(maxScale / 63));
    const dminBits = f32ToF16(f32(maxMin / 63));
    out[at] = dBits & 0xff;
    out[at + 1] = dBits >> 8;
    out[at + 2] = dminBits & 0xff;
    out[at + 3] = dminBits >> 8;
    const d = f16ToF32(dBits);
    const dmin = f16ToF32(dminBits);
    for (let j = 0; j < 8; j++) {
      const [s, m] = scaleMinK4(out, sc, j);
      const dj = f32(d * s);
      if (!dj) continue;
      const dm = f32(dmin * m);
      for (let i = 0; i < 32; i++) L[32 * j + i] = clamp(nearestInt(f32(f32(x[32 * j + i] + dm) / dj)), 0, nmax);
    }
    // Nibbles: byte l of each 32-byte group holds element l (low) and l + 32 (high) of a 64-group.
    const qs = at + t.blockBytes - 128;
    const qh = at + 16;
    for (let g = 0; g < 4; g++) {
      for (let l = 0; l < 32; l++) {
        let lo = L[64 * g + l];
        let hi = L[64 * g + 32 + l];
        if (bits === 5) {
          if (lo > 15) {
            lo -= 16;
            out[qh + l] |= 1 << (2 * g);
          }
          if (hi > 15) {
            hi -= 16;
            out[qh + l] |= 2 << (2 * g);
          }
        }
        out[qs + 32 * g + l] = lo | (hi << 4);
      }
    }
  }
  return out;
}

export const quantizeQ4_K = (values: Float32Array): Uint8Array => quantizeQxK(values, 4);
export const quantizeQ5_K = (values: Float32Array): Uint8Array => quantizeQxK(values, 5);

/** Q6_K: 16 sub-blocks of 16 with int8 scales under one f16 d per 256; values 6-bit, offset 32. */
export function quantizeQ6_K(values: Float32Array): Uint8Array {
  const t = DTYPES.q6_k;
  const blocks = values.length / QK_K;
  const out = new Uint8Array(blocks * t.blockBytes);
  const L = new Uint8Array(QK_K);
  const scales = new Float32Array(16);
  for (let b = 0; b < blocks; b++) {
    const x = values.subarray(b * QK_K, (b + 1) * QK_K);
    const at = b * t.blockBytes;
    let maxScale = 0;
    let maxAbsScale = 0;
    for (let j = 0; j < 16; j++) {
      scales[j] = fitScale(x.subarray(16 * j, 16 * j + 16), L.subarray(16 * j, 16 * j + 16), 32);
      if (Math.abs(scales[j]) > maxAbsScale) {
        maxAbsScale = Math.abs(scales[j]);
        maxScale = scales[j];
      }
    }
    if (maxAbsScale < GROUP_MAX_EPS) continue; // an all-zero block
    const iscale = f32(-128 / maxScale);
    const dBits = f32ToF16(f32(1 / iscale));
    out[at + 208] = dBits & 0xff;
    out[at + 209] = dBits >> 8;
    const d = f16ToF32(dBits);
    for (let j = 0; j < 16; j++) {
      const s = Math.min(127, nearestInt(f32(iscale * scales[j])));
      out[at + 192 + j] = s & 0xff;
      const dj = f32(d * s);
      if (!dj) continue;
      for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearestInt(f32(x[16 * j + i] / dj)), -32, 31) + 32;
    }
    // Per half of 128: ql byte l (l < 64) holds element l in its low and element l + 64 in its high
    // nibble; qh byte l (l < 32) holds the top 2 bits of elements l, l + 32, l + 64, l + 96.
    for (let h = 0; h < 2; h++) {
      const y = 128 * h;
      const ql = at + 64 * h;
      const qh = at + 128 + 32 * h;
      for (let l = 0; l < 32; l++) {
        const q1 = L[y + l], q2 = L[y + l + 32], q3 = L[y + l + 64], q4 = L[y + l + 96];
        out[ql + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
        out[ql + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
        out[qh + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
      }
    }
  }
  return out;
}

/**
 * One weight of a quantised row, exactly as docs/numerics.md writes it (embedding rows, exports):
 *   Q8_0: d ⊗ f32(q)           Q4_0: d ⊗ f32(q − 8)
 *   Q4_K, Q5_K: (d ⊗ f32(sc)) ⊗ f32(q) ⊖ dmin ⊗ f32(m)       Q6_K: (d ⊗ f32(sc)) ⊗ f32(q − 32)
 */
export function dequantizeBlocks(dtype: DType, blocks: Uint8Array): Float32Array {
  if (dtype === 'f32') return new Float32Array(blocks.buffer.slice(blocks.byteOffset, blocks.byteOffset + blocks.byteLength));
  if (dtype === 'q8_0') return dequantizeQ8_0(blocks);
  const t = DTYPES[dtype];
  const count = blocks.length / t.blockBytes;
  const out = new Float32Array(count * t.block);
  const half = (at: number): number => f16ToF32(blocks[at] | (blocks[at + 1] << 8));
  for (let b = 0; b < count; b++) {
    const at = b * t.blockBytes;
    const y = out.subarray(b * t.block, (b + 1) * t.block);
    if (dtype === 'q4_0') {
      const d = half(at);
      for (let j = 0; j < 16; j++) {
        y[j] = f32(d * ((blocks[at + 2 + j] & 0xf) - 8));
        y[j + 16] = f32(d * ((blocks[at + 2 + j] >> 4) - 8));
      }
    } else if (dtype === 'q4_k' || dtype === 'q5_k') {
      const d = half(at);
      const dmin = half(at + 2);
      const qs = at + t.blockBytes - 128;
      for (let j = 0; j < 8; j++) {
        const [s, m] = scaleMinK4(blocks, at + 4, j);
        const ds = f32(d * s);
        const dm = f32(dmin * m);
        const g = j >> 1;
        for (let l = 0; l < 32; l++) {
          const byte = blocks[qs + 32 * g + l];
          let q = j & 1 ? byte >> 4 : byte & 0xf;
          if (dtype === 'q5_k' && (blocks[at + 16 + l] >> j) & 1) q += 16;
          y[32 * j + l] = f32(f32(ds * q) - dm);
        }
      }
    } else {
      const d = half(at + 208);
      for (let i = 0; i < 256; i++) {
        const h = i >> 7;
        const l = i & 31;
        const quarter = (i & 127) >> 5; // which of l, l+32, l+64, l+96
        const lowByte = blocks[at + 64 * h + l + (quarter & 1 ? 32 : 0)];
        const low = quarter & 2 ? lowByte >> 4 : lowByte & 0xf;
        const high = (blocks[at + 128 + 32 * h + l] >> (2 * quarter)) & 3;
        const s = (blocks[at + 192 + (i >> 4)] << 24) >> 24;
        y[i] = f32(f32(d * s) * ((low | (high << 4)) - 32));
      }
    }
  }
  return out;
}

/** Rows of f32 values (whole blocks per row) → the type's GGUF blocks. */
export function quantizeBlocks(dtype: Exclude<DType, 'f32'>, values: Float32Array): Uint8Array {
  switch (dtype) {
    case 'q8_0': return quantizeQ8_0(values);
    case 'q4_0': return quantizeQ4_0(values);
    case 'q4_k': return quantizeQ4_K(values);
    case 'q5_k': return quantizeQ5_K(values);
    case 'q6_k': return quantizeQ6_K(values);
  }
}

// ---------------------------------------------------------------------------------------------
// Which type each tensor gets: a plain type for every matrix, or llama.cpp's _M mixes.

/** What `verity quantize --type` accepts: a weight type for every matrix, F16, or a llama.cpp mix. */
export type QuantizeTarget = DType | 'f16' | 'q4_k_m' | 'q5_k_m';
export const QUANTIZE_TARGETS: readonly QuantizeTarget[] = ['q8_0', 'q4_0', 'q4_k', 'q5_k', 'q6_k', 'q4_k_m', 'q5_k_m', 'f16', 'f32'];

/** llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between. */
const useMoreBits = (layer: number, layers: number): boolean =>
  layer < Math.floor(layers / 8) || layer >= Math.floor((7 * layers) / 8) || (layer - Math.floor(layers / 8)) % 3 === 2;

/**
 * The type a matrix gets under `target` (llama.cpp's llama_tensor_get_type for the llama
 * architecture): Q4_K_M and Q5_K_M use Q6_K for the classifier (the token embedding when the two
 * are shared) and for attn_v and ffn_down in the layers useMoreBits picks, Q4_K / Q5_K elsewhere.
 */
export function mixTensorType(target: QuantizeTarget, name: string, layers: number, sharedClassifier: boolean): DType | 'f16' {
  if (target !== 'q4_k_m' && target !== 'q5_k_m') return target;
  const base: DType = target === 'q4_k_m' ? 'q4_k' : 'q5_k';
  if (name === 'output.weight' || (sharedClassifier && name === 'token_embd.weight')) return 'q6_k';
  const layer = /^blk\.(\d+)\.(attn_v|ffn_down)\.weight$/.exec(name);
  if (layer && useMoreBits(Number(layer[1]), layers)) return 'q6_k';
  return base;
}

/**
 * The type a matrix with rows of `cols` actually gets: `dtype` if its rows are whole blocks, else
 * Q8_0 for the k-quants when rows are whole blocks of 32 (llama.cpp would pick Q5_0/Q5_1, which
 * Verity does not run; Q6_K → Q8_0 is llama.cpp's own choice), else f32.
 */
export function fallbackType(dtype: DType, cols: number): DType {
  if (cols % DTYPES[dtype].block === 0) return dtype;
  if (DTYPES[dtype].block > DTYPES.q8_0.block && cols % DTYPES.q8_0.block === 0) return 'q8_0';
  return 'f32';
}
