// Weights mapped from the model file instead of copied into the WebAssembly memory (which a wasm32
// engine cannot grow past 4 GiB). The native addon maps the file read-only and private; matrices
// then name a memory handle (Matrix.memory) and an offset in it, and only the native kernels can
// reach them. Small things stay in the arena: vectors, the f32 block scales prepared at load, KV
// caches and activations. A mapping lives as long as the process (views of it are handed out for
// hashing and exports, so unmapping could leave one dangling); the file must not be truncated.
import { EngineError } from '../errors.js';
import type { Arena, Ptr } from '../memory.js';
import type { Matrix, Model } from '../model.js';
import { canonicalTensors } from '../model.js';
import { nativeKernels, type NativeKernels } from '../numerics/native.js';

/** Where a model's matrices live: copied into the arena, mapped from the file, or chosen by size. */
export type WeightPlacement = 'memory' | 'mapped' | 'auto';

/** Kernel offsets are 32-bit and the thread control block holds them as int32: windows stay below 2 GiB. */
export const WINDOW_BYTES = 2 ** 31;

type Mapper = Required<Pick<NativeKernels, 'mapFile' | 'window' | 'view'>>;

/** The addon's mapping functions, or null (no addon, or one built before them). */
export function mapper(): Mapper | null {
  const n = nativeKernels();
  return n && n.mapFile && n.window && n.view ? (n as unknown as Mapper) : null;
}

export const canMapWeights = (): boolean => mapper() !== null;

export interface MappedFile {
  /** The memory handle and offset (below WINDOW_BYTES) at which the file's bytes [at, at + bytes) are reachable. */
  place(at: number, bytes: number): { memory: number; ptr: number };
  /** The file's bytes [at, at + length) without a copy. */
  bytes(at: number, length: number): Uint8Array;
}

/**
 * Maps `path` for the tensors at `extents` (file offsets and sizes). Windows are planned over them
 * in offset order: a new one starts at a tensor that would end beyond WINDOW_BYTES of the current
 * one, so a 7 GB file needs four handles.
 */
export function mapFile(path: string, extents: { at: number; bytes: number }[]): MappedFile {
  const m = mapper();
  if (!m) throw new EngineError('mapping weights needs the native addon (npm ci builds it where a C compiler is present)');
  const file = m.mapFile(path);
  const windows: { start: number; memory: number }[] = [{ start: 0, memory: file }];
  for (const { at, bytes } of [...extents].sort((a, b) => a.at - b.at)) {
    if (bytes > WINDOW_BYTES) throw new EngineError(`a tensor of ${bytes} bytes exceeds the mapped window of ${WINDOW_BYTES}`);
    const last = windows[windows.length - 1];
    if (at + bytes - last.start > WINDOW_BYTES) windows.push({ start: at, memory: m.window(file, at) });
  }
  return {
    place(at, bytes) {
      const w = windows.find((w) => at >= w.start && at + bytes - w.start <= WINDOW_BYTES);
      if (!w) throw new EngineError(`no mapped window holds bytes ${at}..${at + bytes}`);
      return { memory: w.memory, ptr: at - w.start };
    },
    bytes: (at, length) => new Uint8Array(m.view(file, at, length)),
  };
}

/**
 * The bytes [offset, offset + length) of a matrix (or tensor): a view of the arena, or of the
 * mapped file. Writes through a mapped view fault (the mapping is read-only).
 */
export function tensorBytes(arena: Arena, m: { ptr: Ptr; memory?: number }, offset: number, length: number): Uint8Array {
  if (m.memory === undefined) return arena.u8(m.ptr + offset, length);
  return new Uint8Array(mapper()!.view(m.memory, m.ptr + offset, length));
}

export function tensorF32(arena: Arena, m: { ptr: Ptr; memory?: number }, offset: number, count: number): Float32Array {
  if (m.memory === undefined) return arena.f32(m.ptr + offset, count);
  const bytes = tensorBytes(arena, m, offset, 4 * count);
  return new Float32Array(bytes.buffer, bytes.byteOffset, count);
}

/** Whether any of the model's tensors lives in a mapped file (then only the native kernels run it). */
export function hasMappedWeights(model: Model): boolean {
  return canonicalTensors(model.config, model.weights).some((t) => t.memory !== undefined);
}

/**
 * A copy of a mapped matrix in the arena (an arena matrix is returned as it is), for code that
 * changes weights in place (src/node/strategies.ts perturbLayer): the file's pages stay untouched.
 */
export function ownedMatrix(model: Model, m: Matrix, bytes: number): Matrix {
  if (m.memory === undefined) return m;
  const ptr = model.arena.alloc(bytes);
  model.arena.u8(ptr, bytes).set(tensorBytes(model.arena, m, 0, bytes));
  return { dtype: m.dtype, ptr, scales: m.scales };
}
