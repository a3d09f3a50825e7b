// npm run bench:engine — Verity's engine speed on a random-weight model of the stories15M shape
// (greedy, 200+ generated tokens after a warm-up), for each kernel build.
import { cpus, tmpdir } from 'node:os';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, KERNEL_PATHS, type KernelPath, type Model } from '../src/engine/index.js';
import { runTimed, type TimedRun } from '../src/client/timed-run.js';
import { SHAPES, writeRandomLlama2c } from './random-model.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const tokenizer = join(root, '..', 'shared', 'models', 'llama2-tokenizer.bin');
const PROMPT = 'Once upon a time';
const STEPS = 220;

function cpuFlags(): string {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const flags = /^flags\s*:\s*(.*)$/m.exec(info)?.[1].split(' ') ?? [];
    return flags.filter((f) => /^(avx|avx2|avx512f|avx512bw|avx512vl|fma|sse4_2|neon|asimd)$/.test(f)).join(' ');
  } catch {
    return 'unknown';
  }
}

async function measure(model: Model, kernels: KernelPath, steps: number): Promise<TimedRun> {
  return runTimed(model, { prompt: PROMPT, steps, sampling: { temperature: 0, topp: 0.9 }, seed: 1n, kernels });
}

const dir = mkdtempSync(join(tmpdir(), 'verity-bench-'));
try {
  const path = join(dir, 'stories15M-random.bin');
  const bytes = writeRandomLlama2c(path, SHAPES.stories15M, 15);
  const model = loadModel(path, { tokenizer });
  console.log(`machine: ${cpus().length} cores, ${cpus()[0]?.model ?? 'unknown cpu'}; flags: ${cpuFlags()}; node ${process.version}`);
  console.log(`model: stories15M shape (random weights, ${(bytes / 2 ** 20).toFixed(1)} MiB f32), greedy, ${STEPS} positions, prompt "${PROMPT}"`);
  console.log('');
  console.log('kernels  threads  positions  tok/s    fingerprint');
  for (const kernels of KERNEL_PATHS) {
    await measure(model, kernels, 16); // warm-up: compile and settle the JIT
    const { tokensPerSecond, fingerprint, summary } = await measure(model, kernels, STEPS);
    const row = [kernels.padEnd(8), '1'.padEnd(8), String(summary.positions).padEnd(10), tokensPerSecond.toFixed(1).padEnd(8)];
    console.log(`${row.join(' ')} ${fingerprint.slice(0, 16)}…`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
