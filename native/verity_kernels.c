// Native matrix-vector kernels: the same numerics spec as the WebAssembly kernels
// (docs/numerics.md), bit for bit, for CPUs with AVX-512. Built by node-gyp at install with
// -ffp-contract=off (no FMA), and dispatched at run time: a CPU without AVX-512 gets the portable
// C loops, which follow the same order. Arguments are a memory handle from `bind` and byte
// offsets into that shared WebAssembly memory (shared memories never move).
#define _DEFAULT_SOURCE  // mmap, fstat under -std=c11
#include <node_api.h>
#include <openssl/sha.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if !defined(_WIN32)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define MAX_MEMORIES 1024
// Memory handles: a bound WebAssembly memory (activations, and weights loaded into it) or a window
// of a file mapped read-only (weights, src/engine/load/mapped.ts). Kernels take byte offsets into
// a handle's base. The table is process-wide, so worker threads use the main thread's handles;
// threads that each hold their own memories (a pipeline's stages, one per worker: pipeline/ring.ts)
// bind at once, so the writers take `table_lock` (readers only need the released count).
static uint8_t *bases[MAX_MEMORIES];
static size_t limits[MAX_MEMORIES];  // bytes readable from the base (SIZE_MAX: a wasm memory, which grows in place)
static int memories = 0;
static atomic_flag table_lock = ATOMIC_FLAG_INIT;
static void lock_table(void) {
  while (atomic_flag_test_and_set_explicit(&table_lock, memory_order_acquire)) {
  }
}
static void unlock_table(void) { atomic_flag_clear_explicit(&table_lock, memory_order_release); }
static int use_avx512 = 0;      // avx512f: the f32 16-accumulator layout is one register
static int use_avx512vnni = 0;  // + avx512bw + avx512vnni: int8 dot products
static int use_avx2 = 0;        // Q4_0 and k-quant products (maddubs: u8 × i8 pairs)

#define Q8_BLOCK 32
#define Q8_BLOCK_BYTES 34

// ---------------------------------------------------------------------------------------------
// Portable reference loops (spec §2 and §4a, written plainly).

static float combine16(const float a[16]) {
  float t[8], u[4];
  for (int i = 0; i < 8; i++) t[i] = a[i] + a[i + 8];
  for (int i = 0; i < 4; i++) u[i] = t[i] + t[i + 4];
  float v0 = u[0] + u[2], v1 = u[1] + u[3];
  return v0 + v1;
}

static void matvec_portable(float *out, const float *w, const float *x, int n, int d) {
  for (int i = 0; i < d; i++) {
    const float *row = w + (size_t)i * n;
    float acc[16] = {0};
    for (int j = 0; j < n; j++) {
      float p = row[j] * x[j];
      acc[j & 15] = acc[j & 15] + p;
    }
    out[i] = combine16(acc);
  }
}

/** IEEE binary16 → binary32, exactly (subnormals normalised, NaN payloads kept), without F16C. */
static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0x1f) bits = sign | 0x7f800000u | (mant << 13);
  else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13);
  else if (mant == 0) bits = sign;
  else {
    uint32_t e = 113;
    while ((mant & 0x400) == 0) mant <<= 1, e--;
    bits = sign | (e << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

// The block's own f16 scale, widened (exact, so the bits equal the prepared `wd`'s): every native
// Q8_0 product reads its scales from the blocks, so mapped Q8_0 weights need no prepared copy.
static void matvec_q8_portable(float *out, const uint8_t *wq, const float *wd, const int8_t *xq, const float *xd, int n, int d) {
  (void)wd;
  int blocks = n / Q8_BLOCK;
  for (int i = 0; i < d; i++) {
    const uint8_t *row = wq + (size_t)i * blocks * Q8_BLOCK_BYTES;
    float acc[16] = {0};
    for (int b = 0; b < blocks; b++) {
      const uint8_t *block = row + (size_t)b * Q8_BLOCK_BYTES;
      const int8_t *qw = (const int8_t *)(block + 2);
      int32_t isum = 0;
      for (int j = 0; j < Q8_BLOCK; j++) isum += (int32_t)qw[j] * (int32_t)xq[b * Q8_BLOCK + j];
      float scale = f16_to_f32((uint16_t)(block[0] | (block[1] << 8))) * xd[b];
      float term = scale * (float)isum;
      acc[b & 15] = acc[b & 15] + term;
    }
    out[i] = combine16(acc);
  }
}


// ---------------------------------------------------------------------------------------------
// Q4_0 and the k-quants (spec §4c). `type` is the GGUF type number. Weights are GGUF blocks with
// their f16 scales widened at load into `wd` (Q4_0, Q6_K: d per block; Q4_K, Q5_K: d, dmin per
// super-block); Q4_0 takes Q8_0 activations (xq, xd per 32), the k-quants Q8_K activations (xq,
// xd per 256, xs: the i32 sum of every 32). Inside a block the sums are exact integers (bounds in
// the spec), the term is one f32 formula, and the terms are summed in the sum16 layout.

#define TYPE_Q4_0 2
#define TYPE_Q4_K 12
#define TYPE_Q5_K 13
#define TYPE_Q6_K 14

static int quant_block(int type) { return type == TYPE_Q4_0 ? 32 : 256; }
static int quant_block_bytes(int type) {
  return type == TYPE_Q4_0 ? 18 : type == TYPE_Q4_K ? 144 : type == TYPE_Q5_K ? 176 : type == TYPE_Q6_K ? 210 : 0;
}
static int quant_scales(int type) { return type == TYPE_Q4_K || type == TYPE_Q5_K ? 2 : 1; }

/** Sub-block j's 6-bit scale and min from Q4_K/Q5_K's 12 packed bytes. */
static inline void scale_min_k4(const uint8_t *s, int j, int *sc, int *m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

static float term_q4_0_portable(const uint8_t *w, const float *wd, const int8_t *xq, const float *xd) {
  int32_t isum = 0;
  for (int j = 0; j < 16; j++) isum += ((w[2 + j] & 15) - 8) * xq[j] + ((w[2 + j] >> 4) - 8) * xq[16 + j];
  return (wd[0] * xd[0]) * (float)isum;
}

static float term_qxk_portable(const uint8_t *w, const float *wd, const int8_t *xq, const float *xd, const int32_t *xs, int five) {
  const uint8_t *qs = w + (five ? 48 : 16), *qh = w + 16;
  int32_t isum = 0, msum = 0;
  for (int j = 0; j < 8; j++) {
    int sc, m;
    scale_min_k4(w + 4, j, &sc, &m);
    int32_t sub = 0;
    for (int l = 0; l < 32; l++) {
      int q = (qs[32 * (j >> 1) + l] >> (4 * (j & 1))) & 15;
      if (five) q |= ((qh[l] >> j) & 1) << 4;
      sub += q * xq[32 * j + l];
    }
    isum += sc * sub;
    msum += m * xs[j];
  }
  float dx = xd[0];
  return (wd[0] * dx) * (float)isum - (wd[1] * dx) * (float)msum;
}

static float term_q6k_portable(const uint8_t *w, const float *wd, const int8_t *xq, const float *xd) {
  int32_t isum = 0;
  for (int i = 0; i < 256; i++) {
    int h = i >> 7, l = i & 31, quarter = (i & 127) >> 5;
    int low_byte = w[64 * h + l + ((quarter & 1) ? 32 : 0)];
    int low = (quarter & 2) ? low_byte >> 4 : low_byte & 15;
    int high = (w[128 + 32 * h + l] >> (2 * quarter)) & 3;
    isum += (int8_t)w[192 + (i >> 4)] * (((low | (high << 4)) - 32) * xq[i]);
  }
  return (wd[0] * xd[0]) * (float)isum;
}

static float term_portable(int type, const uint8_t *w, const float *wd, const int8_t *xq, const float *xd, const int32_t *xs) {
  switch (type) {
    case TYPE_Q4_0: return term_q4_0_portable(w, wd, xq, xd);
    case TYPE_Q4_K: return term_qxk_portable(w, wd, xq, xd, xs, 0);
    case TYPE_Q5_K: return term_qxk_portable(w, wd, xq, xd, xs, 1);
    default: return term_q6k_portable(w, wd, xq, xd);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2 terms: _mm256_maddubs_epi16 multiplies unsigned weights (nibbles, 0..63) by signed int8
// activations into i16 pairs (at most 2·63·127, no saturation), _mm256_madd_epi16 applies the
// sub-block scales into i32 lanes; the integer sums are exact, so they equal the portable ones.

#if defined(__x86_64__)
#define AVX2_TARGET __attribute__((target("avx2")))

AVX2_TARGET static inline int32_t hsum_i32x8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

AVX2_TARGET static inline float term_q4_0_avx2(const uint8_t *w, const float *wd, const int8_t *xq, const float *xd) {
  const __m128i v = _mm_loadu_si128((const __m128i *)(w + 2));
  const __m128i nib = _mm_set1_epi8(15);
  const __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), nib), _mm_and_si128(v, nib));
  const __m256i x = _mm256_loadu_si256((const __m256i *)xq);
  const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, x), _mm256_maddubs_epi16(_mm256_set1_epi8(8), x)); // Σ (q − 8)·x
  const int32_t isum = hsum_i32x8(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
  return (wd[0] * xd[0]) * (float)isum;
}

AVX2_TARGET static inline float term_qxk_avx2(const uint8_t *w, const float *wd, const int8_t *xq, const float *xd, const int32_t *xs, int five) {
  const uint8_t *qs = w + (five ? 48 : 16);
  int sc[8], m[8];
  int32_t msum = 0;
  for (int j = 0; j < 8; j++) {
    scale_min_k4(w + 4, j, &sc[j], &m[j]);
    msum += m[j] * xs[j];
  }
  const __m256i nib = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
  const __m256i hbits = five ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
  __m256i acc = _mm256_setzero_si256();
  for (int g = 0; g < 4; g++) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
    __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
    if (five) {
      const __m128i b0 = _mm_cvtsi32_si128(2 * g), b1 = _mm_cvtsi32_si128(2 * g + 1);
      lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, b0), one), 4));
      hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, b1), one), 4));
    }
    const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(xq + 64 * g)));
    const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xq + 64 * g + 32)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(plo, _mm256_set1_epi16((short)sc[2 * g])));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(phi, _mm256_set1_epi16((short)sc[2 * g + 1])));
  }
  const int32_t isum = hsum_i32x8(acc);
  const float dx = xd[0];
  return (wd[0] * dx) * (float)isum - (wd[1] * dx) * (float)msum;
}

