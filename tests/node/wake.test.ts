// The rules for when a node sends a message so that the coordinator moves on (src/node/wake.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WAKE, afterBeat, beatAt, emptyWake, observe, type SeenResult } from '../../src/node/wake.js';

const commit = (task: string): SeenResult => ({ toMe: [{ action: 'Submit-Result-Response', task }], ended: [] });
const reveal = (task: string): SeenResult => ({ toMe: [{ action: 'Reveal-Response', task }], ended: [] });
const other: SeenResult = { toMe: [], ended: [] };
const ended = (task: string): SeenResult => ({ toMe: [], ended: [task] });

test('a commit with no result after it waits drawSlackMs for another message, then asks for one', () => {
  const s = observe(emptyWake(), [other, commit('t1')], 1000, 3000);
  assert.equal(s.drawSince, 1000);
  assert.equal(beatAt(s), 1000 + WAKE.drawSlackMs);
  // Someone else's message in the next page is the later message: nothing to send.
  const later = observe(s, [other], 1010, 3000);
  assert.equal(later.drawSince, null);
  assert.equal(beatAt(later), null);
});

test('a commit followed by another result in the same page needs no message', () => {
  const s = observe(emptyWake(), [commit('t1'), other], 1000, 3000);
  assert.equal(s.drawSince, null);
  assert.equal(beatAt(s), null);
});

test('a reveal waits out the window from when its result was seen; the final Infer-Response ends the wait', () => {
  const s = observe(emptyWake(), [reveal('t1')], 5000, 3000);
  assert.deepEqual([...s.windows], [['t1', { at: 5000 + 3000 + 1, beats: 0 }]]);
  assert.equal(beatAt(s), 8001 + WAKE.windowSlackMs);
  const done = observe(s, [other, ended('t1')], 8020, 3000);
  assert.equal(done.windows.size, 0);
  assert.equal(beatAt(done), null);
});

test('without the window length no window is followed (the heartbeat ends it)', () => {
  const s = observe(emptyWake(), [reveal('t1')], 5000, null);
  assert.equal(s.windows.size, 0);
  assert.equal(beatAt(s), null);
});

test('the earliest need sets the time; a beat clears the draw and retries a due window with backoff, a bounded number of times', () => {
  let s = observe(emptyWake(), [reveal('t1')], 0, 100);
  s = observe(s, [commit('t2')], 200, 100);
  // t1's window (101 + slack) is earlier than t2's draw (200 + slack).
  assert.equal(beatAt(s), 101 + WAKE.windowSlackMs);
  const beatTime = 101 + WAKE.windowSlackMs;
  s = afterBeat(s, beatTime);
  assert.equal(s.drawSince, null);
  assert.deepEqual(s.windows.get('t1'), { at: beatTime + WAKE.retryMs, beats: 1 });
  let now = beatTime;
  for (let beats = 1; beats < WAKE.maxBeats; beats++) {
    now = beatAt(s)!;
    s = afterBeat(s, now);
  }
  assert.equal(s.windows.size, 0, `given up after ${WAKE.maxBeats} beats`);
  assert.equal(beatAt(s), null);
});

test('a beat before a window is due leaves the window as it was', () => {
  const s = observe(emptyWake(), [reveal('t1'), commit('t2')], 0, 3000);
  const after = afterBeat(s, WAKE.drawSlackMs);
  assert.deepEqual(after.windows.get('t1'), { at: 3001, beats: 0 });
  assert.equal(after.drawSince, null);
});

test('windows followed at once are bounded: the oldest goes first', () => {
  let s = emptyWake();
  for (let i = 0; i < WAKE.maxWindows + 5; i++) s = observe(s, [reveal(`t${i}`)], i, 3000);
  assert.equal(s.windows.size, WAKE.maxWindows);
  assert.ok(!s.windows.has('t0') && s.windows.has(`t${WAKE.maxWindows + 4}`));
});

test('observe does not change the state it is given', () => {
  const s = observe(emptyWake(), [reveal('t1')], 0, 3000);
  observe(s, [ended('t1'), commit('t2')], 10, 3000);
  assert.equal(s.windows.size, 1);
  assert.equal(s.drawSince, null);
});
