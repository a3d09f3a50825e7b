// The AO processes (token, coordinator) as module sources, and the host extensions the coordinator needs.
import { readFileSync } from 'node:fs';
import type { Signer } from '@dha-team/arbundles';
import { publishModule } from '../ao/modules.js';
import { HOST_EXTENSION, type Extensions } from '../ao/runtime.js';
import { coordinatorExtensions } from './host.js';
import { llamaExtensions } from './llama.js';
import type { Store } from '../store/store.js';

export { fundCoordinator } from './calls.js';
export { llamaExtensions, positionTicks } from './llama.js';
export { coordinatorExtensions, describeRequest, promptTokenCount, type JobInfo, type JobInput, type JobModel, type ModelInfo } from './host.js';

/**
 * Every host function a Verity CU offers: the coordinator's and aos-llama's. A module gets those of
 * the Extension tags it declares (cu-rules.ts moduleExtensions).
 */
export const verityExtensions = (store: Store): Extensions => ({ ...coordinatorExtensions(store), ...llamaExtensions(store) });

/** The module a process runs: `<name>.js` bundled with what it imports (scripts/build-processes.js). */
export function processModule(name: 'token' | 'coordinator'): string {
  return readFileSync(new URL(`./bundled/${name}.js`, import.meta.url), 'utf8');
}

/** The host extensions each process's module asks the CU for: only the coordinator reads models and traces. */
const PROCESS_EXTENSIONS: Record<'token' | 'coordinator', string[]> = { token: [], coordinator: [HOST_EXTENSION] };

/** Stores a process's module (`verity-<name>`) with the Extension tags it needs; returns its id. */
export function publishProcessModule(store: Store, signer: Signer, name: 'token' | 'coordinator'): Promise<string> {
  return publishModule(store, signer, processModule(name), `verity-${name}`, { extensions: PROCESS_EXTENSIONS[name] });
}
