// A model split by layer ranges over pipeline stages (src/pipeline) commits to the single-node
// trace bit for bit: same leaves, same root, same tokens as recordTrace, for every split, greedy and
// sampled, prompt batches on and off, llama2.c and GGUF (F32 and Q8_0), tied and untied classifiers;
// partial models hold only their share and refuse the rest; layers moved between positions leave the
// root unchanged; sub-roots are recomputable from the full leaf list.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeRandomLlama2c, type ModelShape } from '../../bench/random-model.js';
import {
  EngineError, availableKernelPaths, canMapWeights, createSession, disposeSession, generate, ggufFromModel, layerStep, loadModel, modelIdentity, writeGguf,
  type LayerRange, type Model,
} from '../../src/engine/index.js';
import { describeJob, leafHash, recordTrace, type Job } from '../../src/proof/index.js';
import { localHandle, moveLayers, runPipeline, runPipelineLocal, type PipelineResult } from '../../src/pipeline/driver.js';
import { decodeHandover, encodeHandover, startStage, type StageOptions, type StageRun } from '../../src/pipeline/stage.js';
import { assembleTrace, stageSteps, stageSubRoot, stageSubRoots } from '../../src/pipeline/trace.js';
import { stories260K, stories260KGguf, tok512, withTempDir } from '../helpers.js';

/** stories15M's layer count (6) in a small shape: GQA 4/2, untied classifier, tok512's vocabulary. */
const SMALL6: ModelShape = { dim: 64, hiddenDim: 160, nLayers: 6, nHeads: 4, nKvHeads: 2, vocabSize: 512, seqLen: 96, separateClassifier: true };

const GREEDY = { temperature: 0, topp: 0.9 };
const SAMPLED = { temperature: 0.8, topp: 0.9 };

interface Subject {
  name: string;
  path: string;
  tokenizer?: string;
  whole: Model;
}

function job(model: Model, sampling: { temperature: number; topp: number }, prompt: number[], steps: number, seed = 42n): Job {
  return describeJob(modelIdentity(model), { prompt, steps, sampling, seed });
}

/** The stages of `ranges`, each loaded with only its layers (plus `extra` more layers on either side, for moves). */
function loadStages(s: Subject, ranges: LayerRange[], extra: (LayerRange | undefined)[] = []): Model[] {
  return ranges.map((r, i) => loadModel(s.path, { tokenizer: s.tokenizer, layers: extra[i] ?? r, embedding: i === 0, head: i === ranges.length - 1 }));
}

function start(models: Model[], ranges: LayerRange[], j: Job, options: StageOptions = {}): StageRun[] {
  const L = models[0].config.nLayers;
  return ranges.map((r, i) => startStage(models[i], { layers: r, embeds: r.first === 0, samples: r.end === L }, j, options));
}

function assertSameTrace(got: PipelineResult, whole: Model, j: Job, promptBatch: number | undefined, what: string): void {
  const want = recordTrace(whole, j, { promptBatch });
  assert.equal(got.leaves.length, want.leaves.length, what);
  got.leaves.forEach((leaf, i) => assert.equal(leaf, want.leaves[i], `${what}: step ${i + 1}`));
  assert.equal(got.root, want.root, what);
  assert.deepEqual(got.tokens, want.tokens, what);
  assert.equal(got.commitment, want.commitment, what);
}

const SPLITS5: LayerRange[][] = [
  [{ first: 0, end: 5 }],
  [{ first: 0, end: 2 }, { first: 2, end: 5 }],
  [{ first: 0, end: 1 }, { first: 1, end: 3 }, { first: 3, end: 5 }],
  [{ first: 0, end: 4 }, { first: 4, end: 5 }],
];
const SPLITS6: LayerRange[][] = [
  [{ first: 0, end: 6 }],
  [{ first: 0, end: 3 }, { first: 3, end: 6 }],
  [{ first: 0, end: 1 }, { first: 1, end: 5 }, { first: 5, end: 6 }],
  [{ first: 0, end: 2 }, { first: 2, end: 3 }, { first: 3, end: 4 }, { first: 4, end: 6 }],
];

/** 11 prompt tokens (BOS first), a batch of 8 then 3 with promptBatch 8. */
const PROMPT = [1, 403, 407, 261, 378, 426, 280, 259, 372, 275, 270];

