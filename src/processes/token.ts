// The Verity token: an AO token-standard process (docs/network.md, "Token").
//
// This file is the module itself: its compiled JavaScript is what QuickJS evaluates, one fresh
// context per message, with no module loader. So it must not import anything at run time (type
// imports vanish at compile time), and it must be deterministic: no clock, no randomness, no
// floating point, and nothing whose order depends on how an engine iterates.
import type { ProcessEnv, ProcessMessage, Tag } from '../ao/runtime.js';

export interface TokenState {
  Name: string;
  Ticker: string;
  Denomination: string;
  Logo: string | null;
  Owner: string;
  TotalSupply: string;
  /** Non-zero balances only: an account that reaches zero is removed. */
  Balances: Record<string, string>;
}

interface OutMessage {
  Target: string;
  Tags: Tag[];
  Data?: string;
}

export interface TokenResult {
  state: TokenState | null;
  Messages?: OutMessage[];
  Output?: string;
}

const AMOUNT = /^(0|[1-9][0-9]{0,37})$/;
// Every amount must stay writable in the 38-digit format, so the supply may not pass this.
const MAX_SUPPLY = 10n ** 38n - 1n;
const DENOMINATION = /^(0|[1-9][0-9]?)$/;

class Refusal {
  constructor(
    readonly code: number,
    readonly message: string,
  ) {}
}

function tag(msg: ProcessMessage, name: string): string | undefined {
  for (const t of msg.Tags) if (t.name === name) return t.value;
  return undefined;
}

// Balances is a plain object that came out of JSON.parse, so it inherits from Object.prototype:
// reading `balances['constructor']` would find a function and assigning `balances['__proto__']`
// would change its prototype instead of adding an account. Addresses are arbitrary strings, so
// only own properties count and writes define them.
const own = (o: object, key: string): boolean => Object.prototype.hasOwnProperty.call(o, key);

function balanceOf(state: TokenState, account: string): bigint {
  return own(state.Balances, account) ? BigInt(state.Balances[account]) : 0n;
}

function setBalance(state: TokenState, account: string, amount: bigint): void {
  if (amount === 0n) {
    delete state.Balances[account];
    return;
  }
  Object.defineProperty(state.Balances, account, { value: amount.toString(), enumerable: true, writable: true, configurable: true });
}

function quantity(msg: ProcessMessage): bigint {
  const q = tag(msg, 'Quantity');
  if (q === undefined) throw new Refusal(400, 'Quantity is missing');
  if (!AMOUNT.test(q)) throw new Refusal(400, `Quantity must be a whole number of at most 38 digits without sign or leading zeros, not ${JSON.stringify(q)}`);
  const n = BigInt(q);
  if (n === 0n) throw new Refusal(400, 'Quantity must be more than 0');
  return n;
}

// Object keys that look like array indices are enumerated first whatever the insertion order, so
// JSON.stringify of an object cannot give sorted keys: the text is written by hand.
function sortedJson(record: Record<string, string>): string {
  const keys = Object.keys(record).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(record[k])}`).join(',')}}`;
}

function boot(env: ProcessEnv): TokenState {
  const spawn = (name: string): string | undefined => {
    for (const t of env.Process.Tags) if (t.name === name) return t.value;
    return undefined;
  };
  const name = spawn('Name');
  const ticker = spawn('Ticker');
  const denomination = spawn('Denomination') ?? '0';
  // A token spawned without these cannot answer Info; failing every message makes that visible.
  if (!name) throw new Error('the token was spawned without a Name tag');
  if (!ticker) throw new Error('the token was spawned without a Ticker tag');
  if (!DENOMINATION.test(denomination) || Number(denomination) > 38) throw new Error(`Denomination must be a whole number from 0 to 38, not ${JSON.stringify(denomination)}`);
  return { Name: name, Ticker: ticker, Denomination: denomination, Logo: spawn('Logo') ?? null, Owner: env.Process.Owner, TotalSupply: '0', Balances: {} };
}

