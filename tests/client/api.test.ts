// The OpenAI-compatible API (src/client/api.ts, docs/api.md): the pure request → response mapping
// on its own, then one devnet serving it — local mode through startDevnet's `api` option, key mode
// through startApi — driven by the official `openai` client and by fetch for malformed requests.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:net';
import { test } from 'node:test';
import OpenAI from 'openai';
import { RefusedError } from '../../src/ao/client.js';
import {
  ApiError, DEFAULT_LIMITS, applyStop, authenticate, parseChatRequest, parseCompletionRequest, parseKeyFile, startApi, statusOf, toApiError,
} from '../../src/client/api.js';
import { startDevnet } from '../../src/client/devnet.js';
import { Verity } from '../../src/client/sdk.js';
import { renderChat } from '../../src/engine/chat.js';
import { loadModel } from '../../src/engine/index.js';
import { generateWallet, walletAddress } from '../../src/store/wallet.js';
import { stories260K, tok512, withTempDir } from '../helpers.js';

const NET = { maxTokens: 512, maxPromptBytes: 4096 };
const status400 = (f: () => unknown, code: string | null, param?: string): void => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof ApiError, String(e));
    assert.equal(e.status, 400, e.message);
    assert.equal(e.code, code, e.message);
    if (param !== undefined) assert.equal(e.param, param);
    return;
  }
  assert.fail('expected an ApiError');
};

