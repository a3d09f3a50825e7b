import { performance } from 'node:perf_hooks';
import { createFingerprint, generate, type GenerateRequest, type GenerationSummary, type Model } from '../engine/index.js';

export interface TimedRun {
  summary: GenerationSummary;
  /**
   * Positions per second over the whole run. Not run.c's clock (started after the first position):
   * the prompt's positions go through as a batch before the first piece appears, so timing from
   * then would count positions that ran before the clock started.
   */
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
  for (;;) {
    const next = run.next();
    if (next.done) {
      const seconds = (performance.now() - begin) / 1000;
      return { summary: next.value, tokensPerSecond: next.value.positions / seconds, fingerprint: fingerprint.hex() };
    }
    await onPiece(next.value.piece);
  }
}