AVX2_TARGET static inline float term_q6k_avx2(const uint8_t *w, const float *wd, const int8_t *xq, const float *xd) {
  const __m256i nib = _mm256_set1_epi8(15), three = _mm256_set1_epi8(3), offset = _mm256_set1_epi8(32);
  const int8_t *sc = (const int8_t *)(w + 192);
  __m256i acc = _mm256_setzero_si256();
  for (int h = 0; h < 2; h++) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)(w + 64 * h));
    const __m256i b = _mm256_loadu_si256((const __m256i *)(w + 64 * h + 32));
    const __m256i hb = _mm256_loadu_si256((const __m256i *)(w + 128 + 32 * h));
    for (int quarter = 0; quarter < 4; quarter++) {
      const __m256i bytes = (quarter & 1) ? b : a;
      const __m256i low = (quarter & 2) ? _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nib) : _mm256_and_si256(bytes, nib);
      const __m256i high = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * quarter)), three);
      const __m256i q = _mm256_or_si256(low, _mm256_slli_epi16(high, 4)); // 0..63
      const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + 128 * h + 32 * quarter));
      const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, x), _mm256_maddubs_epi16(offset, x)); // Σ (q − 32)·x
      const int s = 8 * h + 2 * quarter;
      const __m256i scales = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1]), _mm_set1_epi16(sc[s]));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scales));
    }
  }
  return (wd[0] * xd[0]) * (float)hsum_i32x8(acc);
}

static int matvec_quant_vnni(int type, float *out, const uint8_t *w, const float *wd, const int8_t *xq, const float *xd, const int32_t *xs, int n, int d);

AVX2_TARGET static void matvec_quant_avx2(int type, float *out, const uint8_t *w, const float *wd, const int8_t *xq, const float *xd, const int32_t *xs, int n, int d) {
  // The k-quants take the AVX-512 kernel below where the CPU has it (Q4_0 stays here).
  if (use_avx512vnni && type != TYPE_Q4_0 && matvec_quant_vnni(type, out, w, wd, xq, xd, xs, n, d)) return;
  const int blocks = n / quant_block(type), bytes = quant_block_bytes(type), per = quant_scales(type);
  for (int i = 0; i < d; i++) {
    const uint8_t *row = w + (size_t)i * blocks * bytes;
    const float *scales = wd + (size_t)i * blocks * per;
    float acc[16] = {0};
    for (int b = 0; b < blocks; b++) {
      const uint8_t *wb = row + (size_t)b * bytes;
      const float *sb = scales + (size_t)b * per;
      float term;
      switch (type) {
        case TYPE_Q4_0: term = term_q4_0_avx2(wb, sb, xq + 32 * b, xd + b); break;
        case TYPE_Q4_K: term = term_qxk_avx2(wb, sb, xq + 256 * b, xd + b, xs + 8 * b, 0); break;
        case TYPE_Q5_K: term = term_qxk_avx2(wb, sb, xq + 256 * b, xd + b, xs + 8 * b, 1); break;
        default: term = term_q6k_avx2(wb, sb, xq + 256 * b, xd + b);
      }
      acc[b & 15] = acc[b & 15] + term;
    }
    out[i] = combine16(acc);
  }
}
#endif

static void matvec_quant_portable(int type, float *out, const uint8_t *w, const float *wd, const int8_t *xq, const float *xd, const int32_t *xs, int n, int d) {
  const int block = quant_block(type), blocks = n / block, bytes = quant_block_bytes(type), per = quant_scales(type);
  const int xs_per_block = block / 32;
  for (int i = 0; i < d; i++) {
    const uint8_t *row = w + (size_t)i * blocks * bytes;
    const float *scales = wd + (size_t)i * blocks * per;
    float acc[16] = {0};
    for (int b = 0; b < blocks; b++) {
      float term = term_portable(type, row + (size_t)b * bytes, scales + (size_t)b * per, xq + (size_t)block * b, xd + b, xs + xs_per_block * b);
      acc[b & 15] = acc[b & 15] + term;
    }
    out[i] = combine16(acc);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512: lane l of a 512-bit accumulator is the spec's accumulator l.

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static inline float reduce16(__m512 a) {
  __m256 lo = _mm512_castps512_ps256(a);
  __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  __m256 t = _mm256_add_ps(lo, hi);                                            // t[i] = a[i] + a[i+8]
  __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)); // u[i] = t[i] + t[i+4]
  __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));                                // v[i] = u[i] + u[i+2]
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));                // v[0] + v[1]
}

__attribute__((target("avx512f"))) static void matvec_avx512(float *out, const float *w, const float *x, int n, int d) {
  const int n16 = n & ~15;
  const __mmask16 tail = (__mmask16)((1u << (n - n16)) - 1);
  int i = 0;
  for (; i + 4 <= d; i += 4) {
    const float *r0 = w + (size_t)i * n, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int j = 0; j < n16; j += 16) {
      __m512 xv = _mm512_loadu_ps(x + j);
      a0 = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_loadu_ps(r0 + j), xv));
      a1 = _mm512_add_ps(a1, _mm512_mul_ps(_mm512_loadu_ps(r1 + j), xv));
      a2 = _mm512_add_ps(a2, _mm512_mul_ps(_mm512_loadu_ps(r2 + j), xv));
      a3 = _mm512_add_ps(a3, _mm512_mul_ps(_mm512_loadu_ps(r3 + j), xv));
    }
    if (tail) {
      __m512 xv = _mm512_maskz_loadu_ps(tail, x + n16);
      a0 = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, r0 + n16), xv));
      a1 = _mm512_add_ps(a1, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, r1 + n16), xv));
      a2 = _mm512_add_ps(a2, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, r2 + n16), xv));
      a3 = _mm512_add_ps(a3, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, r3 + n16), xv));
    }
    out[i] = reduce16(a0);
    out[i + 1] = reduce16(a1);
    out[i + 2] = reduce16(a2);
    out[i + 3] = reduce16(a3);
  }
  for (; i < d; i++) {
    const float *r0 = w + (size_t)i * n;
    __m512 a0 = _mm512_setzero_ps();
    for (int j = 0; j < n16; j += 16) a0 = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_loadu_ps(r0 + j), _mm512_loadu_ps(x + j)));
    if (tail) a0 = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, r0 + n16), _mm512_maskz_loadu_ps(tail, x + n16)));
    out[i] = reduce16(a0);
  }
}

// Q8_0 with VNNI. vpdpbusd multiplies unsigned by signed bytes, so the weights are offset to
// w + 128 (a xor with 0x80) and 128·Σx is subtracted per block: the integer sums stay exact.
// Each 512-bit load covers two blocks; sixteen blocks are reduced to one vector of sums, so that
// block b lands in lane b mod 16 — the spec's accumulator layout.

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

VNNI_TARGET static inline __m512i load_two_blocks(const uint8_t *w) {
  // Two 34-byte blocks: their 32 quant bytes each, side by side.
  __m256i b0 = _mm256_loadu_si256((const __m256i *)(w + 2));
  __m256i b1 = _mm256_loadu_si256((const __m256i *)(w + Q8_BLOCK_BYTES + 2));
  return _mm512_inserti64x4(_mm512_castsi256_si512(b0), b1, 1);
}

/** Lane b of the result = the sum of the 8 lanes of block b (blocks 2k, 2k+1 in r[k]). */
VNNI_TARGET static inline __m512i sum16blocks(const __m512i r[8]) {
  __m512i s[4], v[2];
  for (int k = 0; k < 4; k++) {
    s[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]), _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]));
  }
  for (int k = 0; k < 2; k++) {
    v[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(s[2 * k], s[2 * k + 1]), _mm512_unpackhi_epi64(s[2 * k], s[2 * k + 1]));
  }
  // v[0] chunk c lane k = sum of chunk c of r[k] (k < 4); v[1] likewise for r[4..7].
  // Block 2k+h = chunks 2h and 2h+1 of r[k].
  const __m512i ia = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 16, 24, 17, 25, 18, 26, 19, 27);
  const __m512i ib = _mm512_setr_epi32(4, 12, 5, 13, 6, 14, 7, 15, 20, 28, 21, 29, 22, 30, 23, 31);
  return _mm512_add_epi32(_mm512_permutex2var_epi32(v[0], ia, v[1]), _mm512_permutex2var_epi32(v[0], ib, v[1]));
}