test('the request mapping: defaults, limits and refusals, each before any work', () => {
  const r = parseCompletionRequest({ model: 'm', prompt: ['hi'], max_tokens: 5, temperature: 0, top_p: 1, seed: 3, stop: 'x', n: 2, user: 'u' }, DEFAULT_LIMITS, NET);
  assert.deepEqual(r, { model: 'm', prompt: 'hi', maxTokens: 5, temperature: 0, topP: 1, seed: 3, stop: ['x'], n: 2, stream: false });
  assert.equal(parseCompletionRequest({ model: 'm', prompt: 'hi', temperature: null }, DEFAULT_LIMITS, NET).maxTokens, 128);
  status400(() => parseCompletionRequest({ prompt: 'hi' }, DEFAULT_LIMITS, NET), 'missing_required_parameter', 'model');
  status400(() => parseCompletionRequest({ model: 'm' }, DEFAULT_LIMITS, NET), 'missing_required_parameter', 'prompt');
  status400(() => parseCompletionRequest([], DEFAULT_LIMITS, NET), null);
  assert.equal(parseCompletionRequest({ model: 'm', prompt: 'hi', stream: true }, DEFAULT_LIMITS, NET).stream, true);
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', stream: true, n: 2 }, DEFAULT_LIMITS, NET), 'invalid_value', 'n');
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', stream: 'yes' }, DEFAULT_LIMITS, NET), 'invalid_type', 'stream');
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', max_tokens: 513 }, DEFAULT_LIMITS, NET), 'context_length_exceeded', 'max_tokens');
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'é'.repeat(2049) }, DEFAULT_LIMITS, NET), 'context_length_exceeded', 'prompt');
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', temperature: 3 }, DEFAULT_LIMITS, NET), 'invalid_value', 'temperature');
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', n: 5 }, DEFAULT_LIMITS, NET), 'invalid_value', 'n');
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', stop: ['a', 'b', 'c', 'd', 'e'] }, DEFAULT_LIMITS, NET), 'invalid_value', 'stop');
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', echo: true }, DEFAULT_LIMITS, NET), 'unsupported_parameter', 'echo');
  const node = 'n'.repeat(43);
  assert.deepEqual(parseCompletionRequest({ model: 'm', prompt: 'hi', verity: { nodes: [node] } }, DEFAULT_LIMITS, NET).nodes, [node]);
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', verity: { nodes: ['short'] } }, DEFAULT_LIMITS, NET), 'invalid_value', 'verity.nodes');
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', verity: { nodes: Array(17).fill(node) } }, DEFAULT_LIMITS, NET), 'invalid_value', 'verity.nodes');
  status400(() => parseCompletionRequest({ model: 'm', prompt: 'hi', verity: 'x' }, DEFAULT_LIMITS, NET), 'invalid_type', 'verity');
  const chat = parseChatRequest({ model: 'm', messages: [{ role: 'developer', content: 'be brief' }, { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] }], max_completion_tokens: 9 }, DEFAULT_LIMITS, NET);
  assert.deepEqual(chat.messages, [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'ab' }]);
  assert.equal(chat.maxTokens, 9);
  status400(() => parseChatRequest({ model: 'm', messages: [] }, DEFAULT_LIMITS, NET), 'invalid_type', 'messages');
  status400(() => parseChatRequest({ model: 'm', messages: [{ role: 'tool', content: 'x' }] }, DEFAULT_LIMITS, NET), 'invalid_value', 'messages[0].role');
  status400(() => parseChatRequest({ model: 'm', messages: [{ role: '__proto__', content: 'x' }] }, DEFAULT_LIMITS, NET), 'invalid_value', 'messages[0].role');
  status400(() => parseChatRequest({ model: 'm', messages: Array.from({ length: 257 }, () => ({ role: 'user', content: 'x' })) }, DEFAULT_LIMITS, NET), 'invalid_value', 'messages');

  assert.deepEqual(applyStop('one two three', ['three', 'two']), { text: 'one ', stopped: true });
  assert.deepEqual(applyStop('one', ['x']), { text: 'one', stopped: false });
  assert.equal(statusOf({ status: 'final', corrected: false }), 'final');
  assert.equal(statusOf({ status: 'final', corrected: true }), 'corrected');
  assert.equal(statusOf({ status: 'disputed', corrected: false }), 'disputed');
  assert.equal(statusOf({ status: 'challengeable', corrected: false }), 'pending');

  const mapped = (code: number): [number, string | null] => {
    const e = toApiError(new RefusedError(code, code === 404 ? 'model x is not registered' : 'no'));
    return [e.status, e.code];
  };
  assert.deepEqual(mapped(402), [402, 'insufficient_quota']);
  assert.deepEqual(mapped(404), [404, 'model_not_found']);
  assert.deepEqual(mapped(413), [400, 'context_length_exceeded']);
  assert.deepEqual(mapped(503), [503, 'overloaded']);
  assert.deepEqual(mapped(504), [504, 'timeout']);
  assert.equal(toApiError(new Error('secret detail')).status, 500);
  assert.equal(toApiError(new Error('secret detail')).message, 'internal error');
});

test('key files and authentication', async () => {
  const wallet = await generateWallet('ed25519');
  const keys = parseKeyFile({ 'sk-inline-key': wallet.jwk }, '/nowhere');
  assert.equal(walletAddress(keys.get('sk-inline-key')!), walletAddress(wallet));
  assert.throws(() => parseKeyFile({ short: wallet.jwk }, '/'), /8 to 256/);
  assert.throws(() => parseKeyFile({ 'sk-inline-key': { kty: 'OKP' } }, '/'), /JWK/);
  assert.throws(() => parseKeyFile({}, '/'), /no keys/);
  assert.throws(() => parseKeyFile({ 'sk-missing-file': 'no-such.json' }, '/tmp'), /no such wallet file/);
  const own = await generateWallet('ed25519');
  assert.equal(authenticate(undefined, undefined, own), own);
  assert.equal(authenticate('Bearer sk-inline-key', keys, own), keys.get('sk-inline-key'));
  assert.throws(() => authenticate(undefined, keys, own), (e: ApiError) => e.status === 401 && e.code === 'missing_api_key');
  assert.throws(() => authenticate('Bearer sk-wrong-key', keys, own), (e: ApiError) => e.status === 401 && e.code === 'invalid_api_key');
});

const PROMPT = 'Once upon a time';