export function handle(state: TokenState | null | undefined, msg: ProcessMessage, env: ProcessEnv): TokenResult {
  // The CU hands slot 0 a null state (undefined does not survive its JSON hand-over).
  if (state === null || state === undefined) {
    const fresh = boot(env);
    if (msg.Id === env.Process.Id) return { state: fresh };
    state = fresh;
  }
  // An item assigned here from another process's log (anyone may assign any item) is not ours to act on.
  if (msg.Target !== env.Process.Id) return { state, Output: 'ignored an item addressed to another process' };
  const action = tag(msg, 'Action');
  // Answers and notices are never answered: two tokens (or a token and any process that refuses
  // what it does not know) would otherwise refuse each other's refusals forever.
  if (action === undefined || /-(Error|Response|Notice)$/.test(action)) return { state, Output: `ignored ${action ?? 'a message without Action'}` };

  const xReference = tag(msg, 'X-Reference');
  const reply = (target: string, tags: Tag[], data?: string): OutMessage => {
    const all = [...tags, { name: 'Reference', value: msg.Id }];
    if (xReference !== undefined) all.push({ name: 'X-Reference', value: xReference });
    return data === undefined ? { Target: target, Tags: all } : { Target: target, Tags: all, Data: data };
  };

  try {
    return act(state, msg, action, reply);
  } catch (e) {
    if (!(e instanceof Refusal)) throw e;
    const refusal = reply(msg.From, [
      { name: 'Action', value: `${action}-Error` },
      { name: 'Code', value: String(e.code) },
      { name: 'Message', value: e.message },
    ]);
    return { state, Messages: [refusal] };
  }
}

type Reply = (target: string, tags: Tag[], data?: string) => OutMessage;

// Validates everything before it changes anything: a Refusal thrown here must leave the state as
// it was, since only a throw out of handle() makes the runtime roll back.
function act(state: TokenState, msg: ProcessMessage, action: string, reply: Reply): TokenResult {
  switch (action) {
    case 'Info': {
      const tags: Tag[] = [
        { name: 'Action', value: 'Info-Response' },
        { name: 'Name', value: state.Name },
        { name: 'Ticker', value: state.Ticker },
        { name: 'Denomination', value: state.Denomination },
      ];
      // An ANS-104 tag value may not be empty, so a token without a Logo sends none.
      if (state.Logo) tags.push({ name: 'Logo', value: state.Logo });
      tags.push({ name: 'Total-Supply', value: state.TotalSupply }, { name: 'Owner', value: state.Owner });
      return { state, Messages: [reply(msg.From, tags)] };
    }
    case 'Balance': {
      const account = tag(msg, 'Target') || tag(msg, 'Recipient') || msg.From;
      const balance = balanceOf(state, account).toString();
      const tags: Tag[] = [
        { name: 'Action', value: 'Balance-Response' },
        { name: 'Balance', value: balance },
        { name: 'Ticker', value: state.Ticker },
        { name: 'Account', value: account },
      ];
      return { state, Messages: [reply(msg.From, tags, balance)] };
    }
    case 'Balances':
      return { state, Messages: [reply(msg.From, [{ name: 'Action', value: 'Balances-Response' }], sortedJson(state.Balances))] };
    case 'Total-Supply':
      return { state, Messages: [reply(msg.From, [{ name: 'Action', value: 'Total-Supply-Response' }], state.TotalSupply)] };
    case 'Transfer': {
      const recipient = tag(msg, 'Recipient');
      if (!recipient) throw new Refusal(400, 'Recipient is missing');
      const amount = quantity(msg);
      const have = balanceOf(state, msg.From);
      if (have < amount) throw new Refusal(402, `insufficient balance: ${have} < ${amount}`);
      // Debiting and crediting the same account could move its key to the end of Balances.
      if (recipient !== msg.From) {
        setBalance(state, msg.From, have - amount);
        setBalance(state, recipient, balanceOf(state, recipient) + amount);
      }
      const forwarded = msg.Tags.filter((t) => t.name.startsWith('X-'));
      const q = amount.toString();
      // X-Reference travels with the other X- tags, so these notices do not go through reply().
      const reference = { name: 'Reference', value: msg.Id };
      const debit: OutMessage = {
        Target: msg.From,
        Tags: [{ name: 'Action', value: 'Debit-Notice' }, { name: 'Recipient', value: recipient }, { name: 'Quantity', value: q }, reference, ...forwarded],
      };
      const credit: OutMessage = {
        Target: recipient,
        Tags: [{ name: 'Action', value: 'Credit-Notice' }, { name: 'Sender', value: msg.From }, { name: 'Quantity', value: q }, reference, ...forwarded],
      };
      return { state, Messages: [debit, credit] };
    }
    case 'Mint': {
      if (msg.From !== state.Owner) throw new Refusal(403, 'only the owner may mint');
      const amount = quantity(msg);
      const recipient = tag(msg, 'Recipient') || state.Owner;
      const supply = BigInt(state.TotalSupply) + amount;
      if (supply > MAX_SUPPLY) throw new Refusal(413, 'the total supply would exceed 38 digits');
      state.TotalSupply = supply.toString();
      setBalance(state, recipient, balanceOf(state, recipient) + amount);
      const tags: Tag[] = [
        { name: 'Action', value: 'Mint-Response' },
        { name: 'Recipient', value: recipient },
        { name: 'Quantity', value: amount.toString() },
      ];
      return { state, Messages: [reply(msg.From, tags)] };
    }
    default:
      throw new Refusal(400, `unknown Action ${JSON.stringify(action)}`);
  }
}
