import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import fc from 'fast-check';
import type { Evaluation } from '../../src/ao/runtime.js';
import type { TokenState } from '../../src/processes/token.js';
import { tagProblem } from '../../src/store/items.js';
import { openProcess, processSource, tagOf, tagsOf, type OpenProcess, type SendOptions } from './harness.js';

const OWNER = 'owner-address-0000000000000000000000000000';
const ALICE = 'alice-address-0000000000000000000000000000';
const BOB = 'bob-address-00000000000000000000000000000000';
const SPAWN = { Name: 'Verity', Ticker: 'VRT', Denomination: '12', Logo: 'logo-tx-id' };

let source = '';
before(async () => {
  source = await processSource('token');
});

const open = (tags: Record<string, string> = SPAWN, id?: string): Promise<OpenProcess> => openProcess(source, { owner: OWNER, tags, ...(id ? { id } : {}) });
const stateOf = (p: OpenProcess): TokenState => p.state() as TokenState;

/** Sends and checks that the message was evaluated and answered with exactly one reply. */
async function ask(p: OpenProcess, m: SendOptions): Promise<Evaluation['Messages'][number]> {
  const r = await p.send(m);
  assert.equal(r.Error, undefined);
  assert.equal(r.Messages.length, 1, JSON.stringify(r.Messages));
  return r.Messages[0];
}

async function mint(p: OpenProcess, quantity: string, recipient?: string): Promise<void> {
  const reply = await ask(p, { from: OWNER, tags: { Action: 'Mint', Quantity: quantity, ...(recipient ? { Recipient: recipient } : {}) } });
  assert.equal(tagOf(reply, 'Action'), 'Mint-Response', JSON.stringify(reply));
}

async function balance(p: OpenProcess, account: string): Promise<string> {
  const reply = await ask(p, { from: account, tags: { Action: 'Balance' } });
  return reply.Data!;
}

test('boot takes Name, Ticker, Denomination and Logo from the spawn tags and the spawner as owner', async () => {
  const p = await open();
  assert.equal(p.boot.Error, undefined);
  assert.equal(p.boot.Messages.length, 0);
  assert.deepEqual(stateOf(p), { Name: 'Verity', Ticker: 'VRT', Denomination: '12', Logo: 'logo-tx-id', Owner: OWNER, TotalSupply: '0', Balances: {} });
  const plain = await open({ Name: 'Plain', Ticker: 'PLN' });
  assert.equal(stateOf(plain).Denomination, '0');
  assert.equal(stateOf(plain).Logo, null);
  const broken = await open({ Name: 'No ticker' });
  assert.match(broken.boot.Error ?? '', /Ticker/);
});

test('Info answers the token facts with Reference and the echoed X-Reference', async () => {
  const p = await open();
  await mint(p, '500');
  const reply = await ask(p, { from: ALICE, tags: { Action: 'Info', 'X-Reference': 'ref-1' }, id: 'I'.repeat(43) });
  assert.equal(reply.Target, ALICE);
  assert.deepEqual(tagsOf(reply), {
    Action: 'Info-Response', Name: 'Verity', Ticker: 'VRT', Denomination: '12', Logo: 'logo-tx-id', 'Total-Supply': '500', Owner: OWNER,
    Reference: 'I'.repeat(43), 'X-Reference': 'ref-1',
  });
  const plain = await open({ Name: 'Plain', Ticker: 'PLN' });
  const info = await ask(plain, { from: ALICE, tags: { Action: 'Info' } });
  assert.equal(tagOf(info, 'Logo'), undefined, 'no empty Logo tag');
  assert.equal(tagOf(info, 'X-Reference'), undefined);
  assert.ok(info.Tags.every((t) => t.value !== ''), 'no empty tag values');
});

