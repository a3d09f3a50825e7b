// Models on permanent storage. Publishing cuts a model's tree leaves (docs/model-id.md) into chunk
// items of at most 4 MiB and adds a manifest item that lists them with every leaf's hash. Fetching
// checks the manifest's leaf hashes against the model id, then every chunk against them, before
// anything is written to the cache — a corrupt or missing chunk is named, never cached.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  assembleModel,
  chunkLayout,
  leafHash,
  merkleRoot,
  modelIdentity,
  modelTreeLeaves,
  parseCanonicalConfig,
  parseCanonicalTokenizer,
  toHex,
  writeGguf,
  ggufFromModel,
  loadModel,
  type CanonicalConfig,
  type Model,
  type Tokenizer,
} from '../engine/index.js';
import type { Signer } from '@dha-team/arbundles';
import { createItem, tagValue, type Item, type Tag } from './items.js';
import type { Store } from './store.js';
import { ownerAddress } from './wallet.js';
import { VerityError } from '../errors.js';

export const MANIFEST_VERSION = 'verity-model-manifest/1';
export const MAX_CHUNK_ITEM_BYTES = 4 * 2 ** 20;

export interface ManifestChunk {
  id: string;
  /** The first leaf in the item and the sizes of its leaves, in order. */
  from: number;
  sizes: number[];
}

export interface Manifest {
  version: typeof MANIFEST_VERSION;
  modelId: string;
  name: string;
  /** Hex sha256 leaf hashes of the whole tree: their Merkle root is the model id. */
  leaves: string[];
  chunks: ManifestChunk[];
  config: { architecture: 'llama'; dim: number; layers: number; heads: number; kvHeads: number; vocab: number; seqLen: number; dtypes: string[] };
}

export class ModelStoreError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'ModelStoreError';
  }

  /** The store has no such model, or not all of it. */
  override get httpStatus(): number {
    return 404;
  }
}

export interface Progress {
  (done: number, total: number): void;
}

/** Consecutive leaves grouped into items of at most MAX_CHUNK_ITEM_BYTES (a bigger leaf stands alone). */
function groupLeaves(sizes: number[]): { from: number; to: number }[] {
  const groups: { from: number; to: number }[] = [];
  let from = 0;
  let bytes = 0;
  sizes.forEach((size, i) => {
    if (i > from && bytes + size > MAX_CHUNK_ITEM_BYTES) {
      groups.push({ from, to: i });
      from = i;
      bytes = 0;
    }
    bytes += size;
  });
  groups.push({ from, to: sizes.length });
  return groups;
}

const chunkTags = (modelId: string, from: number, to: number): Tag[] => [
  { name: 'Data-Protocol', value: 'verity' },
  { name: 'Type', value: 'Model-Chunk' },
  { name: 'Model-Id', value: modelId },
  { name: 'Leaves', value: `${from}-${to - 1}` },
  { name: 'Content-Type', value: 'application/octet-stream' },
];

export interface PublishResult {
  modelId: string;
  manifestId: string;
  chunks: number;
  bytes: number;
  /** Chunk items found already stored (an interrupted publish resumes). */
  reused: number;
}

/** Publishes a loaded model; resumes where an earlier publish by the same signer stopped. */
export async function publishModel(store: Store, signer: Signer, model: Model, name: string, progress?: Progress): Promise<PublishResult> {
  const leaves = modelTreeLeaves(model);
  const hashes = leaves.map((l) => leafHash(l));
  const modelId = toHex(merkleRoot(hashes));
  const owner = ownerAddress(signer.publicKey);
  // Published already by this signer, completely: nothing to do.
  const published = await store.query({ owners: [owner], tags: [{ name: 'Type', values: ['Model-Manifest'] }, { name: 'Model-Id', values: [modelId] }], first: 1 });
  const previous = published.edges[0] ? await store.get(published.edges[0].node.id) : null;
  if (previous) {
    const m = parseManifest(previous.data, modelId, previous.id);
    const present = await Promise.all(m.chunks.map((c) => store.has(c.id)));
    if (present.every(Boolean)) {
      const bytes = m.chunks.reduce((n, c) => n + c.sizes.reduce((a, b) => a + b, 0), 0);
      progress?.(m.chunks.length, m.chunks.length);
      return { modelId, manifestId: previous.id, chunks: m.chunks.length, bytes, reused: m.chunks.length };
    }
  }
  const groups = groupLeaves(leaves.map((l) => l.length));
  const chunks: ManifestChunk[] = [];
  let bytes = 0;
  let reused = 0;
  for (const [i, g] of groups.entries()) {
    const tags = chunkTags(modelId, g.from, g.to);
    const existing = await store.query({ owners: [owner], tags: tags.slice(1, 4).map((t) => ({ name: t.name, values: [t.value] })), first: 1 });
    let id = existing.edges[0]?.node.id;
    if (id) reused++;
    else {
      const item = await createItem(Buffer.concat(leaves.slice(g.from, g.to)), signer, { tags });
      ({ id } = await store.put(item.raw));
    }
    const sizes = leaves.slice(g.from, g.to).map((l) => l.length);
    bytes += sizes.reduce((a, b) => a + b, 0);
    chunks.push({ id, from: g.from, sizes });
    progress?.(i + 1, groups.length);
  }
  const c = model.config;
  const manifest: Manifest = {
    version: MANIFEST_VERSION,
    modelId,
    name,
    leaves: hashes.map(toHex),
    chunks,
    config: {
      architecture: 'llama', dim: c.dim, layers: c.nLayers, heads: c.nHeads, kvHeads: c.nKvHeads, vocab: c.vocabSize, seqLen: c.seqLen,
      dtypes: [...new Set(parseCanonicalConfig(leaves[0]).tensors.map((t) => t.dtype))],
    },
  };
  const tags: Tag[] = [
    { name: 'Data-Protocol', value: 'verity' },
    { name: 'Type', value: 'Model-Manifest' },
    { name: 'Model-Id', value: modelId },
    { name: 'Name', value: name.slice(0, 1024) || 'model' },
    { name: 'Architecture', value: 'llama' },
    { name: 'Config', value: `dim=${c.dim} layers=${c.nLayers} heads=${c.nHeads}/${c.nKvHeads} vocab=${c.vocabSize} seq=${c.seqLen}` },
    { name: 'Content-Type', value: 'application/json' },
  ];
  const item = await createItem(JSON.stringify(manifest), signer, { tags });
  const { id: manifestId } = await store.put(item.raw);
  return { modelId, manifestId, chunks: chunks.length, bytes, reused };
}

