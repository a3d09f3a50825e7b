// npm run bench:engine — Verity against llama.cpp (node-llama-cpp, installed by this script into
// bench/.peer, CPU binary only) on the same random-weight GGUF files: the stories15M and
// stories110M shapes as F32 and Q8_0, stories110M as Q4_K_M, and the TinyLlama-1.1B shape (GQA
// 32/4, 22 layers) as Q8_0 and Q4_K_M; greedy, 1 and 2 threads, 200 generated tokens after a
// warm-up, and prompt processing of a 128-token prompt. Each engine runs in its own process; the
// best of several runs counts for both.
//   npm run bench:engine [-- --rows stories110M:q8_0,q4_k_m;tinyllama:q4_k_m --rounds 2 --tokens 200]
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { QUANTIZE_TARGETS, nativeKernels, defaultKernelPath, type QuantizeTarget } from '../src/engine/index.js';
import { SHAPES, writeRandomGguf } from './random-model.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const tokenizer = join(root, '..', 'shared', 'models', 'llama2-tokenizer.bin');
const modelsDir = join(root, 'bench', '.models');
const peerDir = join(root, 'bench', '.peer');

const { values: opt } = parseArgs({
  options: {
    /** shape:format,format;shape:… (formats: verity quantize's types and mixes). */
    rows: { type: 'string', default: 'stories15M:f32,q8_0;stories110M:f32,q8_0,q4_k_m;tinyllama:q8_0,q4_k_m' },
    rounds: { type: 'string', default: '2' },
    runs: { type: 'string', default: '2' },
    tokens: { type: 'string', default: '200' },
    threads: { type: 'string', default: '1,2' },
    /** Alternating runs with and without the proof trace, per row (0: the overhead is not measured). */
    'trace-runs': { type: 'string', default: '9' },
    /** Prompt processing is timed on a prompt of this many tokens (0: not measured). */
    'prompt-tokens': { type: 'string', default: '128' },
  },
});
const threadCounts = opt.threads.split(',').map(Number);
const rows = opt.rows.split(';').flatMap((row) => {
  const [shape, formats = ''] = row.split(':');
  if (!SHAPES[shape]) throw new Error(`unknown shape ${shape} (one of ${Object.keys(SHAPES).join(', ')})`);
  return formats.split(',').map((format) => {
    if (!(QUANTIZE_TARGETS as readonly string[]).includes(format)) throw new Error(`unknown format ${format} (one of ${QUANTIZE_TARGETS.join(', ')})`);
    return { shape, format: format as QuantizeTarget };
  });
});

interface Measurement {
  tokensPerSecond: number;
  promptTokensPerSecond?: number;
  peakRssBytes?: number;
  weightBytes?: number;
  fingerprint?: string;
}

function cpuFlags(): string {
  try {
    const flags = /^flags\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1].split(' ') ?? [];
    return flags.filter((f) => /^(sse4_2|avx|avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|amx_int8)$/.test(f)).join(' ');
  } catch {
    return 'unknown';
  }
}

/** A random-weight GGUF of a shape and format (random blocks, see random-model.ts), cached in bench/.models. */
function ensureModel(shape: string, format: QuantizeTarget): string {
  const path = join(modelsDir, `${shape}-${format}.gguf`);
  if (existsSync(path)) return path;
  mkdirSync(modelsDir, { recursive: true });
  process.stderr.write(`  writing ${shape}-${format}.gguf\n`);
  writeRandomGguf(`${path}.tmp`, SHAPES[shape], format, tokenizer, 1);
  renameSync(`${path}.tmp`, path);
  return path;
}

function runJson(args: string[]): Promise<Measurement | null> {
  return new Promise((resolve) => {
    execFile(process.execPath, args, { cwd: root, timeout: 600_000, maxBuffer: 1 << 24 }, (error, stdout, stderr) => {
      const line = stdout.trim().split('\n').at(-1);
      if (error || !line) {
        process.stderr.write(`  ${args[0]} failed: ${(stderr || String(error)).trim().split('\n').at(-1)}\n`);
        resolve(null);
        return;
      }
      resolve(JSON.parse(line) as Measurement);
    });
  });
}

/** The faster of two rounds, with the higher peak memory and the faster prompt processing of both. */
function best(a: Measurement | null, b: Measurement | null): Measurement | null {
  if (!a || !b) return a ?? b;
  const faster = b.tokensPerSecond > a.tokensPerSecond ? b : a;
  const prompt = Math.max(a.promptTokensPerSecond ?? NaN, b.promptTokensPerSecond ?? NaN);
  return { ...faster, peakRssBytes: Math.max(a.peakRssBytes ?? 0, b.peakRssBytes ?? 0), promptTokensPerSecond: prompt };
}

