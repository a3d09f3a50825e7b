// llama2.c's tokenizer.bin: i32 max_token_length, then per token f32 score, i32 length, bytes.
// The file does not store the token count: it must hold exactly the model's vocab_size tokens.
import { ModelFileError } from '../errors.js';
import { createTokenizer, type Tokenizer } from '../tokenizer.js';
import { readBytes, withFile } from './file.js';

const MAX_TOKENIZER_BYTES = 1 << 28;

export function loadTokenizerBin(path: string, vocabSize: number): Tokenizer {
  const bytes = withFile(path, (file) => {
    if (file.size > MAX_TOKENIZER_BYTES) throw new ModelFileError(path, `too large for a tokenizer (${file.size} bytes)`);
    return readBytes(file, 0, file.size, 'the tokenizer');
  });
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (problem: string): never => {
    throw new ModelFileError(path, problem);
  };
  if (bytes.length < 4) fail(`truncated: ${bytes.length} bytes, a tokenizer.bin header needs 4`);
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength <= 0 || maxTokenLength > 1 << 16) fail(`bad header: max_token_length = ${maxTokenLength}`);

  const vocab: Uint8Array[] = [];
  const scores = new Float32Array(vocabSize);
  let at = 4;
  for (let i = 0; i < vocabSize; i++) {
    if (at === bytes.length) fail(`vocab mismatch: the tokenizer has ${i} tokens, the model's vocab_size is ${vocabSize}`);
    if (at + 8 > bytes.length) fail(`truncated: token ${i} header at byte ${at} is incomplete`);
    scores[i] = view.getFloat32(at, true);
    const len = view.getInt32(at + 4, true);
    if (len < 0 || len > maxTokenLength) fail(`bad token ${i}: length ${len} outside 0..max_token_length ${maxTokenLength}`);
    at += 8;
    if (at + len > bytes.length) fail(`truncated: token ${i} needs ${len} bytes at byte ${at}, the file ends at ${bytes.length}`);
    vocab.push(bytes.subarray(at, at + len));
    at += len;
  }
  if (at !== bytes.length) {
    fail(`vocab mismatch: the tokenizer has more than the model's vocab_size ${vocabSize} tokens (${bytes.length - at} bytes left over)`);
  }
  return createTokenizer(vocab, scores);
}