/**
 * How far ahead of the rows being read the k-quant kernel prefetches, in rows of the same matrix:
 * its loop does more work per byte than Q8_0's, and without the hint it reaches about 60% of the
 * memory bandwidth on matrices that do not fit in the cache (Q8_0's hardware prefetch keeps up).
 */
#define PREFETCH_ROWS 8

VNNI_TARGET static inline void prefetch_span(const uint8_t *p, int bytes) {
  for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)(p + o), _MM_HINT_T0);
}

/**
 * How far ahead of the bytes being read the Q8_0 loop prefetches, into L1 and L2. Its work per
 * byte keeps the hardware prefetcher from running far enough ahead on matrices streamed from
 * DRAM: one core reached about 8.8 GB/s without the hints and 10.8 GB/s with them, against 11.7
 * for a plain read loop (a 156 MiB matrix, Xeon with AVX-512).
 */
#define Q8_PREFETCH_L1 2048
#define Q8_PREFETCH_L2 4096

/** Most activation vectors one pass of the batched Q8_0 loop serves with each weight load. */
#define Q8_MULTI 8

/** Q8_0 activations as the VNNI loop reads them: padded to whole groups of 16 blocks, with 128·Σx per block. */
typedef struct {
  int32_t *xsum;
  int8_t *xpad;
  float *xdpad;
} q8_x;

static int q8_prepare(q8_x *p, const int8_t *xq, const float *xd, int n) {
  const int blocks = n / Q8_BLOCK, groups = (blocks + 15) / 16;
  p->xsum = calloc((size_t)groups * 16, sizeof(int32_t));
  p->xpad = calloc((size_t)groups * 16 * Q8_BLOCK, 1);
  p->xdpad = calloc((size_t)groups * 16, sizeof(float));
  if (!p->xsum || !p->xpad || !p->xdpad) return 0;
  memcpy(p->xpad, xq, (size_t)blocks * Q8_BLOCK);
  memcpy(p->xdpad, xd, (size_t)blocks * sizeof(float));
  for (int b = 0; b < blocks; b++) {
    int32_t s = 0;
    for (int j = 0; j < Q8_BLOCK; j++) s += xq[b * Q8_BLOCK + j];
    p->xsum[b] = 128 * s;
  }
  return 1;
}

static void q8_free(q8_x *p) {
  free(p->xsum);
  free(p->xpad);
  free(p->xdpad);
}

/** Rows 0..d−1 of W·x for one prepared activation vector. */
VNNI_TARGET static void q8_rows_vnni(float *out, const uint8_t *wq, const q8_x *x, int n, int d) {
  // The f16 scales are read from the blocks themselves: widening f16 → f32 is exact, so the bits
  // equal the prepared ones, and the product reads 34 bytes per block, not 38.
  const int blocks = n / Q8_BLOCK;
  const int groups = (blocks + 15) / 16;
  const size_t row_bytes = (size_t)blocks * Q8_BLOCK_BYTES;
  const uint8_t *end = wq + (size_t)d * row_bytes;
  const int32_t *xsum = x->xsum;
  const int8_t *xpad = x->xpad;
  const float *xdpad = x->xdpad;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  const __m512i scale_at = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(Q8_BLOCK_BYTES));
  for (int i = 0; i < d; i++) {
    const uint8_t *row = wq + (size_t)i * row_bytes;
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
      const int first = g * 16;
      const int count = blocks - first < 16 ? blocks - first : 16;
      const uint8_t *wb = row + (size_t)first * Q8_BLOCK_BYTES;
      const uint8_t *ahead = wb + Q8_PREFETCH_L2;
      if (ahead + 16 * Q8_BLOCK_BYTES <= end) {
        prefetch_span(wb + Q8_PREFETCH_L1, count * Q8_BLOCK_BYTES);
        for (int o = 0; o < count * Q8_BLOCK_BYTES; o += 64) _mm_prefetch((const char *)(ahead + o), _MM_HINT_T1);
      }
      __m512i r[8];
      if (count == 16) {
        for (int k = 0; k < 8; k++) {
          __m512i wv = _mm512_xor_si512(load_two_blocks(wb + (size_t)(2 * k) * Q8_BLOCK_BYTES), flip);
          r[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, _mm512_loadu_si512(xpad + (size_t)(first + 2 * k) * Q8_BLOCK));
        }
      } else {
        for (int k = 0; k < 8; k++) {
          const int b = 2 * k;
          if (b + 1 < count) {
            __m512i wv = _mm512_xor_si512(load_two_blocks(wb + (size_t)b * Q8_BLOCK_BYTES), flip);
            r[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, _mm512_loadu_si512(xpad + (size_t)(first + b) * Q8_BLOCK));
          } else if (b < count) {
            __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wb + (size_t)b * Q8_BLOCK_BYTES + 2)), _mm256_set1_epi8((char)0x80));
            __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(w0), _mm256_setzero_si256(), 1);
            r[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, _mm512_loadu_si512(xpad + (size_t)(first + b) * Q8_BLOCK));
          } else {
            r[k] = _mm512_setzero_si512();
          }
        }
      }
      const __mmask16 live = (__mmask16)((1u << count) - 1);
      // The 16 blocks' f16 scales: the first 4 bytes of each block, of which the low 2.
      const __m512i halves = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, scale_at, wb, 1);
      const __m512 wscale = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(halves));
      __m512i isum = _mm512_sub_epi32(sum16blocks(r), _mm512_loadu_si512(xsum + first));
      __m512 scale = _mm512_mul_ps(wscale, _mm512_loadu_ps(xdpad + first));
      __m512 term = _mm512_maskz_mul_ps(live, scale, _mm512_cvtepi32_ps(isum));
      acc = _mm512_add_ps(acc, term);
    }
    out[i] = reduce16(acc);
  }
}

/**
 * q8_rows_vnni for up to Q8_MULTI vectors at once (a prompt batch): each weight load and scale
 * gather serves all of them, and per vector the operations are q8_rows_vnni's, in its order. Out vector v
 * at out + v·out_stride.
 */
VNNI_TARGET static inline __attribute__((always_inline)) void q8_rows_multi_body(float *out, size_t out_stride, const uint8_t *wq, const q8_x *x, int vectors, int n, int d) {
  const int blocks = n / Q8_BLOCK;
  const int groups = (blocks + 15) / 16;
  const size_t row_bytes = (size_t)blocks * Q8_BLOCK_BYTES;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  const __m512i scale_at = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(Q8_BLOCK_BYTES));
  for (int i = 0; i < d; i++) {
    const uint8_t *row = wq + (size_t)i * row_bytes;
    __m512 acc[Q8_MULTI];
    for (int v = 0; v < Q8_MULTI; v++) acc[v] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
      const int first = g * 16;
      const int count = blocks - first < 16 ? blocks - first : 16;
      const uint8_t *wb = row + (size_t)first * Q8_BLOCK_BYTES;
      // The group's weights, offset by 128; past the row's end zero (so their products are 0, as
      // q8_rows_vnni's zero sums).
      __m512i wv[8];
      for (int k = 0; k < 8; k++) {
        const int b = 2 * k;
        if (b + 1 < count) {
          wv[k] = _mm512_xor_si512(load_two_blocks(wb + (size_t)b * Q8_BLOCK_BYTES), flip);
        } else if (b < count) {
          __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wb + (size_t)b * Q8_BLOCK_BYTES + 2)), _mm256_set1_epi8((char)0x80));
          wv[k] = _mm512_inserti64x4(_mm512_castsi256_si512(w0), _mm256_setzero_si256(), 1);
        } else {
          wv[k] = _mm512_setzero_si512();
        }
      }
      const __mmask16 live = (__mmask16)((1u << count) - 1);
      const __m512i halves = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, scale_at, wb, 1);
      const __m512 wscale = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(halves));
      for (int v = 0; v < vectors; v++) {
        __m512i r[8];
        for (int k = 0; k < 8; k++) r[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[k], _mm512_loadu_si512(x[v].xpad + (size_t)(first + 2 * k) * Q8_BLOCK));
        __m512i isum = _mm512_sub_epi32(sum16blocks(r), _mm512_loadu_si512(x[v].xsum + first));
        __m512 scale = _mm512_mul_ps(wscale, _mm512_loadu_ps(x[v].xdpad + first));
        __m512 term = _mm512_maskz_mul_ps(live, scale, _mm512_cvtepi32_ps(isum));
        acc[v] = _mm512_add_ps(acc[v], term);
      }
    }
    for (int v = 0; v < vectors; v++) out[(size_t)v * out_stride + i] = reduce16(acc[v]);
  }
}

