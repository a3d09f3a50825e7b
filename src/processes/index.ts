// The AO processes (token, coordinator) as module sources, and the host extensions the coordinator needs.
import { readFileSync } from 'node:fs';

export { fundCoordinator } from './calls.js';
export { coordinatorExtensions, describeRequest, promptTokenCount, type JobInfo, type JobInput, type JobModel, type ModelInfo } from './host.js';

/** The module a process runs: `<name>.js` bundled with what it imports (scripts/build-processes.js). */
export function processModule(name: 'token' | 'coordinator'): string {
  return readFileSync(new URL(`./bundled/${name}.js`, import.meta.url), 'utf8');
}
