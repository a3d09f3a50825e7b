// The stage-to-stage channel of a pipelined lease: what one stage's node signs, the next opens,
// and every message an attacker can make instead is refused with its reason.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ChannelError, ChannelInbox, ChannelOutbox, f32Payload, payloadF32, sealMessage, type PipelineLease } from '../../src/pipeline/channel.js';
import { generateWallet, walletAddress, walletSigner } from '../../src/store/wallet.js';

test('the channel: in-order messages from the lease\'s own nodes open; strangers, replays, reorders, other leases and oversized blobs do not', async () => {
  const [a, b, c, mallory] = await Promise.all(['ed25519', 'ed25519', 'ed25519', 'ed25519'].map(() => generateWallet('ed25519')));
  const lease: PipelineLease = { task: 'T'.repeat(43), commitment: 'ab'.repeat(32), leaseEnd: 1_000_000, nodes: [a, b, c].map(walletAddress) };
  const fromA = new ChannelOutbox(lease, 0, walletSigner(a));
  const inboxB = new ChannelInbox(lease, 1, 4 * 64 * 4);
  const refused = async (raw: Uint8Array | Promise<Uint8Array>, reason: RegExp, inbox = inboxB): Promise<void> => {
    await assert.rejects(inbox.open(await raw), (e: Error) => e instanceof ChannelError && reason.test(e.message));
  };

  const x = Float32Array.from({ length: 64 }, (_, i) => i / 7);
  const first = await fromA.seal(1, 'activations', 0, 1, f32Payload(x));
  const opened = await inboxB.open(first);
  assert.deepEqual({ ...opened, payload: undefined }, { kind: 'activations', from: 0, to: 1, seq: 0, pos: 0, count: 1, payload: undefined });
  assert.deepEqual(payloadF32(opened.payload, 64), x);

  // The same bytes again: a replay.
  await refused(first, /expected 1/);
  // Message 2 before message 1: a reorder (1 then still opens).
  const second = await fromA.seal(1, 'activations', 1, 1, f32Payload(x));
  const third = await fromA.seal(1, 'activations', 2, 1, f32Payload(x));
  await refused(third, /message 2 from stage 0, expected 1/);
  await inboxB.open(second);
  await inboxB.open(third);

  // Signed by someone who is not stage 0's node, claiming to be stage 0.
  await refused(sealMessage(lease, walletSigner(mallory), { kind: 'activations', from: 0, to: 1, seq: 3, pos: 3, count: 1, payload: f32Payload(x) }), /signed by .*, but stage 0 is/);
  // The lease's stage 2 node is a real participant, but stage 0 is not its to speak for.
  await refused(sealMessage(lease, walletSigner(c), { kind: 'activations', from: 0, to: 1, seq: 3, pos: 3, count: 1, payload: f32Payload(x) }), /but stage 0 is/);
  // Another lease of the same task (drawn again: another end), another job, another task.
  for (const other of [{ ...lease, leaseEnd: 2_000_000 }, { ...lease, commitment: 'cd'.repeat(32) }, { ...lease, task: 'U'.repeat(43) }]) {
    await refused(sealMessage(other, walletSigner(a), { kind: 'activations', from: 0, to: 1, seq: 3, pos: 3, count: 1, payload: f32Payload(x) }), /another lease/);
  }
  // For another stage, or from itself.
  await refused(sealMessage(lease, walletSigner(a), { kind: 'activations', from: 0, to: 2, seq: 3, pos: 3, count: 1, payload: f32Payload(x) }), /for stage 2/);
  await refused(sealMessage(lease, walletSigner(b), { kind: 'activations', from: 1, to: 1, seq: 0, pos: 3, count: 1, payload: f32Payload(x) }), /no stage 1 sends/);
  // Over the bound: refused by its length, before any hashing; and bytes that are no item at all.
  await refused(fromA.seal(1, 'activations', 3, 1, new Uint8Array(64 * 1024)), /over this channel's bound/);
  await refused(new Uint8Array([1, 2, 3, 4]), /not a valid signed item/);
  // A tampered payload under a valid signature.
  const good = await new ChannelOutbox(lease, 0, walletSigner(a)).seal(1, 'activations', 0, 1, f32Payload(x));
  const tampered = Uint8Array.from(good);
  tampered[tampered.length - 1] ^= 1;
  await refused(tampered, /not a valid signed item/, new ChannelInbox(lease, 1, 4 * 64 * 4));
  // After all of that the channel still takes the next honest message.
  const fourth = await new ChannelOutbox(lease, 0, walletSigner(a)).seal(1, 'token', 3, 1, new Uint8Array(4));
  await refused(fourth, /expected 3/); // a fresh outbox restarts at 0: its message 0 is a replay here
  assert.equal((await inboxB.open(await sealMessage(lease, walletSigner(a), { kind: 'token', from: 0, to: 1, seq: 3, pos: 4, count: 1, payload: new Uint8Array(4) }))).seq, 3);
  // The last stage sends the token back to the first.
  const inboxA = new ChannelInbox(lease, 0, 16);
  assert.equal((await inboxA.open(await new ChannelOutbox(lease, 2, walletSigner(c)).seal(0, 'token', 5, 1, new Uint8Array(4)))).from, 2);
  assert.throws(() => new ChannelInbox(lease, 3, 16), ChannelError);
  assert.throws(() => payloadF32(new Uint8Array(6), 2), ChannelError);
});
