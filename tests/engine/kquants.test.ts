// Q4_0 and the k-quants (docs/numerics.md §4c): the kernel builds agree bit for bit with each other
// and with a second, naive implementation of the spec's formulas written here; quantisation error
// is bounded; models of each type give the same fingerprint at 1, 2 and 4 threads on every build,
// survive the model id's round trip (assembled from their canonical parts); malformed files fail
// with one line.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  DTYPES,
  ModelFileError,
  assembleModel,
  availableKernelPaths,
  chunkLayout,
  closeThreads,
  createArena,
  createFingerprint,
  dequantizeBlocks,
  f32ToF16,
  generate,
  ggufBytes,
  ggufFromModel,
  instantiateKernels,
  loadModel,
  modelIdentity,
  modelTreeLeaves,
  nativeKernels,
  parseCanonicalConfig,
  quantizeBlocks,
  rowBytes,
  threadPoolCount,
  writeGguf,
  type DType,
  type KernelPath,
  type Kernels,
  type Model,
} from '../../src/engine/index.js';
import { randomFloats, writeRandomLlama2c } from '../../bench/random-model.js';
import { stories260K, tok512, withTempDir } from '../helpers.js';

const f32 = Math.fround;
type QuantType = 'q4_0' | 'q4_k' | 'q5_k' | 'q6_k';
const TYPES: QuantType[] = ['q4_0', 'q4_k', 'q5_k', 'q6_k'];

