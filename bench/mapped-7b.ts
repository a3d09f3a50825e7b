// The 7B acceptance run (not part of npm test): a random-block GGUF of Llama 2 7B's shape (dim
// 4096, hidden 11008, 32 layers, 32 heads, vocab 32000, the Llama 2 tokenizer) is loaded with its
// matrices mapped from the file and generates; prints tok/s and peak RSS against the file's size,
// and the same for llama.cpp on the same file with --peer.
//
//   npm run build:ts && node dist/bench/mapped-7b.js --type q4_k_m [--tokens 20] [--threads 2] [--peer] [--file f.gguf]
//
// The file is written once (random valid blocks, nothing quantised from floats; minutes, not hours)
// and kept for later runs. Figures taken while other work runs on the machine are noisy.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { SHAPES, writeRandomGguf } from './random-model.js';
import { generate, hasMappedWeights, loadModel, type QuantizeTarget } from '../src/engine/index.js';

const root = new URL('../../', import.meta.url).pathname;
const { values: opt } = parseArgs({
  options: {
    type: { type: 'string', default: 'q4_k_m' },
    file: { type: 'string' },
    tokens: { type: 'string', default: '20' },
    threads: { type: 'string', default: '2' },
    weights: { type: 'string', default: 'auto' },
    peer: { type: 'boolean', default: false },
  },
});
const type = opt.type as QuantizeTarget;
const file = opt.file ?? `/tmp/verity-7b-${type}.gguf`;
const tokens = Number(opt.tokens);
const threads = Number(opt.threads);
const tokenizer = join(root, '..', 'shared', 'models', 'llama2-tokenizer.bin');
const gb = (n: number): string => `${(n / 1e9).toFixed(2)} GB`;

/** Peak resident set (VmHWM) of this process, in bytes. */
const peakRss = (): number => 1024 * Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]);

if (!existsSync(file)) {
  const t0 = performance.now();
  process.stderr.write(`writing ${file} (${type}, random blocks)...\n`);
  writeRandomGguf(file, SHAPES.llama7B, type, tokenizer, 1);
  process.stderr.write(`written in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
}
const fileBytes = statSync(file).size;

const t0 = performance.now();
const model = loadModel(file, { weights: opt.weights as 'auto' | 'memory' | 'mapped' });
const loadSeconds = (performance.now() - t0) / 1000;
const arenaBytes = model.arena.usage().memoryBytes;

const run = generate(model, { prompt: 'Once upon a time', steps: tokens + 5, sampling: { temperature: 0, topp: 1 }, seed: 1n, kernels: 'native', threads });
let firstAt = 0;
let count = 0;
// Every yield is one forward pass (prompt positions too: the engine runs them one at a time).
for (let r = run.next(); !r.done; r = run.next()) {
  if (count === 0) firstAt = performance.now();
  count++;
}
const decodeSeconds = (performance.now() - firstAt) / 1000;
const verity = {
  engine: 'verity',
  file, type, fileBytes, mapped: hasMappedWeights(model), threads, loadSeconds: +loadSeconds.toFixed(2),
  wasmMemoryBytes: arenaBytes,
  // The first forward pass starts the clock: the rate is over the count − 1 passes after it.
  tokensPerSecond: +((count - 1) / decodeSeconds).toFixed(3),
  generated: count,
  peakRssBytes: peakRss(),
  peakRssOverFile: +(peakRss() / fileBytes).toFixed(3),
};
console.log(JSON.stringify(verity));
process.stderr.write(`verity: ${verity.tokensPerSecond} tok/s, peak RSS ${gb(verity.peakRssBytes)} for a ${gb(fileBytes)} file (wasm memory ${gb(arenaBytes)})\n`);

if (opt.peer) {
  // llama.cpp on the same file; /usr/bin/time -f %M gives its peak RSS in KiB.
  const peer = spawnSync('/usr/bin/time', ['-f', 'peakRssKiB=%M', process.execPath, join(root, 'bench', 'peer', 'llama-cpp-run.mjs'),
    '--peer-dir', join(root, 'bench', '.peer'), '--model', file, '--threads', String(threads), '--tokens', String(tokens), '--warmup', '4'], { encoding: 'utf8' });
  const line = peer.stdout.trim().split('\n').pop() ?? '';
  const rss = /peakRssKiB=(\d+)/.exec(peer.stderr);
  try {
    const r = JSON.parse(line) as Record<string, unknown>;
    const peakRssBytes = rss ? 1024 * Number(rss[1]) : null;
    console.log(JSON.stringify({ engine: 'llama.cpp', tokensPerSecond: r.tokensPerSecond, llamaCppEvalTokensPerSecond: r.llamaCppEvalTokensPerSecond, peakRssBytes, peakRssOverFile: peakRssBytes && +(peakRssBytes / fileBytes).toFixed(3) }));
  } catch {
    process.stderr.write(`llama.cpp did not report (status ${peer.status}):\n${peer.stderr.slice(-2000)}\n`);
  }
}
