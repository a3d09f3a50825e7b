// Weights mapped from the file (src/engine/load/mapped.ts) compute what weights copied into the
// WebAssembly memory compute: the same fingerprint, trace root and model id, on 1 and 2 threads;
// the mapped load does not copy them; bad files and over-budget models get one-line errors.
import assert from 'node:assert/strict';
import { statSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeRandomLlama2c } from '../../bench/random-model.js';
import {
  ModelFileError, canMapWeights, createFingerprint, createSession, encode, generate, ggufFromModel, hasMappedWeights, loadModel,
  modelIdentity, writeGguf, type ExportType, type GenerateRequest, type Model,
} from '../../src/engine/index.js';
import { describeJob, recordTrace } from '../../src/proof/index.js';
import { tok512, withTempDir } from '../helpers.js';

const skip = canMapWeights() ? false : 'the native addon (with mapFile) is not built here';

/** dim 256 and hidden 768: whole k-quant super-blocks, products large enough to be split over threads; a tied classifier. */
function writeModels(dir: string, types: ExportType[]): Record<string, string> {
  const bin = join(dir, 'random.bin');
  writeRandomLlama2c(bin, { dim: 256, hiddenDim: 768, nLayers: 2, nHeads: 8, nKvHeads: 2, vocabSize: 512, seqLen: 64 }, 11);
  const base = loadModel(bin, { tokenizer: tok512 });
  return Object.fromEntries(types.map((type) => {
    const path = join(dir, `random-${type}.gguf`);
    writeGguf(path, ggufFromModel(base, { type, name: `random-${type}` }));
    return [type, path];
  }));
}

function request(model: Model): Omit<GenerateRequest, 'observer'> {
  return { prompt: encode(model.tokenizer, 'Once upon a time', true, false), steps: 12, sampling: { temperature: 0.8, topp: 0.9 }, seed: 7n };
}

function measure(model: Model, threads: number): { modelId: string; fingerprint: string; traceRoot: string } {
  const observer = createFingerprint();
  const run = generate(model, { ...request(model), kernels: 'native', threads, observer });
  let r = run.next();
  while (!r.done) r = run.next();
  const identity = modelIdentity(model);
  const trace = recordTrace(model, describeJob(identity, { ...request(model), prompt: r.value.promptTokens }), { kernels: 'native', threads });
  return { modelId: identity.modelId, fingerprint: observer.hex(), traceRoot: trace.root };
}

test('a mapped model computes the bits of the same model in WebAssembly memory (f32, q8_0, q4_k, q4_k_m; 1 and 2 threads)', { skip, timeout: 60_000 }, () =>
  withTempDir((dir) => {
    const paths = writeModels(dir, ['f32', 'q8_0', 'q4_k', 'q4_k_m']);
    for (const [type, path] of Object.entries(paths)) {
      const inMemory = loadModel(path, { weights: 'memory' });
      const mapped = loadModel(path, { weights: 'mapped' });
      assert.equal(hasMappedWeights(inMemory), false);
      assert.equal(hasMappedWeights(mapped), true, `${type}: the matrices are mapped`);
      assert.ok(mapped.arena.usage().top < inMemory.arena.usage().top / 2, `${type}: the mapped model's arena holds no matrices`);
      for (const threads of [1, 2]) assert.deepEqual(measure(mapped, threads), measure(inMemory, threads), `${type} on ${threads} threads`);
      // Exports read the weights through the mapping: the file written back loads to the same id.
      const again = join(dir, `again-${type}.gguf`);
      writeGguf(again, ggufFromModel(mapped, { type: 'keep', name: `random-${type}` }));
      assert.equal(modelIdentity(loadModel(again)).modelId, modelIdentity(inMemory).modelId, `${type}: export of the mapped model`);
    }
  }),
);

test('a mapped load does not copy the weights: RSS grows by a small part of the file', { skip, timeout: 60_000 }, () =>
  withTempDir((dir) => {
    const bin = join(dir, 'big.bin');
    // 4 layers of dim 768: about 110 MB of f32 matrices, none of which a mapped load touches.
    writeRandomLlama2c(bin, { dim: 768, hiddenDim: 2048, nLayers: 4, nHeads: 12, nKvHeads: 12, vocabSize: 512, seqLen: 32 }, 3);
    const path = join(dir, 'big.gguf');
    writeGguf(path, ggufFromModel(loadModel(bin, { tokenizer: tok512 }), { type: 'f32', name: 'big' }));
    const fileBytes = statSync(path).size;
    const before = process.memoryUsage().rss;
    const mapped = loadModel(path, { weights: 'mapped' });
    const loaded = process.memoryUsage().rss - before;
    assert.ok(loaded < 0.25 * fileBytes, `mapped load grew RSS by ${loaded} bytes for a ${fileBytes}-byte file`);
    // Generating touches every weight page once: they are the file's pages, counted once.
    const run = generate(mapped, { ...request(mapped), steps: 2, kernels: 'native' });
    while (!run.next().done);
    const ran = process.memoryUsage().rss - before;
    assert.ok(ran < 1.5 * fileBytes, `RSS grew by ${ran} bytes for a ${fileBytes}-byte file`);
  }),
);

test('mapped loading: a truncated file is a one-line error; sessions refuse the WebAssembly kernels', { skip, timeout: 30_000 }, () =>
  withTempDir((dir) => {
    const { q8_0: path } = writeModels(dir, ['q8_0']);
    const model = loadModel(path, { weights: 'mapped' });
    assert.throws(() => createSession(model, { kernels: 'simd' }), /mapped from its file, which only the native kernels reach/);
    truncateSync(path, statSync(path).size - 100);
    assert.throws(() => loadModel(path, { weights: 'mapped' }), (e: Error) => e instanceof ModelFileError && /truncated/.test(e.message) && !e.message.includes('\n'));
  }),
);

test('a model over the WebAssembly budget: refused in memory with what fits, mapped automatically when the addon is there', { timeout: 30_000 }, () =>
  withTempDir((dir) => {
    const { q4_k: path } = writeModels(dir, ['q4_k']);
    const budget = 100_000; // a small budget stands for 3.5 GiB
    assert.throws(
      () => loadModel(path, { weights: 'memory', wasmBudget: budget }),
      (e: Error) => e instanceof ModelFileError && /too large for the WebAssembly engine: .* exceed its .* budget \(weights, KV cache and activations share one 4 GiB memory\)/.test(e.message) && !e.message.includes('\n'),
    );
    if (canMapWeights()) {
      assert.equal(hasMappedWeights(loadModel(path, { wasmBudget: budget })), true, 'auto maps what does not fit');
      assert.equal(hasMappedWeights(loadModel(path)), false, 'auto copies what fits');
    } else {
      assert.throws(() => loadModel(path, { wasmBudget: budget }), /too large for the WebAssembly engine/);
    }
  }),
);
