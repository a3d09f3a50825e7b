// The `verity` command line: one module per command under commands/.
import { Command, InvalidArgumentError, Option } from 'commander';
import { EngineError, ModelFileError } from '../engine/index.js';
import { inspectCommand } from './commands/inspect.js';
import { disputeSimCommand, traceCommand } from './commands/proof.js';
import { quantizeCommand } from './commands/quantize.js';
import { runCommand } from './commands/run.js';
import { withGenerationOptions } from './commands/shared.js';
import { tuneRuntime } from './runtime.js';

function positive(value: string, min: number, max: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min || n > max) throw new InvalidArgumentError(`use a whole number from ${min} to ${max}`);
  return n;
}

export function buildProgram(): Command {
  const program = new Command('verity')
    .description('Verity: trustless, bit-exact AI inference')
    .showSuggestionAfterError(false)
    .configureOutput({ outputError: (text, out) => out(text.split('\n')[0] + '\n') });
  withGenerationOptions(program.command('run'))
    .description('generate text like llama2.c run.c (stdout identical to run.c for the same flags)')
    .action(runCommand);
  withGenerationOptions(program.command('trace'))
    .description('run a job and write its commitment, every trace leaf and the trace root as JSON')
    .requiredOption('--out <file>', 'where to write the trace')
    .action(traceCommand);
  withGenerationOptions(program.command('dispute-sim'))
    .description('play an honest party against a faulty one: every round, the verdict, bytes and the referee time')
    .requiredOption('--fault <kind@where>', `token@<step>, activation@<step>, weights@<layer>, prompt, inconsistent@<round> or silent@<round>`)
    .option('--k <n>', 'arity of the dissection', (v) => positive(v, 2, 64), 8)
    .addOption(new Option('--faulty <party>', 'which party cheats').choices(['asserter', 'challenger']).default('asserter'))
    .action(disputeSimCommand);
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
