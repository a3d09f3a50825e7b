// The numerics pinned to fixed values: for each model, weight type, kernel build and thread count,
// the fingerprint of a sampled run, its trace root and the model id must equal the values in
// tests/golden/engine.json. Other tests compare one path of this build against another; this one
// catches a change that moves every path at once (a refactor, a new backend, a compiler).
// After an intended change of the numerics (a new spec version), regenerate with
//   npm run build && VERITY_GOLDEN=update node --test dist/tests/engine/golden.test.js
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeRandomLlama2c } from '../../bench/random-model.js';
import {
  availableKernelPaths, createFingerprint, encode, generate, ggufFromModel, loadModel, modelIdentity, writeGguf,
  type ExportType, type GenerateRequest, type Model,
} from '../../src/engine/index.js';
import { describeJob, recordTrace } from '../../src/proof/index.js';
import { goldenDir, stories260K, stories260KGguf, tok512, withTempDir } from '../helpers.js';

const GOLDEN = join(goldenDir, 'engine.json');
const THREADS = [1, 2, 4];
const PROMPT = 'Once upon a time';

interface GoldenCase {
  modelId: string;
  fingerprint: string;
  traceRoot: string;
  /** The first generated tokens, so that a mismatch shows where text changed. */
  tokens: number[];
}

/** Models by name: the shared stories260K files, and a random-weight model big enough to use threads. */
type Source = (dir: string) => Model;

/** `base` written as GGUF with its matrices as `type` (verity quantize's types and mixes), loaded back. */
const fromGguf = (base: Source, type: ExportType, name: string): Source => (dir) => {
  const path = join(dir, `${name}.gguf`);
  writeGguf(path, ggufFromModel(base(dir), { type, name }));
  return loadModel(path);
};

const stories: Source = () => loadModel(stories260K, { tokenizer: tok512 });
/** dim 256 and hidden 768 are whole super-blocks of 256; GQA 8/2; 2 layers; the 512-token vocabulary of tok512. */
const random: Source = (dir) => {
  const path = join(dir, 'random.bin');
  writeRandomLlama2c(path, { dim: 256, hiddenDim: 768, nLayers: 2, nHeads: 8, nKvHeads: 2, vocabSize: 512, seqLen: 128 }, 7);
  return loadModel(path, { tokenizer: tok512 });
};

const SOURCES: Record<string, Source> = {
  'stories260K.bin': stories,
  'stories260K.gguf': () => loadModel(stories260KGguf),
  'stories260K-q8_0': fromGguf(stories, 'q8_0', 'stories260K-q8_0'),
  'random-gqa-f32': random,
  'random-gqa-f16': fromGguf(random, 'f16', 'random-f16'),
  'random-gqa-q8_0': fromGguf(random, 'q8_0', 'random-q8_0'),
  'random-gqa-q4_0': fromGguf(random, 'q4_0', 'random-q4_0'),
  'random-gqa-q4_k': fromGguf(random, 'q4_k', 'random-q4_k'),
  'random-gqa-q5_k': fromGguf(random, 'q5_k', 'random-q5_k'),
  'random-gqa-q6_k': fromGguf(random, 'q6_k', 'random-q6_k'),
  'random-gqa-q4_k_m': fromGguf(random, 'q4_k_m', 'random-q4_k_m'),
};

function request(model: Model): Omit<GenerateRequest, 'observer'> {
  return { prompt: encode(model.tokenizer, PROMPT, true, false), steps: 48, sampling: { temperature: 0.8, topp: 0.9 }, seed: 20261202n };
}

function measure(model: Model, kernels: GenerateRequest['kernels'], threads: number): GoldenCase {
  const observer = createFingerprint();
  const run = generate(model, { ...request(model), kernels, threads, observer });
  let r = run.next();
  while (!r.done) r = run.next();
  const identity = modelIdentity(model);
  const trace = recordTrace(model, describeJob(identity, { ...request(model), prompt: r.value.promptTokens }), { kernels, threads });
  return { modelId: identity.modelId, fingerprint: observer.hex(), traceRoot: trace.root, tokens: r.value.tokens.slice(0, 12) };
}

test('fingerprints, trace roots and model ids equal the pinned values for every kernel build and thread count', { timeout: 240_000 }, () =>
  withTempDir(async (dir) => {
    const update = process.env.VERITY_GOLDEN === 'update';
    const golden = JSON.parse(readFileSync(GOLDEN, 'utf8')) as Record<string, GoldenCase>;
    const measured: Record<string, GoldenCase> = {};
    for (const [name, source] of Object.entries(SOURCES)) {
      const model = source(dir);
      for (const kernels of availableKernelPaths()) {
        for (const threads of THREADS) {
          const got = measure(model, kernels, threads);
          measured[name] ??= got;
          if (!update) assert.deepEqual(got, golden[name], `${name} on ${kernels} kernels, ${threads} threads`);
          else assert.deepEqual(got, measured[name], `${name}: ${kernels}/${threads} differs from the first path while updating`);
        }
      }
    }
    if (update) writeFileSync(GOLDEN, `${JSON.stringify(measured, null, 2).replace(/\[[\d,\s]*\]/g, (list) => JSON.stringify(JSON.parse(list)))}\n`);
    else assert.deepEqual(Object.keys(golden).sort(), Object.keys(measured).sort(), 'every pinned model is still measured');
  }),
);
