// The canonical kernels against docs/numerics.md: special-function accuracy over dense sweeps,
// the reduction layout against an independent transcription of the spec, and bit equality of the
// SIMD and scalar builds on awkward sizes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KERNEL_PATHS, createArena, instantiateKernels, type Kernels } from '../../src/engine/index.js';

const f32 = Math.fround;
const arena = createArena(1 << 26);
const builds = Object.fromEntries(KERNEL_PATHS.map((p) => [p, instantiateKernels(arena.memory, p)])) as Record<string, Kernels>;

/** Seeded 32-bit words (xorshift32), for reproducible inputs. */
function randomWords(n: number, seed: number): Uint32Array {
  let s = seed >>> 0 || 1;
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s;
  }
  return out;
}

/** Seeded uniform floats in [-scale, scale). */
function randomFloats(n: number, seed: number, scale = 1): Float32Array {
  return Float32Array.from(randomWords(n, seed), (w) => (w / 2 ** 31 - 1) * scale);
}

/** The error of `got` in units of the f32 ulp at the exact value `exact`. */
function ulpError(got: number, exact: number): number {
  const r = f32(exact);
  if (!Number.isFinite(r)) return got === r ? 0 : Infinity;
  const magnitude = Math.abs(exact);
  const exponent = magnitude === 0 ? -126 : Math.max(Math.floor(Math.log2(magnitude)), -126);
  return Math.abs(got - exact) / 2 ** (exponent - 23);
}

function sweep(
  k: Kernels,
  map: 'mapExp32' | 'mapSin32' | 'mapCos32',
  exact: (x: number) => number,
  inputs: Float32Array,
): { maxUlp: number; at: number } {
  const mark = arena.mark();
  const x = arena.alloc(4 * inputs.length);
  const y = arena.alloc(4 * inputs.length);
  arena.f32(x, inputs.length).set(inputs);
  k[map](y, x, inputs.length);
  const out = arena.f32(y, inputs.length);
  let maxUlp = 0;
  let at = 0;
  for (let i = 0; i < inputs.length; i++) {
    const e = ulpError(out[i], exact(inputs[i]));
    if (e > maxUlp) [maxUlp, at] = [e, inputs[i]];
  }
  arena.release(mark);
  return { maxUlp, at };
}

function evenlySpaced(lo: number, hi: number, n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => lo + ((hi - lo) * i) / (n - 1));
}

/** Random f32 bit patterns whose values fall in [lo, hi]. */
function randomBitPatterns(lo: number, hi: number, n: number, seed: number): Float32Array {
  return new Float32Array(randomWords(n, seed).buffer).filter((v) => v >= lo && v <= hi);
}

const SPEC_ULP_BOUND = 0.501;
const N = 1 << 22;

for (const path of KERNEL_PATHS) {
  const k = builds[path];
  test(`${path}: exp32 is within ${SPEC_ULP_BOUND} ulp on [-104, 89]`, () => {
    for (const inputs of [evenlySpaced(-104, 89, N), evenlySpaced(-1, 1, N / 4), randomBitPatterns(-104, 89, N / 4, 7)]) {
      const { maxUlp, at } = sweep(k, 'mapExp32', Math.exp, inputs);
      assert.ok(maxUlp <= SPEC_ULP_BOUND, `max error ${maxUlp} ulp at ${at}`);
    }
  });

  test(`${path}: sin32 and cos32 are within ${SPEC_ULP_BOUND} ulp on [-2^20, 2^20]`, () => {
    for (const inputs of [evenlySpaced(-(2 ** 20), 2 ** 20, N / 2), evenlySpaced(-13, 13, N / 2), randomBitPatterns(-(2 ** 20), 2 ** 20, N / 4, 11)]) {
      const s = sweep(k, 'mapSin32', Math.sin, inputs);
      assert.ok(s.maxUlp <= SPEC_ULP_BOUND, `sin: max error ${s.maxUlp} ulp at ${s.at}`);
      const c = sweep(k, 'mapCos32', Math.cos, inputs);
      assert.ok(c.maxUlp <= SPEC_ULP_BOUND, `cos: max error ${c.maxUlp} ulp at ${c.at}`);
    }
  });

  test(`${path}: special values follow the spec`, () => {
    assert.ok(Number.isNaN(k.exp32(NaN)));
    assert.equal(k.exp32(Infinity), Infinity);
    assert.equal(k.exp32(-Infinity), 0);
    assert.equal(k.exp32(0), 1);
    assert.equal(k.exp32(89), Infinity); // e^89 overflows f32
    assert.equal(k.exp32(-104), f32(Math.exp(-104))); // a subnormal, correctly rounded
    assert.ok(Object.is(k.sin32(-0), -0));
    assert.equal(k.cos32(-0), 1);
    assert.ok(Number.isNaN(k.sin32(2 ** 20 + 1)) && Number.isNaN(k.cos32(NaN)) && Number.isNaN(k.sin32(Infinity)));
    // RoPE's frequencies for head size 8 are exact powers of ten, as with a correctly rounded powf.
    assert.deepEqual([0.25, 0.5, 0.75].map((e) => k.pow32(10000, e)), [10, 100, 1000]);
    assert.equal(k.pow32(10000, 0), 1);
  });
}

