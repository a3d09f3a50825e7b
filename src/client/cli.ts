// The `verity` command line: one module per command group under commands/, each loaded only when
// its command runs (the store's and the network's dependencies cost time to load).
import { Command, InvalidArgumentError, Option } from 'commander';
import { INTERNAL_EXIT_CODE, VerityError } from '../errors.js';
import { withGenerationOptions } from './commands/shared.js';
import { tuneRuntime } from './runtime.js';

type Commands = typeof import('./commands/run.js') &
  typeof import('./commands/chat.js') &
  typeof import('./commands/inspect.js') &
  typeof import('./commands/tokenize.js') &
  typeof import('./commands/quantize.js') &
  typeof import('./commands/proof.js') &
  typeof import('./commands/store.js') &
  typeof import('./commands/ao.js') &
  typeof import('./commands/network.js') &
  typeof import('./commands/process.js') &
  typeof import('./commands/sim.js') &
  typeof import('./commands/api.js') &
  typeof import('./commands/verify.js') &
  typeof import('./commands/operate.js');

const modules = {
  run: () => import('./commands/run.js'),
  chat: () => import('./commands/chat.js'),
  inspect: () => import('./commands/inspect.js'),
  tokenize: () => import('./commands/tokenize.js'),
  quantize: () => import('./commands/quantize.js'),
  proof: () => import('./commands/proof.js'),
  store: () => import('./commands/store.js'),
  ao: () => import('./commands/ao.js'),
  network: () => import('./commands/network.js'),
  process: () => import('./commands/process.js'),
  sim: () => import('./commands/sim.js'),
  api: () => import('./commands/api.js'),
  verify: () => import('./commands/verify.js'),
  operate: () => import('./commands/operate.js'),
};

/** An action that loads its module first. */
function lazy<K extends keyof Commands>(module: keyof typeof modules, name: K) {
  return async (...args: unknown[]): Promise<void> => {
    const loaded = (await modules[module]()) as unknown as Record<K, (...a: unknown[]) => unknown>;
    await loaded[name](...args);
  };
}

/** Errors that are the user's input, not a bug: one line, exit code 1. */

function positive(value: string, min: number, max: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min || n > max) throw new InvalidArgumentError(`use a whole number from ${min} to ${max}`);
  return n;
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/** verity process spawn | eval | send | dryrun (commands/process.ts). */
function processCommands(program: Command, networkOptions: (c: Command) => Command): void {
  const proc = program.command('process').description('spawn Lua (aos) processes on the network and talk to them as aos\'s REPL does');
  const tagOption = (c: Command): Command => c.option('--tag <name=value>', 'a tag (repeat it for more)', collect);
  const bundling =
    '\nLua files are bundled as aos\'s .load does: each require(\'name\') whose name.lua (dots become\n' +
    'slashes) lies next to the file becomes a package.preload entry ahead of it; require(\'verity\') is\n' +
    'the Verity Lua client. A require of a module that is not there is left as it is (the process may\n' +
    'have it preloaded already).\n';
  tagOption(networkOptions(proc.command('spawn')))
    .description('publish a Lua file (and the local modules it requires) as a module, spawn a process of it and print its id')
    .requiredOption('--lua <file>', 'the Lua source')
    .option('--name <name>', 'the module\'s and process\'s Name (default the file name)')
    .option('--memory-limit <bytes>', `the process's memory limit in bytes (default ${256 * 2 ** 20})`)
    .option('--compute-limit <ticks>', 'compute ticks a message may use (default 1000)')
    .option('--gateway <url>', 'the gateway to publish the module through (default the devnet\'s; or VERITY_GATEWAY)')
    .option('--su <url>', 'the Scheduler Unit to spawn on (default the devnet\'s; or VERITY_SU)')
    .option('--scheduler <address>', 'the SU\'s address instead of asking --su for it (or VERITY_SCHEDULER)')
    .addHelpText('after', `\nExample:\n  $ verity process spawn --devnet .verity --lua counter.lua --tag App=demo\n${bundling}`)
    .action(lazy('process', 'processSpawnCommand'));
  networkOptions(proc.command('eval'))
    .description('run a Lua file (bundled) in a process you own (Action=Eval); prints its Output, exits 1 on Error')
    .argument('<pid>', 'the process id')
    .argument('<file>', 'the Lua file')
    .addHelpText('after', `\nExample:\n  $ verity process eval --devnet .verity <pid> patch.lua\n${bundling}`)
    .action(lazy('process', 'processEvalCommand'));
  const message = (c: Command): Command =>
    tagOption(networkOptions(c))
      .argument('<pid>', 'the process id')
      .requiredOption('--action <action>', 'the Action tag')
      .option('--data <text>', 'the Data')
      .option('--data-file <file>', 'the Data, from a file');
  message(proc.command('send'))
    .description('send a message and print its result: Output, a line per outgoing message, Error (exit 1)')
    .option('--no-wait', 'print the message id only')
    .addHelpText('after', '\nExample:\n  $ verity process send --devnet .verity <pid> --action Ping --tag Reply-To=<pid2> --data hello\n')
    .action(lazy('process', 'processSendCommand'));
  message(proc.command('dryrun'))
    .description('evaluate a message on the process\'s latest state without keeping anything; prints what send would')
    .addHelpText('after', '\nExample:\n  $ verity process dryrun --devnet .verity <pid> --action Balance\n')
    .action(lazy('process', 'processDryrunCommand'));
}