function withSubjects(body: (subjects: Subject[]) => void): void {
  withTempDir((dir) => {
    const bin = join(dir, 'small6.bin');
    writeRandomLlama2c(bin, SMALL6, 7);
    const small = loadModel(bin, { tokenizer: tok512 });
    const gguf = join(dir, 'small6-q8_0.gguf');
    writeGguf(gguf, ggufFromModel(small, { type: 'q8_0', name: 'small6-q8_0' }));
    body([
      { name: 'stories260K.bin', path: stories260K, tokenizer: tok512, whole: loadModel(stories260K, { tokenizer: tok512 }) },
      { name: 'stories260K.gguf', path: stories260KGguf, whole: loadModel(stories260KGguf) },
      { name: 'small6.bin (untied)', path: bin, tokenizer: tok512, whole: small },
      { name: 'small6 Q8_0 GGUF', path: gguf, whole: loadModel(gguf, { weights: 'memory' }) },
    ]);
  });
}

test('every split, greedy and sampled, batched or not: the leaves, root and tokens of recordTrace', { timeout: 240_000 }, () =>
  withSubjects((subjects) => {
    for (const s of subjects) {
      const L = s.whole.config.nLayers;
      for (const ranges of L === 5 ? SPLITS5 : SPLITS6) {
        const models = loadStages(s, ranges);
        for (const sampling of [GREEDY, SAMPLED]) {
          for (const promptBatch of [undefined, 1, 8]) {
            const steps = L === 5 ? 60 : 40;
            const j = job(s.whole, sampling, PROMPT, steps);
            const stages = start(models, ranges, j);
            const got = runPipelineLocal(stages, j, { promptBatch });
            stages.forEach((st) => st.close());
            const what = `${s.name} ${ranges.map((r) => `[${r.first},${r.end})`).join('+')} t=${sampling.temperature} batch=${promptBatch}`;
            assertSameTrace(got, s.whole, j, promptBatch, what);
            // The sub-roots are the stages' own leaves, recomputable from the full list.
            assert.deepEqual(stageSubRoots(j, L, got.leaves, got.layouts, got.positions), got.stages.map((x) => x.subRoot), what);
          }
        }
      }
    }
    // Other kernel builds and thread counts in the stages, and matrices mapped from the file: the same bits.
    for (const kernels of availableKernelPaths()) {
      const j = job(subjects[2].whole, SAMPLED, PROMPT, 40);
      const ranges = SPLITS6[2];
      const stages = start(loadStages(subjects[2], ranges), ranges, j, { kernels, threads: 2 });
      assertSameTrace(runPipelineLocal(stages, j), subjects[2].whole, j, undefined, `kernels ${kernels}, 2 threads`);
      stages.forEach((st) => st.close());
    }
    if (canMapWeights()) {
      const q8 = subjects[3];
      const ranges = SPLITS6[1];
      const models = ranges.map((r, i) => loadModel(q8.path, { weights: 'mapped', layers: r, embedding: i === 0, head: i === ranges.length - 1 }));
      const j = job(q8.whole, SAMPLED, PROMPT, 40);
      const stages = start(models, ranges, j, { kernels: 'native' });
      assertSameTrace(runPipelineLocal(stages, j), q8.whole, j, undefined, 'mapped Q8_0');
      stages.forEach((st) => st.close());
    }
    // A BOS inside the prompt stops the run there; every later step is an end step.
    const s = subjects[0];
    const j = job(s.whole, SAMPLED, [1, 403, 407, 1, 378], 12);
    const models = loadStages(s, SPLITS5[2]);
    const stages = start(models, SPLITS5[2], j);
    const got = runPipelineLocal(stages, j);
    assert.equal(got.positions, 3);
    assertSameTrace(got, s.whole, j, undefined, 'BOS in the prompt');
    // A sampled BOS stops generation too (greedy stories260K samples it at position 229): end steps follow.
    for (const ranges of [SPLITS5[1], SPLITS5[3]]) {
      const j = job(s.whole, GREEDY, PROMPT, 260);
      const stages = start(loadStages(s, ranges), ranges, j);
      const got = runPipelineLocal(stages, j);
      assert.equal(got.positions, 230);
      assertSameTrace(got, s.whole, j, undefined, 'BOS sampled');
    }
  }),
);

