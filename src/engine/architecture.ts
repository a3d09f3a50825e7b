// What the supported architectures compute differently, in one table (docs/numerics.md §4b):
//   llama  — Llama 1/2/3, Mistral (GGUF writes Mistral as llama): RoPE on adjacent pairs, no biases
//   qwen2  — Qwen2/2.5: Q/K/V biases after the matrix products, RoPE on pairs (i, i + hs/2) ("NEOX")
// Either may carry per-frequency RoPE factors (`rope_freqs.weight`, Llama 3.1+), divided into the
// frequencies once at load.
import type { Arena, Ptr } from './memory.js';
import type { ModelConfig } from './model.js';
import type { Kernels } from './numerics/index.js';

export type RopeStyle = 'interleaved' | 'neox';

export const ARCHITECTURES = {
  llama: { rope: 'interleaved', qkvBias: false },
  qwen2: { rope: 'neox', qkvBias: true },
} as const satisfies Record<string, { rope: RopeStyle; qkvBias: boolean }>;

export type Architecture = keyof typeof ARCHITECTURES;

export const isArchitecture = (name: unknown): name is Architecture => typeof name === 'string' && Object.hasOwn(ARCHITECTURES, name);

/** The config's architecture (a config without one is llama: llama2.c checkpoints, older ids). */
export const architectureOf = (c: Pick<ModelConfig, 'architecture'>): (typeof ARCHITECTURES)[Architecture] => ARCHITECTURES[c.architecture ?? 'llama'];

/**
 * The RoPE frequencies into `freqs` (headSize/2 floats): `1 ⊘ pow32(theta, 2i/hs)` by the kernels,
 * then, with factors, `freq[i] ⊘ factor[i]` (Math.fround of the quotient of two f32 values is the
 * IEEE f32 division).
 */
export function ropeFrequencies(arena: Arena, kernels: Kernels, c: ModelConfig, freqs: Ptr, factors: Ptr): void {
  kernels.ropeFrequencies(freqs, c.headSize, c.ropeTheta);
  if (!factors) return;
  const f = arena.f32(freqs, c.headSize / 2);
  const by = arena.f32(factors, c.headSize / 2);
  for (let i = 0; i < f.length; i++) f[i] = Math.fround(f[i] / by[i]);
}

/**
 * NEOX RoPE: in each head of vec (length n), pair i is (v[i], v[i + hs/2]), rotated by the table's
 * angle i (table[2i] = cos, table[2i+1] = sin). Each product and sum is rounded to f32 (Math.fround
 * of a product or sum of two f32 values is the IEEE f32 operation), as in the interleaved kernel.
 */
export function ropeNeox(arena: Arena, vec: Ptr, n: number, table: Ptr, headSize: number): void {
  const v = arena.f32(vec, n);
  const t = arena.f32(table, headSize);
  const half = headSize / 2;
  for (let h = 0; h < n; h += headSize) {
    for (let i = 0; i < half; i++) {
      const c = t[2 * i];
      const s = t[2 * i + 1];
      const v0 = v[h + i];
      const v1 = v[h + i + half];
      v[h + i] = Math.fround(Math.fround(v0 * c) - Math.fround(v1 * s));
      v[h + i + half] = Math.fround(Math.fround(v0 * s) + Math.fround(v1 * c));
    }
  }
}

/** Rotates q or k (length n) with the RoPE table, in the config's style. */
export function rotate(c: ModelConfig, kernels: Kernels, arena: Arena, vec: Ptr, n: number, table: Ptr): void {
  if (architectureOf(c).rope === 'neox') ropeNeox(arena, vec, n, table, c.headSize);
  else kernels.rope(vec, n, table, c.headSize);
}

const LAYER_MATRICES = ['attn_norm', 'attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_norm', 'ffn_gate', 'ffn_down', 'ffn_up'];

/** Every tensor a layer step reads (what a referee fetches to replay one). */
export function layerStepTensors(c: ModelConfig, layer: number): string[] {
  const names = LAYER_MATRICES.map((n) => `blk.${layer}.${n}.weight`);
  if (architectureOf(c).qkvBias) names.push(`blk.${layer}.attn_q.bias`, `blk.${layer}.attn_k.bias`, `blk.${layer}.attn_v.bias`);
  if (c.ropeFactors) names.push('rope_freqs.weight');
  return names;
}
