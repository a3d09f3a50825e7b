// The proof layer end to end on real models: commitments, traces, openings, the referee, and the
// dissection game between an honest and a faulty party over random faults.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { availableKernelPaths, canonicalConfig, chunkLayout, encode, loadModel, modelIdentity, parseCanonicalConfig, type Model } from '../../src/engine/index.js';
import {
  ProofError, accAt, accumulators, buildOpening, createReferee, decodeOpening, describeJob, encodeOpening, jobCommitment, modelWeightSource,
  recordTrace, roundsNeeded, schedule, simulateDispute, tamperedSource,
  type Fault, type Job, type Opening, type Party,
} from '../../src/proof/index.js';
import { perturbLayer } from '../../src/client/commands/proof.js';
import { runCli, stories260K, stories260KGguf, tok512, withTempDir } from '../helpers.js';

const model = loadModel(stories260K, { tokenizer: tok512 });
const identity = modelIdentity(model);
const source = modelWeightSource(model);
const referee = createReferee(source);

function job(overrides: Partial<{ prompt: string; steps: number; temperature: number; topp: number; seed: bigint }> = {}): Job {
  const o = { prompt: 'Once upon a time', steps: 48, temperature: 0.8, topp: 0.9, seed: 42n, ...overrides };
  return describeJob(identity, {
    prompt: encode(model.tokenizer, o.prompt),
    steps: o.steps,
    sampling: { temperature: Math.fround(o.temperature), topp: Math.fround(o.topp) },
    seed: o.seed,
  });
}

test('the job commitment is recomputable and covers every field', () => {
  const base = job();
  assert.equal(jobCommitment(base), jobCommitment(job()));
  assert.equal(jobCommitment(base), jobCommitment(JSON.parse(JSON.stringify(base)) as Job));
  const variants: Partial<Job>[] = [
    { modelId: '00'.repeat(32) }, { tokenizerHash: '11'.repeat(32) }, { numerics: 'verity-numerics/0' }, { promptTokens: [1, 2] },
    { temperature: Math.fround(0.7) }, { topp: Math.fround(0.8) }, { seed: '43' }, { steps: 49 },
  ];
  for (const v of variants) assert.notEqual(jobCommitment({ ...base, ...v }), jobCommitment(base), JSON.stringify(v));
});

test('the trace is the same for every kernel build and thread count; it has a fixed number of steps', () => {
  const j = job();
  const roots = new Set(availableKernelPaths().flatMap((kernels) => [1, 2].map((threads) => recordTrace(model, j, { kernels, threads }).root)));
  assert.equal(roots.size, 1);
  const sched = schedule(j, model.config.nLayers);
  const promptLength = j.promptTokens.length;
  assert.equal(sched.steps, 48 * 5 + (48 - (promptLength - 1)));
  for (let s = 1; s <= sched.steps; s++) assert.equal(sched.index(sched.at(s)), s);
});

test('the referee reproduces every leaf of a trace, end steps after BOS included, from openings alone', () => {
  // Greedy from an empty prompt stops at BOS after 346 positions: the rest are end steps.
  const j = job({ prompt: '', steps: 360, temperature: 0 });
  const trace = recordTrace(model, j, { keepOutputs: true });
  const ends = trace.preimages.filter((p) => p.kind === 'end').length;
  assert.ok(ends > 0, 'the run stopped early');
  const firstEnd = trace.preimages.findIndex((p) => p.kind === 'end') + 1;
  const steps = [1, 2, 5, 6, 7, 100, 777, firstEnd - 2, firstEnd - 1, firstEnd, firstEnd + 1, trace.leaves.length];
  for (const s of steps) {
    const opening = decodeOpening(JSON.parse(JSON.stringify(encodeOpening(buildOpening(trace, s, model.config)))));
    const report = referee.resolve(j, accAt(trace, s - 1), opening);
    assert.equal(report.leaf, trace.leaves[s - 1], `step ${s} (${trace.preimages[s - 1].kind})`);
  }
});