export interface ListedModel {
  modelId: string;
  manifestId: string;
  name: string;
  owner: string;
  config: string;
}

/** Model manifests in the store, newest first. */
export async function listModels(store: Store, first = 100): Promise<ListedModel[]> {
  const page = await store.query({ tags: [{ name: 'Type', values: ['Model-Manifest'] }], first });
  return page.edges.map(({ node }) => ({
    modelId: tagValue(node, 'Model-Id') ?? '',
    manifestId: node.id,
    name: tagValue(node, 'Name') ?? '',
    owner: node.address,
    config: tagValue(node, 'Config') ?? '',
  }));
}

function parseManifest(data: Buffer, modelId: string, manifestId: string): Manifest {
  let m: Manifest;
  try {
    m = JSON.parse(data.toString('utf8')) as Manifest;
  } catch {
    throw new ModelStoreError(`manifest ${manifestId} is not JSON`);
  }
  const leaves = Array.isArray(m?.leaves) && m.leaves.every((h) => typeof h === 'string' && /^[0-9a-f]{64}$/.test(h)) ? m.leaves : null;
  if (m?.version !== MANIFEST_VERSION || m.modelId !== modelId || !leaves || !Array.isArray(m.chunks)) {
    throw new ModelStoreError(`manifest ${manifestId} is not a ${MANIFEST_VERSION} manifest for ${modelId}`);
  }
  if (toHex(merkleRoot(leaves.map((h) => Buffer.from(h, 'hex')))) !== modelId) {
    throw new ModelStoreError(`manifest ${manifestId}: its leaf hashes do not make model id ${modelId}`);
  }
  let next = 0;
  for (const c of m.chunks) {
    if (typeof c?.id !== 'string' || c.from !== next || !Array.isArray(c.sizes) || !c.sizes.every((n) => Number.isInteger(n) && n >= 0)) {
      throw new ModelStoreError(`manifest ${manifestId}: its chunk list does not cover the leaves in order`);
    }
    next += c.sizes.length;
  }
  if (next !== leaves.length) throw new ModelStoreError(`manifest ${manifestId}: its chunks hold ${next} leaves, the model has ${leaves.length}`);
  return m;
}

/**
 * The model's manifest, checked against its id: the one named by `manifestId`, or else the newest
 * the store lists (any valid manifest serves to fetch the bytes, which the id pins; where the choice
 * must be the same everywhere, as for a coordinator, the manifest id is given).
 */
async function findManifest(store: Store, modelId: string, manifestId?: string): Promise<Manifest> {
  if (!/^[0-9a-f]{64}$/.test(modelId)) throw new ModelStoreError(`${modelId} is not a model id (64 hex characters)`);
  if (manifestId === undefined) {
    const manifests = await store.query({ tags: [{ name: 'Type', values: ['Model-Manifest'] }, { name: 'Model-Id', values: [modelId] }], first: 10 });
    if (manifests.edges.length === 0) throw new ModelStoreError(`no manifest for model ${modelId} in the store`);
    manifestId = manifests.edges[0].node.id;
  }
  const manifestItem = await store.get(manifestId);
  if (!manifestItem) throw new ModelStoreError(`manifest ${manifestId} is missing from the store`);
  return parseManifest(manifestItem.data, modelId, manifestId);
}

/**
 * A model's manifest by its item id, checked against the model id (the manifest a coordinator
 * pinned). Throws ModelStoreError for what the store holds; the store's own errors pass through.
 */
export const readManifest = (store: Store, modelId: string, manifestId: string): Promise<Manifest> => findManifest(store, modelId, manifestId);