/** sum16 / dot16 transcribed from docs/numerics.md §2, in plain f32 arithmetic. */
function specSum16(terms: number[]): number {
  const s = new Array<number>(16).fill(0);
  terms.forEach((t, j) => (s[j % 16] = f32(s[j % 16] + t)));
  const t = Array.from({ length: 8 }, (_, i) => f32(s[i] + s[i + 8]));
  const u = Array.from({ length: 4 }, (_, i) => f32(t[i] + t[i + 4]));
  const v = Array.from({ length: 2 }, (_, i) => f32(u[i] + u[i + 2]));
  return f32(v[0] + v[1]);
}

test('dot16 and sum16 follow the spec layout exactly, in both builds, for every tail length', () => {
  for (let n = 1; n <= 70; n++) {
    const a = randomFloats(n, n, 1000);
    const b = randomFloats(n, n + 1000, 0.001);
    const expectedDot = specSum16(Array.from(a, (x, j) => f32(x * b[j])));
    const expectedSum = specSum16(Array.from(a));
    const mark = arena.mark();
    const pa = arena.alloc(4 * n);
    const pb = arena.alloc(4 * n);
    arena.f32(pa, n).set(a);
    arena.f32(pb, n).set(b);
    for (const path of KERNEL_PATHS) {
      assert.ok(Object.is(builds[path].dot16(pa, pb, n), expectedDot), `${path} dot16 n=${n}`);
      assert.ok(Object.is(builds[path].sum16(pa, n), expectedSum), `${path} sum16 n=${n}`);
    }
    arena.release(mark);
  }
});

test('the order is part of the result: a left-to-right sum differs from sum16 on some inputs', () => {
  // Guards the test above against being vacuous: the layout must matter for it to be checked.
  const a = randomFloats(64, 3, 1e4);
  const sequential = Array.from(a).reduce((acc, x) => f32(acc + x), 0);
  assert.notEqual(sequential, specSum16(Array.from(a)));
});

/** Runs one kernel call in every build on identical inputs and returns each build's output bytes. */
function outputsPerBuild(sizes: number[], seed: number, call: (k: Kernels, ptrs: number[]) => void, outputs: number[]): string[] {
  return KERNEL_PATHS.map((path) => {
    const mark = arena.mark();
    const ptrs = sizes.map((n, i) => {
      const p = arena.alloc(4 * n);
      arena.f32(p, n).set(randomFloats(n, seed + i));
      return p;
    });
    call(builds[path], ptrs);
    const bytes = outputs.map((i) => Buffer.from(arena.u8(ptrs[i], 4 * sizes[i])).toString('hex')).join('|');
    arena.release(mark);
    return bytes;
  });
}

test('SIMD and scalar builds give identical bits for every model operation', () => {
  const agree = (label: string, results: string[]): void => assert.ok(results.every((r) => r === results[0]), label);
  for (const [n, d] of [[1, 3], [7, 5], [16, 16], [33, 9], [100, 17], [288, 31]]) {
    agree(`matvec ${n}x${d}`, outputsPerBuild([d, n * d, n], n, (k, [o, w, x]) => k.matvec(o, w, x, n, d), [0]));
    agree(`rmsnorm ${n}`, outputsPerBuild([n, n, n], n, (k, [o, x, w]) => k.rmsnorm(o, x, w, n, f32(1e-5)), [0]));
    agree(`add ${n}`, outputsPerBuild([n, n], n, (k, [x, y]) => k.add(x, y, n), [0]));
    agree(`softmax ${n}`, outputsPerBuild([n], n, (k, [x]) => k.softmax(x, n), [0]));
    agree(`siluMul ${n}`, outputsPerBuild([n, n], n, (k, [a, b]) => k.siluMul(a, b, n), [0]));
  }
  for (const [pos, heads, kvHeads, hs] of [[0, 1, 1, 2], [5, 6, 2, 12], [20, 8, 4, 8], [3, 4, 4, 64]]) {
    const dim = heads * hs;
    const kv = kvHeads * hs;
    agree(
      `attention pos ${pos} heads ${heads}/${kvHeads} hs ${hs}`,
      outputsPerBuild([dim, dim, (pos + 1) * kv, (pos + 1) * kv, pos + 1], pos, (k, [o, q, keys, values, att]) => k.attention(o, q, keys, values, att, pos, heads, kvHeads, hs, 0, heads), [0]),
    );
    agree(
      `rope hs ${hs}`,
      outputsPerBuild([dim, hs / 2, hs], hs, (k, [v, freqs, table]) => {
        k.ropeFrequencies(freqs, hs, 10000);
        k.ropeTable(table, freqs, hs, pos + 100);
        k.rope(v, dim, table, hs);
      }, [0, 2]),
    );
  }
});

test('canonicalizeNaN rewrites every NaN payload to 0x7fc00000 and leaves other values alone', () => {
  const k = builds.simd;
  const mark = arena.mark();
  const p = arena.alloc(16);
  const bits = new Uint32Array(arena.memory.buffer, p, 4);
  bits.set([0xffc00000, 0x7f800001, 0x3f800000, 0x80000000]); // -NaN, signalling NaN, 1.0, -0.0
  k.canonicalizeNaN(p, 4);
  assert.deepEqual(Array.from(new Uint32Array(arena.memory.buffer, p, 4)), [0x7fc00000, 0x7fc00000, 0x3f800000, 0x80000000]);
  arena.release(mark);
});