function expectProofError(code: ProofError['code'], body: () => void): void {
  assert.throws(body, (e: unknown) => e instanceof ProofError && e.code === code, `expected ProofError(${code})`);
}

test('forged openings and weights are rejected with a precise error', () => {
  const j = job();
  const trace = recordTrace(model, j, { keepOutputs: true });
  const s = schedule(j, model.config.nLayers).index({ kind: 'layer', pos: 20, layer: 3 });
  const agreed = accAt(trace, s - 1);
  const honest = buildOpening(trace, s, model.config);
  assert.equal(referee.resolve(j, agreed, honest).leaf, trace.leaves[s - 1]);
  const forged = (change: (o: Opening) => void): Opening => {
    const o = decodeOpening(JSON.parse(JSON.stringify(encodeOpening(honest))));
    change(o);
    return o;
  };
  expectProofError('kv', () => referee.resolve(j, agreed, forged((o) => (o.keys![5] += 1e-3))));
  expectProofError('kv', () => referee.resolve(j, agreed, forged((o) => (o.values![o.values!.length - 1] = 0))));
  expectProofError('input', () => referee.resolve(j, agreed, forged((o) => (o.x![0] = Math.fround(o.x![0] * 2)))));
  expectProofError('chain', () => referee.resolve(j, agreed, forged((o) => (o.leaves[0] = 'ab'.repeat(32)))));
  expectProofError('chain', () => referee.resolve(j, accAt(trace, s - 2), honest));
  expectProofError('preimage', () => referee.resolve(j, agreed, forged((o) => Object.values(o.preimages).forEach((p) => p.kind === 'layer' && (p.kvChain = '00'.repeat(32))))));
  expectProofError('shape', () => referee.resolve(j, agreed, forged((o) => (o.keys = o.keys!.subarray(1)))));
  // A forged weight chunk (one of layer 3's; a fresh referee has not read it yet), and a forged config.
  const layout = chunkLayout(parseCanonicalConfig(canonicalConfig(model)));
  const layerChunk = layout.tensors.find((t) => t.name === 'blk.3.ffn_up.weight')!.firstLeaf;
  expectProofError('weights', () => createReferee(tamperedSource(source, layerChunk)).resolve(j, agreed, honest));
  expectProofError('weights', () => createReferee(tamperedSource(source, 0)).resolve(j, agreed, honest));
  // Weights of another model (the GGUF file's, whose id differs) for this job.
  const other = createReferee(modelWeightSource(loadModel(stories260KGguf)));
  expectProofError('model', () => other.resolve(j, agreed, honest));
});

const perturbed: Model[] = Array.from({ length: model.config.nLayers }, (_, layer) => {
  const copy = loadModel(stories260K, { tokenizer: tok512 });
  perturbLayer(copy, layer);
  return copy;
});

test('two honest parties agree: their roots are equal and no game can open', () => {
  const j = job();
  assert.equal(recordTrace(model, j).root, recordTrace(loadModel(stories260KGguf), { ...j }).root);
});