/** q8_rows_multi_body, compiled separately for Q8_MULTI vectors (the common case: the compiler keeps them in registers). */
VNNI_TARGET static void q8_rows_multi_vnni(float *out, size_t out_stride, const uint8_t *wq, const q8_x *x, int vectors, int n, int d) {
  if (vectors == Q8_MULTI) q8_rows_multi_body(out, out_stride, wq, x, Q8_MULTI, n, d);
  else q8_rows_multi_body(out, out_stride, wq, x, vectors, n, d);
}

VNNI_TARGET static void matvec_q8_vnni(float *out, const uint8_t *wq, const float *wd, const int8_t *xq, const float *xd, int n, int d) {
  q8_x x;
  if (q8_prepare(&x, xq, xd, n)) q8_rows_vnni(out, wq, &x, n, d);
  else matvec_q8_portable(out, wq, wd, xq, xd, n, d);  // no scratch memory: the same bits, slower
  q8_free(&x);
}

// Q4_K, Q5_K and Q6_K with AVX-512: four rows per pass, so that each activation load serves four
// rows and the integer sums of the four are reduced together. Per 64 values one _mm512_maddubs_epi16
// (unsigned 4-6-bit weights × int8 activations into i16 pairs, no saturation: at most 2·63·127) and
// one _mm512_dpwssd_epi32 (× the sub-block scale, into i32 lanes); the lanes of a super-block sum to
// the exact isum, so the order of that sum is free. The f32 term and the sum16 layout are the
// spec's: lane r of each 128-bit vector below is row r, computing what the portable loop computes.

/** Activations rearranged once per product, so that every weight load pairs with one activation load. */
typedef struct {
  int8_t *xq;      // Q4_K/Q5_K: each super-block's sub-blocks in the order 0 2 1 3 4 6 5 7; Q6_K: as given
  int16_t *xs;     // Q4_K/Q5_K: the i32 sums of every 32 as i16 (|Σ| ≤ 32·128)
  int16_t *pairs;  // Q6_K: 32·(x[2k] + x[2k+1]), the offset −32 of every weight
} prepared_x;

static int prepare_x(int type, prepared_x *p, const int8_t *xq, const int32_t *xs, int n) {
  p->xq = malloc((size_t)n);
  p->xs = malloc((size_t)n / 32 * sizeof(int16_t));
  p->pairs = malloc((size_t)n / 2 * sizeof(int16_t));
  if (!p->xq || !p->xs || !p->pairs) return 0;
  if (type == TYPE_Q6_K) {
    memcpy(p->xq, xq, (size_t)n);
    for (int k = 0; k < n / 2; k++) p->pairs[k] = (int16_t)(32 * (xq[2 * k] + xq[2 * k + 1]));
  } else {
    static const int order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int b = 0; b < n / 256; b++) {
      for (int j = 0; j < 8; j++) memcpy(p->xq + 256 * b + 32 * j, xq + 256 * b + 32 * order[j], 32);
    }
    for (int j = 0; j < n / 32; j++) p->xs[j] = (int16_t)xs[j];
  }
  return 1;
}

static void free_x(prepared_x *p) {
  free(p->xq);
  free(p->xs);
  free(p->pairs);
}

/** Sub-block scales and mins of Q4_K/Q5_K, 8 bytes each (sub-block j in byte j). */
static inline void scales_mins_k4(const uint8_t *s, uint64_t *sc, uint64_t *m) {
  uint32_t a, b, c;
  memcpy(&a, s, 4);
  memcpy(&b, s + 4, 4);
  memcpy(&c, s + 8, 4);
  const uint32_t sc_lo = a & 0x3f3f3f3f, m_lo = b & 0x3f3f3f3f;
  const uint32_t sc_hi = (c & 0x0f0f0f0f) | (((a >> 6) & 0x03030303) << 4);
  const uint32_t m_hi = ((c >> 4) & 0x0f0f0f0f) | (((b >> 6) & 0x03030303) << 4);
  *sc = sc_lo | (uint64_t)sc_hi << 32;
  *m = m_lo | (uint64_t)m_hi << 32;
}

/** i16 lanes 0-15 ← scale A, 16-31 ← scale B, from eight i16 scales in `s`. */
VNNI_TARGET static inline __m512i two_scales(__m512i s, int a, int b) {
  const __m512i index = _mm512_mask_blend_epi16(0xffff0000u, _mm512_set1_epi16((short)a), _mm512_set1_epi16((short)b));
  return _mm512_permutexvar_epi16(index, s);
}

/**
 * lanes_qxk for up to 4 activation vectors (a prompt batch): the weights' nibbles and sub-block
 * scales are unpacked once and multiplied with each vector. acc[v], msum[v]: vector v's lanes.
 */
VNNI_TARGET static inline __attribute__((always_inline)) void lanes_qxk_multi(const uint8_t *w, const int8_t *const x[4], const int16_t *const xs[4],
                                                                               int vectors, int five, __m512i acc[4], __m128i msum[4]) {
  uint64_t sc8, m8;
  scales_mins_k4(w + 4, &sc8, &m8);
  const __m512i sc = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc8)));
  const __m128i mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)m8));
  for (int v = 0; v < vectors; v++) {
    msum[v] = _mm_madd_epi16(mins, _mm_loadu_si128((const __m128i *)xs[v]));
    acc[v] = _mm512_setzero_si512();
  }
  const uint8_t *qs = w + (five ? 48 : 16);
  const __m512i nib = _mm512_set1_epi8(15);
  __m512i high = _mm512_setzero_si512();
  if (five) high = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w + 16)));
  for (int h = 0; h < 2; h++) {
    const __m512i q = _mm512_loadu_si512(qs + 64 * h);
    __m512i lo = _mm512_and_si512(q, nib), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), nib);
    if (five) {
      const __m512i one = _mm512_set1_epi8(1);
      const __m512i shift_lo = _mm512_mask_blend_epi16(0xffff0000u, _mm512_set1_epi16((short)(4 * h)), _mm512_set1_epi16((short)(4 * h + 2)));
      const __m512i shift_hi = _mm512_add_epi16(shift_lo, _mm512_set1_epi16(1));
      lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(high, shift_lo), one), 4));
      hi = _mm512_or_si512(hi, _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(high, shift_hi), one), 4));
    }
    const __m512i scale_lo = two_scales(sc, 4 * h, 4 * h + 2), scale_hi = two_scales(sc, 4 * h + 1, 4 * h + 3);
    for (int v = 0; v < vectors; v++) {
      const __m512i plo = _mm512_maddubs_epi16(lo, _mm512_loadu_si512(x[v] + 128 * h));
      const __m512i phi = _mm512_maddubs_epi16(hi, _mm512_loadu_si512(x[v] + 128 * h + 64));
      acc[v] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(acc[v], plo, scale_lo), phi, scale_hi);
    }
  }
}

/** lanes_q6k for up to 4 activation vectors: the 6-bit weights and their scales unpacked once. */
VNNI_TARGET static inline __attribute__((always_inline)) void lanes_q6k_multi(const uint8_t *w, const int8_t *const x[4], const int16_t *const pairs[4],
                                                                               int vectors, __m512i acc[4]) {
  const __m512i nib = _mm512_set1_epi8(15), three = _mm512_set1_epi8(3);
  const __m512i sc = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 192))));
  const __m512i quarter_of_lane = _mm512_srli_epi16(_mm512_setr_epi32(0x00010000, 0x00030002, 0x00050004, 0x00070006, 0x00090008, 0x000b000a, 0x000d000c, 0x000f000e,
                                                                        0x00110010, 0x00130012, 0x00150014, 0x00170016, 0x00190018, 0x001b001a, 0x001d001c, 0x001f001e), 3);
  for (int v = 0; v < vectors; v++) acc[v] = _mm512_setzero_si512();
  for (int h = 0; h < 2; h++) {
    const __m512i q = _mm512_loadu_si512(w + 64 * h);
    const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w + 128 + 32 * h)));
    const __m512i shift01 = _mm512_mask_blend_epi16(0xffff0000u, _mm512_setzero_si512(), _mm512_set1_epi16(2));
    const __m512i shift23 = _mm512_add_epi16(shift01, _mm512_set1_epi16(4));
    const __m512i q01 = _mm512_or_si512(_mm512_and_si512(q, nib), _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift01), three), 4));
    const __m512i q23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(q, 4), nib), _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift23), three), 4));
    const __m512i s01 = _mm512_permutexvar_epi16(_mm512_add_epi16(quarter_of_lane, _mm512_set1_epi16((short)(8 * h))), sc);
    const __m512i s23 = _mm512_permutexvar_epi16(_mm512_add_epi16(quarter_of_lane, _mm512_set1_epi16((short)(8 * h + 4))), sc);
    for (int v = 0; v < vectors; v++) {
      const __m512i p01 = _mm512_sub_epi16(_mm512_maddubs_epi16(q01, _mm512_loadu_si512(x[v] + 128 * h)), _mm512_loadu_si512(pairs[v] + 64 * h));
      const __m512i p23 = _mm512_sub_epi16(_mm512_maddubs_epi16(q23, _mm512_loadu_si512(x[v] + 128 * h + 64)), _mm512_loadu_si512(pairs[v] + 64 * h + 32));
      acc[v] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(acc[v], p01, s01), p23, s23);
    }
  }
}

