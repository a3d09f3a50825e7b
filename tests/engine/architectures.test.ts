// The architectures of src/engine/architecture.ts on random-weight tiny GGUFs: Llama with GQA and
// Llama 3 RoPE factors, Mistral (llama, GQA 32/8), Qwen2 (Q/K/V biases, NEOX RoPE, tied output).
// Each loads and runs with the same bits on every kernel build and thread count; Qwen2's layer step
// equals a plain-JS reading of docs/numerics.md; the model id round-trips through parts.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  ModelFileError, assembleModel, availableKernelPaths, canonicalConfig, canonicalTensors, closeThreads, createFingerprint, generate,
  ggufFromModel, instantiateKernels, loadModel, modelIdentity, parseCanonicalConfig, runLayerStep, writeGguf,
  type GgufContents, type KernelPath, type Model,
} from '../../src/engine/index.js';
import { architectureVariant, randomFloats, writeRandomLlama2c, type ArchitectureVariant, type ModelShape } from '../../bench/random-model.js';
import { tok512, withTempDir } from '../helpers.js';

/** Seeded xorshift32 floats in [lo, hi). */
type Variant = ArchitectureVariant;

function variantGguf(dir: string, shape: ModelShape, seed: number, v: Variant): GgufContents {
  const path = join(dir, `base-${seed}.bin`);
  writeRandomLlama2c(path, shape, seed);
  return ggufFromModel(architectureVariant(loadModel(path, { tokenizer: tok512 }), seed, v));
}

function fingerprint(model: Model, kernels: KernelPath, threads: number): string {
  const observer = createFingerprint();
  const run = generate(model, { prompt: 'Once upon a time', steps: 40, sampling: { temperature: Math.fround(0.9), topp: Math.fround(0.9) }, seed: 5n, kernels, threads, observer });
  while (!run.next().done);
  return observer.hex();
}

const SMALL: ModelShape = { dim: 64, hiddenDim: 160, nLayers: 2, nHeads: 8, nKvHeads: 2, vocabSize: 512, seqLen: 128 };
/** Mistral's head layout (32 query heads, 8 K/V heads), tiny; wide enough to split among threads. */
const MISTRAL: ModelShape = { dim: 256, hiddenDim: 384, nLayers: 2, nHeads: 32, nKvHeads: 8, vocabSize: 512, seqLen: 128 };

const VARIANTS: [string, ModelShape, Variant][] = [
  ['llama-gqa', SMALL, {}],
  ['llama3-rope-factors', SMALL, { ropeTheta: 500000, ropeFactors: true }],
  ['mistral', MISTRAL, { ropeTheta: 1000000 }],
  ['qwen2', SMALL, { architecture: 'qwen2', ropeTheta: 1000000, tied: true }],
  ['qwen2-rope-factors', MISTRAL, { architecture: 'qwen2', ropeFactors: true }],
];

function writeVariants(dir: string): Map<string, string> {
  const paths = new Map<string, string>();
  VARIANTS.forEach(([name, shape, v], i) => {
    const contents = variantGguf(dir, shape, 3 + i, v);
    // Mistral files may say their window; llama.cpp ignores it for llama, and so does the loader.
    if (name === 'mistral') contents.metadata.push(['llama.attention.sliding_window', { type: 'u32', value: 4096 }]);
    const path = join(dir, `${name}.gguf`);
    writeGguf(path, contents);
    paths.set(name, path);
  });
  return paths;
}

test('every architecture loads and runs with the same bits on every kernel build and 1 or 2 threads', () => {
  withTempDir((dir) => {
    const prints = new Map<string, string>();
    for (const [name, path] of writeVariants(dir)) {
      const model = loadModel(path);
      try {
        const seen = new Set<string>();
        for (const kernels of availableKernelPaths()) for (const threads of [1, 2]) seen.add(fingerprint(model, kernels, threads));
        assert.equal(seen.size, 1, `${name}: ${[...seen].join(' ')}`);
        prints.set(name, [...seen][0]);
      } finally {
        closeThreads(model);
      }
      const c = model.config;
      if (name.startsWith('qwen2')) {
        assert.equal(c.architecture, 'qwen2');
        assert.ok(model.weights.layers.every((w) => w.bq && w.bk && w.bv));
      } else assert.equal(c.architecture, undefined, 'llama configs read as before');
      assert.equal(c.ropeFactors ?? false, name.includes('rope-factors'));
      if (name === 'qwen2') assert.equal(model.weights.classifier, model.weights.tokenEmbedding, 'tied output embedding');
      if (name === 'mistral') assert.deepEqual([c.nHeads, c.nKvHeads, c.ropeTheta], [32, 8, 1000000]);
    }
    assert.equal(new Set(prints.values()).size, prints.size, 'every variant computes something else');
  });
});

