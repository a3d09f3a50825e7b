// Chat: a conversation rendered with the model's own template (GGUF `tokenizer.chat_template`, a
// Jinja template as Hugging Face transformers renders it) and tokenised with special tokens
// parsed, as llama.cpp's server does. One function for the CLI (`verity chat`) and the OpenAI-style
// API. Rendering is prompt preparation, not a step: the job commits to the tokens it produces.
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { ModelFileError } from './errors.js';
import type { Model } from './model.js';
import { END_OF_GENERATION_TEXTS } from './tokenizer-bpe.js';
import { tokenize, type Tokenizer } from './tokenizer.js';

export type ChatRole = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/**
 * The template used when a model has none: ChatML, as llama.cpp falls back to. Its markers are
 * plain text unless the vocabulary has them as control tokens.
 */
export const DEFAULT_CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** Templates longer than this are refused before parsing (real ones are a few KiB). */
export const MAX_CHAT_TEMPLATE_CHARS = 256 * 1024;

/** The most values range() gives a template in one rendering (real templates loop over messages). */
export const MAX_CHAT_RANGE_VALUES = 1 << 16;


const parsed = new WeakMap<Model, Template>();

function template(model: Model): Template {
  let t = parsed.get(model);
  if (t) return t;
  const source = model.chatTemplate ?? DEFAULT_CHAT_TEMPLATE;
  if (source.length > MAX_CHAT_TEMPLATE_CHARS) throw new ModelFileError(model.file, `bad chat template: ${source.length} characters, the limit is ${MAX_CHAT_TEMPLATE_CHARS}`);
  try {
    t = new Template(source);
  } catch (e) {
    throw new ModelFileError(model.file, `bad chat template: ${firstLine(e)}`);
  }
  parsed.set(model, t);
  return t;
}

const firstLine = (e: unknown): string => String((e as Error)?.message ?? e).split('\n')[0];
const pieceText = (model: Model, id: number): string => Buffer.from(model.tokenizer.vocab[id]).toString('utf8');

/**
 * The conversation as the model expects to read it. No clock is offered to the template
 * (`strftime_now` is undefined, so Llama 3's templates use their fixed default date): the same
 * messages always give the same text. `raise_exception` is as the Jinja library's own; `range()`
 * is bounded (MAX_CHAT_RANGE_VALUES).
 */
export function renderChat(model: Model, messages: ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
  const t = template(model);
  const { bosId, eosId } = model.tokenizer;
  try {
    // Template.render's globals but two: no strftime_now (the library's reads the clock, and Llama
    // 3.1's template prints today's date when it is defined), and a range() that gives at most
    // MAX_CHAT_RANGE_VALUES in one rendering (range(10^8) or two nested range(3000) ran for minutes).
    const env = new Environment();
    let ranged = 0;
    const range = (start: number, stop?: number, step = 1): number[] => {
      if (stop === undefined) [start, stop] = [0, start];
      if (step === 0) throw new Error('range() step must not be zero');
      const count = Math.max(0, Math.ceil((stop - start) / step));
      if (!Number.isFinite(count) || (ranged += count) > MAX_CHAT_RANGE_VALUES) throw new Error(`range() gives more than ${MAX_CHAT_RANGE_VALUES} values in one rendering`);
      return Array.from({ length: count }, (_, i) => start + i * step);
    };
    const globals: Record<string, unknown> = {
      false: false, true: true, none: null, False: false, True: true, None: null,
      raise_exception: (message: string) => {
        throw new Error(message);
      },
      range,
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? true,
      bos_token: pieceText(model, bosId),
      eos_token: pieceText(model, eosId),
    };
    for (const [name, value] of Object.entries(globals)) env.set(name, value);
    return String(new Interpreter(env).run(t.parsed).value);
  } catch (e) {
    throw new ModelFileError(model.file, `chat template failed: ${firstLine(e)}`);
  }
}

/**
 * The prompt tokens of a conversation: the rendered text with special tokens parsed, BOS first
 * exactly once (templates that write the BOS text themselves do not get a second one).
 */
export function chatPromptTokens(model: Model, messages: ChatMessage[]): number[] {
  const t = model.tokenizer;
  const tokens = tokenize(t, renderChat(model, messages), { addSpecial: false, parseSpecial: true });
  return !addsBos(t) || tokens[0] === t.bosId ? tokens : [t.bosId, ...tokens];
}

/** SentencePiece (run.c) always starts with BOS; a BPE vocabulary says so in `add_bos_token`. */
const addsBos = (t: Tokenizer): boolean => t.kind !== 'bpe' || t.addBos;

/** Tokens that end the assistant's turn: EOS, and the vocabulary's tokens spelled as llama.cpp's end-of-generation texts. */
export function endOfTurnTokens(model: Model): Set<number> {
  const t = model.tokenizer;
  const ends = new Set<number>([t.eosId]);
  for (const text of END_OF_GENERATION_TEXTS) {
    const id = t.index.get(Buffer.from(text, 'utf8').toString('latin1'));
    if (id !== undefined && id !== t.bosId) ends.add(id);
  }
  return ends;
}
