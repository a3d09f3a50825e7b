// A process's VM keeps its state in place between messages. What that must never change: a failed
// message leaves the state exactly as it was (its writes undone, however they were made), a message
// counts the same ticks and hits the same limits in a VM that has run a thousand messages as in a
// fresh one (what a CU restored from a checkpoint has), and a dry-run keeps nothing.
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import { DEFAULT_LIMITS, ProcessVM, evaluate, hostCallOf, loadRuntime, type Limits, type ProcessEnv, type ProcessMessage } from '../../src/ao/runtime.js';

const SOURCE = `
const action = (msg) => (msg.Tags.find((t) => t.name === 'Action') || {}).value;
export function handle(state, msg) {
  const s = state ?? { n: 0, list: [1, 2, 3], nested: { a: { b: [ { c: 1 } ] } }, gone: 'here', map: {} };
  switch (action(msg)) {
    case 'Mutate':
    case 'MutateThenThrow':
    case 'MutateThenBadOutbox': {
      s.n += 1;
      s.list.push(s.n, { deep: [s.n] });
      s.list.splice(1, 1);
      s.list.sort((x, y) => String(x).localeCompare(String(y)));
      s.nested.a.b[0].c += 10;
      s.nested.a.b.unshift({ c: -1 });
      delete s.gone;
      s.map['k' + s.n] = { at: s.n };
      Object.assign(s.map, { copied: s.nested.a });
      Object.defineProperty(s.map, 'defined', { value: s.n, enumerable: true, writable: true, configurable: true });
      s.list.length = Math.min(s.list.length, 6);
      if (action(msg) === 'MutateThenThrow') throw new Error('after the writes');
      if (action(msg) === 'MutateThenBadOutbox') return { state: s, Messages: [{ Target: 'x'.repeat(43), Tags: [{ name: 'Big', value: 'v'.repeat(5000) }] }] };
      return { state: s, Output: s.n };
    }
    case 'Replace': return { state: { replaced: true, old: s } };
    case 'ReplaceThenThrow': { const fresh = { replaced: true }; s.n = 99; if (fresh) throw new Error('no'); return { state: fresh }; }
    case 'Freeze': Object.freeze(s.nested); return { state: s };
    case 'Work': { let x = 0; for (let i = 0; i < Number(msg.Data); i++) x += i % 7; s.n += x % 2; return { state: s, Output: x }; }
    case 'Burn': s.n = -1; for (;;);
    case 'Hog': { s.n = -2; const keep = []; for (;;) keep.push(new Uint8Array(1 << 22)); }
    case 'WeakRef': return { state: s, Output: typeof new WeakRef(s) };
    default: return { state: s, Output: s.n };
  }
}`;

const ID = 'P'.repeat(43);
const env: ProcessEnv = { Process: { Id: ID, Owner: 'owner', Tags: [] }, Module: { Id: 'M'.repeat(43), Owner: 'owner', Tags: [] } };
const limits: Limits = { memory: 64 * 2 ** 20, compute: DEFAULT_LIMITS.compute };
let nonce = 0;
const message = (action: string, data = ''): ProcessMessage => ({
  Id: `m${nonce}`.padEnd(43, 'x'), Data: data, Owner: 'owner', From: 'owner', Tags: [{ name: 'Action', value: action }], Target: ID,
  Nonce: nonce++, Timestamp: 1_700_000_000_000 + nonce, 'Block-Height': 1, Cron: false,
});
const open = (state = 'null', source = SOURCE, caps = limits): Promise<ProcessVM> => ProcessVM.open({ source, env, limits: caps, hostNames: [] }, state, hostCallOf({}));

