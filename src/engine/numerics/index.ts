// The canonical kernels (docs/numerics.md), in builds that must agree bit for bit: `simd`
// (WebAssembly SIMD) and `scalar`, both compiled from ./wasm/kernels.ts, and `native` — the simd
// build with its matrix-vector products replaced by the AVX-512 C kernels (native/), present
// when the addon was built at install. The default is the fastest one present.
import { readFileSync } from 'node:fs';
import type { Ptr } from '../memory.js';
import { nativeKernels } from './native.js';

/** Version of the numerics spec the kernels implement; part of every job commitment. */
export const NUMERICS_SPEC_VERSION = 'verity-numerics/3';

export const KERNEL_PATHS = ['native', 'simd', 'scalar'] as const;
export type KernelPath = (typeof KERNEL_PATHS)[number];

/** The kernel builds present here, fastest first. */
export function availableKernelPaths(): KernelPath[] {
  return KERNEL_PATHS.filter((p) => p !== 'native' || nativeKernels() !== null);
}

export const defaultKernelPath = (): KernelPath => availableKernelPaths()[0];

export interface Kernels {
  readonly path: KernelPath;
  exp32(x: number): number;
  sin32(x: number): number;
  cos32(x: number): number;
  pow32(b: number, e: number): number;
  mapExp32(out: Ptr, x: Ptr, n: number): void;
  mapSin32(out: Ptr, x: Ptr, n: number): void;
  mapCos32(out: Ptr, x: Ptr, n: number): void;
  dot16(a: Ptr, b: Ptr, n: number): number;
  sum16(a: Ptr, n: number): number;
  /**
   * `weights` (native only): the memory handle holding the weight blocks, a mapped file's window
   * (src/engine/load/mapped.ts); scales and activations are always in this memory. The wasm builds
   * read weights only from their memory (sessions on mapped models refuse them).
   */
  matvec(out: Ptr, w: Ptr, x: Ptr, n: number, d: number, weights?: number): void;
  rmsnorm(out: Ptr, x: Ptr, w: Ptr, n: number, eps: number): void;
  add(x: Ptr, y: Ptr, n: number): void;
  softmax(x: Ptr, n: number): void;
  siluMul(h1: Ptr, h3: Ptr, n: number): void;
  ropeFrequencies(freqs: Ptr, headSize: number, theta: number): void;
  ropeTable(table: Ptr, freqs: Ptr, headSize: number, pos: number): void;
  rope(vec: Ptr, n: number, table: Ptr, headSize: number): void;
  attention(
    out: Ptr, q: Ptr, keys: Ptr, values: Ptr, att: Ptr,
    pos: number, nHeads: number, nKvHeads: number, headSize: number, firstHead: number, endHead: number,
  ): void;
  canonicalizeNaN(x: Ptr, n: number): void;
  quantizeQ8(qs: Ptr, scales: Ptr, x: Ptr, n: number): void;
  matvecQ8(out: Ptr, wq: Ptr, wd: Ptr, xq: Ptr, xd: Ptr, n: number, d: number, weights?: number): void;
  dequantizeRowQ8(out: Ptr, wq: Ptr, wd: Ptr, n: number): void;
  /** Q8_K activations (spec §4c): int8 values, one f32 scale per 256, the i32 sum of every 32. */
  quantizeQ8K(qs: Ptr, scales: Ptr, sums: Ptr, x: Ptr, n: number): void;
  /** Q4_0 and k-quant products; `ggmlType` is the weights' GGUF type number (dtypes.ts). */
  matvecQuant(ggmlType: number, out: Ptr, w: Ptr, wd: Ptr, xq: Ptr, xd: Ptr, xs: Ptr, n: number, d: number, weights?: number): void;
  /**
   * Matrix × matrix (spec "Batches"): `batch` input vectors stored one after another (f32: n floats
   * apart; Q8_0/Q8_K activations: n values, n/block scales and n/32 sums apart), output vector v at
   * out + 4·v·outStride. Each output element has the bits the matrix-vector kernel gives for that
   * vector alone.
   */
  matmul(out: Ptr, w: Ptr, x: Ptr, n: number, d: number, batch: number, outStride: number, weights?: number): void;
  matmulQ8(out: Ptr, wq: Ptr, wd: Ptr, xq: Ptr, xd: Ptr, n: number, d: number, batch: number, outStride: number, weights?: number): void;
  matmulQuant(
    ggmlType: number, out: Ptr, w: Ptr, wd: Ptr, xq: Ptr, xd: Ptr, xs: Ptr, n: number, d: number, batch: number, outStride: number, weights?: number,
  ): void;
  f16ToF32(out: Ptr, src: Ptr, n: number, srcStride: number): void;
  divideBy(x: Ptr, n: number, d: number): void;
  argmax(x: Ptr, n: number): number;
  sampleMult(p: Ptr, n: number, coin: number): number;
  toppKeys(keys: Ptr, p: Ptr, n: number, cutoff: number): number;
  toppPick(keys: Ptr, count: number, p: Ptr, topp: number, coin: number): number;
}