/** One Q4_K/Q5_K super-block of one row: i32 lanes summing to isum, and 4 lanes summing to msum. */
VNNI_TARGET static inline __m512i lanes_qxk(const uint8_t *w, const int8_t *x, const int16_t *xs, int five, __m128i *msum) {
  const int8_t *const xv[4] = {x, x, x, x};
  const int16_t *const sv[4] = {xs, xs, xs, xs};
  __m512i acc[4];
  __m128i ms[4];
  lanes_qxk_multi(w, xv, sv, 1, five, acc, ms);
  *msum = ms[0];
  return acc[0];
}

/** One Q6_K super-block of one row: i32 lanes summing to isum. */
VNNI_TARGET static inline __m512i lanes_q6k(const uint8_t *w, const int8_t *x, const int16_t *pairs) {
  const int8_t *const xv[4] = {x, x, x, x};
  const int16_t *const pv[4] = {pairs, pairs, pairs, pairs};
  __m512i acc[4];
  lanes_q6k_multi(w, xv, pv, 1, acc);
  return acc[0];
}

/** The four vectors' lane sums, as lanes 0-3 (exact integer adds, any order). */
VNNI_TARGET static inline __m128i hsum4_i32(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m128i r[4] = {
    _mm_add_epi32(_mm512_castsi512_si128(a), _mm512_extracti32x4_epi32(a, 1)),
    _mm_add_epi32(_mm512_castsi512_si128(b), _mm512_extracti32x4_epi32(b, 1)),
    _mm_add_epi32(_mm512_castsi512_si128(c), _mm512_extracti32x4_epi32(c, 1)),
    _mm_add_epi32(_mm512_castsi512_si128(d), _mm512_extracti32x4_epi32(d, 1)),
  };
  const __m128i s[4] = {
    _mm_add_epi32(r[0], _mm_add_epi32(_mm512_extracti32x4_epi32(a, 2), _mm512_extracti32x4_epi32(a, 3))),
    _mm_add_epi32(r[1], _mm_add_epi32(_mm512_extracti32x4_epi32(b, 2), _mm512_extracti32x4_epi32(b, 3))),
    _mm_add_epi32(r[2], _mm_add_epi32(_mm512_extracti32x4_epi32(c, 2), _mm512_extracti32x4_epi32(c, 3))),
    _mm_add_epi32(r[3], _mm_add_epi32(_mm512_extracti32x4_epi32(d, 2), _mm512_extracti32x4_epi32(d, 3))),
  };
  return _mm_hadd_epi32(_mm_hadd_epi32(s[0], s[1]), _mm_hadd_epi32(s[2], s[3]));
}

VNNI_TARGET static inline __m128i hsum4_i32x4(__m128i a, __m128i b, __m128i c, __m128i d) {
  return _mm_hadd_epi32(_mm_hadd_epi32(a, b), _mm_hadd_epi32(c, d));
}

/** Rows 0..d−1 of W·x for one prepared activation vector (xd: its scales, one per 256). */
VNNI_TARGET static void quant_rows_vnni(int type, float *out, const uint8_t *w, const float *wd, const prepared_x *x, const float *xd, int n, int d) {
  const int blocks = n / 256, bytes = quant_block_bytes(type), per = quant_scales(type);
  const size_t row_bytes = (size_t)blocks * bytes;
  const int five = type == TYPE_Q5_K;
  const prepared_x p = *x;
  for (int i = 0; i < d; i += 4) {
    // Rows i..i+3; past the end the last row is computed again and not stored.
    const uint8_t *row[4];
    const float *scales[4];
    for (int r = 0; r < 4; r++) {
      const int at = i + r < d ? i + r : d - 1;
      row[r] = w + (size_t)at * row_bytes;
      scales[r] = wd + (size_t)at * blocks * per;
    }
    __m128 acc[16];
    for (int k = 0; k < 16; k++) acc[k] = _mm_setzero_ps();
    for (int b = 0; b < blocks; b++) {
      const size_t at = (size_t)b * bytes;
      if (i + PREFETCH_ROWS < d) {
        for (int r = 0; r < 4; r++) prefetch_span(row[r] + PREFETCH_ROWS * row_bytes + at, bytes);
      }
      const int8_t *x = p.xq + 256 * b;
      const __m128 dx = _mm_set1_ps(xd[b]);
      const __m128 dw = _mm_setr_ps(scales[0][b * per], scales[1][b * per], scales[2][b * per], scales[3][b * per]);
      __m128 term;
      if (type == TYPE_Q6_K) {
        const int16_t *pairs = p.pairs + 128 * b;
        const __m128i isum = hsum4_i32(lanes_q6k(row[0] + at, x, pairs), lanes_q6k(row[1] + at, x, pairs),
                                       lanes_q6k(row[2] + at, x, pairs), lanes_q6k(row[3] + at, x, pairs));
        term = _mm_mul_ps(_mm_mul_ps(dw, dx), _mm_cvtepi32_ps(isum));
      } else {
        const int16_t *sums = p.xs + 8 * b;
        __m128i m0, m1, m2, m3;
        const __m512i l0 = lanes_qxk(row[0] + at, x, sums, five, &m0), l1 = lanes_qxk(row[1] + at, x, sums, five, &m1);
        const __m512i l2 = lanes_qxk(row[2] + at, x, sums, five, &m2), l3 = lanes_qxk(row[3] + at, x, sums, five, &m3);
        const __m128i isum = hsum4_i32(l0, l1, l2, l3), msum = hsum4_i32x4(m0, m1, m2, m3);
        const __m128 dmin = _mm_setr_ps(scales[0][b * per + 1], scales[1][b * per + 1], scales[2][b * per + 1], scales[3][b * per + 1]);
        term = _mm_sub_ps(_mm_mul_ps(_mm_mul_ps(dw, dx), _mm_cvtepi32_ps(isum)), _mm_mul_ps(_mm_mul_ps(dmin, dx), _mm_cvtepi32_ps(msum)));
      }
      acc[b & 15] = _mm_add_ps(acc[b & 15], term);
    }
    // combine16, four rows at once.
    __m128 t[8], u[4];
    for (int k = 0; k < 8; k++) t[k] = _mm_add_ps(acc[k], acc[k + 8]);
    for (int k = 0; k < 4; k++) u[k] = _mm_add_ps(t[k], t[k + 4]);
    const __m128 sum = _mm_add_ps(_mm_add_ps(u[0], u[2]), _mm_add_ps(u[1], u[3]));
    float lanes[4];
    _mm_storeu_ps(lanes, sum);
    for (int r = 0; r < 4 && i + r < d; r++) out[i + r] = lanes[r];
  }
}

/**
 * quant_rows_vnni for up to 4 prepared vectors at once (x[v], scales xd + v·xd_stride; out vector
 * v at out + v·out_stride): each weight block is unpacked once for all of them, and per vector the
 * integer sums, the f32 term and the sum16 layout are quant_rows_vnni's.
 */
VNNI_TARGET static inline __attribute__((always_inline)) void quant_rows_multi_body(int type, float *out, size_t out_stride, const uint8_t *w, const float *wd,
                                                                                     const prepared_x *x, const float *xd, size_t xd_stride, int vectors, int n, int d) {
  const int blocks = n / 256, bytes = quant_block_bytes(type), per = quant_scales(type);
  const size_t row_bytes = (size_t)blocks * bytes;
  const int five = type == TYPE_Q5_K;
  for (int i = 0; i < d; i += 4) {
    const uint8_t *row[4];
    const float *scales[4];
    for (int r = 0; r < 4; r++) {
      const int at = i + r < d ? i + r : d - 1;
      row[r] = w + (size_t)at * row_bytes;
      scales[r] = wd + (size_t)at * blocks * per;
    }
    __m128 acc[4][16];
    for (int v = 0; v < vectors; v++) for (int k = 0; k < 16; k++) acc[v][k] = _mm_setzero_ps();
    for (int b = 0; b < blocks; b++) {
      const size_t at = (size_t)b * bytes;
      const int8_t *xv[4];
      const int16_t *side[4]; // Q6_K: the pair sums; Q4_K/Q5_K: the sums of every 32
      for (int v = 0; v < vectors; v++) {
        xv[v] = x[v].xq + 256 * b;
        side[v] = type == TYPE_Q6_K ? x[v].pairs + 128 * b : x[v].xs + 8 * b;
      }
      __m512i lanes[4][4];
      __m128i mins[4][4];
      for (int r = 0; r < 4; r++) {
        if (type == TYPE_Q6_K) lanes_q6k_multi(row[r] + at, xv, side, vectors, lanes[r]);
        else lanes_qxk_multi(row[r] + at, xv, side, vectors, five, lanes[r], mins[r]);
      }
      const __m128 dw = _mm_setr_ps(scales[0][b * per], scales[1][b * per], scales[2][b * per], scales[3][b * per]);
      for (int v = 0; v < vectors; v++) {
        const __m128 dx = _mm_set1_ps(xd[(size_t)v * xd_stride + b]);
        const __m128i isum = hsum4_i32(lanes[0][v], lanes[1][v], lanes[2][v], lanes[3][v]);
        __m128 term;
        if (type == TYPE_Q6_K) {
          term = _mm_mul_ps(_mm_mul_ps(dw, dx), _mm_cvtepi32_ps(isum));
        } else {
          const __m128i msum = hsum4_i32x4(mins[0][v], mins[1][v], mins[2][v], mins[3][v]);
          const __m128 dmin = _mm_setr_ps(scales[0][b * per + 1], scales[1][b * per + 1], scales[2][b * per + 1], scales[3][b * per + 1]);
          term = _mm_sub_ps(_mm_mul_ps(_mm_mul_ps(dw, dx), _mm_cvtepi32_ps(isum)), _mm_mul_ps(_mm_mul_ps(dmin, dx), _mm_cvtepi32_ps(msum)));
        }
        acc[v][b & 15] = _mm_add_ps(acc[v][b & 15], term);
      }
    }
    for (int v = 0; v < vectors; v++) {
      __m128 t[8], u[4];
      for (int k = 0; k < 8; k++) t[k] = _mm_add_ps(acc[v][k], acc[v][k + 8]);
      for (int k = 0; k < 4; k++) u[k] = _mm_add_ps(t[k], t[k + 4]);
      const __m128 sum = _mm_add_ps(_mm_add_ps(u[0], u[2]), _mm_add_ps(u[1], u[3]));
      float lanes_out[4];
      _mm_storeu_ps(lanes_out, sum);
      for (int r = 0; r < 4 && i + r < d; r++) out[(size_t)v * out_stride + i + r] = lanes_out[r];
    }
  }
}