// ---- a plain-JS reading of the spec (docs/numerics.md §2, §4, §4b) for Qwen2's first half of a layer step ----

function dot16(a: Float32Array, b: Float32Array): number {
  const s = new Float32Array(16);
  for (let j = 0; j < a.length; j++) s[j % 16] = Math.fround(s[j % 16] + Math.fround(a[j] * b[j]));
  const t = Float32Array.from({ length: 8 }, (_, i) => Math.fround(s[i] + s[i + 8]));
  const u = Float32Array.from({ length: 4 }, (_, i) => Math.fround(t[i] + t[i + 4]));
  const v = Float32Array.from({ length: 2 }, (_, i) => Math.fround(u[i] + u[i + 2]));
  return Math.fround(v[0] + v[1]);
}

function rmsnorm(x: Float32Array, w: Float32Array, eps: number): Float32Array {
  const ss = Math.fround(Math.fround(dot16(x, x) / x.length) + eps);
  const r = Math.fround(1 / Math.fround(Math.sqrt(ss)));
  return x.map((v, j) => Math.fround(w[j] * Math.fround(r * v)));
}

function matvecBias(wAt: (row: number) => Float32Array, rows: number, x: Float32Array, bias: Float32Array): Float32Array {
  return Float32Array.from({ length: rows }, (_, i) => Math.fround(dot16(wAt(i), x) + bias[i]));
}

/** NEOX: pair i of each head is (v[i], v[i + hs/2]), angle pos·freq[i]. */
function ropeNeoxReference(v: Float32Array, hs: number, cos: Float32Array, sin: Float32Array): Float32Array {
  const out = v.slice();
  const half = hs / 2;
  for (let h = 0; h < v.length; h += hs) {
    for (let i = 0; i < half; i++) {
      const [v0, v1] = [v[h + i], v[h + i + half]];
      out[h + i] = Math.fround(Math.fround(v0 * cos[i]) - Math.fround(v1 * sin[i]));
      out[h + i + half] = Math.fround(Math.fround(v0 * sin[i]) + Math.fround(v1 * cos[i]));
    }
  }
  return out;
}

test('Qwen2: a layer step\'s K and V rows equal the spec read in plain JS (biases after the matvec, NEOX RoPE with factors)', () => {
  withTempDir((dir) => {
    const path = join(dir, 'qwen2.gguf');
    writeGguf(path, variantGguf(dir, SMALL, 21, { architecture: 'qwen2', ropeTheta: 1000000, ropeFactors: true }));
    const model = loadModel(path);
    const { dim, kvDim, headSize, normEps } = model.config;
    const a = model.arena;
    const w = model.weights.layers[1];
    const pos = 5;
    const x = randomFloats(dim, 77);
    const out = runLayerStep(model, { layer: 1, pos, x, keys: randomFloats(pos * kvDim, 78), values: randomFloats(pos * kvDim, 79) });

    const xb = rmsnorm(x, a.f32(w.attnNorm, dim), normEps);
    const row = (ptr: number) => (i: number) => a.f32(ptr + 4 * i * dim, dim);
    const k = matvecBias(row(w.wk.ptr), kvDim, xb, a.f32(w.bk!, kvDim));
    const v = matvecBias(row(w.wv.ptr), kvDim, xb, a.f32(w.bv!, kvDim));
    // Frequencies: 1 ⊘ pow32(theta, 2i/hs) (the kernels' pow32), then ⊘ factor[i]; cos32/sin32 by the kernels.
    const kernels = instantiateKernels(a.memory, 'scalar');
    const scratch = a.allocBlock(8 * headSize);
    kernels.ropeFrequencies(scratch, headSize, model.config.ropeTheta);
    const factors = a.f32(model.weights.ropeFactors!, headSize / 2);
    const freqs = a.f32(scratch, headSize / 2).map((f, i) => Math.fround(f / factors[i]));
    assert.ok(freqs.some((f, i) => f !== a.f32(scratch, headSize / 2)[i]), 'the factors change some frequencies');
    const angles = freqs.map((f) => Math.fround(pos * f));
    a.f32(scratch, headSize / 2).set(angles);
    kernels.mapCos32(scratch + 2 * headSize, scratch, headSize / 2);
    kernels.mapSin32(scratch + 4 * headSize, scratch, headSize / 2);
    const cos = a.f32(scratch + 2 * headSize, headSize / 2).slice();
    const sin = a.f32(scratch + 4 * headSize, headSize / 2).slice();
    a.free(scratch);

    assert.deepEqual(out.value, v, 'V = Wv·xb ⊕ bv');
    assert.deepEqual(out.key, ropeNeoxReference(k, headSize, cos, sin), 'K = NEOX-rotated Wk·xb ⊕ bk');
    // The interleaved pairing would give other bits: the test tells the two apart.
    const interleaved = k.slice();
    for (let i = 0; i < kvDim; i += 2) {
      const j = (i % headSize) / 2;
      interleaved[i] = Math.fround(Math.fround(k[i] * cos[j]) - Math.fround(k[i + 1] * sin[j]));
      interleaved[i + 1] = Math.fround(Math.fround(k[i] * sin[j]) + Math.fround(k[i + 1] * cos[j]));
    }
    assert.notDeepEqual(out.key, interleaved);
  });
});