test('property: the honest party always wins, in at most ⌈log_k N⌉ rounds plus the one-step proof', () => {
  const jobs = [job(), job({ steps: 90, seed: 7n, topp: 0.5 }), job({ prompt: 'Lily and Tom', steps: 30, temperature: 0 })];
  const traces = jobs.map((j) => recordTrace(model, j, { keepOutputs: true }));
  const arbitraryFault = (trace: ReturnType<typeof recordTrace>): fc.Arbitrary<Fault> => {
    const heads = trace.preimages.flatMap((p, i) => (p.kind === 'head' ? [i + 1] : []));
    const layers = trace.preimages.flatMap((p, i) => (p.kind === 'layer' ? [i + 1] : []));
    return fc.oneof(
      fc.constantFrom(...heads).map((step): Fault => ({ kind: 'token', step })),
      fc.constantFrom(...layers).map((step): Fault => ({ kind: 'activation', step })),
      fc.integer({ min: 0, max: model.config.nLayers - 1 }).map((l): Fault => ({ kind: 'weights', model: perturbed[l] })),
      fc.constant<Fault>({ kind: 'prompt' }),
      fc.integer({ min: 1, max: 4 }).map((round): Fault => ({ kind: 'inconsistent', round })),
      fc.integer({ min: 1, max: 4 }).map((round): Fault => ({ kind: 'silent', round })),
    );
  };
  const cases = fc.integer({ min: 0, max: jobs.length - 1 }).chain((i) =>
    fc.record({ i: fc.constant(i), fault: arbitraryFault(traces[i]), k: fc.integer({ min: 2, max: 16 }), faulty: fc.constantFrom<Party>('asserter', 'challenger') }),
  );
  fc.assert(
    fc.property(cases, ({ i, fault, k, faulty }) => {
      const result = simulateDispute(model, jobs[i], fault, referee, { k, faulty }, traces[i]);
      assert.equal(result.outcome.winner, result.honest, `${fault.kind}: ${JSON.stringify(result.outcome)} ${JSON.stringify(result.rejected)}`);
      assert.ok(result.state.log.length <= roundsNeeded(result.steps, k));
      if (result.outcome.reason === 'timeout') assert.equal(fault.kind, 'silent');
      else {
        // A party silent from a round the game never reached only withholds its opening.
        if (fault.kind === 'silent') assert.ok(result.state.log.length < fault.round);
        assert.equal(result.outcome.reason, 'proof');
        assert.ok(result.referee, 'the referee settled the last step');
        // What a party supplies stays small: the step's inputs and a short chain segment.
        assert.ok(Math.max(result.bytes.openings.asserter, result.bytes.openings.challenger) < 2 * 2 ** 20);
      }
    }),
    { numRuns: 120, seed: 2026 },
  );
});

test('verity trace writes the commitment, leaves and root; verity dispute-sim prints the verdict', async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, 'trace.json');
    const flags = ['-i', 'Once upon a time', '-t', '0.8', '-s', '42', '-n', '48'];
    const r = await runCli(['trace', stories260K, '-z', tok512, ...flags, '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse((await import('node:fs')).readFileSync(out, 'utf8')) as { root: string; commitment: string; leaves: { step: number; leaf: string; kind: string }[] };
    const trace = recordTrace(model, job());
    assert.equal(doc.root, trace.root);
    assert.equal(accumulators(trace).at(-1), trace.root);
    // Without the native addon the leaves are hashed by node:crypto: the same trace.
    const portable = join(dir, 'portable.json');
    const again = await runCli(['trace', stories260K, '-z', tok512, ...flags, '--out', portable], 60_000, { VERITY_NATIVE: '0' });
    assert.equal(again.code, 0, again.stderr);
    assert.equal((JSON.parse((await import('node:fs')).readFileSync(portable, 'utf8')) as { root: string }).root, trace.root);
    assert.equal(doc.commitment, trace.commitment);
    assert.deepEqual(doc.leaves.map((l) => l.leaf), trace.leaves);
    const sim = await runCli(['dispute-sim', stories260K, '-z', tok512, ...flags, '--fault', 'token@50', '--k', '4']);
    assert.equal(sim.code, 0, sim.stderr);
    const text = sim.stdout.toString();
    assert.match(text, /round 1 +interval \[0, \d+\]/);
    assert.match(text, /one step +step 50 \(head at position 8\)/);
    assert.match(text, /verdict +challenger wins \(proof\); the honest party was the challenger/);
    const bad = await runCli(['dispute-sim', stories260K, '-z', tok512, ...flags, '--fault', 'activation@50']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^verity: --fault activation@50: step 50 is not a layer step that ran \(the nearest is 49\)\n$/);
  });
});