test('Balance of the sender, of Target and of Recipient', async () => {
  const p = await open();
  await mint(p, '70', ALICE);
  await mint(p, '3', BOB);
  const self = await ask(p, { from: ALICE, tags: { Action: 'Balance' } });
  assert.deepEqual(tagsOf(self), { Action: 'Balance-Response', Balance: '70', Ticker: 'VRT', Account: ALICE, Reference: tagOf(self, 'Reference')! });
  assert.equal(self.Data, '70');
  const target = await ask(p, { from: ALICE, tags: { Action: 'Balance', Target: BOB } });
  assert.equal(target.Target, ALICE);
  assert.equal(tagOf(target, 'Account'), BOB);
  assert.equal(target.Data, '3');
  const recipient = await ask(p, { from: ALICE, tags: { Action: 'Balance', Recipient: BOB } });
  assert.equal(recipient.Data, '3');
  const both = await ask(p, { from: ALICE, tags: { Action: 'Balance', Target: OWNER, Recipient: BOB } });
  assert.equal(tagOf(both, 'Account'), OWNER, 'Target wins over Recipient');
  assert.equal(both.Data, '0');
  assert.equal(await balance(p, 'nobody'), '0');
});

test('Balances is JSON with sorted keys, index-like keys included', async () => {
  const p = await open();
  for (const [who, q] of [['zed', '1'], ['10', '2'], ['Bob', '3'], ['2', '4'], ['alice', '5']]) await mint(p, q, who);
  const reply = await ask(p, { from: ALICE, tags: { Action: 'Balances', 'X-Reference': '7' } });
  assert.equal(tagOf(reply, 'Action'), 'Balances-Response');
  assert.equal(tagOf(reply, 'X-Reference'), '7');
  // JSON.stringify would put "2" and "10" first, as numbers; sorted text order puts "10" before "2".
  assert.equal(reply.Data, '{"10":"2","2":"4","Bob":"3","alice":"5","zed":"1"}');
});

test('Total-Supply', async () => {
  const p = await open();
  const empty = await ask(p, { from: ALICE, tags: { Action: 'Total-Supply' } });
  assert.equal(tagOf(empty, 'Action'), 'Total-Supply-Response');
  assert.equal(empty.Data, '0');
  await mint(p, '12');
  await mint(p, '30', BOB);
  assert.equal((await ask(p, { from: BOB, tags: { Action: 'Total-Supply' } })).Data, '42');
});

test('Mint is the owner\'s alone and credits the owner by default', async () => {
  const p = await open();
  const before = structuredClone(stateOf(p));
  const refused = await ask(p, { from: ALICE, tags: { Action: 'Mint', Quantity: '100', Recipient: ALICE, 'X-Reference': 'm1' } });
  assert.equal(refused.Target, ALICE);
  assert.equal(tagOf(refused, 'Action'), 'Mint-Error');
  assert.equal(tagOf(refused, 'Code'), '403');
  assert.equal(tagOf(refused, 'X-Reference'), 'm1');
  assert.ok(tagOf(refused, 'Message'));
  assert.deepEqual(stateOf(p), before);
  const reply = await ask(p, { from: OWNER, tags: { Action: 'Mint', Quantity: '100' } });
  assert.deepEqual(tagsOf(reply), { Action: 'Mint-Response', Recipient: OWNER, Quantity: '100', Reference: tagOf(reply, 'Reference')! });
  assert.equal(await balance(p, OWNER), '100');
  for (const bad of ['0', '-5', '']) {
    const r = await ask(p, { from: OWNER, tags: { Action: 'Mint', Quantity: bad } });
    assert.equal(tagOf(r, 'Code'), '400', bad);
  }
  const capped = await open();
  await mint(capped, '9'.repeat(38));
  const over = await ask(capped, { from: OWNER, tags: { Action: 'Mint', Quantity: '1' } });
  assert.equal(tagOf(over, 'Action'), 'Mint-Error');
  assert.equal(tagOf(over, 'Code'), '413');
  assert.equal(stateOf(capped).TotalSupply, '9'.repeat(38));
});