async function main(): Promise<void> {
  const native = nativeKernels();
  console.log(`machine: ${cpus().length} cores, ${cpus()[0]?.model.trim() ?? 'unknown cpu'}; node ${process.version}`);
  console.log(`cpu flags: ${cpuFlags()}`);
  console.log(`verity kernels: ${defaultKernelPath()}${native ? ` (${native.features()})` : ''}`);

  let peer = true;
  try {
    const { installPeer } = (await import(pathToFileURL(join(root, 'bench', 'peer', 'install.mjs')).href)) as { installPeer(dir: string): Promise<void> };
    await installPeer(peerDir);
  } catch (e) {
    peer = false;
    console.log(`llama.cpp peer unavailable (${e instanceof Error ? e.message : String(e)}): Verity alone`);
  }

  const table: string[][] = [];
  const bestOf = new Map<string, { verity: number; peer: number }>();
  for (const { shape, format } of rows) {
    const file = ensureModel(shape, format);
    for (const threads of threadCounts) {
      const common = ['--model', file, '--threads', String(threads), '--tokens', opt.tokens, '--runs', opt.runs, '--prompt-tokens', opt['prompt-tokens']];
      let verity: Measurement | null = null;
      let llama: Measurement | null = null;
      for (let round = 0; round < Number(opt.rounds); round++) {
        verity = best(verity, await runJson([join('dist', 'bench', 'verity-run.js'), ...common]));
        if (peer) llama = best(llama, await runJson([join('bench', 'peer', 'llama-cpp-run.mjs'), '--peer-dir', peerDir, ...common]));
      }
      const v = verity?.tokensPerSecond ?? NaN;
      const l = llama?.tokensPerSecond ?? NaN;
      const rss = verity?.peakRssBytes ?? NaN;
      const weights = verity?.weightBytes ?? NaN;
      const vp = verity?.promptTokensPerSecond ?? NaN;
      const lp = llama?.promptTokensPerSecond ?? NaN;
      table.push([
        shape, format.toUpperCase(), String(threads), v.toFixed(1), peer ? l.toFixed(1) : '-', peer ? (v / l).toFixed(2) : '-',
        vp.toFixed(1), peer ? lp.toFixed(1) : '-', peer ? (vp / lp).toFixed(2) : '-',
        `${(rss / 2 ** 20).toFixed(0)} MB (${(rss / weights).toFixed(2)}× weights)`, verity?.fingerprint?.slice(0, 12) ?? '-',
      ]);
      const key = `${shape} ${format.toUpperCase()}`;
      const prev = bestOf.get(key) ?? { verity: 0, peer: 0 };
      bestOf.set(key, { verity: Math.max(prev.verity, v), peer: Math.max(prev.peer, l) });
      printTable(table);
    }
  }
  console.log('\nbest vs best (each engine at its best thread count):');
  for (const [key, b] of bestOf) console.log(`  ${key.padEnd(18)} Verity ${b.verity.toFixed(1)}  llama.cpp ${peer ? b.peer.toFixed(1) : '-'}  ratio ${peer ? (b.verity / b.peer).toFixed(2) : '-'}`);

  if (opt['trace-runs'] === '0') return;
  console.log(`\nproof trace overhead (whole greedy jobs with and without recording every step leaf; medians of ${opt['trace-runs']} alternating runs):`);
  for (const { shape, format } of rows) {
    const threads = Math.max(...threadCounts);
    const r = (await runJson([join('dist', 'bench', 'verity-run.js'), '--model', ensureModel(shape, format), '--threads', String(threads), '--tokens', opt.tokens, '--runs', opt['trace-runs'], '--trace-overhead'])) as
      | (Measurement & { plainMs: number; tracedMs: number; overhead: number; positions: number })
      | null;
    if (r) console.log(`  ${shape.padEnd(12)} ${format.toUpperCase().padEnd(5)} ${threads} threads  ${r.positions} positions: ${r.plainMs.toFixed(0)} ms → ${r.tracedMs.toFixed(0)} ms traced, overhead ${(100 * r.overhead).toFixed(1)}%`);
  }
}

let printed = 0;
function printTable(rows: string[][]): void {
  const header = ['model', 'format', 'threads', 'Verity tok/s', 'llama.cpp tok/s', 'ratio', 'Verity prompt tok/s', 'llama.cpp prompt tok/s', 'ratio', 'Verity peak RSS', 'fingerprint'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i])).join('  ');
  if (printed === 0) console.log(`\n${line(header)}`);
  for (; printed < rows.length; printed++) console.log(line(rows[printed]));
}

await main();
