import { basename } from 'node:path';
import { CHUNK_BYTES, canonicalTensors, modelIdentity, storedTensors } from '../../engine/index.js';
import { load } from './shared.js';

/** The shortest decimal that reads back as the same f32 (1e-5 rather than 0.000009999999747…). */
function shortestF32(v: number): string {
  for (let digits = 1; digits < 9; digits++) {
    const text = Number(v.toPrecision(digits));
    if (Math.fround(text) === v) return String(text);
  }
  return String(v);
}

/** verity inspect: architecture, shapes, parameter count, bytes and model id. */
export function inspectCommand(modelPath: string, options: { tokenizer?: string; json?: boolean }): void {
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
    format: { gguf: 'GGUF', llama2c: 'llama2.c checkpoint', parts: 'assembled from parts' }[model.format],
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

