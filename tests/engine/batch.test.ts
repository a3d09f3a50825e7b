// Prompt positions run as a batch (steps.ts promptBatch: matrix × matrix products, attention per
// position) give the bits of one position at a time: the same fingerprint (every step's outputs),
// the same trace root and tokens, on every kernel build, 1 and 2 threads, F32, Q8_0, Q4_0, k-quants
// (Q4_K_M, Q5_K_M mixes), GQA, Qwen2 (biases, NEOX RoPE), mapped weights; and the matmul kernels
// equal their matvecs.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeRandomLlama2c, type ModelShape } from '../../bench/random-model.js';
import {
  availableKernelPaths, canMapWeights, closeThreads, createFingerprint, generate, ggufFromModel, instantiateKernels, loadModel,
  modelIdentity, nativeKernels, writeGguf, type ExportType, type KernelPath, type Model,
} from '../../src/engine/index.js';
import { describeJob, recordTrace } from '../../src/proof/index.js';
import { tok512, withTempDir } from '../helpers.js';

/** Seeded xorshift32 values in [lo, hi). */
function random(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  let s = seed >>> 0 || 1;
  return Float32Array.from({ length: n }, () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return lo + (hi - lo) * (s / 2 ** 32);
  });
}

/** dim 256, hidden 768: whole k-quant super-blocks; 8 query heads over 2 K/V heads (GQA). */
const SHAPE: ModelShape = { dim: 256, hiddenDim: 768, nLayers: 2, nHeads: 8, nKvHeads: 2, vocabSize: 512, seqLen: 64 };

/** GGUF files of one random model in several types, and a Qwen2 variant (Q/K/V biases, NEOX RoPE). */
function writeModels(dir: string, types: ExportType[]): Record<string, string> {
  const bin = join(dir, 'random.bin');
  writeRandomLlama2c(bin, SHAPE, 13);
  const base = loadModel(bin, { tokenizer: tok512 });
  const paths: Record<string, string> = {};
  for (const type of types) {
    paths[type] = join(dir, `random-${type}.gguf`);
    writeGguf(paths[type], ggufFromModel(base, { type, name: `random-${type}` }));
  }
  const { arena, config: c } = base;
  const vector = (values: Float32Array): number => {
    const ptr = arena.alloc(4 * values.length);
    arena.f32(ptr, values.length).set(values);
    return ptr;
  };
  const layers = base.weights.layers.map((w, l) => ({
    ...w, bq: vector(random(c.dim, 100 + l)), bk: vector(random(c.kvDim, 200 + l)), bv: vector(random(c.kvDim, 300 + l)),
  }));
  paths.qwen2 = join(dir, 'qwen2.gguf');
  const qwen2 = { ...base, config: { ...c, architecture: 'qwen2' as const }, weights: { ...base.weights, layers } };
  writeGguf(paths.qwen2, ggufFromModel(qwen2, { type: 'q8_0', name: 'random-qwen2' }));
  return paths;
}

/** 45 prompt tokens (a batch of 32, then 13 with the default size), then 7 sampled. */
const PROMPT = [1, ...Array.from({ length: 44 }, (_, i) => 2 + ((i * 37) % 500))];
const STEPS = 52;
const SAMPLING = { temperature: Math.fround(0.9), topp: Math.fround(0.9) };

function fingerprint(model: Model, kernels: KernelPath, threads: number, promptBatch: number | undefined, prompt = PROMPT): { fingerprint: string; tokens: number[] } {
  const observer = createFingerprint();
  const run = generate(model, { prompt, steps: STEPS, sampling: SAMPLING, seed: 3n, kernels, threads, observer, promptBatch });
  let r = run.next();
  while (!r.done) r = run.next();
  return { fingerprint: observer.hex(), tokens: r.value.tokens };
}

