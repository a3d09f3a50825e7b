// The seam a session runs on: embedding, the layer step, the head's classifier, and reading step
// outputs back. steps.ts calls only these for work over the weights, so it does not care where the
// weights live; a GPU backend would implement the same four and keep its buffers on the device.
//
// Two backends today, both running steps.ts's CPU code (cpuEmbed, cpuLayerStep, cpuClassify):
//   wasm    weights in the WebAssembly memory; any kernel build (native, simd, scalar).
//   mapped  matrices mapped from the file (load/mapped.ts); only the native kernels reach them,
//           and embedding rows are read from the mapping and dequantised on the CPU, exactly.
import { EngineError } from './errors.js';
import { hasMappedWeights, tensorBytes, tensorF32 } from './load/mapped.js';
import type { Ptr } from './memory.js';
import type { Model } from './model.js';
import type { KernelPath } from './numerics/index.js';
import { rowBytes } from './dtypes.js';
import { dequantizeBlocks } from './quantize.js';
import { cpuClassify, cpuEmbed, cpuLayerBatch, cpuLayerStep, type Session } from './steps.js';

export interface SessionBackend {
  readonly name: 'wasm' | 'mapped';
  /** x ← the token's embedding row. */
  embed(s: Session, token: number): void;
  /** One transformer block at one position: updates x, writes the position's K/V rows. */
  layerStep(s: Session, layer: number, pos: number): void;
  /** One transformer block for the prompt batch's positions first..first+count−1 (steps.ts promptBatch). */
  layerBatch(s: Session, layer: number, first: number, count: number): void;
  /** Final norm and classifier: fills the session's logits from x. */
  classify(s: Session): void;
  /** A step output (x, a K/V row, the logits) as f32 values: a view of session memory on the CPU backends. */
  read(s: Session, ptr: Ptr, n: number): Float32Array;
}

const read = (s: Session, ptr: Ptr, n: number): Float32Array => s.model.arena.f32(ptr, n);

const wasmBackend: SessionBackend = { name: 'wasm', embed: cpuEmbed, layerStep: cpuLayerStep, layerBatch: cpuLayerBatch, classify: cpuClassify, read };

/** The token's row from the mapping, dequantised as the kernels do (Q8_0 with the prepared f32 scale, spec §4a). */
function mappedEmbed(s: Session, token: number): void {
  const table = s.model.weights.tokenEmbedding;
  if (table.memory === undefined) return cpuEmbed(s, token);
  const { dim } = s.model.config;
  const arena = s.model.arena;
  const x = arena.f32(s.x, dim);
  if (table.dtype === 'f32') return x.set(tensorF32(arena, table, 4 * token * dim, dim));
  const bytes = rowBytes(table.dtype, dim);
  const row = tensorBytes(arena, table, token * bytes, bytes);
  // Every type, Q8_0 included, from the row's own blocks (a mapped Q8_0 has no prepared scales).
  x.set(dequantizeBlocks(table.dtype, row));
}

const mappedBackend: SessionBackend = { name: 'mapped', embed: mappedEmbed, layerStep: cpuLayerStep, layerBatch: cpuLayerBatch, classify: cpuClassify, read };

/** The backend for a session of `model` on `kernels`; a mapped model needs the native kernels. */
export function sessionBackend(model: Model, kernels: KernelPath): SessionBackend {
  if (!hasMappedWeights(model)) return wasmBackend;
  if (kernels !== 'native') {
    throw new EngineError(`this model's weights are mapped from its file, which only the native kernels reach (asked for '${kernels}'); load it with weights: 'memory' to use the WebAssembly kernels`);
  }
  return mappedBackend;
}
