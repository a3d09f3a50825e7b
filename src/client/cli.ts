// The `verity` command line. `verity run` takes llama2.c run.c's flags and prints exactly what
// run.c prints on stdout; stderr ends with the throughput and the trace fingerprint.
import { availableParallelism } from 'node:os';
import { basename } from 'node:path';
import { Presets, SingleBar } from 'cli-progress';
import { Command, InvalidArgumentError, Option } from 'commander';
import {
  EngineError,
  KERNEL_PATHS,
  availableKernelPaths,
  defaultKernelPath,
  ModelFileError,
  CHUNK_BYTES,
  canonicalTensors,
  storedTensors,
  detectFormat,
  loadModel,
  modelIdentity,
  printableBytes,
  GGML_TYPE,
  ggufFromModel,
  writeGguf,
  type ExportType,
  type KernelPath,
  type Model,
} from '../engine/index.js';
import { parseRunFlags, type RunFlags } from './run-flags.js';
import { tuneRuntime } from './runtime.js';
import { runTimed } from './timed-run.js';

function load(modelPath: string, tokenizer: string | undefined): Model {
  // run.c's default tokenizer is ./tokenizer.bin; a GGUF file carries its own.
  const tokenizerPath = tokenizer ?? (detectFormat(modelPath) === 'llama2c' ? 'tokenizer.bin' : undefined);
  return loadModel(modelPath, { tokenizer: tokenizerPath });
}

async function write(stream: NodeJS.WriteStream, bytes: Uint8Array | string): Promise<void> {
  if (!stream.write(bytes)) await new Promise((resolve) => stream.once('drain', resolve));
}

async function runCommand(modelPath: string, raw: RunFlags & { kernels: KernelPath; threads: number }): Promise<void> {
  const model = load(modelPath, raw.tokenizer);
  const flags = parseRunFlags(raw, model.config.seqLen);
  const result = await runTimed(
    model,
    {
      prompt: flags.prompt,
      steps: flags.steps,
      sampling: { temperature: flags.temperature, topp: flags.topp },
      seed: flags.seed,
      kernels: raw.kernels,
      threads: raw.threads,
    },
    (piece) => write(process.stdout, printableBytes(piece)),
  );
  await write(process.stdout, '\n');
  if (flags.seedFromClock) process.stderr.write(`seed: ${flags.seed} (from the clock, as run.c does for seed 0)\n`);
  process.stderr.write(`tok/s: ${result.tokensPerSecond.toFixed(2)}\nfingerprint: ${result.fingerprint}\n`);
}

/** The shortest decimal that reads back as the same f32 (1e-5 rather than 0.000009999999747…). */
function shortestF32(v: number): string {
  for (let digits = 1; digits < 9; digits++) {
    const text = Number(v.toPrecision(digits));
    if (Math.fround(text) === v) return String(text);
  }
  return String(v);
}