/** verity network init | params, model register, token balance | transfer | mint, deposit (commands/operate.ts). */
function operateCommands(program: Command, networkOptions: (c: Command) => Command, model: Command): void {
  const network = program.command('network').description('set up a network on units that run elsewhere, and show or change its parameters (docs/across-machines.md)');
  network
    .command('init')
    .description('publish the token and coordinator modules, spawn both on the given units, mint the owner\'s supply, and write a network file for the other commands')
    .option('--mu <url>', 'Messenger Unit (or VERITY_MU)')
    .option('--cu <url>', 'Compute Unit (or VERITY_CU)')
    .option('--gateway <url>', 'the gateway the modules are published through (or VERITY_GATEWAY)')
    .option('--su <url>', 'the Scheduler Unit to spawn on; its address is asked for (or VERITY_SU)')
    .option('--scheduler <address>', 'the SU\'s address instead of asking --su (or VERITY_SCHEDULER)')
    .option('--authority <address>', 'the MU\'s address the processes trust (default: what GET <mu>/info says)')
    .option('--wallet <file>', 'the owner\'s wallet (default ./.verity/wallet.json; or VERITY_WALLET)')
    .option('--out <file>', 'the network file to write (default ./network.json)')
    .option('--param <Name=value>', 'a coordinator parameter (docs/network.md "Verification"); repeat it for more', collect)
    .option('--supply <amount>', 'tokens to mint to the owner', '100000000')
    .option('--force', 'replace an existing network file')
    .option('--json', 'print one JSON object')
    .addHelpText('after', '\nExample:\n  $ verity network init --mu http://10.0.0.4:4003 --cu http://10.0.0.3:4002 --gateway http://10.0.0.1:4000 --su http://10.0.0.2:4001 --wallet owner.json --out network.json --param Challenge-Window-Ms=3000\n')
    .action(lazy('operate', 'networkInitCommand'));
  networkOptions(network.command('params'))
    .description('show the coordinator\'s parameters (and its owner, token, models, nodes); with --set, change them (the owner only)')
    .option('--set <Name=value>', 'a parameter to set (repeat it for more)', collect)
    .addHelpText('after', '\nExamples:\n  $ verity network params --network network.json\n  $ verity network params --network network.json --wallet owner.json --set Audit-Ppm=200000 --set Max-Tokens=256\n')
    .action(lazy('operate', 'networkParamsCommand'));
  networkOptions(model.command('register'))
    .description('register a published model at the coordinator (the owner only), so that nodes serve it')
    .argument('<model-id>', 'the model id verity model publish printed')
    .option('--manifest <id>', 'its manifest item (default: the one the gateway lists for it)')
    .option('--gateway <url>', 'the gateway to find the manifest at (default: the network\'s)')
    .addHelpText('after', '\nExample:\n  $ verity model register <model-id> --network network.json --wallet owner.json\n')
    .action(lazy('operate', 'modelRegisterCommand'));
  const token = program.command('token').description('the network\'s token: balances, transfers and minting');
  networkOptions(token.command('balance'))
    .description('an account\'s token balance, and what it holds at the coordinator (deposit, earnings, stake)')
    .argument('[address]', 'the account (default: the wallet\'s)')
    .addHelpText('after', '\nExample:\n  $ verity token balance --network network.json --wallet user.json --json\n')
    .action(lazy('operate', 'tokenBalanceCommand'));
  networkOptions(token.command('transfer'))
    .description('send tokens from the wallet to an address')
    .argument('<to>', 'the recipient\'s address (verity wallet show prints it)')
    .argument('<amount>', 'whole tokens')
    .addHelpText('after', '\nExample:\n  $ verity token transfer <address> 100000 --network network.json --wallet owner.json\n')
    .action(lazy('operate', 'tokenTransferCommand'));
  networkOptions(token.command('mint'))
    .description('create tokens for an address (the token\'s owner only)')
    .argument('<to>', 'the recipient\'s address')
    .argument('<amount>', 'whole tokens')
    .addHelpText('after', '\nExample:\n  $ verity token mint <address> 1000000 --network network.json --wallet owner.json\n')
    .action(lazy('operate', 'tokenMintCommand'));
  networkOptions(program.command('deposit'))
    .description('move tokens from the wallet to its deposit at the coordinator, which pays for inference')
    .argument('<amount>', 'whole tokens')
    .addHelpText('after', '\nExample:\n  $ verity deposit 100000 --network network.json --wallet user.json\n')
    .action(lazy('operate', 'depositCommand'));
}

