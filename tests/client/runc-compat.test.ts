// `verity run` against recorded behaviour of llama2.c's run.c (test/golden/runc.json: stdout of
// the real run.c binary for each argument list, with stories260K.bin and tok512.bin).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { goldenDir, pool, runCli, stories260K, stories260KGguf, tok512 } from '../helpers.js';

interface GenerateCase {
  args: string[];
  stdout_b64: string;
  exit: number;
}

const golden = JSON.parse(readFileSync(join(goldenDir, 'runc.json'), 'utf8')) as { generate: GenerateCase[] };
const reference = readFileSync(join(goldenDir, '..', '..', '..', 'shared', 'models', 'README.md'), 'utf8');

test('greedy stories260K output equals the reference text in shared/models/README.md', async () => {
  const expected = /```\n([\s\S]*?)```/.exec(reference)?.[1];
  assert.ok(expected, 'reference block found');
  for (const model of [[stories260K, '-z', tok512], [stories260KGguf]]) {
    const r = await runCli(['run', ...model, '-t', '0', '-n', '200']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString('utf8'), expected);
    const lines = r.stderr.trimEnd().split('\n');
    assert.match(lines.at(-2) ?? '', /^tok\/s: \d+(\.\d+)?$/);
    assert.match(lines.at(-1) ?? '', /^fingerprint: [0-9a-f]{64}$/);
  }
});

test('stdout and exit code equal run.c for every recorded argument list', async () => {
  const results = await pool(golden.generate, 4, async (c) => ({ c, r: await runCli(['run', stories260K, '-z', tok512, ...c.args]) }));
  for (const { c, r } of results) {
    const label = c.args.join(' ');
    assert.equal(r.code === 0 ? 0 : 1, c.exit, `exit code for ${label}: ${r.stderr}`);
    assert.equal(r.stdout.toString('base64'), c.stdout_b64, `stdout for ${label}`);
  }
});
