import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { test } from 'node:test';
import { leafHash, loadModel, merkleRoot, modelIdentity, nodeHash, toHex } from '../../src/engine/index.js';
import { ggufFromModel, writeGguf } from '../../src/engine/load/gguf-write.js';
import { stories260K, stories260KGguf, tok512, withTempDir } from '../helpers.js';

const bin = loadModel(stories260K, { tokenizer: tok512 });

test('the model id of stories260K.bin + tok512.bin is stable', () => {
  // Changing this value changes every model id: that is a new MODEL_ID_VERSION (docs/model-id.md).
  assert.equal(modelIdentity(bin).modelId, '2df9b657fbf480d3544152b3a91cbec8003e82c7480e051ef3cd1612c78df382');
});

test('the same model in another file format has the same id', () => {
  withTempDir((dir) => {
    const path = join(dir, 'same.gguf');
    writeGguf(path, ggufFromModel(bin));
    assert.deepEqual(modelIdentity(loadModel(path)), modelIdentity(bin));
  });
});

test('stories260K.gguf has the .bin\'s weights but another config and tokenizer, hence another id', () => {
  const a = modelIdentity(bin);
  const b = modelIdentity(loadModel(stories260KGguf));
  assert.equal(b.weightsRoot, a.weightsRoot);
  assert.notEqual(b.configHash, a.configHash); // context length 2048 vs 512
  assert.notEqual(b.tokenizerHash, a.tokenizerHash); // BOS/EOS spelled <s>, </s> vs \n<s>\n, \n</s>\n
  assert.notEqual(b.modelId, a.modelId);
});

test('changing one weight bit changes the weights root and the id', () => {
  const model = loadModel(stories260K, { tokenizer: tok512 });
  const before = modelIdentity(model);
  const w = model.arena.u8(model.weights.layers[3].w2.ptr + 1000, 1);
  w[0] ^= 1;
  const after = modelIdentity(model);
  assert.notEqual(after.weightsRoot, before.weightsRoot);
  assert.notEqual(after.modelId, before.modelId);
  assert.equal(after.configHash, before.configHash);
});

test('merkle roots follow RFC 6962: domain-separated leaves, left subtree the largest power of two', () => {
  const leaves = [1, 2, 3, 4, 5].map((i) => leafHash(Uint8Array.of(i)));
  assert.equal(toHex(leaves[0]), createHash('sha256').update(Uint8Array.of(0, 1)).digest('hex'));
  assert.equal(toHex(merkleRoot(leaves.slice(0, 1))), toHex(leaves[0]));
  assert.equal(toHex(merkleRoot(leaves.slice(0, 3))), toHex(nodeHash(nodeHash(leaves[0], leaves[1]), leaves[2])));
  const four = nodeHash(nodeHash(leaves[0], leaves[1]), nodeHash(leaves[2], leaves[3]));
  assert.equal(toHex(merkleRoot(leaves)), toHex(nodeHash(four, leaves[4])));
  assert.equal(toHex(merkleRoot([])), createHash('sha256').digest('hex'));
});
