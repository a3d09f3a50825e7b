import { createHash } from 'node:crypto';
import type { StepObserver } from './generate.js';

const bytesOf = (v: Float32Array): Uint8Array => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

/** Layer step output bytes: x ‖ key ‖ value, f32 little-endian. */
export function layerOutputBytes(out: { x: Float32Array; key: Float32Array; value: Float32Array }): Uint8Array[] {
  return [bytesOf(out.x), bytesOf(out.key), bytesOf(out.value)];
}

/** Head step output bytes: token (u32) ‖ RNG state (u64), little-endian. */
export function headOutputBytes(token: number, rngState: bigint): Uint8Array {
  const out = new DataView(new ArrayBuffer(12));
  out.setUint32(0, token, true);
  out.setBigUint64(4, rngState, true);
  return new Uint8Array(out.buffer);
}

/** sha256 over every step's outputs in order: equal fingerprints mean bit-identical runs. */
export function createFingerprint(): StepObserver & { hex(): string } {
  const hash = createHash('sha256');
  return {
    layer(_pos, _layer, out) {
      for (const part of layerOutputBytes(out)) hash.update(part);
    },
    head(_pos, token, rngState) {
      hash.update(headOutputBytes(token, rngState));
    },
    hex: () => hash.digest('hex'),
  };
}
