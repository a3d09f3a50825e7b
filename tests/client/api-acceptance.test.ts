// What an app developer does with the OpenAI-compatible API, end to end on one devnet (docs/api.md):
// the official `openai` client with an API key gets a completion, a chat completion and a streamed
// chat completion; the stream's first token comes while the node's result is still held back; the
// receipt of each verifies with `verity verify`. Meanwhile a node that answers with a wrong token is
// caught by `verity verify` at the right step, `--challenge` wins the dispute, and the API's task
// view then says `corrected`. (The 200-stream load test is api-load.test.ts.)
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import OpenAI from 'openai';
import { readKeyFile, startApi } from '../../src/client/api.js';
import { startDevnet } from '../../src/client/devnet.js';
import { Verity, type TaskView } from '../../src/client/sdk.js';
import { loadModel } from '../../src/engine/index.js';
import { honest, type Behaviour } from '../../src/node/behaviour.js';
import { recordTrace, schedule, type Job } from '../../src/proof/index.js';
import { runCli, stories260K, tok512, withTempDir } from '../helpers.js';

interface VerityObject {
  task: string;
  status: string;
  receipt: { node: string; traceRoot: string } | null;
  streamed_text_matches?: boolean;
}

test('the openai client with a key: completion, chat, streamed chat (first token before the result exists); all three receipts verify; a wrong-token answer is caught, challenged and reported corrected', { timeout: 480_000 }, () =>
  withTempDir(async (dir) => {
    const net = join(dir, 'net');
    // The first chunk of the streamed request, which the honest nodes wait for before they submit (or 20 s).
    let firstChunk: () => void = () => {};
    const gate = new Promise<void>((resolve) => (firstChunk = resolve));
    const events: string[] = [];
    const gated: Behaviour = {
      ...honest,
      name: 'gated',
      async claim(model, a, ctx) {
        const claim = await honest.claim(model, a, ctx);
        await Promise.race([gate, new Promise((resolve) => setTimeout(resolve, 20_000))]);
        events.push(`submit ${a.task}`);
        return claim;
      },
    };
    const devnet = await startDevnet({
      dir: net,
      nodes: 3,
      // Unaudited, with a window to check and challenge in: an honest answer is final when it closes.
      params: { 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0', 'Challenge-Window-Ms': '40000' },
      strategies: [{ strategy: 'wrong-token' }, { strategy: gated }, { strategy: gated }],
      streams: true,
      heartbeatMs: 500,
      log: () => {},
    });
    const keyFile = join(dir, 'keys.json');
    writeFileSync(keyFile, JSON.stringify({ 'sk-acceptance-key': join(net, 'wallet.json') }));
    const api = await startApi({ ...devnet.info, wallet: devnet.user, keys: readKeyFile(keyFile), store: devnet.units.store, timeoutMs: 180_000, commandArgs: `--devnet ${net}` });
    try {
      const [liar, honest1, honest2] = devnet.nodes.map((n) => n.address);
      const model = devnet.info.model;
      const openai = new OpenAI({ baseURL: `${api.url}/v1`, apiKey: 'sk-acceptance-key', maxRetries: 0, timeout: 200_000 });
      // Verity's own request field: the asserter is drawn from the honest nodes (docs/api.md).
      const honestOnly = { verity: { nodes: [honest1, honest2] } } as Record<string, unknown>;
      const verifyFile = async (name: string, doc: unknown): Promise<{ code: number; stdout: string; stderr: string }> => {
        const file = join(dir, `${name}.json`);
        writeFileSync(file, JSON.stringify(doc));
        const r = await runCli(['verify', file, '--devnet', net], 120_000);
        return { code: r.code, stdout: r.stdout.toString(), stderr: r.stderr };
      };

      // 1. The streamed chat completion; the honest nodes hold their results back until its first chunk.
      const streamedChat = (async () => {
        const t0 = performance.now();
        let firstChunkMs = -1;
        let streamed = '';
        let last: VerityObject | null = null;
        const stream = await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Tell me about a dog.' }], max_tokens: 30, temperature: 0, stream: true, ...honestOnly } as OpenAI.ChatCompletionCreateParamsStreaming);
        for await (const chunk of stream) {
          const c = chunk as typeof chunk & { verity?: VerityObject };
          if (c.choices[0].finish_reason === null) {
            if (firstChunkMs < 0) {
              firstChunkMs = performance.now() - t0;
              events.push(`first-chunk ${c.verity?.task}`);
              firstChunk();
            }
            streamed += c.choices[0].delta.content ?? '';
          } else last = c.verity!;
        }
        return { firstChunkMs, totalMs: performance.now() - t0, streamed, last };
      })();

      // 2. The wrong-token node's answer (pending), beside a completion and a chat completion.
      const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
      const lie = await verity.infer('Once upon a time', { maxTokens: 32, temperature: 0, nodes: [liar], wait: 'pending', timeoutMs: 120_000 });
      const answers = Promise.all([
        openai.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, seed: 7, ...honestOnly } as OpenAI.CompletionCreateParamsNonStreaming),
        openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Tell me about a cat.' }], max_tokens: 30, temperature: 0, ...honestOnly } as OpenAI.ChatCompletionCreateParamsNonStreaming),
      ]);
      let lieView: TaskView;
      for (;;) {
        lieView = await verity.task(lie.task);
        if (lieView.receipt) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.equal(lieView.receipt!.node, liar);
      // Where the lie is: the head step of the last sampled token (the wrong-token strategy's).
      const job = (JSON.parse((await devnet.units.store.get(lieView.receipt!.trace))!.data.toString('utf8')) as { job: Job }).job;
      const engine = loadModel(stories260K, { tokenizer: tok512 });
      const truth = recordTrace(engine, job);
      const lastHead = truth.preimages.reduce((at, p, i) => (p.kind === 'head' ? i + 1 : at), -1);
      const challenged = await runCli(['verify', lie.task, '--devnet', net, '--json', '--challenge', '--wallet', join(net, 'wallets', 'node-2.json'), '--wait-ms', '150000'], 200_000);
      assert.equal(challenged.code, 1, challenged.stderr);
      const report = JSON.parse(challenged.stdout.toString()) as { verdict: string; firstDifference: { step: number; kind: string; pos: number }; challenge: { opened: boolean; winner: string } };
      assert.equal(report.verdict, 'mismatch');
      assert.deepEqual(report.firstDifference && { step: report.firstDifference.step, kind: report.firstDifference.kind, pos: report.firstDifference.pos }, { step: lastHead, kind: 'head', pos: schedule(job, engine.config.nLayers).at(lastHead).pos });
      assert.equal(report.challenge.opened, true);
      assert.equal(report.challenge.winner, 'challenger', challenged.stderr);
      // The API reports the task corrected, with the honest text's receipt.
      const viewed = (await (await fetch(`${api.url}/v1/verity/tasks/${lie.task}`, { headers: { authorization: 'Bearer sk-acceptance-key' } })).json()) as TaskView & { verity_status: string };
      assert.equal(viewed.verity_status, 'corrected');
      assert.notEqual(viewed.receipt!.node, liar);
      const fixed = await runCli(['verify', lie.task, '--devnet', net], 120_000);
      assert.equal(fixed.code, 0, fixed.stderr);

      // 3. The stream, the completion and the chat completion, final, each verifying from the saved answer.
      const { firstChunkMs, totalMs, streamed, last } = await streamedChat;
      console.log(`streamed chat: first token after ${firstChunkMs.toFixed(0)} ms, receipt after ${totalMs.toFixed(0)} ms (most of it the ${40} s challenge window)`);
      assert.ok(last && last.status === 'final' && last.receipt, JSON.stringify(last));
      const first = events.indexOf(`first-chunk ${last.task}`);
      assert.ok(first >= 0 && first < events.indexOf(`submit ${last.task}`), `the first token came before the node submitted its result: ${events.join(' → ')}`);
      assert.equal(last.streamed_text_matches, true);
      assert.ok(streamed.length > 0);
      const streamedCheck = await verifyFile('streamed', { task: last.task, text: streamed, receipt: last.receipt });
      assert.equal(streamedCheck.code, 0, streamedCheck.stderr);
      assert.equal(streamedCheck.stdout, 'match\n');
      const [completion, chat] = await answers;
      for (const [name, answer] of [['completion', completion], ['chat', chat]] as const) {
        const v = (answer as unknown as { verity: VerityObject }).verity;
        assert.equal(v.status, 'final', name);
        assert.ok(v.receipt && v.receipt.node !== liar, name);
        const checked = await verifyFile(name, answer);
        assert.equal(checked.code, 0, `${name}: ${checked.stderr}`);
        assert.equal(checked.stdout, 'match\n');
      }
      // A saved answer whose text was changed is a mismatch.
      const forged = await verifyFile('forged', { ...completion, choices: [{ ...completion.choices[0], text: `${completion.choices[0].text}!` }] });
      assert.equal(forged.code, 1, forged.stderr);
    } finally {
      await api.close();
      await devnet.close();
    }
  }),
);