export function buildProgram(): Command {
  const program = new Command('verity')
    .description('Verity: trustless, bit-exact AI inference')
    .showSuggestionAfterError(false)
    .configureOutput({ outputError: (text, out) => out(text.split('\n')[0] + '\n') });
  withGenerationOptions(program.command('run'))
    .description('generate text like llama2.c run.c (stdout identical to run.c for the same flags)')
    .action(lazy('run', 'runCommand'));
  withGenerationOptions(program.command('chat'))
    .description("chat with a model through its chat template (GGUF tokenizer.chat_template, else ChatML); -n is the tokens per reply, -i is unused")
    .option('--message <text>', 'one user turn: print the reply and exit (default: a turn per line of standard input)')
    .option('--system <text>', 'a system message first')
    .action(lazy('chat', 'chatCommand'));
  withGenerationOptions(program.command('trace'))
    .description('run a job and write its commitment, every trace leaf and the trace root as JSON')
    .requiredOption('--out <file>', 'where to write the trace')
    .action(lazy('proof', 'traceCommand'));
  withGenerationOptions(program.command('dispute-sim'))
    .description('play an honest party against a faulty one: every round, the verdict, bytes and the referee time')
    .requiredOption('--fault <kind@where>', `token@<step>, activation@<step>, weights@<layer>, prompt, inconsistent@<round> or silent@<round>`)
    .option('--k <n>', 'arity of the dissection', (v) => positive(v, 2, 64), 8)
    .addOption(new Option('--faulty <party>', 'which party cheats').choices(['asserter', 'challenger']).default('asserter'))
    .action(lazy('proof', 'disputeSimCommand'));
  program
    .command('quantize')
    .description('write a model as GGUF, its matrices as Q8_0 (default), Q4_0, Q4_K, Q5_K, Q6_K, a llama.cpp mix (Q4_K_M, Q5_K_M), F16 or F32')
    .argument('<model>', 'llama2.c checkpoint (.bin) or GGUF file')
    .argument('<out>', 'GGUF file to write')
    .option('-z, --tokenizer <path>', 'tokenizer.bin (default ./tokenizer.bin for .bin models)')
    .addOption(new Option('--type <type>', 'weight type for matrices').choices(['q8_0', 'q4_0', 'q4_k', 'q5_k', 'q6_k', 'q4_k_m', 'q5_k_m', 'f16', 'f32']).default('q8_0'))
    .option('--json', 'print one JSON object: the file and its tensors\' types')
    .action(lazy('quantize', 'quantizeCommand'));
  const storeOptions = (c: Command): Command =>
    c
      .option('--store <dir>', 'the embedded store (default ./.verity)')
      .option('--gateway <url>', 'a gateway instead of the embedded store: a Verity gateway (Ed25519 wallet) or an Arweave one (Arweave wallet)')
      .option('--wallet <file>', 'wallet file (default <store>/wallet.json)')
      .option('--json', 'print one JSON object');
  const wallet = program.command('wallet').description('create and show wallets (Arweave RSA or Ed25519)');
  storeOptions(wallet.command('new'))
    .description('create a wallet file, readable by its owner only')
    .addOption(new Option('--type <type>', 'key type').choices(['ed25519', 'arweave']).default('ed25519'))
    .option('--force', 'replace an existing wallet file')
    .action(lazy('store', 'walletNewCommand'));
  storeOptions(wallet.command('show')).description('show the wallet\'s type and address').action(lazy('store', 'walletShowCommand'));
  const model = program.command('model').description('publish models to permanent storage and fetch them by id');
  storeOptions(model.command('publish'))
    .description('split a model into chunk items plus a manifest, and store them (resumes an interrupted publish)')
    .argument('<model>', 'llama2.c checkpoint (.bin) or GGUF file')
    .option('-z, --tokenizer <path>', 'tokenizer.bin (default ./tokenizer.bin for .bin models)')
    .option('--name <name>', 'a name for the manifest (default the file name)')
    .action(lazy('store', 'modelPublishCommand'));
  storeOptions(model.command('fetch'))
    .description('download a model by id, verify every chunk against the id, and cache it as GGUF')
    .argument('<model-id>', 'the model id (64 hex characters)')
    .option('--cache <dir>', 'where fetched models go (default <store>/models)')
    .action(lazy('store', 'modelFetchCommand'));
  storeOptions(model.command('list')).description('list the models in the store').action(lazy('store', 'modelListCommand'));
  storeOptions(program.command('gateway'))
    .description('serve the embedded store over HTTP (GraphQL, raw items, data, uploads)')
    .option('--port <n>', 'port', (v) => positive(v, 0, 65535), 1984)
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .action(lazy('store', 'gatewayCommand'));
  const unitOptions = (c: Command, port: number): Command =>
    c
      .option('--store <dir>', 'the embedded store folder it shares with the other units (default ./.verity/store)')
      .option('--gateway <url>', 'reach the store through a Verity gateway (verity gateway) instead')
      .option('--dir <dir>', 'the unit\'s own folder: its database and wallet')
      .option('--port <n>', 'port', (v) => positive(v, 0, 65535), port)
      .option('--host <host>', 'address to listen on', '127.0.0.1')
      .option('--json', 'print one JSON object once listening');
  program
    .command('units')
    .description('run a gateway, SU, CU and MU in this process on --port … --port+3 (AO\'s legacy HTTP protocol), and the HyperBEAM-style interface for aoconnect\'s mainnet mode on --port+4')
    .option('--dir <dir>', 'their folder (default ./.verity)')
    .option('--port <n>', 'first of five ports (0: any free ones)', (v) => positive(v, 0, 65531), 4000)
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--json', 'print one JSON object once listening')
    .action(lazy('ao', 'unitsCommand'));
  unitOptions(program.command('su'), 4001)
    .description('run a Scheduler Unit: orders messages per process, signs assignments, publishes its location')
    .option('--url <url>', 'the URL clients reach it at (default http://<host>:<port>)')
    .action(lazy('ao', 'suCommand'));
  unitOptions(program.command('cu'), 4002)
    .description('run a Compute Unit: evaluates processes from their SU logs and signs the results')
    .option('--checkpoint-every <n>', 'write a checkpoint of a process every n of its messages at least (more for a large state)', (v) => positive(v, 1, 1_000_000), 64)
    .action(lazy('ao', 'cuCommand'));
  unitOptions(program.command('mu'), 4003)
    .description('run a Messenger Unit: forwards signed items to SUs and delivers every outbox message')
    .requiredOption('--cu <url>', 'the Compute Unit it reads results from')
    .action(lazy('ao', 'muCommand'));
  const networkOptions = (c: Command): Command =>
    c
      .option('--devnet <dir>', 'a running devnet\'s folder (default ./.verity; or VERITY_DEVNET)')
      .option('--network <file>', 'a network file that verity network init wrote (or VERITY_NETWORK), read like a devnet\'s')
      .option('--mu <url>', 'Messenger Unit (or VERITY_MU)')
      .option('--cu <url>', 'Compute Unit (or VERITY_CU)')
      .option('--coordinator <id>', 'coordinator process (or VERITY_COORDINATOR)')
      .option('--token <id>', 'token process (or VERITY_TOKEN)')
      .option('--wallet <file>', 'wallet (default <devnet>/wallet.json; or VERITY_WALLET)')
      .option('--json', 'print one JSON object');
  program
    .command('devnet')
    .description('run a whole network here: units, token and coordinator, the bundled model, funded and staked nodes')
    .option('--dir <dir>', 'its state (default ./.verity); a second start resumes it')
    .option('--nodes <n>', 'worker nodes', (v) => positive(v, 1, 16), 3)
    .option('--port <n>', 'first of five ports for the gateway, SU, CU, MU and the HyperBEAM interface (0: any free ones)', (v) => positive(v, 0, 65531), 0)
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--lease-ms <ms>', 'lease length for a new coordinator', (v) => positive(v, 100, 86_400_000))
    .option('--demo <prompt>', 'run one verified inference of the prompt, then stop')
    .option('--api-port <n>', 'also serve the OpenAI-compatible API (docs/api.md) on this port (0: any free one)', (v) => positive(v, 0, 65535))
    .option('--keys <file>', 'with --api-port: the API\'s key file (default: local mode, the devnet user\'s wallet for any key)')
    .option('--json', 'print one JSON line once ready')
    .action(lazy('network', 'devnetCommand'));
  networkOptions(program.command('api'))
    .description('serve the OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions) in front of the network; every answer carries its receipt (docs/api.md)')
    .option('--port <n>', 'port to listen on (0: any free one)', (v) => positive(v, 0, 65535), 8080)
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--keys <file>', 'key file: a JSON object from API key to a wallet file path or an inline wallet (default: local mode, this wallet for any key)')
    .option('--gateway <url>', 'the gateway the models\' tokenizers are read from (default: the devnet\'s)')
    .option('--model-file <path>', 'a local GGUF copy of a served model whose chat template the API applies (repeat it for more; default: the documented ChatML template)', collect)
    .option('--max-in-flight <n>', 'requests in flight at once (429 past it; default 32)', (v) => positive(v, 1, 4096))
    .action(lazy('api', 'apiCommand'));
  networkOptions(program.command('infer'))
    .description('ask the network for a completion; prints the text and its receipt')
    .argument('<prompt>', 'the prompt')
    .option('--model <id>', 'model id (default: the coordinator\'s first)')
    .option('--max-tokens <n>', 'tokens to generate (default 128)')
    .option('--temperature <t>', 'sampling temperature, 0 = greedy (default 0)')
    .option('--top-p <p>', 'nucleus threshold in (0, 1] (default 0.9)')
    .option('--seed <n>', 'sampling seed (default 0)')
    .option('--redundancy <n>', 'independent nodes to run it (1-3)')
    .option('--nodes <addresses>', 'comma-separated node addresses to choose from')
    .option('--reference <text>', 'your reference for the request (X-Reference)')
    .action(lazy('network', 'inferCommand'));
  networkOptions(program.command('task'))
    .description('show a task: its status, result and receipt')
    .argument('<id>', 'task id (the Infer message id)')
    .action(lazy('network', 'taskCommand'));
  networkOptions(program.command('verify'))
    .description('check a task without trusting anyone: re-run its job here and compare every step with the stored trace; match (exit 0), mismatch (exit 1, with the first differing step) or cannot check (exit 2)')
    .argument('<task>', 'a task id (the Infer message id) or a receipt file (what verity infer --json prints, or an answer of the OpenAI-compatible API)')
    .option('--gateway <url>', 'the gateway the trace and the model are read from (default: the devnet\'s)')
    .option('--cache <dir>', 'where the fetched model goes (default <devnet>/verify)')
    .option('--challenge', 'on a mismatch, challenge the result through the coordinator (the wallet must be an active staked node) and play the dispute')
    .option('--wait-ms <ms>', 'with --challenge: how long to wait for the dispute\'s outcome (default 120000)')
    .addHelpText('after', '\nExit codes: 0 match, 1 mismatch, 2 cannot check (missing data, network out of reach, bad input).\n\nExamples:\n  $ verity verify --devnet .verity <task-id>\n  $ verity infer --devnet .verity --json "Once upon a time" > answer.json && verity verify --devnet .verity answer.json\n  $ verity verify --devnet .verity <task-id> --challenge --wallet .verity/wallets/node-2.json\n')
    // A malformed command line cannot be checked either: exit 2, never 1 (which means mismatch).
    .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2))
    .action(lazy('verify', 'verifyCommand'));
  processCommands(program, networkOptions);
  operateCommands(program, networkOptions, model);
  const node = program.command('node').description('run a worker node');
  networkOptions(node.command('start'))
    .description('register, stake, fetch the models and take tasks until stopped')
    .requiredOption('--stake <amount>', 'tokens to keep staked')
    .option('--models <ids>', 'comma-separated model ids (default: every model the coordinator lists)')
    .option('--capacity <n>', 'leases at once (it runs them one after another)', (v) => positive(v, 1, 64), 1)
    .option('--memory <size>', 'the memory this node gives a model, e.g. 4GiB (declared to the coordinator, which leases it no bigger model; default: no limit declared)')
    .option('--dir <dir>', 'the node\'s database and model cache (default ./.verity/node)')
    .option('--gateway <url>', 'the gateway to fetch models from and store traces in (default: the devnet\'s)')
    .option('--store <dir>', 'an embedded store folder instead of a gateway')
    .option('--strategy <name>', 'for testing the network: honest (default), wrong-token, cheap-model, lazy, skip, offline-mid-task, lying-validator or colluding-pair')
    .option('--collude-dir <dir>', 'colluding-pair: the folder two colluding nodes share')
    .option('--cheap-layer <n>', 'cheap-model: the layer whose weights it changes (default the middle one)')
    .option('--watch <ppm>', 're-run this share (parts per million) of other nodes\' revealed results and challenge any that differ (default 0)')
    .action(lazy('network', 'nodeStartCommand'));
  program
    .command('sim')
    .description('simulate the network: honest and cheating nodes on a fresh devnet, many requests; per strategy what it served, cheated, was caught and slashed')
    .option('--honest <n>', 'honest nodes', (v) => positive(v, 0, 64), 6)
    .option('--per-strategy <n>', 'nodes of each cheating strategy (colluding-pair: pairs)', (v) => positive(v, 0, 8), 1)
    .option('--strategies <names>', 'comma-separated cheating strategies (default: wrong-token, cheap-model, lazy, skip, offline-mid-task, lying-validator, colluding-pair)')
    .option('--requests <n>', 'requests to send', (v) => positive(v, 1, 100_000), 300)
    .option('--max-tokens <n>', 'tokens per request; also the coordinator\'s Max-Tokens', (v) => positive(v, 1, 256), 32)
    .option('--concurrency <n>', 'requests in flight at once', (v) => positive(v, 1, 256), 8)
    .option('--audit-ppm <ppm>', 'audit probability p in parts per million (default 100000)', (v) => positive(v, 0, 1_000_000))
    .option('--slash <amount>', 'S, the stake locked per lease and slashed from a liar; Min-Stake and Challenge-Bond follow it (default 6000)')
    .option('--tick-ms <ms>', 'send a Heartbeat every this many ms while requests run, so that time passes at the coordinator without waiting for the nodes\' (default 0: none)', (v) => positive(v, 0, 60_000))
    .option('--dir <dir>', 'the devnet\'s folder, kept afterwards (default: a temporary one, removed unless something looked wrong)')
    .option('--json', 'print the report as one JSON object')
    .action(lazy('sim', 'simCommand'));
  program
    .command('inspect')
    .description('show architecture, shapes, parameter count, bytes and the model id')
    .argument('<model>', 'llama2.c checkpoint (.bin) or GGUF file')
    .option('-z, --tokenizer <path>', 'tokenizer.bin (default ./tokenizer.bin for .bin models)')
    .option('--json', 'print JSON')
    .action(lazy('inspect', 'inspectCommand'));
  program
    .command('tokenize')
    .description("print a text's token ids and pieces as llama.cpp's llama-tokenize does")
    .argument('<model>', 'llama2.c checkpoint (.bin) or GGUF file')
    .argument('<text>', 'the text to tokenize')
    .option('-z, --tokenizer <path>', 'tokenizer.bin (default ./tokenizer.bin for .bin models)')
    .option('--no-bos', 'no BOS (by default BOS comes first when the model adds one)')
    .option('--parse-special', 'control tokens written in the text (<|im_start|> …) become those tokens')
    .option('--json', 'print {"tokens":[ids...]}')
    .action(lazy('tokenize', 'tokenizeCommand'));
  addExamples(program);
  return program;
}

