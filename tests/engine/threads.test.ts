// Output bits do not depend on the thread count or the kernel build, for F32 and Q8_0 models; the
// native kernels equal the WebAssembly ones on random inputs of awkward sizes.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  availableKernelPaths,
  closeThreads,
  createArena,
  createFingerprint,
  generate,
  ggufFromModel,
  instantiateKernels,
  loadModel,
  nativeKernels,
  threadPoolCount,
  writeGguf,
  type GenerateRequest,
  type Kernels,
  type Model,
} from '../../src/engine/index.js';
import { randomFloats, writeRandomLlama2c } from '../../bench/random-model.js';
import { f16ToF32Bits } from '../../src/engine/dtypes.js';
import { stories260K, tok512, withTempDir } from '../helpers.js';

function fingerprint(model: Model, request: Omit<GenerateRequest, 'observer'>): string {
  const observer = createFingerprint();
  const run = generate(model, { ...request, observer });
  while (!run.next().done);
  return observer.hex();
}

const request = { prompt: 'Once upon a time', steps: 60, sampling: { temperature: Math.fround(0.8), topp: Math.fround(0.9) }, seed: 11n };

test('fingerprints are equal across 1, 2 and 4 threads and every kernel build, F32 and Q8_0', () => {
  withTempDir((dir) => {
    const f32 = loadModel(stories260K, { tokenizer: tok512 });
    const q8Path = join(dir, 'q8.gguf');
    writeGguf(q8Path, ggufFromModel(f32, { type: 'q8_0' }));
    // Matrices large enough to be split among threads (stories260K's are not), with tails: rows of
    // 264 and 520 floats; for Q8_0, rows of 8 and 17 blocks (a partial group of 16) — and a
    // separate classifier. 150 positions make attention large enough to be split too.
    const widePath = join(dir, 'wide.bin');
    writeRandomLlama2c(widePath, { dim: 264, hiddenDim: 520, nLayers: 2, nHeads: 6, nKvHeads: 3, vocabSize: 512, seqLen: 256, separateClassifier: true }, 4);
    const wideQ8Source = join(dir, 'wide-q8-source.bin');
    writeRandomLlama2c(wideQ8Source, { dim: 256, hiddenDim: 544, nLayers: 2, nHeads: 8, nKvHeads: 4, vocabSize: 512, seqLen: 256 }, 5);
    const wideQ8Path = join(dir, 'wide-q8.gguf');
    writeGguf(wideQ8Path, ggufFromModel(loadModel(wideQ8Source, { tokenizer: tok512 }), { type: 'q8_0' }));
    const models = { f32, q8: loadModel(q8Path), wide: loadModel(widePath, { tokenizer: tok512 }), wideQ8: loadModel(wideQ8Path) };
    assert.equal(models.q8.weights.layers[0].wq.dtype, 'q8_0');
    assert.equal(models.wideQ8.weights.layers[1].w2.dtype, 'q8_0');
    const prints = new Map<string, Set<string>>();
    for (const [name, model] of Object.entries(models)) {
      const seen = new Set<string>();
      const steps = name.startsWith('wide') ? 150 : request.steps;
      for (const kernels of availableKernelPaths()) {
        for (const threads of [1, 2, 4]) seen.add(fingerprint(model, { ...request, steps, kernels, threads }));
      }
      prints.set(name, seen);
      if (name.startsWith('wide')) assert.ok(threadPoolCount(model) > 0, `${name} ran on worker threads`);
      closeThreads(model);
    }
    for (const [name, seen] of prints) assert.equal(seen.size, 1, `${name}: ${[...seen].join(' ')}`);
    assert.notEqual([...prints.get('f32')!][0], [...prints.get('q8')!][0], 'Q8_0 is a different computation');
  });
});

const native = nativeKernels();

test('native matrix products equal the WebAssembly ones bit for bit, AVX-512 and portable', { skip: native ? false : 'native kernels not built here' }, () => {
  const arena = createArena(1 << 24);
  const wasm = instantiateKernels(arena.memory, 'scalar');
  const fast = instantiateKernels(arena.memory, 'native');
  const run = (k: Kernels, body: (k: Kernels) => number, length: number): string => {
    const out = body(k);
    return Buffer.from(arena.u8(out, 4 * length)).toString('hex');
  };
  for (const portable of [false, true]) {
    native!.setPortable(portable);
    for (const [n, d] of [[1, 1], [15, 3], [16, 5], [17, 4], [64, 9], [100, 7], [288, 13]]) {
      const mark = arena.mark();
      const w = arena.alloc(4 * n * d);
      const x = arena.alloc(4 * n);
      const out = arena.alloc(4 * d);
      arena.f32(w, n * d).set(randomFloats(n * d, n + d));
      arena.f32(x, n).set(randomFloats(n, n));
      const matvec = (k: Kernels): number => {
        k.matvec(out, w, x, n, d);
        return out;
      };
      assert.equal(run(fast, matvec, d), run(wasm, matvec, d), `f32 ${n}x${d} portable=${portable}`);
      arena.release(mark);
    }
    for (const [blocks, d] of [[1, 1], [2, 3], [15, 2], [16, 5], [17, 3], [24, 4], [40, 9]]) {
      const n = 32 * blocks;
      const mark = arena.mark();
      const wq = arena.alloc(34 * blocks * d);
      const wd = arena.alloc(4 * blocks * d);
      const x = arena.alloc(4 * n);
      const xq = arena.alloc(n);
      const xd = arena.alloc(4 * blocks);
      const out = arena.alloc(4 * d);
      const bytes = arena.u8(wq, 34 * blocks * d);
      randomFloats(bytes.length, blocks).forEach((v, i) => (bytes[i] = Math.floor((v + 1) * 128)));
      // Each block's f16 scale, finite as the loader requires, and wd its widening (as the loader
      // prepares it): the AVX-512 kernel reads the f16 from the block, the others wd.
      const halves = Array.from(randomFloats(blocks * d, 7), (v) => (v < 0 ? 0x8000 : 0) | (0x1c00 + Math.floor(Math.abs(v) * 0x1000)));
      halves.forEach((h, b) => ((bytes[34 * b] = h & 0xff), (bytes[34 * b + 1] = h >> 8)));
      new Uint32Array(arena.f32(wd, blocks * d).buffer, wd, blocks * d).set(halves.map(f16ToF32Bits));
      arena.f32(x, n).set(randomFloats(n, d));
      wasm.quantizeQ8(xq, xd, x, n);
      const matvec = (k: Kernels): number => {
        k.matvecQ8(out, wq, wd, xq, xd, n, d);
        return out;
      };
      assert.equal(run(fast, matvec, d), run(wasm, matvec, d), `q8 ${blocks} blocks x${d} portable=${portable}`);
      arena.release(mark);
    }
  }
  native!.setPortable(false);
});
