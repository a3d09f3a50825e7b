import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { createArena, instantiateKernels, sampleArgmax, sampleMult, sampleToken, sampleTopp } from '../../src/engine/index.js';
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
const kernels = instantiateKernels(arena.memory);
const VOCAB = 512;
const logitsPtr = arena.alloc(4 * VOCAB);

function fillLogits(kind: SampleCase['logits']): Float32Array {
  const logits = arena.f32(logitsPtr, VOCAB);
  for (let i = 0; i < VOCAB; i++) {
    logits[i] = kind === 'mod7919' ? f32(f32(((i * 7919) % 1000) / 100) - 5) : i === 3 || i === 10 ? 1 : 0;
  }
  return logits;
}

test('the sampler picks run.c\'s tokens and leaves run.c\'s RNG state, call after call', () => {
  assert.ok(golden.sample.length >= 90);
  for (const c of golden.sample) {
    let state = BigInt(c.seed);
    const params = { temperature: f32(c.temperature), topp: f32(c.topp) };
    c.ids.forEach((id, call) => {
      const logits = fillLogits(c.logits);
      const out = sampleToken(logits, params, state, () => kernels.softmax(logitsPtr, VOCAB));
      const label = `${c.logits} t=${c.temperature} p=${c.topp} seed=${c.seed} call ${call}`;
      assert.equal(out.token, id, label);
      assert.equal(out.rngState.toString(), c.states[call], label);
      state = out.rngState;
    });
  }
});

test('argmax and top-p break ties toward the lowest id', () => {
  assert.equal(sampleArgmax(Float32Array.of(0, 2, 5, 5, 1)), 2);
  const probs = Float32Array.of(0.1, 0.3, 0.3, 0.3);
  // coin 0 → the first kept candidate, which must be id 1 (not 2 or 3).
  assert.equal(sampleTopp(probs, f32(0.5), 0), 1);
  assert.equal(sampleMult(probs, f32(0.05)), 0);
  assert.equal(sampleMult(probs, f32(0.9999)), 3);
});