/** quant_rows_multi_body, compiled separately for each type with 4 vectors (the common case). */
VNNI_TARGET static void quant_rows_multi_vnni(int type, float *out, size_t out_stride, const uint8_t *w, const float *wd, const prepared_x *x,
                                              const float *xd, size_t xd_stride, int vectors, int n, int d) {
  if (vectors == 4 && type == TYPE_Q4_K) quant_rows_multi_body(TYPE_Q4_K, out, out_stride, w, wd, x, xd, xd_stride, 4, n, d);
  else if (vectors == 4 && type == TYPE_Q5_K) quant_rows_multi_body(TYPE_Q5_K, out, out_stride, w, wd, x, xd, xd_stride, 4, n, d);
  else if (vectors == 4 && type == TYPE_Q6_K) quant_rows_multi_body(TYPE_Q6_K, out, out_stride, w, wd, x, xd, xd_stride, 4, n, d);
  else quant_rows_multi_body(type, out, out_stride, w, wd, x, xd, xd_stride, vectors, n, d);
}

/** Returns 0 when scratch memory could not be had (the caller then takes the AVX2 loop). */
VNNI_TARGET static int matvec_quant_vnni(int type, float *out, const uint8_t *w, const float *wd, const int8_t *xq, const float *xd, const int32_t *xs, int n, int d) {
  prepared_x p;
  const int ok = prepare_x(type, &p, xq, xs, n);
  if (ok) quant_rows_vnni(type, out, w, wd, &p, xd, n, d);
  free_x(&p);
  return ok;
}
#endif

// ---------------------------------------------------------------------------------------------
// Matrix × matrix (spec §4, "Batches"): `batch` activation vectors stored one after another, out
// vector v at out + v·out_stride. Every output element is computed by the row loop above for
// that vector alone — the same dot product, in the same order — so the bits are the matrix-vector
// kernel's; only the loop around it changes: a tile of MATMUL_TILE rows comes from memory once
// and is dotted with every vector while it is in the cache. Activations are prepared once per
// vector, not once per tile.

#define MATMUL_TILE 16

typedef struct {
  int n, d, batch, out_stride;
  size_t row_bytes;   // bytes of one weight row
  size_t scale_floats; // prepared scales per row (wd)
} matmul_shape;

static void matmul_f32(float *out, const float *w, const float *x, matmul_shape s) {
  for (int first = 0; first < s.d; first += MATMUL_TILE) {
    const int rows = s.d - first < MATMUL_TILE ? s.d - first : MATMUL_TILE;
    for (int v = 0; v < s.batch; v++) {
      float *o = out + (size_t)v * s.out_stride + first;
      const float *wr = w + (size_t)first * s.n, *xv = x + (size_t)v * s.n;
#if defined(__x86_64__)
      if (use_avx512) {
        matvec_avx512(o, wr, xv, s.n, rows);
        continue;
      }
#endif
      matvec_portable(o, wr, xv, s.n, rows);
    }
  }
}

static void matmul_q8(float *out, const uint8_t *wq, const float *wd, const int8_t *xq, const float *xd, matmul_shape s) {
  const int blocks = s.n / Q8_BLOCK;
#if defined(__x86_64__)
  q8_x *prepared = use_avx512vnni ? calloc((size_t)s.batch, sizeof(q8_x)) : NULL;
  int ready = prepared != NULL;
  for (int v = 0; ready && v < s.batch; v++) ready = q8_prepare(&prepared[v], xq + (size_t)v * s.n, xd + (size_t)v * blocks, s.n);
#endif
  for (int first = 0; first < s.d; first += MATMUL_TILE) {
    const int rows = s.d - first < MATMUL_TILE ? s.d - first : MATMUL_TILE;
    const uint8_t *wr = wq + (size_t)first * s.row_bytes;
#if defined(__x86_64__)
    if (ready) {
      for (int v = 0; v < s.batch; v += Q8_MULTI) {
        const int vectors = s.batch - v < Q8_MULTI ? s.batch - v : Q8_MULTI;
        q8_rows_multi_vnni(out + (size_t)v * s.out_stride + first, (size_t)s.out_stride, wr, &prepared[v], vectors, s.n, rows);
      }
      continue;
    }
#endif
    for (int v = 0; v < s.batch; v++) {
      float *o = out + (size_t)v * s.out_stride + first;
      matvec_q8_portable(o, wr, wd + (size_t)first * blocks, xq + (size_t)v * s.n, xd + (size_t)v * blocks, s.n, rows);
    }
  }
#if defined(__x86_64__)
  for (int v = 0; prepared && v < s.batch; v++) q8_free(&prepared[v]);
  free(prepared);
#endif
}

static void matmul_quant(int type, float *out, const uint8_t *w, const float *wd, const int8_t *xq, const float *xd, const int32_t *xs, matmul_shape s) {
  const int blocks = s.n / quant_block(type), sums = s.n / 32;
#if defined(__x86_64__)
  prepared_x *prepared = use_avx512vnni && type != TYPE_Q4_0 ? calloc((size_t)s.batch, sizeof(prepared_x)) : NULL;
  int ready = prepared != NULL;
  for (int v = 0; ready && v < s.batch; v++) ready = prepare_x(type, &prepared[v], xq + (size_t)v * s.n, xs + (size_t)v * sums, s.n);
#endif
  for (int first = 0; first < s.d; first += MATMUL_TILE) {
    const int rows = s.d - first < MATMUL_TILE ? s.d - first : MATMUL_TILE;
    const uint8_t *wr = w + (size_t)first * s.row_bytes;
    const float *sr = wd + (size_t)first * s.scale_floats;
#if defined(__x86_64__)
    if (ready) {
      for (int v = 0; v < s.batch; v += 4) {
        const int vectors = s.batch - v < 4 ? s.batch - v : 4;
        quant_rows_multi_vnni(type, out + (size_t)v * s.out_stride + first, (size_t)s.out_stride, wr, sr, &prepared[v], xd + (size_t)v * blocks,
                              (size_t)blocks, vectors, s.n, rows);
      }
      continue;
    }
#endif
    for (int v = 0; v < s.batch; v++) {
      float *o = out + (size_t)v * s.out_stride + first;
      const int8_t *xqv = xq + (size_t)v * s.n;
      const float *xdv = xd + (size_t)v * blocks;
      const int32_t *xsv = xs + (size_t)v * sums;
#if defined(__x86_64__)
      if (use_avx2) {
        matvec_quant_avx2(type, o, wr, sr, xqv, xdv, xsv, s.n, rows);
        continue;
      }
#endif
      matvec_quant_portable(type, o, wr, sr, xqv, xdv, xsv, s.n, rows);
    }
  }
#if defined(__x86_64__)
  for (int v = 0; prepared && v < s.batch; v++) free_x(&prepared[v]);
  free(prepared);
#endif
}

// ---------------------------------------------------------------------------------------------
// N-API glue.

static napi_value throw_error(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

/** bind(view) → handle: the memory that `view` (a Uint8Array at offset 0) spans. */
/**
 * Asks the kernel to back the memory with transparent huge pages where it is set to "madvise":
 * the matrix products stream the whole model every token, and with 4 KiB pages each page is a TLB
 * miss (30,000 a token for 117 MB). Only pages not yet touched are affected; a hint, never an error.
 */
static void ask_huge_pages(void *data, size_t length) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const char *setting = getenv("VERITY_HUGE_PAGES");
  if (setting && strcmp(setting, "0") == 0) return;
  const uintptr_t huge = 2u << 20;
  uintptr_t start = ((uintptr_t)data + huge - 1) & ~(huge - 1);
  uintptr_t end = ((uintptr_t)data + length) & ~(huge - 1);
  if (end > start) madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
  (void)data;
  (void)length;
#endif
}

