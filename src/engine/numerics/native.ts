// The optional native kernels (native/verity_kernels.c), built by node-gyp at install.
import { createRequire } from 'node:module';

export interface NativeKernels {
  /** A handle for the shared memory that `view` spans. */
  bind(view: Uint8Array): number;
  /** The products' weight blocks (w, wq) are offsets into `weights` when given (a mapped file's window), else into `memory`. */
  matvec(memory: number, out: number, w: number, x: number, n: number, d: number, weights?: number): void;
  matvecQ8(memory: number, out: number, wq: number, wd: number, xq: number, xd: number, n: number, d: number, weights?: number): void;
  /** Q4_0 and k-quant products (the wasm kernels' matvecQuant, bit for bit). */
  matvecQuant(memory: number, ggmlType: number, out: number, w: number, wd: number, xq: number, xd: number, xs: number, n: number, d: number, weights?: number): void;
  /** The batched products (index.ts Kernels.matmul…); absent in addons built before them. */
  matmul?(memory: number, out: number, w: number, x: number, n: number, d: number, batch: number, outStride: number, weights?: number): void;
  matmulQ8?(memory: number, out: number, wq: number, wd: number, xq: number, xd: number, n: number, d: number, batch: number, outStride: number, weights?: number): void;
  matmulQuant?(
    memory: number, ggmlType: number, out: number, w: number, wd: number, xq: number, xd: number, xs: number,
    n: number, d: number, batch: number, outStride: number, weights?: number,
  ): void;
  /** A file mapped read-only (private, never copied) as a memory handle; it stays mapped for the process's life. Absent in addons built before it. */
  mapFile?(path: string): number;
  /** A handle for the same memory seen from `offset` on (so 32-bit offsets reach past 4 GiB). */
  window?(handle: number, offset: number): number;
  /** The bytes [offset, offset + length) of a mapped handle, as an ArrayBuffer over the mapping (no copy). */
  view?(handle: number, offset: number, length: number): ArrayBuffer;
  /** One layer step's trace leaf (see src/proof/trace.ts, which also does it without the addon). */
  traceLayer(
    memory: number, x: number, key: number, value: number, dim: number, kvDim: number,
    pos: number, layer: number, chain: number, acc: number, out: number,
  ): void;
  /** The instruction sets in use, e.g. "avx512 avx512vnni", or "portable". */
  features(): string;
  /** Forces the portable C loops (true), the AVX2 ones ('avx2': no AVX-512) or the CPU's best (false). */
  setPortable(portable: boolean | 'avx2'): void;
}

let loaded: NativeKernels | null | undefined;

/** The addon, or null when it was not built (or VERITY_NATIVE=0 turns it off). */
export function nativeKernels(): NativeKernels | null {
  if (loaded === undefined && process.env.VERITY_NATIVE === '0') loaded = null;
  if (loaded === undefined) {
    try {
      loaded = createRequire(import.meta.url)('../../../../build/Release/verity_kernels.node') as NativeKernels;
    } catch {
      loaded = null;
    }
  }
  return loaded;
}