/** An example for every command that does not give its own (`verity <command> --help` ends with it). */
const EXAMPLES: Record<string, string[]> = {
  run: ['verity run ../shared/models/stories260K.bin -z ../shared/models/tok512.bin -t 0 -n 64 -i "Once upon a time"'],
  chat: ['verity chat model.gguf --message "Tell me a story" -n 128'],
  trace: ['verity trace ../shared/models/stories260K.bin -z ../shared/models/tok512.bin -t 0 -n 32 -i "Once" --out trace.json'],
  'dispute-sim': ['verity dispute-sim ../shared/models/stories260K.bin -z ../shared/models/tok512.bin -n 32 -i "Once upon a time" --fault activation@40'],
  quantize: ['verity quantize model.gguf model-q8.gguf --type q8_0'],
  'wallet new': ['verity wallet new --type ed25519 --wallet wallet.json'],
  'wallet show': ['verity wallet show --wallet wallet.json --json'],
  'model publish': ['verity model publish ../shared/models/stories260K.bin -z ../shared/models/tok512.bin --gateway http://127.0.0.1:4000'],
  'model fetch': ['verity model fetch <model-id> --gateway http://127.0.0.1:4000 --cache ./models'],
  'model list': ['verity model list --gateway http://127.0.0.1:4000 --json'],
  gateway: ['verity gateway --store ./store --port 4000'],
  units: ['verity units --dir ./units --port 4000'],
  su: ['verity su --gateway http://127.0.0.1:4000 --port 4001'],
  cu: ['verity cu --gateway http://127.0.0.1:4000 --port 4002'],
  mu: ['verity mu --gateway http://127.0.0.1:4000 --cu http://127.0.0.1:4002 --port 4003'],
  devnet: ['verity devnet', 'verity devnet --demo "Once upon a time"'],
  api: ['verity api --devnet .verity --port 8080 --keys keys.json'],
  infer: ['verity infer --devnet .verity "Once upon a time" --max-tokens 64', 'verity infer --devnet .verity --json "Once upon a time"'],
  task: ['verity task --devnet .verity <task-id> --json'],
  'node start': ['verity node start --devnet .verity --wallet node.json --stake 1000'],
  sim: ['verity sim --honest 6 --per-strategy 1 --requests 100 --json'],
  inspect: ['verity inspect ../shared/models/stories260K.bin --json'],
  tokenize: ['verity tokenize ../shared/models/stories260K.bin -z ../shared/models/tok512.bin "Once upon a time" --json'],
};