function traceRoot(model: Model, kernels: KernelPath, threads: number, promptBatch: number | undefined): string {
  const job = describeJob(modelIdentity(model), { prompt: PROMPT, steps: STEPS, sampling: SAMPLING, seed: 3n });
  return recordTrace(model, job, { kernels, threads, promptBatch }).root;
}

test('prompt batches give the bits of one position at a time (every type, kernel build and thread count)', { timeout: 120_000 }, () =>
  withTempDir((dir) => {
    const paths = writeModels(dir, ['f32', 'q8_0', 'q4_k_m', 'q5_k_m', 'q4_0']);
    for (const [name, path] of Object.entries(paths)) {
      const model = loadModel(path, { weights: 'memory' });
      const reference = fingerprint(model, 'scalar', 1, 1);
      const root = traceRoot(model, 'scalar', 1, 1);
      assert.ok(reference.tokens.length > PROMPT.length, `${name}: the run samples after the prompt`);
      for (const kernels of availableKernelPaths()) {
        for (const threads of [1, 2]) {
          const where = `${name} on ${kernels}, ${threads} thread(s)`;
          assert.deepEqual(fingerprint(model, kernels, threads, undefined), reference, `${where}: default batches`);
          assert.deepEqual(fingerprint(model, kernels, threads, 5), reference, `${where}: batches of 5`);
          assert.equal(traceRoot(model, kernels, threads, undefined), root, `${where}: trace root`);
        }
      }
      closeThreads(model);
    }
  }),
);

test('mapped weights: prompt batches give the bits of the model in WebAssembly memory', { skip: canMapWeights() ? false : 'no native mapFile', timeout: 60_000 }, () =>
  withTempDir((dir) => {
    const paths = writeModels(dir, ['q8_0', 'q4_k_m']);
    for (const [name, path] of Object.entries(paths)) {
      const reference = fingerprint(loadModel(path, { weights: 'memory' }), 'native', 1, 1);
      const mapped = loadModel(path, { weights: 'mapped' });
      for (const threads of [1, 2]) assert.deepEqual(fingerprint(mapped, 'native', threads, undefined), reference, `${name} mapped, ${threads} thread(s)`);
      closeThreads(mapped);
    }
  }),
);

test("the native addon's AVX2 and portable loops batch with the same bits", { skip: nativeKernels() ? false : 'no native addon', timeout: 60_000 }, () =>
  withTempDir((dir) => {
    const paths = writeModels(dir, ['q8_0', 'q4_k_m']);
    const native = nativeKernels()!;
    try {
      for (const [name, path] of Object.entries(paths)) {
        const model = loadModel(path, { weights: 'memory' });
        const reference = fingerprint(model, 'scalar', 1, 1);
        for (const level of ['avx2', true] as const) {
          native.setPortable(level);
          assert.deepEqual(fingerprint(model, 'native', 1, undefined), reference, `${name} on native (${level === true ? 'portable' : level})`);
        }
        native.setPortable(false);
      }
    } finally {
      native.setPortable(false);
    }
  }),
);

test('a BOS inside the prompt stops the run at the same position, batched or not', { timeout: 30_000 }, () =>
  withTempDir((dir) => {
    const model = loadModel(writeModels(dir, ['q8_0']).q8_0);
    const prompt = [...PROMPT.slice(0, 20), 1, ...PROMPT.slice(1, 10)];
    const single = fingerprint(model, availableKernelPaths()[0], 1, 1, prompt);
    assert.deepEqual(fingerprint(model, availableKernelPaths()[0], 1, undefined, prompt), single);
    assert.equal(single.tokens.length, 19, 'stops before the BOS at position 20');
    assert.throws(() => fingerprint(model, 'scalar', 1, 0), /promptBatch must be a positive integer, got 0/);
  }),
);

