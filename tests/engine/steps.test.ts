// Steps re-executed alone reproduce the recorded outputs bit for bit, and fingerprints are the same
// across repeated runs, kernel builds and file formats.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  KERNEL_PATHS,
  createFingerprint,
  generate,
  loadModel,
  runHeadStep,
  runLayerStep,
  type GenerateRequest,
  type KernelPath,
  type Model,
} from '../../src/engine/index.js';
import { writeRandomLlama2c } from '../../bench/random-model.js';
import { stories260K, stories260KGguf, tok512, withTempDir } from '../helpers.js';

const bin = loadModel(stories260K, { tokenizer: tok512 });
const gguf = loadModel(stories260KGguf);

interface Recording {
  layers: Map<string, { x: Float32Array; key: Float32Array; value: Float32Array }>;
  heads: Map<number, { token: number; rngState: bigint }>;
  promptTokens: number[];
}

function record(model: Model, request: Omit<GenerateRequest, 'observer'>): Recording {
  const layers: Recording['layers'] = new Map();
  const heads: Recording['heads'] = new Map();
  const run = generate(model, {
    ...request,
    observer: {
      layer: (pos, l, out) => layers.set(`${pos}:${l}`, { x: out.x.slice(), key: out.key.slice(), value: out.value.slice() }),
      head: (pos, token, rngState) => {
        heads.set(pos, { token, rngState });
      },
    },
  });
  let r = run.next();
  while (!r.done) r = run.next();
  return { layers, heads, promptTokens: r.value.promptTokens };
}

function fingerprint(model: Model, request: Omit<GenerateRequest, 'observer'>): string {
  const observer = createFingerprint();
  const run = generate(model, { ...request, observer });
  while (!run.next().done);
  return observer.hex();
}

const bits = (v: Float32Array): string => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex');

/** The token fed at each position: the prompt's, then the one sampled at the position before. */
function inputToken(rec: Recording, pos: number): number {
  return pos < rec.promptTokens.length ? rec.promptTokens[pos] : rec.heads.get(pos - 1)!.token;
}

function replayAll(model: Model, rec: Recording, kernels: KernelPath, request: Omit<GenerateRequest, 'observer'>): number {
  const { dim, kvDim, nLayers } = model.config;
  const positions = Math.max(...[...rec.layers.keys()].map((k) => Number(k.split(':')[0]))) + 1;
  let replayed = 0;
  for (let pos = 0; pos < positions; pos++) {
    for (let layer = 0; layer < nLayers; layer++) {
      const x =
        layer === 0
          ? model.arena.f32(model.weights.tokenEmbedding.ptr + 4 * dim * inputToken(rec, pos), dim).slice()
          : rec.layers.get(`${pos}:${layer - 1}`)!.x;
      const keys = new Float32Array(pos * kvDim);
      const values = new Float32Array(pos * kvDim);
      for (let t = 0; t < pos; t++) {
        keys.set(rec.layers.get(`${t}:${layer}`)!.key, t * kvDim);
        values.set(rec.layers.get(`${t}:${layer}`)!.value, t * kvDim);
      }
      const out = runLayerStep(model, { layer, pos, x, keys, values }, kernels);
      const expected = rec.layers.get(`${pos}:${layer}`)!;
      assert.equal(bits(out.x), bits(expected.x), `x at ${pos}:${layer}`);
      assert.equal(bits(out.key), bits(expected.key), `key at ${pos}:${layer}`);
      assert.equal(bits(out.value), bits(expected.value), `value at ${pos}:${layer}`);
      replayed++;
    }
    const head = rec.heads.get(pos);
    if (head) {
      const before = [...rec.heads.entries()].filter(([p]) => p < pos).at(-1)?.[1].rngState ?? request.seed;
      const out = runHeadStep(model, { x: rec.layers.get(`${pos}:${nLayers - 1}`)!.x, params: request.sampling, rngState: before }, kernels);
      assert.deepEqual(out, head, `head at ${pos}`);
      replayed++;
    }
  }
  return replayed;
}

const sampled: Omit<GenerateRequest, 'observer'> = {
  prompt: 'Once upon a time',
  steps: 48,
  sampling: { temperature: Math.fround(0.9), topp: Math.fround(0.9) },
  seed: 42n,
};

for (const kernels of KERNEL_PATHS) {
  test(`${kernels}: every layer step and head step re-run alone reproduces its recorded outputs`, () => {
    const request = { ...sampled, kernels };
    const rec = record(bin, request);
    assert.ok(rec.heads.size > 30, 'the run sampled tokens');
    const replayed = replayAll(bin, rec, kernels, request);
    assert.equal(replayed, rec.layers.size + rec.heads.size);
  });
}

test('a replayed step with a perturbed input does not reproduce the recorded output', () => {
  const rec = record(bin, sampled);
  const x = rec.layers.get('9:1')!.x.slice();
  x[0] = Math.fround(x[0] * 1.0000001 + 1e-7);
  const keys = new Float32Array(10 * bin.config.kvDim);
  const values = new Float32Array(10 * bin.config.kvDim);
  for (let t = 0; t < 10; t++) {
    keys.set(rec.layers.get(`${t}:2`)!.key, t * bin.config.kvDim);
    values.set(rec.layers.get(`${t}:2`)!.value, t * bin.config.kvDim);
  }
  const out = runLayerStep(bin, { layer: 2, pos: 10, x, keys, values });
  assert.notEqual(bits(out.x), bits(rec.layers.get('10:2')!.x));
});

test('fingerprints are identical across 10 repeated runs, both kernel builds and both file formats', () => {
  const greedy = { prompt: 'Lily and Tom', steps: 120, sampling: { temperature: 0, topp: Math.fround(0.9) }, seed: 7n };
  for (const request of [greedy, sampled]) {
    const reference = fingerprint(bin, request);
    for (let i = 0; i < 10; i++) {
      for (const kernels of KERNEL_PATHS) assert.equal(fingerprint(bin, { ...request, kernels }), reference, `run ${i} ${kernels}`);
    }
    assert.equal(fingerprint(gguf, request), reference, 'GGUF');
  }
  assert.notEqual(fingerprint(bin, { ...sampled, seed: 43n }), fingerprint(bin, sampled), 'the fingerprint sees the seed');
});

test('random-weight models with awkward shapes: builds agree and steps replay exactly', () => {
  withTempDir((dir) => {
    // head size 12 (a dot-product tail), grouped K/V, hidden 100, a separate classifier.
    const path = join(dir, 'odd.bin');
    writeRandomLlama2c(path, { dim: 72, hiddenDim: 100, nLayers: 3, nHeads: 6, nKvHeads: 2, vocabSize: 512, seqLen: 64, separateClassifier: true }, 9);
    const model = loadModel(path, { tokenizer: tok512 });
    assert.notEqual(model.weights.classifier, model.weights.tokenEmbedding);
    const request = { ...sampled, steps: 40 };
    const prints = KERNEL_PATHS.map((kernels) => fingerprint(model, { ...request, kernels }));
    assert.equal(prints[0], prints[1]);
    const rec = record(model, request);
    replayAll(model, rec, 'scalar', request);
  });
});
