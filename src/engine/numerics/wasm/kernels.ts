// AssemblyScript source of the canonical kernels, numerics spec version 1 (docs/numerics.md).
//
// One source, two builds: `kernels-simd.wasm` (ASC_FEATURE_SIMD) and `kernels-scalar.wasm`.
// Both builds perform the same IEEE-754 operations in the same order, so they return the same
// bits; the SIMD build only computes several independent lanes at once. Every f32 operation
// rounds to f32 (wasm has no implicit FMA or reassociation; binaryen's optimiser preserves IEEE
// semantics). All pointers are byte offsets into the memory the host imports.

// ---------------------------------------------------------------------------------------------
// Special functions (spec §3): a fixed f64 algorithm built from + − × ÷ only, rounded once to f32.

const INV_LN2: f64 = 1.4426950408889634;
const LN2_HI: f64 = 0.6931471806019545; // 0x1.62e42ffp-1: k·LN2_HI is exact for |k| < 2^20
const LN2_LO: f64 = -4.2009150726810846e-11; // ln 2 − LN2_HI
const TWO_OVER_PI: f64 = 0.6366197723675814;
const PIO2_1: f64 = 1.5707963267341256; // 0x1.921fb544p+0 (33 bits)
const PIO2_2: f64 = 6.077100506303966e-11; // 0x1.0b4611a6p-34 (33 bits)
const PIO2_3: f64 = 2.0222662487959506e-21; // π/2 − PIO2_1 − PIO2_2, rounded
const SQRT2: f64 = 1.4142135623730951;
const TRIG_LIMIT: f64 = 1048576.0; // 2^20: sin32/cos32 are defined on |x| ≤ 2^20

/** e^x for x in [-110, 100]; Taylor series to degree 13 on |r| ≤ ln2/2. */
export function exp64(x: f64): f64 {
  if (x != x) return x;
  if (x > 100.0) return Infinity;
  if (x < -110.0) return 0.0;
  const k = nearest<f64>(x * INV_LN2);
  const r = x - k * LN2_HI - k * LN2_LO;
  let p: f64 = 1.6059043836821613e-10; // 1/13!
  p = 2.08767569878681e-9 + r * p; // 1/12!
  p = 2.505210838544172e-8 + r * p;
  p = 2.755731922398589e-7 + r * p;
  p = 0.0000027557319223985893 + r * p;
  p = 0.0000248015873015873 + r * p;
  p = 0.0001984126984126984 + r * p;
  p = 0.001388888888888889 + r * p;
  p = 0.008333333333333333 + r * p;
  p = 0.041666666666666664 + r * p;
  p = 0.16666666666666666 + r * p;
  p = 0.5 + r * p;
  p = 1.0 + r * p;
  p = 1.0 + r * p;
  return p * reinterpret<f64>((<i64>k + 1023) << 52);
}

/** ln y for positive normal y: y = m·2^e with m in [√½, √2], ln m = 2·atanh((m−1)/(m+1)). */
export function log64(y: f64): f64 {
  const bits = reinterpret<i64>(y);
  let e = <i32>((bits >> 52) & 0x7ff) - 1023;
  let m = reinterpret<f64>((bits & 0x000fffffffffffff) | 0x3ff0000000000000);
  if (m > SQRT2) {
    m = m * 0.5;
    e = e + 1;
  }
  const s = (m - 1.0) / (m + 1.0);
  const z = s * s;
  let p: f64 = 0.047619047619047616; // 1/21
  p = 0.05263157894736842 + z * p;
  p = 0.058823529411764705 + z * p;
  p = 0.06666666666666667 + z * p;
  p = 0.07692307692307693 + z * p;
  p = 0.09090909090909091 + z * p;
  p = 0.1111111111111111 + z * p;
  p = 0.14285714285714285 + z * p;
  p = 0.2 + z * p;
  p = 0.3333333333333333 + z * p;
  const twoS = s + s;
  const lnM = twoS + twoS * (z * p);
  const fe = <f64>e;
  return fe * LN2_HI + (fe * LN2_LO + lnM);
}

function sinPoly(r: f64, z: f64): f64 {
  let p: f64 = 2.8114572543455206e-15; // 1/17!
  p = -7.647163731819816e-13 + z * p;
  p = 1.6059043836821613e-10 + z * p;
  p = -2.505210838544172e-8 + z * p;
  p = 0.0000027557319223985893 + z * p;
  p = -0.0001984126984126984 + z * p;
  p = 0.008333333333333333 + z * p;
  p = -0.16666666666666666 + z * p;
  return r + r * (z * p);
}

function cosPoly(z: f64): f64 {
  let p: f64 = -1.5619206968586225e-16; // −1/18!
  p = 4.779477332387385e-14 + z * p;
  p = -1.1470745597729725e-11 + z * p;
  p = 2.08767569878681e-9 + z * p;
  p = -2.755731922398589e-7 + z * p;
  p = 0.0000248015873015873 + z * p;
  p = -0.001388888888888889 + z * p;
  p = 0.041666666666666664 + z * p;
  p = -0.5 + z * p;
  return 1.0 + z * p;
}

// sin and cos of one f32 angle share a single range reduction; results land in these globals.
let sinOut: f32 = 0;
let cosOut: f32 = 0;

function sincos32(a: f32): void {
  const x = <f64>a;
  if (!(x >= -TRIG_LIMIT && x <= TRIG_LIMIT)) {
    sinOut = <f32>NaN;
    cosOut = <f32>NaN;
    return;
  }
  if (x == 0) {
    sinOut = a; // keeps the sign of zero
    cosOut = 1;
    return;
  }
  const k = nearest<f64>(x * TWO_OVER_PI);
  const r = x - k * PIO2_1 - k * PIO2_2 - k * PIO2_3;
  const z = r * r;
  const s = sinPoly(r, z);
  const c = cosPoly(z);
  const q = <i32>k & 3;
  if (q == 0) {
    sinOut = <f32>s;
    cosOut = <f32>c;
  } else if (q == 1) {
    sinOut = <f32>c;
    cosOut = <f32>-s;
  } else if (q == 2) {
    sinOut = <f32>-s;
    cosOut = <f32>-c;
  } else {
    sinOut = <f32>-c;
    cosOut = <f32>s;
  }
}

export function exp32(x: f32): f32 {
  return <f32>exp64(<f64>x);
}

export function sin32(x: f32): f32 {
  sincos32(x);
  return sinOut;
}

export function cos32(x: f32): f32 {
  sincos32(x);
  return cosOut;
}

/** b^e for positive normal b: exp(e · ln b) in f64, rounded once. */
export function pow32(b: f32, e: f32): f32 {
  return <f32>exp64(<f64>e * log64(<f64>b));
}

/** Elementwise maps over arrays, for the accuracy sweeps in the tests. */
export function mapExp32(out: usize, x: usize, n: i32): void {
  for (let i = 0; i < n; i++) store<f32>(out + (<usize>i << 2), exp32(load<f32>(x + (<usize>i << 2))));
}
export function mapSin32(out: usize, x: usize, n: i32): void {
  for (let i = 0; i < n; i++) store<f32>(out + (<usize>i << 2), sin32(load<f32>(x + (<usize>i << 2))));
}
export function mapCos32(out: usize, x: usize, n: i32): void {
  for (let i = 0; i < n; i++) store<f32>(out + (<usize>i << 2), cos32(load<f32>(x + (<usize>i << 2))));
}