test('matmul kernels: each output is the matvec of its vector (f32, q8_0; rows not a whole tile)', () => {
  const memory = new WebAssembly.Memory({ initial: 64, maximum: 64, shared: true });
  const n = 96, d = 37, batch = 3, stride = 41;
  const f32 = new Float32Array(memory.buffer);
  const W = 0, X = 4 * n * d, OUT = X + 4 * n * batch, ONE = OUT + 4 * stride * batch;
  f32.set(random(n * d, 5), W / 4);
  f32.set(random(n * batch, 6), X / 4);
  // Q8_0: blocks of 34 bytes (f16 scale, 32 int8), prepared f32 scales, quantised activations.
  const WQ = ONE + 4 * d, WD = WQ + 34 * (n / 32) * d, XQ = WD + 4 * (n / 32) * d, XD = XQ + n * batch;
  const bytes = new Uint8Array(memory.buffer);
  const half = new DataView(memory.buffer);
  for (let b = 0; b < (n / 32) * d; b++) {
    half.setUint16(WQ + 34 * b, 0x2000 + (b % 97), true); // a small positive f16
    bytes.set(new Uint8Array(Int8Array.from(random(32, 50 + b, -127, 127), Math.trunc).buffer), WQ + 34 * b + 2);
  }
  for (const path of availableKernelPaths()) {
    const k = instantiateKernels(memory, path);
    k.f16ToF32(WD, WQ, (n / 32) * d, 34); // the prepared scales, as the loader widens them
    for (let v = 0; v < batch; v++) k.quantizeQ8(XQ + v * n, XD + (4 * v * n) / 32, X + 4 * v * n, n);
    k.matmul(OUT, W, X, n, d, batch, stride);
    for (let v = 0; v < batch; v++) {
      k.matvec(ONE, W, X + 4 * v * n, n, d);
      assert.deepEqual(f32.slice(OUT / 4 + v * stride, OUT / 4 + v * stride + d), f32.slice(ONE / 4, ONE / 4 + d), `${path} f32 vector ${v}`);
    }
    k.matmulQ8(OUT, WQ, WD, XQ, XD, n, d, batch, stride);
    for (let v = 0; v < batch; v++) {
      k.matvecQ8(ONE, WQ, WD, XQ + v * n, XD + (4 * v * n) / 32, n, d);
      const got = f32.slice(OUT / 4 + v * stride, OUT / 4 + v * stride + d);
      assert.ok(got.some((x) => x !== 0), `${path} q8_0 vector ${v} is not all zero`);
      assert.deepEqual(got, f32.slice(ONE / 4, ONE / 4 + d), `${path} q8_0 vector ${v}`);
    }
  }
});

test('siluMul (four lanes at a time in the simd build) agrees across builds on special and extreme values', () => {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
  const f32 = new Float32Array(memory.buffer);
  const special = [NaN, Infinity, -Infinity, 0, -0, 1e-45, -1e-45, 100, -100, 110.5, -110.5, 88.7, -88.7, 103.9, -104, 1e30, -1e30];
  const inputs = Float32Array.from([...special, ...random(300, 9, -120, 120), ...random(64, 10, -3, 3)]);
  const gate = random(inputs.length, 11, -2, 2);
  const outputs = availableKernelPaths().map((path) => {
    const k = instantiateKernels(memory, path);
    const results: string[] = [];
    for (const n of [1, 3, 4, 5, 13, inputs.length]) {
      f32.set(inputs, 0);
      f32.set(gate, 1024);
      k.siluMul(0, 4096, n);
      // NaN bits inside a step are not specified (wasm NaN payloads vary with the compiler tier):
      // x, K and V are canonicalised at the step's end (spec §4), so compare NaNs as one value.
      results.push(Array.from(f32.slice(0, n), (v) => (Number.isNaN(v) ? 'NaN' : Buffer.from(Float32Array.of(v).buffer).toString('hex'))).join(','));
    }
    return results;
  });
  for (const o of outputs) assert.deepEqual(o, outputs[0]);
  assert.ok(outputs.length >= 2, 'at least the simd and scalar builds');
});
