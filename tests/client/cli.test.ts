// The `verity` command as a user runs it: output contracts, repeatability, one-line errors.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { projectRoot, runCli, stories260K, stories260KGguf, tok512, withTempDir } from '../helpers.js';

const fingerprintOf = (stderr: string): string => /fingerprint: ([0-9a-f]{64})\n$/.exec(stderr)?.[1] ?? 'missing';

test('the fingerprint is identical across 10 runs and across kernel builds, greedy and sampled', async () => {
  for (const flags of [['-t', '0', '-n', '200'], ['-t', '0.8', '-s', '42', '-n', '200', '-i', 'Once upon a time']]) {
    const runs = await Promise.all(
      Array.from({ length: 10 }, (_, i) => runCli(['run', stories260K, '-z', tok512, ...flags, '--kernels', i % 2 ? 'scalar' : 'simd'])),
    );
    const prints = new Set(runs.map((r) => fingerprintOf(r.stderr)));
    assert.equal(prints.size, 1, [...prints].join(' '));
    assert.ok(!prints.has('missing'));
    assert.equal(new Set(runs.map((r) => r.stdout.toString('hex'))).size, 1);
  }
});

test('inspect prints the architecture, shapes, parameter count, bytes and model id', async () => {
  const r = await runCli(['inspect', stories260K, '-z', tok512]);
  assert.equal(r.code, 0, r.stderr);
  const out = r.stdout.toString();
  for (const expected of [
    /dim 64, hidden 172, layers 5, heads 8 \(kv 4\), head size 8/,
    /vocab 512, seq_len 512, rms eps 0\.00001, rope theta 10000/,
    /parameters +260,032/,
    /weight bytes +1,040,128/,
    /blk\.4\.ffn_down\.weight +\[64, 172\]/,
    /model id +2df9b657fbf480d3544152b3a91cbec8003e82c7480e051ef3cd1612c78df382/,
  ]) {
    assert.match(out, expected);
  }
  const json = await runCli(['inspect', stories260KGguf, '--json']);
  const info = JSON.parse(json.stdout.toString()) as { config: { seqLen: number }; weightsRoot: string; modelId: string };
  assert.equal(info.config.seqLen, 2048);
  assert.match(info.modelId, /^[0-9a-f]{64}$/);
});

test('bad input gives one clear error line and a non-zero exit, with nothing on stdout', async () => {
  await withTempDir(async (dir) => {
    const truncated = join(dir, 'truncated.bin');
    writeFileSync(truncated, Buffer.alloc(100));
    const cases: [string[], RegExp][] = [
      [['run', join(dir, 'missing.bin'), '-z', tok512], /^verity: .*missing\.bin: no such file\n$/],
      [['run', truncated, '-z', tok512], /^verity: .*truncated\.bin: bad header: dim = 0/],
      [['run', stories260K], /^verity: tokenizer\.bin: no such file\n$/],
      [['run', stories260K, '-z', tok512, '-t', 'hot'], /^verity: -t expects a number, got 'hot'\n$/],
      [['run', stories260K, '-z', tok512, '-s', '1.5'], /^verity: -s expects an integer, got '1.5'\n$/],
      [['run', stories260K, '-z', tok512, '-i', 'word '.repeat(400)], /^verity: prompt too long: \d+ tokens, the model's context is 512\n$/],
      [['run', stories260K, '-z', tok512, '--kernels', 'gpu'], /^error: option '--kernels <path>' argument 'gpu' is invalid/],
      [['run'], /^error: missing required argument 'model'\n$/],
      [['frobnicate'], /^error: unknown command 'frobnicate'\n$/],
      [['inspect', stories260KGguf, '-z', tok512 + '.nope'], /no such file\n$/],
    ];
    for (const [args, pattern] of cases) {
      const r = await runCli(args);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.equal(r.stdout.length, 0, args.join(' '));
      assert.match(r.stderr, pattern, args.join(' '));
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
    }
  });
});

test('npx verity works in the checkout', async () => {
  const out = await new Promise<string>((resolve, reject) =>
    execFile('npx', ['--no-install', 'verity', 'run', stories260K, '-z', tok512, '-t', '0', '-n', '12'], { cwd: projectRoot, timeout: 60_000 }, (e, stdout) =>
      e ? reject(e) : resolve(stdout),
    ),
  );
  assert.equal(out, 'Once upon a time, there was a little girl\n');
});

test('an address or id that begins with "-" is an argument, not an unknown option (one in 64 does)', async () => {
  const { Command } = await import('commander');
  const { parseArgv } = await import('../../src/client/cli.js');
  const id = '-p30-mYflA8EdSuc8XSFWtwNlEUBRieAjNBI9sxBIxs';
  const seen: unknown[] = [];
  const program = new Command().exitOverride();
  program.command('transfer').argument('<to>').argument('<amount>').option('--from <who>').action((to, amount, opts) => void seen.push(to, amount, opts.from));
  await parseArgv(program, ['node', 'verity', 'transfer', id, '100', '--from', id]);
  assert.deepEqual(seen, [id, '100', id]);
  // Through the real CLI: the error is about the network file, never "unknown option".
  const r = await runCli(['token', 'transfer', id, '100', '--network', '/nonexistent/network.json']);
  assert.notEqual(r.code, 0);
  assert.doesNotMatch(r.stderr, /unknown option/);
});

test('verity node start --memory: bytes, or KiB/MiB/GiB/TiB; anything else is a usage error', async () => {
  const { memoryFlag } = await import('../../src/client/commands/network.js');
  assert.equal(memoryFlag(undefined), undefined);
  assert.equal(memoryFlag('1048576'), 1048576);
  assert.equal(memoryFlag('4GiB'), 4 * 2 ** 30);
  assert.equal(memoryFlag('512 MiB'), 512 * 2 ** 20);
  for (const bad of ['0', '-1', '1.5GiB', '4GB', 'lots', '99999999999999999', '9000000TiB']) assert.throws(() => memoryFlag(bad), /--memory must be/, bad);
});
