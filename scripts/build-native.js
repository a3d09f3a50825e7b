// Builds the optional native kernels (native/verity_kernels.c) with node-gyp at install. Without a
// compiler or Node headers the build is skipped: the WebAssembly kernels are the reference and the
// fallback, and give the same bits.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

function nodeGyp() {
  if (process.env.npm_config_node_gyp && existsSync(process.env.npm_config_node_gyp)) return process.env.npm_config_node_gyp;
  try {
    // npm bundles node-gyp.
    const npmDir = dirname(createRequire(import.meta.url).resolve('npm/package.json', { paths: [join(dirname(process.execPath), '..', 'lib', 'node_modules')] }));
    return join(npmDir, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  } catch {
    return null;
  }
}

if (process.env.VERITY_SKIP_NATIVE) {
  console.log('verity: native kernels skipped (VERITY_SKIP_NATIVE); the WebAssembly kernels will be used');
  process.exit(0);
}
/** Headers of the running Node: npm's nodedir setting, or the ones installed beside the binary. No download. */
function nodeDir() {
  if (process.env.npm_config_nodedir) return process.env.npm_config_nodedir;
  const prefix = dirname(dirname(process.execPath));
  return existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? prefix : null;
}

const gyp = nodeGyp();
const dir = nodeDir();
const args = [gyp, 'rebuild', '--release', ...(dir ? [`--nodedir=${dir}`] : [])];
const result = gyp && dir ? spawnSync(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit'] }) : null;
if (!result || result.status !== 0) {
  console.log('verity: native kernels not built (no compiler or Node headers?); the WebAssembly kernels will be used');
}
