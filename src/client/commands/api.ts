// verity api: the OpenAI-compatible HTTP API (docs/api.md) in front of a network, found as the
// other network commands find it (--devnet <dir>, --mu/--cu/--coordinator, or VERITY_*).
import { InvalidArgumentError } from 'commander';
import { loadModel } from '../../engine/index.js';
import { modelIdentity } from '../../engine/model-id.js';
import { openGatewayStore } from '../../store/gateway-store.js';
import { readKeyFile, startApi } from '../api.js';
import { need, networkOf, walletOf, type NetworkFlags } from './network.js';
import { closeOnSignal } from './shared.js';

export interface ApiFlags extends NetworkFlags {
  port: number;
  host: string;
  keys?: string;
  gateway?: string;
  modelFile?: string[];
  maxInFlight?: number;
}

/** Model id → the chat template of a local copy of that model (a GGUF file that carries one). */
function chatTemplates(paths: string[]): Map<string, string> {
  const templates = new Map<string, string>();
  for (const path of paths) {
    const model = loadModel(path, {});
    if (model.chatTemplate === undefined) throw new InvalidArgumentError(`${path} carries no chat template (tokenizer.chat_template)`);
    templates.set(modelIdentity(model).modelId, model.chatTemplate);
  }
  return templates;
}

export async function apiCommand(flags: ApiFlags): Promise<void> {
  const net = networkOf(flags);
  const wallet = walletOf(flags, net.dir);
  const keys = flags.keys ? readKeyFile(flags.keys) : undefined;
  const coordinator = need(net.coordinator, 'coordinator');
  const mu = need(net.mu, 'mu');
  const cu = need(net.cu, 'cu');
  const store = openGatewayStore(need(net.gateway, 'gateway'));
  const api = await startApi({
    mu,
    cu,
    coordinator,
    token: net.token,
    wallet,
    keys,
    store,
    chatTemplates: chatTemplates(flags.modelFile ?? []),
    host: flags.host,
    port: flags.port,
    limits: flags.maxInFlight === undefined ? {} : { inFlight: flags.maxInFlight },
    commandArgs: net.dir !== undefined && !flags.mu ? `--devnet ${net.dir}` : `--mu ${mu} --cu ${cu} --coordinator ${coordinator}`,
  });
  const info = { api: `${api.url}/v1`, mode: keys ? 'keys' : 'local', keys: keys?.size ?? 0, coordinator };
  process.stdout.write(flags.json ? `${JSON.stringify(info)}\n` : `OpenAI-compatible API at ${info.api} (${keys ? `${keys.size} keys` : 'local mode: the server\'s wallet, any key'}), coordinator ${coordinator}\n`);
  closeOnSignal(async () => {
    await api.close();
    await store.close();
  });
}
