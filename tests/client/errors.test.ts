// One error base class: what a user can act on is a VerityError, and the CLI and the API map it by
// instanceof — to an exit code and to an HTTP status — never by a name string.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AoClientError, RefusedError } from '../../src/ao/client.js';
import { LocateError } from '../../src/ao/locate.js';
import { toApiError } from '../../src/client/api.js';
import { CannotCheckError } from '../../src/client/verify.js';
import { EngineError, ModelFileError } from '../../src/engine/errors.js';
import { VerityError } from '../../src/errors.js';
import { ProofError } from '../../src/proof/opening.js';
import { ModelStoreError } from '../../src/store/models.js';
import { WalletError } from '../../src/store/wallet.js';
import { runCli } from '../helpers.js';

test('the errors a user can act on are VerityErrors, each with its HTTP status and exit code', () => {
  const cases: [VerityError, number, number][] = [
    [new RefusedError(402, 'unfunded'), 402, 1],
    [new RefusedError(7, 'odd code'), 400, 1],
    [new AoClientError('the MU did not answer'), 502, 1],
    [new LocateError('no such process', true), 404, 1],
    [new ModelStoreError('no manifest'), 404, 1],
    [new WalletError('not a wallet'), 400, 1],
    [new EngineError('steps out of range'), 400, 1],
    [new ModelFileError('m.bin', 'truncated'), 400, 1],
    [new ProofError('chain', 'broken chain'), 400, 1],
    [new CannotCheckError('no receipt'), 400, 2],
  ];
  for (const [e, status, exit] of cases) {
    assert.ok(e instanceof VerityError, e.name);
    assert.equal(e.httpStatus, status, e.name);
    assert.equal(e.exitCode, exit, e.name);
    // A coordinator refusal with a code the API does not know is the coordinator's fault: 502.
    assert.equal(toApiError(e).status, e instanceof RefusedError && e.code < 400 ? 502 : status, `${e.name} through the API`);
  }
  assert.equal(toApiError(new Error('a bug')).status, 500, 'anything else is a bug: 500, its message not shown');
  assert.equal(toApiError(new Error('secret detail')).message, 'internal error');
});

test('the CLI prints a VerityError as one line and exits with its code', async () => {
  const r = await runCli(['run', '/no/such/model.bin']);
  assert.equal(r.code, 1);
  assert.equal(r.stderr.trim().split('\n').length, 1);
  assert.match(r.stderr, /^verity: (?!internal error)/);
});