// ---------------------------------------------------------------------------------------------
// Reductions (spec §2): element j goes into accumulator j mod 16 (all start at +0), then the 16
// accumulators are combined by the fixed tree t[i] = a[i] + a[i+8], u[i] = t[i] + t[i+4],
// v[i] = u[i] + u[i+2], result = v[0] + v[1]. In the SIMD build, lane l of vector s_k holds a[4k+l].

@inline function laneMask(count: i32): v128 {
  return i32x4.gt_s(i32x4.splat(count), i32x4(0, 1, 2, 3));
}

@inline function combine16(s0: v128, s1: v128, s2: v128, s3: v128): f32 {
  const u = f32x4.add(f32x4.add(s0, s2), f32x4.add(s1, s3));
  const v0 = f32x4.extract_lane(u, 0) + f32x4.extract_lane(u, 2);
  const v1 = f32x4.extract_lane(u, 1) + f32x4.extract_lane(u, 3);
  return v0 + v1;
}

/** Σ a[j]·b[j] in the canonical order. */
// Masked tail lanes contribute +0, which leaves an accumulator unchanged: an accumulator that
// starts at +0 can never become −0 under round-to-nearest, so padding equals skipping.
export function dot16(a: usize, b: usize, n: i32): f32 {
  return dot16Inline(a, b, n);
}

@inline function dot16Inline(a: usize, b: usize, n: i32): f32 {
  const n16 = n & ~15;
  if (ASC_FEATURE_SIMD) {
    let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0), s3 = f32x4.splat(0);
    for (let j = 0; j < n16; j += 16) {
      const pa = a + (<usize>j << 2), pb = b + (<usize>j << 2);
      s0 = f32x4.add(s0, f32x4.mul(v128.load(pa), v128.load(pb)));
      s1 = f32x4.add(s1, f32x4.mul(v128.load(pa, 16), v128.load(pb, 16)));
      s2 = f32x4.add(s2, f32x4.mul(v128.load(pa, 32), v128.load(pb, 32)));
      s3 = f32x4.add(s3, f32x4.mul(v128.load(pa, 48), v128.load(pb, 48)));
    }
    const rem = n - n16;
    if (rem > 0) {
      const pa = a + (<usize>n16 << 2), pb = b + (<usize>n16 << 2);
      const m0 = laneMask(rem), m1 = laneMask(rem - 4), m2 = laneMask(rem - 8), m3 = laneMask(rem - 12);
      s0 = f32x4.add(s0, f32x4.mul(v128.and(v128.load(pa), m0), v128.and(v128.load(pb), m0)));
      s1 = f32x4.add(s1, f32x4.mul(v128.and(v128.load(pa, 16), m1), v128.and(v128.load(pb, 16), m1)));
      s2 = f32x4.add(s2, f32x4.mul(v128.and(v128.load(pa, 32), m2), v128.and(v128.load(pb, 32), m2)));
      s3 = f32x4.add(s3, f32x4.mul(v128.and(v128.load(pa, 48), m3), v128.and(v128.load(pb, 48), m3)));
    }
    return combine16(s0, s1, s2, s3);
  } else {
    let a0: f32 = 0, a1: f32 = 0, a2: f32 = 0, a3: f32 = 0, a4: f32 = 0, a5: f32 = 0, a6: f32 = 0, a7: f32 = 0;
    let a8: f32 = 0, a9: f32 = 0, a10: f32 = 0, a11: f32 = 0, a12: f32 = 0, a13: f32 = 0, a14: f32 = 0, a15: f32 = 0;
    for (let j = 0; j < n; j += 16) {
      const pa = a + (<usize>j << 2), pb = b + (<usize>j << 2);
      const r = n - j; // elements left; every accumulator beyond it is skipped
      a0 += load<f32>(pa) * load<f32>(pb);
      if (r > 1) a1 += load<f32>(pa, 4) * load<f32>(pb, 4);
      if (r > 2) a2 += load<f32>(pa, 8) * load<f32>(pb, 8);
      if (r > 3) a3 += load<f32>(pa, 12) * load<f32>(pb, 12);
      if (r > 4) a4 += load<f32>(pa, 16) * load<f32>(pb, 16);
      if (r > 5) a5 += load<f32>(pa, 20) * load<f32>(pb, 20);
      if (r > 6) a6 += load<f32>(pa, 24) * load<f32>(pb, 24);
      if (r > 7) a7 += load<f32>(pa, 28) * load<f32>(pb, 28);
      if (r > 8) a8 += load<f32>(pa, 32) * load<f32>(pb, 32);
      if (r > 9) a9 += load<f32>(pa, 36) * load<f32>(pb, 36);
      if (r > 10) a10 += load<f32>(pa, 40) * load<f32>(pb, 40);
      if (r > 11) a11 += load<f32>(pa, 44) * load<f32>(pb, 44);
      if (r > 12) a12 += load<f32>(pa, 48) * load<f32>(pb, 48);
      if (r > 13) a13 += load<f32>(pa, 52) * load<f32>(pb, 52);
      if (r > 14) a14 += load<f32>(pa, 56) * load<f32>(pb, 56);
      if (r > 15) a15 += load<f32>(pa, 60) * load<f32>(pb, 60);
    }
    const u0 = (a0 + a8) + (a4 + a12), u1 = (a1 + a9) + (a5 + a13);
    const u2 = (a2 + a10) + (a6 + a14), u3 = (a3 + a11) + (a7 + a15);
    return (u0 + u2) + (u1 + u3);
  }
}

/** Σ a[j] in the canonical order (same layout as dot16). */
export function sum16(a: usize, n: i32): f32 {
  const n16 = n & ~15;
  if (ASC_FEATURE_SIMD) {
    let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0), s3 = f32x4.splat(0);
    for (let j = 0; j < n16; j += 16) {
      const pa = a + (<usize>j << 2);
      s0 = f32x4.add(s0, v128.load(pa));
      s1 = f32x4.add(s1, v128.load(pa, 16));
      s2 = f32x4.add(s2, v128.load(pa, 32));
      s3 = f32x4.add(s3, v128.load(pa, 48));
    }
    const rem = n - n16;
    if (rem > 0) {
      const pa = a + (<usize>n16 << 2);
      s0 = f32x4.add(s0, v128.and(v128.load(pa), laneMask(rem)));
      s1 = f32x4.add(s1, v128.and(v128.load(pa, 16), laneMask(rem - 4)));
      s2 = f32x4.add(s2, v128.and(v128.load(pa, 32), laneMask(rem - 8)));
      s3 = f32x4.add(s3, v128.and(v128.load(pa, 48), laneMask(rem - 12)));
    }
    return combine16(s0, s1, s2, s3);
  } else {
    let a0: f32 = 0, a1: f32 = 0, a2: f32 = 0, a3: f32 = 0, a4: f32 = 0, a5: f32 = 0, a6: f32 = 0, a7: f32 = 0;
    let a8: f32 = 0, a9: f32 = 0, a10: f32 = 0, a11: f32 = 0, a12: f32 = 0, a13: f32 = 0, a14: f32 = 0, a15: f32 = 0;
    for (let j = 0; j < n; j += 16) {
      const pa = a + (<usize>j << 2);
      const r = n - j;
      a0 += load<f32>(pa);
      if (r > 1) a1 += load<f32>(pa, 4);
      if (r > 2) a2 += load<f32>(pa, 8);
      if (r > 3) a3 += load<f32>(pa, 12);
      if (r > 4) a4 += load<f32>(pa, 16);
      if (r > 5) a5 += load<f32>(pa, 20);
      if (r > 6) a6 += load<f32>(pa, 24);
      if (r > 7) a7 += load<f32>(pa, 28);
      if (r > 8) a8 += load<f32>(pa, 32);
      if (r > 9) a9 += load<f32>(pa, 36);
      if (r > 10) a10 += load<f32>(pa, 40);
      if (r > 11) a11 += load<f32>(pa, 44);
      if (r > 12) a12 += load<f32>(pa, 48);
      if (r > 13) a13 += load<f32>(pa, 52);
      if (r > 14) a14 += load<f32>(pa, 56);
      if (r > 15) a15 += load<f32>(pa, 60);
    }
    const u0 = (a0 + a8) + (a4 + a12), u1 = (a1 + a9) + (a5 + a13);
    const u2 = (a2 + a10) + (a6 + a14), u3 = (a3 + a11) + (a7 + a15);
    return (u0 + u2) + (u1 + u3);
  }
}

