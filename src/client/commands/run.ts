import { printableBytes } from '../../engine/index.js';
import { parseRunFlags } from '../run-flags.js';
import { runTimed } from '../timed-run.js';
import { load, write, type GenerationFlags } from './shared.js';

/** verity run: stdout exactly as run.c's; stderr ends with tok/s and the fingerprint. */
export async function runCommand(modelPath: string, raw: GenerationFlags): Promise<void> {
  const model = load(modelPath, raw.tokenizer);
  const flags = parseRunFlags(raw, model.config.seqLen);
  const pieces: Uint8Array[] = [];
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
    (piece) => (raw.json ? void pieces.push(printableBytes(piece)) : write(process.stdout, printableBytes(piece))),
  );
  if (raw.json) {
    const { summary, tokensPerSecond, fingerprint } = result;
    const text = Buffer.concat(pieces).toString('utf8');
    process.stdout.write(`${JSON.stringify({ text, tokens: summary.tokens, positions: summary.positions, seed: String(flags.seed), tokensPerSecond, fingerprint })}\n`);
    return;
  }
  await write(process.stdout, '\n');
  if (flags.seedFromClock) process.stderr.write(`seed: ${flags.seed} (from the clock, as run.c does for seed 0)\n`);
  process.stderr.write(`tok/s: ${result.tokensPerSecond.toFixed(2)}\nfingerprint: ${result.fingerprint}\n`);
}
