// verity tokenize: a model's token ids for a text, printed the way llama.cpp's llama-tokenize
// prints them (`id -> 'piece'`, one token a line), or as one JSON object.
import { decodePiece, tokenize } from '../../engine/index.js';
import { load } from './shared.js';

export interface TokenizeFlags {
  tokenizer?: string;
  json?: boolean;
  /** Commander's negation of --no-bos. */
  bos?: boolean;
  parseSpecial?: boolean;
}

export function tokenizeCommand(modelPath: string, text: string, flags: TokenizeFlags): void {
  const model = load(modelPath, flags.tokenizer);
  const t = model.tokenizer;
  const tokens = tokenize(t, text, { addSpecial: flags.bos !== false, parseSpecial: flags.parseSpecial === true });
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ tokens })}\n`);
    return;
  }
  // llama-tokenize: printf("%6d -> '%s'\n", id, piece), the piece with special tokens rendered.
  const lines = tokens.map((id, i) => `${String(id).padStart(6)} -> '${Buffer.from(decodePiece(t, i > 0 ? tokens[i - 1] : -1, id)).toString('utf8')}'`);
  process.stdout.write(lines.length ? `${lines.join('\n')}\n` : '');
}
