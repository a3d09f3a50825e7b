// Bundles each AO process module with what it imports (the dissection game of src/proof, sha256
// from @noble/hashes) into one self-contained ES module, as the CU evaluates it: QuickJS loads a
// module from its source text alone. Runs after tsc, on its output.
import { build } from 'esbuild';
import { cpSync } from 'node:fs';

// The Lua sources (the aos library the CU loads into every Lua process, the verity client) go
// beside the compiled JavaScript that reads them.
cpSync('src', 'dist/src', { recursive: true, filter: (path) => !/\.[a-z]+$/.test(path) || path.endsWith('.lua') });

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