// ---------------------------------------------------------------------------------------------
// Model operations (spec §4).

/** out[i] = dot16(W[i, :], x) for a row-major d×n matrix W. */
export function matvec(out: usize, w: usize, x: usize, n: i32, d: i32): void {
  const rowBytes = <usize>n << 2;
  for (let i = 0; i < d; i++) {
    store<f32>(out + (<usize>i << 2), dot16(w + <usize>i * rowBytes, x, n));
  }
}

/** out[j] = w[j] · (r · x[j]) with r = 1 / sqrt(dot16(x, x) / n + eps). */
export function rmsnorm(out: usize, x: usize, w: usize, n: i32, eps: f32): void {
  let ss = dot16(x, x, n);
  ss = ss / <f32>n;
  ss = ss + eps;
  const r: f32 = <f32>1.0 / sqrt<f32>(ss);
  let j = 0;
  if (ASC_FEATURE_SIMD) {
    const rv = f32x4.splat(r);
    for (; j + 4 <= n; j += 4) {
      const o = <usize>j << 2;
      v128.store(out + o, f32x4.mul(v128.load(w + o), f32x4.mul(rv, v128.load(x + o))));
    }
  }
  for (; j < n; j++) {
    const o = <usize>j << 2;
    store<f32>(out + o, load<f32>(w + o) * (r * load<f32>(x + o)));
  }
}

/** x[i] = x[i] + y[i] (the residual connection). */
export function add(x: usize, y: usize, n: i32): void {
  let j = 0;
  if (ASC_FEATURE_SIMD) {
    for (; j + 4 <= n; j += 4) {
      const o = <usize>j << 2;
      v128.store(x + o, f32x4.add(v128.load(x + o), v128.load(y + o)));
    }
  }
  for (; j < n; j++) {
    const o = <usize>j << 2;
    store<f32>(x + o, load<f32>(x + o) + load<f32>(y + o));
  }
}

/** In place: x[j] = exp32(x[j] − max) / sum16(...). Any NaN input makes every output NaN. */
export function softmax(x: usize, n: i32): void {
  let m = load<f32>(x);
  for (let j = 1; j < n; j++) {
    const v = load<f32>(x + (<usize>j << 2));
    if (v > m) m = v;
  }
  for (let j = 0; j < n; j++) {
    const o = <usize>j << 2;
    store<f32>(x + o, exp32(load<f32>(x + o) - m));
  }
  const s = sum16(x, n);
  for (let j = 0; j < n; j++) {
    const o = <usize>j << 2;
    store<f32>(x + o, load<f32>(x + o) / s);
  }
}

/** SwiGLU gate: h1[i] = (h1[i] · (1 / (1 + exp32(−h1[i])))) · h3[i]. */
/**
 * exp64 on two lanes: the same operations as exp64, lane by lane (the special cases are computed
 * on the polynomial path too and then selected, so each lane gets exp64's value).
 */
@inline function exp64x2(x: v128): v128 {
  const k = f64x2.nearest(f64x2.mul(x, f64x2.splat(INV_LN2)));
  const r = f64x2.sub(f64x2.sub(x, f64x2.mul(k, f64x2.splat(LN2_HI))), f64x2.mul(k, f64x2.splat(LN2_LO)));
  let p = f64x2.splat(1.6059043836821613e-10);
  p = f64x2.add(f64x2.splat(2.08767569878681e-9), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(2.505210838544172e-8), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(2.755731922398589e-7), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(0.0000027557319223985893), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(0.0000248015873015873), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(0.0001984126984126984), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(0.001388888888888889), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(0.008333333333333333), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(0.041666666666666664), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(0.16666666666666666), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(0.5), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(1.0), f64x2.mul(r, p));
  p = f64x2.add(f64x2.splat(1.0), f64x2.mul(r, p));
  // 2^k from k + 1023 in the exponent field (k is clamped only for lanes replaced below).
  const kc = f64x2.min(f64x2.max(k, f64x2.splat(-1100.0)), f64x2.splat(1100.0));
  const biased = i64x2.extend_low_i32x4_s(i32x4.trunc_sat_f64x2_s_zero(kc));
  const scale = i64x2.shl(i64x2.add(biased, i64x2.splat(1023)), 52);
  let result = f64x2.mul(p, scale);
  result = v128.bitselect(f64x2.splat(0.0), result, f64x2.lt(x, f64x2.splat(-110.0)));
  result = v128.bitselect(f64x2.splat(Infinity), result, f64x2.gt(x, f64x2.splat(100.0)));
  return v128.bitselect(x, result, f64x2.ne(x, x));
}

export function siluMul(h1: usize, h3: usize, n: i32): void {
  let j = 0;
  if (ASC_FEATURE_SIMD) {
    // Four lanes at a time: exp32(−v) = f32(exp64(f64(−v))) on two f64 pairs, then the f32 formula below.
    for (; j + 4 <= n; j += 4) {
      const o = <usize>j << 2;
      const v = v128.load(h1 + o);
      const minus = f32x4.neg(v);
      const lo = f32x4.demote_f64x2_zero(exp64x2(f64x2.promote_low_f32x4(minus)));
      const hi = f32x4.demote_f64x2_zero(exp64x2(f64x2.promote_low_f32x4(i32x4.shuffle(minus, minus, 2, 3, 0, 1))));
      const e = i32x4.shuffle(lo, hi, 0, 1, 4, 5);
      const one = f32x4.splat(1.0);
      const silu = f32x4.mul(v, f32x4.div(one, f32x4.add(one, e)));
      v128.store(h1 + o, f32x4.mul(silu, v128.load(h3 + o)));
    }
  }
  for (; j < n; j++) {
    const o = <usize>j << 2;
    const v = load<f32>(h1 + o);
    const silu = v * (<f32>1.0 / (<f32>1.0 + exp32(-v)));
    store<f32>(h1 + o, silu * load<f32>(h3 + o));
  }
}

/** freqs[i] = 1 / theta^((2i) / headSize) for i < headSize/2. */
export function ropeFrequencies(freqs: usize, headSize: i32, theta: f32): void {
  const half = headSize >> 1;
  for (let i = 0; i < half; i++) {
    const twoI: i32 = i << 1;
    const e = <f32>twoI / <f32>headSize;
    store<f32>(freqs + (<usize>i << 2), <f32>1.0 / pow32(theta, e));
  }
}

