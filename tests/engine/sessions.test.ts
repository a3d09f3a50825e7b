// Sessions on one loaded model are independent: created and disposed in any order, stepped
// interleaved token by token (on one thread pool too), each gives the bits it gives alone, and
// their memory is reused rather than the arena growing.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  closeThreads, createArena, createFingerprint, createSession, disposeSession, embed, generate, layerStep, loadModel, threadPoolCount,
  type GenerateRequest, type GenerationSummary, type GeneratedToken, type Model,
} from '../../src/engine/index.js';
import { writeRandomLlama2c, xorshift32 } from '../../bench/random-model.js';
import { stories260K, tok512, withTempDir } from '../helpers.js';

function shuffled<T>(items: T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

type Request = Omit<GenerateRequest, 'observer'>;

function solo(model: Model, request: Request): string {
  const observer = createFingerprint();
  const run = generate(model, { ...request, observer });
  while (!run.next().done);
  return observer.hex();
}

interface Running {
  index: number;
  run: Generator<GeneratedToken, GenerationSummary>;
  print: ReturnType<typeof createFingerprint>;
}

/**
 * Runs every request at once: started in a shuffled order, then one token at a time of a randomly
 * chosen live run, so sessions are created and disposed (when their run ends) interleaved.
 */
function interleaved(model: Model, requests: Request[], random: () => number): string[] {
  const prints: string[] = new Array(requests.length);
  const pending = shuffled(requests.map((_, i) => i), random);
  const live: Running[] = [];
  while (pending.length > 0 || live.length > 0) {
    if (pending.length > 0 && (live.length === 0 || random() < 0.3)) {
      const index = pending.pop()!;
      const print = createFingerprint();
      live.push({ index, run: generate(model, { ...requests[index], observer: print }), print });
      continue;
    }
    const at = Math.floor(random() * live.length);
    const r = live[at];
    if (r.run.next().done) {
      prints[r.index] = r.print.hex();
      live.splice(at, 1);
    }
  }
  return prints;
}

const PROMPTS = ['Once upon a time', 'The little dog', 'Lily wanted', 'One day, a boy', 'Tom and Sue', 'She', 'The sun was hot and', 'A cat'];

function requestsFor(model: Model, count: number, steps: number, threads: number[]): Request[] {
  return Array.from({ length: count }, (_, i) => ({
    prompt: PROMPTS[i % PROMPTS.length],
    steps: Math.min(model.config.seqLen, steps + 7 * (i % 4)),
    sampling: { temperature: Math.fround([0, 0.8, 1, 0.5][i % 4]), topp: Math.fround([0.9, 1, 0.5, 0][i % 4]) },
    seed: BigInt(1000 + 37 * i),
    threads: threads[i % threads.length],
  }));
}

test('the arena frees blocks in any order, coalesces them and reuses the memory', () => {
  const arena = createArena(0);
  const weights = arena.alloc(1000);
  const random = xorshift32(7);
  const live = new Map<number, number>();
  const overlaps = (ptr: number, bytes: number): boolean => [...live].some(([p, n]) => ptr < p + n && p < ptr + bytes);
  let peakTop = 0;
  for (let round = 0; round < 2000; round++) {
    if (live.size > 0 && (random() < 0.5 || live.size > 20)) {
      const ptrs = [...live.keys()];
      const ptr = ptrs[Math.floor(random() * ptrs.length)];
      arena.free(ptr);
      live.delete(ptr);
    } else {
      const bytes = 1 + Math.floor(random() * 5000);
      const ptr = arena.allocBlock(bytes);
      assert.ok(ptr > weights && ptr % 64 === 0);
      assert.ok(!overlaps(ptr, bytes), `block ${ptr}+${bytes} overlaps a live one`);
      live.set(ptr, bytes);
    }
    peakTop = Math.max(peakTop, arena.usage().top);
  }
  assert.ok(peakTop < 200_000, `top stayed bounded by what was live at once (peak ${peakTop})`);
  for (const ptr of shuffled([...live.keys()], random)) arena.free(ptr);
  const empty = arena.usage();
  assert.deepEqual([empty.liveBlocks, empty.freeRanges, empty.freeBytes], [0, 0, 0], 'everything coalesced back into the bump');
  assert.equal(empty.top, weights + 1088, 'top is back just above the permanent allocation');
  const a = arena.allocBlock(10);
  arena.free(a);
  assert.throws(() => arena.free(a), /not a live block/);
  assert.throws(() => arena.free(weights), /not a live block/);
});

test('a disposed session frees only itself; double dispose is a no-op; a disposed session cannot run', () => {
  const model = loadModel(stories260K, { tokenizer: tok512 });
  const base = model.arena.usage();
  const [a, b, c] = [createSession(model), createSession(model), createSession(model)];
  const run = (s: typeof a, tokens: number[]): Float32Array => {
    tokens.forEach((t, pos) => {
      embed(s, t);
      for (let l = 0; l < model.config.nLayers; l++) layerStep(s, l, pos);
    });
    return model.arena.f32(s.x, model.config.dim).slice();
  };
  const alone = run(a, [1, 400, 29]);
  disposeSession(a);
  disposeSession(a);
  assert.throws(() => embed(a, 1), /disposed/);
  assert.throws(() => layerStep(a, 0, 0), /disposed/);
  assert.deepEqual(run(b, [1, 400, 29]), alone, 'b is untouched by disposing a (made before it)');
  const d = createSession(model); // reuses a's block
  assert.equal(d.block, a.block);
  assert.deepEqual(run(c, [1, 400, 29]), alone);
  assert.deepEqual(run(d, [1, 400, 29]), alone);
  for (const s of [c, b, d]) disposeSession(s);
  assert.deepEqual({ ...model.arena.usage(), memoryBytes: 0 }, { ...base, memoryBytes: 0 }, 'all memory returned (pages stay: memories never shrink)');
});

test('interleaved generations on stories260K give their solo fingerprints; the arena does not grow', () => {
  const model = loadModel(stories260K, { tokenizer: tok512 });
  const requests = requestsFor(model, 12, 40, [1]).map((r, i) => ({ ...r, kernels: i % 3 === 2 ? ('scalar' as const) : undefined }));
  const expected = requests.map((r) => solo(model, r));
  assert.equal(new Set(expected).size, expected.length, 'every request is a different computation');
  const random = xorshift32(42);
  assert.deepEqual(interleaved(model, requests, random), expected);
  const after = model.arena.usage();
  for (let cycle = 0; cycle < 20; cycle++) {
    const some = shuffled(requests.map((_, i) => i), random).slice(0, 6);
    assert.deepEqual(interleaved(model, some.map((i) => requests[i]), random), some.map((i) => expected[i]));
  }
  const later = model.arena.usage();
  assert.equal(later.liveBlocks, 0);
  assert.equal(later.memoryBytes, after.memoryBytes, 'the memory did not grow over 20 more cycles');
  assert.ok(later.top <= after.top, `top ${later.top} did not grow past ${after.top}`);

  // A run given up half way (its consumer stopped) frees its session too.
  const abandoned = generate(model, requests[0]);
  abandoned.next();
  abandoned.return(undefined as never);
  assert.equal(model.arena.usage().liveBlocks, 0);
});

test('interleaved generations on a random-weight model, 1 and 2 threads on the shared pools, give their solo fingerprints', () => {
  withTempDir((dir) => {
    const path = join(dir, 'wide.bin');
    // Large enough for matrix products and attention to be split among threads, GQA 6/3.
    writeRandomLlama2c(path, { dim: 264, hiddenDim: 520, nLayers: 2, nHeads: 6, nKvHeads: 3, vocabSize: 512, seqLen: 256 }, 9);
    const model = loadModel(path, { tokenizer: tok512 });
    try {
      const requests = requestsFor(model, 6, 24, [1, 2, 2]);
      const expected = requests.map((r) => solo(model, { ...r, threads: 1 }));
      assert.equal(new Set(expected).size, expected.length);
      assert.deepEqual(interleaved(model, requests, xorshift32(5)), expected);
      assert.ok(threadPoolCount(model) > 0, 'the threaded sessions ran on the worker pool');
      assert.equal(model.arena.usage().liveBlocks, 0);
    } finally {
      closeThreads(model);
    }
  });
});
