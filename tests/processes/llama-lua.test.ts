// aos-llama: a Lua process that loads stories260K from the store by id and generates inside its own
// evaluation. Its text must be what `verity run -t 0` prints for the same prompt and length, and a
// second CU evaluating the same log must reach the same memory (state hash) after every message —
// including one restored from a checkpoint taken between them.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect, createDataItemSigner } from '@permaweb/aoconnect';
import { openComputeUnit, type ComputeUnit } from '../../src/ao/cu.js';
import { publishModule } from '../../src/ao/modules.js';
import { LLAMA_EXTENSION } from '../../src/ao/runtime.js';
import { startUnits, unitWallet, type RunningUnits } from '../../src/ao/units.js';
import { BUNDLED_MODEL } from '../../src/client/devnet.js';
import { encode, loadModel } from '../../src/engine/index.js';
import { verityExtensions } from '../../src/processes/index.js';
import { publishModel } from '../../src/store/models.js';
import { generateWallet, walletSigner } from '../../src/store/wallet.js';

const SOURCE = `
local llama = require('llama')
Handlers.add('Generate', 'Generate', function(msg)
  llama.load(msg.Tags.Model)
  llama.setPrompt(msg.Data)
  llama.run(tonumber(msg.Tags.Tokens))
  print(llama.text())
end)
Handlers.add('Next', 'Next', function(msg) print(llama.next()) end)
Handlers.add('Text', 'Text', function(msg) print(llama.text()) end)
`;

interface LegacyAo {
  spawn(a: { module: string; scheduler: string; signer: unknown; tags?: { name: string; value: string }[] }): Promise<string>;
  message(a: { process: string; signer: unknown; tags?: { name: string; value: string }[]; data?: string }): Promise<string>;
  result(a: { process: string; message: string }): Promise<{ Output: { data?: string } | null; Error?: unknown }>;
}

const PROMPT = 'Once upon a time';
const TOKENS = 64;

describe('aos-llama: require("llama") in a Lua process', { timeout: 240_000 }, () => {
  let dir: string;
  let units: RunningUnits;
  let ao: LegacyAo;
  let signer: unknown;
  let process_: string;
  let modelId: string;
  let second: ComputeUnit;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'verity-llama-lua-'));
    units = await startUnits({ dir, extensions: verityExtensions });
    const wallet = await generateWallet('arweave');
    signer = createDataItemSigner(wallet.type === 'arweave' ? wallet.jwk : undefined);
    ao = connect({ MODE: 'legacy', MU_URL: units.urls.mu, CU_URL: units.urls.cu, GATEWAY_URL: units.urls.gateway }) as unknown as LegacyAo;
    const model = loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer });
    ({ modelId } = await publishModel(units.store, walletSigner(wallet), model, BUNDLED_MODEL.name));
    const module = await publishModule(units.store, walletSigner(wallet), SOURCE, 'llama-demo', { format: 'lua', extensions: [LLAMA_EXTENSION] });
    process_ = await ao.spawn({ module, scheduler: units.scheduler.address, signer });
    second = await openComputeUnit({
      dir: join(dir, 'cu-2'), store: units.store, wallet: await unitWallet(join(dir, 'wallets'), 'cu-2'), scheduler: units.locate, extensions: verityExtensions(units.store), checkpointEvery: 1,
    });
  });

  after(async () => {
    await second?.close();
    await units?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const send = async (action: string, data = '', tags: Record<string, string> = {}) => {
    const id = await ao.message({ process: process_, signer, data, tags: [{ name: 'Action', value: action }, ...Object.entries(tags).map(([name, value]) => ({ name, value }))] });
    return ao.result({ process: process_, message: id });
  };
  const sameState = async (): Promise<string> => {
    const [a, b] = await Promise.all([units.compute.state(process_), second.state(process_)]);
    assert.equal(a.nonce, b.nonce);
    assert.equal(b.stateHash, a.stateHash, `the two CUs' states differ at slot ${a.nonce}`);
    return a.stateHash;
  };

  test('64 tokens of stories260K generated in the process are the text `verity run -t 0` prints; two CUs agree on every state hash', async () => {
    await sameState();
    const generated = await send('Generate', PROMPT, { Model: modelId, Tokens: String(TOKENS) });
    assert.equal(generated.Error, undefined, String(generated.Error));
    await sameState();
    const model = loadModel(BUNDLED_MODEL.path, { tokenizer: BUNDLED_MODEL.tokenizer });
    const steps = encode(model.tokenizer, PROMPT, true, false).length - 1 + TOKENS;
    const cli = new URL('../../../bin/verity.js', import.meta.url).pathname;
    const run = execFileSync(process.execPath, [cli, 'run', BUNDLED_MODEL.path, '-z', BUNDLED_MODEL.tokenizer, '-t', '0', '-n', String(steps), '-i', PROMPT], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(generated.Output?.data, `${run.replace(/\n$/, '')}\n`);
    // One token more, then a CU that restarts from its checkpoint: the same memory on both.
    const next = await send('Next');
    assert.equal(next.Error, undefined, String(next.Error));
    assert.ok((next.Output?.data ?? '').length > 0);
    await sameState();
    await second.close();
    second = await openComputeUnit({
      dir: join(dir, 'cu-2'), store: units.store, wallet: await unitWallet(join(dir, 'wallets'), 'cu-2'), scheduler: units.locate, extensions: verityExtensions(units.store), checkpointEvery: 1,
    });
    const text = await send('Text');
    assert.equal(text.Output?.data, `${run.replace(/\n$/, '')}${next.Output?.data ?? ''}`);
    await sameState();
  });

  test('a module without the Llama extension gets no llama host functions; a bad model id is an error the process survives', async () => {
    const wallet = await generateWallet('ed25519');
    const plain = await publishModule(units.store, walletSigner(wallet), SOURCE, 'llama-without', { format: 'lua' });
    const pid = await ao.spawn({ module: plain, scheduler: units.scheduler.address, signer });
    const id = await ao.message({ process: pid, signer, data: PROMPT, tags: [{ name: 'Action', value: 'Generate' }, { name: 'Model', value: modelId }, { name: 'Tokens', value: '4' }] });
    assert.match(String((await ao.result({ process: pid, message: id })).Error), /no host function llama\.info/);
    const bad = await send('Generate', PROMPT, { Model: 'f'.repeat(64), Tokens: '4' });
    assert.match(String(bad.Error), /manifest|model/);
    assert.equal((await send('Text')).Error, undefined);
  });
});
