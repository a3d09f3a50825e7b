// llama2.c legacy checkpoints (export version 0): seven i32 (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len), then f32 tensors grouped by kind across layers; the RoPE
// tables freq_cis_real/imag (unused: the spec computes RoPE itself); then the classifier when
// vocab_size < 0 (when > 0 the classifier is the token embedding).
import { ModelFileError } from '../errors.js';
import { createArena } from '../memory.js';
import { configProblem, deriveConfig, f32Matrix, type LayerWeights, type ModelConfig, type Weights } from '../model.js';
import { readBytes, readExact, withFile } from './file.js';
import { MAX_WEIGHT_BYTES, wasmBudgetProblem, type LoadedWeights } from './types.js';

const HEADER_BYTES = 28;
const VERSIONED_MAGIC = 0x616b3432; // "ak42": llama2.c's newer export formats

export function loadLlama2c(path: string, wasmBudget = MAX_WEIGHT_BYTES): LoadedWeights {
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

    const tooBig = wasmBudgetProblem(mainBytes + classifierBytes, wasmBudget, false);
    if (tooBig) fail(tooBig.replace(/; with the native addon.*$/, ' (llama2.c checkpoints are not mapped: convert to GGUF)'));
    const arena = createArena(mainBytes + classifierBytes);
    const base = arena.alloc(mainBytes);
    readExact(file, arena.u8(base, mainBytes), HEADER_BYTES, 'the weights');
    let classifier = 0;
    if (!shared) {
      classifier = arena.alloc(classifierBytes);
      readExact(file, arena.u8(classifier, classifierBytes), HEADER_BYTES + mainBytes + ropeTableBytes, 'the classifier');
    }

    // Pointers to each kind's block, in file order.
    const block: Record<keyof typeof sizes, number> = {} as Record<keyof typeof sizes, number>;
    let at = base;
    for (const [kind, count] of Object.entries(sizes) as [keyof typeof sizes, number][]) {
      block[kind] = at;
      at += 4 * count;
    }
    const perLayer = (kind: keyof typeof sizes, l: number): number => block[kind] + (4 * sizes[kind] * l) / L;
    const matrix = (kind: keyof typeof sizes, l: number) => f32Matrix(perLayer(kind, l));
    const layers: LayerWeights[] = Array.from({ length: L }, (_, l) => ({
      attnNorm: perLayer('attnNorm', l),
      wq: matrix('wq', l),
      wk: matrix('wk', l),
      wv: matrix('wv', l),
      wo: matrix('wo', l),
      ffnNorm: perLayer('ffnNorm', l),
      w1: matrix('w1', l),
      w2: matrix('w2', l),
      w3: matrix('w3', l),
    }));
    const tokenEmbedding = f32Matrix(block.tokenEmbedding);
    const weights: Weights = {
      tokenEmbedding,
      layers,
      finalNorm: block.finalNorm,
      classifier: shared ? tokenEmbedding : f32Matrix(classifier),
    };
    return { config, weights, arena, tokenizer: null };
  });
}
