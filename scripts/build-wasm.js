// Compiles the AssemblyScript kernels into the two builds the engine ships: one with WebAssembly
// SIMD and one without. Both come from the same source (see docs/numerics.md).
import asc from 'assemblyscript/asc';
import { mkdirSync } from 'node:fs';

const source = 'src/engine/numerics/wasm/kernels.ts';
const outDir = 'dist/src/engine/numerics';
mkdirSync(outDir, { recursive: true });

// Shared memory (threads run kernels on the same tensors) of up to 4 GiB, the wasm32 limit.
const common = [
  source, '-O3', '--noAssert', '--runtime', 'stub', '--use', 'abort=',
  '--importMemory', '--sharedMemory', '--maximumMemory', '65536', '--enable', 'threads', '--disable', 'relaxed-simd',
];
const builds = [
  { name: 'kernels-simd.wasm', flags: ['--enable', 'simd'] },
  { name: 'kernels-scalar.wasm', flags: ['--disable', 'simd'] },
];
for (const build of builds) {
  const { error, stderr } = await asc.main([...common, ...build.flags, '--outFile', `${outDir}/${build.name}`]);
  if (error) {
    process.stderr.write(stderr.toString());
    console.error(`build-wasm: ${build.name}: ${error.message}`);
    process.exit(1);
  }
}
