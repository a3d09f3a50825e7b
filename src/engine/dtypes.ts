// The weight types, one row each: what every loader, writer, the model id, the kernel dispatch and
// the thread splitter know about a type (like ggml's type_traits). Nothing else restates a block
// size. The formulas behind each type are docs/numerics.md §4a (Q8_0) and §4c (Q4_0, the k-quants).

/** Weight storage types: f32 (F16 files are widened at load), GGUF's Q8_0 and Q4_0, and the k-quants. */
export type DType = 'f32' | 'q8_0' | 'q4_0' | 'q4_k' | 'q5_k' | 'q6_k';

/**
 * How a product quantises its input vector: not at all (f32), per block of 32 with an f32 scale
 * (q8_0), or per super-block of 256 with an f32 scale plus the exact sum of every 32 values (q8_k).
 */
export type ActivationType = 'f32' | 'q8_0' | 'q8_k';

export interface DTypeTraits {
  readonly dtype: DType;
  /** GGUF's ggml_type number and name. */
  readonly ggmlType: number;
  readonly ggmlName: string;
  /** Elements per (super-)block: a row must be whole blocks. */
  readonly block: number;
  /** Bytes per block as stored in the file (and hashed by the model id). */
  readonly blockBytes: number;
  readonly activation: ActivationType;
  /** Whether a token embedding may be stored in this type (its rows are dequantised exactly). */
  readonly embedding: boolean;
  /**
   * Load-time preparation: the byte offsets, inside each block, of the f16 scales that are widened
   * once to an f32 array beside the blocks (`Matrix.scales`, `prepared` floats per block).
   */
  readonly scaleOffsets: readonly number[];
  /** A non-finite f16 scale makes the block malformed (Q8_0 predates this rule and keeps accepting it). */
  readonly finiteScales: boolean;
}

const row = (t: DTypeTraits): DTypeTraits => Object.freeze(t);

export const DTYPES: Readonly<Record<DType, DTypeTraits>> = {
  f32: row({ dtype: 'f32', ggmlType: 0, ggmlName: 'F32', block: 1, blockBytes: 4, activation: 'f32', embedding: true, scaleOffsets: [], finiteScales: false }),
  q8_0: row({ dtype: 'q8_0', ggmlType: 8, ggmlName: 'Q8_0', block: 32, blockBytes: 34, activation: 'q8_0', embedding: true, scaleOffsets: [0], finiteScales: false }),
  q4_0: row({ dtype: 'q4_0', ggmlType: 2, ggmlName: 'Q4_0', block: 32, blockBytes: 18, activation: 'q8_0', embedding: true, scaleOffsets: [0], finiteScales: true }),
  // d, dmin (f16), 12 bytes of packed 6-bit scales and mins, 128 bytes of nibbles.
  q4_k: row({ dtype: 'q4_k', ggmlType: 12, ggmlName: 'Q4_K', block: 256, blockBytes: 144, activation: 'q8_k', embedding: true, scaleOffsets: [0, 2], finiteScales: true }),
  // as Q4_K plus 32 bytes of fifth bits (qh) before the nibbles.
  q5_k: row({ dtype: 'q5_k', ggmlType: 13, ggmlName: 'Q5_K', block: 256, blockBytes: 176, activation: 'q8_k', embedding: true, scaleOffsets: [0, 2], finiteScales: true }),
  // ql (128 bytes of low nibbles), qh (64 bytes of high 2-bit pairs), 16 int8 scales, d (f16).
  q6_k: row({ dtype: 'q6_k', ggmlType: 14, ggmlName: 'Q6_K', block: 256, blockBytes: 210, activation: 'q8_k', embedding: true, scaleOffsets: [208], finiteScales: true }),
};

/** IEEE binary16 bits → the f32 bits of the same value (exact; NaN payloads kept, as the kernels' f16ToF32). */
export function f16ToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  let e = 113;
  let m = mant;
  while ((m & 0x400) === 0) {
    m <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

/** The quantised types (every type but f32), in a fixed order. */
export const QUANTIZED_DTYPES: readonly DType[] = ['q8_0', 'q4_0', 'q4_k', 'q5_k', 'q6_k'];

export const traits = (dtype: DType): DTypeTraits => DTYPES[dtype];

export const isDType = (value: unknown): value is DType => typeof value === 'string' && Object.hasOwn(DTYPES, value);

/** The type stored under a GGUF type number, if it is one of ours. */
export function dtypeOfGgml(ggmlType: number): DType | undefined {
  return (Object.keys(DTYPES) as DType[]).find((d) => DTYPES[d].ggmlType === ggmlType);
}

/** f32 values the load-time preparation writes per block. */
export const preparedPerBlock = (dtype: DType): number => DTYPES[dtype].scaleOffsets.length;

/** Whether a row of `cols` elements is whole blocks of this type. */
export const rowsFit = (dtype: DType, cols: number): boolean => cols % DTYPES[dtype].block === 0;

/** Bytes of one row of `cols` elements (cols whole blocks). */
export const rowBytes = (dtype: DType, cols: number): number => (cols / DTYPES[dtype].block) * DTYPES[dtype].blockBytes;

/** Bytes of the prepared scales of one row. */
export const preparedRowBytes = (dtype: DType, cols: number): number => 4 * (cols / DTYPES[dtype].block) * preparedPerBlock(dtype);

/**
 * Widens each block's f16 scales into `out` (f32 bit patterns, `preparedPerBlock` per block, in
 * block order) and returns the first malformed block's problem, or null. Exact: no rounding.
 */
export function prepareScales(dtype: DType, blocks: Uint8Array, out: Uint32Array): string | null {
  const t = DTYPES[dtype];
  const count = blocks.length / t.blockBytes;
  const per = t.scaleOffsets.length;
  let problem: string | null = null;
  for (let b = 0; b < count; b++) {
    const at = b * t.blockBytes;
    for (let k = 0; k < per; k++) {
      const o = at + t.scaleOffsets[k];
      const h = blocks[o] | (blocks[o + 1] << 8);
      if (t.finiteScales && (h & 0x7c00) === 0x7c00 && problem === null) {
        problem = `block ${b} has a non-finite f16 scale (0x${h.toString(16).padStart(4, '0')} at byte ${t.scaleOffsets[k]} of the block)`;
      }
      out[b * per + k] = f16ToF32Bits(h);
    }
  }
  return problem;
}