test('Transfer moves the amount and sends Debit-Notice and Credit-Notice with the X- tags', async () => {
  const p = await open();
  await mint(p, '1000', ALICE);
  const r = await p.send({
    from: ALICE,
    id: 'T'.repeat(43),
    tags: [
      { name: 'Action', value: 'Transfer' }, { name: 'Recipient', value: BOB }, { name: 'Quantity', value: '250' },
      { name: 'X-Reference', value: 'order-9' }, { name: 'X-Note', value: 'a' }, { name: 'Other', value: 'not forwarded' }, { name: 'X-Note', value: 'b' },
      { name: 'x-lower', value: 'not forwarded either' },
    ],
  });
  assert.equal(r.Error, undefined);
  const reference = { name: 'Reference', value: 'T'.repeat(43) };
  const forwarded = [{ name: 'X-Reference', value: 'order-9' }, { name: 'X-Note', value: 'a' }, { name: 'X-Note', value: 'b' }];
  assert.deepEqual(r.Messages, [
    { Target: ALICE, Tags: [{ name: 'Action', value: 'Debit-Notice' }, { name: 'Recipient', value: BOB }, { name: 'Quantity', value: '250' }, reference, ...forwarded] },
    { Target: BOB, Tags: [{ name: 'Action', value: 'Credit-Notice' }, { name: 'Sender', value: ALICE }, { name: 'Quantity', value: '250' }, reference, ...forwarded] },
  ]);
  assert.deepEqual(stateOf(p).Balances, { [ALICE]: '750', [BOB]: '250' });
  assert.equal(stateOf(p).TotalSupply, '1000');
  // Spending everything removes the account rather than keeping a zero.
  await p.send({ from: BOB, tags: { Action: 'Transfer', Recipient: ALICE, Quantity: '250' } });
  assert.deepEqual(stateOf(p).Balances, { [ALICE]: '1000' });
});

test('a Transfer whose Credit-Notice the MU could never push fails whole: no account is debited', async () => {
  const p = await open();
  await mint(p, '1000', ALICE);
  // The Transfer's own tags fit in an item (under 4,096 bytes); the Credit-Notice repeats the X-
  // tags and adds its own, and the MU adds six more: past the limit, so it could never be built.
  const pad = [{ name: 'X-Pad', value: 'p'.repeat(3000) }, { name: 'X-More', value: 'm'.repeat(900) }];
  const tags = [{ name: 'Action', value: 'Transfer' }, { name: 'Recipient', value: BOB }, { name: 'Quantity', value: '1' }, ...pad];
  assert.equal(tagProblem(tags), null, 'the Transfer itself is a valid item');
  const r = await p.send({ from: ALICE, tags });
  assert.match(String(r.Error), /outbox message \d can never be delivered \(with the 6 tags the MU adds: \d+ bytes of tags, at most 4096\)/);
  assert.deepEqual(r.Messages, []);
  assert.deepEqual(stateOf(p).Balances, { [ALICE]: '1000' });
  // A smaller pad goes through.
  const ok = await p.send({ from: ALICE, tags: [...tags.slice(0, 3), { name: 'X-Pad', value: 'p'.repeat(3000) }] });
  assert.equal(ok.Error, undefined);
  assert.deepEqual(stateOf(p).Balances, { [ALICE]: '999', [BOB]: '1' });
});

test('Transfer to oneself changes nothing and still sends both notices', async () => {
  const p = await open();
  await mint(p, '5', ALICE);
  await mint(p, '6', BOB);
  const before = JSON.stringify(stateOf(p));
  const r = await p.send({ from: ALICE, tags: { Action: 'Transfer', Recipient: ALICE, Quantity: '5' } });
  assert.equal(r.Error, undefined);
  assert.deepEqual(r.Messages.map((m) => [m.Target, tagOf(m, 'Action')]), [[ALICE, 'Debit-Notice'], [ALICE, 'Credit-Notice']]);
  assert.equal(JSON.stringify(stateOf(p)), before, 'not even the key order moves');
});

test('a short balance is refused with Transfer-Error 402 and the state unchanged', async () => {
  const p = await open();
  await mint(p, '10', ALICE);
  const before = structuredClone(stateOf(p));
  for (const [from, q] of [[ALICE, '11'], [BOB, '1']]) {
    const r = await p.send({ from, tags: { Action: 'Transfer', Recipient: OWNER, Quantity: q, 'X-Reference': 'x' }, id: 'E'.repeat(43) });
    assert.equal(r.Error, undefined);
    assert.equal(r.Messages.length, 1);
    const [reply] = r.Messages;
    assert.equal(reply.Target, from);
    assert.deepEqual(
      reply.Tags.map((t) => t.name),
      ['Action', 'Code', 'Message', 'Reference', 'X-Reference'],
    );
    assert.deepEqual([tagOf(reply, 'Action'), tagOf(reply, 'Code'), tagOf(reply, 'Reference'), tagOf(reply, 'X-Reference')], ['Transfer-Error', '402', 'E'.repeat(43), 'x']);
    assert.ok(!tagOf(reply, 'Message')!.includes('\n'));
    assert.deepEqual(stateOf(p), before);
  }
});

