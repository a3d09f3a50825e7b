// The CU's rules as pure functions: the next slot of a log, what a process sees of a message, a
// module's limits, the results chain and when a checkpoint is due.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  RESULTS_CHAIN_START, assignedMessage, checkpointDue, checkpointInterval, moduleLimits, nextResultsChain, nextSlotProblem, processMessage, type LogMessage,
} from '../../src/ao/cu-rules.js';
import { nextHashChain } from '../../src/ao/protocol.js';
import type { Item, Tag } from '../../src/store/items.js';

const id = (c: string): string => c.repeat(43);
const PROCESS = id('P');
const SCHEDULER = 'scheduler-address';
const tags = (record: Record<string, string>): Tag[] => Object.entries(record).map(([name, value]) => ({ name, value }));

describe('the CU rules', () => {
  test('the next slot: signed by the scheduler, for this process, the very next nonce, the next link', () => {
    const at = { processId: PROCESS, scheduler: SCHEDULER, nonce: 4, hashChain: id('h'), lastAssignment: id('a') };
    const link = nextHashChain(PROCESS, { assignment: id('a'), chain: id('h') });
    const good = { id: id('n'), address: SCHEDULER, tags: tags({ Process: PROCESS, Nonce: '5', 'Hash-Chain': link }) };
    assert.equal(nextSlotProblem(at, good), null);
    assert.match(nextSlotProblem(at, { ...good, address: 'someone else' })!, /not signed by the scheduler/);
    assert.match(nextSlotProblem(at, { ...good, tags: tags({ Process: id('Q'), Nonce: '5', 'Hash-Chain': link }) })!, /for another process/);
    assert.match(nextSlotProblem(at, { ...good, tags: tags({ Process: PROCESS, Nonce: '6', 'Hash-Chain': link }) })!, /skipped from slot 4 to 6/);
    assert.match(nextSlotProblem(at, { ...good, tags: tags({ Process: PROCESS, Nonce: '5', 'Hash-Chain': id('x') }) })!, /hash chain breaks at slot 5/);
    // Slot 0 links the process id itself.
    const first = { ...at, nonce: -1, hashChain: null, lastAssignment: null };
    assert.equal(nextSlotProblem(first, { ...good, tags: tags({ Process: PROCESS, Nonce: '0', 'Hash-Chain': nextHashChain(PROCESS, null) }) }), null);
  });

  test('a message as the process sees it: From-Process counts only from an Authority', () => {
    const env = { Process: { Id: PROCESS, Owner: 'owner', Tags: tags({ Authority: 'mu-1, mu-2' }) }, Module: { Id: id('M'), Owner: 'owner', Tags: [] } };
    const assignment = { tags: tags({ Nonce: '3', Timestamp: '1700000000000', 'Block-Height': '000000000007', 'Hash-Chain': id('h'), Epoch: '0' }) };
    const msg: LogMessage = { id: id('m'), owner: { address: 'mu-2', key: 'k' }, data: 'hi', tags: tags({ 'From-Process': id('F') }), signature: 's', anchor: null, target: PROCESS };
    const seen = processMessage(PROCESS, env, assignment, msg);
    assert.equal(seen.From, id('F'));
    assert.equal(seen['Forwarded-By'], 'mu-2');
    assert.deepEqual([seen.Nonce, seen.Timestamp, seen['Block-Height'], seen.Target], [3, 1_700_000_000_000, 7, PROCESS]);
    const claimed = processMessage(PROCESS, env, assignment, { ...msg, owner: { address: 'anyone', key: 'k' } });
    assert.equal(claimed.From, 'anyone', 'anyone may write From-Process: it counts only when an authority signed');
    assert.equal(claimed['Forwarded-By'], undefined);
    // Slot 0 is the process itself; an item assigned from another log keeps its own target.
    assert.equal(processMessage(PROCESS, env, { tags: tags({ Nonce: '0' }) }, { ...msg, target: null }).Target, PROCESS);
    assert.equal(processMessage(PROCESS, env, assignment, { ...msg, target: id('O') }).Target, id('O'));
    assert.equal(processMessage(PROCESS, env, assignment, msg, true)['Read-Only'], true);
  });

  test('an assignment of a stored item drops the fields its Exclude tag lists', () => {
    const item = { id: id('i'), address: 'a', owner: 'k', data: Buffer.from('data'), tags: [], signature: 's', anchor: 'anchor', target: id('T') } as unknown as Item;
    assert.deepEqual([assignedMessage({ tags: [] }, item).data, assignedMessage({ tags: [] }, item).anchor], ['data', 'anchor']);
    const excluded = assignedMessage({ tags: tags({ Exclude: 'Data, Anchor' }) }, item);
    assert.deepEqual([excluded.data, excluded.anchor], [null, null]);
  });

  test("a module's limits only lower the CU's", () => {
    const cap = { memory: 1000, compute: 50 };
    assert.deepEqual(moduleLimits({ tags: tags({ 'Memory-Limit': '500-b', 'Compute-Limit': '20' }) }, cap), { memory: 500, compute: 20 });
    assert.deepEqual(moduleLimits({ tags: tags({ 'Memory-Limit': '5000-b', 'Compute-Limit': '99' }) }, cap), cap);
    assert.deepEqual(moduleLimits({ tags: tags({ 'Memory-Limit': '5 GiB', 'Compute-Limit': '-3' }) }, cap), cap);
  });

  test('the results chain depends on every result and their order', () => {
    const a = nextResultsChain(nextResultsChain(RESULTS_CHAIN_START, 'x'), 'y');
    assert.notEqual(a, nextResultsChain(nextResultsChain(RESULTS_CHAIN_START, 'y'), 'x'));
    assert.equal(a, nextResultsChain(nextResultsChain(RESULTS_CHAIN_START, 'x'), 'y'));
  });

  test('a checkpoint comes every N messages, less often for a large state, or after a while', () => {
    const policy = { messages: 64, bytesPerMessage: 4096, ms: 60_000 };
    assert.equal(checkpointInterval(0, policy), 64);
    assert.equal(checkpointInterval(5 * 2 ** 20, policy), 1280);
    assert.equal(checkpointDue({ messages: 63, ms: 0 }, 1000, policy), false);
    assert.equal(checkpointDue({ messages: 64, ms: 0 }, 1000, policy), true);
    assert.equal(checkpointDue({ messages: 64, ms: 0 }, 5 * 2 ** 20, policy), false);
    assert.equal(checkpointDue({ messages: 1, ms: 60_000 }, 5 * 2 ** 20, policy), true);
    assert.equal(checkpointDue({ messages: 0, ms: 600_000 }, 0, policy), false);
  });
});