/** Writes `parts` to a raw connection, `gapMs` apart, and resolves with all the server sent back before it closed. */
function rawExchange(port: number, parts: string[], gapMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let got = '';
    socket.on('data', (d) => (got += d.toString()));
    socket.on('error', reject);
    socket.on('close', () => resolve(got));
    let i = 0;
    const next = (): void => {
      if (i < parts.length && !socket.destroyed) socket.write(parts[i++]);
      if (i < parts.length) setTimeout(next, gapMs).unref();
    };
    socket.on('connect', next);
  });
}

test('slow clients, oversized headers and bytes that are not HTTP get OpenAI-shaped errors and are let go; the server keeps serving', { timeout: 60_000 }, async () => {
  // No units are needed: none of these reaches a handler.
  const api = await startApi({ mu: 'http://127.0.0.1:1', cu: 'http://127.0.0.1:1', coordinator: 'c'.repeat(43), wallet: await generateWallet('ed25519'), keys: new Map([['sk-slow-test-key', await generateWallet('ed25519')]]), limits: { receiveMs: 800 } });
  try {
    const port = Number(new URL(api.url).port);
    const shape = (reply: string, status: number, code: string): void => {
      assert.match(reply, new RegExp(`^HTTP/1\\.1 ${status} `), reply);
      const body = JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4)) as { error: { code: string; type: string; message: string } };
      assert.equal(body.error.code, code);
      assert.equal(body.error.type, 'invalid_request_error');
    };
    const t0 = performance.now();
    // Headers a byte at a time, a body that never comes, a body that trickles in: each ends at the limit.
    const head = 'POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-slow-test-key\r\ncontent-type: application/json\r\n';
    const [slowHeaders, missingBody, tricklingBody] = await Promise.all([
      rawExchange(port, head.split(''), 100),
      rawExchange(port, [`${head}content-length: 100\r\n\r\n{"model"`], 0),
      rawExchange(port, [`${head}content-length: 400\r\n\r\n`, ...Array(40).fill('          ')], 150),
    ]);
    const heldMs = performance.now() - t0;
    for (const reply of [slowHeaders, missingBody, tricklingBody]) shape(reply, 408, 'request_timeout');
    console.log(`three slow clients let go after ${heldMs.toFixed(0)} ms (receiveMs 800)`);
    shape(await rawExchange(port, [`GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: ${'y'.repeat(20_000)}\r\n\r\n`], 0), 431, 'headers_too_large');
    shape(await rawExchange(port, ['NOT HTTP AT ALL\r\n\r\n'], 0), 400, 'bad_request');
    // Still serving: an unknown endpoint is its JSON 404, a missing key its 401.
    const unknown = await fetch(`${api.url}/v1/engines`, { headers: { authorization: 'Bearer sk-slow-test-key' } });
    assert.equal(unknown.status, 404);
    assert.equal((await fetch(`${api.url}/v1/models`)).status, 401);
  } finally {
    await api.close();
  }
});