test('malformed quantities and a missing Recipient are refused with 400 and the state unchanged', async () => {
  const p = await open();
  await mint(p, '9'.repeat(38), ALICE);
  const before = structuredClone(stateOf(p));
  const cases: Record<string, string>[] = [
    ...['-1', '1.5', '01', '', 'abc', '0', '1'.repeat(39), ' 1', '1e3', '0x10', '+1', '１'].map((Quantity) => ({ Recipient: BOB, Quantity })),
    { Recipient: BOB },
    { Quantity: '1' },
    { Recipient: '', Quantity: '1' },
  ];
  for (const tags of cases) {
    const r = await p.send({ from: ALICE, tags: { Action: 'Transfer', ...tags } });
    assert.equal(r.Error, undefined, JSON.stringify(tags));
    assert.equal(r.Messages.length, 1, JSON.stringify(tags));
    assert.equal(tagOf(r.Messages[0], 'Action'), 'Transfer-Error', JSON.stringify(tags));
    assert.equal(tagOf(r.Messages[0], 'Code'), '400', JSON.stringify(tags));
    assert.deepEqual(stateOf(p), before, JSON.stringify(tags));
  }
  // The largest 38-digit amount is well-formed.
  const all = await p.send({ from: ALICE, tags: { Action: 'Transfer', Recipient: BOB, Quantity: '9'.repeat(38) } });
  assert.equal(tagOf(all.Messages[0], 'Action'), 'Debit-Notice');
});

test('unknown actions get 400; answers, notices and messages without Action get nothing', async () => {
  const p = await open();
  const r = await p.send({ from: ALICE, tags: { Action: 'Burn', 'X-Reference': 'b' } });
  assert.deepEqual(tagsOf(r.Messages[0]), { Action: 'Burn-Error', Code: '400', Message: tagOf(r.Messages[0], 'Message')!, Reference: tagOf(r.Messages[0], 'Reference')!, 'X-Reference': 'b' });
  // Another token's Credit-Notice or refusal must not be refused back, or the two would loop.
  const unanswered: Record<string, string>[] = [{ Action: 'Credit-Notice', Quantity: '1' }, { Action: 'Transfer-Error', Code: '402' }, { Action: 'Info-Response' }, { Foo: 'bar' }];
  for (const tags of unanswered) {
    const quiet = await p.send({ from: BOB, tags });
    assert.equal(quiet.Error, undefined);
    assert.deepEqual(quiet.Messages, [], JSON.stringify(tags));
  }
});

test('account names that are Object.prototype members are ordinary accounts', async () => {
  const p = await open();
  for (const who of ['__proto__', 'constructor', 'hasOwnProperty', 'toString']) {
    assert.equal(await balance(p, who), '0', who);
    await mint(p, '7', who);
    assert.equal(await balance(p, who), '7', who);
  }
  const r = await p.send({ from: '__proto__', tags: { Action: 'Transfer', Recipient: 'constructor', Quantity: '7' } });
  assert.equal(tagOf(r.Messages[0], 'Action'), 'Debit-Notice');
  assert.equal(await balance(p, 'constructor'), '14');
  assert.equal(await balance(p, '__proto__'), '0');
  const balances = JSON.parse((await ask(p, { from: OWNER, tags: { Action: 'Balances' } })).Data!) as unknown;
  assert.deepEqual(Object.entries(balances as object), [['constructor', '14'], ['hasOwnProperty', '7'], ['toString', '7']]);
  assert.equal(stateOf(p).TotalSupply, '28');
});

test('amounts past 2^53 and 2^64 add up exactly', async () => {
  const p = await open();
  const a = 2n ** 53n + 1n;
  const b = 2n ** 64n + 12345n;
  const c = 10n ** 37n + 7n;
  await mint(p, a.toString(), ALICE);
  await mint(p, b.toString(), ALICE);
  await mint(p, c.toString(), BOB);
  assert.equal(await balance(p, ALICE), (a + b).toString());
  await p.send({ from: BOB, tags: { Action: 'Transfer', Recipient: ALICE, Quantity: (c - 1n).toString() } });
  assert.equal(await balance(p, ALICE), (a + b + c - 1n).toString());
  assert.equal(await balance(p, BOB), '1');
  assert.equal(stateOf(p).TotalSupply, (a + b + c).toString());
});

