// The SU's rules alone (su-rules.ts): the next slot's nonce, timestamp, block height and Hash-Chain
// link as pure functions of the head and the clock, and the assignment's tags.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { assignmentTags, blockHeightOf, nextSlot } from '../../src/ao/su-rules.js';

const PID = Buffer.alloc(32, 1).toString('base64url');
const A1 = Buffer.alloc(32, 2).toString('base64url');

test('slot 0 links sha256(process id); slot n links sha256(assignment n−1 ‖ chain n−1); nonces count up', () => {
  const zero = nextSlot(PID, null, 1_700_000_360_000.7);
  assert.equal(zero.nonce, 0);
  assert.equal(zero.timestamp, 1_700_000_360_000, 'whole milliseconds');
  assert.equal(zero.hashChain, createHash('sha256').update(Buffer.alloc(32, 1)).digest('base64url'));
  assert.equal(zero.blockHeight, '000000000003');
  const one = nextSlot(PID, { nonce: 0, timestamp: zero.timestamp, assignment: A1, hashChain: zero.hashChain }, zero.timestamp + 5);
  assert.equal(one.nonce, 1);
  assert.equal(one.timestamp, zero.timestamp + 5);
  assert.equal(one.hashChain, createHash('sha256').update(Buffer.alloc(32, 2)).update(Buffer.from(zero.hashChain, 'base64url')).digest('base64url'));
});

test('timestamps rise strictly, even when the clock stands still or goes back', () => {
  let head = { nonce: 0, timestamp: 2_000_000_000_000, assignment: A1, hashChain: 'x'.repeat(43) };
  for (const clock of [2_000_000_000_000, 1_999_000_000_000, 2_000_000_000_001, 0]) {
    const next = nextSlot(PID, head, clock);
    assert.ok(next.timestamp > head.timestamp, `clock ${clock}`);
    assert.equal(next.nonce, head.nonce + 1);
    head = { ...head, nonce: next.nonce, timestamp: next.timestamp };
  }
  assert.equal(nextSlot(PID, head, 1).timestamp, head.timestamp + 1);
});

test('the same head and clock give the same slot; block heights are 12 digits, never negative', () => {
  const head = { nonce: 41, timestamp: 1_800_000_000_000, assignment: A1, hashChain: 'y'.repeat(43) };
  assert.deepEqual(nextSlot(PID, head, 1_800_000_000_500), nextSlot(PID, head, 1_800_000_000_500));
  assert.equal(blockHeightOf(0), '000000000000');
  assert.equal(blockHeightOf(1_700_000_000_000 + 120_000 * 123_456 + 119_999), '000000123456');
});

test("the assignment's tags: AO's names and order, Exclude only when given", () => {
  const slot = nextSlot(PID, null, 1_700_000_000_000);
  const tags = assignmentTags(PID, slot, A1);
  assert.deepEqual(tags.map((t) => t.name), ['Process', 'Epoch', 'Nonce', 'Hash-Chain', 'Block-Height', 'Timestamp', 'Data-Protocol', 'Type', 'Variant', 'Message']);
  assert.equal(tags.find((t) => t.name === 'Message')!.value, A1);
  assert.equal(assignmentTags(PID, slot, A1, 'Data,Anchor').at(-1)!.value, 'Data,Anchor');
});