test('a devnet serving the API: the openai client gets the SDK\'s text with a final receipt; every error class has its status and shape; the server survives them', { timeout: 300_000 }, () =>
  withTempDir(async (dir) => {
    // Nodes without a token stream: streaming falls back to the coordinator's first answer (api-stream.test.ts has the node streams).
    const devnet = await startDevnet({ dir: join(dir, 'net'), nodes: 3, streams: false, api: { port: 0, limits: { inFlight: 1 }, timeoutMs: 120_000 }, log: () => {} });
    const poor = await generateWallet('ed25519');
    const keyFile = join(dir, 'keys.json');
    writeFileSync(keyFile, JSON.stringify({ 'sk-test-user-key': join(dir, 'net', 'wallet.json'), 'sk-test-poor-key': poor.jwk }));
    const { readKeyFile } = await import('../../src/client/api.js');
    const api = await startApi({ ...devnet.info, wallet: devnet.user, keys: readKeyFile(keyFile), store: devnet.units.store, timeoutMs: 120_000, commandArgs: `--devnet ${join(dir, 'net')}` });
    try {
      const base = `${api.url}/v1`;
      const openai = new OpenAI({ baseURL: base, apiKey: 'sk-test-user-key', maxRetries: 0, timeout: 150_000 });
      const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
      const model = devnet.info.model;

      // /v1/models
      const models = await openai.models.list();
      assert.equal(models.data.length, 1);
      const listed = models.data[0] as unknown as { id: string; object: string; owned_by: string; verity: { name: string; manifest: string; context_length: number } };
      assert.equal(listed.id, model);
      assert.equal(listed.object, 'model');
      assert.equal(listed.owned_by, devnet.info.coordinator);
      assert.equal(listed.verity.name, 'stories260K');
      assert.match(listed.verity.manifest, /^[A-Za-z0-9_-]{43}$/);
      assert.ok(listed.verity.context_length > 0);

      // A completion and a chat completion, each beside the SDK's infer of the same job.
      const messages = [{ role: 'system' as const, content: 'You tell stories.' }, { role: 'user' as const, content: 'Tell me about a cat.' }];
      const chatPrompt = renderChat(loadModel(stories260K, { tokenizer: tok512 }), messages);
      const [completion, direct, chat, chatDirect] = await Promise.all([
        openai.completions.create({ model, prompt: PROMPT, max_tokens: 40, temperature: 0, seed: 7, user: 'ignored' }),
        verity.infer(PROMPT, { maxTokens: 40, temperature: 0, seed: 7, timeoutMs: 120_000 }),
        openai.chat.completions.create({ model: 'stories260K', messages, max_tokens: 30, temperature: 0, seed: 3 }),
        verity.infer(chatPrompt, { maxTokens: 30, temperature: 0, seed: 3, timeoutMs: 120_000 }),
      ]);
      assert.equal(completion.object, 'text_completion');
      assert.equal(completion.model, model);
      assert.equal(completion.choices.length, 1);
      assert.equal(completion.choices[0].text, direct.text);
      assert.ok(direct.text.length > 0);
      assert.equal(completion.choices[0].finish_reason, direct.usage.completion_tokens === 40 ? 'length' : 'stop');
      assert.deepEqual(completion.usage, { prompt_tokens: direct.usage.prompt_tokens, completion_tokens: direct.usage.completion_tokens, total_tokens: direct.usage.prompt_tokens + direct.usage.completion_tokens });
      const v = (completion as unknown as { verity: Record<string, unknown> & { receipt: Record<string, string>; check: { url: string; command: string } } }).verity;
      assert.equal(completion.id, `cmpl-${v.task as string}`);
      assert.notEqual(v.task, direct.task);
      assert.equal(v.status, 'final');
      assert.equal(v.model, model);
      assert.match(v.trace_root as string, /^[0-9a-f]{64}$/);
      assert.equal(v.trace_root, direct.receipt!.traceRoot);
      assert.equal(v.job_commitment, direct.receipt!.commitment);
      assert.equal(v.trace_root, v.receipt.traceRoot);
      assert.equal(v.node, v.receipt.node);
      assert.equal(v.check.command, `verity task ${v.task as string} --devnet ${join(dir, 'net')}`);
      const created = Math.abs(completion.created - Date.now() / 1000);
      assert.ok(created < 600, `created ${completion.created}`);

      assert.equal(chat.object, 'chat.completion');
      assert.equal(chat.choices[0].message.role, 'assistant');
      assert.equal(chat.choices[0].message.content, applyStop(chatDirect.text, ['<|im_end|>']).text);
      const cv = (chat as unknown as { verity: Record<string, string> }).verity;
      assert.equal(cv.status, 'final');
      assert.equal(cv.chat_template, 'default');
      assert.equal(cv.trace_root, chatDirect.receipt!.traceRoot);

      // Where to check it: the task as this server reads it.
      const task = (await (await fetch(v.check.url, { headers: { authorization: 'Bearer sk-test-user-key' } })).json()) as { status: string; result: string };
      assert.equal(task.status, 'final');
      assert.equal(task.result, direct.text);

      // A stop sequence cuts the returned text: finish_reason stop, the full text kept in verity.
      const stop = direct.text.slice(12, 16);
      // n = 2: two independent tasks (seeds 7 and 8: at temperature 0 the same text), each with its verity object.
      const stopped = await openai.completions.create({ model, prompt: PROMPT, max_tokens: 40, temperature: 0, seed: 7, stop: [stop], n: 2 });
      assert.equal(stopped.choices.length, 2);
      for (const c of stopped.choices) {
        assert.equal(c.text, direct.text.slice(0, direct.text.indexOf(stop)));
        assert.equal(c.finish_reason, 'stop');
      }
      const sv = (stopped as unknown as { verity: { full_text: string; choices: { task: string; status: string; full_text: string }[] } }).verity;
      assert.equal(sv.full_text, direct.text);
      assert.equal(sv.choices.length, 2);
      assert.notEqual(sv.choices[0].task, sv.choices[1].task);
      assert.ok(sv.choices.every((c) => c.status === 'final' && c.full_text === direct.text));
      assert.equal(stopped.usage!.completion_tokens, 2 * direct.usage.completion_tokens);

      // Streamed, no node stream: the first answer in one chunk as the coordinator reported it (pending), then the final chunk with the receipt.
      const chunks: { choices: { text?: string; delta?: { content?: string }; finish_reason: string | null }[]; verity: { status: string; trace_root?: string; streamed_text_matches?: boolean } }[] = [];
      for await (const chunk of await openai.completions.create({ model, prompt: PROMPT, max_tokens: 40, temperature: 0, seed: 7, stream: true })) chunks.push(chunk as unknown as (typeof chunks)[number]);
      assert.equal(chunks.length, 2, JSON.stringify(chunks));
      assert.equal(chunks.map((c) => c.choices[0].text).join(''), direct.text);
      assert.equal(chunks[0].choices[0].finish_reason, null);
      assert.equal(chunks[0].verity.status, 'pending');
      assert.equal(chunks[1].choices[0].finish_reason, completion.choices[0].finish_reason);
      assert.equal(chunks[1].verity.status, 'final');
      assert.equal(chunks[1].verity.trace_root, direct.receipt!.traceRoot);
      assert.equal(chunks[1].verity.streamed_text_matches, true);
      const chatChunks: typeof chunks = [];
      for await (const chunk of await openai.chat.completions.create({ model, messages, max_tokens: 30, temperature: 0, seed: 3, stream: true })) chatChunks.push(chunk as unknown as (typeof chunks)[number]);
      assert.equal(chatChunks.map((c) => c.choices[0].delta?.content ?? '').join(''), chat.choices[0].message.content);
      assert.equal(chatChunks.at(-1)!.verity.trace_root, chatDirect.receipt!.traceRoot);

      // Errors, each in OpenAI's shape.
      const post = async (path: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number; error: { message: string; type: string; param: string | null; code: string | null } }> => {
        const res = await fetch(`${base}${path}`, { method: 'POST', body, headers: { 'content-type': 'application/json', authorization: 'Bearer sk-test-user-key', ...headers }, signal: AbortSignal.timeout(60_000) });
        const json = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
        assert.deepEqual(Object.keys(json.error).sort(), ['code', 'message', 'param', 'type'], JSON.stringify(json));
        return { status: res.status, error: json.error };
      };
      const json = (o: unknown): string => JSON.stringify(o);
      await assert.rejects(openai.completions.create({ model: 'no-such-model', prompt: PROMPT }), (e: { status?: number }) => e.status === 404);
      assert.equal((await post('/completions', json({ model: 'no-such-model', prompt: PROMPT }))).error.code, 'model_not_found');
      assert.equal((await post('/completions', '{"model": ')).status, 400);
      assert.equal((await post('/completions', json({ model }))).status, 400);
      assert.equal((await post('/chat/completions', json({ model }))).error.param, 'messages');
      const tooMany = await post('/completions', json({ model, prompt: PROMPT, max_tokens: 100_000 }));
      assert.deepEqual([tooMany.status, tooMany.error.code], [400, 'context_length_exceeded']);
      const streamRefused = await post('/chat/completions', json({ model, messages, stream: true, n: 2 }));
      assert.deepEqual([streamRefused.status, streamRefused.error.param], [400, 'n']);
      // A refusal before the first answer is a plain JSON error, not an event stream.
      const streamUnfunded = await post('/completions', json({ model, prompt: PROMPT, max_tokens: 8, stream: true }), { authorization: 'Bearer sk-test-poor-key' });
      assert.equal(streamUnfunded.status, 402);
      assert.equal((await post('/completions', json({ model, prompt: PROMPT }), { authorization: '' })).status, 401);
      const wrong = await post('/completions', json({ model, prompt: PROMPT }), { authorization: 'Bearer sk-not-a-key' });
      assert.deepEqual([wrong.status, wrong.error.code], [401, 'invalid_api_key']);
      const unfunded = await post('/completions', json({ model, prompt: PROMPT, max_tokens: 8 }), { authorization: 'Bearer sk-test-poor-key' });
      assert.deepEqual([unfunded.status, unfunded.error.code], [402, 'insufficient_quota']);
      const huge = await post('/completions', json({ model, prompt: 'x'.repeat(DEFAULT_LIMITS.bodyBytes) }));
      assert.deepEqual([huge.status, huge.error.code], [413, 'request_too_large']);
      assert.equal((await post('/completions', json({ model, prompt: 'x'.repeat(5000) }))).error.code, 'context_length_exceeded');
      const unknown = await fetch(`${base}/engines`, { headers: { authorization: 'Bearer sk-test-user-key' } });
      assert.equal(unknown.status, 404);
      assert.equal(((await unknown.json()) as { error: { code: string } }).error.code, 'unknown_url');
      const headers = await fetch(`${base}/models`, { headers: { authorization: 'Bearer sk-test-user-key', 'x-big': 'y'.repeat(20_000) } }).catch((e: Error) => e);
      assert.ok(headers instanceof Error || headers.status === 431, 'an oversized header is refused');

      // Local mode (the devnet's own API): any key runs as the devnet user; past its one request in flight, 429.
      const local = new OpenAI({ baseURL: devnet.info.api, apiKey: 'anything', maxRetries: 0, timeout: 150_000 });
      // Two at once: whichever arrives second finds the first in flight (an inference takes seconds).
      const both = await Promise.allSettled([0, 1].map(() => local.completions.create({ model, prompt: PROMPT, max_tokens: 40, temperature: 0, seed: 7 })));
      const refused = both.filter((b): b is PromiseRejectedResult => b.status === 'rejected');
      assert.equal(refused.length, 1, JSON.stringify(both.map((b) => b.status)));
      assert.equal((refused[0].reason as { status?: number }).status, 429);
      assert.equal((refused[0].reason as { code?: string }).code, 'rate_limit_exceeded');
      const answered = both.find((b): b is PromiseFulfilledResult<OpenAI.Completions.Completion> => b.status === 'fulfilled')!.value;
      assert.equal(answered.choices[0].text, direct.text);
      assert.equal((answered as unknown as { verity: { status: string } }).verity.status, 'final');
      // Its slot is free again: the next request is answered (here refused for its empty prompt), not 429.
      await assert.rejects(local.completions.create({ model, prompt: '' }), (e: { status?: number }) => e.status === 400);

      // Still serving after all of that.
      assert.equal((await openai.models.list()).data[0].id, model);
      assert.equal((await local.models.list()).data[0].id, model);
    } finally {
      await api.close();
      await devnet.close();
    }
  }),
);
