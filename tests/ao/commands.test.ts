// `verity units|su|cu|mu` as a user runs them: they start and serve, and bad flags get one line and exit 1.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli, serveCli, withTempDir } from '../helpers.js';

test('verity units starts a gateway, SU, CU and MU that answer on their routes', { timeout: 60_000 }, () =>
  withTempDir(async (dir) => {
    const units = await serveCli(['units', '--dir', join(dir, 'v'), '--port', '0']);
    try {
      const { gateway, su, cu, mu, hyperbeam, scheduler } = units.info;
      assert.equal(((await (await fetch(`${su}/`)).json()) as { address: string }).address, scheduler);
      assert.equal(typeof ((await (await fetch(`${cu}/`)).json()) as { address: string }).address, 'string');
      assert.equal(await (await fetch(`${mu}/`)).text(), 'ao messenger unit');
      assert.ok((await fetch(`${gateway}/info`)).ok);
      // The HyperBEAM interface, printed with the others: what aoconnect's mainnet spawn asks first.
      assert.equal(await (await fetch(`${hyperbeam}/~meta@1.0/info/address`)).text(), scheduler);
    } finally {
      await units.stop();
    }
  }),
);

test('unit commands refuse bad flags and unreachable gateways with one line and exit code 1', { timeout: 60_000 }, () =>
  withTempDir(async (dir) => {
    for (const [args, message] of [
      [['mu', '--port', '0'], /required option '--cu <url>'/],
      [['cu', '--gateway', 'nope', '--port', '0'], /--gateway nope is not a URL/],
      [['su', '--gateway', 'http://127.0.0.1:1', '--port', '0', '--dir', join(dir, 'su')], /cannot reach the gateway at http:\/\/127\.0\.0\.1:1/],
      [['su', '--store', join(dir, 's'), '--gateway', 'http://127.0.0.1:1', '--port', '0'], /use --store or --gateway, not both/],
    ] as const) {
      const r = await runCli([...args], 30_000);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
  }),
);
