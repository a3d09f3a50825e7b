import { performance } from 'node:perf_hooks';
import { createFingerprint, generate, type GenerateRequest, type GenerationSummary, type Model } from '../engine/index.js';

export interface TimedRun {
  summary: GenerationSummary;
  /** Positions per second, timed like run.c: the clock starts after the first (slower) position. */
  tokensPerSecond: number;
  fingerprint: string;
}

/** Runs a generation with the fingerprint observer, handing each token's piece to `onPiece`. */
export async function runTimed(
  model: Model,
  request: Omit<GenerateRequest, 'observer'>,
  onPiece: (piece: Uint8Array) => void | Promise<void> = () => {},
): Promise<TimedRun> {
  const fingerprint = createFingerprint();
  const run = generate(model, { ...request, observer: fingerprint });
  const begin = performance.now();
  let start = 0;
  for (;;) {
    const next = run.next();
    if (next.done) {
      const end = performance.now();
      const positions = next.value.positions;
      const tokensPerSecond =
        positions > 1 && start > 0 && end > start ? (positions - 1) / ((end - start) / 1000) : positions / ((end - begin) / 1000);
      return { summary: next.value, tokensPerSecond, fingerprint: fingerprint.hex() };
    }
    await onPiece(next.value.piece);
    if (start === 0) start = performance.now();
  }
}