static napi_value Bind(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_typedarray_type type;
  size_t length, offset;
  void *data;
  napi_value buffer;
  if (argc < 1 || napi_get_typedarray_info(env, argv[0], &type, &length, &data, &buffer, &offset) != napi_ok || offset != 0) {
    return throw_error(env, "bind expects a Uint8Array over the whole memory");
  }
  ask_huge_pages(data, length);
  lock_table();
  int id = 0;
  while (id < memories && bases[id] != data) id++;
  if (id == memories) {
    if (memories == MAX_MEMORIES) {
      unlock_table();
      return throw_error(env, "too many memories bound");
    }
    bases[memories] = (uint8_t *)data;
    limits[memories] = SIZE_MAX;
    __atomic_store_n(&memories, memories + 1, __ATOMIC_RELEASE);
  }
  unlock_table();
  napi_value handle;
  napi_create_uint32(env, (uint32_t)id, &handle);
  return handle;
}

/** The base address for a handle, or NULL. */
static uint8_t *memory_base(uint32_t id) {
  return id < (uint32_t)__atomic_load_n(&memories, __ATOMIC_ACQUIRE) ? bases[id] : NULL;
}

/** A new handle for `base`; -1 when the table is full. */
static int register_base(uint8_t *base, size_t limit) {
  lock_table();
  int id = -1;
  if (memories < MAX_MEMORIES) {
    id = memories;
    bases[id] = base;
    limits[id] = limit;
    __atomic_store_n(&memories, id + 1, __ATOMIC_RELEASE);
  }
  unlock_table();
  return id;
}

/**
 * Reads `want` uint32 arguments (the first is the activations' memory handle), then the optional
 * weights handle after them: `*weights` is its base, or the activations' memory when it is absent.
 */
static int read_args_with_weights(napi_env env, napi_callback_info info, size_t want, uint32_t *out, uint8_t **weights) {
  napi_value argv[13];
  size_t argc = 13;
  if (want > 12 || napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) return 0;
  for (size_t i = 0; i < want; i++) {
    if (napi_get_value_uint32(env, argv[i], &out[i]) != napi_ok) return 0;
  }
  *weights = memory_base(out[0]);
  if (argc > want) {
    napi_valuetype type;
    uint32_t handle;
    if (napi_typeof(env, argv[want], &type) != napi_ok) return 0;
    if (type != napi_undefined) {
      if (napi_get_value_uint32(env, argv[want], &handle) != napi_ok) return 0;
      *weights = memory_base(handle);
    }
  }
  return memory_base(out[0]) != NULL && *weights != NULL;
}

/** A non-negative integer argument that may exceed 32 bits (a file offset or length). */
static int read_size(napi_env env, napi_value value, size_t *out) {
  int64_t v;
  if (napi_get_value_int64(env, value, &v) != napi_ok || v < 0) return 0;
  *out = (size_t)v;
  return 1;
}

/**
 * mapFile(path) → handle: the whole file mapped read-only and private (pages come from the page
 * cache, shared with other readers of the file, never copied). A write through it faults, so a
 * weight can never change under the kernels. The mapping lives as long as the process; the file
 * must not be truncated meanwhile (reading a vanished page is SIGBUS).
 */
static napi_value MapFile(napi_env env, napi_callback_info info) {
#if defined(_WIN32)
  (void)info;
  return throw_error(env, "mapFile: not supported on Windows");
#else
  napi_value argv[1];
  size_t argc = 1;
  char path[4096];
  size_t length;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &length) != napi_ok || length >= sizeof path - 1) {
    return throw_error(env, "mapFile(path): bad arguments");
  }
  int fd = open(path, O_RDONLY);
  if (fd < 0) return throw_error(env, "mapFile: cannot open the file");
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size <= 0) {
    close(fd);
    return throw_error(env, "mapFile: the file is empty or cannot be read");
  }
  void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);  // the mapping keeps the file open
  if (map == MAP_FAILED) return throw_error(env, "mapFile: mmap failed");
  int id = register_base((uint8_t *)map, (size_t)st.st_size);
  if (id < 0) {
    munmap(map, (size_t)st.st_size);
    return throw_error(env, "mapFile: too many memories bound");
  }
  napi_value handle;
  napi_create_uint32(env, (uint32_t)id, &handle);
  return handle;
#endif
}

/**
 * window(handle, offset) → handle: the same memory seen from `offset` on, so that a kernel's 32-bit
 * offsets reach every tensor of a file larger than 4 GiB.
 */
static napi_value Window(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  uint32_t id;
  size_t offset;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || napi_get_value_uint32(env, argv[0], &id) != napi_ok ||
      !memory_base(id) || !read_size(env, argv[1], &offset) || offset > limits[id]) {
    return throw_error(env, "window(handle, offset): bad arguments");
  }
  int window = register_base(bases[id] + offset, limits[id] == SIZE_MAX ? SIZE_MAX : limits[id] - offset);
  if (window < 0) return throw_error(env, "window: too many memories bound");
  napi_value handle;
  napi_create_uint32(env, (uint32_t)window, &handle);
  return handle;
}

/**
 * view(handle, offset, length) → ArrayBuffer over those bytes of a mapped file, not a copy (for
 * hashing, exports, the referee and embedding rows). Valid as long as the mapping: the process.
 */
static napi_value View(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  uint32_t id;
  size_t offset, length;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || napi_get_value_uint32(env, argv[0], &id) != napi_ok ||
      !memory_base(id) || limits[id] == SIZE_MAX || !read_size(env, argv[1], &offset) || !read_size(env, argv[2], &length) ||
      offset > limits[id] || length > limits[id] - offset) {
    return throw_error(env, "view(handle, offset, length): bad arguments (a mapped memory, in bounds)");
  }
  napi_value buffer;
  if (napi_create_external_arraybuffer(env, bases[id] + offset, length, NULL, NULL, &buffer) != napi_ok) {
    return throw_error(env, "view: cannot create an external ArrayBuffer");
  }
  return buffer;
}

/** matvec(memory, out, w, x, n, d, weights?): `w` is an offset into `weights` (default: `memory`). */
static napi_value Matvec(napi_env env, napi_callback_info info) {
  uint32_t a[6];
  uint8_t *wbase;
  uint8_t *base = read_args_with_weights(env, info, 6, a, &wbase) ? memory_base(a[0]) : NULL;
  if (!base) return throw_error(env, "matvec(memory, out, w, x, n, d, weights?): bad arguments");
  float *out = (float *)(base + a[1]);
  const float *w = (const float *)(wbase + a[2]), *x = (const float *)(base + a[3]);
#if defined(__x86_64__)
  if (use_avx512) {
    matvec_avx512(out, w, x, (int)a[4], (int)a[5]);
    return NULL;
  }
#endif
  matvec_portable(out, w, x, (int)a[4], (int)a[5]);
  return NULL;
}

/** matvecQ8(memory, out, wq, wd, xq, xd, n, d, weights?): `wq` is an offset into `weights`, the scales `wd` into `memory`. */
static napi_value MatvecQ8(napi_env env, napi_callback_info info) {
  uint32_t a[8];
  uint8_t *wbase;
  uint8_t *base = read_args_with_weights(env, info, 8, a, &wbase) ? memory_base(a[0]) : NULL;
  if (!base || a[6] % Q8_BLOCK != 0) return throw_error(env, "matvecQ8(memory, out, wq, wd, xq, xd, n, d, weights?): bad arguments");
  float *out = (float *)(base + a[1]);
  const uint8_t *wq = wbase + a[2];
  const float *wd = (const float *)(base + a[3]);
  const int8_t *xq = (const int8_t *)(base + a[4]);
  const float *xd = (const float *)(base + a[5]);
#if defined(__x86_64__)
  if (use_avx512vnni) {
    matvec_q8_vnni(out, wq, wd, xq, xd, (int)a[6], (int)a[7]);
    return NULL;
  }
#endif
  matvec_q8_portable(out, wq, wd, xq, xd, (int)a[6], (int)a[7]);
  return NULL;
}

/** matvecQuant(memory, type, out, w, wd, xq, xd, xs, n, d, weights?): Q4_0 and k-quant products; `w` is an offset into `weights`. */
static napi_value MatvecQuant(napi_env env, napi_callback_info info) {
  uint32_t a[10];
  uint8_t *wbase;
  uint8_t *base = read_args_with_weights(env, info, 10, a, &wbase) ? memory_base(a[0]) : NULL;
  const int type = (int)a[1];
  if (!base || quant_block_bytes(type) == 0 || a[8] % (uint32_t)quant_block(type) != 0) {
    return throw_error(env, "matvecQuant(memory, type, out, w, wd, xq, xd, xs, n, d, weights?): bad arguments");
  }
  float *out = (float *)(base + a[2]);
  const uint8_t *w = wbase + a[3];
  const float *wd = (const float *)(base + a[4]);
  const int8_t *xq = (const int8_t *)(base + a[5]);
  const float *xd = (const float *)(base + a[6]);
  const int32_t *xs = (const int32_t *)(base + a[7]);
#if defined(__x86_64__)
  if (use_avx2) {
    matvec_quant_avx2(type, out, w, wd, xq, xd, xs, (int)a[8], (int)a[9]);
    return NULL;
  }
#endif
  matvec_quant_portable(type, out, w, wd, xq, xd, xs, (int)a[8], (int)a[9]);
  return NULL;
}