const compiled = new Map<string, WebAssembly.Module>();

function wasmModule(path: 'simd' | 'scalar'): WebAssembly.Module {
  let module = compiled.get(path);
  if (!module) {
    const bytes = readFileSync(new URL(`./kernels-${path}.wasm`, import.meta.url));
    module = new WebAssembly.Module(bytes);
    compiled.set(path, module);
  }
  return module;
}

/** Instantiates one kernel build over `memory`. Instances are cheap; modules are compiled once. */
export function instantiateKernels(memory: WebAssembly.Memory, path: KernelPath = defaultKernelPath()): Kernels {
  const wasm = path === 'native' ? 'simd' : path;
  const instance = new WebAssembly.Instance(wasmModule(wasm), { env: { memory } });
  const kernels = { ...(instance.exports as object), path } as Kernels;
  if (path !== 'native') return kernels;
  const native = nativeKernels();
  if (!native) throw new Error('the native kernels are not built on this machine (npm ci builds them where a C compiler is present)');
  const handle = native.bind(new Uint8Array(memory.buffer));
  return {
    ...kernels,
    matvec: (out, w, x, n, d, weights) => native.matvec(handle, out, w, x, n, d, weights),
    matvecQ8: (out, wq, wd, xq, xd, n, d, weights) => native.matvecQ8(handle, out, wq, wd, xq, xd, n, d, weights),
    // An addon built before the k-quants lacks matvecQuant: the simd build gives the same bits.
    matvecQuant: native.matvecQuant
      ? (type, out, w, wd, xq, xd, xs, n, d, weights) => native.matvecQuant(handle, type, out, w, wd, xq, xd, xs, n, d, weights)
      : kernels.matvecQuant,
    // An addon built before the batched products lacks them: loop its matrix-vector kernels (same bits).
    matmul: native.matmul
      ? (out, w, x, n, d, batch, outStride, weights) => native.matmul!(handle, out, w, x, n, d, batch, outStride, weights)
      : (out, w, x, n, d, batch, outStride, weights) => {
          for (let v = 0; v < batch; v++) native.matvec(handle, out + 4 * v * outStride, w, x + 4 * v * n, n, d, weights);
        },
    matmulQ8: native.matmulQ8
      ? (out, wq, wd, xq, xd, n, d, batch, outStride, weights) => native.matmulQ8!(handle, out, wq, wd, xq, xd, n, d, batch, outStride, weights)
      : (out, wq, wd, xq, xd, n, d, batch, outStride, weights) => {
          for (let v = 0; v < batch; v++) native.matvecQ8(handle, out + 4 * v * outStride, wq, wd, xq + v * n, xd + (4 * v * n) / 32, n, d, weights);
        },
    matmulQuant: native.matmulQuant
      ? (type, out, w, wd, xq, xd, xs, n, d, batch, outStride, weights) =>
          native.matmulQuant!(handle, type, out, w, wd, xq, xd, xs, n, d, batch, outStride, weights)
      : kernels.matmulQuant,
  };
}

export function isKernelPath(value: string): value is KernelPath {
  return (KERNEL_PATHS as readonly string[]).includes(value);
}
