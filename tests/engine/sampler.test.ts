import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { KERNEL_PATHS, availableKernelPaths, createArena, instantiateKernels, pickTopp, sampleToken } from '../../src/engine/index.js';
import { goldenDir } from '../helpers.js';

interface SampleCase {
  logits: 'mod7919' | 'ties';
  temperature: number;
  topp: number;
  seed: string;
  ids: number[];
  states: string[];
}
const golden = JSON.parse(readFileSync(join(goldenDir, 'runc.json'), 'utf8')) as { sample: SampleCase[] };
const f32 = Math.fround;
const arena = createArena();
const VOCAB = 512;
const logitsPtr = arena.alloc(4 * VOCAB);
const buffers = { logits: logitsPtr, keys: arena.alloc(8 * VOCAB), vocab: VOCAB };

function fillLogits(kind: SampleCase['logits']): Float32Array {
  const logits = arena.f32(logitsPtr, VOCAB);
  for (let i = 0; i < VOCAB; i++) {
    logits[i] = kind === 'mod7919' ? f32(f32(((i * 7919) % 1000) / 100) - 5) : i === 3 || i === 10 ? 1 : 0;
  }
  return logits;
}

test('the sampler picks run.c\'s tokens and leaves run.c\'s RNG state, call after call, in every kernel build', () => {
  assert.ok(golden.sample.length >= 90);
  for (const path of availableKernelPaths()) for (const c of golden.sample) {
    const kernels = instantiateKernels(arena.memory, path);
    let state = BigInt(c.seed);
    const params = { temperature: f32(c.temperature), topp: f32(c.topp) };
    c.ids.forEach((id, call) => {
      fillLogits(c.logits);
      const out = sampleToken(kernels, arena.memory, buffers, params, state);
      const label = `${path}: ${c.logits} t=${c.temperature} p=${c.topp} seed=${c.seed} call ${call}`;
      assert.equal(out.token, id, label);
      assert.equal(out.rngState.toString(), c.states[call], label);
      state = out.rngState;
    });
  }
});

test('argmax and top-p break ties toward the lowest id', () => {
  for (const path of KERNEL_PATHS.filter((p) => p !== 'native')) {
    const k = instantiateKernels(arena.memory, path);
    const set = (values: number[]): void => arena.f32(logitsPtr, values.length).set(values);
    set([0, 2, 5, 5, 1]);
    assert.equal(k.argmax(logitsPtr, 5), 2);
    set([0.1, 0.3, 0.3, 0.3]);
    const four = { ...buffers, vocab: 4 };
    // coin 0 → the first kept candidate, which must be id 1 (not 2 or 3).
    assert.equal(pickTopp(k, arena.memory, four, f32(0.5), 0), 1);
    assert.equal(pickTopp(k, arena.memory, four, f32(0.5), f32(0.99)), 2);
    assert.equal(k.sampleMult(logitsPtr, 4, f32(0.05)), 0);
    assert.equal(k.sampleMult(logitsPtr, 4, f32(0.9999)), 3);
  }
});

test('top-p with no id at the cutoff (a flat distribution under a tiny top-p, or NaN) picks the argmax, never a stale or out-of-range id', () => {
  for (const path of availableKernelPaths()) {
    const k = instantiateKernels(arena.memory, path);
    // Leave a stale key behind first: an earlier pick over other probabilities.
    arena.f32(logitsPtr, 4).set([0.1, 0.3, 0.3, 0.3]);
    pickTopp(k, arena.memory, { ...buffers, vocab: 4 }, f32(0.5), 0);
    // Flat over 512 ids, top-p 0.001 < 1/512: the cutoff (1 − p)/511 is above every probability.
    const flat = arena.f32(logitsPtr, VOCAB);
    flat.fill(f32(1 / VOCAB));
    assert.equal(pickTopp(k, arena.memory, buffers, f32(0.001), f32(0.5)), 0, `${path}: ties go to the lowest id`);
    flat[7] = f32(1 / VOCAB + 1e-9); // still under the cutoff, but the most probable
    assert.equal(pickTopp(k, arena.memory, buffers, f32(0.001), f32(0.5)), 7, path);
    flat.fill(Number.NaN);
    const id = pickTopp(k, arena.memory, buffers, f32(0.9), f32(0.5));
    assert.ok(id >= 0 && id < VOCAB, `${path}: ${id}`);
    assert.equal(id, k.argmax(logitsPtr, VOCAB));
  }
});
