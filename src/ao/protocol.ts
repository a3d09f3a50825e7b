// Rules and small pieces the units share: AO's Hash-Chain, one-line error texts, and per-key
// serial queues (a process's log is a sequence, so its work is too).
import { createHash } from 'node:crypto';

/**
 * AO's Hash-Chain: slot 0 links sha256(process id); slot n links sha256(assignment id of n−1 ‖
 * Hash-Chain of n−1), ids as their raw bytes. The SU writes it and the CU checks it with this one rule.
 */
export function nextHashChain(processId: string, previous: { assignment: string; chain: string } | null): string {
  const raw = (id: string): Buffer => Buffer.from(id, 'base64url');
  const h = createHash('sha256');
  if (previous) h.update(raw(previous.assignment)).update(raw(previous.chain));
  else h.update(raw(processId));
  return h.digest('base64url');
}

/** Messages may echo client input: keep them to one short line. */
export const oneLine = (text: string): string => text.replace(/\s+/g, ' ').trim().slice(0, 300);

/** Runs work for one key after the previous work for it has settled; keys run independently. */
export function serialQueues(): { run<T>(key: string, work: () => Promise<T>): Promise<T>; settled(): Promise<void> } {
  const queues = new Map<string, Promise<unknown>>();
  return {
    run(key, work) {
      const run = (queues.get(key) ?? Promise.resolve()).then(work);
      const tail = run.catch(() => undefined);
      queues.set(key, tail);
      void tail.then(() => {
        if (queues.get(key) === tail) queues.delete(key);
      });
      return run;
    },
    async settled() {
      await Promise.all([...queues.values()]);
    },
  };
}