describe('a process VM that keeps its state in place', { timeout: 120_000 }, () => {
  before(loadRuntime);

  test('a message that fails after writing anywhere in the state leaves it exactly as it was', async () => {
    let vm = await open();
    for (let i = 0; i < 3; i++) ({ vm } = await vm.apply(message('Mutate')));
    const before = await vm.state();
    for (const action of ['MutateThenThrow', 'MutateThenBadOutbox', 'ReplaceThenThrow', 'Burn', 'Freeze']) {
      const { outcome, vm: after } = await vm.apply(message(action));
      vm = after;
      assert.ok(outcome.Error, `${action} fails`);
      assert.equal(await vm.state(), before, `${action} left the state as it was`);
    }
    // ... and the same writes, kept, give what a fresh VM per message gives (the JSON hand-over of before).
    let state: unknown = JSON.parse(before);
    const { outcome } = await vm.apply(message('Mutate'));
    const reference = await evaluate(SOURCE, state, message('Mutate'), env, limits);
    state = reference.state;
    assert.equal(outcome.Output, reference.Output);
    assert.equal(await vm.state(), JSON.stringify(state));
    vm.dispose();
  });

  test('any sequence of writes, then a throw, is undone exactly (property test)', async () => {
    // Ops on paths into the state, interpreted in the VM; the last op throws.
    const INTERPRETER = `
      export function handle(state, msg) {
        const s = state ?? JSON.parse(msg.Data).start;
        for (const [op, path, value] of JSON.parse(msg.Data).ops) {
          let at = s;
          for (const key of path) { const next = at[key % Math.max(1, Object.keys(at).length)] ?? at[Object.keys(at)[key % Math.max(1, Object.keys(at).length)]]; if (next === null || typeof next !== 'object') break; at = next; }
          // Arrays get index keys only: the state stays JSON data, as a process's must.
          const keys = Object.keys(at), key = keys.length ? keys[value.length % keys.length] : Array.isArray(at) ? '0' : 'k';
          if (op === 'set') at[key] = JSON.parse(value);
          else if (op === 'add') at[Array.isArray(at) ? at.length : 'n' + value.length] = JSON.parse(value);
          else if (op === 'delete' && !Array.isArray(at)) delete at[key];
          else if (op === 'delete' && at.length > 0) at.pop();
          else if (op === 'delete-set') { delete at[key]; at[key] = JSON.parse(value); }
          else if (Array.isArray(at) && op === 'push') at.push(JSON.parse(value), 1);
          else if (Array.isArray(at) && op === 'splice') at.splice(value.length % 3, 1, JSON.parse(value));
          else if (Array.isArray(at) && op === 'sort') at.sort();
          else if (Array.isArray(at) && op === 'truncate') at.length = value.length % 3;
        }
        if (msg.Tags.some((t) => t.name === 'Throw')) throw new Error('undo it all');
        return { state: s };
      }`;
    const json = fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v));
    const op = fc.tuple(fc.constantFrom('set', 'add', 'delete', 'delete-set', 'push', 'splice', 'sort', 'truncate'), fc.array(fc.nat(9), { maxLength: 3 }), json);
    const start = fc.dictionary(fc.string({ maxLength: 3 }), fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 5 })), { minKeys: 1, maxKeys: 6 });
    await fc.assert(
      fc.asyncProperty(start, fc.array(op, { maxLength: 12 }), fc.array(op, { maxLength: 12 }), async (state, setup, attack) => {
        let vm = await open('null', INTERPRETER);
        ({ vm } = await vm.apply({ ...message('Setup', JSON.stringify({ start: state, ops: setup })) }));
        const before = await vm.state();
        const thrown = await vm.apply({ ...message('Attack', JSON.stringify({ ops: attack })), Tags: [{ name: 'Throw', value: '1' }] });
        vm = thrown.vm;
        assert.match(thrown.outcome.Error ?? '', /undo it all/);
        assert.equal(await vm.state(), before);
        // Kept, the same writes give what a fresh VM (the JSON hand-over of before) gives, key order included.
        const kept = await vm.apply(message('Attack', JSON.stringify({ ops: attack })));
        const reference = await evaluate(INTERPRETER, JSON.parse(before), message('Attack', JSON.stringify({ ops: attack })), env, limits);
        assert.equal(kept.outcome.Error, reference.Error);
        assert.equal(await kept.vm.state(), JSON.stringify(reference.state));
        kept.vm.dispose();
      }),
      { numRuns: 60, seed: 13 },
    );
  });

  test('journal savepoints: undo to a mark keeps the writes before it, at any depth of nesting', async () => {
    const SAVEPOINTS = `
      export function handle(state, msg) {
        const s = state ?? { kept: [], map: { a: 1, b: 2, c: 3 } };
        if (msg.Data === 'boot') return { state: s };
        const outer = journal.mark();
        s.kept.push('before');
        delete s.map.a;
        const inner = journal.mark();
        s.map.z = 26; delete s.map.b; s.map.b = 'again'; s.kept.length = 0;
        journal.undo(inner);
        if (msg.Data === 'all') journal.undo(outer);
        let refused = false;
        try { journal.undo(inner + 1); } catch (e) { refused = e instanceof RangeError; }
        return { state: s, Output: { keys: Object.keys(s.map), kept: s.kept, refused } };
      }`;
    let vm = await open('null', SAVEPOINTS);
    ({ vm } = await vm.apply(message('Boot', 'boot')));
    const some = await vm.apply(message('Go', 'some'));
    vm = some.vm;
    assert.deepEqual(some.outcome.Output, { keys: ['b', 'c'], kept: ['before'], refused: true });
    assert.equal(await vm.state(), '{"kept":["before"],"map":{"b":2,"c":3}}');
    const all = await vm.apply(message('Go', 'all'));
    vm = all.vm;
    assert.deepEqual(all.outcome.Output, { keys: ['b', 'c'], kept: ['before'], refused: true });
    assert.equal(await vm.state(), '{"kept":["before"],"map":{"b":2,"c":3}}', 'undone to the outer mark: the message changed nothing');
    vm.dispose();
  });

  test('a handler may replace its state; a dry-run keeps nothing', async () => {
    let vm = await open();
    ({ vm } = await vm.apply(message('Mutate')));
    const before = await vm.state();
    const dry = await vm.dryRun(message('Mutate'));
    assert.equal(dry.Error, undefined);
    assert.equal(await vm.state(), before);
    ({ vm } = await vm.apply(message('Replace')));
    assert.deepEqual(JSON.parse(await vm.state()), { replaced: true, old: JSON.parse(before) });
    vm.dispose();
  });

  test('a message counts the same ticks in a VM that has run many messages as in a fresh one', async () => {
    let vm = await open();
    for (let i = 0; i < 12; i++) ({ vm } = await vm.apply(message('Work', String(1_000 + 7_919 * i))));
    for (const data of ['5000', '60013', '999']) {
      const state = JSON.parse(await vm.state()) as unknown;
      const m = message('Work', data);
      const { outcome } = await vm.apply(m);
      const fresh = await evaluate(SOURCE, state, m, env, limits);
      assert.equal(outcome.GasUsed, fresh.GasUsed, `Work ${data}: ${outcome.GasUsed} ticks in place, ${fresh.GasUsed} fresh`);
      assert.ok(outcome.GasUsed > 0);
    }
    // The compute limit stops a loop at the same tick too.
    const state = JSON.parse(await vm.state()) as unknown;
    const m = message('Burn');
    const { outcome } = await vm.apply(m);
    const fresh = await evaluate(SOURCE, state, m, env, limits);
    assert.match(outcome.Error ?? '', /compute limit/);
    assert.equal(outcome.GasUsed, fresh.GasUsed);
    vm.dispose();
  });

  test('a message that runs out of memory fails, is undone, and the process goes on', async () => {
    let vm = await open('null', SOURCE, { ...limits, memory: 8 * 2 ** 20 });
    ({ vm } = await vm.apply(message('Mutate')));
    const before = await vm.state();
    const hog = await vm.apply(message('Hog'));
    vm = hog.vm;
    assert.match(hog.outcome.Error ?? '', /memory limit/);
    assert.equal(await vm.state(), before);
    const next = await vm.apply(message('Mutate'));
    assert.equal(next.outcome.Error, undefined);
    next.vm.dispose();
  });

  test('what depends on the collector is not available', async () => {
    const vm = await open();
    const { outcome, vm: after } = await vm.apply(message('WeakRef'));
    assert.match(outcome.Error ?? '', /WeakRef is not available/);
    after.dispose();
  });

  test('a module that does not load fails every message, with its reason', async () => {
    const vm = await open('null', 'export function handle( {');
    const { outcome, vm: after } = await vm.apply(message('Get'));
    assert.match(outcome.Error ?? '', /the module does not load/);
    after.dispose();
  });
});