/** matmul(memory, out, w, x, n, d, batch, outStride, weights?): `batch` vectors x (n floats apart), outputs outStride floats apart. */
static napi_value Matmul(napi_env env, napi_callback_info info) {
  uint32_t a[8];
  uint8_t *wbase;
  uint8_t *base = read_args_with_weights(env, info, 8, a, &wbase) ? memory_base(a[0]) : NULL;
  if (!base || a[7] < a[5]) return throw_error(env, "matmul(memory, out, w, x, n, d, batch, outStride, weights?): bad arguments");
  const matmul_shape shape = {(int)a[4], (int)a[5], (int)a[6], (int)a[7], (size_t)a[4] * 4, 0};
  matmul_f32((float *)(base + a[1]), (const float *)(wbase + a[2]), (const float *)(base + a[3]), shape);
  return NULL;
}

/** matmulQ8(memory, out, wq, wd, xq, xd, n, d, batch, outStride, weights?): vector v's activations at xq + v·n, xd + 4·v·n/32. */
static napi_value MatmulQ8(napi_env env, napi_callback_info info) {
  uint32_t a[10];
  uint8_t *wbase;
  uint8_t *base = read_args_with_weights(env, info, 10, a, &wbase) ? memory_base(a[0]) : NULL;
  if (!base || a[6] % Q8_BLOCK != 0 || a[9] < a[7]) {
    return throw_error(env, "matmulQ8(memory, out, wq, wd, xq, xd, n, d, batch, outStride, weights?): bad arguments");
  }
  const int blocks = (int)a[6] / Q8_BLOCK;
  const matmul_shape shape = {(int)a[6], (int)a[7], (int)a[8], (int)a[9], (size_t)blocks * Q8_BLOCK_BYTES, (size_t)blocks};
  matmul_q8((float *)(base + a[1]), wbase + a[2], (const float *)(base + a[3]), (const int8_t *)(base + a[4]), (const float *)(base + a[5]), shape);
  return NULL;
}

/** matmulQuant(memory, type, out, w, wd, xq, xd, xs, n, d, batch, outStride, weights?): Q4_0 and the k-quants, batched as matmulQ8. */
static napi_value MatmulQuant(napi_env env, napi_callback_info info) {
  uint32_t a[12];
  uint8_t *wbase;
  uint8_t *base = read_args_with_weights(env, info, 12, a, &wbase) ? memory_base(a[0]) : NULL;
  const int type = (int)a[1];
  if (!base || quant_block_bytes(type) == 0 || a[8] % (uint32_t)quant_block(type) != 0 || a[11] < a[9]) {
    return throw_error(env, "matmulQuant(memory, type, out, w, wd, xq, xd, xs, n, d, batch, outStride, weights?): bad arguments");
  }
  const int blocks = (int)a[8] / quant_block(type);
  const matmul_shape shape = {(int)a[8], (int)a[9], (int)a[10], (int)a[11], (size_t)blocks * quant_block_bytes(type), (size_t)blocks * quant_scales(type)};
  matmul_quant(type, (float *)(base + a[2]), wbase + a[3], (const float *)(base + a[4]), (const int8_t *)(base + a[5]), (const float *)(base + a[6]),
               (const int32_t *)(base + a[7]), shape);
  return NULL;
}

/**
 * traceLayer(memory, x, key, value, dim, kvDim, pos, layer, chain, acc, out): one layer step's trace
 * leaf (docs/proofs.md), with OpenSSL's SHA-256 (Node's own, SHA-NI where the CPU has it). Reads the
 * layer's K/V chain (32 bytes at `chain`) and the accumulator (at `acc`) and updates both in place;
 * writes xHash, kvHash, the new kvChain and the leaf to `out` (128 bytes).
 */
static napi_value TraceLayer(napi_env env, napi_callback_info info) {
  uint32_t a[11];
  napi_value argv[11];
  size_t argc = 11;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 11) return throw_error(env, "traceLayer: bad arguments");
  for (int i = 0; i < 11; i++) {
    if (napi_get_value_uint32(env, argv[i], &a[i]) != napi_ok) return throw_error(env, "traceLayer: bad arguments");
  }
  uint8_t *base = memory_base(a[0]);
  if (!base) return throw_error(env, "traceLayer: unknown memory");
  const uint8_t *x = base + a[1], *key = base + a[2], *value = base + a[3];
  size_t dim = a[4], kv_dim = a[5];
  uint8_t *chain = base + a[8], *acc = base + a[9], *out = base + a[10];
  uint8_t *x_hash = out, *kv_hash = out + 32, *new_chain = out + 64, *leaf = out + 96;
  SHA256_CTX c;
  SHA256(x, 4 * dim, x_hash);
  SHA256_Init(&c);
  SHA256_Update(&c, key, 4 * kv_dim);
  SHA256_Update(&c, value, 4 * kv_dim);
  SHA256_Final(kv_hash, &c);
  SHA256_Init(&c);
  SHA256_Update(&c, chain, 32);
  SHA256_Update(&c, kv_hash, 32);
  SHA256_Final(new_chain, &c);
  memcpy(chain, new_chain, 32);
  static const char tag[] = "verity-leaf/layer";
  uint8_t pos_layer[8];
  for (int i = 0; i < 4; i++) {
    pos_layer[i] = (uint8_t)(a[6] >> (8 * i));
    pos_layer[4 + i] = (uint8_t)(a[7] >> (8 * i));
  }
  SHA256_Init(&c);
  SHA256_Update(&c, tag, sizeof tag - 1);
  SHA256_Update(&c, pos_layer, 8);
  SHA256_Update(&c, x_hash, 32);
  SHA256_Update(&c, kv_hash, 32);
  SHA256_Update(&c, chain, 32);
  SHA256_Final(leaf, &c);
  SHA256_Init(&c);
  SHA256_Update(&c, acc, 32);
  SHA256_Update(&c, leaf, 32);
  SHA256_Final(acc, &c);
  return NULL;
}

/** Which instruction set each kernel uses on this CPU. */
static napi_value Features(napi_env env, napi_callback_info info) {
  (void)info;
  const char *text = use_avx512vnni ? (use_avx2 ? "avx512 avx512vnni avx2" : "avx512 avx512vnni")
                     : use_avx512   ? (use_avx2 ? "avx512 avx2" : "avx512")
                     : use_avx2     ? "avx2"
                                    : "portable";
  napi_value result;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &result);
  return result;
}

/** Instruction sets the kernels may use: the CPU's best, AVX2 at most, or none (the portable loops). */
enum { LEVEL_BEST, LEVEL_AVX2, LEVEL_PORTABLE };

static void detect(int level) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  use_avx512 = level == LEVEL_BEST && __builtin_cpu_supports("avx512f");
  use_avx2 = level != LEVEL_PORTABLE && __builtin_cpu_supports("avx2");
  use_avx512vnni = use_avx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512vnni");
#else
  (void)level;
#endif
}

/**
 * setPortable(true) forces the portable loops, setPortable('avx2') the AVX2 ones (no AVX-512), and
 * setPortable(false) restores the CPU's best: for the tests that compare them.
 */
static napi_value SetPortable(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  bool portable = false;
  int level = LEVEL_BEST;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_valuetype type = napi_undefined;
  if (argc > 0) napi_typeof(env, argv[0], &type);
  if (type == napi_string) {
    char name[8];
    size_t length;
    napi_get_value_string_utf8(env, argv[0], name, sizeof name, &length);
    if (strcmp(name, "avx2") != 0) return throw_error(env, "setPortable(true | false | 'avx2'): bad argument");
    level = LEVEL_AVX2;
  } else if (type == napi_boolean) {
    napi_get_value_bool(env, argv[0], &portable);
    level = portable ? LEVEL_PORTABLE : LEVEL_BEST;
  }
  detect(level);
  return NULL;
}

NAPI_MODULE_INIT() {
  detect(LEVEL_BEST);
  napi_property_descriptor props[] = {
    {"bind", NULL, Bind, NULL, NULL, NULL, napi_default, NULL},
    {"matvec", NULL, Matvec, NULL, NULL, NULL, napi_default, NULL},
    {"matvecQ8", NULL, MatvecQ8, NULL, NULL, NULL, napi_default, NULL},
    {"matvecQuant", NULL, MatvecQuant, NULL, NULL, NULL, napi_default, NULL},
    {"matmul", NULL, Matmul, NULL, NULL, NULL, napi_default, NULL},
    {"matmulQ8", NULL, MatmulQ8, NULL, NULL, NULL, napi_default, NULL},
    {"matmulQuant", NULL, MatmulQuant, NULL, NULL, NULL, napi_default, NULL},
    {"features", NULL, Features, NULL, NULL, NULL, napi_default, NULL},
    {"traceLayer", NULL, TraceLayer, NULL, NULL, NULL, napi_default, NULL},
    {"setPortable", NULL, SetPortable, NULL, NULL, NULL, napi_default, NULL},
    {"mapFile", NULL, MapFile, NULL, NULL, NULL, napi_default, NULL},
    {"window", NULL, Window, NULL, NULL, NULL, napi_default, NULL},
    {"view", NULL, View, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}
