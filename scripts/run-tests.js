// npm test's runner: every compiled test file under dist/, in two passes. Most files run two at a
// time (most of their time is waiting: on HTTP, child processes, leases and windows), then the few
// whose deadlines are measured against the machine's pace run alone — the kill -9 fault run, the
// network as separate processes, the across-machines walk-through — so that a busy neighbour cannot make them miss one.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';

const ALONE = ['dist/tests/ao/faults.test.js', 'dist/tests/network/separate.test.js', 'dist/tests/network/across-machines.test.js'];

function testFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return testFiles(path);
    return entry.name.endsWith('.test.js') ? [relative('.', path)] : [];
  });
}

const all = testFiles('dist').sort();
const missing = ALONE.filter((f) => !all.includes(f));
if (missing.length > 0) {
  console.error(`run-tests: ${missing.join(', ')} not found: build first (npm run build)`);
  process.exit(1);
}
const passes = [
  { concurrency: 2, files: all.filter((f) => !ALONE.includes(f)) },
  { concurrency: 1, files: ALONE },
];
let failed = false;
for (const { concurrency, files } of passes) {
  const run = spawnSync(process.execPath, ['--test', '--test-reporter=spec', '--test-timeout=300000', `--test-concurrency=${concurrency}`, ...files], { stdio: 'inherit' });
  failed ||= run.status !== 0;
}
process.exit(failed ? 1 : 0);
