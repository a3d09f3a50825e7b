import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  KERNEL_PATHS,
  createArena,
  createFingerprint,
  dequantizeQ8_0,
  f16ToF32,
  f32ToF16,
  generate,
  ggufFromModel,
  instantiateKernels,
  loadModel,
  modelIdentity,
  quantizeQ8_0,
  writeGguf,
  type Model,
} from '../../src/engine/index.js';
import { runCli, stories260K, tok512, withTempDir } from '../helpers.js';

const f32 = Math.fround;

test('f32 ↔ f16 conversion rounds to nearest even and handles subnormals, overflow and NaN', () => {
  const cases: [number, number][] = [
    [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65520, 0x7c00], [2 ** -24, 0x0001], [2 ** -25, 0x0000],
    [f32(0.1), 0x2e66], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [-0, 0x8000], [Infinity, 0x7c00],
  ];
  for (const [value, bits] of cases) assert.equal(f32ToF16(value), bits, `${value}`);
  assert.equal(f32ToF16(NaN) & 0x7e00, 0x7e00);
  for (let h = 0; h < 0x7c00; h += 7) assert.equal(f32ToF16(f16ToF32(h)), h, `round trip ${h}`);
});

test('Q8_0 weight blocks: scale max|x|/127 as f16, values rounded half away from zero', () => {
  const x = Float32Array.from({ length: 32 }, (_, i) => (i === 0 ? 2.54 : i === 1 ? -1.27 : i === 2 ? 0.01 : i * 0.001));
  const block = quantizeQ8_0(x);
  assert.equal(block.length, 34);
  const view = new DataView(block.buffer);
  assert.equal(view.getUint16(0, true), f32ToF16(f32(f32(2.54) / 127)));
  assert.deepEqual([view.getInt8(2), view.getInt8(3), view.getInt8(4)], [127, -64, 1]); // -63.5 rounds away to -64
  const back = dequantizeQ8_0(block);
  assert.ok(Math.abs(back[0] - 2.54) < 0.01);
  assert.deepEqual(Array.from(quantizeQ8_0(new Float32Array(32))), new Array(34).fill(0));
});

test('activation quantisation follows the spec in every kernel build', () => {
  const arena = createArena();
  const n = 96;
  const values = Float32Array.from({ length: n }, (_, i) => (i === 5 ? NaN : i === 40 ? Infinity / Infinity : Math.sin(i * 1.7) * (1 + (i % 7))));
  values[64 + 3] = 0.5 * (1 / f32(1 / f32(f32(7) / 127))); // lands near a rounding tie
  const expected = { q: [] as number[], d: [] as number[] };
  for (let b = 0; b < n / 32; b++) {
    const block = values.subarray(32 * b, 32 * b + 32);
    const amax = block.reduce((m, v) => (Math.abs(v) > m ? Math.abs(v) : m), 0);
    const d = f32(amax / 127);
    const id = d !== 0 ? f32(1 / d) : 0;
    expected.d.push(d);
    for (const v of block) {
      const scaled = f32(v * id);
      const c = Number.isNaN(scaled) ? NaN : Math.min(Math.max(scaled, -127), 127);
      const t = Math.trunc(c);
      const frac = c - t;
      expected.q.push(Number.isNaN(c) ? 0 : frac >= 0.5 ? t + 1 : frac <= -0.5 ? t - 1 : t);
    }
  }
  for (const path of KERNEL_PATHS.filter((p) => p !== 'native')) {
    const k = instantiateKernels(arena.memory, path);
    const mark = arena.mark();
    const x = arena.alloc(4 * n);
    const qs = arena.alloc(n);
    const ds = arena.alloc(4 * (n / 32));
    arena.f32(x, n).set(values);
    k.quantizeQ8(qs, ds, x, n);
    assert.deepEqual(Array.from(new Int8Array(arena.memory.buffer, qs, n)), expected.q.map((q) => (Object.is(q, -0) ? 0 : q)), path);
    assert.deepEqual(Array.from(arena.f32(ds, n / 32)), expected.d, path);
    arena.release(mark);
  }
});

function fingerprint(model: Model): string {
  const observer = createFingerprint();
  const run = generate(model, { prompt: 'Once upon a time', steps: 80, sampling: { temperature: 0, topp: 0.9 }, seed: 1n, observer });
  while (!run.next().done);
  return observer.hex();
}

test('an F16 model computes exactly what the F32 model with the same (f16-rounded) weights computes', () => {
  withTempDir((dir) => {
    const original = loadModel(stories260K, { tokenizer: tok512 });
    const f16Path = join(dir, 'f16.gguf');
    writeGguf(f16Path, ggufFromModel(original, { type: 'f16' }));
    const f16 = loadModel(f16Path);
    const roundedPath = join(dir, 'rounded.gguf');
    writeGguf(roundedPath, ggufFromModel(f16, { type: 'f32' }));
    const rounded = loadModel(roundedPath);
    assert.equal(fingerprint(f16), fingerprint(rounded));
    assert.equal(modelIdentity(f16).modelId, modelIdentity(rounded).modelId);
    assert.notEqual(modelIdentity(f16).modelId, modelIdentity(original).modelId);
  });
});

test('verity quantize writes a Q8_0 GGUF that loads, runs and has its own id', async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, 'stories260K-q8_0.gguf');
    const r = await runCli(['quantize', stories260K, out, '-z', tok512]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /31 of 47 tensors Q8_0, the rest F32/); // ffn_down rows of 172 are not whole blocks
    const q8 = loadModel(out);
    assert.equal(q8.weights.layers[0].w1.dtype, 'q8_0');
    assert.equal(q8.weights.layers[0].w2.dtype, 'f32');
    const inspect = await runCli(['inspect', out, '--json']);
    const info = JSON.parse(inspect.stdout.toString()) as { modelId: string; tensors: { name: string; bytes: number }[] };
    assert.equal(info.modelId, modelIdentity(q8).modelId);
    assert.equal(info.tensors.find((t) => t.name === 'blk.0.attn_q.weight')?.bytes, (64 * 64 * 34) / 32);
    const run = await runCli(['run', out, '-t', '0', '-n', '40']);
    assert.equal(run.code, 0);
    assert.match(run.stdout.toString(), /^Once upon a time, there was a little girl named Lily\./);
  });
});