/** table[2i] = cos(pos · freqs[i]), table[2i+1] = sin(pos · freqs[i]). */
export function ropeTable(table: usize, freqs: usize, headSize: i32, pos: i32): void {
  const half = headSize >> 1;
  const p = <f32>pos;
  for (let i = 0; i < half; i++) {
    sincos32(p * load<f32>(freqs + (<usize>i << 2)));
    store<f32>(table + (<usize>i << 3), cosOut);
    store<f32>(table + (<usize>i << 3) + 4, sinOut);
  }
}

/** Rotates each adjacent pair (v0, v1) of every head of vec (length n) by the table's angle. */
export function rope(vec: usize, n: i32, table: usize, headSize: i32): void {
  for (let h = 0; h < n; h += headSize) {
    for (let i = 0; i < headSize; i += 2) {
      const pv = vec + (<usize>(h + i) << 2);
      const pt = table + (<usize>i << 2);
      const c = load<f32>(pt), s = load<f32>(pt, 4);
      const v0 = load<f32>(pv), v1 = load<f32>(pv, 4);
      store<f32>(pv, v0 * c - v1 * s);
      store<f32>(pv, v0 * s + v1 * c, 4);
    }
  }
}

/**
 * Multi-head attention for one query position `pos` with grouped K/V heads, for the heads
 * firstHead..endHead-1 (threads take disjoint ranges; a head's result never depends on the split).
 * keys/values hold positions 0..pos, each a row of nKvHeads·headSize floats; att is scratch of
 * pos+1 floats. For head h: score_t = dot16(q_h, k_t) / sqrt(headSize), softmax over t, then
 * out_h[i] = Σ_t att[t] · v_t[i] accumulated in increasing t from +0.
 */
export function attention(
  out: usize, q: usize, keys: usize, values: usize, att: usize,
  pos: i32, nHeads: i32, nKvHeads: i32, headSize: i32, firstHead: i32, endHead: i32,
): void {
  const kvDim = nKvHeads * headSize;
  const kvMul = nHeads / nKvHeads;
  const scale = sqrt<f32>(<f32>headSize);
  const rowBytes = <usize>kvDim << 2;
  for (let h = firstHead; h < endHead; h++) {
    const qh = q + (<usize>(h * headSize) << 2);
    const headOffset = <usize>((h / kvMul) * headSize) << 2;
    for (let t = 0; t <= pos; t++) {
      const score = dot16Inline(qh, keys + <usize>t * rowBytes + headOffset, headSize);
      store<f32>(att + (<usize>t << 2), score / scale);
    }
    softmax(att, pos + 1);
    const oh = out + (<usize>(h * headSize) << 2);
    memory.fill(oh, 0, <usize>headSize << 2);
    for (let t = 0; t <= pos; t++) {
      const a = load<f32>(att + (<usize>t << 2));
      const vt = values + <usize>t * rowBytes + headOffset;
      let i = 0;
      if (ASC_FEATURE_SIMD) {
        const av = f32x4.splat(a);
        for (; i + 4 <= headSize; i += 4) {
          const o = <usize>i << 2;
          v128.store(oh + o, f32x4.add(v128.load(oh + o), f32x4.mul(av, v128.load(vt + o))));
        }
      }
      for (; i < headSize; i++) {
        const o = <usize>i << 2;
        store<f32>(oh + o, load<f32>(oh + o) + a * load<f32>(vt + o));
      }
    }
  }
}

/** Replaces every NaN by the canonical quiet NaN 0x7fc00000 (NaN payloads differ across CPUs). */
export function canonicalizeNaN(x: usize, n: i32): void {
  for (let j = 0; j < n; j++) {
    const o = <usize>j << 2;
    const v = load<f32>(x + o);
    if (v != v) store<u32>(x + o, 0x7fc00000);
  }
}

// ---------------------------------------------------------------------------------------------
// Q8_0 (spec §4a): weights in GGUF blocks of 34 bytes (f16 scale, 32 int8), with their scales
// widened once to an f32 array; activations quantized per block of 32 to int8 and an f32 scale.
// Within a block the dot product is exact integer arithmetic; across blocks the terms
// (dw ⊗ dx) ⊗ f32(isum) are summed in the sum16 layout.

const Q8_BLOCK_BYTES: usize = 34;

/** round(v) with ties away from zero (C's roundf), exact for |v| < 2^23. */
@inline function roundHalfAway(v: f32): f32 {
  const t = trunc<f32>(v);
  const frac = v - t;
  if (frac >= <f32>0.5) return t + 1;
  if (frac <= <f32>-0.5) return t - 1;
  return t;
}

