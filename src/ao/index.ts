// The AO units: a sandboxed process runtime, the Scheduler (SU), Compute (CU) and Messenger (MU)
// Units speaking AO's legacy HTTP protocol, the HyperBEAM-style interface in front of them for
// aoconnect's mainnet mode (hyperbeam/), and their wiring for one machine.
export { DEFAULT_LIMITS, MODULE_FORMAT, evaluate, loadRuntime, type Evaluation, type Extensions, type Limits, type Outcome, type ProcessEnv, type ProcessMessage } from './runtime.js';
export { moduleTags, publishModule } from './modules.js';
export { INSTRUCTIONS_PER_TICK, LUA_MODULE_FORMAT, LuaVM } from './lua-runtime.js';
export { LocateError, locator, type Locator } from './locate.js';
export { MAX_ITEM_BYTES, SchedulerError, openScheduler, startScheduler, type Scheduler, type SchedulerOptions } from './su.js';
export { ComputeError, openComputeUnit, startComputeUnit, verifyAttestation, type Attestation, type ComputeOptions, type ComputeUnit, type Result } from './cu.js';
export { MessengerError, openMessenger, startMessenger, type Messenger, type MessengerOptions } from './mu.js';
export { freePort, startUnits, unitWallet, type RunningUnits, type UnitsOptions } from './units.js';
export { createHyperbeamApp, startHyperbeam, type HyperbeamOptions, type HyperbeamUnits } from './hyperbeam/server.js';
export { verifyHttpSignature, HttpSigError, type HttpSignature } from './hyperbeam/httpsig.js';
export { routeOf, PathError, type Route } from './hyperbeam/paths.js';
