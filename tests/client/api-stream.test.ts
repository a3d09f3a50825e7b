// Streaming from the node that holds the lease (node/stream.ts, api.ts `stream`, docs/api.md
// "Streaming"): one devnet with the API and two nodes whose behaviour is honest but holds the
// Submit-Result back until the client has its first streamed chunk (or 20 s), so that the test
// sees by events, not timings, that tokens come before the result exists; then the nodes stream
// garbage (and submit honest results), and the final chunk says so while its text is the honest one.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import OpenAI from 'openai';
import { relayNodeStream, sendable } from '../../src/client/api.js';
import { startDevnet } from '../../src/client/devnet.js';
import { honest, type Behaviour } from '../../src/node/behaviour.js';
import { startTokenStreams } from '../../src/node/stream.js';
import { loadModel } from '../../src/engine/index.js';
import { completionText, encode } from '../../src/engine/tokenizer.js';
import { stories260K, tok512, withTempDir } from '../helpers.js';

test('sendable holds back what may become a stop sequence', () => {
  assert.deepEqual(sendable('one two <|im', ['<|im_end|>']), { text: 'one two ', stopped: false });
  assert.deepEqual(sendable('one two <|im_end|> more', ['<|im_end|>']), { text: 'one two ', stopped: true });
  assert.deepEqual(sendable('abc', []), { text: 'abc', stopped: false });
});

test('a node stream that is not there, or refuses, is no stream', async () => {
  const streams = await startTokenStreams('127.0.0.1', 0);
  try {
    const signal = new AbortController().signal;
    const limits = { events: 10, chars: 100, lineBytes: 1024, connectMs: 2_000 };
    assert.equal(await relayNodeStream(streams.url, 'A'.repeat(43), () => assert.fail('no text'), signal, limits), false);
    assert.equal(await relayNodeStream('http://127.0.0.1:1', 'A'.repeat(43), () => assert.fail('no text'), signal, limits), false);
    const bad = await fetch(`${streams.url}/stream/..%2F`);
    assert.equal(bad.status, 400);
  } finally {
    await streams.close();
  }
});

test('a listener may come as soon as the lease is drawn: it waits while the lease is queued and gets every token once the run starts', async () => {
  const streams = await startTokenStreams('127.0.0.1', 0);
  try {
    const model = loadModel(stories260K, { tokenizer: tok512 });
    const task = 'B'.repeat(43);
    const limits = { events: 10, chars: 100, lineBytes: 1024, connectMs: 2_000 };
    streams.expect(task, Date.now() + 60_000, model);
    streams.token(task, 5, 1); // not started: no event
    let text = '';
    const relayed = relayNodeStream(streams.url, task, (t) => (text += t), new AbortController().signal, limits);
    await new Promise((resolve) => setTimeout(resolve, 100));
    streams.open(task, Date.now() + 60_000, model);
    const tokens = encode(model.tokenizer, 'Once upon a time', true);
    for (let i = 1; i < tokens.length; i++) streams.token(task, tokens[i], tokens[i - 1]);
    streams.end(task);
    assert.equal(await relayed, true, 'the stream ended with its end event');
    assert.equal(text, completionText(model.tokenizer, tokens[0], tokens.slice(1)));
    assert.match(text, /upon a time/);
  } finally {
    await streams.close();
  }
});

test('node stream listeners are bounded: past the per-task and total caps a listener is 429; one waiting on a queued lease goes at the lease end', { timeout: 30_000 }, async () => {
  const streams = await startTokenStreams('127.0.0.1', 0, { listenersPerTask: 2, listeners: 3 });
  const open: AbortController[] = [];
  const listen = async (task: string): Promise<number> => {
    const abort = new AbortController();
    open.push(abort);
    const res = await fetch(`${streams.url}/stream/${task}`, { signal: abort.signal });
    if (res.status !== 200) await res.body?.cancel();
    return res.status;
  };
  try {
    const model = loadModel(stories260K, { tokenizer: tok512 });
    const [a, b] = ['A'.repeat(43), 'B'.repeat(43)];
    streams.expect(a, Date.now() + 60_000, model);
    streams.expect(b, Date.now() + 60_000, model);
    assert.deepEqual([await listen(a), await listen(a), await listen(a)], [200, 200, 429], 'two a task');
    assert.deepEqual([await listen(b), await listen(b)], [200, 429], 'three in all');
    // A queued lease that never runs: its listener is let go when the lease ends.
    const c = 'C'.repeat(43);
    const short = await startTokenStreams('127.0.0.1', 0);
    try {
      short.expect(c, Date.now() + 300, model);
      const res = await fetch(`${short.url}/stream/${c}`);
      assert.equal(res.status, 200, 'the headers come at once, before any token');
      await res.text(); // ends when the entry goes at the lease end (the test's timeout bounds it)
      assert.equal((await fetch(`${short.url}/stream/${c}`)).status, 404, 'gone with its lease');
    } finally {
      await short.close();
    }
  } finally {
    for (const abort of open) abort.abort();
    await streams.close();
  }
});

interface Streamed {
  task: string;
  text: string;
  chunks: number;
  verity: { streamed_text_matches?: boolean; text?: string; status?: string; receipt?: unknown };
  firstChunkMs: number;
  /** When the node's run ended (before its Submit-Result). */
  generatedMs: number;
  totalMs: number;
  /** Events in the order they happened: 'first-chunk', 'generated', 'submit'. */
  order: string[];
}

