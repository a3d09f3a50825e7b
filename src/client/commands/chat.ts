// verity chat: a conversation with a model through its own chat template. Interactive in a
// terminal (or one user turn per line of standard input); `--message` runs one turn and exits.
import { createInterface } from 'node:readline';
import { InvalidArgumentError } from 'commander';
import { chatPromptTokens, endOfTurnTokens, generate, printableBytes, type ChatMessage, type Model } from '../../engine/index.js';
import { parseRunFlags } from '../run-flags.js';
import { load, write, type GenerationFlags } from './shared.js';

export type ChatFlags = GenerationFlags & { message?: string; system?: string };

/** One assistant turn: streams its text to stdout and returns it (without the end-of-turn token). */
async function reply(model: Model, messages: ChatMessage[], raw: ChatFlags): Promise<string> {
  const flags = parseRunFlags(raw, model.config.seqLen);
  const prompt = chatPromptTokens(model, messages);
  const ends = endOfTurnTokens(model);
  const steps = Math.min(model.config.seqLen, prompt.length + flags.steps);
  if (prompt.length >= steps) throw new Error(`the conversation is ${prompt.length} tokens, the model's context is ${model.config.seqLen}`);
  const pieces: Uint8Array[] = [];
  const run = generate(model, {
    prompt,
    steps,
    sampling: { temperature: flags.temperature, topp: flags.topp },
    seed: flags.seed,
    kernels: raw.kernels,
    threads: raw.threads,
  });
  for (let next = run.next(); !next.done; next = run.next()) {
    const { pos, token, piece } = next.value;
    if (pos < prompt.length) continue; // the prompt's own tokens
    if (ends.has(token)) break;
    pieces.push(piece);
    if (!raw.json) await write(process.stdout, printableBytes(piece));
  }
  run.return(undefined as never);
  if (!raw.json) await write(process.stdout, '\n');
  return Buffer.concat(pieces).toString('utf8');
}

export async function chatCommand(modelPath: string, raw: ChatFlags): Promise<void> {
  const model = load(modelPath, raw.tokenizer);
  const messages: ChatMessage[] = raw.system ? [{ role: 'system', content: raw.system }] : [];
  if (raw.message !== undefined) {
    messages.push({ role: 'user', content: raw.message });
    const text = await reply(model, messages, raw);
    if (raw.json) process.stdout.write(`${JSON.stringify({ reply: text })}\n`);
    return;
  }
  if (raw.json) throw new InvalidArgumentError('--json prints one reply: give it with --message');
  const lines = createInterface({ input: process.stdin, output: process.stdin.isTTY ? process.stdout : undefined, terminal: process.stdin.isTTY });
  if (process.stdin.isTTY) lines.setPrompt('> ');
  lines.prompt();
  for await (const line of lines) {
    if (line.trim() !== '') {
      messages.push({ role: 'user', content: line });
      messages.push({ role: 'assistant', content: await reply(model, messages, raw) });
    }
    lines.prompt();
  }
}
