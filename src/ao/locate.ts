// Where a process's Scheduler Unit is: the process item's `Scheduler` tag names the SU's wallet
// address, and that wallet's latest `Scheduler-Location` record (Data-Protocol=ao) gives its URL —
// AO's own lookup, answered from our store or gateway instead of ao-testnet's router.
import { tagValue } from '../store/items.js';
import type { Store } from '../store/store.js';
import { VerityError } from '../errors.js';

export class LocateError extends VerityError {
  /** True when the id names no process at all (e.g. a wallet address): trying again will not help. */
  readonly notAProcess: boolean;
  constructor(message: string, notAProcess = false) {
    super(message);
    this.name = 'LocateError';
    this.notAProcess = notAProcess;
  }

  override get httpStatus(): number {
    return 404;
  }
}

export interface Locator {
  /** The SU URL for a process. */
  (processId: string): Promise<string>;
  /** The URL a scheduler wallet published. */
  scheduler(address: string): Promise<string>;
  /** Forgets what it found: after an SU did not answer, its newest Scheduler-Location is read again. */
  forget(): void;
}

export function locator(store: Store): Locator {
  const urls = new Map<string, string>();
  const processes = new Map<string, string>();
  async function scheduler(address: string): Promise<string> {
    const known = urls.get(address);
    if (known) return known;
    const page = await store.query({
      owners: [address],
      tags: [{ name: 'Data-Protocol', values: ['ao'] }, { name: 'Type', values: ['Scheduler-Location'] }],
      sort: 'HEIGHT_DESC',
      first: 1,
    });
    const url = page.edges[0] ? tagValue(page.edges[0].node, 'Url') : undefined;
    if (!url) throw new LocateError(`scheduler ${address} has published no Scheduler-Location`);
    urls.set(address, url);
    return url;
  }
  const locate = async (processId: string): Promise<string> => {
    let address = processes.get(processId);
    if (!address) {
      const page = await store.query({ ids: [processId], first: 1 });
      const node = page.edges[0]?.node;
      if (!node) throw new LocateError(`process ${processId} is unknown`, true);
      address = tagValue(node, 'Scheduler');
      if (!address) throw new LocateError(`item ${processId} has no Scheduler tag: it is not a process`, true);
      processes.set(processId, address);
    }
    return scheduler(address);
  };
  const forget = (): void => {
    urls.clear();
    processes.clear();
  };
  return Object.assign(locate, { scheduler, forget });
}