test('dry runs answer without keeping anything', async () => {
  const p = await open();
  await mint(p, '10', ALICE);
  const before = JSON.stringify(stateOf(p));
  const nonce = p.nonce();
  const r = await p.dryRun({ from: ALICE, tags: { Action: 'Transfer', Recipient: BOB, Quantity: '4' } });
  assert.equal(tagOf(r.Messages[1], 'Action'), 'Credit-Notice');
  assert.equal(JSON.stringify(stateOf(p)), before);
  assert.equal(p.nonce(), nonce);
});

// --- properties -------------------------------------------------------------------------------

const ACCOUNTS = [OWNER, ALICE, BOB, 'carol', '__proto__'];
type Op = { kind: 'mint'; from: string; to: string; q: string } | { kind: 'transfer'; from: string; to: string; q: string };

const amount = fc.oneof(
  fc.bigInt({ min: 0n, max: 50n }).map(String),
  fc.bigInt({ min: 0n, max: 10n ** 38n - 1n }).map(String),
  fc.constantFrom('-1', '01', '1.5', '', '1'.repeat(39)),
);
const op: fc.Arbitrary<Op> = fc.record({
  kind: fc.constantFrom('mint' as const, 'transfer' as const),
  from: fc.oneof(fc.constant(OWNER), fc.constantFrom(...ACCOUNTS)),
  to: fc.constantFrom(...ACCOUNTS),
  q: amount,
});

const toMessage = (o: Op): SendOptions => ({
  from: o.from,
  tags: o.kind === 'mint' ? { Action: 'Mint', Recipient: o.to, Quantity: o.q } : { Action: 'Transfer', Recipient: o.to, Quantity: o.q },
});

test('any sequence of mints and transfers keeps Σ balances = total supply, none negative, as a model predicts', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (ops) => {
      const p = await open();
      const model = new Map<string, bigint>();
      let supply = 0n;
      for (const o of ops) {
        const r = await p.send(toMessage(o));
        assert.equal(r.Error, undefined);
        const valid = /^[1-9][0-9]{0,37}$/.test(o.q);
        const q = valid ? BigInt(o.q) : 0n;
        const ok =
          o.kind === 'mint'
            ? valid && o.from === OWNER && supply + q < 10n ** 38n
            : valid && (model.get(o.from) ?? 0n) >= q;
        assert.equal(tagOf(r.Messages[0], 'Action')!.endsWith('-Error'), !ok, JSON.stringify(o));
        if (ok && o.kind === 'mint') supply += q;
        if (ok) {
          if (o.kind === 'transfer') model.set(o.from, (model.get(o.from) ?? 0n) - q);
          model.set(o.to, (model.get(o.to) ?? 0n) + q);
        }
        const s = stateOf(p);
        const values = Object.values(s.Balances);
        assert.ok(values.every((v) => /^[1-9][0-9]*$/.test(v)), 'balances are positive decimal strings');
        assert.equal(values.reduce((sum, v) => sum + BigInt(v), 0n), BigInt(s.TotalSupply));
        assert.equal(s.TotalSupply, supply.toString());
        for (const account of ACCOUNTS) assert.equal(Object.hasOwn(s.Balances, account) ? BigInt(s.Balances[account]) : 0n, model.get(account) ?? 0n, account);
      }
    }),
    { numRuns: 100 },
  );
});

test('the same messages give byte-identical state twice', async () => {
  const ops = fc.sample(fc.array(op, { minLength: 30, maxLength: 30 }), { seed: 42, numRuns: 1 })[0];
  const runs: string[][] = [];
  for (let i = 0; i < 2; i++) {
    const p = await open(SPAWN, 'P'.repeat(43));
    const trace: string[] = [];
    for (const o of ops) {
      const r = await p.send(toMessage(o));
      trace.push(JSON.stringify(r.Messages));
    }
    trace.push(JSON.stringify(p.state()));
    runs.push(trace);
  }
  assert.deepEqual(runs[0], runs[1]);
  assert.ok(runs[0].at(-1)!.length > 50);
});