function inspectCommand(modelPath: string, options: { tokenizer?: string; json?: boolean }): void {
  const model = load(modelPath, options.tokenizer);
  const c = model.config;
  const tensors = canonicalTensors(c, model.weights);
  const shared = model.weights.classifier === model.weights.tokenEmbedding;
  const stored = storedTensors(c, model.weights);
  const parameters = stored.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
  const weightBytes = stored.reduce((n, t) => n + t.bytes, 0);
  const id = modelIdentity(model);
  const info = {
    file: modelPath,
    format: model.format === 'gguf' ? 'GGUF' : 'llama2.c checkpoint',
    architecture: 'llama',
    config: c,
    classifier: shared ? 'shared with the token embedding' : 'separate',
    parameters,
    weightBytes,
    tokenizer: { vocabSize: model.tokenizer.vocab.length, bosId: model.tokenizer.bosId, eosId: model.tokenizer.eosId },
    tensors: tensors.map((t) => ({ name: t.name, shape: t.shape, bytes: t.bytes })),
    ...id,
  };
  if (options.json) {
    process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
    return;
  }
  const row = (label: string, value: string): string => `${label.padEnd(15)}${value}`;
  const lines = [
    row('file', `${basename(modelPath)} (${info.format})`),
    row('architecture', `llama: dim ${c.dim}, hidden ${c.hiddenDim}, layers ${c.nLayers}, heads ${c.nHeads} (kv ${c.nKvHeads}), head size ${c.headSize}`),
    row('', `vocab ${c.vocabSize}, seq_len ${c.seqLen}, rms eps ${shortestF32(c.normEps)}, rope theta ${shortestF32(c.ropeTheta)}`),
    row('classifier', info.classifier),
    row('parameters', parameters.toLocaleString('en-US')),
    row('weight bytes', `${weightBytes.toLocaleString('en-US')} (${[...new Set(stored.map((t) => t.dtype))].join(', ')})`),
    row('tokenizer', `${info.tokenizer.vocabSize} tokens, bos ${info.tokenizer.bosId}, eos ${info.tokenizer.eosId}`),
    row('tensors', `${tensors.length}, in canonical order:`),
    ...tensors.map((t) => `  ${t.name.padEnd(28)} [${t.shape.join(', ')}]`),
    row('config hash', id.configHash),
    row('tokenizer hash', id.tokenizerHash),
    row('weights root', `${id.weightsRoot} (${id.chunks} chunks of up to ${CHUNK_BYTES / 1024} KiB)`),
    row('model id', id.modelId),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

function quantizeCommand(input: string, output: string, options: { tokenizer?: string; type: ExportType }): void {
  const model = load(input, options.tokenizer);
  const contents = ggufFromModel(model, { type: options.type, name: basename(input) });
  const bar = new SingleBar(
    { format: `writing ${basename(output)} [{bar}] {value}/{total} tensors`, stream: process.stderr, hideCursor: true },
    Presets.shades_classic,
  );
  bar.start(contents.tensors.length, 0);
  writeGguf(output, contents, (i) => bar.update(i + 1));
  bar.stop();
  const converted = contents.tensors.filter((t) => t.type !== GGML_TYPE.F32).length;
  process.stderr.write(`${output}: ${converted} of ${contents.tensors.length} tensors ${options.type.toUpperCase()}, the rest F32\n`);
}

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

export function buildProgram(): Command {
  const program = new Command('verity')
    .description('Verity: trustless, bit-exact AI inference')
    .showSuggestionAfterError(false)
    .configureOutput({ outputError: (text, out) => out(text.split('\n')[0] + '\n') });
  program
    .command('run')
    .description('generate text like llama2.c run.c (stdout identical to run.c for the same flags)')
    .argument('<model>', 'llama2.c checkpoint (.bin) or GGUF file')
    .option('-z, --tokenizer <path>', 'tokenizer.bin (default ./tokenizer.bin for .bin models; GGUF has its own)')
    .option('-i, --prompt <text>', 'prompt', '')
    .option('-t, --temperature <t>', 'temperature, 0 = greedy', '1.0')
    .option('-p, --topp <p>', 'top-p (nucleus) threshold in [0, 1]', '0.9')
    .option('-s, --seed <n>', 'random seed (0 = from the clock)', '0')
    .option('-n, --steps <n>', 'positions to run, prompt included (0 = seq_len)', '256')
    .addOption(new Option('--kernels <path>', 'kernel build (default: the fastest built here)').choices([...KERNEL_PATHS]).default(defaultKernelPath()).argParser(kernelPath))
    .option('--threads <n>', 'threads for matrix products and attention (results are identical for any count)', threadCount, availableParallelism())
    .action(runCommand);
  program
    .command('quantize')
    .description('write a model as GGUF, its matrices as Q8_0 (default), F16 or F32')
    .argument('<model>', 'llama2.c checkpoint (.bin) or GGUF file')
    .argument('<out>', 'GGUF file to write')
    .option('-z, --tokenizer <path>', 'tokenizer.bin (default ./tokenizer.bin for .bin models)')
    .addOption(new Option('--type <type>', 'weight type for matrices').choices(['q8_0', 'f16', 'f32']).default('q8_0'))
    .action(quantizeCommand);
  program
    .command('inspect')
    .description('show architecture, shapes, parameter count, bytes and the model id')
    .argument('<model>', 'llama2.c checkpoint (.bin) or GGUF file')
    .option('-z, --tokenizer <path>', 'tokenizer.bin (default ./tokenizer.bin for .bin models)')
    .option('--json', 'print JSON')
    .action(inspectCommand);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  tuneRuntime();
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    const known = e instanceof ModelFileError || e instanceof EngineError || e instanceof InvalidArgumentError;
    const message = e instanceof Error ? e.message : String(e);
    process.stderr.write(`verity: ${known ? '' : 'internal error: '}${message.split('\n')[0]}\n`);
    process.exitCode = known ? 1 : 2;
  }
}
