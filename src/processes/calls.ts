// Calls into the processes that more than one party makes (the SDK for deposits, a node for its
// stake): what to send and which answer says it is done.
import { randomBytes } from 'node:crypto';
import { expectReply, waitForMessage, type AoClient } from '../ao/client.js';

/**
 * Moves tokens from the caller's wallet to its deposit (or stake) at the coordinator and resolves
 * once the coordinator counted them: its Deposit-Notice (Stake-Notice) carries the transfer's
 * X-Reference, so a concurrent change of the balance cannot be mistaken for this one.
 */
export async function fundCoordinator(
  ao: AoClient, p: { token: string; coordinator: string; account: string; amount: bigint; purpose: 'Deposit' | 'Stake'; timeoutMs?: number },
): Promise<{ quantity: string; total: string }> {
  const reference = randomBytes(18).toString('base64url');
  const from = await ao.latest(p.coordinator);
  const transfer = await ao.message(p.token, {
    tags: [
      { name: 'Action', value: 'Transfer' },
      { name: 'Recipient', value: p.coordinator },
      { name: 'Quantity', value: p.amount.toString() },
      { name: 'X-Action', value: p.purpose },
      { name: 'X-Reference', value: reference },
    ],
  });
  expectReply(await ao.result(p.token, transfer), 'Debit-Notice');
  const notice = await waitForMessage(ao, p.coordinator, {
    from, target: p.account, action: `${p.purpose}-Notice`, match: (t) => t['X-Reference'] === reference, timeoutMs: p.timeoutMs ?? 60_000,
  });
  return { quantity: notice.tags.Quantity, total: p.purpose === 'Stake' ? notice.tags.Stake : notice.tags.Balance };
}
