// The model files people run, through the whole network: models with Llama 3's (128,256 tokens)
// and Qwen2.5's (151,665 tokens, Q8_0 matrices) byte-level BPE vocabularies are published,
// registered and served; an Infer on each becomes final, and its text and trace root are what the
// job gives when run here. The coordinator's host functions tokenise with the BPE tokenizer they
// rebuild from the store's tokenizer leaf, and pay for its header on every call.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { completionText, encode, ggufFromModel, loadModel, modelIdentity, writeGguf, type Model } from '../../src/engine/index.js';
import type { RunningNode } from '../../src/node/index.js';
import { describeRequest } from '../../src/processes/host.js';
import { jobCommitment, recordTrace } from '../../src/proof/index.js';
import { BPE_MODELS, bpeTokenizer, tinyBpeGguf } from '../engine/bpe-models.js';
import { startEconomy } from '../economy.js';
import { withTempDir } from '../helpers.js';

const PARAMS: Record<string, string> = {
  'Min-Stake': '600', Slash: '600', 'Miss-Slash': '60', 'Challenge-Bond': '600', 'Round-Bond': '5', 'Audit-Ppm': '1000000',
  'Max-Tokens': '64', 'Lease-Ms': '20000', 'Reveal-Ms': '8000', 'Clock-Ms': '8000', 'Challenge-Window-Ms': '500',
};

/** The tiny random-weight model around a real vocabulary; Qwen2.5's written back with every matrix Q8_0. */
function realVocabularyModels(dir: string): { name: string; model: Model }[] {
  return ['llama3', 'qwen2'].map((name) => {
    const spec = BPE_MODELS.find((m) => m.name === name)!;
    let path = join(dir, `${name}.gguf`);
    writeFileSync(path, tinyBpeGguf(bpeTokenizer(spec), 11));
    if (name === 'qwen2') {
      const base = loadModel(path);
      path = join(dir, 'qwen2-q8_0.gguf');
      writeGguf(path, ggufFromModel(base, { type: 'q8_0', name: 'qwen2-vocab' }));
    }
    return { name, model: loadModel(path) };
  });
}

test('models with Llama 3 and Qwen2.5 BPE vocabularies (Q8_0) are served through the network, audited, final and as run here', { timeout: 180_000 }, () =>
  withTempDir(async (dir) => {
    const economy = await startEconomy(dir, PARAMS);
    const nodes: RunningNode[] = [];
    const logs: string[] = [];
    try {
      const models = realVocabularyModels(dir);
      for (const { name, model } of models) await economy.register(model, name);
      // Two nodes: every result is audited by the other, which runs the job itself.
      for (let i = 0; i < 2; i++) nodes.push(await economy.startFundedNode(dir, { log: (line) => logs.push(line) }));
      const { verity } = economy;

      const prompt = 'Hello, wörld! 12345 <|eot_id|>';
      for (const { name, model } of models) {
        const { modelId } = modelIdentity(model);
        const result = await verity.infer(prompt, { model: modelId, maxTokens: 12, temperature: 0.8, topP: 0.9, seed: 5, timeoutMs: 90_000 });
        assert.equal(result.status, 'final', `${name}: ${logs.slice(-20).join('\n')}`);
        const view = await verity.task(result.task);
        assert.equal(view.audited, true, `${name}: audited`);
        assert.equal(view.disputes.length, 0, `${name}: the auditor agrees`);
        // The same job here: the prompt tokenised by the same BPE rules, the same bits.
        const identity = modelIdentity(model);
        const job = describeRequest(
          { modelId: identity.modelId, tokenizerHash: identity.tokenizerHash, tokenizer: model.tokenizer, seqLen: model.config.seqLen },
          { prompt, maxTokens: 12, temperature: 0.8, topP: 0.9, seed: '5' },
        );
        assert.equal(result.receipt?.commitment, jobCommitment(job), `${name}: the job commitment`);
        const trace = recordTrace(model, job);
        const promptTokens = job.promptTokens;
        assert.equal(result.receipt?.traceRoot, trace.root, `${name}: the receipt's root is the job's`);
        // usage counts the prompt's own tokens: Llama 3's tokenizer adds a BOS, Qwen2's does not.
        assert.equal(result.usage.prompt_tokens, encode(model.tokenizer, prompt, false).length, `${name}: usage.prompt_tokens`);
        const sampled = trace.tokens.slice(promptTokens.length - 1); // the trace's tokens follow the first prompt token
        assert.equal(sampled.length, 12);
        assert.equal(result.text, completionText(model.tokenizer, promptTokens.at(-1)!, sampled), `${name}: the text`);
      }
    } finally {
      for (const n of nodes) await n.close();
      await economy.units.close();
    }
  }),
);
