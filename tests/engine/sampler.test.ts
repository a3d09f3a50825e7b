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