/** The chunk items of a (checked) manifest that hold leaves from..to−1, in order. */
export function chunksFor(manifest: Manifest, from: number, to: number): ManifestChunk[] {
  return manifest.chunks.filter((c) => c.from < to && c.from + c.sizes.length > from);
}

/** One chunk item's leaves, each checked against the manifest's leaf hashes. */
async function chunkLeaves(store: Store, manifest: Manifest, chunk: ManifestChunk): Promise<Buffer[]> {
  const item = await store.get(chunk.id).catch((e: Error) => {
    throw new ModelStoreError(`${chunkName(chunk)} is corrupt: ${e.message}`);
  });
  return checkChunk(manifest, chunk, item);
}

const chunkName = (chunk: ManifestChunk): string => `chunk ${chunk.id} (leaves ${chunk.from}-${chunk.from + chunk.sizes.length - 1})`;

/**
 * The leaves of a chunk item as the store returned it (null: not there), each checked against the
 * manifest's leaf hashes. Throws ModelStoreError naming the chunk when it is missing or corrupt.
 */
export function checkChunk(manifest: Manifest, chunk: ManifestChunk, item: Pick<Item, 'data'> | null): Buffer[] {
  const name = chunkName(chunk);
  if (!item) throw new ModelStoreError(`${name} is missing from the store`);
  const leaves: Buffer[] = [];
  let at = 0;
  chunk.sizes.forEach((size, k) => {
    const leaf = item.data.subarray(at, at + size);
    at += size;
    if (leaf.length !== size || toHex(leafHash(leaf)) !== manifest.leaves[chunk.from + k]) {
      throw new ModelStoreError(`${name} is corrupt: leaf ${chunk.from + k} does not match the model id`);
    }
    leaves.push(leaf);
  });
  if (at !== item.data.length) throw new ModelStoreError(`${name} is corrupt: ${item.data.length - at} bytes too many`);
  return leaves;
}

export interface ModelHeader {
  modelId: string;
  name: string;
  config: CanonicalConfig;
  tokenizer: Tokenizer;
  /** sha256 of the tokenizer leaf, as in the job commitment. */
  tokenizerHash: string;
}

/**
 * A model's config and tokenizer without its weights: the manifest and the chunk holding leaves 0
 * and 1, every byte checked against the id. What a coordinator needs to price and commit a job.
 */
export async function readModelHeader(store: Store, modelId: string, manifestId?: string): Promise<ModelHeader> {
  const manifest = await findManifest(store, modelId, manifestId);
  const leaves: Buffer[] = [];
  for (const chunk of manifest.chunks) {
    if (leaves.length >= 2) break;
    leaves.push(...(await chunkLeaves(store, manifest, chunk)));
  }
  if (leaves.length < 2) throw new ModelStoreError(`model ${modelId} has no tokenizer leaf`);
  return {
    modelId,
    name: manifest.name,
    config: parseCanonicalConfig(leaves[0]),
    tokenizer: parseCanonicalTokenizer(leaves[1]),
    tokenizerHash: createHash('sha256').update(leaves[1]).digest('hex'),
  };
}

/** A model by id from the store, every leaf checked, assembled in memory (no file), with the manifest it was read by. */
export async function readModel(store: Store, modelId: string, progress?: Progress): Promise<{ model: Model; manifest: Manifest }> {
  const manifest = await findManifest(store, modelId);
  const leaves: Buffer[] = [];
  for (const [i, chunk] of manifest.chunks.entries()) {
    leaves.push(...(await chunkLeaves(store, manifest, chunk)));
    progress?.(i + 1, manifest.chunks.length);
  }
  const canonical = parseCanonicalConfig(leaves[0]);
  const layout = chunkLayout(canonical);
  const tensors = new Map(layout.tensors.map((t) => [t.name, Buffer.concat(leaves.slice(t.firstLeaf, t.firstLeaf + t.chunks))]));
  const model = assembleModel(canonical, (name) => tensors.get(name), parseCanonicalTokenizer(leaves[1]), manifest.name);
  if (modelIdentity(model).modelId !== modelId) throw new ModelStoreError(`model ${modelId} assembled to another id`);
  return { model, manifest };
}

/**
 * Downloads a model by id, checks every leaf, and writes it to `cacheDir/<modelId>.gguf` (only
 * once all of it checked out). Returns the path; a cached model is returned as it is.
 */
export async function fetchModel(store: Store, modelId: string, cacheDir: string, progress?: Progress): Promise<string> {
  const path = join(cacheDir, `${modelId}.gguf`);
  if (existsSync(path)) return path;
  const { model, manifest } = await readModel(store, modelId, progress);
  mkdirSync(cacheDir, { recursive: true });
  const temp = `${path}.${process.pid}.tmp`;
  try {
    writeGguf(temp, ggufFromModel(model, { type: 'keep', name: manifest.name }));
    // The file must describe exactly this model: check it as `verity run` will read it.
    if (modelIdentity(loadModel(temp)).modelId !== modelId) throw new ModelStoreError(`model ${modelId} did not survive its GGUF encoding`);
    renameSync(temp, path);
  } finally {
    rmSync(temp, { force: true });
  }
  return path;
}