test('partial models hold only their share, and refuse what they do not hold', () => {
  const whole = loadModel(stories260K, { tokenizer: tok512 });
  const first = loadModel(stories260K, { tokenizer: tok512, layers: { first: 0, end: 2 } });
  const middle = loadModel(stories260K, { tokenizer: tok512, layers: { first: 2, end: 3 } });
  const last = loadModel(stories260K, { tokenizer: tok512, layers: { first: 3, end: 5 } });
  assert.deepEqual(first.part, { layers: { first: 0, end: 2 }, embedding: true, head: false });
  assert.deepEqual(last.part, { layers: { first: 3, end: 5 }, embedding: false, head: true });
  for (const m of [first, middle, last]) assert.ok(m.heldBytes! < whole.heldBytes!, `${m.heldBytes} < ${whole.heldBytes}`);
  // Layers cost the same: the middle stage (one layer, no embedding) holds the least.
  assert.ok(middle.heldBytes! < first.heldBytes! && middle.heldBytes! < last.heldBytes!);
  // The tied classifier is the embedding: the last stage holds it too.
  const embedding = 4 * whole.config.vocabSize * whole.config.dim;
  assert.ok(last.heldBytes! > embedding);
  const gguf = loadModel(stories260KGguf, { layers: { first: 1, end: 2 }, embedding: false, head: false });
  assert.ok(gguf.heldBytes! < loadModel(stories260KGguf).heldBytes! / 4);

  const j = job(whole, GREEDY, PROMPT, 20);
  const refuses = (f: () => unknown, pattern: RegExp): void => assert.throws(f, (e: unknown) => e instanceof EngineError && pattern.test(e.message));
  refuses(() => startStage(first, { layers: { first: 0, end: 3 }, embeds: true, samples: false }, j), /layer 2, which its model does not hold/);
  refuses(() => startStage(middle, { layers: { first: 2, end: 5 }, embeds: false, samples: true }, j), /does not hold/);
  refuses(() => generate(middle, { prompt: PROMPT, steps: 4, sampling: GREEDY, seed: 1n }).next(), /not loaded in this model/);
  const session = createSession(middle, { maxPositions: 4 });
  try {
    refuses(() => layerStep(session, 0, 0), /layer 0 is not loaded in this model \(it holds layers 2\.\.2\)/);
  } finally {
    disposeSession(session);
  }
  refuses(() => modelIdentity(last), /carries no model id/);
  // Ranges outside the model, or empty.
  refuses(() => loadModel(stories260K, { tokenizer: tok512, layers: { first: 3, end: 6 } }), /not a non-empty range/);
  refuses(() => loadModel(stories260K, { tokenizer: tok512, layers: { first: 2, end: 2 } }), /not a non-empty range/);
  refuses(() => loadModel(stories260KGguf, { layers: { first: -1, end: 2 } }), /not a non-empty range/);
  refuses(() => loadModel(stories260K, { tokenizer: tok512, head: true }), /together with layers/);
});

