// Bundles each AO process module with what it imports (the dissection game of src/proof, sha256
// from @noble/hashes) into one self-contained ES module, as the CU evaluates it: QuickJS loads a
// module from its source text alone. Runs after tsc, on its output.
import { cpSync } from 'node:fs';
import { build } from 'esbuild';

await build({
  entryPoints: ['dist/src/processes/coordinator.js', 'dist/src/processes/token.js'],
  outdir: 'dist/src/processes/bundled',
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  mainFields: ['module', 'main'],
  target: 'es2022',
  legalComments: 'inline',
  logLevel: 'warning',
});


// The Lua sources of the Lua process runtime (src/ao/lua/aos.lua, the aos library every Lua process
// gets) go to the same paths under dist/, where the compiled runtime reads them.
cpSync('src/ao/lua', 'dist/src/ao/lua', { recursive: true, filter: (path) => !/\.[^/]+$/.test(path) || path.endsWith('.lua') });