test('tokens stream from the node while its result is not yet submitted; each stream equals its final result; a garbage stream is flagged', { timeout: 300_000 }, () =>
  withTempDir(async (dir) => {
    let order: string[] = [];
    // The request's first chunk: resolved by the client, awaited by the node before its submit.
    let firstChunk: () => void = () => {};
    let seen: Promise<void> = Promise.resolve();
    let garbage = false;
    let hold = false;
    let t0 = 0;
    let generatedMs = -1;
    // Honest, but holds the submit until the client has a chunk (the test's own events say when).
    const gated: Behaviour = {
      ...honest,
      name: 'gated',
      async claim(model, a, ctx) {
        const vocab = model.tokenizer.vocab.length;
        const onToken = ctx.onToken && ((task: string, token: number, prev: number) => ctx.onToken!(task, garbage ? (token + 7) % vocab : token, prev));
        const claim = await honest.claim(model, a, { ...ctx, onToken });
        order.push('generated');
        if (generatedMs < 0) generatedMs = performance.now() - t0;
        if (hold) await Promise.race([seen, new Promise((resolve) => setTimeout(resolve, 20_000))]);
        order.push('submit');
        return claim;
      },
    };
    // Two nodes: an audit (drawn at random) needs a validator besides the asserter.
    const devnet = await startDevnet({ dir: join(dir, 'net'), nodes: 2, strategies: [{ strategy: gated }, { strategy: gated }], api: { port: 0, timeoutMs: 120_000 }, log: () => {} });
    try {
      for (const node of devnet.nodes) assert.match(node.streamUrl ?? '', /^http:\/\/127\.0\.0\.1:\d+$/);
      const openai = new OpenAI({ baseURL: `${devnet.api!.url}/v1`, apiKey: 'local', maxRetries: 0, timeout: 150_000 });
      const model = devnet.info.model;

      const streamed = async (kind: 'completion' | 'chat', seed: number): Promise<Streamed> => {
        order = [];
        seen = new Promise<void>((resolve) => (firstChunk = resolve));
        hold = true;
        t0 = performance.now();
        generatedMs = -1;
        let firstChunkMs = -1;
        let text = '';
        let chunks = 0;
        let task = '';
        let verity: Streamed['verity'] = {};
        const stream =
          kind === 'completion'
            ? await openai.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, seed, stream: true })
            : await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Tell me about a dog.' }], max_tokens: 30, temperature: 0, seed, stream: true });
        for await (const chunk of stream as AsyncIterable<Record<string, unknown>>) {
          const c = chunk as { id: string; choices: { text?: string; delta?: { content?: string }; finish_reason: string | null }[]; verity?: Streamed['verity'] };
          const piece = kind === 'completion' ? (c.choices[0].text ?? '') : (c.choices[0].delta?.content ?? '');
          task = c.id.replace(/^(chatcmpl|cmpl)-/, '');
          if (c.choices[0].finish_reason === null) {
            if (firstChunkMs < 0) {
              firstChunkMs = performance.now() - t0;
              order.push('first-chunk');
              firstChunk();
            }
            text += piece;
            chunks++;
          } else verity = c.verity ?? {};
        }
        hold = false;
        return { task, text, chunks, verity, firstChunkMs, generatedMs, totalMs: performance.now() - t0, order: [...order] };
      };
      const finalText = async (kind: 'completion' | 'chat', seed: number): Promise<string> =>
        kind === 'completion'
          ? (await openai.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, seed })).choices[0].text
          : ((await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Tell me about a dog.' }], max_tokens: 30, temperature: 0, seed })).choices[0].message.content ?? '');

      for (const [kind, seed] of [['completion', 1], ['chat', 2]] as const) {
        const s = await streamed(kind, seed);
        console.log(`${kind} stream: first token after ${s.firstChunkMs.toFixed(0)} ms, the node's run ended after ${s.generatedMs.toFixed(0)} ms, final receipt after ${s.totalMs.toFixed(0)} ms (${s.chunks} text chunks)`);
        // The node's stream, not the coordinator's answer: the first chunk came while the result was held back.
        assert.ok(s.order.includes('first-chunk') && s.order.indexOf('first-chunk') < s.order.indexOf('submit'), `${kind}: ${s.order.join(' → ')}`);
        assert.ok(s.chunks > 1, `${kind}: the text came token by token (${s.chunks} chunks)`);
        assert.equal(s.verity.streamed_text_matches, true);
        assert.equal(s.verity.text, undefined);
        assert.equal(s.verity.status, 'final');
        assert.ok(s.verity.receipt);
        assert.ok(s.text.length > 0);
        assert.equal(s.text, await finalText(kind, seed), `${kind}: the streamed tokens are the final result`);
      }

      garbage = true;
      const g = await streamed('completion', 3);
      garbage = false;
      const honestText = await finalText('completion', 3);
      console.log(`garbage stream: first token after ${g.firstChunkMs.toFixed(0)} ms, final after ${g.totalMs.toFixed(0)} ms`);
      assert.ok(g.order.indexOf('first-chunk') < g.order.indexOf('submit'), g.order.join(' → '));
      assert.notEqual(g.text, honestText);
      assert.equal(g.verity.streamed_text_matches, false);
      assert.equal(g.verity.text, honestText, 'the final chunk carries the honest text');
    } finally {
      await devnet.close();
    }
  }));
