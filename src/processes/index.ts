// The AO processes (token, coordinator) as module sources, and the host extensions the coordinator needs.
import { readFileSync } from 'node:fs';

export { fundCoordinator } from './calls.js';
export { coordinatorExtensions, describeRequest, promptTokenCount, type JobInfo, type JobInput, type JobModel, type ModelInfo } from './host.js';

/** The compiled module a process runs: this folder's `<name>.js`, self-contained. */
export function processModule(name: 'token' | 'coordinator'): string {
  return readFileSync(new URL(`./${name}.js`, import.meta.url), 'utf8');
}
