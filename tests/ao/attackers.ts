// Process modules an attacker deploys, shared by the attack tests and `npm run attack`.

// Answers every Ball with `Copies` Balls to whoever sent it (the client's first one names a Peer).
export const AMPLIFIER = `
const tag = (m, name) => (m.Tags.find((t) => t.name === name) || {}).value;
export function handle(state, m) {
  const s = state || { balls: 0 };
  if (tag(m, 'Action') !== 'Ball') return { state: s };
  s.balls++;
  const copies = Number(tag(m, 'Copies') || '1');
  const to = tag(m, 'Peer') || m.From;
  const ball = { Target: to, Tags: [{ name: 'Action', value: 'Ball' }, { name: 'Copies', value: String(copies) }] };
  return { state: s, Messages: Array.from({ length: copies }, () => ball) };
}`;