/** Random blocks with finite f16 scales of a plausible size (random bytes elsewhere). */
function randomBlocks(dtype: QuantType, count: number, seed: number): Uint8Array {
  const t = DTYPES[dtype];
  const bytes = Uint8Array.from(randomFloats(count * t.blockBytes, seed), (v) => Math.floor((v + 1) * 128));
  const scales = randomFloats(count * 2, seed + 1);
  for (let b = 0; b < count; b++) {
    t.scaleOffsets.forEach((o, k) => {
      const h = f32ToF16(scales[2 * b + k] / 64);
      bytes[b * t.blockBytes + o] = h & 0xff;
      bytes[b * t.blockBytes + o + 1] = h >> 8;
    });
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// The spec, naively: activations, each type's integer dot and term, sum16.

function half(bytes: Uint8Array, at: number): number {
  const h = bytes[at] | (bytes[at + 1] << 8);
  const e = (h >> 10) & 31;
  const m = h & 1023;
  const v = e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15);
  return h & 0x8000 ? -v : v;
}

function roundHalfAway(v: number): number {
  const t = Math.trunc(v);
  const frac = f32(v - t);
  return frac >= 0.5 ? t + 1 : frac <= -0.5 ? t - 1 : t;
}

/** §4a/§4c activations: per block, d = max|x| ⊘ 127, q = roundHalfAway(clamp(x ⊗ (1 ⊘ d))). */
function quantizeActivations(x: Float32Array, block: number): { q: Int8Array; d: Float32Array } {
  const q = new Int8Array(x.length);
  const d = new Float32Array(x.length / block);
  for (let b = 0; b < d.length; b++) {
    let amax = 0;
    for (let j = 0; j < block; j++) amax = Math.max(amax, Math.abs(x[b * block + j]));
    d[b] = f32(amax / 127);
    const id = d[b] !== 0 ? f32(1 / d[b]) : 0;
    for (let j = 0; j < block; j++) q[b * block + j] = roundHalfAway(Math.max(-127, Math.min(127, f32(x[b * block + j] * id))));
  }
  return { q, d };
}

/** The integer weights of one block and the integer (sub-)scales/mins, read straight off the layout. */
function blockValues(dtype: QuantType, w: Uint8Array, at: number): { q: number[]; scale: number[]; min: number[]; sub: number } {
  const q: number[] = [];
  if (dtype === 'q4_0') {
    for (let j = 0; j < 32; j++) q.push((j < 16 ? w[at + 2 + j] & 15 : w[at + 2 + j - 16] >> 4) - 8);
    return { q, scale: [1], min: [0], sub: 32 };
  }
  if (dtype === 'q6_k') {
    for (let i = 0; i < 256; i++) {
      const h = Math.floor(i / 128), r = i % 128, quarter = Math.floor(r / 32), l = r % 32;
      const byte = w[at + 64 * h + l + (quarter % 2) * 32];
      const low = quarter >= 2 ? byte >> 4 : byte & 15;
      const high = (w[at + 128 + 32 * h + l] >> (2 * quarter)) & 3;
      q.push(low + 16 * high - 32);
    }
    const scale = Array.from({ length: 16 }, (_, j) => (w[at + 192 + j] > 127 ? w[at + 192 + j] - 256 : w[at + 192 + j]));
    return { q, scale, min: new Array(16).fill(0), sub: 16 };
  }
  const s = (k: number): number => w[at + 4 + k];
  const scale: number[] = [], min: number[] = [];
  for (let j = 0; j < 8; j++) {
    scale.push(j < 4 ? s(j) % 64 : (s(j + 4) % 16) + 16 * (s(j - 4) >> 6));
    min.push(j < 4 ? s(j + 4) % 64 : (s(j + 4) >> 4) + 16 * (s(j) >> 6));
  }
  const qs = at + (dtype === 'q5_k' ? 48 : 16);
  for (let i = 0; i < 256; i++) {
    const j = Math.floor(i / 32), l = i % 32;
    const byte = w[qs + 32 * Math.floor(j / 2) + l];
    let v = j % 2 ? byte >> 4 : byte & 15;
    if (dtype === 'q5_k') v += 16 * ((w[at + 16 + l] >> j) & 1);
    q.push(v);
  }
  return { q, scale, min, sub: 32 };
}

function sum16(terms: number[]): number {
  const s = new Array(16).fill(0);
  terms.forEach((t, j) => (s[j % 16] = f32(s[j % 16] + t)));
  const t = Array.from({ length: 8 }, (_, i) => f32(s[i] + s[i + 8]));
  const u = Array.from({ length: 4 }, (_, i) => f32(t[i] + t[i + 4]));
  return f32(f32(u[0] + u[2]) + f32(u[1] + u[3]));
}

/** out[i] per the spec: exact integer sums per (super-)block, then the type's f32 term, then sum16. */
function referenceMatvec(dtype: QuantType, w: Uint8Array, x: Float32Array, rows: number): Float32Array {
  const t = DTYPES[dtype];
  const n = x.length;
  const acts = quantizeActivations(x, t.activation === 'q8_0' ? 32 : 256);
  const blocks = n / t.block;
  const out = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const terms: number[] = [];
    for (let b = 0; b < blocks; b++) {
      const at = (r * blocks + b) * t.blockBytes;
      const { q, scale, min, sub } = blockValues(dtype, w, at);
      let isum = 0, msum = 0;
      for (let j = 0; j < q.length / sub; j++) {
        let dot = 0, xs = 0;
        for (let l = 0; l < sub; l++) {
          dot += q[j * sub + l] * acts.q[b * t.block + j * sub + l];
          xs += acts.q[b * t.block + j * sub + l];
        }
        isum += scale[j] * dot;
        msum += min[j] * xs;
      }
      assert.ok(Math.abs(isum) < 2 ** 31 && Math.abs(msum) < 2 ** 31);
      const dx = acts.d[b];
      const d = half(w, at + t.scaleOffsets[0]);
      let term = f32(f32(f32(d * dx)) * f32(isum));
      if (dtype === 'q4_k' || dtype === 'q5_k') term = f32(term - f32(f32(half(w, at + 2) * dx) * msum));
      terms.push(term);
    }
    out[r] = sum16(terms);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/** Runs one product with a kernel build, on weights prepared as the loader prepares them. */
function kernelMatvec(path: KernelPath, dtype: QuantType, w: Uint8Array, x: Float32Array, rows: number): Float32Array {
  const arena = createArena(1 << 22);
  const k: Kernels = instantiateKernels(arena.memory, path);
  const t = DTYPES[dtype];
  const n = x.length;
  const blocks = (rows * n) / t.block;
  const wp = arena.alloc(w.length);
  arena.u8(wp, w.length).set(w);
  const wd = arena.alloc(4 * blocks * t.scaleOffsets.length);
  const wdView = arena.f32(wd, blocks * t.scaleOffsets.length);
  for (let b = 0; b < blocks; b++) t.scaleOffsets.forEach((o, i) => (wdView[b * t.scaleOffsets.length + i] = half(w, b * t.blockBytes + o)));
  const xp = arena.alloc(4 * n);
  arena.f32(xp, n).set(x);
  const xq = arena.alloc(n), xd = arena.alloc(4 * (n / 32)), xs = arena.alloc(4 * (n / 32));
  if (t.activation === 'q8_0') k.quantizeQ8(xq, xd, xp, n);
  else k.quantizeQ8K(xq, xd, xs, xp, n);
  const out = arena.alloc(4 * rows);
  k.matvecQuant(t.ggmlType, out, wp, wd, xq, xd, xs, n, rows);
  return arena.f32(out, rows).slice();
}

const hex = (v: Float32Array): string => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex');
const native = nativeKernels();

test('Q4_0 and k-quant products: simd, scalar and native agree bit for bit with a naive implementation of the spec', () => {
  const shapes: Record<QuantType, [number, number][]> = {
    q4_0: [[1, 1], [3, 5], [16, 3], [17, 7], [33, 2]],
    // Row counts around the native kernels' four rows per pass; 17 blocks wrap the 16 accumulators.
    q4_k: [[1, 1], [2, 3], [3, 5], [17, 2], [2, 4], [1, 9]],
    q5_k: [[1, 1], [2, 3], [3, 5], [17, 2], [2, 4], [1, 9]],
    q6_k: [[1, 1], [2, 3], [3, 5], [17, 2], [2, 4], [1, 9]],
  };
  const settings: [KernelPath, boolean | 'avx2'][] = [['simd', false], ['scalar', false]];
  if (native) settings.push(['native', false], ['native', 'avx2'], ['native', true]);
  for (const dtype of TYPES) {
    for (const [blocksPerRow, rows] of shapes[dtype]) {
      const n = blocksPerRow * DTYPES[dtype].block;
      const w = randomBlocks(dtype, blocksPerRow * rows, n + rows);
      const x = randomFloats(n, 3 * n + rows);
      x[5] = 0; // exact zeros and an all-equal stretch
      x.fill(0.25, 40, 48);
      const want = hex(referenceMatvec(dtype, w, x, rows));
      for (const [path, portable] of settings) {
        native?.setPortable(portable);
        assert.equal(hex(kernelMatvec(path, dtype, w, x, rows)), want, `${dtype} ${blocksPerRow} blocks × ${rows} rows, ${path}${portable ? ` ${portable === true ? 'portable' : portable}` : ''}`);
      }
      native?.setPortable(false);
    }
  }
});

test('the integer sums stay exact at their bounds (extreme weights and activations)', () => {
  for (const dtype of TYPES) {
    const t = DTYPES[dtype];
    const n = 2 * t.block;
    const w = new Uint8Array(2 * t.blockBytes).fill(0xff); // every value and scale at its largest
    for (let b = 0; b < 2; b++) {
      for (const o of t.scaleOffsets) {
        w[b * t.blockBytes + o] = 0x00;
        w[b * t.blockBytes + o + 1] = 0x3c; // 1.0
      }
    }
    if (dtype === 'q6_k') for (let b = 0; b < 2; b++) w.fill(0x80, b * 210 + 192, b * 210 + 208); // scales −128: the largest |isum|
    const x = new Float32Array(n).fill(-1);
    const want = hex(referenceMatvec(dtype, w, x, 1));
    for (const path of availableKernelPaths()) assert.equal(hex(kernelMatvec(path, dtype, w, x, 1)), want, `${dtype} ${path}`);
  }
});

test('dequantise(quantise(x)) stays within each type\'s error bound, and products track the dequantised weights', () => {
  // Relative RMS error bounds with a margin over what llama.cpp's quantisers reach on uniform data.
  const bounds: Record<DType, number> = { f32: 0, q8_0: 0.006, q4_0: 0.11, q4_k: 0.09, q5_k: 0.045, q6_k: 0.022 };
  const n = 1024;
  const values = randomFloats(4 * n, 99);
  for (const dtype of ['q8_0', ...TYPES] as const) {
    const blocks = quantizeBlocks(dtype, values);
    assert.equal(blocks.length, rowBytes(dtype, values.length));
    const back = dequantizeBlocks(dtype, blocks);
    let err = 0, norm = 0;
    for (let i = 0; i < values.length; i++) {
      err += (back[i] - values[i]) ** 2;
      norm += values[i] ** 2;
    }
    const relative = Math.sqrt(err / norm);
    assert.ok(relative < bounds[dtype], `${dtype}: relative RMS error ${relative.toFixed(4)} ≥ ${bounds[dtype]}`);
    assert.ok(relative > 0, `${dtype} does round`);
    if (dtype === 'q8_0') continue;
    // A product with the quantised weights is close to the dot product of the dequantised ones.
    const x = randomFloats(n, 5);
    const out = kernelMatvec('simd', dtype, blocks, x, 4);
    for (let r = 0; r < 4; r++) {
      let exact = 0, scale = 0;
      for (let j = 0; j < n; j++) {
        exact += back[r * n + j] * x[j];
        scale += Math.abs(back[r * n + j] * x[j]);
      }
      assert.ok(Math.abs(out[r] - exact) < 0.02 * scale, `${dtype} row ${r}: ${out[r]} vs ${exact}`);
    }
  }
  // An all-zero row quantises to zero blocks that dequantise to exact zeros.
  for (const dtype of TYPES) assert.ok(dequantizeBlocks(dtype, quantizeBlocks(dtype, new Float32Array(256))).every((v) => v === 0), dtype);
});

function fingerprint(model: Model, kernels: KernelPath, threads: number): string {
  const observer = createFingerprint();
  const run = generate(model, { prompt: 'Once upon a time', steps: 12, sampling: { temperature: Math.fround(0.8), topp: Math.fround(0.9) }, seed: 3n, kernels, threads, observer });
  while (!run.next().done);
  return observer.hex();
}

test('models of each type: one fingerprint across 1, 2, 4 threads and every kernel build; the model id round trip; malformed files', () => {
  withTempDir((dir) => {
    const source = join(dir, 'random.bin');
    writeRandomLlama2c(source, { dim: 256, hiddenDim: 512, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 512, seqLen: 32, separateClassifier: true }, 7);
    const f32Model = loadModel(source, { tokenizer: tok512 });
    const prints = new Set<string>();
    for (const type of [...TYPES, 'q4_k_m'] as const) {
      const path = join(dir, `${type}.gguf`);
      writeGguf(path, ggufFromModel(f32Model, { type }));
      const model = loadModel(path);
      const w = model.weights;
      if (type === 'q4_k_m') {
        assert.deepEqual([w.layers[0].wv.dtype, w.layers[1].wv.dtype, w.layers[1].w2.dtype, w.layers[1].wq.dtype, w.classifier.dtype], ['q4_k', 'q6_k', 'q6_k', 'q4_k', 'q6_k']);
      } else {
        assert.deepEqual([w.tokenEmbedding.dtype, w.layers[1].w2.dtype, w.classifier.dtype], [type, type, type]);
      }
      const seen = new Set<string>();
      for (const kernels of availableKernelPaths()) for (const threads of [1, 2, 4]) seen.add(fingerprint(model, kernels, threads));
      assert.ok(threadPoolCount(model) > 0, `${type} ran on worker threads`);
      closeThreads(model);
      assert.equal(seen.size, 1, `${type}: ${[...seen].join(' ')}`);
      prints.add([...seen][0]);

      // Referee path: the model rebuilt from its canonical parts has the same id and output.
      const [config, , ...chunks] = modelTreeLeaves(model);
      const canonical = parseCanonicalConfig(config);
      const layout = chunkLayout(canonical);
      const assembled = assembleModel(canonical, (name) => {
        const t = layout.tensors.find((s) => s.name === name)!;
        return Buffer.concat(chunks.slice(t.firstLeaf - 2, t.firstLeaf - 2 + t.chunks));
      }, model.tokenizer);
      assert.equal(modelIdentity(assembled).modelId, modelIdentity(model).modelId, `${type} id`);
      assert.equal(fingerprint(assembled, 'simd', 1), [...seen][0], `${type} assembled`);
      assert.ok(new TextDecoder().decode(config).includes(`"dtype":"${type === 'q4_k_m' ? 'q6_k' : type}"`));
    }
    assert.equal(prints.size, 5, 'every type is a different computation');

    // Malformed: an infinite f16 scale in one block; a truncated file; rows that are not whole super-blocks.
    const good = ggufBytes(ggufFromModel(f32Model, { type: 'q4_k' }));
    const header = readFileSync(join(dir, 'q4_k.gguf'));
    assert.equal(Buffer.compare(header, good), 0, 'writing is deterministic');
    const at = findTensorData(good, 'blk.1.attn_q.weight');
    const bad = Buffer.from(good);
    bad.writeUInt16LE(0x7c00, at + 3 * DTYPES.q4_k.blockBytes + 2); // block 3's dmin = +inf
    const badPath = join(dir, 'bad-scale.gguf');
    writeFileSync(badPath, bad);
    expectOneLine(() => loadModel(badPath), badPath, /blk\.1\.attn_q\.weight: Q4_K block 3 has a non-finite f16 scale/);
    const truncated = join(dir, 'truncated.gguf');
    writeFileSync(truncated, good.subarray(0, good.length - 1000));
    expectOneLine(() => loadModel(truncated), truncated, /truncated/);
    const small = loadModel(stories260K, { tokenizer: tok512 });
    const contents = ggufFromModel(small, { type: 'q4_k' }); // dim 64: falls back to Q8_0
    assert.equal(contents.tensors.find((t) => t.name === 'blk.0.attn_q.weight')!.type, DTYPES.q8_0.ggmlType);
    const relabelled = contents.tensors.find((t) => t.name === 'blk.0.attn_q.weight')!;
    relabelled.type = DTYPES.q4_k.ggmlType;
    const partial = join(dir, 'partial.gguf');
    writeGguf(partial, contents);
    expectOneLine(() => loadModel(partial), partial, /blk\.0\.attn_q\.weight: Q4_K rows of 64 are not whole blocks of 256/);
  });
});

function expectOneLine(body: () => unknown, path: string, pattern: RegExp): void {
  assert.throws(body, (e: unknown) => {
    assert.ok(e instanceof ModelFileError, String(e));
    assert.ok(!e.message.includes('\n') && e.message.includes(path) && pattern.test(e.message), e.message);
    return true;
  });
}

/** The absolute offset of a tensor's data in a GGUF written by ggufBytes (parsed from its table). */
function findTensorData(file: Uint8Array, name: string): number {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  let at = 8;
  const tensors = Number(view.getBigUint64(at, true));
  const kvs = Number(view.getBigUint64(at + 8, true));
  at += 16;
  const str = (): string => {
    const n = Number(view.getBigUint64(at, true));
    at += 8;
    const s = Buffer.from(file.subarray(at, at + n)).toString('utf8');
    at += n;
    return s;
  };
  const skipValue = (type: number): void => {
    const sizes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
    if (type === 8) str();
    else if (type === 9) {
      const item = view.getUint32(at, true);
      const count = Number(view.getBigUint64(at + 4, true));
      at += 12;
      for (let i = 0; i < count; i++) skipValue(item);
    } else at += sizes[type];
  };
  for (let i = 0; i < kvs; i++) {
    str();
    const type = view.getUint32(at, true);
    at += 4;
    skipValue(type);
  }
  let offset = -1;
  for (let i = 0; i < tensors; i++) {
    const tensor = str();
    const dims = view.getUint32(at, true);
    at += 4 + 8 * dims + 4;
    const relative = Number(view.getBigUint64(at, true));
    at += 8;
    if (tensor === name) offset = relative;
  }
  return Math.ceil(at / 32) * 32 + offset;
}