/** qs[j] = round(x[j] / d) clamped to ±127 (NaN → 0), d = max|x| / 127 per block of 32. */
// max|x| ignores NaN (a NaN never compares greater); it is exact, so its order is free.
export function quantizeQ8(qs: usize, scales: usize, x: usize, n: i32): void {
  const blocks = n >> 5;
  for (let b = 0; b < blocks; b++) {
    const xb = x + (<usize>b << 7);
    const qb = qs + (<usize>b << 5);
    if (ASC_FEATURE_SIMD) {
      let m = f32x4.splat(0);
      for (let j: usize = 0; j < 128; j += 16) m = f32x4.pmax(m, f32x4.abs(v128.load(xb + j)));
      const amax = max<f32>(max<f32>(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max<f32>(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
      const d = amax / <f32>127;
      const id: f32 = d != 0 ? <f32>1 / d : 0;
      const idv = f32x4.splat(id);
      const half = f32x4.splat(0.5);
      const lo = f32x4.splat(-127), hi = f32x4.splat(127);
      for (let j: usize = 0; j < 128; j += 64) {
        const q0 = roundClampSimd(f32x4.mul(v128.load(xb + j), idv), half, lo, hi);
        const q1 = roundClampSimd(f32x4.mul(v128.load(xb + j + 16), idv), half, lo, hi);
        const q2 = roundClampSimd(f32x4.mul(v128.load(xb + j + 32), idv), half, lo, hi);
        const q3 = roundClampSimd(f32x4.mul(v128.load(xb + j + 48), idv), half, lo, hi);
        const bytes = i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(q0, q1), i16x8.narrow_i32x4_s(q2, q3));
        v128.store(qb + (j >> 2), bytes);
      }
      store<f32>(scales + (<usize>b << 2), d);
    } else {
      let amax: f32 = 0;
      for (let j = 0; j < 32; j++) {
        const a = abs<f32>(load<f32>(xb + (<usize>j << 2)));
        if (a > amax) amax = a;
      }
      const d = amax / <f32>127;
      const id: f32 = d != 0 ? <f32>1 / d : 0;
      for (let j = 0; j < 32; j++) {
        const v = load<f32>(xb + (<usize>j << 2)) * id;
        const q: i32 = v != v ? 0 : <i32>roundHalfAway(min<f32>(max<f32>(v, -127), 127));
        store<i8>(qb + <usize>j, <i8>q);
      }
      store<f32>(scales + (<usize>b << 2), d);
    }
  }
}

/** Lanes of v clamped to ±127, rounded half away from zero, as i32 (NaN → 0). */
@inline function roundClampSimd(v: v128, half: v128, lo: v128, hi: v128): v128 {
  const c = f32x4.pmax(f32x4.pmin(v, hi), lo); // NaN stays NaN: pmin/pmax keep their first operand
  const t = f32x4.trunc(c);
  const frac = f32x4.sub(c, t);
  const up = v128.and(f32x4.ge(frac, half), f32x4.splat(1));
  const down = v128.and(f32x4.le(frac, f32x4.neg(half)), f32x4.splat(1));
  return i32x4.trunc_sat_f32x4_s(f32x4.sub(f32x4.add(t, up), down));
}

/** Σ_j w[j]·x[j] over one block of 32 int8 pairs, exactly. */
@inline function blockDotScalar(w: usize, x: usize): i32 {
  let s: i32 = 0;
  for (let j: usize = 0; j < 32; j++) s += <i32>load<i8>(w + j) * <i32>load<i8>(x + j);
  return s;
}

@inline function blockDotSimd(w: usize, x: usize): v128 {
  const w0 = v128.load(w), w1 = v128.load(w, 16);
  const x0 = v128.load(x), x1 = v128.load(x, 16);
  const a = i32x4.add(
    i32x4.extadd_pairwise_i16x8_s(i16x8.extmul_low_i8x16_s(w0, x0)),
    i32x4.extadd_pairwise_i16x8_s(i16x8.extmul_high_i8x16_s(w0, x0)),
  );
  const b = i32x4.add(
    i32x4.extadd_pairwise_i16x8_s(i16x8.extmul_low_i8x16_s(w1, x1)),
    i32x4.extadd_pairwise_i16x8_s(i16x8.extmul_high_i8x16_s(w1, x1)),
  );
  return i32x4.add(a, b); // four partial sums of one block
}

/** Lane i of the result = the total of vector vi (four block sums side by side). */
@inline function transposeSum4(v0: v128, v1: v128, v2: v128, v3: v128): v128 {
  const a = i32x4.add(i8x16.shuffle(v0, v1, 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23),
    i8x16.shuffle(v0, v1, 8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31));
  const b = i32x4.add(i8x16.shuffle(v2, v3, 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23),
    i8x16.shuffle(v2, v3, 8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31));
  // a = (v0a, v1a, v0b, v1b), b = (v2a, v3a, v2b, v3b) with a/b the two half-sums
  return i32x4.add(i8x16.shuffle(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
    i8x16.shuffle(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31));
}

/** One Q8_0 row: sum16 over blocks of (wd[b] ⊗ xd[b]) ⊗ f32(isum_b). */
function rowDotQ8(wq: usize, wd: usize, xq: usize, xd: usize, blocks: i32): f32 {
  if (ASC_FEATURE_SIMD) {
    let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0), s3 = f32x4.splat(0);
    for (let b = 0; b < blocks; b += 4) {
      const pw = wq + <usize>b * Q8_BLOCK_BYTES + 2, px = xq + (<usize>b << 5);
      const left = blocks - b;
      const i0 = blockDotSimd(pw, px);
      const i1 = left > 1 ? blockDotSimd(pw + Q8_BLOCK_BYTES, px + 32) : i32x4.splat(0);
      const i2 = left > 2 ? blockDotSimd(pw + 2 * Q8_BLOCK_BYTES, px + 64) : i32x4.splat(0);
      const i3 = left > 3 ? blockDotSimd(pw + 3 * Q8_BLOCK_BYTES, px + 96) : i32x4.splat(0);
      const sums = f32x4.convert_i32x4_s(transposeSum4(i0, i1, i2, i3));
      const scales = f32x4.mul(v128.load(wd + (<usize>b << 2)), v128.load(xd + (<usize>b << 2)));
      const term = v128.and(f32x4.mul(scales, sums), laneMask(left));
      const lane = (b >> 2) & 3;
      if (lane == 0) s0 = f32x4.add(s0, term);
      else if (lane == 1) s1 = f32x4.add(s1, term);
      else if (lane == 2) s2 = f32x4.add(s2, term);
      else s3 = f32x4.add(s3, term);
    }
    return combine16(s0, s1, s2, s3);
  } else {
    let a0: f32 = 0, a1: f32 = 0, a2: f32 = 0, a3: f32 = 0, a4: f32 = 0, a5: f32 = 0, a6: f32 = 0, a7: f32 = 0;
    let a8: f32 = 0, a9: f32 = 0, a10: f32 = 0, a11: f32 = 0, a12: f32 = 0, a13: f32 = 0, a14: f32 = 0, a15: f32 = 0;
    for (let b = 0; b < blocks; b++) {
      const isum = blockDotScalar(wq + <usize>b * Q8_BLOCK_BYTES + 2, xq + (<usize>b << 5));
      const term = (load<f32>(wd + (<usize>b << 2)) * load<f32>(xd + (<usize>b << 2))) * <f32>isum;
      switch (b & 15) {
        case 0: a0 += term; break;
        case 1: a1 += term; break;
        case 2: a2 += term; break;
        case 3: a3 += term; break;
        case 4: a4 += term; break;
        case 5: a5 += term; break;
        case 6: a6 += term; break;
        case 7: a7 += term; break;
        case 8: a8 += term; break;
        case 9: a9 += term; break;
        case 10: a10 += term; break;
        case 11: a11 += term; break;
        case 12: a12 += term; break;
        case 13: a13 += term; break;
        case 14: a14 += term; break;
        default: a15 += term;
      }
    }
    const u0 = (a0 + a8) + (a4 + a12), u1 = (a1 + a9) + (a5 + a13);
    const u2 = (a2 + a10) + (a6 + a14), u3 = (a3 + a11) + (a7 + a15);
    return (u0 + u2) + (u1 + u3);
  }
}

/** out[i] = rowDotQ8(W[i]) for a d×n Q8_0 matrix (n a multiple of 32). */
export function matvecQ8(out: usize, wq: usize, wd: usize, xq: usize, xd: usize, n: i32, d: i32): void {
  const blocks = n >> 5;
  const rowBytes = <usize>blocks * Q8_BLOCK_BYTES;
  const scaleBytes = <usize>blocks << 2;
  for (let i = 0; i < d; i++) {
    store<f32>(out + (<usize>i << 2), rowDotQ8(wq + <usize>i * rowBytes, wd + <usize>i * scaleBytes, xq, xd, blocks));
  }
}

/** out[j] = wd[b] ⊗ f32(q_j): one dequantised row (exact: an f16 scale times an int8). */
export function dequantizeRowQ8(out: usize, wq: usize, wd: usize, n: i32): void {
  for (let j = 0; j < n; j++) {
    const b = j >> 5;
    const q = load<i8>(wq + <usize>b * Q8_BLOCK_BYTES + 2 + <usize>(j & 31));
    store<f32>(out + (<usize>j << 2), load<f32>(wd + (<usize>b << 2)) * <f32>q);
  }
}

/** f16 bit patterns to f32 (exact), e.g. Q8_0 block scales or F16 tensors; out and src may overlap forward. */
export function f16ToF32(out: usize, src: usize, n: i32, srcStride: i32): void {
  for (let j = 0; j < n; j++) {
    const h = <u32>load<u16>(src + <usize>j * <usize>srcStride);
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    let bits: u32;
    if (exp == 0x1f) bits = sign | 0x7f800000 | (mant << 13);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13);
    else if (mant == 0) bits = sign;
    else {
      // subnormal f16: normalise
      let e: u32 = 113;
      let m = mant;
      while ((m & 0x400) == 0) {
        m <<= 1;
        e--;
      }
      bits = sign | (e << 23) | ((m & 0x3ff) << 13);
    }
    store<u32>(out + (<usize>j << 2), bits);
  }
}

// ---------------------------------------------------------------------------------------------
// Q4_0 and the k-quants (spec §4c). Weights stay in their GGUF blocks; the f16 scales are widened
// once at load into an f32 array beside them (Q4_0, Q6_K: d per block; Q4_K, Q5_K: d, dmin per
// super-block). Q4_0 takes Q8_0 activations; the k-quants take Q8_K activations: int8 values with
// one f32 scale per 256 and the exact sum of every 32 values (i32). Inside a (super-)block the dot
// product is exact integer arithmetic; the per-block f32 term is one fixed formula; the terms are
// summed in the sum16 layout over blocks. The type numbers are GGUF's.

const TYPE_Q4_0: i32 = 2;
const TYPE_Q4_K: i32 = 12;
const TYPE_Q5_K: i32 = 13;
const TYPE_Q6_K: i32 = 14;

/** Q8_K: per 256 values, d = max|x| / 127 and q = round(x / d) as Q8_0 does per 32; sums per 32. */
export function quantizeQ8K(qs: usize, scales: usize, sums: usize, x: usize, n: i32): void {
  const blocks = n >> 8;
  for (let b = 0; b < blocks; b++) {
    const xb = x + (<usize>b << 10);
    const qb = qs + (<usize>b << 8);
    let amax: f32 = 0;
    if (ASC_FEATURE_SIMD) {
      let m = f32x4.splat(0);
      for (let j: usize = 0; j < 1024; j += 16) m = f32x4.pmax(m, f32x4.abs(v128.load(xb + j)));
      amax = max<f32>(max<f32>(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max<f32>(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
    } else {
      for (let j = 0; j < 256; j++) {
        const a = abs<f32>(load<f32>(xb + (<usize>j << 2)));
        if (a > amax) amax = a;
      }
    }
    const d = amax / <f32>127;
    const id: f32 = d != 0 ? <f32>1 / d : 0;
    if (ASC_FEATURE_SIMD) {
      const idv = f32x4.splat(id);
      const half = f32x4.splat(0.5);
      const lo = f32x4.splat(-127), hi = f32x4.splat(127);
      for (let j: usize = 0; j < 1024; j += 64) {
        const q0 = roundClampSimd(f32x4.mul(v128.load(xb + j), idv), half, lo, hi);
        const q1 = roundClampSimd(f32x4.mul(v128.load(xb + j + 16), idv), half, lo, hi);
        const q2 = roundClampSimd(f32x4.mul(v128.load(xb + j + 32), idv), half, lo, hi);
        const q3 = roundClampSimd(f32x4.mul(v128.load(xb + j + 48), idv), half, lo, hi);
        v128.store(qb + (j >> 2), i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(q0, q1), i16x8.narrow_i32x4_s(q2, q3)));
      }
    } else {
      for (let j = 0; j < 256; j++) {
        const v = load<f32>(xb + (<usize>j << 2)) * id;
        const q: i32 = v != v ? 0 : <i32>roundHalfAway(min<f32>(max<f32>(v, -127), 127));
        store<i8>(qb + <usize>j, <i8>q);
      }
    }
    store<f32>(scales + (<usize>b << 2), d);
    for (let g = 0; g < 8; g++) {
      let sum: i32 = 0;
      for (let j = 0; j < 32; j++) sum += <i32>load<i8>(qb + <usize>(g * 32 + j));
      store<i32>(sums + (<usize>(b * 8 + g) << 2), sum);
    }
  }
}

@inline function hsum32x4(v: v128): i32 {
  return (i32x4.extract_lane(v, 0) + i32x4.extract_lane(v, 1)) + (i32x4.extract_lane(v, 2) + i32x4.extract_lane(v, 3));
}

/** Σ of 32 int8 products w·x as i16 lanes (each lane 4 products; callers keep |w·x| ≤ 8191/… in range). */
@inline function dot32i16(w0: v128, w1: v128, x0: v128, x1: v128): v128 {
  return i16x8.add(
    i16x8.add(i16x8.extmul_low_i8x16_s(w0, x0), i16x8.extmul_high_i8x16_s(w0, x0)),
    i16x8.add(i16x8.extmul_low_i8x16_s(w1, x1), i16x8.extmul_high_i8x16_s(w1, x1)),
  );
}

/** Q4_0 block: isum = Σ_j (q_j − 8)·qx_j over 32 (|isum| ≤ 32·8·127 < 2^15); term = (d ⊗ dx) ⊗ f32(isum). */
@inline function termQ4_0(w: usize, wd: usize, xq: usize, xd: usize): f32 {
  let isum: i32 = 0;
  if (ASC_FEATURE_SIMD) {
    const v = v128.load(w, 2);
    const eight = i8x16.splat(8), nib = i8x16.splat(15);
    const lo = i8x16.sub(v128.and(v, nib), eight);
    const hi = i8x16.sub(i8x16.shr_u(v, 4), eight);
    const x0 = v128.load(xq), x1 = v128.load(xq, 16);
    const p = i16x8.add(
      i16x8.add(i16x8.extmul_low_i8x16_s(lo, x0), i16x8.extmul_high_i8x16_s(lo, x0)),
      i16x8.add(i16x8.extmul_low_i8x16_s(hi, x1), i16x8.extmul_high_i8x16_s(hi, x1)),
    );
    isum = hsum32x4(i32x4.extadd_pairwise_i16x8_s(p));
  } else {
    for (let j: usize = 0; j < 16; j++) {
      const byte = <i32>load<u8>(w + 2 + j);
      isum += ((byte & 15) - 8) * <i32>load<i8>(xq + j) + ((byte >> 4) - 8) * <i32>load<i8>(xq + 16 + j);
    }
  }
  return (load<f32>(wd) * load<f32>(xd)) * <f32>isum;
}

/** Sub-block j's 6-bit scale (min = false) or min (true) from Q4_K/Q5_K's 12 packed bytes at s. */
@inline function scaleMinK4(s: usize, j: i32, min: bool): i32 {
  const o = <usize>j;
  if (j < 4) return <i32>load<u8>(s + o + (min ? 4 : 0)) & 63;
  const packed = <i32>load<u8>(s + o + 4);
  return min ? (packed >> 4) | ((<i32>load<u8>(s + o) >> 6) << 4) : (packed & 15) | ((<i32>load<u8>(s + o - 4) >> 6) << 4);
}

/**
 * Q4_K (five = false) or Q5_K super-block: isum = Σ_j sc_j·Σ_k q·qx and msum = Σ_j m_j·Σ_k qx over
 * the 8 sub-blocks of 32; term = (d ⊗ dx) ⊗ f32(isum) ⊖ (dmin ⊗ dx) ⊗ f32(msum).
 */
@inline function termQxK(w: usize, wd: usize, xq: usize, xd: usize, xs: usize, five: bool): f32 {
  const s = w + 4;
  const qs = w + (five ? 48 : 16);
  const qh = w + 16;
  let isum: i32 = 0, msum: i32 = 0;
  for (let j = 0; j < 8; j++) msum += scaleMinK4(s, j, true) * load<i32>(xs + (<usize>j << 2));
  if (ASC_FEATURE_SIMD) {
    let acc = i32x4.splat(0);
    const nib = i8x16.splat(15);
    const h0 = five ? v128.load(qh) : i32x4.splat(0), h1 = five ? v128.load(qh, 16) : i32x4.splat(0);
    const one = i8x16.splat(1);
    for (let g = 0; g < 4; g++) {
      const v0 = v128.load(qs + (<usize>g << 5)), v1 = v128.load(qs + (<usize>g << 5), 16);
      let lo0 = v128.and(v0, nib), lo1 = v128.and(v1, nib);
      let hi0 = i8x16.shr_u(v0, 4), hi1 = i8x16.shr_u(v1, 4);
      if (five) {
        const b = 2 * g;
        lo0 = v128.or(lo0, i8x16.shl(v128.and(i8x16.shr_u(h0, b), one), 4));
        lo1 = v128.or(lo1, i8x16.shl(v128.and(i8x16.shr_u(h1, b), one), 4));
        hi0 = v128.or(hi0, i8x16.shl(v128.and(i8x16.shr_u(h0, b + 1), one), 4));
        hi1 = v128.or(hi1, i8x16.shl(v128.and(i8x16.shr_u(h1, b + 1), one), 4));
      }
      const px = xq + (<usize>g << 6);
      const pLo = dot32i16(lo0, lo1, v128.load(px), v128.load(px, 16)); // lanes ≤ 4·31·127 < 2^15
      const pHi = dot32i16(hi0, hi1, v128.load(px, 32), v128.load(px, 48));
      acc = i32x4.add(acc, i32x4.dot_i16x8_s(pLo, i16x8.splat(<i16>scaleMinK4(s, 2 * g, false))));
      acc = i32x4.add(acc, i32x4.dot_i16x8_s(pHi, i16x8.splat(<i16>scaleMinK4(s, 2 * g + 1, false))));
    }
    isum = hsum32x4(acc);
  } else {
    for (let j = 0; j < 8; j++) {
      const g = <usize>(j >> 1);
      const shift = (j & 1) << 2;
      let sub: i32 = 0;
      for (let l: usize = 0; l < 32; l++) {
        let q = (<i32>load<u8>(qs + (g << 5) + l) >> shift) & 15;
        if (five) q |= ((<i32>load<u8>(qh + l) >> j) & 1) << 4;
        sub += q * <i32>load<i8>(xq + (<usize>j << 5) + l);
      }
      isum += scaleMinK4(s, j, false) * sub;
    }
  }
  const dx = load<f32>(xd);
  return (load<f32>(wd) * dx) * <f32>isum - (load<f32>(wd, 4) * dx) * <f32>msum;
}

/** Q6_K super-block: isum = Σ_j sc_j·Σ_k (q − 32)·qx over 16 sub-blocks of 16; term = (d ⊗ dx) ⊗ f32(isum). */
@inline function termQ6K(w: usize, wd: usize, xq: usize, xd: usize): f32 {
  let isum: i32 = 0;
  if (ASC_FEATURE_SIMD) {
    let acc = i32x4.splat(0);
    const nib = i8x16.splat(15), three = i8x16.splat(3), offset = i8x16.splat(32);
    for (let h = 0; h < 2; h++) {
      const ql = w + (<usize>h << 6), qh = w + 128 + (<usize>h << 5), px = xq + (<usize>h << 7);
      for (let k = 0; k < 2; k++) {
        const o = <usize>k << 4;
        const a = v128.load(ql + o), b = v128.load(ql + 32 + o), hb = v128.load(qh + o);
        for (let quarter = 0; quarter < 4; quarter++) {
          const lowBytes = quarter & 1 ? b : a;
          const low = quarter & 2 ? i8x16.shr_u(lowBytes, 4) : v128.and(lowBytes, nib);
          const high = i8x16.shl(v128.and(i8x16.shr_u(hb, 2 * quarter), three), 4);
          const q = i8x16.sub(v128.or(low, high), offset);
          const x = v128.load(px + (<usize>quarter << 5) + o);
          const p = i16x8.add(i16x8.extmul_low_i8x16_s(q, x), i16x8.extmul_high_i8x16_s(q, x)); // ≤ 2·32·127
          const sc = <i16>load<i8>(w + 192 + <usize>(8 * h + 2 * quarter + k));
          acc = i32x4.add(acc, i32x4.dot_i16x8_s(p, i16x8.splat(sc)));
        }
      }
    }
    isum = hsum32x4(acc);
  } else {
    for (let i = 0; i < 256; i++) {
      const h = i >> 7, l = i & 31, quarter = (i & 127) >> 5;
      const lowByte = <i32>load<u8>(w + <usize>(64 * h + l + (quarter & 1 ? 32 : 0)));
      const low = quarter & 2 ? lowByte >> 4 : lowByte & 15;
      const high = (<i32>load<u8>(w + <usize>(128 + 32 * h + l)) >> (2 * quarter)) & 3;
      const sc = <i32>load<i8>(w + 192 + <usize>(i >> 4));
      isum += sc * (((low | (high << 4)) - 32) * <i32>load<i8>(xq + <usize>i));
    }
  }
  return (load<f32>(wd) * load<f32>(xd)) * <f32>isum;
}

/** One row of a Q4_0 or k-quant matrix: sum16 over its blocks' terms (block b → accumulator b mod 16). */
function rowDotQuant(kind: i32, w: usize, wd: usize, xq: usize, xd: usize, xs: usize, blocks: i32): f32 {
  let a0: f32 = 0, a1: f32 = 0, a2: f32 = 0, a3: f32 = 0, a4: f32 = 0, a5: f32 = 0, a6: f32 = 0, a7: f32 = 0;
  let a8: f32 = 0, a9: f32 = 0, a10: f32 = 0, a11: f32 = 0, a12: f32 = 0, a13: f32 = 0, a14: f32 = 0, a15: f32 = 0;
  for (let b = 0; b < blocks; b++) {
    const ub = <usize>b;
    let term: f32;
    if (kind == TYPE_Q4_0) term = termQ4_0(w + ub * 18, wd + (ub << 2), xq + (ub << 5), xd + (ub << 2));
    else if (kind == TYPE_Q4_K) term = termQxK(w + ub * 144, wd + (ub << 3), xq + (ub << 8), xd + (ub << 2), xs + (ub << 5), false);
    else if (kind == TYPE_Q5_K) term = termQxK(w + ub * 176, wd + (ub << 3), xq + (ub << 8), xd + (ub << 2), xs + (ub << 5), true);
    else term = termQ6K(w + ub * 210, wd + (ub << 2), xq + (ub << 8), xd + (ub << 2));
    switch (b & 15) {
      case 0: a0 += term; break;
      case 1: a1 += term; break;
      case 2: a2 += term; break;
      case 3: a3 += term; break;
      case 4: a4 += term; break;
      case 5: a5 += term; break;
      case 6: a6 += term; break;
      case 7: a7 += term; break;
      case 8: a8 += term; break;
      case 9: a9 += term; break;
      case 10: a10 += term; break;
      case 11: a11 += term; break;
      case 12: a12 += term; break;
      case 13: a13 += term; break;
      case 14: a14 += term; break;
      default: a15 += term;
    }
  }
  const u0 = (a0 + a8) + (a4 + a12), u1 = (a1 + a9) + (a5 + a13);
  const u2 = (a2 + a10) + (a6 + a14), u3 = (a3 + a11) + (a7 + a15);
  return (u0 + u2) + (u1 + u3);
}

/**
 * out[i] = rowDotQuant(W[i]) for a d×n matrix of GGUF type `kind` (Q4_0: 2, Q4_K: 12, Q5_K: 13,
 * Q6_K: 14; n whole blocks). wd: the prepared scales; xq, xd, xs: the activations (Q8_0 for Q4_0,
 * Q8_K for the k-quants; xs unused by Q4_0 and Q6_K).
 */
export function matvecQuant(kind: i32, out: usize, w: usize, wd: usize, xq: usize, xd: usize, xs: usize, n: i32, d: i32): void {
  const q40 = kind == TYPE_Q4_0;
  const blocks = q40 ? n >> 5 : n >> 8;
  const blockBytes: usize = q40 ? 18 : kind == TYPE_Q4_K ? 144 : kind == TYPE_Q5_K ? 176 : 210;
  const scaleBytes: usize = kind == TYPE_Q4_K || kind == TYPE_Q5_K ? 8 : 4;
  const rowBytes = <usize>blocks * blockBytes;
  const rowScales = <usize>blocks * scaleBytes;
  for (let i = 0; i < d; i++) {
    store<f32>(out + (<usize>i << 2), rowDotQuant(kind, w + <usize>i * rowBytes, wd + <usize>i * rowScales, xq, xd, xs, blocks));
  }
}

// ---------------------------------------------------------------------------------------------
// Sampling loops (spec §7). The RNG and the sort stay with the host; these are the passes over
// the vocabulary, kept here so that they run compiled from the first token on.

/** x[i] = x[i] / d (the temperature). */
export function divideBy(x: usize, n: i32, d: f32): void {
  for (let i = 0; i < n; i++) {
    const o = <usize>i << 2;
    store<f32>(x + o, load<f32>(x + o) / d);
  }
}

/** The first index of the largest value (a NaN never compares greater). */
export function argmax(x: usize, n: i32): i32 {
  let best = 0;
  let top = load<f32>(x);
  for (let i = 1; i < n; i++) {
    const v = load<f32>(x + (<usize>i << 2));
    if (v > top) {
      top = v;
      best = i;
    }
  }
  return best;
}

/** The first i with coin < p[0] + … + p[i] (summed left to right in f32), else n − 1. */
export function sampleMult(p: usize, n: i32, coin: f32): i32 {
  let cdf: f32 = 0;
  for (let i = 0; i < n; i++) {
    cdf += load<f32>(p + (<usize>i << 2));
    if (coin < cdf) return i;
  }
  return n - 1;
}

const ID_SPACE: f64 = 1048576; // 2^20 ids

/**
 * Writes one f64 key per id with p[id] ≥ cutoff: the f32 bit pattern of p (monotonic for p ≥ 0)
 * times 2^20 plus (2^20 − 1 − id), exact in f64. Sorted ascending and read from the end, the keys
 * give decreasing probability with ties in increasing id order. Returns the number of keys.
 */
export function toppKeys(keys: usize, p: usize, n: i32, cutoff: f32): i32 {
  let count = 0;
  for (let i = 0; i < n; i++) {
    const v = load<f32>(p + (<usize>i << 2));
    if (v >= cutoff) {
      store<f64>(keys + (<usize>count << 3), <f64>reinterpret<u32>(v) * ID_SPACE + <f64>(1048575 - i));
      count++;
    }
  }
  return count;
}

@inline function idOf(key: f64): i32 {
  return 1048575 - <i32>(<i64>key & 0xfffff);
}

/** The nucleus pick over keys sorted ascending (run.c sample_topp after its sort). */
export function toppPick(keys: usize, count: i32, p: usize, topp: f32, coin: f32): i32 {
  let cumulative: f32 = 0;
  let last = count - 1;
  for (let j = 0; j < count; j++) {
    cumulative += load<f32>(p + (<usize>idOf(load<f64>(keys + (<usize>(count - 1 - j) << 3))) << 2));
    if (cumulative > topp) {
      last = j;
      break;
    }
  }
  const r = coin * cumulative;
  let cdf: f32 = 0;
  for (let j = 0; j <= last; j++) {
    const id = idOf(load<f64>(keys + (<usize>(count - 1 - j) << 3)));
    cdf += load<f32>(p + (<usize>id << 2));
    if (r < cdf) return id;
  }
  return idOf(load<f64>(keys + (<usize>(count - 1 - last) << 3)));
}

// ---------------------------------------------------------------------------------------------
// Matrix × matrix (spec §4, "Batches"): `batch` activation vectors, stored one after another, each
// multiplied by the same d×n matrix. Each output element is the same row dot product, in the same
// order, as the matrix-vector kernels above compute for that vector alone; only the loop order
// around the dot products changes: a tile of MATMUL_TILE rows is taken from memory once and dotted
// with every vector while it is in the cache. out[v·outStride + i] = W[i] · x_v.

const MATMUL_TILE = 16;

export function matmul(out: usize, w: usize, x: usize, n: i32, d: i32, batch: i32, outStride: i32): void {
  const rowBytes = <usize>n << 2;
  for (let first = 0; first < d; first += MATMUL_TILE) {
    const end = min(d, first + MATMUL_TILE);
    for (let v = 0; v < batch; v++) {
      const xv = x + <usize>v * rowBytes, ov = out + (<usize>v * <usize>outStride << 2);
      for (let i = first; i < end; i++) store<f32>(ov + (<usize>i << 2), dot16(w + <usize>i * rowBytes, xv, n));
    }
  }
}

/** Q8_0 weights, Q8_0 activations: vector v's values at xq + v·n, its scales at xd + 4·v·(n/32). */
export function matmulQ8(out: usize, wq: usize, wd: usize, xq: usize, xd: usize, n: i32, d: i32, batch: i32, outStride: i32): void {
  const blocks = n >> 5;
  const rowBytes = <usize>blocks * Q8_BLOCK_BYTES;
  const scaleBytes = <usize>blocks << 2;
  for (let first = 0; first < d; first += MATMUL_TILE) {
    const end = min(d, first + MATMUL_TILE);
    for (let v = 0; v < batch; v++) {
      const xqv = xq + <usize>v * <usize>n, xdv = xd + <usize>v * scaleBytes, ov = out + (<usize>v * <usize>outStride << 2);
      for (let i = first; i < end; i++) {
        store<f32>(ov + (<usize>i << 2), rowDotQ8(wq + <usize>i * rowBytes, wd + <usize>i * scaleBytes, xqv, xdv, blocks));
      }
    }
  }
}

/**
 * Q4_0 and k-quant weights (kinds as matvecQuant). Vector v's activations: values at xq + v·n,
 * scales at xd + 4·v·(n/block) (Q8_0 for Q4_0: block 32; Q8_K: block 256), sums at xs + 4·v·(n/32).
 */
export function matmulQuant(kind: i32, out: usize, w: usize, wd: usize, xq: usize, xd: usize, xs: usize, n: i32, d: i32, batch: i32, outStride: i32): void {
  const q40 = kind == TYPE_Q4_0;
  const blocks = q40 ? n >> 5 : n >> 8;
  const blockBytes: usize = q40 ? 18 : kind == TYPE_Q4_K ? 144 : kind == TYPE_Q5_K ? 176 : 210;
  const scaleBytes: usize = kind == TYPE_Q4_K || kind == TYPE_Q5_K ? 8 : 4;
  const rowBytes = <usize>blocks * blockBytes;
  const rowScales = <usize>blocks * scaleBytes;
  for (let first = 0; first < d; first += MATMUL_TILE) {
    const end = min(d, first + MATMUL_TILE);
    for (let v = 0; v < batch; v++) {
      const xqv = xq + <usize>v * <usize>n, xdv = xd + (<usize>v * <usize>blocks << 2), xsv = xs + (<usize>v * <usize>(n >> 5) << 2);
      const ov = out + (<usize>v * <usize>outStride << 2);
      for (let i = first; i < end; i++) {
        store<f32>(ov + (<usize>i << 2), rowDotQuant(kind, w + <usize>i * rowBytes, wd + <usize>i * rowScales, xqv, xdv, xsv, blocks));
      }
    }
  }
}
