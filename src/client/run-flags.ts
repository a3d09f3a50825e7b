// run.c's flag semantics, so that `verity run` prints what run.c prints for the same arguments:
// temperature < 0 means 0; top-p outside [0, 1] means 0.9; steps < 0 or 0 or > seq_len mean
// seq_len; the seed goes through C's atoi (an int) into an unsigned 64-bit state, and 0 means
// "from the clock" when sampling. Text that is not a number is refused rather than read as 0 the way atof does.
import { EngineError } from '../engine/index.js';

export interface RunFlags {
  tokenizer?: string;
  prompt: string;
  temperature: string;
  topp: string;
  seed: string;
  steps: string;
}

export interface RunParameters {
  prompt: string;
  temperature: number;
  topp: number;
  seed: bigint;
  seedFromClock: boolean;
  steps: number;
}

const DECIMAL = /^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;
const INTEGER = /^\s*[+-]?\d+\s*$/;

function decimal(flag: string, value: string): number {
  if (!DECIMAL.test(value)) throw new EngineError(`${flag} expects a number, got '${value}'`);
  return Number(value);
}

function integer(flag: string, value: string): bigint {
  if (!INTEGER.test(value)) throw new EngineError(`${flag} expects an integer, got '${value}'`);
  return BigInt(value.trim());
}

/** C's atoi on glibc: strtol (saturating at the long range), then truncation to int. */
function atoi(v: bigint): number {
  const min = -(1n << 63n);
  const max = (1n << 63n) - 1n;
  const saturated = v < min ? min : v > max ? max : v;
  return Number(BigInt.asIntN(32, saturated));
}

export function parseRunFlags(flags: RunFlags, seqLen: number, clockSeconds = (): number => Math.floor(Date.now() / 1000)): RunParameters {
  let temperature = Math.fround(decimal('-t', flags.temperature));
  if (temperature < 0) temperature = 0;
  let topp = Math.fround(decimal('-p', flags.topp));
  if (topp < 0 || topp > 1) topp = Math.fround(0.9);
  let steps = atoi(integer('-n', flags.steps));
  if (steps < 0) steps = 0;
  if (steps === 0 || steps > seqLen) steps = seqLen;
  let seed = BigInt.asUintN(64, BigInt(atoi(integer('-s', flags.seed))));
  // Greedy decoding never draws, so the clock is only consulted when the seed matters.
  const seedFromClock = seed === 0n && temperature !== 0;
  if (seedFromClock) seed = BigInt(clockSeconds());
  return { prompt: flags.prompt, temperature, topp, seed, seedFromClock, steps };
}
