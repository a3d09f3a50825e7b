// Load on the OpenAI-compatible API (docs/api.md "Streaming"): 200 streamed completions at once,
// through the official `openai` client on loopback, each relayed from the node that holds its lease;
// every stream completes, and every stream's tokens are its final result (the receipt's text).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import OpenAI from 'openai';
import { startDevnet } from '../../src/client/devnet.js';
import { Verity } from '../../src/client/sdk.js';
import { withTempDir } from '../helpers.js';

const STREAMS = 200;

interface FinalVerity {
  task: string;
  status: string;
  streamed_text_matches?: boolean;
  text?: string;
}

test(`${STREAMS} concurrent streamed requests complete, and each stream's tokens equal its final result`, { timeout: 420_000 }, () =>
  withTempDir(async (dir) => {
    const devnet = await startDevnet({
      dir: join(dir, 'net'),
      nodes: 3,
      capacity: 4,
      params: { 'Challenge-Window-Ms': '2000' },
      api: { port: 0, limits: { inFlight: STREAMS }, timeoutMs: 300_000 },
      log: () => {},
    });
    try {
      const openai = new OpenAI({ baseURL: `${devnet.api!.url}/v1`, apiKey: 'local', maxRetries: 0, timeout: 360_000 });
      const model = devnet.info.model;
      const t0 = performance.now();
      const firstTokenMs: number[] = [];
      const results = await Promise.all(
        Array.from({ length: STREAMS }, async (_, i) => {
          const stream = await openai.completions.create({ model, prompt: 'Once upon a time', max_tokens: 16, temperature: 0.8, seed: i, stream: true });
          let text = '';
          let chunks = 0;
          let final: FinalVerity | null = null;
          for await (const chunk of stream) {
            const c = chunk as typeof chunk & { verity?: FinalVerity };
            if (c.choices[0].finish_reason === null) {
              if (chunks++ === 0) firstTokenMs.push(performance.now() - t0);
              text += c.choices[0].text;
            } else final = c.verity ?? null;
          }
          return { text, chunks, final };
        }),
      );
      const seconds = (performance.now() - t0) / 1000;
      firstTokenMs.sort((a, b) => a - b);
      const relayed = results.filter((r) => r.chunks > 1).length;
      console.log(`${STREAMS} streams in ${seconds.toFixed(1)} s (${(STREAMS / seconds).toFixed(1)}/s); first tokens: p50 ${(firstTokenMs[STREAMS >> 1] / 1000).toFixed(1)} s, p90 ${(firstTokenMs[Math.floor(STREAMS * 0.9)] / 1000).toFixed(1)} s; ${relayed} relayed token by token from the node`);
      const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
      const tasks = new Set<string>();
      for (const [i, r] of results.entries()) {
        assert.ok(r.final, `stream ${i} ended with its receipt chunk`);
        assert.equal(r.final.status, 'final', `stream ${i}`);
        assert.equal(r.final.streamed_text_matches, true, `stream ${i}`);
        assert.equal(r.final.text, undefined, `stream ${i}: no corrected text`);
        tasks.add(r.final.task);
      }
      assert.equal(tasks.size, STREAMS, 'every stream is its own task');
      // Checked against the coordinator, not only the API's own flag: a sample of the tasks' results.
      for (const r of results.filter((_, i) => i % 20 === 0)) assert.equal((await verity.task(r.final!.task)).result, r.text);
      // Streams of the node's tokens, not only the coordinator's one answer, for most of them.
      assert.ok(relayed >= STREAMS / 2, `${relayed} of ${STREAMS} streams were relayed from the node`);
    } finally {
      await devnet.close();
    }
  }),
);