test('bad stage input is a clear EngineError, and the stage goes on', () => {
  const whole = loadModel(stories260K, { tokenizer: tok512 });
  const models = [loadModel(stories260K, { tokenizer: tok512, layers: { first: 0, end: 2 } }), loadModel(stories260K, { tokenizer: tok512, layers: { first: 2, end: 5 } })];
  const j = job(whole, SAMPLED, PROMPT, 30);
  const refuses = (f: () => unknown, pattern: RegExp): void => assert.throws(f, (e: unknown) => e instanceof EngineError && pattern.test(e.message));
  refuses(() => startStage(models[0], { layers: { first: 1, end: 1 }, embeds: false, samples: false }, j), /non-empty range/);
  refuses(() => startStage(models[0], { layers: { first: 0, end: 9 }, embeds: true, samples: false }, j), /non-empty range/);
  refuses(() => startStage(models[0], { layers: { first: 0, end: 2 }, embeds: false, samples: false }, j), /embeds/);
  refuses(() => startStage(models[1], { layers: { first: 2, end: 5 }, embeds: false, samples: false }, j), /samples/);
  refuses(() => startStage(models[0], { layers: { first: 0, end: 2 }, embeds: true, samples: false }, { ...j, steps: 10_000 }), /steps must be/);
  const [a, b] = start(models, [{ first: 0, end: 2 }, { first: 2, end: 5 }], j);
  const dim = whole.config.dim;
  refuses(() => a.forward(1, 1, { tokens: [PROMPT[1]] }), /runs position 0 next/);
  refuses(() => a.forward(0, 1, { x: new Float32Array(dim) }), /takes 1 tokens/);
  refuses(() => a.forward(0, 1, { tokens: [5] }), /prompt position: its token is 1/);
  refuses(() => a.forward(0, 20, { tokens: Array(20).fill(1) }), /only prompt positions/);
  refuses(() => b.forward(0, 1, { x: new Float32Array(dim - 1) }), /1 residuals of 64 floats \(64\), got 63/);
  refuses(() => b.forward(0, 1, { tokens: [1] }), /no Float32Array/);
  refuses(() => a.head(0), /only the last stage/);
  refuses(() => b.head(0), /last ran position -1/);
  refuses(() => a.exportLayers({ first: 0, end: 2 }), /not a proper prefix or suffix/);
  refuses(() => a.exportLayers({ first: 0, end: 1 }), /keeps layer 0/);
  refuses(() => b.exportLayers({ first: 4, end: 5 }), /keeps the last layer/);
  refuses(() => b.importLayers({ layers: { first: 0, end: 1 }, positions: 0, keys: [], values: [], kvChains: [] }), /does not border/);
  refuses(() => decodeHandover(new Uint8Array(20), whole.config.kvDim), /do not fit/);
  refuses(() => decodeHandover(new Uint8Array(3), whole.config.kvDim), /truncated/);
  refuses(() => b.importLayers({ layers: { first: 1, end: 2 }, positions: 0, keys: [new Float32Array(0)], values: [new Float32Array(0)], kvChains: ['00'.repeat(32)] }), /not loaded in this stage's model/);
  // After all that, the run still gives recordTrace's root.
  const got = runPipelineLocal([a, b], j, { promptBatch: 4 });
  assertSameTrace(got, whole, j, 4, 'after refusals');
  refuses(() => b.forward(got.positions + 1, 1, { x: new Float32Array(dim) }), /runs position/);
  a.close();
  refuses(() => a.forward(got.positions, 1, { tokens: [1] }), /closed/);
  b.close();
});

test('layers moved between positions (preloaded overlap) leave the root unchanged; sync and async drivers', { timeout: 120_000 }, async () => {
  const whole = loadModel(stories260K, { tokenizer: tok512 });
  const ranges = [{ first: 0, end: 2 }, { first: 2, end: 5 }];
  // Stage 0 holds layers 0..2 and stage 1 layers 1..4: layer 1 and layer 2 can go either way.
  const models = [
    loadModel(stories260K, { tokenizer: tok512, layers: { first: 0, end: 3 }, embedding: true, head: false }),
    loadModel(stories260K, { tokenizer: tok512, layers: { first: 1, end: 5 }, embedding: false, head: true }),
  ];
  for (const sampling of [GREEDY, SAMPLED]) {
    const j = job(whole, sampling, PROMPT, 40);
    // Sync: layer 1 moves down the pipeline after position 14 (a handover cloned as a worker would receive it), back at 20.
    const stages = start(models, ranges, j);
    const got = runPipelineLocal(stages, j, {
      promptBatch: 8,
      beforePosition(pos) {
        if (pos === 14) stages[1].importLayers(structuredClone(stages[0].exportLayers({ first: 1, end: 2 })));
        if (pos === 20) stages[0].importLayers(structuredClone(stages[1].exportLayers({ first: 1, end: 2 })));
        // As bytes, as a channel carries it.
        if (pos === 26) stages[0].importLayers(decodeHandover(encodeHandover(stages[1].exportLayers({ first: 2, end: 3 })), whole.config.kvDim));
      },
    });
    assertSameTrace(got, whole, j, 8, `moves, t=${sampling.temperature}`);
    assert.deepEqual(got.layouts.map((l) => [l.from, l.ranges.map((r) => r.end)]), [[0, [2, 5]], [14, [1, 5]], [20, [2, 5]], [26, [3, 5]]]);
    assert.deepEqual(stages.map((s) => s.layers), [{ first: 0, end: 3 }, { first: 3, end: 5 }]);
    // The sub-roots follow who ran what, and anyone can recompute them from recordTrace's leaves.
    const want = recordTrace(whole, j);
    assert.deepEqual(stageSubRoots(j, 5, want.leaves, got.layouts, got.positions), got.stages.map((s) => s.subRoot));
    stages.forEach((s) => s.close());

    // Async: the same moves through StageHandles.
    const again = start(models, ranges, j);
    const handles = again.map(localHandle);
    const viaHandles = await runPipeline(handles, j, {
      beforePosition: async (pos) => {
        if (pos === 14) await moveLayers(handles, 0, 1, { first: 1, end: 2 });
        if (pos === 20) await moveLayers(handles, 1, 0, { first: 1, end: 2 });
        if (pos === 26) await moveLayers(handles, 1, 0, { first: 2, end: 3 });
      },
    });
    assert.deepEqual(viaHandles, got);
    // A move the receiver cannot take (layer 3 is not loaded in stage 0) fails, and the layer stays where it was.
    await assert.rejects(moveLayers(handles, 1, 0, { first: 3, end: 4 }), EngineError);
    assert.deepEqual(again.map((s) => s.layers), [{ first: 0, end: 3 }, { first: 3, end: 5 }]);
    again.forEach((s) => s.close());
  }
});

test('sub-roots: domain-separated per stage, recomputable, and a changed leaf changes its stage’s alone', () => {
  const whole = loadModel(stories260K, { tokenizer: tok512 });
  const ranges = SPLITS5[2];
  const models = loadStages({ name: '', path: stories260K, tokenizer: tok512, whole }, ranges);
  const j = job(whole, SAMPLED, PROMPT, 24);
  const stages = start(models, ranges, j);
  const got = runPipelineLocal(stages, j);
  stages.forEach((s) => s.close());
  const trace = recordTrace(whole, j);
  const layout = [{ from: 0, ranges }];
  const owned = stageSteps(j, 5, layout, got.positions);
  assert.deepEqual(owned, got.stages.map((s) => s.steps));
  // Every step that ran belongs to exactly one stage; the head steps to the last.
  assert.equal(owned.flat().length, got.positions * 5 + (got.positions - (PROMPT.length - 1)));
  assert.equal(new Set(owned.flat()).size, owned.flat().length);
  const roots = stageSubRoots(j, 5, trace.leaves, layout, got.positions);
  assert.deepEqual(roots, got.stages.map((s) => s.subRoot));
  assert.equal(new Set(roots).size, 3);
  // The same leaves under another index or range give another sub-root.
  const leaves1 = owned[1].map((s) => trace.leaves[s - 1]);
  assert.notEqual(stageSubRoot(got.commitment, 2, ranges[1], leaves1), roots[1]);
  assert.notEqual(stageSubRoot(got.commitment, 1, { first: 1, end: 4 }, leaves1), roots[1]);
  for (const [stage, k] of [[0, 3], [1, 17], [2, owned[2].length - 1]]) {
    const step = owned[stage][k];
    const changed = [...trace.leaves];
    changed[step - 1] = leafHash({ kind: 'end', step });
    const after = stageSubRoots(j, 5, changed, layout, got.positions);
    after.forEach((r, i) => (i === stage ? assert.notEqual(r, roots[i]) : assert.equal(r, roots[i])));
  }
  // Assembling refuses leaves that are not the schedule's, twice the same step, or a hole.
  const layer = { pos: 0, layer: 0, leaf: trace.leaves[0] };
  assert.throws(() => assembleTrace(j, 5, [layer, layer], []), /two leaves/);
  assert.throws(() => assembleTrace(j, 5, [{ ...layer, layer: 5 }], []), /not a step/);
  assert.throws(() => assembleTrace(j, 5, [], [{ pos: 0, leaf: trace.leaves[0] }]), /not a step/);
  assert.throws(() => assembleTrace(j, 5, [{ ...layer, layer: 1 }], []), /step 1 has no leaf/);
});