function addExamples(program: Command): void {
  const walk = (command: Command, path: string[]): void => {
    for (const sub of command.commands) {
      const name = [...path, sub.name()];
      const examples = EXAMPLES[name.join(' ')];
      if (examples) sub.addHelpText('after', `\n${examples.length > 1 ? 'Examples' : 'Example'}:\n${examples.map((e) => `  $ ${e}`).join('\n')}\n`);
      walk(sub, name);
    }
  };
  walk(program, []);
}

/**
 * Addresses and message ids are 43 base64url characters, and one in 64 begins with '-', which
 * commander would take for an option (`verity token transfer -p30… 100` failed so). Such an
 * argument is marked before parsing and unmarked in the command's arguments and option values
 * before its action runs; no option of ours is 43 characters long.
 */
const ID_MARK = '\u2063';
const DASH_ID = /^-[A-Za-z0-9_-]{42}$/;
const unmark = (v: unknown): unknown => (typeof v === 'string' && v.startsWith(ID_MARK) ? v.slice(ID_MARK.length) : Array.isArray(v) ? v.map(unmark) : v);

export function parseArgv(program: Command, argv: string[]): Promise<Command> {
  program.hook('preAction', (_program, action) => {
    action.processedArgs = action.processedArgs.map(unmark);
    for (const [key, value] of Object.entries(action.opts())) if (unmark(value) !== value) action.setOptionValue(key, unmark(value));
  });
  return program.parseAsync(argv.map((a) => (DASH_ID.test(a) ? ID_MARK + a : a)));
}

export async function main(argv: string[]): Promise<void> {
  tuneRuntime();
  try {
    await parseArgv(buildProgram(), argv);
  } catch (e) {
    // What the user can act on is a VerityError (or a bad flag, commander's); anything else is a bug.
    const known = e instanceof InvalidArgumentError || e instanceof VerityError;
    const message = e instanceof Error ? e.message : String(e);
    process.stderr.write(`verity: ${known ? '' : 'internal error: '}${message.split('\n')[0]}\n`);
    process.exitCode = e instanceof VerityError ? e.exitCode : known ? 1 : INTERNAL_EXIT_CODE;
  }
}
