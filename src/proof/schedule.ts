// The step schedule of a job's trace (docs/proofs.md §2), apart from everything that hashes: what
// only counts positions and layers, so that the coordinator's process (bundled for QuickJS, no
// Buffer, no node:crypto) and the engine's side compute the same step numbers from one function.
// The step schedule: for each position its layer steps, then a head step once the prompt is
// consumed (positions ≥ prompt length − 1). Steps are numbered 1..N; the count is fixed by the job
// — after generation stops (BOS) the remaining steps are "end" steps.

export type StepRef = { kind: 'layer'; pos: number; layer: number } | { kind: 'head'; pos: number };

export interface Schedule {
  steps: number;
  at(s: number): StepRef;
  index(ref: StepRef): number;
}

/** The schedule of a job (only its prompt's length and its positions count) over `nLayers` layers. */
export function schedule(job: { promptTokens: { length: number }; steps: number }, nLayers: number): Schedule {
  const L = nLayers;
  const headless = Math.min(job.steps, Math.max(0, job.promptTokens.length - 1)); // positions without a head step
  const base = (pos: number): number => (pos <= headless ? pos * L : headless * L + (pos - headless) * (L + 1));
  const total = base(job.steps);
  return {
    steps: total,
    at(s) {
      if (!Number.isInteger(s) || s < 1 || s > total) throw new RangeError(`step ${s} is outside 1..${total}`);
      const i = s - 1;
      if (i < headless * L) return { kind: 'layer', pos: Math.floor(i / L), layer: i % L };
      const j = i - headless * L;
      const pos = headless + Math.floor(j / (L + 1));
      const k = j % (L + 1);
      return k < L ? { kind: 'layer', pos, layer: k } : { kind: 'head', pos };
    },
    index(ref) {
      return base(ref.pos) + (ref.kind === 'layer' ? ref.layer : L) + 1;
    },
  };
}