test('the model id covers architecture, RoPE type, factors and biases, and round-trips through parts with identical steps', () => {
  withTempDir((dir) => {
    const paths = writeVariants(dir);
    const ids = new Set<string>();
    for (const [name, path] of paths) {
      const model = loadModel(path);
      const configBytes = canonicalConfig(model);
      const doc = JSON.parse(new TextDecoder().decode(configBytes)) as { architecture: string; rope_type?: string; tensors: { name: string; dtype: string }[] };
      const names = doc.tensors.map((t) => t.name);
      assert.equal(doc.architecture, name.startsWith('qwen2') ? 'qwen2' : 'llama');
      assert.equal(doc.rope_type, name.startsWith('qwen2') ? 'neox' : undefined);
      assert.equal(names[1] === 'rope_freqs.weight', name.includes('rope-factors'));
      assert.equal(names.includes('blk.1.attn_k.bias'), name.startsWith('qwen2'));
      assert.ok(doc.tensors.filter((t) => t.name.endsWith('.bias') || t.name === 'rope_freqs.weight').every((t) => t.dtype === 'f32'));

      const canonical = parseCanonicalConfig(configBytes);
      assert.deepEqual(canonical.config, model.config);
      const tensors = new Map(canonicalTensors(model.config, model.weights).map((t) => [t.name, model.arena.u8(t.ptr, t.bytes).slice()]));
      const assembled = assembleModel(canonical, (n) => tensors.get(n), model.tokenizer);
      const identity = modelIdentity(model);
      assert.equal(modelIdentity(assembled).modelId, identity.modelId);
      ids.add(identity.modelId);
      const { dim, kvDim } = model.config;
      for (const layer of [0, 1]) {
        const input = { layer, pos: 4, x: randomFloats(dim, 90 + layer), keys: randomFloats(4 * kvDim, 91), values: randomFloats(4 * kvDim, 92) };
        assert.deepEqual(runLayerStep(assembled, input), runLayerStep(model, input), `${name} layer ${layer}`);
      }
      if (model.config.ropeFactors) {
        // A referee that lacks the factors cannot run a layer step (rather than running another model).
        const partial = assembleModel(canonical, (n) => (n === 'rope_freqs.weight' ? undefined : tensors.get(n)));
        assert.throws(() => runLayerStep(partial, { layer: 0, pos: 0, x: randomFloats(dim, 1), keys: new Float32Array(0), values: new Float32Array(0) }), /RoPE factors/);
      }
    }
    assert.equal(ids.size, paths.size);
  });
});

test('an unknown architecture is a one-line ModelFileError naming the file and the architecture', () => {
  withTempDir((dir) => {
    const contents = variantGguf(dir, SMALL, 31, {});
    contents.metadata[0][1] = { type: 'string', value: 'phi3' };
    const path = join(dir, 'phi3.gguf');
    writeGguf(path, contents);
    assert.throws(() => loadModel(path), (e: unknown) => {
      assert.ok(e instanceof ModelFileError);
      assert.match(e.message, /phi3\.gguf.*unsupported architecture 'phi3' \(only llama, qwen2\)/);
      assert.equal(e.message.includes('\n'), false);
      return true;
    });
  });
});
