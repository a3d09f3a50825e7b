// Pieces every command uses: loading a model the way run.c finds its tokenizer, writing to a
// stream with back-pressure, and the options of the commands that generate.
import { availableParallelism } from 'node:os';
import { Command, InvalidArgumentError, Option } from 'commander';
import { KERNEL_PATHS, availableKernelPaths, defaultKernelPath, detectFormat, loadModel, type KernelPath, type Model } from '../../engine/index.js';
import type { RunFlags } from '../run-flags.js';

export function load(modelPath: string, tokenizer: string | undefined): Model {
  // run.c's default tokenizer is ./tokenizer.bin; a GGUF file carries its own.
  const tokenizerPath = tokenizer ?? (detectFormat(modelPath) === 'llama2c' ? 'tokenizer.bin' : undefined);
  return loadModel(modelPath, { tokenizer: tokenizerPath });
}

/** Keeps a serving command up until SIGINT or SIGTERM, then closes it and exits 0. */
export function closeOnSignal(close: () => Promise<void>): void {
  const stop = async (): Promise<void> => {
    await close();
    process.exit(0);
  };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void stop());
}

export async function write(stream: NodeJS.WriteStream, bytes: Uint8Array | string): Promise<void> {
  if (!stream.write(bytes)) await new Promise((resolve) => stream.once('drain', resolve));
}

export type GenerationFlags = RunFlags & { kernels: KernelPath; threads: number; json?: boolean };

function threadCount(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 256) throw new InvalidArgumentError('use a whole number from 1 to 256');
  return n;
}

function kernelPath(value: string): KernelPath {
  const present = availableKernelPaths();
  if (!(present as string[]).includes(value)) throw new InvalidArgumentError(`use one of ${present.join(', ')} (built here)`);
  return value as KernelPath;
}

/** run.c's flags (-z -i -t -p -s -n) and the engine's (--kernels, --threads). */
export function withGenerationOptions(command: Command): Command {
  return command
    .argument('<model>', 'llama2.c checkpoint (.bin) or GGUF file')
    .option('-z, --tokenizer <path>', 'tokenizer.bin (default ./tokenizer.bin for .bin models; GGUF has its own)')
    .option('-i, --prompt <text>', 'prompt', '')
    .option('-t, --temperature <t>', 'temperature, 0 = greedy', '1.0')
    .option('-p, --topp <p>', 'top-p (nucleus) threshold in [0, 1]', '0.9')
    .option('-s, --seed <n>', 'random seed (0 = from the clock)', '0')
    .option('-n, --steps <n>', 'positions to run, prompt included (0 = seq_len)', '256')
    .addOption(
      new Option('--kernels <path>', 'kernel build (default: the fastest built here)').choices([...KERNEL_PATHS]).default(defaultKernelPath()).argParser(kernelPath),
    )
    .option('--threads <n>', 'threads for matrix products and attention (results are identical for any count)', threadCount, availableParallelism())
    .option('--json', 'print one JSON object (the text and the figures) instead');
}
