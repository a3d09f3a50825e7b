// llama2.c legacy checkpoints (export version 0): seven i32 (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len), then f32 tensors grouped by kind across layers; the RoPE
// tables freq_cis_real/imag (unused: the spec computes RoPE itself); then the classifier when
// vocab_size < 0 (when > 0 the classifier is the token embedding).
import { ModelFileError } from '../errors.js';
import { createArena } from '../memory.js';
import { absentLayer, absentMatrix, configProblem, deriveConfig, f32Matrix, type LayerWeights, type ModelConfig, type Weights } from '../model.js';
import { readBytes, readExact, withFile } from './file.js';
import { MAX_WEIGHT_BYTES, requestedPart, wasmBudgetProblem, type LoadedWeights, type PartOptions } from './types.js';

const HEADER_BYTES = 28;
const VERSIONED_MAGIC = 0x616b3432; // "ak42": llama2.c's newer export formats

export function loadLlama2c(path: string, wasmBudget = MAX_WEIGHT_BYTES, options: PartOptions = {}): LoadedWeights {
  return withFile(path, (file) => {
    const fail = (problem: string): never => {
      throw new ModelFileError(path, problem);
    };
    if (file.size < HEADER_BYTES) fail(`truncated: ${file.size} bytes, a llama2.c header needs ${HEADER_BYTES}`);
    const header = new DataView(readBytes(file, 0, HEADER_BYTES, 'the header').buffer);
    if (header.getUint32(0, true) === VERSIONED_MAGIC) {
      fail(`llama2.c export version ${header.getInt32(4, true)} is not supported (only the legacy version-0 format)`);
    }
    const h = Array.from({ length: 7 }, (_, i) => header.getInt32(4 * i, true));
    const [dim, hiddenDim, nLayers, nHeads, nKvHeads, signedVocab, seqLen] = h;
    const shared = signedVocab > 0;
    const config: ModelConfig = deriveConfig({
      dim,
      hiddenDim,
      nLayers,
      nHeads,
      nKvHeads,
      vocabSize: Math.abs(signedVocab),
      seqLen,
      normEps: Math.fround(1e-5),
      ropeTheta: 10000,
    });
    const problem = configProblem(config);
    if (problem) fail(problem);

    const { vocabSize, kvDim, headSize } = config;
    const L = nLayers;
    // Element counts in file order.
    const sizes = {
      tokenEmbedding: vocabSize * dim,
      attnNorm: L * dim,
      wq: L * dim * dim,
      wk: L * kvDim * dim,
      wv: L * kvDim * dim,
      wo: L * dim * dim,
      ffnNorm: L * dim,
      w1: L * hiddenDim * dim,
      w2: L * dim * hiddenDim,
      w3: L * hiddenDim * dim,
      finalNorm: dim,
    };
    const mainBytes = 4 * Object.values(sizes).reduce((a, b) => a + b, 0);
    const ropeTableBytes = 4 * seqLen * headSize; // freq_cis_real + freq_cis_imag
    const classifierBytes = shared ? 0 : 4 * vocabSize * dim;
    const expected = HEADER_BYTES + mainBytes + ropeTableBytes + classifierBytes;
    if (file.size !== expected) {
      fail(
        `size mismatch: the header (dim ${dim}, hidden ${hiddenDim}, layers ${nLayers}, heads ${nHeads}/${nKvHeads}, ` +
          `vocab ${signedVocab}, seq_len ${seqLen}) describes ${expected} bytes, the file has ${file.size}`,
      );
    }

    // A part (a pipeline stage's share) reads only its layers' slice of each kind's block, and the
    // embedding, final norm and classifier when it uses them; the whole model is the part of all.
    const part = requestedPart(options, config, path);
    const { first, end } = part?.layers ?? { first: 0, end: L };
    const embedding = !part || part.embedding || (part.head && shared); // a tied classifier is the embedding
    const head = !part || part.head;
    const held = (kind: keyof typeof sizes): { from: number; count: number } => {
      if (kind === 'tokenEmbedding') return { from: 0, count: embedding ? sizes[kind] : 0 };
      if (kind === 'finalNorm') return { from: 0, count: head ? sizes[kind] : 0 };
      const perLayer = sizes[kind] / L;
      return { from: first * perLayer, count: (end - first) * perLayer };
    };
    const kinds = Object.keys(sizes) as (keyof typeof sizes)[];
    const heldMainBytes = 4 * kinds.reduce((n, kind) => n + held(kind).count, 0);
    const heldClassifierBytes = head ? classifierBytes : 0;

    const tooBig = wasmBudgetProblem(heldMainBytes + heldClassifierBytes, wasmBudget, false);
    if (tooBig) fail(tooBig.replace(/; with the native addon.*$/, ' (llama2.c checkpoints are not mapped: convert to GGUF)'));
    const arena = createArena(heldMainBytes + heldClassifierBytes);
    const base = arena.alloc(heldMainBytes);
    // Pointers to each kind's held block, in file order (for the whole model: the file's layout).
    const block: Record<keyof typeof sizes, number> = {} as Record<keyof typeof sizes, number>;
    let at = base;
    let fileAt = HEADER_BYTES;
    for (const kind of kinds) {
      const { from, count } = held(kind);
      block[kind] = at;
      if (count > 0) readExact(file, arena.u8(at, 4 * count), fileAt + 4 * from, 'the weights');
      at += 4 * count;
      fileAt += 4 * sizes[kind];
    }
    let classifier = 0;
    if (!shared && head) {
      classifier = arena.alloc(classifierBytes);
      readExact(file, arena.u8(classifier, classifierBytes), HEADER_BYTES + mainBytes + ropeTableBytes, 'the classifier');
    }

    const perLayer = (kind: keyof typeof sizes, l: number): number => block[kind] + (4 * sizes[kind] * (l - first)) / L;
    const matrix = (kind: keyof typeof sizes, l: number) => f32Matrix(perLayer(kind, l));
    const layers: LayerWeights[] = Array.from({ length: L }, (_, l) =>
      l < first || l >= end
        ? absentLayer()
        : {
            attnNorm: perLayer('attnNorm', l),
            wq: matrix('wq', l),
            wk: matrix('wk', l),
            wv: matrix('wv', l),
            wo: matrix('wo', l),
            ffnNorm: perLayer('ffnNorm', l),
            w1: matrix('w1', l),
            w2: matrix('w2', l),
            w3: matrix('w3', l),
          },
    );
    const tokenEmbedding = embedding ? f32Matrix(block.tokenEmbedding) : absentMatrix();
    const weights: Weights = {
      tokenEmbedding,
      layers,
      finalNorm: head ? block.finalNorm : 0,
      classifier: shared ? tokenEmbedding : head ? f32Matrix(classifier) : absentMatrix(),
    };
    if (part) return { config, weights, arena, tokenizer: null, part };
    return { config, weights, arena, tokenizer: null };
  });
}
